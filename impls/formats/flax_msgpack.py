"""``flax_model.msgpack``: flax serialization of the nested parameter dict of our Flax (NNX) implementation.

The file is what ``flax.serialization.msgpack_serialize`` writes for a nested dict whose keys mirror the canonical
module path with flax leaf names and layouts (``{"deberta": {"encoder": {"layer": {"0": {"attention": {"self":
{"query_proj": {"kernel": [in, out]}}}}}}}}``): every array is a msgpack ext of type 1 holding
``(shape, dtype name, raw C-order bytes)``, and an array over 1 GiB is split into a ``__msgpack_chunked_array__``
dict, exactly as flax does. Byte-compatible with ``flax.serialization.msgpack_restore`` / ``msgpack_serialize``,
but needs neither JAX nor flax: the converter reads and writes it with ``msgpack`` alone.

Memory: msgpack has no index, so opening a file walks the whole tree once; the walk reads only the headers (through
a memory map) and records where each tensor's bytes are, so the reader, like the safetensors one, reads a tensor
only when asked, straight from the file into one fresh array. The writer streams: it writes the map headers as it
goes and the tensors one at a time (about one tensor in memory; keys sorted, as flax writes them), so neither
direction needs the whole tree in memory.
"""

from __future__ import annotations

import dataclasses
import math
import mmap
import os
import re
import struct
from typing import Any, Mapping

import msgpack
import numpy as np

from deberta_xf.formats import (BFLOAT16, Producer, TensorInfo, TensorReader, announce, check_infos, check_shape,
                                produce)
from deberta_xf import schema
from deberta_xf.errors import CheckpointError
from deberta_xf.fileio import atomic_path

FRAMEWORK = "flax"
EXT_NDARRAY = 1      # flax.serialization._MsgpackExtType.ndarray
EXT_NPSCALAR = 3     # a numpy scalar, stored like a 0-d array
MAX_CHUNK_SIZE = 2**30  # flax.serialization.MAX_CHUNK_SIZE: larger arrays are stored in chunks
CHUNKED = "__msgpack_chunked_array__"


# ----------------------------------------------------------------------------------------------------------------
# Names: flax path (``deberta.encoder.layer.0.attention.self.query_proj.kernel``) <-> canonical name
def canonical_name(flax_path: str) -> str | None:
    """The canonical name a flax parameter path stands for (``...query_proj.kernel`` -> ``...query_proj.weight``),
    through the schema's layout table; None if no canonical name has this flax leaf."""
    module, _, leaf = flax_path.rpartition(".")
    for canonical_leaf in ("weight", "bias"):
        candidate = f"{module}.{canonical_leaf}" if module else canonical_leaf
        try:
            if schema.framework_leaf(candidate, FRAMEWORK) == leaf:
                return candidate
        except KeyError:
            continue
    return None


# ----------------------------------------------------------------------------------------------------------------
# Reading: a small msgpack walker over a memory map that records where each array's bytes are.
@dataclasses.dataclass(frozen=True)
class _ArrayRef:
    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int  # of the raw bytes in the file


@dataclasses.dataclass(frozen=True)
class _Stored:
    """One tensor as stored: its flax shape and dtype, and the pieces holding its bytes in order."""
    shape: tuple[int, ...]
    dtype: np.dtype
    pieces: tuple[_ArrayRef, ...]


_DTYPE_NAME = re.compile(r"^[<>=|]?[a-z]*[0-9]*$")


def _dtype_from_name(name: str) -> np.dtype:
    """The dtype an array's name stands for, byte order included (``>f4`` is big-endian: honoured on read).
    Only plain numeric dtypes (float, int, uint, bool, bfloat16); ValueError for anything else."""
    if name == "bfloat16":
        if BFLOAT16 is None:
            raise ValueError("bfloat16 needs ml_dtypes")
        return BFLOAT16
    if not _DTYPE_NAME.match(name):
        raise ValueError(name)
    dtype = np.dtype(name)
    if dtype.kind not in "fiub" or dtype.names is not None or dtype.shape != ():
        raise ValueError(name)
    return dtype


class _Walker:
    """Parses the msgpack subset flax writes (maps, strings, integers, booleans, nil, arrays, ext arrays) from a
    buffer, turning every ext array into an :class:`_ArrayRef` without touching its data."""

    def __init__(self, buf, path: str):
        self.buf = buf
        self.path = path
        self.size = len(buf)

    def fail(self, pos: int, what: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: corrupt or truncated msgpack file at byte {pos}: {what}")

    def take(self, pos: int, n: int) -> tuple[bytes, int]:
        if n < 0 or pos + n > self.size:
            raise self.fail(pos, f"needs {n} more bytes but the file has {self.size - pos}")
        return self.buf[pos:pos + n], pos + n

    def uint(self, pos: int, n: int) -> tuple[int, int]:
        raw, pos = self.take(pos, n)
        return int.from_bytes(raw, "big"), pos

    def value(self, pos: int, depth: int = 0) -> tuple[Any, int]:
        if depth > 64:
            raise self.fail(pos, "nesting deeper than 64 levels")
        if pos >= self.size:
            raise self.fail(pos, "unexpected end of file")
        b = self.buf[pos]
        pos += 1
        if b <= 0x7F:
            return b, pos
        if b >= 0xE0:
            return b - 0x100, pos
        if 0x80 <= b <= 0x8F:
            return self.map(pos, b & 0x0F, depth)
        if 0x90 <= b <= 0x9F:
            return self.array(pos, b & 0x0F, depth)
        if 0xA0 <= b <= 0xBF:
            return self.string(pos, b & 0x1F)
        if b == 0xC0:
            return None, pos
        if b in (0xC2, 0xC3):
            return b == 0xC3, pos
        if b in (0xC4, 0xC5, 0xC6):  # bin 8/16/32
            n, pos = self.uint(pos, 1 << (b - 0xC4))
            return self.take(pos, n)
        if b in (0xC7, 0xC8, 0xC9):  # ext 8/16/32
            n, pos = self.uint(pos, 1 << (b - 0xC7))
            return self.ext(pos, n)
        if b in (0xCA, 0xCB):  # float 32/64
            raw, pos = self.take(pos, 4 if b == 0xCA else 8)
            return struct.unpack(">f" if b == 0xCA else ">d", raw)[0], pos
        if 0xCC <= b <= 0xCF:  # uint 8..64
            return self.uint(pos, 1 << (b - 0xCC))
        if 0xD0 <= b <= 0xD3:  # int 8..64
            raw, pos = self.take(pos, 1 << (b - 0xD0))
            return int.from_bytes(raw, "big", signed=True), pos
        if 0xD4 <= b <= 0xD8:  # fixext 1..16
            return self.ext(pos, 1 << (b - 0xD4))
        if b in (0xD9, 0xDA, 0xDB):  # str 8/16/32
            n, pos = self.uint(pos, 1 << (b - 0xD9))
            return self.string(pos, n)
        if b in (0xDC, 0xDD):  # array 16/32
            n, pos = self.uint(pos, 2 if b == 0xDC else 4)
            return self.array(pos, n, depth)
        if b in (0xDE, 0xDF):  # map 16/32
            n, pos = self.uint(pos, 2 if b == 0xDE else 4)
            return self.map(pos, n, depth)
        raise self.fail(pos - 1, f"unknown type byte 0x{b:02x}")

    def string(self, pos: int, n: int) -> tuple[str, int]:
        raw, end = self.take(pos, n)
        try:
            return bytes(raw).decode("utf-8"), end
        except UnicodeDecodeError:
            raise self.fail(pos, "a string that is not UTF-8") from None

    def array(self, pos: int, n: int, depth: int) -> tuple[list, int]:
        items = []
        for _ in range(n):
            item, pos = self.value(pos, depth + 1)
            items.append(item)
        return items, pos

    def map(self, pos: int, n: int, depth: int) -> tuple[dict, int]:
        out: dict[str, Any] = {}
        for _ in range(n):
            key_pos = pos
            key, pos = self.value(pos, depth + 1)
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                raise self.fail(key_pos, f"a map key of type {type(key).__name__}")
            if str(key) in out:
                raise self.fail(key_pos, f"the map key {str(key)[:100]!r} twice")
            out[str(key)], pos = self.value(pos, depth + 1)
        return out, pos

    def ext(self, pos: int, n: int) -> tuple[Any, int]:
        code, pos = self.uint(pos, 1)
        end = pos + n
        if end > self.size:
            raise self.fail(pos, f"an ext value of {n} bytes runs past the end of the file")
        if code not in (EXT_NDARRAY, EXT_NPSCALAR):
            raise self.fail(pos, f"unsupported msgpack ext type {code} (flax writes arrays as type 1)")
        # payload: [shape, dtype name, raw bytes]
        if n < 2 or self.buf[pos] != 0x93:
            raise self.fail(pos, "an array payload that is not [shape, dtype, data]")
        shape, p = self.value(pos + 1, 62)  # a shape is a flat list: no deep nesting
        name, p = self.value(p, 63)
        if not isinstance(name, str):
            raise self.fail(pos, f"an array whose dtype name is a {type(name).__name__}, not a string")
        head = self.buf[p] if p < self.size else -1
        if head not in (0xC4, 0xC5, 0xC6):
            raise self.fail(p, "an array payload without raw bytes")
        nbytes, p = self.uint(p + 1, 1 << (head - 0xC4))
        if not (isinstance(shape, list) and len(shape) <= 32
                and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise self.fail(pos, f"an array with shape {str(shape)[:100]} (expected non-negative integers)")
        try:
            dtype = _dtype_from_name(name)
        except (TypeError, ValueError):
            raise self.fail(pos, f"an array of unsupported dtype {name[:50]!r} (expected a float, integer or bool "
                                 f"dtype)") from None
        want = math.prod(shape) * dtype.itemsize
        if nbytes != want or p + nbytes != end:
            raise self.fail(pos, f"a {name}{shape} array with {nbytes} bytes of data (expected {want})")
        return _ArrayRef(tuple(shape), dtype, p), end


def _flatten(tree: dict, path: str, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and CHUNKED not in value:
            if not value:
                raise CheckpointError(f"{path}: empty group {name!r}")
            flat.update(_flatten(value, path, name + "."))
        else:
            flat[name] = value
    return flat


def _as_stored(path: str, key: str, leaf: Any) -> _Stored:
    if isinstance(leaf, _ArrayRef):
        return _Stored(leaf.shape, leaf.dtype, (leaf,))
    if isinstance(leaf, dict):  # a chunked array: {"__msgpack_chunked_array__": True, "shape": {...}, "chunks": {...}}
        try:
            if set(leaf) != {CHUNKED, "shape", "chunks"} or leaf[CHUNKED] is not True:
                raise KeyError(CHUNKED)
            shape = tuple(leaf["shape"][str(i)] for i in range(len(leaf["shape"])))
            chunks = tuple(leaf["chunks"][str(i)] for i in range(len(leaf["chunks"])))
            if len(shape) != len(leaf["shape"]) or len(chunks) != len(leaf["chunks"]):
                raise KeyError("shape")
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: corrupt chunked array {key!r}") from None
        shape = check_shape(path, key, shape)
        if not chunks or not all(isinstance(c, _ArrayRef) and c.dtype == chunks[0].dtype and len(c.shape) == 1
                                 for c in chunks) or sum(c.shape[0] for c in chunks) != math.prod(shape):
            raise CheckpointError(f"{path}: corrupt chunked array {key!r} (chunks do not add up to shape "
                                  f"{list(shape)})")
        return _Stored(shape, chunks[0].dtype, chunks)
    raise CheckpointError(f"{path}: entry {key!r} is a {type(leaf).__name__}, not an array")


class FlaxMsgpackReader(TensorReader):
    format = "msgpack"

    def __init__(self, path: str):
        super().__init__(path)
        size = os.path.getsize(path)
        if size == 0:
            raise CheckpointError(f"{path}: empty file, not a flax msgpack checkpoint")
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            tree, end = _Walker(buf, path).value(0)  # touches the headers only, not the tensor data
        if end != size:
            raise CheckpointError(f"{path}: corrupt msgpack file: {size - end} stray bytes after the parameter tree")
        if not isinstance(tree, dict):
            raise CheckpointError(f"{path}: not a flax parameter tree (top level is a {type(tree).__name__})")
        self._stored: dict[str, _Stored] = {}
        self._infos: dict[str, TensorInfo] = {}
        for key, leaf in _flatten(tree, path).items():
            name = canonical_name(key)
            if name is None:
                raise CheckpointError(f"{path}: {key!r} is not a DeBERTa-v2 flax parameter name (leaves are kernel, "
                                      f"bias, scale or embedding)")
            stored = _as_stored(path, key, leaf)
            if name in self._stored:
                raise CheckpointError(f"{path}: two entries stand for tensor {name!r} (the second is {key!r})")
            self._stored[name] = stored
            # canonical shape: every layout rule is its own inverse; big-endian data comes back little-endian
            dtype = stored.dtype.newbyteorder("<") if stored.dtype.itemsize > 1 else stored.dtype
            self._infos[name] = TensorInfo(schema.framework_shape(name, stored.shape, FRAMEWORK), dtype)
        self._infos = check_infos(path, self._infos)
        self._file = None

    def infos(self) -> dict[str, TensorInfo]:
        return dict(self._infos)

    def read(self, name: str) -> np.ndarray:
        if name not in self._stored:
            raise CheckpointError(f"{self.path}: no tensor named {name!r}")
        stored = self._stored[name]
        if self._file is None:
            self._file = open(self.path, "rb")
        sizes = [math.prod(p.shape) * p.dtype.itemsize for p in stored.pieces]
        buf = np.empty(sum(sizes), dtype=np.uint8)  # one fresh array, read straight from the file
        view, done = memoryview(buf), 0
        for piece, n in zip(stored.pieces, sizes):
            self._file.seek(piece.offset)
            end = done + n
            while done < end:  # a single read may return less than asked
                got = self._file.readinto(view[done:end])
                if not got:
                    raise CheckpointError(f"{self.path}: truncated msgpack file: tensor {name!r} ends early")
                done += got
        array = buf.view(stored.dtype).reshape(stored.shape)
        if array.dtype != self._infos[name].dtype:  # stored big-endian: the same numbers, in native order
            array = array.astype(self._infos[name].dtype)
        return schema.from_framework(name, array, FRAMEWORK)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def open_reader(path: str) -> TensorReader:
    return FlaxMsgpackReader(path)


# ----------------------------------------------------------------------------------------------------------------
# Writing: streamed, one tensor at a time.
def _map_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x80 | n])
    if n < 1 << 16:
        return b"\xde" + struct.pack(">H", n)
    return b"\xdf" + struct.pack(">I", n)


def _bin_header(n: int) -> bytes:
    if n < 1 << 8:
        return b"\xc4" + struct.pack(">B", n)
    if n < 1 << 16:
        return b"\xc5" + struct.pack(">H", n)
    return b"\xc6" + struct.pack(">I", n)


def _ext_header(n: int, code: int) -> bytes:
    fixed = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}
    if n in fixed:
        return bytes([fixed[n], code])
    if n < 1 << 8:
        return b"\xc7" + struct.pack(">Bb", n, code)
    if n < 1 << 16:
        return b"\xc8" + struct.pack(">Hb", n, code)
    return b"\xc9" + struct.pack(">Ib", n, code)


def _write_array(f, array: np.ndarray) -> None:
    """One array as flax's ext type 1: (shape, dtype name, C-order bytes), written without copying the data."""
    array = schema.contiguous(array)  # layout conversions are views until here
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    head = b"\x93" + msgpack.packb(list(array.shape)) + msgpack.packb(array.dtype.name) + _bin_header(array.nbytes)
    f.write(_ext_header(len(head) + array.nbytes, EXT_NDARRAY))
    f.write(head)
    if array.nbytes:
        f.write(array.reshape(-1).view(np.uint8).data)


def _write_chunked(f, array: np.ndarray) -> None:
    """An array over MAX_CHUNK_SIZE bytes, split as flax's ``_chunk`` does."""
    flat = schema.contiguous(array).reshape(-1)
    step = max(1, MAX_CHUNK_SIZE // flat.dtype.itemsize)
    starts = range(0, flat.size, step)
    f.write(_map_header(3))
    f.write(msgpack.packb(CHUNKED) + msgpack.packb(True))
    f.write(msgpack.packb("shape") + _map_header(array.ndim))
    for i, d in enumerate(array.shape):
        f.write(msgpack.packb(str(i)) + msgpack.packb(int(d)))
    f.write(msgpack.packb("chunks") + _map_header(len(starts)))
    for i, start in enumerate(starts):
        f.write(msgpack.packb(str(i)))
        _write_array(f, flat[start:start + step])


def _tree(path: str, names) -> dict:
    """Canonical names -> nested dict of flax path parts whose leaves are the canonical names."""
    root: dict = {}
    for name in names:
        parts = schema.framework_name(name, FRAMEWORK).split(".")
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise CheckpointError(f"{path}: tensor names clash at {part!r} ({name!r})")
        if parts[-1] in node:
            raise CheckpointError(f"{path}: two tensors map to the flax path {'.'.join(parts)!r} ({name!r})")
        node[parts[-1]] = name
    return root


def _leaves(node: dict):
    """The canonical names of a tree's leaves, in the order :func:`write` visits them."""
    for _, child in sorted(node.items()):
        if isinstance(child, dict):
            yield from _leaves(child)
        else:
            yield child


def write(path: str, infos: Mapping[str, TensorInfo], get: Producer, progress=None, **_: object) -> None:
    """Write canonical tensors as ``flax_model.msgpack`` (flax names and layouts), atomically and streamed."""
    tree = _tree(path, infos)
    order = list(_leaves(tree))  # the names in the order write_node visits them
    names = iter(progress(order) if progress else order)

    def write_node(f, node: dict) -> None:
        f.write(_map_header(len(node)))
        for key, child in sorted(node.items()):  # sorted, as flax's msgpack_serialize (via jax tree_map) writes
            f.write(msgpack.packb(key))
            if isinstance(child, dict):
                write_node(f, child)
                continue
            name = child
            next(names, None)
            array = produce(get, name, infos, path)
            if array.dtype.hasobject or array.dtype.names is not None:
                raise CheckpointError(f"{path}: cannot store tensor {name!r} of dtype {array.dtype} in msgpack")
            array = schema.to_framework(name, array, FRAMEWORK)
            if array.nbytes > MAX_CHUNK_SIZE:
                _write_chunked(f, array)
            else:
                _write_array(f, array)

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            announce(get, order)
            write_node(f, tree)
