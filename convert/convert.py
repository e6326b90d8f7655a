"""The conversion pipeline behind ``deberta-xf convert``: any supported weights file -> a complete checkpoint
directory for one framework, streamed, checked, verified and atomic.

Everything here works on canonical names (the reference's PyTorch state-dict names) and plain numpy arrays; the
format readers and writers of :mod:`deberta_xf.formats` do the per-format naming and layouts. The steps:

1. :func:`plan_conversion` -- everything that needs no tensor data, so bad input fails before anything is
   written: the config (``config.json`` of SRC, or ``--config``), the weights file and its format, the task
   (inferred from the head tensors, or ``--task``), the schema match (shapes checked against the config, missing
   tensors listed by name), what is dropped or renamed and why, the target format and dtypes, DST.
2. :func:`write_checkpoint` -- into a temporary directory beside DST: each tensor is read from SRC only when the
   writer asks for it, checked for NaN/Inf, cast, and handed on, so about one tensor is in memory at a time (in
   every format, ``pytorch_model.bin`` included); then ``config.json`` and the tokenizer files of SRC.
3. Verification (:mod:`deberta_xf.convert.verify`), on by default, against the temporary directory.
4. The temporary directory is renamed onto DST only when all of that succeeded (:func:`deberta_xf.fileio.
   atomic_directory`); on any failure or interruption it is removed and DST (if it existed) is left as it was.

The source is only ever opened for reading.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
import shutil
import threading
import time
from typing import Callable, Sequence

import numpy as np

from deberta_xf.formats import (DEFAULT_FORMAT, FORMATS, FRAMEWORK_FORMATS, Format, TensorInfo, cast_dtype,
                                detect_format, find_weights, open_checked, parse_shard_size, plan_shards,
                                sharded_filename, write_sharded)
from deberta_xf import schema
from deberta_xf.convert.verify import tensor_digest
from deberta_xf.tasks import TASK_TABLE, check_task, infer_task
from deberta_xf.configuration import CONFIG_NAME, DebertaV2Config
from deberta_xf.errors import CheckpointError, ConfigError, DebertaXfError
from deberta_xf.fileio import atomic_directory, check_replace, check_space, remove_stale_temporaries

# Files of a checkpoint's tokenizer, copied from SRC to DST when present (symlinks are followed).
TOKENIZER_FILES = ("spm.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")
# A source directory holding several weights files is converted from the one PyTorch would load
# (formats.SEARCH_ORDER["torch"]): safetensors first (lazily readable, runs no code), then bin, tf_h5, ...
SOURCE_SEARCH = "torch"
# Formats that can carry tensors outside the model's own parameters (the RTD head with --keep-rtd): those
# keyed by canonical names. The framework formats (tf_h5, keras_h5, msgpack) map every name onto a layer.
FREE_NAME_FORMATS = ("safetensors", "bin")
RTD_PREFIX = "mask_predictions."
HEAD_PREFIXES = ("cls.", "lm_predictions.", "pooler.", "classifier.", "qa_outputs.")
_FINITE_CHUNK = 1 << 24  # elements per NaN/Inf check, so the check needs no tensor-sized temporary
# The least that the read-ahead may hold (the largest tensor when larger): the 884M v2-xlarge's peak RSS stays at
# the size of its largest tensor (the word embeddings) plus the one being written.
READ_AHEAD_BYTES = 64 << 20


# ---------------------------------------------------------------------------------------------------------------
# Small helpers
def is_floating(dtype: np.dtype) -> bool:
    return dtype.kind == "f" or dtype.name == "bfloat16"


def dtype_name(dtype: np.dtype) -> str:
    return np.dtype(dtype).name  # "float32", "float16", "bfloat16" (ml_dtypes)


def format_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    size = n / 1024
    for unit in ("KiB", "MiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _within(path: str, directory: str) -> bool:
    """Is ``path`` ``directory`` itself or inside it (both real paths)?"""
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def _require_format(fmt: Format, role: str) -> None:
    if not fmt.available():
        raise CheckpointError(f"the {fmt.name} format ({', '.join(fmt.filenames)}) cannot be {role} by this "
                              f"installation: its module {fmt.module} is missing")


# ---------------------------------------------------------------------------------------------------------------
# The plan: every check that needs no tensor data
@dataclasses.dataclass
class ConversionPlan:
    source: str                      # SRC as given
    source_dir: str | None           # the checkpoint directory of SRC (tokenizer files), None for a bare file
    weights_path: str                # the weights file converted
    source_format: Format
    config: DebertaV2Config
    config_path: str
    task: str
    task_reason: str
    destination: str
    to: str                          # target framework
    target_format: Format
    dtype: np.dtype | None           # --dtype (None: keep)
    names: dict[str, str]            # output name -> source name, in writing order
    infos: dict[str, TensorInfo]     # output name -> shape and dtype written
    source_infos: dict[str, TensorInfo]
    notes: list[str] = dataclasses.field(default_factory=list)
    tokenizer_files: list[str] = dataclasses.field(default_factory=list)
    force: bool = False
    allow_nonfinite: bool = False
    max_shard_size: int | None = None  # --max-shard-size in bytes (None: one file)

    @property
    def source_framework(self) -> str:
        return self.source_format.framework

    @property
    def shards(self) -> list[list[str]]:
        """The output tensor names per weights file (one list unless --max-shard-size splits them)."""
        return plan_shards(self.infos, self.max_shard_size) if self.max_shard_size else [list(self.infos)]

    @property
    def weights_filename(self) -> str:
        """The weights file of DST a loader opens: the single file, or the index of the shards."""
        return sharded_filename(self.target_format, len(self.shards))

    @property
    def total_bytes(self) -> int:
        return sum(i.nbytes for i in self.infos.values())

    @property
    def lossy_dtypes(self) -> set[str]:
        """Narrower float dtypes that some tensor was cast to (fp32 -> fp16/bf16, fp16 <-> bf16)."""
        lossy = set()
        for name, info in self.infos.items():
            src = self.source_infos[name].dtype
            if is_floating(src) and info.dtype != src and not (info.dtype == np.float32 or info.dtype == np.float64):
                lossy.add(dtype_name(info.dtype))
        return lossy


def _open_source(source: str, config: str | None) -> tuple[str | None, str, Format, DebertaV2Config, str]:
    if not os.path.exists(source):
        raise CheckpointError(f"{source}: no such checkpoint directory or weights file")
    if os.path.isdir(source):
        source_dir = source
        # raises, naming every file looked for, when there is none
        weights_path, fmt = find_weights(source, SOURCE_SEARCH)
    else:
        source_dir = None
        weights_path = source
        fmt = detect_format(source)  # unknown extension -> CheckpointError naming the file
    if config is not None:
        config_path = config
    elif source_dir is not None:
        config_path = os.path.join(source_dir, CONFIG_NAME)
        if not os.path.isfile(config_path):
            raise ConfigError(f"{source_dir}: no {CONFIG_NAME} in this checkpoint directory (pass --config "
                              f"CONFIG.json to give one)")
    else:
        raise ConfigError(f"{source}: SRC is a weights file, so the model config must be given: --config "
                          f"CONFIG.json")
    if not os.path.isfile(config_path):
        raise ConfigError(f"{config_path}: config file not found")
    cfg = DebertaV2Config.from_json_file(config_path).validate()  # every problem up front, naming the file
    return source_dir, weights_path, fmt, cfg, config_path


def plan_conversion(source: str, destination: str, to: str, *, format: str | None = None, dtype: str = "keep",
                    config: str | None = None, task: str | None = None, force: bool = False,
                    keep_rtd: bool = False, allow_nonfinite: bool = False,
                    max_shard_size: int | str | None = None) -> ConversionPlan:
    """Check everything that can be checked without reading tensor data; raise a DebertaXfError naming the
    file, tensor, shape or field at the first problem. Nothing is written."""
    if to not in FRAMEWORK_FORMATS:
        raise DebertaXfError(f"unknown target framework {to!r}; expected one of {', '.join(FRAMEWORK_FORMATS)}")
    fmt_name = format or DEFAULT_FORMAT[to]
    if fmt_name not in FORMATS:
        raise DebertaXfError(f"unknown format {fmt_name!r}; expected one of {', '.join(FORMATS)}")
    if fmt_name not in FRAMEWORK_FORMATS[to]:
        raise DebertaXfError(f"--to {to} writes {' or '.join(FRAMEWORK_FORMATS[to])}, not --format {fmt_name}")
    target_format = FORMATS[fmt_name]
    if max_shard_size is not None and len(target_format.filenames) < 2:
        raise DebertaXfError(f"--max-shard-size: the {fmt_name} format is one file; only safetensors and bin can be "
                             f"sharded")
    cast = cast_dtype(dtype)

    source_dir, weights_path, source_format, cfg, config_path = _open_source(source, config)
    _check_destination(source, source_dir, destination, force)
    _require_format(source_format, "read")
    _require_format(target_format, "written")

    with open_checked(weights_path) as reader:
        source_infos = reader.infos()
    if not source_infos:
        raise CheckpointError(f"{weights_path}: holds no tensors")
    shapes = {k: v.shape for k, v in source_infos.items()}
    notes: list[str] = []
    if task is None:
        task, reason = infer_task(shapes, cfg)
    else:
        check_task(task)
        reason = "given with --task"

    mapping, report = schema.match_checkpoint(cfg, task, shapes)
    schema.check_report(report, cfg, task, weights_path, allow_missing_head=False)

    # Source tensors that are not part of the model: dropped with a note, kept (--keep-rtd), or refused.
    rtd = [n for n in report.ignored if n.startswith(RTD_PREFIX)]
    other_ignored = [n for n in report.ignored if not n.startswith(RTD_PREFIX)]
    if other_ignored:
        notes.append(f"dropped {len(other_ignored)} tensor(s) that no DeBERTa-v2 model uses (an unused buffer, "
                     f"tied or unused weights): {', '.join(other_ignored)}")
    heads = [n for n in report.unexpected if n.startswith(HEAD_PREFIXES)]
    unknown = [n for n in report.unexpected if n not in heads]
    if unknown or (heads and reason != "given with --task"):
        raise CheckpointError(
            f"{weights_path}: {len(report.unexpected)} tensor(s) are not part of the {task} model and would be "
            f"lost: {', '.join(report.unexpected)}" + ("" if unknown else " (pass --task to choose the model "
                                                       "deliberately)"))
    if heads:
        notes.append(f"dropped {len(heads)} head tensor(s) that the {task} model (--task {task}) has no place for: "
                     f"{', '.join(heads)}")
    if rtd and keep_rtd:
        if target_format.name not in FREE_NAME_FORMATS:
            options = [f for f in FRAMEWORK_FORMATS[to] if f in FREE_NAME_FORMATS]
            hint = (f"write --format {options[0]} instead" if options else
                    f"--to {to} has no such format; use --to torch, or --to flax --format safetensors")
            raise DebertaXfError(
                f"--keep-rtd: the {target_format.name} format cannot carry the {len(rtd)} replaced-token-detection "
                f"tensor(s) ({', '.join(rtd)}), which belong to no model here; {hint}, or drop them (leave out "
                f"--keep-rtd)")
        notes.append(f"kept {len(rtd)} replaced-token-detection tensor(s) (mask_predictions.*) with --keep-rtd; "
                     f"no model here uses them")
    elif rtd:
        notes.append(f"dropped the replaced-token-detection head of this v3 checkpoint ({len(rtd)} tensors, "
                     f"mask_predictions.*): no model here uses it; pass --keep-rtd to keep it")
    elif keep_rtd:
        notes.append("--keep-rtd: this checkpoint has no replaced-token-detection tensors (mask_predictions.*)")

    def mlm_layout(name: str) -> str | None:
        return next((p for p in ("cls.predictions", "lm_predictions.lm_head") if name.startswith(p + ".")), None)

    mlm_renames = {(mlm_layout(c), mlm_layout(n)) for c, n in report.renamed.items()
                   if mlm_layout(c) and mlm_layout(n) and mlm_layout(c) != mlm_layout(n)}
    for old, new in sorted(mlm_renames):
        notes.append(f"MLM head renamed {old}.* -> {new}.*, the layout of config legacy={cfg.legacy}")

    expected = schema.expected_shapes(cfg, task)
    names = {name: mapping[name] for name in expected if name in mapping}
    if rtd and keep_rtd:
        names.update({n: n for n in rtd})
    infos: dict[str, TensorInfo] = {}
    out_source_infos: dict[str, TensorInfo] = {}
    for name, src in names.items():
        info = source_infos[src]
        target = cast if (cast is not None and is_floating(info.dtype)) else info.dtype
        infos[name] = TensorInfo(info.shape, np.dtype(target))
        out_source_infos[name] = info
    tokenizer_files = [f for f in TOKENIZER_FILES if source_dir and os.path.isfile(os.path.join(source_dir, f))]
    return ConversionPlan(source, source_dir, weights_path, source_format, cfg, config_path, task, reason,
                          destination, to, target_format, cast, names, infos, out_source_infos, notes,
                          tokenizer_files, force, allow_nonfinite,
                          None if max_shard_size is None else parse_shard_size(max_shard_size))


# What a checkpoint directory written by this tool (or by transformers) holds; --force replaces only such a directory.
CHECKPOINT_FILE = re.compile(r"^(config\.json|model(-\d+-of-\d+)?\.safetensors|pytorch_model(-\d+-of-\d+)?\.bin|"
                             r"(model\.safetensors|pytorch_model\.bin)\.index\.json|tf_model\.h5|model\.weights\.h5|"
                             r"flax_model\.msgpack|" + "|".join(re.escape(f) for f in TOKENIZER_FILES) + r")$")


def replaceable_checkpoint(path: str) -> None:
    """Raise FileExistsError, listing what would be lost, unless ``path`` is a checkpoint directory: a real directory
    holding only the files of a checkpoint (config, weights and shards, tokenizer files)."""
    if os.path.islink(path) or not os.path.isdir(path):
        raise FileExistsError(f"{path}: --force replaces only a checkpoint directory, and this is "
                              f"{'a symbolic link' if os.path.islink(path) else 'a file'}; remove it yourself if "
                              f"it is meant to go")
    foreign = sorted(e.name + ("/" if e.is_dir(follow_symlinks=False) else "") for e in os.scandir(path)
                     if not (e.is_file(follow_symlinks=False) and CHECKPOINT_FILE.match(e.name)))
    if foreign:
        shown = ", ".join(foreign[:10]) + (f" and {len(foreign) - 10} more" if len(foreign) > 10 else "")
        raise FileExistsError(f"{path}: --force replaces only a checkpoint directory, and this one also holds "
                              f"{len(foreign)} other entr{'y' if len(foreign) == 1 else 'ies'} that would be lost: "
                              f"{shown}")


def _check_destination(source: str, source_dir: str | None, destination: str, force: bool) -> None:
    if not destination.strip():
        raise DebertaXfError(f"DST {destination!r} is empty; name the checkpoint directory to write")
    dst = os.path.realpath(destination)
    src = os.path.realpath(source)
    if source_dir is not None and (_within(dst, src) or _within(src, dst)):
        raise DebertaXfError(f"{destination}: DST must lie outside the source checkpoint {source} (the source is "
                             f"never modified)")
    if source_dir is None and _within(src, dst):
        raise DebertaXfError(f"{destination}: DST would replace the source weights file {source}")
    if os.path.lexists(destination):
        if not force:
            raise DebertaXfError(f"{destination}: already exists; pass --force to replace it (it is replaced only "
                                 f"after a successful conversion)")
        check_replace(destination, replaceable_checkpoint)


# ---------------------------------------------------------------------------------------------------------------
# Writing
def check_finite(array: np.ndarray, name: str, where: str) -> None:
    """Refuse NaN/Inf, naming the tensor; chunked, so no tensor-sized temporary."""
    if not is_floating(array.dtype):
        return
    flat = array.ravel(order="K")  # a view in memory order for C- or F-contiguous arrays (no copy)
    for start in range(0, flat.size, _FINITE_CHUNK):
        chunk = flat[start:start + _FINITE_CHUNK]
        if chunk.dtype.name == "bfloat16":
            chunk = chunk.astype(np.float32)
        if not np.isfinite(chunk).all():
            whole = flat.astype(np.float32) if flat.dtype.name == "bfloat16" else flat
            n_nan, n_inf = int(np.isnan(whole).sum()), int(np.isinf(whole).sum())
            raise CheckpointError(f"{where}: tensor {name!r} contains {n_nan} NaN and {n_inf} Inf value(s); "
                                  f"refusing to convert it (pass --allow-nonfinite to convert it anyway)")


@dataclasses.dataclass
class WriteSummary:
    tensors: int
    bytes: int
    seconds: float
    filename: str           # the weights file, inside DST (the index of a sharded one)
    dtypes: dict[str, int]  # dtype name -> tensor count
    files: int = 1          # weights files written (shards)
    digests: dict[str, bytes] = dataclasses.field(default_factory=dict)  # name -> tensor_digest of what was written


class ReadAhead:
    """The producer a format writer asks for tensors: each is made (read, checked, cast, laid out) in a background
    thread in the order the writer announced (:func:`deberta_xf.formats.announce`), so that reading and layout
    changes overlap the writing. Bounded: the thread starts the next tensor only while it, the tensors made and not
    yet taken and the one the writer holds (until it asks for the next) fit in ``budget`` bytes, or when there are
    none of those (a tensor larger than the budget is made alone). A tensor asked for out of the announced order is made
    directly (the thread stopped first: the reader is never used by two threads). An error raised while making a
    tensor is raised again when the writer asks for that tensor. ``taken(nbytes)`` (optional) is called in the
    writer's thread as each tensor is handed over (the progress bar)."""

    def __init__(self, make: Callable[[str], np.ndarray], sizes: dict[str, int], budget: int,
                 taken: Callable[[int], None] | None = None):
        self._make, self._sizes, self._budget, self._taken = make, sizes, budget, taken
        self._ready: collections.deque = collections.deque()  # (name, array or None, error or None), in order
        self._order: collections.deque = collections.deque()  # the names announced and not yet taken
        self._waiting = 0                                       # bytes made and not yet taken
        self._held = 0                                          # bytes of the tensor the writer works on
        self._stop = False
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def prefetch(self, names: Sequence[str]) -> None:
        self.close()
        self._order, self._stop = collections.deque(names), False
        self._thread = threading.Thread(target=self._run, args=(list(names),), name="deberta-xf-read-ahead",
                                        daemon=True)
        self._thread.start()

    def _run(self, names: list[str]) -> None:
        for name in names:
            with self._changed:
                self._changed.wait_for(lambda: self._stop or not (self._ready or self._held) or
                                       self._held + self._waiting + self._sizes[name] <= self._budget)
                if self._stop:
                    return
            try:
                item = (name, self._make(name), None)
            except BaseException as err:  # raised again in the writer's thread, when it asks for this tensor
                item = (name, None, err)
            failed = item[2] is not None
            with self._changed:
                self._ready.append(item)
                self._waiting += self._sizes[name]
                self._changed.notify_all()
            del item  # the writer's once taken: not kept alive here while the next one waits
            if failed:
                return

    def __call__(self, name: str) -> np.ndarray:
        with self._changed:  # the writer is done with the tensor it asked for before
            self._held = 0
            self._changed.notify_all()
        if self._thread is not None and self._order and self._order[0] == name:
            array = self._take(name)
        else:
            self.close()
            array = self._make(name)
        if self._taken is not None:
            self._taken(self._sizes[name])
        return array

    def _take(self, name: str) -> np.ndarray:
        self._order.popleft()
        with self._changed:
            self._changed.wait_for(lambda: self._ready)
            _, array, error = self._ready.popleft()
            self._waiting -= self._sizes[name]
            self._held = self._sizes[name]
            self._changed.notify_all()
        if error is not None:
            self.close()
            raise error
        return array

    def close(self) -> None:
        """Stop the thread (after the tensor it is making) and drop what it made."""
        if self._thread is not None:
            with self._changed:
                self._stop = True
                self._changed.notify_all()
            self._thread.join()
            self._thread = None
        self._ready.clear()
        self._order.clear()
        self._waiting = self._held = 0


def write_checkpoint(plan: ConversionPlan, directory: str,
                     progress: Callable[[int, int], Callable[[int], None]] | None = None,
                     digest: bool = False) -> WriteSummary:
    """Write DST's content (weights, config.json, tokenizer files) into ``directory``, streamed (see
    :class:`ReadAhead`).

    ``progress(total_tensors, total_bytes)`` returns a callback called with each tensor's byte count. ``digest``:
    also take each tensor's :func:`~deberta_xf.convert.verify.tensor_digest` in the file's layout as it is
    written (``WriteSummary.digests``, what verification compares the read-back tensors with).
    """
    start = time.perf_counter()
    tick = progress(len(plan.infos), plan.total_bytes) if progress else None
    digests: dict[str, bytes] = {}
    layout = plan.target_format.layout
    with open_checked(plan.weights_path) as reader:
        def make(name: str) -> np.ndarray:
            src = plan.names[name]
            try:
                array = reader.read(src)
            except DebertaXfError:
                raise
            except (OSError, ValueError, KeyError, TypeError, EOFError, RuntimeError) as err:
                raise CheckpointError(f"{plan.weights_path}: cannot read tensor {src!r} ({type(err).__name__}: "
                                      f"{err})") from None
            want = plan.infos[name]
            if tuple(array.shape) != want.shape:
                raise CheckpointError(f"{plan.weights_path}: tensor {src!r} reads as shape {list(array.shape)}, but "
                                      f"the file lists it as {list(want.shape)} (corrupt file?)")
            if not plan.allow_nonfinite:
                check_finite(array, src, plan.weights_path)
            if array.dtype != want.dtype:
                with np.errstate(over="ignore"):  # an overflow is reported below, naming the tensor
                    original, array = array, array.astype(want.dtype)
                if not plan.allow_nonfinite:
                    try:
                        check_finite(array, src, plan.weights_path)
                    except CheckpointError:
                        largest = float(np.abs(original.astype(np.float32)).max())
                        raise CheckpointError(
                            f"{plan.weights_path}: tensor {src!r} overflows {dtype_name(want.dtype)} (largest "
                            f"magnitude {largest:.4g}); choose a wider --dtype") from None
                del original
            # The file's layout (e.g. TF's transposed kernels) made here, in the read-ahead thread: the writer's
            # own to_framework then finds it in place, and the digest hashes the bytes as they are written.
            stored = schema.contiguous(schema.to_framework(name, array, layout))
            if digest:
                digests[name] = tensor_digest(stored)
            return schema.from_framework(name, stored, layout)

        sizes = {name: info.nbytes for name, info in plan.infos.items()}
        read_ahead = ReadAhead(make, sizes, max(max(sizes.values(), default=0), READ_AHEAD_BYTES), tick)
        try:
            # the task: the layout of the task's class in the TF formats (multiple choice is not inferable from names)
            files = write_sharded(directory, plan.target_format, plan.infos, read_ahead,
                                  plan.max_shard_size or plan.total_bytes + 1, task=plan.task)
        finally:
            read_ahead.close()
    write_config(plan, directory)
    for filename in plan.tokenizer_files:
        shutil.copyfile(os.path.join(plan.source_dir, filename), os.path.join(directory, filename))
    dtypes: dict[str, int] = {}
    for info in plan.infos.values():
        dtypes[dtype_name(info.dtype)] = dtypes.get(dtype_name(info.dtype), 0) + 1
    return WriteSummary(len(plan.infos), sum(os.path.getsize(os.path.join(directory, f)) for f in files[1:] or files),
                        time.perf_counter() - start, plan.weights_filename, dtypes, len(files[1:]) or 1, digests)


def write_config(plan: ConversionPlan, directory: str) -> None:
    """config.json of DST: the source config, with "architectures" naming the converted task's class and
    "dtype" the floating dtype written."""
    data = plan.config.to_dict()
    data["architectures"] = [TASK_TABLE[plan.task].architecture]
    floats = {dtype_name(i.dtype) for i in plan.infos.values() if is_floating(i.dtype)}
    if len(floats) == 1:
        data["dtype"] = floats.pop()
        if "torch_dtype" in data:
            data["torch_dtype"] = data["dtype"]
    with open(os.path.join(directory, CONFIG_NAME), "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------------------------
# The whole conversion
@dataclasses.dataclass
class ConversionResult:
    plan: ConversionPlan
    written: WriteSummary | None = None
    verification: object | None = None  # deberta_xf.convert.verify.VerificationReport
    kept: bool = False                   # DST now holds the result

    @property
    def weights_file(self) -> str:
        """The weights file written, in DST."""
        return os.path.join(self.plan.destination, self.plan.weights_filename)


class VerificationFailed(Exception):
    """Raised inside the temporary directory's block so that a result that failed verification is not kept."""

    def __init__(self, report):
        super().__init__("verification failed")
        self.report = report


def convert_checkpoint(source: str, destination: str, to: str, *, format: str | None = None, dtype: str = "keep",
                       config: str | None = None, task: str | None = None, force: bool = False,
                       verify: bool = True, keep_rtd: bool = False, allow_nonfinite: bool = False,
                       max_shard_size: int | str | None = None,
                       atol: float | None = None, rtol: float | None = None,
                       verify_frameworks: Sequence[str] | None = None,
                       progress: Callable[[int, int], Callable[[int], None]] | None = None,
                       log: Callable[[str], None] = print,
                       status: Callable[[str], None] | None = None) -> ConversionResult:
    """Convert SRC into a complete checkpoint directory DST for framework ``to``; see the module docstring.

    Returns the result; ``result.kept`` is False when verification failed (DST then is as it was). Bad input
    raises a :class:`DebertaXfError` before anything is written. ``log`` gets the plan and the summary,
    ``status`` (optional) the steps of the verification as they start, ``progress`` see :func:`write_checkpoint`.
    ``atol`` / ``rtol`` / ``verify_frameworks``: the verification's thresholds and the frameworks that load the
    result (see :class:`deberta_xf.convert.verify.Verifier`).
    """
    plan = plan_conversion(source, destination, to, format=format, dtype=dtype, config=config, task=task,
                           force=force, keep_rtd=keep_rtd, allow_nonfinite=allow_nonfinite,
                           max_shard_size=max_shard_size)
    verifier = None
    if verify:
        from deberta_xf.convert import verify as verify_module

        verifier = verify_module.Verifier(plan, atol=atol, rtol=rtol, frameworks=verify_frameworks)  # checks the frameworks are installed: a missing one fails before writing
    log(describe_plan(plan))
    for stale in remove_stale_temporaries(destination):
        log(f"removed {stale}, left behind by an interrupted conversion")
    check_space(os.path.join(destination, plan.weights_filename), plan.total_bytes)
    result = ConversionResult(plan)
    try:
        with atomic_directory(destination, force=force, replaceable=replaceable_checkpoint) as tmp:
            result.written = write_checkpoint(plan, tmp, progress, digest=verifier is not None)
            log(describe_written(plan, result.written))
            if verifier is not None:
                result.verification = verifier.run(tmp, status=status, digests=result.written.digests)
                if not result.verification.passed:
                    raise VerificationFailed(result.verification)
    except VerificationFailed:
        return result
    result.kept = True
    return result


def describe_plan(plan: ConversionPlan) -> str:
    cast = "keep" if plan.dtype is None else dtype_name(plan.dtype)
    lines = [f"source: {plan.weights_path} ({plan.source_format.name}, {len(plan.source_infos)} tensors; config "
             f"{plan.config_path})",
             f"task: {plan.task} ({plan.task_reason})",
             f"target: {plan.destination}/{plan.weights_filename} ({plan.to}, {plan.target_format.name}, "
             f"dtype {cast})"]
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)


def describe_written(plan: ConversionPlan, written: WriteSummary) -> str:
    dtypes = ", ".join(f"{n} {d}" for d, n in sorted(written.dtypes.items()))
    extra = f"; copied {', '.join(plan.tokenizer_files)}" if plan.tokenizer_files else "; no tokenizer files in SRC"
    return (f"wrote {written.tensors} tensors ({dtypes}), {format_bytes(written.bytes)} ({written.bytes} bytes) "
            f"to {plan.weights_filename}"
            + (f" and {written.files} shards (--max-shard-size {plan.max_shard_size} bytes)" if written.files > 1 else "")
            + f" in {written.seconds:.1f} s, and {CONFIG_NAME}{extra}")
