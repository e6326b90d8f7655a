"""Weight files as plain ``{canonical name: np.ndarray}``: one lazy reader and one streaming writer per format.

Every reader presents canonical (PyTorch state-dict) names and layouts, whatever the file stores, and reads a
tensor only when asked (:meth:`TensorReader.read`). Every writer takes the tensors' infos up front and a
callback that produces one tensor at a time, so a conversion holds about one tensor in memory.

Formats (DESIGN §3):
  ``safetensors``  model.safetensors, sharded with model.safetensors.index.json       (convert/safetensors_io.py)
  ``bin``          pytorch_model.bin (weights_only=True), sharded with an index       (convert/torch_bin.py)
  ``tf_h5``        the reference's Keras-2 tf_model.h5                                (convert/tf_h5.py)
  ``keras_h5``     Keras 3 model.weights.h5 of our TF implementation                  (convert/keras_h5.py)
  ``msgpack``      flax_model.msgpack (flax serialization of the nested parameter dict) (convert/flax_msgpack.py)

Hostile files (issue 12): every reader checks a file's structure before it reads any tensor data or allocates an
array (header types, shapes of non-negative ints, byte ranges inside the file, no overlap, no duplicate names,
bounded nesting, links, byte order) and hands out only the dtypes :func:`check_dtype` allows (parameters are
float16/32/64 or bfloat16, little-endian; refused with the tensor's name otherwise). A reader either returns
exactly the stored numbers or raises :class:`CheckpointError` naming the file: the public methods of every reader
(``__init__``, ``infos``, ``read``, ``metadata``) are guarded so that no foreign exception escapes them.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import importlib
import json
import os
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from deberta_xf.errors import CheckpointError, CheckpointNotFoundError, DebertaXfError
from deberta_xf.fileio import atomic_write_text
from deberta_xf.frameworks import REGISTRY

try:
    import ml_dtypes

    BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - ml_dtypes is a dependency
    BFLOAT16 = None


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        count = 1
        for d in self.shape:
            count *= int(d)
        return count * self.dtype.itemsize


def _guarded(method, action: str):
    """``method`` with every exception but ours (and interrupts) turned into a CheckpointError naming the file:
    a reader's public functions raise nothing foreign, whatever the bytes (struct, h5py, pickle, RecursionError)."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (DebertaXfError, NameError, ImportError):  # ours, or a bug / a missing library: as they are
            raise
        except Exception as err:  # noqa: BLE001 - see the docstring
            path = getattr(self, "path", "?")
            detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise CheckpointError(f"{path}: corrupt or unreadable weights file: {action} failed "
                                  f"({type(err).__name__}{': ' + detail[:300] if detail else ''})") from None
    wrapper.__guarded__ = True
    return wrapper


class TensorReader(abc.ABC):
    """A weights file opened lazily. Names and layouts are canonical.

    Every subclass's ``__init__``, ``infos``, ``read`` and ``metadata`` are guarded (:func:`_guarded`)."""

    format: str = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for attr, action in (("__init__", "opening"), ("infos", "listing tensors"), ("read", "reading a tensor"),
                             ("metadata", "reading metadata")):
            method = cls.__dict__.get(attr)
            if method is not None and not getattr(method, "__guarded__", False):
                setattr(cls, attr, _guarded(method, action))

    def __init__(self, path: str):
        self.path = path

    @abc.abstractmethod
    def infos(self) -> dict[str, TensorInfo]:
        """Canonical name -> shape and dtype, without reading any data."""

    @abc.abstractmethod
    def read(self, name: str) -> np.ndarray:
        """One tensor, in canonical layout."""

    def metadata(self) -> dict[str, str]:
        return {}

    def keys(self) -> list[str]:
        return list(self.infos())

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: v.shape for k, v in self.infos().items()}

    def read_all(self, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        return {n: self.read(n) for n in (self.keys() if names is None else names)}

    def close(self) -> None:
        pass

    def __enter__(self) -> "TensorReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------------------------
# The one dtype rule every reader applies to what it is about to hand out (its infos()).
FLOATING_DTYPES = tuple(d for d in (np.dtype("<f2"), np.dtype("<f4"), np.dtype("<f8"), BFLOAT16) if d is not None)
# Non-parameter buffers of published checkpoints (``embeddings.position_ids``) may be integer or boolean.
OTHER_DTYPES = tuple(np.dtype(c) for c in ("<i8", "<i4", "<i2", "i1", "<u8", "<u4", "<u2", "u1", "?"))


def is_parameter_name(name: str) -> bool:
    """A name of the kind every DeBERTa parameter has (``*.weight``, ``*.bias``, ``bias``): floating by schema."""
    return name == "bias" or name.endswith((".weight", ".bias", "/kernel", "/bias"))


def check_dtype(path: str, name: str, dtype: object) -> np.dtype:
    """``dtype`` if it is one readers may hand out for tensor ``name`` of file ``path``, else CheckpointError.

    Parameters (every DeBERTa weight and bias) must be little-endian float16/32/64 or bfloat16; other tensors
    (buffers such as ``position_ids``) may also be plain little-endian integers or booleans. Complex, datetime,
    object, string, void, structured and sub-array dtypes, and big-endian ones, are refused with the name."""
    try:
        dt = np.dtype(dtype)
    except Exception:  # noqa: BLE001 - any unparseable dtype is refused below
        raise CheckpointError(f"{path}: tensor {name!r} has an unknown dtype {dtype!r}") from None
    if BFLOAT16 is not None and dt == BFLOAT16:
        return dt
    if is_parameter_name(name):
        if dt.names is None and dt.shape == () and dt.kind == "f" and dt in FLOATING_DTYPES and \
                dt.byteorder in "=<|":
            return dt.newbyteorder("<") if dt.itemsize > 1 else dt
        raise CheckpointError(f"{path}: tensor {name!r} has dtype {dt} ({dt.str}); a DeBERTa parameter must be "
                              f"float16, float32, float64 or bfloat16 (little-endian)")
    if dt.names is None and dt.shape == () and dt.kind in "fiub" and dt.byteorder in "=<|" and \
            (dt in FLOATING_DTYPES or dt in OTHER_DTYPES):
        return dt
    raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {dt} ({dt.str}); expected a "
                          f"little-endian float, integer or bool dtype")


def check_infos(path: str, infos: Mapping[str, TensorInfo]) -> dict[str, TensorInfo]:
    """Every entry through :func:`check_dtype`, and shapes of non-negative ints whose element count fits int64."""
    out = {}
    for name, info in infos.items():
        if not isinstance(name, str):
            raise CheckpointError(f"{path}: tensor name {name!r} is a {type(name).__name__}, not a string")
        check_shape(path, name, info.shape)
        out[name] = TensorInfo(tuple(int(d) for d in info.shape), check_dtype(path, name, info.dtype))
    return out


MAX_ELEMENTS = 2**62


def check_shape(path: str, name: str, shape: object) -> tuple[int, ...]:
    """A shape of at most 32 non-negative ints whose product is below 2**62, else CheckpointError."""
    if not isinstance(shape, (tuple, list)) or len(shape) > 32 or not all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise CheckpointError(f"{path}: tensor {name!r} has shape {shape!r}; expected a list of at most 32 "
                              f"non-negative integers")
    count = 1
    for d in shape:
        count *= int(d)
    if count >= MAX_ELEMENTS:
        raise CheckpointError(f"{path}: tensor {name!r} has shape {list(shape)} with {count} elements, too many "
                              f"for any file")
    return tuple(int(d) for d in shape)


Producer = Callable[[str], np.ndarray]


def produce(get: Producer, name: str, infos: Mapping[str, TensorInfo], path: str) -> np.ndarray:
    """One tensor from a writer's producer, checked against the shape and dtype announced up front (a writer has
    already laid out its file from them)."""
    info = infos[name]
    array = np.asarray(get(name))
    if tuple(array.shape) != tuple(info.shape) or array.dtype != info.dtype:
        raise CheckpointError(f"{path}: tensor {name!r} is {array.dtype}{list(array.shape)}, announced as "
                              f"{info.dtype}{list(info.shape)}")
    return array


_READ_CHUNK = 64 * 1024 * 1024  # bytes per read() call (a single call may return less; Linux stops at 2 GiB)


def read_into(file, offset: int, out: np.ndarray) -> bool:
    """Fill the bytes of the C-contiguous array ``out`` from ``file`` (opened ``"rb"``) at ``offset``: our own copy,
    read into new memory (the file may be replaced later). False where the file ends first."""
    view, done = memoryview(out.reshape(-1).view(np.uint8)), 0
    file.seek(offset)
    while done < len(view):
        n = file.readinto(view[done:done + _READ_CHUNK])
        if not n:
            return False
        done += n
    return True


def announce(get: Producer, names: Sequence[str]) -> None:
    """Tell a producer that reads ahead (one with a ``prefetch(names)`` method, as the conversion's) the order in
    which the writer will ask for the tensors; every writer calls this before its first ``get``."""
    prefetch = getattr(get, "prefetch", None)
    if prefetch is not None:
        prefetch(list(names))


@dataclasses.dataclass(frozen=True)
class Format:
    name: str
    module: str            # convert.<module> with open_reader(path, **kw) and write(path, infos, get, **kw)
    filenames: tuple[str, ...]
    framework: str         # the framework that writes it by default

    @property
    def layout(self) -> str:
        """The framework whose parameter layout the file stores (schema.LAYOUT: TF's transposed kernels, ...)."""
        return self.framework

    def _mod(self):
        return importlib.import_module(self.module)

    def available(self) -> bool:
        """Can this installation read and write the format (its module and libraries importable)?"""
        try:
            self._mod()
        except ModuleNotFoundError as err:
            if err.name == self.module:
                return False
            raise
        return True

    def open(self, path: str, **kwargs) -> TensorReader:
        return self._mod().open_reader(path, **kwargs)

    def write(self, path: str, infos: Mapping[str, TensorInfo], get: Producer, **kwargs) -> None:
        self._mod().write(path, infos, get, **kwargs)


FORMATS: dict[str, Format] = {
    "safetensors": Format("safetensors", "deberta_xf.formats.safetensors_io",
                          ("model.safetensors", "model.safetensors.index.json"), "torch"),
    "bin": Format("bin", "deberta_xf.formats.torch_bin", ("pytorch_model.bin", "pytorch_model.bin.index.json"), "torch"),
    "tf_h5": Format("tf_h5", "deberta_xf.formats.tf_h5", ("tf_model.h5",), "tf"),
    "keras_h5": Format("keras_h5", "deberta_xf.formats.keras_h5", ("model.weights.h5",), "tf"),
    "msgpack": Format("msgpack", "deberta_xf.formats.flax_msgpack", ("flax_model.msgpack",), "flax"),
}
# What each framework's save_pretrained / `convert --to` writes, the formats it may write with --format, and the
# order in which it looks for a weights file in a checkpoint directory (its own first): the registry's entries.
DEFAULT_FORMAT = {f.name: f.default_format for f in REGISTRY.values()}
FRAMEWORK_FORMATS = {f.name: f.formats for f in REGISTRY.values()}
SEARCH_ORDER = {f.name: f.search_order for f in REGISTRY.values()}


def detect_format(path: str) -> Format:
    """The format of a weights file, from its name."""
    base = os.path.basename(path)
    if base.endswith(".safetensors") or base.endswith(".safetensors.index.json"):
        return FORMATS["safetensors"]
    if base.endswith(".bin") or base.endswith(".bin.index.json") or base.endswith(".pt") or base.endswith(".pth"):
        return FORMATS["bin"]
    if base.endswith(".weights.h5"):
        return FORMATS["keras_h5"]
    if base.endswith(".h5"):
        return FORMATS["tf_h5"]
    if base.endswith(".msgpack"):
        return FORMATS["msgpack"]
    raise CheckpointError(
        f"{path}: unknown weights format (expected .safetensors, .bin, tf_model.h5, .weights.h5 or .msgpack)")


def find_weights(directory: str, framework: str = "torch") -> tuple[str, Format]:
    """The weights file a framework loads from a checkpoint directory: its own format first, then any other."""
    if not os.path.isdir(directory):
        raise CheckpointNotFoundError(f"{directory}: not a directory")
    for fmt_name in SEARCH_ORDER[framework]:
        fmt = FORMATS[fmt_name]
        for filename in reversed(fmt.filenames):  # prefer the index of a sharded checkpoint
            path = os.path.join(directory, filename)
            if os.path.isfile(path):
                return path, fmt
    wanted = ", ".join(f for n in SEARCH_ORDER[framework] for f in FORMATS[n].filenames)
    raise CheckpointNotFoundError(f"{directory}: no weights file found (looked for {wanted})")


def open_weights(path: str, **kwargs) -> TensorReader:
    """Open a weights file (or the index of a sharded one) lazily, in canonical names and layouts."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointNotFoundError(f"{path}: weights file not found")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: not a regular file")
    return detect_format(path).open(path, **kwargs)


def open_checked(path: str) -> TensorReader:
    """:func:`open_weights`, with any low-level failure of a reader (h5py, msgpack, OS) named as a bad file."""
    try:
        return open_weights(path)
    except DebertaXfError:
        raise
    except (OSError, ValueError, KeyError, TypeError, EOFError, RuntimeError) as err:
        raise CheckpointError(f"{path}: cannot read this weights file ({type(err).__name__}: {err})") from None


def write_weights(path: str, infos: Mapping[str, TensorInfo], get: Producer, format: str | None = None,
                  **kwargs) -> None:
    """Write tensors (canonical names/layouts) in ``format`` (default: from the file name), atomically.

    Keyword arguments every writer takes: ``task`` (the model class whose layout tf_model.h5 / model.weights.h5
    follow; inferred from the names when omitted) and ``progress``; safetensors also ``metadata``."""
    fmt = FORMATS[format] if format else detect_format(path)
    fmt.write(path, infos, get, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Sharded output: the reference's ``max_shard_size`` rule and file names (``model-00001-of-00003.safetensors`` +
# ``model.safetensors.index.json``), for the formats that have an index (safetensors, bin).
_SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_shard_size(value: int | str) -> int:
    """``max_shard_size`` as the reference spells it: bytes as an int, or ``"5GB"`` (10**9) / ``"500MiB"`` (2**20)."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        text = str(value).strip().upper().replace(" ", "")
        unit = next((u for u in sorted(_SIZE_UNITS, key=len, reverse=True) if text.endswith(u)), "")
        try:
            number = int(float(text[:len(text) - len(unit)]) * _SIZE_UNITS[unit or "B"])
        except ValueError:
            raise DebertaXfError(f"max shard size {value!r}: expected bytes or a size like '5GB', '500MiB'") from None
    if number < 1:
        raise DebertaXfError(f"max shard size {value!r}: must be at least 1 byte")
    return number


def plan_shards(infos: Mapping[str, TensorInfo], max_bytes: int) -> list[list[str]]:
    """Tensor names per shard, in order: a shard is closed before the tensor that would take it past ``max_bytes``;
    a tensor larger than ``max_bytes`` gets a shard of its own (the reference's rule)."""
    shards: list[list[str]] = []
    current: list[str] = []
    size = 0
    for name, info in infos.items():
        if info.nbytes > max_bytes:
            shards.append([name])
            continue
        if current and size + info.nbytes > max_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(name)
        size += info.nbytes
    if current or not shards:
        shards.append(current)
    return shards


def shard_filenames(fmt: Format, count: int) -> list[str]:
    """``model-00001-of-00003.safetensors``, ... for ``fmt``'s single-file name ``model.safetensors``."""
    stem, dot, ext = fmt.filenames[0].rpartition(".")
    return [f"{stem}-{i:05d}-of-{count:05d}.{ext}" for i in range(1, count + 1)]


def sharded_filename(fmt: Format, shards: int) -> str:
    """What a loader opens: the single weights file, or the index of a sharded one."""
    if shards > 1 and not any(f.endswith(".index.json") for f in fmt.filenames):
        raise DebertaXfError(f"the {fmt.name} format cannot be sharded (only "
                             f"{', '.join(n for n, f in FORMATS.items() if len(f.filenames) > 1)} have an index file)")
    return fmt.filenames[1] if shards > 1 else fmt.filenames[0]


def write_sharded(directory: str, fmt: Format, infos: Mapping[str, TensorInfo], get: Producer, max_bytes: int,
                  **kwargs) -> list[str]:
    """Write the tensors into ``directory`` as one file, or as shards of at most ``max_bytes`` plus the reference's
    ``*.index.json`` (``{"metadata": {"total_size": N}, "weight_map": {name: shard}}``); each file atomically.
    Returns the file names written, the file a loader opens first."""
    groups = plan_shards(infos, max_bytes)
    target = sharded_filename(fmt, len(groups))
    if len(groups) == 1:
        fmt.write(os.path.join(directory, target), infos, get, **kwargs)
        return [target]
    names = shard_filenames(fmt, len(groups))
    for filename, group in zip(names, groups):
        fmt.write(os.path.join(directory, filename), {n: infos[n] for n in group}, get, **kwargs)
    index = {"metadata": {"total_size": sum(i.nbytes for i in infos.values())},
             "weight_map": {n: filename for filename, group in zip(names, groups) for n in group}}
    atomic_write_text(os.path.join(directory, target), json.dumps(index, indent=2, sort_keys=True) + "\n")
    return [target] + names


def array_source(tensors: Mapping[str, np.ndarray]) -> tuple[dict[str, TensorInfo], Producer]:
    """A dict of arrays as a writer's ``(infos, get)``."""
    infos = {k: TensorInfo(tuple(v.shape), np.asarray(v).dtype) for k, v in tensors.items()}
    return infos, lambda k: np.asarray(tensors[k])


def write_arrays(path: str, tensors: Mapping[str, np.ndarray], format: str | None = None, **kwargs) -> None:
    """Convenience: write a dict of arrays."""
    write_weights(path, *array_source(tensors), format=format, **kwargs)


def cast_dtype(name: str) -> np.dtype | None:
    """``--dtype`` name -> numpy dtype (None for "keep")."""
    table = {"keep": None, "float32": np.dtype(np.float32), "fp32": np.dtype(np.float32),
             "float16": np.dtype(np.float16), "fp16": np.dtype(np.float16), "bfloat16": BFLOAT16,
             "bf16": BFLOAT16}
    if name not in table:
        raise CheckpointError(f"unknown dtype {name!r} (expected keep, float32, float16 or bfloat16)")
    return table[name]
