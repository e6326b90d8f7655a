"""``pytorch_model.bin`` (and sharded ``pytorch_model.bin.index.json``): pickled state dicts.

Loaded only with ``torch.load(weights_only=True)`` (memory-mapped when the file is a zip archive), so a pickle
that would run code is refused with a clear error instead of being executed. Written without PyTorch, streamed,
in torch.save's archive layout.
"""

from __future__ import annotations

import json
import os
import pickle
import secrets
import struct
import subprocess
import sys
import zipfile
from typing import Mapping

import numpy as np

from deberta_xf.formats import (BFLOAT16, Producer, TensorInfo, TensorReader, announce, check_infos, produce,
                                read_into)
from deberta_xf.formats.safetensors_io import ShardedReader
from deberta_xf.formats.stored_zip import ALIGNMENT, StoredZipWriter
from deberta_xf import schema
from deberta_xf.errors import CheckpointError
from deberta_xf.fileio import atomic_path


def _torch():
    try:
        import torch
    except ImportError:
        raise CheckpointError("reading pytorch_model.bin needs PyTorch: pip install 'deberta-xf[torch]'") \
            from None
    return torch


def tensor_to_numpy(tensor) -> np.ndarray:
    """A CPU torch tensor -> numpy, keeping bfloat16 (as ml_dtypes.bfloat16)."""
    torch = _torch()
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        return tensor.contiguous().view(torch.int16).numpy().view(BFLOAT16)
    return tensor.numpy()


def numpy_to_tensor(array: np.ndarray):
    torch = _torch()
    array = schema.contiguous(array)
    if array.dtype == BFLOAT16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


_TORCH_DTYPES = {"float16": "<f2", "float32": "<f4", "float64": "<f8", "int8": "i1", "int16": "<i2", "int32": "<i4",
                 "int64": "<i8", "uint8": "u1", "bool": "?"}


def _check_zip(path: str) -> bool:
    """Check a zip checkpoint's structure before torch reads it, and say whether its members are all stored
    uncompressed (then memory-mapping them is exact; a DEFLATE-compressed member, valid and read correctly by
    ``torch.load``, is read through the zip reader instead).

    Every member's local header must agree with the central directory (signature, name, method, sizes) and the
    members must lie one after another inside the file: torch finds a member's data through its local header, so
    a corrupt name length there would otherwise shift the data silently (torch.load reads it as other numbers)."""
    size = os.path.getsize(path)
    with zipfile.ZipFile(path) as archive, open(path, "rb") as f:
        infos = sorted(archive.infolist(), key=lambda i: i.header_offset)
        end_of_previous = 0
        for info in infos:
            where = f"{path}: zip member {info.filename!r}"
            if info.flag_bits & 0x1:
                raise CheckpointError(f"{where} is encrypted; refused")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise CheckpointError(f"{where} uses compression method {info.compress_type}; expected stored (0) "
                                      f"or deflate (8)")
            if info.header_offset < end_of_previous:
                raise CheckpointError(f"{where} overlaps the member before it")
            f.seek(info.header_offset)
            head = f.read(30)
            if len(head) < 30 or head[:4] != b"PK\x03\x04":
                raise CheckpointError(f"{where}: corrupt local header at byte {info.header_offset}")
            flags, method, _, _, crc, csize, usize, n, m = struct.unpack("<HHHHIIIHH", head[6:30])
            name = f.read(n)
            encoded = info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437", "replace")
            if name != encoded or method != info.compress_type:
                raise CheckpointError(f"{where}: local header ({name[:100]!r}, method {method}) disagrees with the "
                                      f"central directory ({encoded[:100]!r}, method {info.compress_type})")
            if not flags & 0x8 and (csize, usize, crc) != (info.compress_size, info.file_size, info.CRC) and \
                    csize != 0xFFFFFFFF:
                raise CheckpointError(f"{where}: local header sizes ({csize}, {usize}) disagree with the central "
                                      f"directory ({info.compress_size}, {info.file_size})")
            if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
                raise CheckpointError(f"{where}: stored with {info.compress_size} bytes for {info.file_size}")
            end_of_previous = info.header_offset + 30 + n + m + info.compress_size
            if end_of_previous > size:
                raise CheckpointError(f"{where} runs past the end of the file ({end_of_previous} > {size} bytes)")
        return all(info.compress_type == zipfile.ZIP_STORED for info in infos)


def _corrupt(path: str, err: BaseException) -> CheckpointError:
    return CheckpointError(f"{path}: corrupt or truncated PyTorch checkpoint ({type(err).__name__}: "
                           f"{str(err).splitlines()[0][:300] if str(err) else ''})")


def _load_state(path: str, mapped: bool) -> tuple[dict, dict[str, TensorInfo]]:
    """``torch.load(weights_only=True)`` (memory-mapped where ``mapped``), checked to be a state dict of dense tensors
    of the dtypes a checkpoint may hold: (name -> tensor, name -> info)."""
    torch = _torch()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mapped)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path}: refused to load: this pickle holds objects other than tensors and could run code when "
            f"unpickled (torch.load weights_only=True: {first})") from None
    except Exception as err:  # noqa: BLE001 - torch.load of arbitrary bytes raises almost anything
        raise _corrupt(path, err) from None
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: expected a state dict (a mapping of names to tensors), got "
                              f"{type(state).__name__}")
    bad = [k for k in state if not isinstance(k, str)]
    if bad:
        raise CheckpointError(f"{path}: state-dict keys that are not strings: {', '.join(map(repr, bad[:10]))}")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {', '.join(map(str, bad[:10]))}")
    infos = {}
    for name, t in state.items():
        if t.layout != torch.strided or t.is_quantized or getattr(t, "is_sparse", False):
            raise CheckpointError(f"{path}: tensor {name!r} is not a dense tensor ({t.layout})")
        infos[name] = TensorInfo(tuple(t.shape), _dtype(path, name, str(t.dtype).replace("torch.", "")))
    return dict(state), check_infos(path, infos)


def _dtype(path: str, name: str, kind: str) -> np.dtype:
    if kind == "bfloat16":
        return BFLOAT16
    if kind in _TORCH_DTYPES:
        return np.dtype(_TORCH_DTYPES[kind])
    raise CheckpointError(f"{path}: tensor {name!r} has dtype torch.{kind}; expected float16, float32, float64 or "
                          f"bfloat16")


def _placements(path: str, state: Mapping) -> dict[str, int] | None:
    """Where in the file each tensor's bytes lie, from where ``torch.load(mmap=True)`` mapped the file into this
    process (/proc/self/maps), so that they are read from the file (``readinto`` new memory) instead of through the
    mapping: pages touched through a mapping stay resident and cost a page fault each 4 KiB; a read does neither and
    runs as fast as the safetensors reader's. None where a tensor does not lie there contiguously (or not Linux)."""
    real, ranges = os.path.realpath(path), []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                fields = line.split(None, 5)
                if len(fields) == 6 and fields[5].rstrip("\n") == real:
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    ranges.append((start, end, int(fields[2], 16)))  # (start, end, file offset of start)
    except (OSError, ValueError):
        return None
    offsets = {}
    for name, tensor in state.items():
        view = tensor_to_numpy(tensor)
        if view.nbytes == 0:
            offsets[name] = 0  # nothing to read (an empty tensor's address lies anywhere)
            continue
        address = view.__array_interface__["data"][0]
        offset = next((address - start + at for start, end, at in ranges
                       if start <= address and address + view.nbytes <= end), None)
        if offset is None or not view.flags.c_contiguous:
            return None
        offsets[name] = offset
    return offsets


def describe(path: str) -> dict:
    """What a reader in another process needs (run by :data:`_CHILD`): ``{"tensors": [[name, dtype, shape, byte
    offset], ...]}`` in the state dict's order, or ``{"tensors": None}`` where the tensors are not all placed in
    the file as they are (not a zip of stored members, or not Linux)."""
    mapped = zipfile.is_zipfile(path) and _check_zip(path)
    state, infos = _load_state(path, mapped)
    offsets = _placements(path, state) if mapped else None
    if offsets is None:
        return {"tensors": None}
    return {"tensors": [[name, str(state[name].dtype).replace("torch.", ""), list(info.shape), offsets[name]]
                        for name, info in infos.items()]}


# A large file is loaded by torch.load in a child process: PyTorch itself takes ~200 MiB of resident memory (its
# libraries' pages), which would add to the tensors held by a conversion. The child unpickles (weights_only), checks
# and places the tensors exactly as a load in this process does, and reports where each one lies; this process then
# reads the bytes from the file. Small files, and any file once torch is imported here, are loaded here.
_CHILD_FROM_BYTES = 256 << 20
_CHILD = """
import json, sys
from deberta_xf.errors import CheckpointError
from deberta_xf.formats import torch_bin
try:
    result = torch_bin.describe(sys.argv[1])
except CheckpointError as err:
    result = {"error": str(err)}
sys.stdout.write(json.dumps(result))
"""


_DESCRIBED: dict[tuple, list] = {}  # the last few files described, by path and stat: a conversion opens its source
_DESCRIBED_KEEP = 4                # twice (plan, then write), and the second open needs no second child process


def _describe_in_child(path: str) -> list | None:
    """:func:`describe` run in a child process: its tensors, or None where it could not place them (or could not
    import this package, then the load happens here). Its CheckpointError is raised here with the same message."""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if key in _DESCRIBED:
        return _DESCRIBED[key]
    tensors = _run_child(path)
    if tensors is not None:
        while len(_DESCRIBED) >= _DESCRIBED_KEEP:
            del _DESCRIBED[next(iter(_DESCRIBED))]
        _DESCRIBED[key] = tensors
    return tensors


def _run_child(path: str) -> list | None:
    try:
        proc = subprocess.run([sys.executable, "-c", _CHILD, path], capture_output=True, text=True)
    except OSError:  # no interpreter to start (an embedded Python): load here
        return None
    try:
        result = json.loads(proc.stdout) if proc.returncode == 0 else None
    except ValueError:
        result = None
    if isinstance(result, dict) and "error" in result:
        raise CheckpointError(str(result["error"]))
    if isinstance(result, dict) and "tensors" in result:
        return result["tensors"]
    if "ModuleNotFoundError" in proc.stderr:
        return None
    how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
    last = proc.stderr.strip().splitlines()[-1][:300] if proc.stderr.strip() else "no message"
    raise CheckpointError(f"{path}: torch.load failed in its own process ({how}: {last})")


class TorchBinReader(TensorReader):
    format = "bin"

    def __init__(self, path: str):
        super().__init__(path)
        try:
            mapped = zipfile.is_zipfile(path) and _check_zip(path)
        except CheckpointError:
            raise
        except Exception as err:  # noqa: BLE001 - a damaged zip directory raises several kinds of error
            raise _corrupt(path, err) from None
        self._state: dict = {}  # name -> tensor, for tensors read through torch
        self._offsets: dict[str, int] = {}  # name -> where its bytes lie in the file, for the others
        self._file = None
        tensors = None
        if mapped and "torch" not in sys.modules and os.path.getsize(path) >= _CHILD_FROM_BYTES \
                and os.path.exists("/proc/self/maps") and sys.executable:
            tensors = _describe_in_child(path)
        if tensors is not None:
            infos = {name: TensorInfo(tuple(shape), _dtype(path, name, kind)) for name, kind, shape, _ in tensors}
            self._infos = check_infos(path, infos)
            self._offsets = {name: offset for name, _, _, offset in tensors}
            return
        state, self._infos = _load_state(path, mapped)
        offsets = _placements(path, state) if mapped else None
        if offsets is None:
            self._state = state
        else:
            self._offsets = offsets  # torch's tensors (and its mapping) are not needed any more

    def infos(self) -> dict[str, TensorInfo]:
        return dict(self._infos)

    def read(self, name: str) -> np.ndarray:
        if name in self._state:
            return np.array(tensor_to_numpy(self._state[name]))
        if name not in self._offsets:
            raise CheckpointError(f"{self.path}: no tensor named {name!r}")
        info = self._infos[name]
        out = np.empty(info.shape, info.dtype)
        if out.nbytes:
            if self._file is None:
                self._file = open(self.path, "rb")
            if not read_into(self._file, self._offsets[name], out):
                raise CheckpointError(f"{self.path}: truncated: tensor {name!r} ends past the end of the file")
        return out

    def close(self) -> None:
        self._state, self._offsets = {}, {}
        if self._file is not None:
            self._file.close()
            self._file = None


def open_reader(path: str) -> TensorReader:
    if path.endswith(".index.json"):
        return ShardedReader(path, TorchBinReader)
    return TorchBinReader(path)


# ---------------------------------------------------------------------------------------------------------------
# Writing, streamed and without PyTorch: torch.save needs every tensor at once, so the archive is written the way
# torch.save lays it out (``data.pkl``, ``.format_version``, ``.storage_alignment``, ``byteorder``, ``data/<key>``
# per storage, ``version``, ``.data/serialization_id``; data on 64-byte boundaries), with the pickle made from the
# infos alone and each tensor's bytes written as it is produced: about one tensor in memory. The pickle holds what
# torch.save's holds (an OrderedDict of ``torch._utils._rebuild_tensor_v2`` calls on persistent storage ids), written
# opcode by opcode, so writing needs no torch import. ``torch.load(weights_only=True)`` reads it as it reads
# torch.save's output.
_STORAGE_TYPES = {"float16": "HalfStorage", "float32": "FloatStorage", "float64": "DoubleStorage",
                  "bfloat16": "BFloat16Storage", "int8": "CharStorage", "int16": "ShortStorage", "int32": "IntStorage",
                  "int64": "LongStorage", "uint8": "ByteStorage", "bool": "BoolStorage"}
_FORMAT_VERSION = b"1"     # torch.save's .format_version
_ARCHIVE_VERSION = b"3\n"  # the zip container's version record, as torch.save writes it


def _pickle_str(text: str) -> bytes:
    encoded = text.encode("utf-8")
    return b"X" + struct.pack("<I", len(encoded)) + encoded  # BINUNICODE


def _pickle_int(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])  # BININT1
    if -(1 << 31) <= value < (1 << 31):
        return b"J" + struct.pack("<i", value)  # BININT
    encoded = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(encoded)]) + encoded  # LONG1


def _pickle_tuple(items) -> bytes:
    return b"(" + b"".join(items) + b"t"  # MARK ... TUPLE


_NEW_ORDERED_DICT = b"ccollections\nOrderedDict\n)R"  # GLOBAL, EMPTY_TUPLE, REDUCE: OrderedDict()


def _state_pickle(infos: Mapping[str, TensorInfo], keys: Mapping[str, str]) -> bytes:
    """``pickle.dumps(OrderedDict(name -> tensor), protocol=2)`` as torch.save writes it (each tensor a persistent
    storage id ``("storage", torch.<Type>Storage, key, "cpu", numel)`` rebuilt as contiguous from offset 0)."""
    parts = [b"\x80\x02", _NEW_ORDERED_DICT, b"("]  # PROTO 2, the dict, MARK for its SETITEMS
    for name, info in infos.items():
        shape = tuple(int(n) for n in info.shape)
        stride, step = [], 1
        for size in reversed(shape):
            stride.append(step)
            step *= size
        storage = _pickle_tuple([_pickle_str("storage"),
                                 f"ctorch\n{_STORAGE_TYPES[np.dtype(info.dtype).name]}\n".encode(),
                                 _pickle_str(keys[name]), _pickle_str("cpu"), _pickle_int(step)])
        args = _pickle_tuple([storage + b"Q", _pickle_int(0),  # BINPERSID: the storage, then the storage offset
                              _pickle_tuple(map(_pickle_int, shape)), _pickle_tuple(map(_pickle_int, reversed(stride))),
                              b"\x89", _NEW_ORDERED_DICT])  # requires_grad=False (NEWFALSE), backward hooks
        parts += [_pickle_str(name), b"ctorch._utils\n_rebuild_tensor_v2\n", args, b"R"]  # REDUCE
    parts += [b"u", b"."]  # SETITEMS, STOP
    return b"".join(parts)


def write(path: str, infos: Mapping[str, TensorInfo], get: Producer, progress=None, **_: object) -> None:
    """Write a ``pytorch_model.bin`` that ``torch.load`` reads as a state dict, one tensor in memory at a time."""
    for name, info in infos.items():
        if np.dtype(info.dtype).name not in _STORAGE_TYPES:
            raise CheckpointError(f"{path}: cannot store tensor {name!r} of dtype {info.dtype} in pytorch_model.bin")
    names = list(infos)
    keys = {name: str(i) for i, name in enumerate(names)}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        archive = StoredZipWriter(f)
        folder = "archive"  # torch.save's folder name when it writes to a file object
        archive.write(f"{folder}/data.pkl", _state_pickle(infos, keys))
        archive.write(f"{folder}/.format_version", _FORMAT_VERSION)
        archive.write(f"{folder}/.storage_alignment", str(ALIGNMENT).encode())
        archive.write(f"{folder}/byteorder", b"little")
        announce(get, names)
        for name in (progress(names) if progress else names):
            array = produce(get, name, infos, path)
            archive.write(f"{folder}/data/{keys[name]}", schema.contiguous(array).reshape(-1).view(np.uint8))
            del array
        archive.write(f"{folder}/version", _ARCHIVE_VERSION)
        serialization_id = "%020d%020d" % (secrets.randbits(64), secrets.randbits(64))  # torch's: two 64-bit numbers
        archive.write(f"{folder}/.data/serialization_id", serialization_id.encode())
        archive.close()
