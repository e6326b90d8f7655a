"""Framework-free comparison of model outputs, the DESIGN §5 rules in one place.

Used by the tests, by ``deberta-xf convert``'s verification and by ``deberta-xf parity``:
- token-level outputs ([batch, seq, ...]) are compared where ``attention_mask == 1`` (the reference frameworks
  themselves disagree at padding positions); attention maps on real (query, key) pairs; pooled outputs and
  losses everywhere;
- fp32 thresholds (max abs): 5e-5 for hidden states, pooled/QA/token logits; 1e-4 for masked-LM logits.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import numpy as np

FP32_THRESHOLDS = {"hidden": 5e-5, "logits": 5e-5, "mlm_logits": 1e-4}


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
        return Comparison(name, tuple(candidate.shape), math.inf, math.inf, math.inf, atol, 0)
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
        return Comparison(name, tuple(reference.shape), math.inf, math.inf, math.inf, atol, int(diff.size))
    rel = diff / np.maximum(scale, 1e-6)
    return Comparison(name, tuple(reference.shape), float(diff.max()), float(diff.mean()), float(rel.max()), atol,
                      int(diff.size))


def compare_outputs(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray], task: str,
                    attention_mask: np.ndarray | None = None,
                    thresholds: Mapping[str, float] = FP32_THRESHOLDS) -> list[Comparison]:
    """Compare every output present in both, by the DESIGN §5 rules. Missing outputs fail."""
    mask = token_mask(attention_mask) if attention_mask is not None else None
    results = []
    for name in reference:
        atol = threshold(name, task, thresholds)
        if name not in candidate:
            results.append(Comparison(name, tuple(np.shape(reference[name])), math.inf, math.inf, math.inf, atol, 0))
            continue
        results.append(compare_arrays(name, reference[name], candidate[name], atol, mask))
    return results


def first_diverging_layer(results: list[Comparison]) -> str | None:
    """Name of the first hidden state (embedding output = hidden_states.0) that misses its threshold."""
    hidden = sorted((r for r in results if r.name.startswith("hidden_states.")),
                    key=lambda r: int(r.name.split(".")[1]))
    for r in hidden:
        if not r.passed:
            index = int(r.name.split(".")[1])
            return "embeddings" if index == 0 else f"layer {index - 1} (hidden_states.{index})"
    return None
