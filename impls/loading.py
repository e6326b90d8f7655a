"""Framework-free checkpoint loading and saving: find the config and weights, match them to the schema, read the
arrays; check a model's tensors against the schema and write them with its config.

Each framework's ``from_pretrained`` opens the checkpoint with :func:`open_checkpoint` and assigns each canonical
array to its own parameter (through the schema's layout table) as it is read (:func:`load_checkpoint` reads them
all into a dict); each ``save_pretrained`` hands its canonical tensors to :func:`save_checkpoint`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import tempfile
import warnings
from typing import Any, Iterator

import numpy as np

from deberta_xf import schema
from deberta_xf.configuration import CONFIG_NAME, DebertaV2Config
from deberta_xf.errors import CheckpointNotFoundError, CheckpointShapeError, ConfigError, ConfigNotFoundError
from deberta_xf.fileio import atomic_path, check_space
from deberta_xf.formats import (FORMATS, Producer, TensorInfo, array_source, find_weights, open_weights,
                                parse_shard_size, plan_shards, sharded_filename, write_sharded, write_weights)
from deberta_xf.frameworks import get_framework
from deberta_xf.limits import check_memory

logger = logging.getLogger("deberta_xf")


def resolve_config(path: str | os.PathLike | None, config: Any = None) -> DebertaV2Config:
    """The config given (object, dict or JSON path), else ``config.json`` of the checkpoint directory; validated
    (one ConfigError listing every problem, naming the file it came from)."""
    return _read_config(path, config).validate()


def _read_config(path: str | os.PathLike | None, config: Any = None) -> DebertaV2Config:
    if isinstance(config, DebertaV2Config):
        return config
    if isinstance(config, dict):
        return DebertaV2Config.from_dict(config)
    if isinstance(config, (str, os.PathLike)):
        return DebertaV2Config.from_pretrained(config)
    if config is not None:
        raise TypeError(f"config must be a DebertaV2Config, a dict or a path, got {type(config).__name__}")
    if path is None:
        raise ConfigError("no config given and no checkpoint to read one from")
    path = os.fspath(path)
    if os.path.isdir(path):
        file = os.path.join(path, CONFIG_NAME)
        if not os.path.isfile(file):
            raise ConfigNotFoundError(f"{path}: no {CONFIG_NAME} in this checkpoint directory")
        return DebertaV2Config.from_json_file(file)
    if not os.path.exists(path):
        raise CheckpointNotFoundError(f"{path}: no such checkpoint file or directory")
    raise ConfigError(f"{path}: loading a weights file needs a config (pass config=...)")


@dataclasses.dataclass
class LoadedCheckpoint:
    config: DebertaV2Config
    arrays: dict[str, np.ndarray]        # canonical name -> array in canonical (PyTorch) layout
    report: schema.LoadReport
    missing_head: list[str]              # head tensors absent from the checkpoint (freshly initialised)
    weights_path: str
    stored_dtype: str | None = None      # the checkpoint's floating dtype (for dtype="auto")


@dataclasses.dataclass
class CheckpointStream:
    """A checkpoint matched to the schema, its tensors not read yet: :meth:`arrays` reads them one at a time, so
    that a model takes each tensor as it is read (in memory: the model and one tensor, not the model and the whole
    checkpoint). Made by :func:`open_checkpoint`; the fields are those of :class:`LoadedCheckpoint`."""
    config: DebertaV2Config
    task: str
    reader: Any                          # the open TensorReader
    mapping: dict[str, str]              # canonical name -> name in the checkpoint, in reading order
    report: schema.LoadReport
    missing_head: list[str]
    weights_path: str
    stored_dtype: str | None
    dtype: Any

    def arrays(self, stacklevel: int = 3) -> Iterator[tuple[str, np.ndarray]]:
        """(canonical name, array in canonical layout) per tensor, read, cast to ``dtype`` and checked for NaN/Inf
        when asked for; after the last one, :func:`load_checkpoint`'s warnings (``stacklevel`` for the NaN/Inf
        warning, counted from this generator: 3 names the caller of the method that iterates)."""
        nonfinite: list[str] = []
        for name, ckpt_name in self.mapping.items():
            array = self.reader.read(ckpt_name)
            if is_floating(array):
                if self.dtype is not None:
                    array = array.astype(self.dtype, copy=False)
                if not all_finite(array):
                    nonfinite.append(ckpt_name)
            yield name, array
            del array  # not held while the next tensor is read
        weights, report = self.weights_path, self.report
        if nonfinite:
            shown = ", ".join(nonfinite[:NONFINITE_SHOWN]) + (f" and {len(nonfinite) - NONFINITE_SHOWN} more"
                                                              if len(nonfinite) > NONFINITE_SHOWN else "")
            warnings.warn(f"{weights}: {len(nonfinite)} tensor{'s' if len(nonfinite) > 1 else ''} with NaN or Inf "
                          f"values: {shown}; the model's outputs will be NaN or Inf where they are used",
                          UserWarning, stacklevel=stacklevel)
        if self.missing_head:
            logger.warning("%s: no weights for the %s head (%s); it is freshly initialised and needs training",
                           weights, self.task, ", ".join(self.missing_head))
        if report.reinitialized:
            logger.warning("%s: tensors re-initialised because their shapes differ from the checkpoint's "
                           "(ignore_mismatched_sizes=True): %s", weights, ", ".join(
                               f"{n} (checkpoint {list(got)}, model {list(want)})"
                               for n, got, want in report.mismatched))
        if report.unexpected:
            logger.warning("%s: unused weights not part of the %s model: %s", weights, self.task,
                           ", ".join(report.unexpected))


def loading_info(report: schema.LoadReport) -> dict[str, list]:
    """The dict the reference's ``from_pretrained(..., output_loading_info=True)`` returns beside the model:
    ``missing_keys`` (model tensors absent from the checkpoint, freshly initialised), ``unexpected_keys``
    (checkpoint tensors not used: :data:`deberta_xf.schema.IGNORED_ON_LOAD` extras are not listed),
    ``mismatched_keys`` ((name, checkpoint shape, model shape), re-initialised with ``ignore_mismatched_sizes``)
    and ``error_msgs`` (always empty: an error raises)."""
    return {"missing_keys": list(report.missing), "unexpected_keys": list(report.unexpected),
            "mismatched_keys": [(report.renamed.get(name, name), tuple(got), tuple(want))
                                for name, got, want in report.mismatched],
            "error_msgs": []}


def is_floating(array: np.ndarray) -> bool:
    return _floating_dtype(array.dtype)


def _floating_dtype(dtype: np.dtype) -> bool:
    return dtype.kind == "f" or dtype.name == "bfloat16"


_DTYPE_NAMES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16", "fp32": "float32",
                "fp16": "float16", "bf16": "bfloat16", "half": "float16", "float": "float32"}


def dtype_name(dtype: Any) -> str | None:
    """One spelling of a parameter dtype for every framework: None stays None, ``"auto"`` stays ``"auto"``;
    strings (``"float16"``, ``"fp16"``, ``"torch.float16"``), numpy dtypes and types, and torch / TF / JAX dtype
    objects become ``"float32"``, ``"float16"`` or ``"bfloat16"``."""
    if dtype is None or (isinstance(dtype, str) and dtype == "auto"):
        return dtype
    name = getattr(dtype, "name", None)  # numpy / tf / jax dtypes
    if not isinstance(name, str):
        try:
            name = np.dtype(dtype).name  # numpy scalar types (np.float16), ml_dtypes.bfloat16
        except TypeError:
            name = str(dtype)  # torch.float16 -> "torch.float16"
    name = name.rsplit(".", 1)[-1].lower()
    if name not in _DTYPE_NAMES:
        raise ValueError(f"unsupported dtype {dtype!r}; expected float32, float16, bfloat16 or 'auto'")
    return _DTYPE_NAMES[name]


def resized_rows(old: np.ndarray, new_rows: int, std: float, mean_resizing: bool,
                  rng: np.random.Generator) -> np.ndarray:
    """``old`` with ``new_rows`` rows: the first ones kept, new ones as the reference's ``resize_token_embeddings``
    draws them (around the old rows' mean with 1e-9 x their covariance, or normal(0, std); a bias: its mean, or 0)."""
    n = min(old.shape[0], new_rows)
    out = np.zeros((new_rows, *old.shape[1:]), np.float32)
    out[:n] = old[:n]
    added = new_rows - n
    if added <= 0:
        return out
    source = old.astype(np.float64)
    if old.ndim == 1:
        out[n:] = source.mean() if mean_resizing else 0.0
    elif not mean_resizing:
        out[n:] = rng.normal(0.0, std, (added, *old.shape[1:]))
    else:
        mean = source.mean(0)
        centered = source - mean
        covariance = 1e-9 * centered.T @ centered / source.shape[0]
        try:
            np.linalg.cholesky(covariance)
            out[n:] = rng.multivariate_normal(mean, covariance, added)
        except np.linalg.LinAlgError:  # not positive definite: the mean, as the reference
            out[n:] = mean
    return out


NONFINITE_SHOWN = 5  # tensor names a warning about NaN/Inf weights lists
_FINITE_CHUNK = 1 << 22  # elements: np.isfinite's boolean temporary stays at 4 MB
_EXPONENT_BITS = {"float16": 0x7C00, "bfloat16": 0x7F80}  # all ones: Inf or NaN


def all_finite(array: np.ndarray) -> bool:
    """No NaN or Inf in a floating-point ``array`` (checked in chunks: no array-sized temporary). 16-bit floats
    are checked on their exponent bits (numpy's isfinite is slow on float16 and absent for bfloat16)."""
    flat = array.ravel(order="K")  # a view for contiguous arrays
    exponent = _EXPONENT_BITS.get(flat.dtype.name)
    if exponent is not None:
        bits = flat.view(np.uint16)
        return all(((bits[i:i + _FINITE_CHUNK] & exponent) != exponent).all()
                   for i in range(0, bits.size, _FINITE_CHUNK))
    return all(np.isfinite(flat[i:i + _FINITE_CHUNK]).all() for i in range(0, flat.size, _FINITE_CHUNK))


def weights_path_for(path: str, framework: str) -> str:
    path = os.fspath(path)
    if os.path.isdir(path):
        return find_weights(path, framework)[0]
    if not os.path.exists(path):
        raise CheckpointNotFoundError(f"{path}: no such checkpoint file or directory")
    return path


def load_checkpoint(path: str | os.PathLike, task: str, framework: str, config: Any = None,
                    dtype: Any = np.float32, ignore_mismatched_sizes: bool = False) -> LoadedCheckpoint:
    """Read a checkpoint for ``task`` in ``framework``: its config and canonical arrays, checked by the schema.

    Floating-point tensors are cast to ``dtype`` (numpy dtype; fp32 by default, as the reference loads hub
    checkpoints stored in fp16); ``stored_dtype`` says what the checkpoint held. Missing backbone tensors and
    shape mismatches raise :class:`CheckpointError` (a mismatch: :class:`CheckpointShapeError`, also a
    RuntimeError as the reference's); missing head tensors are returned (the head keeps its fresh
    initialisation, with a warning). With ``ignore_mismatched_sizes``, as in the reference, tensors whose shape
    differs (a classifier with another ``num_labels``, embeddings for another ``vocab_size``) are skipped too:
    returned with the missing ones, listed in ``report.reinitialized`` and in a warning.

    Before anything is read, a model whose parameters would not fit in the memory available raises
    :class:`~deberta_xf.errors.MemoryLimitError` (:func:`deberta_xf.limits.check_memory`). Floating-point tensors
    holding NaN or Inf are loaded, with one ``UserWarning`` naming the file, their count and the first few
    (``deberta-xf convert`` refuses them unless ``--allow-nonfinite``).
    """
    with open_checkpoint(path, task, framework, config, dtype, ignore_mismatched_sizes) as stream:
        arrays = dict(stream.arrays(stacklevel=4))
    return LoadedCheckpoint(stream.config, arrays, stream.report, stream.missing_head + stream.report.reinitialized,
                            stream.weights_path, stream.stored_dtype)


@contextlib.contextmanager
def open_checkpoint(path: str | os.PathLike, task: str, framework: str, config: Any = None,
                    dtype: Any = np.float32, ignore_mismatched_sizes: bool = False) -> Iterator[CheckpointStream]:
    """:func:`load_checkpoint` without reading the tensors: the config, the weights file, the schema match and its
    checks (and the memory check), and a :class:`CheckpointStream` that reads the tensors one at a time while the
    file is open."""
    cfg = resolve_config(path, config)
    weights = weights_path_for(os.fspath(path), framework)
    check_memory(cfg, task, dtype, framework)  # the model's parameters: refused before reading any tensor
    with open_weights(weights) as reader:
        infos = reader.infos()
        mapping, report = schema.match_checkpoint(cfg, task, {k: v.shape for k, v in infos.items()})
        try:
            missing_head = schema.check_report(report, cfg, task, weights,
                                               ignore_mismatched_sizes=ignore_mismatched_sizes)
        except CheckpointShapeError as err:
            raise CheckpointShapeError(f"{err}\n(from_pretrained(..., ignore_mismatched_sizes=True) re-initialises "
                                       "the tensors of another shape)") from None
        stored_dtype = next((infos[n].dtype.name for n in mapping.values() if _floating_dtype(infos[n].dtype)), None)
        yield CheckpointStream(cfg, task, reader, mapping, report, missing_head, weights, stored_dtype, dtype)


def save_checkpoint(save_directory: str | os.PathLike, config: DebertaV2Config, task: str, framework: str,
                    infos: dict[str, TensorInfo], get: Producer, format: str | None = None) -> str:
    """Write ``config.json`` and the weights (the framework's default format, or ``format``) into
    ``save_directory``; the weights are streamed one tensor at a time from ``get(name)`` (canonical names and
    layouts) and every file is written atomically; the new weights replace the old ones only once config.json is
    written too, so a failure (a full disk, a read-only directory: an OSError naming the file) leaves
    ``save_directory`` as it was. Returns the weights file's path.

    The tensors must be exactly the schema's names and shapes for ``config`` and ``task`` (a guard against a
    parameter tree that drifted from the schema)."""
    entry = get_framework(framework)
    format = format or entry.default_format
    if format not in entry.formats:
        raise ValueError(f"unsupported format {format!r} for the {framework} model; expected one of "
                         f"{', '.join(entry.formats)}")
    expected = schema.expected_shapes(config, task)
    drift = set(infos) ^ set(expected)
    wrong = sorted(n for n in set(infos) & set(expected) if tuple(infos[n].shape) != tuple(expected[n]))
    if drift or wrong:
        raise RuntimeError(f"parameters differ from the schema: names {sorted(drift)}, shapes {wrong}")
    save_directory = os.path.abspath(os.fspath(save_directory))
    path = os.path.join(save_directory, FORMATS[format].filenames[0])
    check_space(path, sum(info.nbytes for info in infos.values()))  # a full disk: refused before writing
    created = not os.path.isdir(save_directory)
    os.makedirs(save_directory, exist_ok=True)
    try:
        # the weights under a temporary name until config.json is written too: a failure (a full disk) leaves
        # the directory as it was, not new weights beside an old config
        with atomic_path(path) as weights_tmp:
            write_weights(weights_tmp, infos, get, format=format, task=task)
            config.save_pretrained(save_directory)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(save_directory)  # only if nothing else is in it
        raise
    return path


def save_sharded(save_directory: str | os.PathLike, config: DebertaV2Config, task: str, framework: str,
                 state: dict[str, np.ndarray], format: str, max_shard_size: int | str) -> list[str]:
    """Write ``config.json`` and ``state`` in ``format``: one file, or shards of at most ``max_shard_size`` and
    the index (the reference's names and rule: deberta_xf.formats.write_sharded). Weights files of that format
    left by an earlier save (a single file, an index, shards) are removed, as the reference removes stale shards,
    so a loader cannot pick them up. Returns the file names written, the one a loader opens first."""
    fmt = FORMATS[format]
    infos, get = array_source(state)
    max_bytes = parse_shard_size(max_shard_size)
    shards = len(plan_shards(infos, max_bytes))
    if shards == 1:  # the single-file save: schema-checked, atomic with config.json
        files = [os.path.basename(save_arrays(save_directory, config, task, framework, state, format))]
    else:
        sharded_filename(fmt, shards)  # a format without an index file (msgpack): refused before writing
        os.makedirs(save_directory, exist_ok=True)
        # written beside the directory's files first: a failure (a full disk) leaves save_directory as it was
        with tempfile.TemporaryDirectory(dir=save_directory, prefix=".deberta_xf-shards-") as staging:
            files = write_sharded(staging, fmt, infos, get, max_bytes, task=task)
            config.save_pretrained(staging)
            for filename in [*files[1:], files[0], CONFIG_NAME]:  # the index after its shards, config.json last
                os.replace(os.path.join(staging, filename), os.path.join(save_directory, filename))
    stem, _, ext = fmt.filenames[0].rpartition(".")
    shard_name = re.compile(rf"{re.escape(stem)}-\d{{5}}-of-\d{{5}}\.{re.escape(ext)}")
    for filename in os.listdir(save_directory):
        if filename not in files and (filename in fmt.filenames or shard_name.fullmatch(filename)):
            os.remove(os.path.join(save_directory, filename))
    return files


def save_arrays(save_directory: str | os.PathLike, config: DebertaV2Config, task: str, framework: str,
                state: dict[str, np.ndarray], format: str | None = None) -> str:
    """:func:`save_checkpoint` of a dict of canonical arrays."""
    return save_checkpoint(save_directory, config, task, framework, *array_source(state), format=format)
