"""Framework-free comparison of model outputs, the DESIGN §5 rules in one place.

Used by the tests, by ``deberta-xf convert``'s verification and by ``deberta-xf parity``:
- token-level outputs ([batch, seq, ...]) are compared where ``attention_mask == 1`` (the reference frameworks
  themselves disagree at padding positions); attention maps on real (query, key) pairs; pooled outputs and
  losses everywhere;
- fp32 thresholds (max abs): 5e-5 for hidden states, pooled/QA/token logits; 1e-4 for masked-LM logits;
- bf16 / fp16 thresholds (:data:`BF16_THRESHOLDS`, :data:`FP16_THRESHOLDS`) were measured; see there.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import numpy as np

FP32_THRESHOLDS = {"hidden": 5e-5, "logits": 5e-5, "mlm_logits": 1e-4}
THRESHOLD_KEYS = tuple(FP32_THRESHOLDS)
# bf16 / fp16 thresholds, measured with `python -m deberta_xf.parity.calibrate` (method in its docstring) on CPU with torch 2.13,
# tensorflow 2.21 / keras 3.15 and flax 0.12.8 / jax 0.10.2, on the fixture checkpoints (tiny-deberta-v3 on the
# sample texts, six reference cases on deterministic ids) and a random deberta-v3-base-sized model (768 x 12
# layers, 128100 vocabulary) on the sample texts. Worst max abs seen:
#                 low dtype vs fp32 (one framework)    between two frameworks, both in the low dtype
#   bf16 hidden   1.06e-1 (base-sized, last layer)     1.09e-1 (torch vs tf, base-sized)
#   bf16 logits   3.4e-2 (token classification)        4.1e-2
#   bf16 MLM      3.3e-1 (fixture head, |logits|~24)   5.2e-1
#   fp16 hidden   1.2e-2                               1.1e-2
#   fp16 logits   4.9e-3                               3.9e-3
#   fp16 MLM      5.2e-2                               4.7e-2
# threshold = 2 x max(between frameworks, 2 x vs fp32), rounded up to 1/2/5 x 10^k. Trained checkpoints with
# outlier activations (|h| >> 4) may need more: --atol-hidden / --atol-logits / --atol-mlm.
BF16_THRESHOLDS = {"hidden": 0.5, "logits": 0.2, "mlm_logits": 2.0}
FP16_THRESHOLDS = {"hidden": 0.05, "logits": 0.02, "mlm_logits": 0.5}
DTYPE_THRESHOLDS = {"float32": FP32_THRESHOLDS, "bfloat16": BF16_THRESHOLDS, "float16": FP16_THRESHOLDS}


def thresholds_for(dtype: str) -> dict[str, float]:
    """The default max-abs thresholds of a compute dtype ("float32" | "bfloat16" | "float16")."""
    if dtype not in DTYPE_THRESHOLDS:
        raise ValueError(f"no thresholds for dtype {dtype!r}; expected one of {', '.join(DTYPE_THRESHOLDS)}")
    return dict(DTYPE_THRESHOLDS[dtype])


def to_numpy(x: Any) -> np.ndarray:
    """torch / TF / JAX / numpy array -> float32 numpy (bf16 and fp16 upcast) or its integer values."""
    if hasattr(x, "detach"):  # torch
        x = x.detach()
        if x.is_floating_point():
            x = x.float()
        return x.cpu().numpy()
    if hasattr(x, "numpy") and not isinstance(x, np.ndarray):  # TF eager tensor
        x = x.numpy()
    arr = np.asarray(x)
    if arr.dtype.kind == "f" or arr.dtype.name == "bfloat16":
        return arr.astype(np.float32)
    return arr


def flatten_outputs(outputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A model output -> ``{"logits": ..., "hidden_states.0": ..., "attentions.1": ...}`` as numpy."""
    flat: dict[str, np.ndarray] = {}
    for key, value in outputs.items():
        if value is None:
            continue
        if isinstance(value, (tuple, list)):
            for i, v in enumerate(value):
                flat[f"{key}.{i}"] = to_numpy(v)
        else:
            flat[key] = to_numpy(value)
    return flat


def token_mask(attention_mask: np.ndarray) -> np.ndarray:
    """[..., seq] mask (2-D, or [batch, choices, seq]) -> bool [rows, seq]."""
    mask = np.asarray(attention_mask)
    return mask.reshape(-1, mask.shape[-1]).astype(bool)


def threshold(name: str, task: str, thresholds: Mapping[str, float] = FP32_THRESHOLDS) -> float:
    if task == "masked-lm" and name == "logits":
        return thresholds["mlm_logits"]
    if name in ("logits", "start_logits", "end_logits", "loss"):
        return thresholds["logits"]
    return thresholds["hidden"]


@dataclasses.dataclass
class Comparison:
    name: str
    shape: tuple[int, ...]
    max_abs: float
    mean_abs: float
    max_rel: float
    atol: float
    compared: int  # number of elements compared (after masking)
    note: str = ""  # why a comparison failed without numbers (missing output, shape mismatch, NaN/inf)

    @property
    def passed(self) -> bool:
        return bool(self.max_abs <= self.atol)

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        d["passed"] = self.passed
        return d


def _selection(name: str, shape: tuple[int, ...], mask: np.ndarray | None) -> np.ndarray | None:
    """Boolean selection of the elements to compare, broadcastable to ``shape``; None means everything."""
    if mask is None:
        return None
    rows, seq = mask.shape
    if name.startswith("attentions") and len(shape) == 4 and shape[0] == rows and shape[-1] == seq:
        return mask[:, None, :, None] & mask[:, None, None, :]
    if len(shape) >= 2 and shape[0] == rows and shape[1] == seq:
        return mask.reshape(mask.shape + (1,) * (len(shape) - 2))
    return None  # pooled outputs, multiple-choice logits, losses


def compare_arrays(name: str, reference: np.ndarray, candidate: np.ndarray, atol: float,
                   mask: np.ndarray | None = None) -> Comparison:
    reference, candidate = to_numpy(reference).astype(np.float64), to_numpy(candidate).astype(np.float64)
    if reference.shape != candidate.shape:
        return Comparison(name, tuple(candidate.shape), math.inf, math.inf, math.inf, atol, 0,
                          f"shape mismatch: {list(reference.shape)} vs {list(candidate.shape)}")
    select = _selection(name, reference.shape, mask)
    diff = np.abs(reference - candidate)
    scale = np.abs(reference)
    if select is not None:
        select = np.broadcast_to(select, reference.shape)
        diff, scale = diff[select], scale[select]
    if diff.size == 0:
        return Comparison(name, tuple(reference.shape), 0.0, 0.0, 0.0, atol, 0)
    finite = np.isfinite(diff)
    if not finite.all():
        return Comparison(name, tuple(reference.shape), math.inf, math.inf, math.inf, atol, int(diff.size),
                          f"{int((~finite).sum())} non-finite difference(s) (NaN or inf in an output)")
    rel = diff / np.maximum(scale, 1e-6)
    return Comparison(name, tuple(reference.shape), float(diff.max()), float(diff.mean()), float(rel.max()), atol,
                      int(diff.size))


def compare_outputs(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray], task: str,
                    attention_mask: np.ndarray | None = None,
                    thresholds: Mapping[str, float] = FP32_THRESHOLDS, strict: bool = False) -> list[Comparison]:
    """Compare every output of ``reference`` by the DESIGN §5 rules; outputs missing from ``candidate`` fail.

    ``strict``: outputs that only ``candidate`` has fail too (two peers, neither of which is the reference).
    """
    mask = token_mask(attention_mask) if attention_mask is not None else None
    results = []
    for name in reference:
        atol = threshold(name, task, thresholds)
        if name not in candidate:
            results.append(Comparison(name, tuple(np.shape(reference[name])), math.inf, math.inf, math.inf, atol, 0,
                                      "missing from the candidate's outputs"))
            continue
        results.append(compare_arrays(name, reference[name], candidate[name], atol, mask))
    if strict:
        for name in candidate:
            if name not in reference:
                results.append(Comparison(name, tuple(np.shape(candidate[name])), math.inf, math.inf, math.inf,
                                          threshold(name, task, thresholds), 0,
                                          "missing from the reference's outputs"))
    return sorted(results, key=lambda r: output_order(r.name)) if strict else results


def output_order(name: str) -> tuple:
    """Sort key: hidden states and attentions by layer (embeddings first), then the model's final outputs."""
    prefix, _, index = name.partition(".")
    if index.isdigit():
        return (0, int(index), prefix)
    return (1, ("last_hidden_state", "logits", "start_logits", "end_logits", "loss").index(name)
            if name in ("last_hidden_state", "logits", "start_logits", "end_logits", "loss") else 9, name)


def layer_index(name: str) -> int | None:
    """``hidden_states.3`` -> 3 (0 is the embedding output); None for anything else."""
    prefix, _, index = name.partition(".")
    return int(index) if prefix == "hidden_states" and index.isdigit() else None


def first_diverging_layer(results: list[Comparison]) -> str | None:
    """Name of the first hidden state (embedding output = hidden_states.0) that misses its threshold."""
    hidden = sorted((r for r in results if r.name.startswith("hidden_states.")),
                    key=lambda r: int(r.name.split(".")[1]))
    for r in hidden:
        if not r.passed:
            index = int(r.name.split(".")[1])
            return "embeddings" if index == 0 else f"layer {index - 1} (hidden_states.{index})"
    return None


def divergence(results: list[Comparison]) -> str | None:
    """Where a failing comparison starts: the first diverging layer, else the first failing output (a head)."""
    layer = first_diverging_layer(results)
    if layer is not None:
        return layer
    failing = [r.name for r in sorted(results, key=lambda r: output_order(r.name)) if not r.passed]
    if not failing:
        return None
    return f"head ({failing[0]}); every hidden state matches" if any(
        r.name.startswith("hidden_states.") for r in results) else failing[0]
