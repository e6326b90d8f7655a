"""Dropout in the three frameworks: active only in training mode, with the config's rate at every site.

Each site gets its own rate (hidden 0.1, attention probabilities 0.2, pooler 0.3, classifier 0.4; the relative
embeddings' pos_dropout uses the hidden rate, as the reference's StableDropout(hidden_dropout_prob) does) and every
call is recorded (input, output) in each framework's training mode: the fraction of units zeroed at each site must be
the site's rate within 5 standard deviations of a binomial draw (fixed seeds), and the kept units are scaled by
1 / (1 - rate). In inference mode the outputs are deterministic and equal, bit for bit, to those of the same weights
with every rate 0.
"""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pytest

from deberta_xf.frameworks import FRAMEWORKS, REGISTRY
from reference_cases import REFERENCE

RATES = {"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.2, "pooler_dropout": 0.3, "cls_dropout": 0.4}
EXPECTED = {"hidden": 0.1, "pos_dropout": 0.1, "attention probs": 0.2, "pooler": 0.3, "classifier": 0.4}
BATCH, LENGTH = 64, 16  # 2048 pooled units: 5 standard deviations of a 0.3 rate are 0.05, half the rates' spacing
TASK = "sequence-classification"


def installed(framework: str) -> bool:
    return REGISTRY[framework].available() is None


def framework_params():
    """Every installed framework; Flax's eager forward (~10 s on 2 cores) is marked slow."""
    return [pytest.param(f, marks=[pytest.mark.skipif(not installed(f), reason=f"{f} not installed")]
                         + ([pytest.mark.slow] if f == "flax" else [])) for f in FRAMEWORKS]


def checkpoint(tmp_path, rates: dict[str, float]) -> str:
    """fixtures/reference/v3/sequence-classification's weights with the given dropout rates (and eager attention)."""
    source = os.path.join(REFERENCE, "v3", TASK)
    directory = tmp_path / ("dropout-" + "-".join(f"{v:g}" for v in rates.values()))
    directory.mkdir()
    with open(os.path.join(source, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    config.update(rates)
    (directory / "config.json").write_text(json.dumps(config))
    shutil.copy(os.path.join(source, "model.safetensors"), directory)
    return str(directory)


def model_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"input_ids": rng.integers(5, 211, size=(BATCH, LENGTH)).astype(np.int64),
            "attention_mask": np.ones((BATCH, LENGTH), np.int64)}


def site(shape: tuple[int, ...], pooled_calls: int) -> str:
    """Which dropout a call is, by what it drops: [B, heads, L, L] attention probabilities, [B, L, H] hidden
    states, [2 x buckets, H] relative embeddings, [B, H] the pooler's input, then the classifier's."""
    if len(shape) == 4:
        return "attention probs"
    if len(shape) == 3:
        return "hidden"
    if shape[0] != BATCH:
        return "pos_dropout"
    return "pooler" if pooled_calls == 0 else "classifier"


class Recorder:
    """(input, output) of every dropout call, grouped by site."""

    def __init__(self):
        self.calls: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}

    def __call__(self, inputs, outputs) -> None:
        x, y = np.asarray(inputs, np.float64), np.asarray(outputs, np.float64)
        name = site(x.shape, len(self.calls.get("pooler", [])))
        self.calls.setdefault(name, []).append((x, y))


def training_forward(framework: str, directory: str, inputs, monkeypatch, recorder: Recorder):
    """One training-mode forward of ``framework`` with every dropout call recorded."""
    runner = REGISTRY[framework]
    if framework == "torch":
        import torch

        model = runner.model_class(TASK).from_pretrained(directory, attn_implementation="eager")
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.register_forward_hook(lambda m, args, out: recorder(args[0].detach(), out.detach()))
        torch.manual_seed(0)
        model.train()
        with torch.no_grad():
            model(**{k: torch.as_tensor(v) for k, v in inputs.items()})
    elif framework == "tf":
        import tensorflow as tf

        module = runner.implementation()
        original = module.dropout

        def recorded(x, rate, training):
            y = original(x, rate, training)
            if training and rate > 0:
                recorder(x.numpy(), y.numpy())
            return y

        monkeypatch.setattr(module, "dropout", recorded)
        tf.random.set_seed(0)
        model = runner.model_class(TASK).from_pretrained(directory)
        model(**{k: tf.constant(v) for k, v in inputs.items()}, training=True)
    else:
        from flax import nnx

        original = nnx.Dropout.__call__

        def recorded(self, x, *args, **kwargs):
            y = original(self, x, *args, **kwargs)
            if not self.deterministic and self.rate > 0:
                recorder(x, y)
            return y

        monkeypatch.setattr(nnx.Dropout, "__call__", recorded)
        model = runner.model_class(TASK).from_pretrained(directory, seed=0)
        model.train()
        model(**inputs)


@pytest.mark.parametrize("framework", framework_params())
def test_dropout_rates_in_training_mode(tmp_path, monkeypatch, framework):
    recorder = Recorder()
    training_forward(framework, checkpoint(tmp_path, RATES), model_inputs(), monkeypatch, recorder)
    assert set(recorder.calls) == set(EXPECTED), sorted(recorder.calls)
    layers = 2  # v3: every layer drops its relative embeddings, attention probabilities and two hidden outputs
    assert [len(recorder.calls[s]) for s in ("hidden", "pos_dropout", "attention probs", "pooler", "classifier")] \
        == [1 + 2 * layers, layers, layers, 1, 1]
    for name, rate in EXPECTED.items():
        x = np.concatenate([c[0].ravel() for c in recorder.calls[name]])
        y = np.concatenate([c[1].ravel() for c in recorder.calls[name]])
        live = x != 0
        zeroed = float(np.mean(y[live] == 0))
        bound = 5 * math.sqrt(rate * (1 - rate) / live.sum())
        assert abs(zeroed - rate) <= bound, f"{framework} {name}: {zeroed:.4f} zeroed, rate {rate} +- {bound:.4f}"
        kept = live & (y != 0)
        np.testing.assert_allclose(y[kept], x[kept] / (1 - rate), rtol=1e-5, err_msg=f"{framework} {name}")


def inference_logits(framework: str, directory: str, inputs) -> np.ndarray:
    runner = REGISTRY[framework]
    model = runner.load(directory, TASK)
    return np.asarray(runner.outputs(model, inputs)["logits"])


@pytest.mark.parametrize("framework", framework_params())
def test_inference_mode_has_no_dropout(tmp_path, framework):
    """A loaded model is in inference mode: two runs are identical, and identical to the same weights with every
    dropout rate 0."""
    inputs = model_inputs()
    with_rates = checkpoint(tmp_path, RATES)
    without = checkpoint(tmp_path, {k: 0.0 for k in RATES})
    first, second = inference_logits(framework, with_rates, inputs), inference_logits(framework, with_rates, inputs)
    assert np.array_equal(first, second)
    assert np.array_equal(first, inference_logits(framework, without, inputs))
