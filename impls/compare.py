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
# Gradients (`parity --backward`, float32 only): max abs of d loss / d parameter, per parameter tensor, canonical
# names ("grad/<name>"). Measured on CPU (torch 2.13, tensorflow 2.21 / keras 3.15, flax 0.12.8 / jax 0.10.2) with
# `deberta-xf parity --backward` on the 31 reference cases (fixtures/reference/*/*, the reference.npz inputs and
# labels; base: the seeded surrogate target) and fixtures/tiny-deberta-v3 (every head on the sample texts, built-in
# labels). Worst cross-framework max abs over every parameter (docs/tolerances.md has the table):
#   gradients, every head but masked-LM   5.6e-7 (classifier / qa_outputs weights; |grad| up to 0.81)
#   gradients, masked-LM                  3.1e-6 (cls.predictions.transform.dense.weight; |grad| up to 7.3)
#   loss                                  3.8e-6 (masked-LM; compared against the "logits" threshold)
# threshold = 10 x the worst seen, rounded up to 1/2/5 x 10^k (the forward thresholds leave ~30x over their
# measurement; gradients sum over the batch and the sequence, so more room grows with size: --atol-grad).
FP32_GRAD_THRESHOLDS = {"grad": 1e-5, "grad_mlm": 5e-5}
# `parity --train-steps N` (float32): the loss before each step and every weight after the last one. Measured
# (same machine and versions) with 5 steps at lr 1e-3, SGD and AdamW, on v3 token classification, masked-LM, QA,
# multiple choice and v2-conv masked-LM; worst max abs between frameworks whose optimizers compute the same update
# (every SGD pair; torch.optim.AdamW vs optax.adamw): loss 2.2e-5 (masked-LM, AdamW), weights 1.2e-6 (word
# embeddings). Threshold = 10 x that, rounded up. keras.optimizers.AdamW is NOT the same update: its epsilon is
# Kingma & Ba's "epsilon hat" (added to the bias-uncorrected sqrt(v)), so parameters whose gradient is near epsilon
# move differently; torch/flax vs tf with --optimizer adamw differ by up to 4.5e-3 in the weights after 5 steps at
# lr 1e-3, and the report says so (docs/tolerances.md). With AdamW a parameter whose start gradient is zero within
# the gradient tolerance (QA's qa_outputs.bias: 5.9e-3 torch vs flax) is held to 2 x lr x steps by the harness.
FP32_TRAIN_THRESHOLDS = {"train_loss": 5e-4, "weights": 2e-5}
GRAD_PREFIX = "grad/"
TRAIN_LOSS_PREFIX = "train_loss."
WEIGHTS_PREFIX = "weights/"
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
    """A model output -> ``{"logits": ..., "hidden_states.0": ..., "attentions.1": ...}`` as numpy.

    ``loss`` becomes one number, its mean: TF returns the reference TF's per-example ([batch]) or (1,)-shaped loss,
    whose mean (what Keras minimises) is the scalar loss of PyTorch and Flax."""
    flat: dict[str, np.ndarray] = {}
    for key, value in outputs.items():
        if value is None:
            continue
        if isinstance(value, (tuple, list)):
            for i, v in enumerate(value):
                flat[f"{key}.{i}"] = to_numpy(v)
        elif key == "loss":
            flat[key] = np.asarray(to_numpy(value).mean(), np.float32)
        else:
            flat[key] = to_numpy(value)
    return flat


def token_mask(attention_mask: np.ndarray) -> np.ndarray:
    """[..., seq] mask (2-D, or [batch, choices, seq]) -> bool [rows, seq]."""
    mask = np.asarray(attention_mask)
    return mask.reshape(-1, mask.shape[-1]).astype(bool)


def threshold(name: str, task: str, thresholds: Mapping[str, float] = FP32_THRESHOLDS) -> float:
    if name.startswith(GRAD_PREFIX):
        key = "grad_mlm" if task == "masked-lm" else "grad"
        return thresholds.get(key, FP32_GRAD_THRESHOLDS[key])
    if name.startswith(TRAIN_LOSS_PREFIX):
        return thresholds.get("train_loss", FP32_TRAIN_THRESHOLDS["train_loss"])
    if name.startswith(WEIGHTS_PREFIX):
        return thresholds.get("weights", FP32_TRAIN_THRESHOLDS["weights"])
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
        results.append(compare_arrays(name, reference[name], candidate[name], atol,
                                      None if name.startswith((GRAD_PREFIX, WEIGHTS_PREFIX)) else mask))
    if strict:
        for name in candidate:
            if name not in reference:
                results.append(Comparison(name, tuple(np.shape(candidate[name])), math.inf, math.inf, math.inf,
                                          threshold(name, task, thresholds), 0,
                                          "missing from the reference's outputs"))
    return sorted(results, key=lambda r: output_order(r.name)) if strict else results


def output_order(name: str) -> tuple:
    """Sort key: hidden states and attentions by layer (embeddings first), then the model's final outputs, then
    the gradients in backward order (:func:`gradient_order`)."""
    if name.startswith(GRAD_PREFIX):
        return (2,) + gradient_order(name)
    if name.startswith(TRAIN_LOSS_PREFIX):
        return (3, int(name[len(TRAIN_LOSS_PREFIX):]), "")
    if name.startswith(WEIGHTS_PREFIX):
        return (4, gradient_layer(name[len(WEIGHTS_PREFIX):])[0], name)
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


def gradient_layer(name: str) -> tuple[int, str]:
    """Where a parameter sits, as (forward position, label): ``grad/deberta.encoder.layer.3.attention...`` ->
    (4, "layer 3"); embeddings 0, the relative-position embeddings (and their LayerNorm) 1, the convolution
    after layer 0 between layer 0 and layer 1, a task head last."""
    canonical = name[len(GRAD_PREFIX):] if name.startswith(GRAD_PREFIX) else name
    body = canonical[len("deberta."):] if canonical.startswith("deberta.") else canonical
    if body.startswith("embeddings."):
        return (0, "embeddings")
    if body.startswith("encoder.layer."):
        index = int(body.split(".")[2])
        return (2 + 2 * index, f"layer {index}")
    if body.startswith("encoder.conv."):
        return (3, "convolution (after layer 0)")
    if body.startswith("encoder."):
        return (1, "relative-position embeddings")
    return (10 ** 6, "head")


_FORWARD_STEPS = ("attention.self.", "attention.output.", "intermediate.", "output.")  # inside a layer


def gradient_order(name: str) -> tuple:
    """Backward order: the head first, then the layers from the last to the first (inside a layer: output,
    intermediate, attention output, attention), the embeddings last."""
    position, _ = gradient_layer(name)
    body = name.split("encoder.layer.", 1)[1].split(".", 1)[1] if "encoder.layer." in name else ""
    step = next((i for i, prefix in enumerate(_FORWARD_STEPS) if body.startswith(prefix)), 0)
    return (-position, -step, name)


def gradient_divergence(results: list[Comparison]) -> str | None:
    """Where the backward pass parts: the loss when it differs, then the first failing gradient in backward order
    (head, last layer, ..., embeddings), named by layer and parameter."""
    grads = sorted((r for r in results if r.name.startswith(GRAD_PREFIX) and not r.passed),
                   key=lambda r: gradient_order(r.name))
    loss = next((r for r in results if r.name == "loss" and not r.passed), None)
    where = None
    if grads:
        _, layer = gradient_layer(grads[0].name)
        where = f"{layer}: {grads[0].name[len(GRAD_PREFIX):]}"
    if loss is not None:
        return "loss" + (f"; first diverging gradient: {where}" if where else "")
    return where


def training_divergence(results: list[Comparison]) -> str | None:
    """Where ``--train-steps`` runs part: the first step whose loss differs, then the first failing final weight
    (forward order: embeddings first)."""
    steps = sorted((r for r in results if r.name.startswith(TRAIN_LOSS_PREFIX) and not r.passed),
                   key=lambda r: output_order(r.name))
    weights = sorted((r for r in results if r.name.startswith(WEIGHTS_PREFIX) and not r.passed),
                     key=lambda r: output_order(r.name))
    parts = []
    if steps:
        parts.append(f"loss before step {steps[0].name[len(TRAIN_LOSS_PREFIX):]}")
    if weights:
        name = weights[0].name[len(WEIGHTS_PREFIX):]
        parts.append(f"final weights: {gradient_layer(name)[1]}: {name}")
    return "; ".join(parts) or None


def divergence(results: list[Comparison]) -> str | None:
    """Where a failing comparison starts: the first diverging layer, else the first failing output (a head), else
    (all forward outputs match) the backward pass's :func:`gradient_divergence`."""
    forward = [r for r in results if not r.name.startswith((GRAD_PREFIX, TRAIN_LOSS_PREFIX, WEIGHTS_PREFIX))
               and r.name != "loss"]
    if all(r.passed for r in forward) and any(not r.passed for r in results):
        backward = [r for r in results if r.name.startswith(GRAD_PREFIX) or r.name == "loss"]
        if any(not r.passed for r in backward):
            return gradient_divergence(backward)
        return training_divergence(results)
    results = forward
    layer = first_diverging_layer(results)
    if layer is not None:
        return layer
    failing = [r.name for r in sorted(results, key=lambda r: output_order(r.name)) if not r.passed]
    if not failing:
        return None
    return f"head ({failing[0]}); every hidden state matches" if any(
        r.name.startswith("hidden_states.") for r in results) else failing[0]


def positive_float_arg(flag: str):
    """An argparse ``type`` for a tolerance or rate option: a positive finite number, or a usage error naming ``flag``."""
    import argparse

    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} expects a number, got {value!r}") from None
        if not number > 0 or number == float("inf"):
            raise argparse.ArgumentTypeError(f"{flag} expects a positive finite number, got {value!r}")
        return number

    return parse
