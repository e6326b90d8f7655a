"""safetensors: ``model.safetensors`` and sharded ``model.safetensors.index.json``.

Read with the format's own header (8-byte little-endian length, JSON header, raw data), so a tensor is read only
when asked for (straight from the file into one fresh array: no memory map, whose resident pages would double
the memory of a large tensor), bfloat16 comes back as ``ml_dtypes.bfloat16``, and a truncated or corrupt file is
named with what is wrong. Written as a stream: header first, then one tensor at a time.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Mapping

import numpy as np

from deberta_xf.formats import (BFLOAT16, Producer, TensorInfo, TensorReader, announce, check_infos, check_shape,
                                produce, read_into)
from deberta_xf import schema
from deberta_xf.errors import CheckpointError
from deberta_xf.fileio import atomic_path

_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": BFLOAT16,
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_CODES = {v: k for k, v in _DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024
_MAX_INDEX = 64 * 1024 * 1024


def _no_duplicates(path: str, what: str):
    def hook(pairs):
        out = {}
        for key, value in pairs:
            if key in out:
                raise CheckpointError(f"{path}: corrupt {what}: the key {key!r} appears twice")
            out[key] = value
        return out
    return hook


def _reject_constant(path: str, what: str):
    def hook(name):
        raise CheckpointError(f"{path}: corrupt {what}: the non-JSON number {name}")
    return hook


def parse_json(path: str, raw: bytes | str, what: str) -> object:
    """Strict JSON: UTF-8, no duplicate keys, no NaN/Infinity, no integer over 4300 digits, bounded nesting;
    every failure a CheckpointError naming ``path`` and ``what``."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray, memoryview)) else raw
        return json.loads(text, object_pairs_hook=_no_duplicates(path, what),
                          parse_constant=_reject_constant(path, what))
    except CheckpointError:
        raise
    except UnicodeDecodeError as err:
        raise CheckpointError(f"{path}: corrupt {what}: not UTF-8 ({err.reason} at byte {err.start})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: corrupt {what}: nested too deeply") from None
    except (ValueError, TypeError) as err:  # JSONDecodeError, an int of too many digits
        raise CheckpointError(f"{path}: corrupt {what}: not valid JSON ({str(err)[:200]})") from None


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class SafetensorsReader(TensorReader):
    format = "safetensors"

    def __init__(self, path: str):
        super().__init__(path)
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes; truncated?)")
            (n,) = struct.unpack("<Q", raw)
            if n > _MAX_HEADER or 8 + n > size:
                raise CheckpointError(f"{path}: corrupt or truncated safetensors file (header length field says "
                                      f"{n} bytes, file of {size} bytes; at most {_MAX_HEADER})")
            if n < 2:
                raise CheckpointError(f"{path}: corrupt safetensors file (header length field says {n} bytes)")
            text = f.read(n)
        if text[:1] != b"{":
            raise CheckpointError(f"{path}: corrupt safetensors header: it does not start with '{{' (header length "
                                  f"field {n})")
        header = parse_json(path, text.rstrip(b" "), f"safetensors header ({n} bytes by its length field)")
        if not isinstance(header, dict):
            raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                     for k, v in metadata.items()):
            raise CheckpointError(f"{path}: corrupt safetensors header: '__metadata__' must map strings to strings")
        self._metadata = metadata
        self._data_start = 8 + n
        data_size = size - self._data_start
        self._entries: dict[str, tuple[TensorInfo, int, int]] = {}
        for name, entry in header.items():
            if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
                raise CheckpointError(f"{path}: corrupt safetensors header entry for tensor {name!r}: expected "
                                      f"{{'dtype', 'shape', 'data_offsets'}}, found {str(entry)[:200]}")
            code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
            if not isinstance(code, str) or code not in _DTYPES:
                raise CheckpointError(f"{path}: tensor {name!r} has unknown safetensors dtype {str(code)[:50]!r} "
                                      f"(expected one of {', '.join(_DTYPES)})")
            dtype = _DTYPES[code]
            if dtype is None:
                raise CheckpointError(f"{path}: tensor {name!r} is bfloat16 but ml_dtypes is not installed")
            shape = check_shape(path, name, shape)
            if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(x) for x in offsets)):
                raise CheckpointError(f"{path}: tensor {name!r} has data_offsets {str(offsets)[:100]}; expected two "
                                      f"non-negative integers [begin, end]")
            begin, end = offsets
            info = TensorInfo(shape, dtype)
            if begin < 0 or end < begin or end - begin != info.nbytes:
                raise CheckpointError(f"{path}: corrupt safetensors header: tensor {name!r} of shape {list(shape)} "
                                      f"{code} needs {info.nbytes} bytes but its data_offsets are [{begin}, {end}]")
            if begin % dtype.itemsize:
                raise CheckpointError(f"{path}: corrupt safetensors header: tensor {name!r} ({code}) starts at "
                                      f"byte {begin}, not a multiple of its {dtype.itemsize}-byte element")
            if end > data_size:
                raise CheckpointError(f"{path}: truncated safetensors file: tensor {name!r} needs bytes up to "
                                      f"{end} but the data section has {data_size}")
            self._entries[name] = (info, begin, end)
        # The data section is exactly the tensors, back to back in some order: no overlap, no hole, nothing after
        # (so a header length field that is off by any amount is caught, as the safetensors library does).
        position, previous = 0, None
        for name, (info, begin, end) in sorted(self._entries.items(), key=lambda kv: (kv[1][1], kv[1][2])):
            if begin < position:
                raise CheckpointError(f"{path}: corrupt safetensors header: tensor {name!r} (bytes {begin}..{end}) "
                                      f"overlaps tensor {previous!r} (up to byte {position})")
            if begin > position:
                raise CheckpointError(f"{path}: corrupt safetensors header: a hole of {begin - position} bytes in "
                                      f"the data section before tensor {name!r} (byte {position})")
            position, previous = end, name
        if position != data_size:
            raise CheckpointError(f"{path}: corrupt safetensors file: the tensors cover {position} bytes of a "
                                  f"{data_size}-byte data section (wrong header length field or stray bytes)")
        self._infos = check_infos(path, {k: v[0] for k, v in self._entries.items()})
        self._file = None

    def infos(self) -> dict[str, TensorInfo]:
        return dict(self._infos)

    def metadata(self) -> dict[str, str]:
        return dict(self._metadata)

    def read(self, name: str) -> np.ndarray:
        try:
            info, begin, end = self._entries[name]
        except KeyError:
            raise CheckpointError(f"{self.path}: no tensor named {name!r}") from None
        if info.nbytes == 0:
            return np.zeros(info.shape, dtype=info.dtype)
        if self._file is None:
            self._file = open(self.path, "rb")
        buf = np.empty(end - begin, dtype=np.uint8)
        if not read_into(self._file, self._data_start + begin, buf):
            raise CheckpointError(f"{self.path}: truncated safetensors file: tensor {name!r} ends early")
        return buf.view(info.dtype).reshape(info.shape)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class ShardedReader(TensorReader):
    """A checkpoint split over several files, with an ``*.index.json`` holding ``weight_map``."""

    def __init__(self, path: str, open_shard):
        super().__init__(path)
        size = os.path.getsize(path)
        if size > _MAX_INDEX:
            raise CheckpointError(f"{path}: shard index of {size} bytes; at most {_MAX_INDEX} expected")
        with open(path, "rb") as f:
            index = parse_json(path, f.read(), "shard index")
        if not isinstance(index, dict) or "weight_map" not in index:
            raise CheckpointError(f"{path}: corrupt shard index: expected a JSON object with a 'weight_map'")
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{path}: corrupt shard index: 'weight_map' must map tensor names to shard file "
                                  f"names (strings), found {type(weight_map).__name__} {str(weight_map)[:100]}")
        metadata = index.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise CheckpointError(f"{path}: corrupt shard index: 'metadata' must be an object, found "
                                  f"{type(metadata).__name__}")
        self._metadata = metadata
        directory = os.path.dirname(path)
        self._shards: dict[str, TensorReader] = {}
        self._where: dict[str, str] = {}
        try:
            for name, shard in weight_map.items():
                if (not shard or shard in (".", "..") or "/" in shard or "\\" in shard or os.sep in shard
                        or "\0" in shard or os.path.isabs(shard) or shard != os.path.basename(shard)):
                    raise CheckpointError(f"{path}: shard {shard!r} (holding {name!r}) is not a plain file name "
                                          f"in the checkpoint directory; refused")
                shard_path = os.path.join(directory, shard)
                if shard_path not in self._shards:
                    if not os.path.isfile(shard_path):
                        raise CheckpointError(f"{path}: shard {shard!r} (holding {name!r}) not found")
                    self._shards[shard_path] = open_shard(shard_path)
                if name not in self._shards[shard_path].infos():
                    raise CheckpointError(f"{path}: index says {name!r} is in {shard!r}, but that shard lacks it")
                self._where[name] = shard_path
        except BaseException:
            self.close()
            raise

    def infos(self) -> dict[str, TensorInfo]:
        return {n: self._shards[s].infos()[n] for n, s in self._where.items()}

    def read(self, name: str) -> np.ndarray:
        if name not in self._where:
            raise CheckpointError(f"{self.path}: no tensor named {name!r}")
        return self._shards[self._where[name]].read(name)

    def metadata(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self._metadata.items()}

    def close(self) -> None:
        for shard in self._shards.values():
            shard.close()


def open_reader(path: str) -> TensorReader:
    if path.endswith(".index.json"):
        return ShardedReader(path, SafetensorsReader)
    return SafetensorsReader(path)


def write(path: str, infos: Mapping[str, TensorInfo], get: Producer, metadata: Mapping[str, str] | None = None,
          progress=None, **_: object) -> None:
    """Stream tensors into a safetensors file, atomically. ``metadata`` defaults to ``{"format": "pt"}``."""
    header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
    for name, info in infos.items():
        if info.dtype not in _CODES:
            raise CheckpointError(f"{path}: cannot store tensor {name!r} of dtype {info.dtype} in safetensors")
    # the data in order of element size, largest first (stable), so that every tensor starts aligned to its size
    names = sorted(infos, key=lambda n: -infos[n].dtype.itemsize)
    offsets, offset = {}, 0
    for name in names:
        offsets[name] = [offset, offset + infos[name].nbytes]
        offset += infos[name].nbytes
    for name, info in infos.items():
        header[name] = {"dtype": _CODES[info.dtype], "shape": list(info.shape), "data_offsets": offsets[name]}
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # align the data section to 8 bytes, as the reference writer does
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            announce(get, names)
            for name in (progress(names) if progress else names):
                array = produce(get, name, infos, path)
                if array.size:
                    f.write(schema.contiguous(array).reshape(-1).view(np.uint8))
