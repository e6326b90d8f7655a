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

from deberta_xf.formats import BFLOAT16, Producer, TensorInfo, TensorReader, produce
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
_READ_CHUNK = 64 * 1024 * 1024


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
                raise CheckpointError(f"{path}: corrupt or truncated safetensors file (header of {n} bytes, file of "
                                      f"{size} bytes)")
            try:
                header = json.loads(f.read(n).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise CheckpointError(f"{path}: corrupt safetensors header ({err})") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
        self._metadata = header.pop("__metadata__", None) or {}
        self._data_start = 8 + n
        data_size = size - self._data_start
        self._entries: dict[str, tuple[TensorInfo, int, int]] = {}
        for name, entry in header.items():
            try:
                dtype = _DTYPES[entry["dtype"]]
                shape = tuple(int(d) for d in entry["shape"])
                begin, end = (int(x) for x in entry["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"{path}: corrupt safetensors header entry for tensor {name!r}: {entry!r}") \
                    from None
            if dtype is None:
                raise CheckpointError(f"{path}: tensor {name!r} is bfloat16 but ml_dtypes is not installed")
            info = TensorInfo(shape, dtype)
            if end - begin != info.nbytes or begin < 0 or end < begin:
                raise CheckpointError(f"{path}: corrupt safetensors header: tensor {name!r} of shape {list(shape)} "
                                      f"{entry['dtype']} spans bytes {begin}..{end}")
            if end > data_size:
                raise CheckpointError(f"{path}: truncated safetensors file: tensor {name!r} needs bytes up to "
                                      f"{end} but the data section has {data_size}")
            self._entries[name] = (info, begin, end)
        self._file = None

    def infos(self) -> dict[str, TensorInfo]:
        return {k: v[0] for k, v in self._entries.items()}

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
        buf = np.empty(end - begin, dtype=np.uint8)  # our own copy: the file may be replaced later
        view = memoryview(buf)
        self._file.seek(self._data_start + begin)
        done = 0
        while done < len(buf):  # a single read() may return less than asked (2 GiB per syscall on Linux)
            n = self._file.readinto(view[done:done + _READ_CHUNK])
            if not n:
                raise CheckpointError(f"{self.path}: truncated safetensors file: tensor {name!r} ends early")
            done += n
        return buf.view(info.dtype).reshape(info.shape)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class ShardedReader(TensorReader):
    """A checkpoint split over several files, with an ``*.index.json`` holding ``weight_map``."""

    def __init__(self, path: str, open_shard):
        super().__init__(path)
        try:
            with open(path, encoding="utf-8") as f:
                index = json.load(f)
            weight_map = index["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
            raise CheckpointError(f"{path}: corrupt shard index ({err!r}); expected JSON with a 'weight_map'") \
                from None
        self._metadata = index.get("metadata") or {}
        directory = os.path.dirname(path)
        self._shards: dict[str, TensorReader] = {}
        self._where: dict[str, str] = {}
        for name, shard in weight_map.items():
            shard_path = os.path.join(directory, shard)
            if shard_path not in self._shards:
                if not os.path.isfile(shard_path):
                    raise CheckpointError(f"{path}: shard {shard!r} (holding {name!r}) not found")
                self._shards[shard_path] = open_shard(shard_path)
            if name not in self._shards[shard_path].infos():
                raise CheckpointError(f"{path}: index says {name!r} is in {shard!r}, but that shard lacks it")
            self._where[name] = shard_path

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
    offset = 0
    for name, info in infos.items():
        if info.dtype not in _CODES:
            raise CheckpointError(f"{path}: cannot store tensor {name!r} of dtype {info.dtype} in safetensors")
        header[name] = {"dtype": _CODES[info.dtype], "shape": list(info.shape),
                        "data_offsets": [offset, offset + info.nbytes]}
        offset += info.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # align the data section to 8 bytes, as the reference writer does
    names = list(infos)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for name in (progress(names) if progress else names):
                array = produce(get, name, infos, path)
                if array.size:
                    f.write(schema.contiguous(array).reshape(-1).view(np.uint8))
