"""The one weight-naming schema.

Canonical names and layouts are the reference's PyTorch state-dict names (``deberta.encoder.layer.0.attention.
self.query_proj.weight`` ...). This module lists, for a config and a task, every expected name with its shape;
holds the one table of per-framework layout rules (:data:`LAYOUT`); and matches a checkpoint's tensors against
the expected names, producing a :class:`LoadReport` of missing / unexpected / mismatched keys.

Each framework's parameter tree mirrors the canonical module path; only the leaf name and the array layout
differ, and both come from :data:`LAYOUT` through :func:`param_kind`, :func:`to_framework` and
:func:`from_framework`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import re
from typing import Mapping

import numpy as np

from deberta_xf.configuration import DebertaV2Config
from deberta_xf.errors import CheckpointError, CheckpointShapeError
from deberta_xf.tasks import check_task

BACKBONE_PREFIX = "deberta."

# ---------------------------------------------------------------------------------------------------------------
# The layout table: for each kind of parameter, the leaf name each framework uses and how its array is laid out
# relative to the canonical (PyTorch) array. "T" is a 2-D transpose; a tuple is an axis permutation.
LAYOUT: dict[str, dict[str, tuple[str, object]]] = {
    #                     torch                tf (Keras)            flax (NNX)
    "linear":           {"torch": ("weight", None), "tf": ("kernel", "T"), "flax": ("kernel", "T")},
    "conv":             {"torch": ("weight", None), "tf": ("kernel", (2, 1, 0)), "flax": ("kernel", (2, 1, 0))},
    "embedding":        {"torch": ("weight", None), "tf": ("embeddings", None), "flax": ("embedding", None)},
    "layer_norm_scale": {"torch": ("weight", None), "tf": ("gamma", None), "flax": ("scale", None)},
    "layer_norm_bias":  {"torch": ("bias", None), "tf": ("beta", None), "flax": ("bias", None)},
    "bias":             {"torch": ("bias", None), "tf": ("bias", None), "flax": ("bias", None)},
}
# Canonical shape -> framework shape is the same permutation; the inverse of (2, 1, 0) and "T" is itself.


def param_kind(name: str) -> str:
    """Kind of a canonical parameter, from its name alone."""
    if name.endswith("LayerNorm.weight"):
        return "layer_norm_scale"
    if name.endswith("LayerNorm.bias"):
        return "layer_norm_bias"
    if name.endswith("embeddings.weight"):  # word/position/token_type/rel embeddings
        return "embedding"
    if name.endswith("conv.conv.weight"):
        return "conv"
    if name.endswith(".weight"):
        return "linear"
    if name.endswith("bias"):  # includes the MLM head's bare `bias` vector
        return "bias"
    raise KeyError(f"{name}: not a canonical DeBERTa-v2 parameter name")


_PARALLEL_BYTES = 8 << 20  # a transposed copy this large is split over threads


def _copy_threads() -> int:
    """Threads for one large transposed copy: the cores this process may run on, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def contiguous(array: np.ndarray, block: int | None = None) -> np.ndarray:
    """A C-contiguous copy (or the array itself when it already is one).

    A transposed 2-D view (a TF/Flax kernel) is copied ``block`` source rows at a time, so that each destination row
    receives one 64-byte cache line per copy (16 float32 by default) while the reads stay sequential: 3-4x faster
    than ``np.ascontiguousarray``, whose column-order reads miss the cache. A large one (8 MiB and up) is split
    into row ranges copied by one thread per core (NumPy copies without the GIL)."""
    array = np.asarray(array)
    if array.flags.c_contiguous:
        return array
    if not (array.ndim == 2 and array.T.flags.c_contiguous):
        return np.ascontiguousarray(array)
    source = array.T  # contiguous [cols, rows]
    out = np.empty(array.shape, dtype=array.dtype)
    block = block or max(1, 64 // array.itemsize)

    def copy_rows(low: int, high: int) -> None:
        for i in range(low, high, block):
            stop = min(i + block, high)
            out[:, i:stop] = source[i:stop].T

    rows = source.shape[0]
    workers = min(_copy_threads(), max(1, rows // block)) if array.nbytes >= _PARALLEL_BYTES else 1
    if workers == 1:
        copy_rows(0, rows)
        return out
    bounds = [rows * k // workers // block * block for k in range(workers)] + [rows]  # block-aligned ranges
    with concurrent.futures.ThreadPoolExecutor(workers - 1, thread_name_prefix="deberta-xf-transpose") as pool:
        others = [pool.submit(copy_rows, low, high) for low, high in zip(bounds[1:-1], bounds[2:])]
        copy_rows(bounds[0], bounds[1])
        for done in others:
            done.result()
    return out


def _permute(array: np.ndarray, rule: object) -> np.ndarray:
    """A view in the other layout: two conversions in a row (tf_model.h5 -> flax) cancel without a copy; writers
    materialise it with :func:`contiguous`."""
    if rule is None:
        return array
    if rule == "T":
        return np.asarray(array).T
    return np.transpose(array, rule)


def module_path(name: str) -> tuple[str, str]:
    """Split a canonical name into (module path, leaf): ``a.b.weight`` -> (``a.b``, ``weight``)."""
    module, _, leaf = name.rpartition(".")
    return module, leaf


def framework_leaf(name: str, framework: str) -> str:
    """Leaf name of a canonical parameter in ``framework``'s tree (``weight`` -> ``kernel``/``gamma``/...)."""
    kind = param_kind(name)
    if kind == "bias" and not name.endswith(".bias"):  # the MLM head's bare `bias` keeps its own name
        return "bias"
    return LAYOUT[kind][framework][0]


def framework_name(name: str, framework: str, sep: str = ".") -> str:
    """Canonical name -> the framework's path with its leaf name (``...query_proj.kernel`` for tf/flax)."""
    module, _ = module_path(name)
    leaf = framework_leaf(name, framework)
    return f"{module}{sep}{leaf}".replace(".", sep) if module else leaf


def to_framework(name: str, array: np.ndarray, framework: str) -> np.ndarray:
    """Canonical (PyTorch-layout) array -> the framework's layout (a view; see :func:`contiguous`)."""
    return _permute(array, LAYOUT[param_kind(name)][framework][1])


def from_framework(name: str, array: np.ndarray, framework: str) -> np.ndarray:
    """The framework's layout -> canonical layout, a view (every rule in LAYOUT is its own inverse)."""
    return _permute(array, LAYOUT[param_kind(name)][framework][1])


def framework_shape(name: str, shape: tuple[int, ...], framework: str) -> tuple[int, ...]:
    rule = LAYOUT[param_kind(name)][framework][1]
    if rule is None:
        return tuple(shape)
    if rule == "T":
        return tuple(reversed(shape))
    return tuple(shape[i] for i in rule)


# ---------------------------------------------------------------------------------------------------------------
# Expected names and shapes
def backbone_shapes(config: DebertaV2Config) -> dict[str, tuple[int, ...]]:
    """Canonical names (without the ``deberta.`` prefix) and shapes of the encoder."""
    c = config
    H, E, inter = c.hidden_size, c.embedding_dim, c.intermediate_size
    A = c.num_attention_heads * c.head_size
    shapes: dict[str, tuple[int, ...]] = {"embeddings.word_embeddings.weight": (c.vocab_size, E)}
    if c.position_biased_input:
        shapes["embeddings.position_embeddings.weight"] = (c.max_position_embeddings, E)
    if c.type_vocab_size > 0:
        shapes["embeddings.token_type_embeddings.weight"] = (c.type_vocab_size, E)
    if E != H:
        shapes["embeddings.embed_proj.weight"] = (H, E)
    shapes["embeddings.LayerNorm.weight"] = (H,)
    shapes["embeddings.LayerNorm.bias"] = (H,)

    def linear(prefix: str, n_out: int, n_in: int, bias: bool = True) -> None:
        shapes[f"{prefix}.weight"] = (n_out, n_in)
        if bias:
            shapes[f"{prefix}.bias"] = (n_out,)

    def layer_norm(prefix: str, n: int) -> None:
        shapes[f"{prefix}.weight"] = (n,)
        shapes[f"{prefix}.bias"] = (n,)

    for i in range(c.num_hidden_layers):
        p = f"encoder.layer.{i}"
        for proj in ("query_proj", "key_proj", "value_proj"):
            linear(f"{p}.attention.self.{proj}", A, H)
        if c.relative_attention and not c.share_att_key:
            if "c2p" in c.pos_att_types:
                linear(f"{p}.attention.self.pos_key_proj", A, H)
            if "p2c" in c.pos_att_types:
                linear(f"{p}.attention.self.pos_query_proj", A, H)
        linear(f"{p}.attention.output.dense", H, A)
        layer_norm(f"{p}.attention.output.LayerNorm", H)
        linear(f"{p}.intermediate.dense", inter, H)
        linear(f"{p}.output.dense", H, inter)
        layer_norm(f"{p}.output.LayerNorm", H)
    if c.relative_attention:
        shapes["encoder.rel_embeddings.weight"] = (2 * c.att_span, H)
    if c.rel_embeddings_layer_norm:
        layer_norm("encoder.LayerNorm", H)
    if c.conv_kernel_size > 0:
        shapes["encoder.conv.conv.weight"] = (H, H // c.conv_groups, c.conv_kernel_size)
        shapes["encoder.conv.conv.bias"] = (H,)
        layer_norm("encoder.conv.LayerNorm", H)
    return shapes


def ties_decoder(config: DebertaV2Config) -> bool:
    """Does the masked-LM decoder reuse the word embeddings? The legacy head (``cls.predictions``) follows
    ``tie_word_embeddings`` (default true) as the reference does: untied, it has its own
    ``cls.predictions.decoder.weight`` [V, E]. The ``lm_predictions`` head always multiplies by the embeddings."""
    return not config.legacy or bool(getattr(config, "tie_word_embeddings", True))


def head_shapes(config: DebertaV2Config, task: str) -> dict[str, tuple[int, ...]]:
    """Canonical names and shapes of a task head (outside the ``deberta.`` backbone)."""
    check_task(task)
    c = config
    H, E, V = c.hidden_size, c.embedding_dim, c.vocab_size
    if task == "base":
        return {}
    if task == "masked-lm":
        if c.legacy:
            shapes = {"cls.predictions.transform.dense.weight": (E, H), "cls.predictions.transform.dense.bias": (E,),
                      "cls.predictions.transform.LayerNorm.weight": (E,),
                      "cls.predictions.transform.LayerNorm.bias": (E,), "cls.predictions.bias": (V,)}
            if not ties_decoder(c):
                shapes["cls.predictions.decoder.weight"] = (V, E)
            return shapes
        return {"lm_predictions.lm_head.dense.weight": (H, H), "lm_predictions.lm_head.dense.bias": (H,),
                "lm_predictions.lm_head.LayerNorm.weight": (H,), "lm_predictions.lm_head.LayerNorm.bias": (H,),
                "lm_predictions.lm_head.bias": (V,)}
    if task in ("sequence-classification", "multiple-choice"):
        n_out = c.num_labels if task == "sequence-classification" else 1
        return {"pooler.dense.weight": (c.pooler_size, c.pooler_size), "pooler.dense.bias": (c.pooler_size,),
                "classifier.weight": (n_out, H), "classifier.bias": (n_out,)}
    if task == "token-classification":
        return {"classifier.weight": (c.num_labels, H), "classifier.bias": (c.num_labels,)}
    return {"qa_outputs.weight": (c.num_labels, H), "qa_outputs.bias": (c.num_labels,)}  # question-answering


def expected_shapes(config: DebertaV2Config, task: str = "base") -> dict[str, tuple[int, ...]]:
    """Every canonical name with its shape, as the reference's ``state_dict()`` of that class names them.

    The base model's names have no prefix (``embeddings.word_embeddings.weight``); a task model's backbone is
    under ``deberta.``.
    """
    check_task(task)
    if task == "masked-lm" and not config.legacy and config.embedding_dim != config.hidden_size:
        raise CheckpointError(
            f"masked-lm with legacy=False needs embedding_size == hidden_size (got {config.embedding_dim} vs "
            f"{config.hidden_size}): that head multiplies hidden states by the word embeddings")
    prefix = "" if task == "base" else BACKBONE_PREFIX
    shapes = {prefix + k: v for k, v in backbone_shapes(config).items()}
    shapes.update(head_shapes(config, task))
    return shapes


# ---------------------------------------------------------------------------------------------------------------
# Matching a checkpoint against the schema
# Keys of published checkpoints that no model here uses; ignored on load without a warning.
IGNORED_ON_LOAD = (
    re.compile(r"^(deberta\.)?embeddings\.position_ids$"),
    re.compile(r"^mask_predictions\."),  # replaced-token-detection head of v3 checkpoints
    # tied to the word embeddings (when the config ties them; untied, the weight is a parameter) / the same
    # tensor as cls.predictions.bias
    re.compile(r"^cls\.predictions\.decoder\.(weight|bias)$"),
)
# The two MLM head layouts are the same computation when embedding_size == hidden_size; names map one to one.
_MLM_LAYOUTS = {
    "cls.predictions.transform.dense.weight": "lm_predictions.lm_head.dense.weight",
    "cls.predictions.transform.dense.bias": "lm_predictions.lm_head.dense.bias",
    "cls.predictions.transform.LayerNorm.weight": "lm_predictions.lm_head.LayerNorm.weight",
    "cls.predictions.transform.LayerNorm.bias": "lm_predictions.lm_head.LayerNorm.bias",
    "cls.predictions.bias": "lm_predictions.lm_head.bias",
}
_MLM_LAYOUTS_REVERSE = {v: k for k, v in _MLM_LAYOUTS.items()}


@dataclasses.dataclass
class LoadReport:
    """What a load did with a checkpoint's tensors, by canonical name."""

    missing: list[str] = dataclasses.field(default_factory=list)
    unexpected: list[str] = dataclasses.field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = dataclasses.field(default_factory=list)
    ignored: list[str] = dataclasses.field(default_factory=list)
    renamed: dict[str, str] = dataclasses.field(default_factory=dict)  # checkpoint name -> canonical name
    # head tensors re-initialised because their shape mismatched (ignore_mismatched_sizes=True), canonical names
    reinitialized: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or (self.mismatched and not self.reinitialized))

    def summary(self) -> str:
        lines = []
        if self.missing:
            lines.append(f"missing ({len(self.missing)}): " + ", ".join(self.missing))
        if self.mismatched:
            lines.append(f"shape mismatch ({len(self.mismatched)}): " + ", ".join(
                f"{n} (checkpoint {list(got)}, model expects {list(want)})" for n, got, want in self.mismatched))
        if self.unexpected:
            lines.append(f"unexpected ({len(self.unexpected)}): " + ", ".join(self.unexpected))
        if self.ignored:
            lines.append(f"ignored ({len(self.ignored)}): " + ", ".join(self.ignored))
        if self.reinitialized:
            lines.append(f"re-initialised ({len(self.reinitialized)}): " + ", ".join(self.reinitialized))
        return "\n".join(lines) if lines else "all weights matched"


def _shape_hint(name: str, got: tuple[int, ...], want: tuple[int, ...], config: DebertaV2Config) -> str:
    """Name the config field that most likely contradicts the weights."""
    if name.endswith("word_embeddings.weight") and got[0] != want[0]:
        return f"; config vocab_size={config.vocab_size}"
    if name.endswith("rel_embeddings.weight") and got[0] != want[0]:
        return (f"; config position_buckets={config.position_buckets}, max_relative_positions="
                f"{config.max_relative_positions} give {want[0]} rows")
    if name.endswith("position_embeddings.weight") and got[0] != want[0]:
        return f"; config max_position_embeddings={config.max_position_embeddings}"
    if got and want and got[-1] != want[-1] or (len(got) == len(want) == 1 and got != want):
        return f"; config hidden_size={config.hidden_size}, intermediate_size={config.intermediate_size}"
    return ""


def match_checkpoint(
    config: DebertaV2Config,
    task: str,
    available: Mapping[str, tuple[int, ...]],
) -> tuple[dict[str, str], LoadReport]:
    """Match checkpoint names (with their shapes) to the canonical names of ``task``.

    Returns ``{canonical name: checkpoint name}`` for every tensor to load, and the report. Handles a base
    checkpoint loaded into a task model (``deberta.`` prefix added, head reported missing) and the reverse,
    both MLM head layouts, and the known extras (:data:`IGNORED_ON_LOAD`, unused position embeddings).
    """
    expected = expected_shapes(config, task)
    report = LoadReport()
    has_prefix = any(k.startswith(BACKBONE_PREFIX) for k in available)
    # Canonical name each checkpoint name stands for in this model, before shape checks.
    candidates: dict[str, str] = {}
    for ckpt_name in available:
        name = ckpt_name
        if task == "base" and name.startswith(BACKBONE_PREFIX):
            name = name[len(BACKBONE_PREFIX):]
        elif task != "base" and not has_prefix and name.split(".", 1)[0] in ("embeddings", "encoder"):
            name = BACKBONE_PREFIX + name
        if name not in expected:
            if config.legacy and name in _MLM_LAYOUTS_REVERSE:
                name = _MLM_LAYOUTS_REVERSE[name]
            elif not config.legacy and name in _MLM_LAYOUTS:
                name = _MLM_LAYOUTS[name]
        if name != ckpt_name and name in expected:
            report.renamed[ckpt_name] = name
        candidates[ckpt_name] = name

    mapping: dict[str, str] = {}
    for ckpt_name, name in candidates.items():
        if name in expected:
            if name in mapping:  # both MLM layouts present: the model's own layout wins
                if ckpt_name == name:
                    report.ignored.append(mapping[name])
                    mapping[name] = ckpt_name
                else:
                    report.ignored.append(ckpt_name)
                continue
            got, want = tuple(available[ckpt_name]), expected[name]
            if got != want:
                report.mismatched.append((ckpt_name, got, want))
            else:
                mapping[name] = ckpt_name
        elif any(p.search(ckpt_name) for p in IGNORED_ON_LOAD) or (
                not config.position_biased_input and name.endswith("embeddings.position_embeddings.weight")):
            report.ignored.append(ckpt_name)
        else:
            report.unexpected.append(ckpt_name)
    mismatched = {n for n, _, _ in report.mismatched}
    report.missing = [n for n in expected if n not in mapping and not any(
        candidates.get(c) == n for c in mismatched)]
    return mapping, report


def check_report(report: LoadReport, config: DebertaV2Config, task: str, source: str,
                 allow_missing_head: bool = True, ignore_mismatched_sizes: bool = False) -> list[str]:
    """Raise CheckpointError for shape mismatches and missing backbone weights; return missing head keys.

    A task model loaded from a backbone-only checkpoint gets a freshly initialised head, as in the reference
    (the caller warns); a missing backbone tensor is an error. A tensor of another shape raises
    :class:`CheckpointShapeError` (also a RuntimeError, as the reference's); with ``ignore_mismatched_sizes``, as
    in the reference, it is not an error: its canonical name goes to ``report.reinitialized`` (the model keeps
    its fresh initialisation: a classifier for another ``num_labels``, embeddings for another ``vocab_size``).
    """
    problems = []
    head_names = set(head_shapes(config, task))
    for ckpt_name, got, want in report.mismatched:
        name = report.renamed.get(ckpt_name, ckpt_name)
        if ignore_mismatched_sizes:
            if name not in report.reinitialized:
                report.reinitialized.append(name)
            continue
        problems.append(f"tensor {ckpt_name!r} has shape {list(got)} but the config expects {list(want)}"
                        f"{_shape_hint(ckpt_name, got, want, config)}")
    mismatched = bool(problems)
    missing_backbone = [n for n in report.missing if n not in head_names]
    missing_head = [n for n in report.missing if n in head_names]
    if missing_backbone:
        problems.append(f"missing {len(missing_backbone)} required tensor(s): " + ", ".join(missing_backbone))
    if missing_head and not allow_missing_head:
        problems.append(f"missing {len(missing_head)} head tensor(s): " + ", ".join(missing_head))
    if problems:
        message = f"{source}: checkpoint does not fit the {task} model:\n  - " + "\n  - ".join(problems)
        raise (CheckpointShapeError if mismatched else CheckpointError)(message)
    return missing_head


def num_parameters(config: DebertaV2Config, task: str = "base") -> int:
    return int(sum(np.prod(s) for s in expected_shapes(config, task).values()))

