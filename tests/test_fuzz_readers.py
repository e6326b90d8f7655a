"""Fuzzing the weight-file readers with mutated copies of real files of every format (issue 12).

Contract, for every mutated file: ``open_weights(path)`` then ``read`` of every tensor either

- succeeds with exactly the original tensors (same names, dtypes, shapes and bytes): "identical"; or
- succeeds with exactly what the format's own reference library reads from the mutated file (a mutation of a
  tensor's bytes, or one that turns the file into another valid file): "valid-different"; the reference is
  ``safetensors.numpy``, ``torch.load``, ``flax.serialization.msgpack_restore`` and ``h5py``; or
- raises a :class:`deberta_xf.errors.DebertaXfError` whose message names the file: "refused".

Anything else (another exception type, values no reference library reads, a tensor of another dtype or shape than
announced, a hang) fails the test with the seed and the mutation. The mutations are cheap (truncations, byte
flips, small integers written over header bytes, insertions and deletions, edits of dtype names and digits in
headers) and aimed mostly at the structure (headers, pickles, HDF5 metadata, msgpack framing) rather than at
tensor bytes, which any reader returns as stored. A fixed seed per format: the run is the same every time.

Counts: ``FAST`` files per format always, ``SLOW`` more per format under ``-m slow``.
"""

from __future__ import annotations

import collections
import functools
import os
import shutil
import struct
import time
import zipfile

import numpy as np
import pytest

from deberta_xf import schema
from deberta_xf.errors import DebertaXfError
from deberta_xf.formats import open_weights, write_arrays

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "reference", "v3", "base")
FILES = {
    "safetensors": "model.safetensors",
    "bin": "pytorch_model.bin",
    "tf_h5": "tf_model.h5",
    "keras_h5": "model.weights.h5",
    "msgpack": "flax_model.msgpack",
}
FAST = {"safetensors": 500, "bin": 200, "tf_h5": 150, "keras_h5": 150, "msgpack": 500}
SLOW = {"safetensors": 2000, "bin": 1300, "tf_h5": 850, "keras_h5": 850, "msgpack": 2000}
MAX_SECONDS_PER_FILE = 10.0
COUNTS: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


# ---------------------------------------------------------------------------------------------------------------
# The original files and tensors
def _read_all(path: str) -> dict[str, np.ndarray]:
    with open_weights(path) as reader:
        infos = reader.infos()
        out = {}
        for name in reader.keys():
            array = reader.read(name)
            info = infos[name]
            assert array.dtype == info.dtype and tuple(array.shape) == tuple(info.shape), (
                f"{path}: {name} read as {array.dtype}{list(array.shape)}, announced {info.dtype}{list(info.shape)}")
            out[name] = array
        return out


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    pytest.importorskip("h5py")
    pytest.importorskip("torch")
    pytest.importorskip("msgpack")
    base = tmp_path_factory.mktemp("originals")
    for fmt in ("safetensors", "bin", "tf_h5"):
        shutil.copy(os.path.join(FIXTURE, FILES[fmt]), base / FILES[fmt])
    arrays = _read_all(str(base / FILES["safetensors"]))
    write_arrays(str(base / FILES["msgpack"]), arrays, format="msgpack")
    write_arrays(str(base / FILES["keras_h5"]), arrays, format="keras_h5")
    out = {}
    for fmt, filename in FILES.items():
        path = str(base / filename)
        data = open(path, "rb").read()
        out[fmt] = (data, _read_all(path), _structure(fmt, path, data))
    return out


def _complement(size: int, taken: list[tuple[int, int]]) -> np.ndarray:
    """Byte positions of a file outside the ranges ``taken`` (the tensors' own bytes)."""
    mask = np.ones(size, dtype=bool)
    for begin, end in taken:
        mask[max(begin, 0):min(end, size)] = False
    return np.flatnonzero(mask)


def _structure(fmt: str, path: str, data: bytes) -> np.ndarray:
    """Positions of the bytes that describe the tensors (not the tensors' data): the mutations' main target."""
    size = len(data)
    if fmt == "safetensors":
        (n,) = struct.unpack("<Q", data[:8])
        return np.arange(8 + n)
    if fmt == "msgpack":
        with open_weights(path) as reader:
            pieces = [(p.offset, p.offset + int(np.prod(p.shape)) * p.dtype.itemsize)
                      for stored in reader._stored.values() for p in stored.pieces]
        return _complement(size, pieces)
    if fmt == "bin":
        taken = []
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if "/data/" in info.filename:
                    n, m = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
                    start = info.header_offset + 30 + n + m
                    taken.append((start, start + info.compress_size))
        return _complement(size, taken)
    import h5py

    taken = []
    with h5py.File(path, "r") as f:
        def visit(_, obj):
            if isinstance(obj, h5py.Dataset) and obj.id.get_offset() is not None:
                taken.append((obj.id.get_offset(), obj.id.get_offset() + obj.id.get_storage_size()))
        f.visititems(visit)
    return _complement(size, taken)


# ---------------------------------------------------------------------------------------------------------------
# Mutations
_SAFETENSORS_EDITS = [(b'"F32"', [b'"F16"', b'"I32"', b'"BF16"', b'"F64"', b'"BOOL"', b'"U8"', b'"C64"', b'"F8"']),
                      (b'"shape"', [b'"shapf"', b'"dtype"']), (b'"data_offsets"', [b'"data_offsetz"', b'"shape"']),
                      (b"[", [b"[-1,", b"[1.5,", b"[9223372036854775807,", b"[[", b"{"]), (b",", [b",,", b",0,"])]
_MSGPACK_EDITS = [(b"\xa7float32", [b"\xa7float16", b"\xa7float64", b"\xa7complex", b"\xa7uint320", b"\xa7>f4\x00\x00\x00\x00",
                                    b"\xa8bfloat16"]),
                  (b"\x93", [b"\x92", b"\x94", b"\x90"]), (b"\xc4", [b"\xc5", b"\xc6"]), (b"\xc7", [b"\xc8", b"\xd8"])]


def _mutate(fmt: str, data: bytes, structure: np.ndarray, rng: np.random.Generator) -> tuple[bytes, str]:
    """One mutation of ``data`` and a description of it."""
    size = len(data)

    def where() -> int:
        return int(structure[rng.integers(len(structure))]) if rng.random() < 0.85 else int(rng.integers(size))

    kind = int(rng.integers(7))
    if kind == 0:
        cut = int(rng.integers(size)) if rng.random() < 0.5 else where()
        return data[:cut], f"truncated to {cut} bytes"
    out = bytearray(data)
    if kind in (1, 2):
        spots = [where() for _ in range(int(rng.integers(1, 5)))]
        for pos in spots:
            out[pos] ^= int(rng.integers(1, 256))
        return bytes(out), f"bytes flipped at {spots}"
    if kind == 3:
        pos, width = where(), int(rng.choice([1, 2, 4, 8]))
        value = int(rng.choice([0, 1, 2, 255, 2**(8 * width) - 1, 2**(8 * width - 1), int(rng.integers(256))]))
        value %= 2**(8 * width)
        out[pos:pos + width] = value.to_bytes(width, str(rng.choice(["little", "big"])))
        return bytes(out[:size + width]), f"{width}-byte {value} written at {pos}"
    if kind == 4:
        pos, n = where(), int(rng.integers(1, 9))
        if rng.random() < 0.5:
            return bytes(out[:pos] + out[pos + n:]), f"{n} bytes deleted at {pos}"
        return bytes(out[:pos] + bytes(rng.integers(0, 256, n, dtype=np.uint8)) + out[pos:]), \
            f"{n} bytes inserted at {pos}"
    if kind == 5 and fmt == "safetensors":
        (n,) = struct.unpack("<Q", data[:8])
        if rng.random() < 0.3:
            delta = int(rng.choice([-8, -2, -1, 1, 2, 8, 1 << 20]))
            return struct.pack("<Q", max(n + delta, 0)) + data[8:], f"header length {n} -> {n + delta}"
        header = data[8:8 + n]
        if rng.random() < 0.4:  # a digit of a shape or an offset
            digits = _positions(header, b"0123456789")
            i = digits[rng.integers(len(digits))]
            header = header[:i] + bytes([48 + int(rng.integers(10))]) + header[i + 1:]
            how = f"header digit {i} changed"
        else:
            old, news = _SAFETENSORS_EDITS[rng.integers(len(_SAFETENSORS_EDITS))]
            starts = _positions(header, old)
            i = starts[rng.integers(len(starts))]
            new = news[rng.integers(len(news))]
            header = header[:i] + new + header[i + len(old):]
            how = f"header {old!r} -> {new!r} at {i}"
        header = header.rstrip(b" ")
        header += b" " * (-len(header) % 8)
        return struct.pack("<Q", len(header)) + header + data[8 + n:], how
    if kind == 5 and fmt == "msgpack":
        old, news = _MSGPACK_EDITS[rng.integers(len(_MSGPACK_EDITS))]
        starts = _positions(data, old)
        if starts:
            i = starts[rng.integers(len(starts))]
            new = news[rng.integers(len(news))]
            return data[:i] + new + data[i + len(old):], f"{old!r} -> {new!r} at {i}"
    if kind == 6 and fmt == "bin":  # a pickle byte of data.pkl, with the member's CRC recomputed
        return _mutate_pickle(data, rng)
    pos = where()
    out[pos] = int(rng.integers(256))
    return bytes(out), f"byte {pos} set to {out[pos]}"


@functools.lru_cache(maxsize=64)
def _positions(data: bytes, what: bytes) -> list[int]:
    """Where ``what`` starts in ``data`` (or, for a set of digits, where any of them is)."""
    if what == b"0123456789":
        return [i for i, c in enumerate(data) if 48 <= c <= 57]
    out, i = [], data.find(what)
    while i >= 0:
        out.append(i)
        i = data.find(what, i + 1)
    return out


def _mutate_pickle(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    import io

    src = zipfile.ZipFile(io.BytesIO(data))
    buf = io.BytesIO()
    how = ""
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            payload = src.read(info.filename)
            if info.filename.endswith("data.pkl"):
                body = bytearray(payload)
                pos = int(rng.integers(len(body)))
                body[pos] = int(rng.integers(256)) if rng.random() < 0.5 else body[pos] ^ 1
                payload, how = bytes(body), f"data.pkl byte {pos} set to {body[pos]} (CRC fixed)"
            dst.writestr(info, payload)
    return buf.getvalue(), how


# ---------------------------------------------------------------------------------------------------------------
# Reference readers (what the format's own library reads from a file)
def _reference(fmt: str, path: str, names: list[str]) -> dict[str, np.ndarray]:
    if fmt == "safetensors":
        from safetensors.numpy import load_file

        return load_file(path)
    if fmt == "bin":
        import torch

        from deberta_xf.formats.torch_bin import tensor_to_numpy

        return {k: np.array(tensor_to_numpy(v)) for k, v in torch.load(path, weights_only=True).items()}
    if fmt == "msgpack":
        from flax.serialization import msgpack_restore

        from deberta_xf.formats.flax_msgpack import FRAMEWORK, canonical_name

        def flat(tree, prefix=""):
            for k, v in tree.items():
                if isinstance(v, dict):
                    yield from flat(v, f"{prefix}{k}.")
                else:
                    yield f"{prefix}{k}", v

        with open(path, "rb") as f:
            tree = msgpack_restore(f.read())
        out = {}
        for key, value in flat(tree):
            name = canonical_name(key)
            out[name] = schema.from_framework(name, np.asarray(value), FRAMEWORK)
        return out
    import h5py

    with open_weights(path) as reader, h5py.File(path, "r") as f:
        out = {}
        for name in names:
            value = np.asarray(f[reader._entries[name][0]][()])
            try:
                out[name] = schema.from_framework(name, value, "tf")
            except KeyError:
                out[name] = value
        return out


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    def norm(x):
        x = np.asarray(x)
        return x.astype(x.dtype.newbyteorder("<")) if x.dtype.byteorder == ">" else x
    return set(a) == set(b) and all(
        norm(a[k]).dtype == norm(b[k]).dtype and a[k].shape == b[k].shape and
        np.ascontiguousarray(norm(a[k])).tobytes() == np.ascontiguousarray(norm(b[k])).tobytes() for k in a)


def check_contract(fmt: str, path: str, original: dict[str, np.ndarray], how: str) -> str:
    """Open and read a (mutated) file; the outcome: "identical", "valid-different" or "refused"."""
    start = time.monotonic()
    try:
        got = _read_all(path)
    except DebertaXfError as err:
        assert path in str(err), f"{how}: the error does not name the file: {err}"
        outcome = "refused"
    except BaseException as err:  # noqa: BLE001 - reported with the mutation
        raise AssertionError(f"{fmt}, {how}: {type(err).__name__} escaped the reader: {err}") from err
    else:
        if _same(got, original):
            outcome = "identical"
        else:
            try:
                reference = _reference(fmt, path, list(got))
            except Exception as err:  # noqa: BLE001
                raise AssertionError(f"{fmt}, {how}: read tensors differing from the original that the reference "
                                     f"library refuses ({type(err).__name__}: {err})") from None
            assert _same(got, reference), f"{fmt}, {how}: read tensors that differ from the reference library's"
            outcome = "valid-different"
    elapsed = time.monotonic() - start
    assert elapsed < MAX_SECONDS_PER_FILE, f"{fmt}, {how}: took {elapsed:.1f} s"
    return outcome


def _fuzz(fmt: str, originals, tmp_path, count: int, seed: int) -> collections.Counter:
    data, original, structure = originals[fmt]
    rng = np.random.default_rng(seed)
    path = str(tmp_path / FILES[fmt])
    counts: collections.Counter = collections.Counter()
    for i in range(count):
        mutated, how = _mutate(fmt, data, structure, rng)
        with open(path, "wb") as f:
            f.write(mutated)
        counts[check_contract(fmt, path, original, f"seed {seed} case {i}: {how}")] += 1
    COUNTS[fmt].update(counts)
    print(f"\n{fmt}: {count} mutated files: {dict(counts)}")
    return counts


@pytest.mark.parametrize("fmt", list(FILES))
def test_fuzz_fast(fmt, originals, tmp_path):
    counts = _fuzz(fmt, originals, tmp_path, FAST[fmt], seed=12)
    assert counts["refused"] > 0 and sum(counts.values()) == FAST[fmt]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", list(FILES))
def test_fuzz_slow(fmt, originals, tmp_path):
    counts = _fuzz(fmt, originals, tmp_path, SLOW[fmt], seed=1212)
    assert counts["refused"] > 0 and sum(counts.values()) == SLOW[fmt]


def test_originals_read_identically(originals, tmp_path):
    for fmt, (data, original, _) in originals.items():
        path = str(tmp_path / FILES[fmt])
        with open(path, "wb") as f:
            f.write(data)
        assert check_contract(fmt, path, original, "unmutated") == "identical"


# ---------------------------------------------------------------------------------------------------------------
# config.json: loads, or a ConfigError naming the file
_CONFIG_VALUES = [b"5", b"-1", b"0", b"1.5", b"NaN", b"Infinity", b"-Infinity", b"null", b"true", b'"x"', b"[]", b"{}",
                  b'["a", 1]', b'{"x": "a"}', b'{"0": 1}', b"1" + b"0" * 5000, b"1e308", b"10000000000000",
                  b"[" * 3000 + b"]" * 3000]


def test_fuzz_config(tmp_path):
    from deberta_xf.configuration import DebertaV2Config
    from deberta_xf.errors import ConfigError

    data = open(os.path.join(FIXTURE, "config.json"), "rb").read()
    values = [m.span(1) for m in __import__("re").finditer(rb'": ([^,\n}]+|\{[^}]*\}|\[[^\]]*\])', data)]
    rng = np.random.default_rng(12)
    path = str(tmp_path / "config.json")
    counts: collections.Counter = collections.Counter()
    for i in range(1000):
        kind = int(rng.integers(3))
        if kind == 0:  # one value replaced
            begin, end = values[rng.integers(len(values))]
            new = _CONFIG_VALUES[rng.integers(len(_CONFIG_VALUES))]
            mutated, how = data[:begin] + new + data[end:], f"value at {begin} -> {new[:20]!r}"
        elif kind == 1:
            cut = int(rng.integers(len(data)))
            mutated, how = data[:cut], f"truncated to {cut}"
        else:
            out = bytearray(data)
            pos = int(rng.integers(len(data)))
            out[pos] ^= int(rng.integers(1, 256))
            mutated, how = bytes(out), f"byte {pos} flipped"
        with open(path, "wb") as f:
            f.write(mutated)
        try:
            config = DebertaV2Config.from_json_file(path).validate()  # validate(): what every model build runs
        except ConfigError as err:
            assert path in str(err), f"case {i}, {how}: {err}"
            counts["refused"] += 1
        except BaseException as err:  # noqa: BLE001
            raise AssertionError(f"case {i}, {how}: {type(err).__name__} escaped: {err}") from err
        else:
            assert DebertaV2Config.from_dict(config.to_dict()) == config, f"case {i}, {how}: no round trip"
            counts["loaded"] += 1
    print(f"\nconfig.json: 1000 mutated files: {dict(counts)}")
    assert counts["refused"] > 0 and counts["loaded"] > 0
