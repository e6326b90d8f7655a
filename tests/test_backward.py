"""Training parity: loss and gradients of every head in every framework against the reference PyTorch's, and the
``deberta-xf parity --backward`` report (clean, and an injected fault that changes only the backward).

Reference gradients: ``fixtures/reference/<variant>/<task>/gradients.npz``, made by fixtures/generate_gradients.py
with transformers 4.57.6 (d loss / d parameter by canonical name, a tied parameter once; the labels used are stored
beside them). Bounds: FIXTURE_FRACTION of the documented fp32 gradient tolerances (deberta_xf.compare
FP32_GRAD_THRESHOLDS, docs/tolerances.md), the loss against the logits tolerance; never this machine's numbers.
"""

from __future__ import annotations

import json
import os
import types

import numpy as np
import pytest

from deberta_xf import cli as deberta_xf_cli
from deberta_xf.compare import FP32_GRAD_THRESHOLDS, FP32_THRESHOLDS, FP32_TRAIN_THRESHOLDS, GRAD_PREFIX, threshold
from deberta_xf.frameworks import FRAMEWORKS, REGISTRY
from deberta_xf.schema import expected_shapes
from deberta_xf.configuration import DebertaV2Config
from reference_cases import CASES, FIXTURE_FRACTION, REFERENCE, load_case

cli = types.SimpleNamespace(main=lambda argv: deberta_xf_cli.main(["parity", *argv]))
# The quick suite: the heads whose loss rules differ most (ignored -100 labels, the tied MLM decoder, pooled
# classification) of the default variant; every other case is marked slow.
FAST_CASES = (("v3", "token-classification"), ("v3", "masked-lm"), ("v3", "sequence-classification"))


def installed(framework: str) -> bool:
    return REGISTRY[framework].available() is None


def case_params():
    params = []
    for variant, task in CASES:
        for framework in FRAMEWORKS:
            marks = [pytest.mark.skipif(not installed(framework), reason=f"{framework} not installed")]
            if (variant, task) not in FAST_CASES or (task == "masked-lm" and framework == "flax"):  # ~9 s trace
                marks.append(pytest.mark.slow)
            params.append(pytest.param(variant, task, framework, marks=marks, id=f"{variant}/{task}/{framework}"))
    return params


def reference_gradients(variant: str, task: str) -> tuple[float, dict[str, np.ndarray], dict[str, np.ndarray]]:
    with np.load(os.path.join(REFERENCE, variant, task, "gradients.npz")) as data:
        loss = float(data["loss"])
        labels = {k[len("labels."):]: data[k] for k in data.files if k.startswith("labels.")}
        grads = {k: data[k] for k in data.files if k != "loss" and not k.startswith("labels.")}
    return loss, labels, grads


def test_reference_gradients_cover_the_schema():
    """Every case has a gradient for exactly the schema's parameters (the tied decoder once, as the embeddings)."""
    for variant, task in CASES:
        config = DebertaV2Config.from_json_file(os.path.join(REFERENCE, variant, task, "config.json"))
        _, labels, grads = reference_gradients(variant, task)
        expected = expected_shapes(config, task)
        assert set(grads) == set(expected), (variant, task)
        assert all(grads[n].shape == tuple(expected[n]) and grads[n].dtype == np.float32 for n in grads)
        assert labels, (variant, task)
        if task == "masked-lm" and config.legacy:
            # the decoder is tied to the word embeddings: their gradient holds the decoder's part (every
            # vocabulary row gets some, not only the rows of the input ids)
            used = np.unique(load_case(variant, task).inputs["input_ids"])
            rows = np.abs(grads["deberta.embeddings.word_embeddings.weight"]).sum(-1) > 0
            assert rows.sum() > len(used)


@pytest.mark.parametrize("variant,task,framework", case_params())
def test_gradients_match_reference(variant, task, framework):
    ref_loss, labels, ref_grads = reference_gradients(variant, task)
    case = load_case(variant, task)
    runner = REGISTRY[framework]
    execution = runner.backward(case.directory, task, "float32", case.model_inputs, labels, runner.cpu())
    loss = float(execution.outputs["loss"])
    assert abs(loss - ref_loss) <= FIXTURE_FRACTION * FP32_THRESHOLDS["logits"], (loss, ref_loss)
    grads = {k[len(GRAD_PREFIX):]: v for k, v in execution.outputs.items() if k.startswith(GRAD_PREFIX)}
    assert set(grads) == set(ref_grads)
    worst = {}
    for name, ref in ref_grads.items():
        assert grads[name].shape == ref.shape, name
        worst[name] = float(np.abs(grads[name].astype(np.float64) - ref).max())
    bound = FIXTURE_FRACTION * threshold(GRAD_PREFIX + "x", task, FP32_GRAD_THRESHOLDS)
    failing = {n: d for n, d in worst.items() if not d <= bound}
    assert not failing, f"{framework} {variant}/{task}: gradients over {bound:.1e}: {failing}"


def parity(tmp_path, *args: str, name: str = "report") -> tuple[int, dict]:
    report = tmp_path / f"{name}.json"
    code = cli.main([*args, "--json", str(report), "--quiet"])
    return code, (json.loads(report.read_text()) if report.exists() else {})


def other_framework() -> str:
    return next((f for f in ("flax", "tf") if installed(f)), "flax")


@pytest.mark.slow
@pytest.mark.skipif(not installed(other_framework()), reason="a second framework is needed")
def test_backward_report_clean(tmp_path):
    other = other_framework()
    case = os.path.join(REFERENCE, "v3", "token-classification")
    code, report = parity(tmp_path, case, "--frameworks", f"torch,{other}", "--backward",
                          "--markdown", str(tmp_path / "r.md"), "--junit", str(tmp_path / "r.xml"))
    assert code == 0 and report["passed"]
    assert report["tolerances"]["grad"] == FP32_GRAD_THRESHOLDS["grad"]
    assert report["inputs"]["labels"]["source"] == "built-in" and report["inputs"]["labels"]["ignored"] > 0
    (pair,) = report["comparisons"]
    names = {t["name"] for t in pair["tensors"]}
    config = DebertaV2Config.from_json_file(os.path.join(case, "config.json"))
    assert {GRAD_PREFIX + n for n in expected_shapes(config, "token-classification")} <= names
    assert "loss" in names and "hidden_states.0" in names  # the forward is compared too
    assert pair["gradients"]["compared"] == len(expected_shapes(config, "token-classification"))
    assert pair["gradients"]["failed"] == 0 and "final_weights" not in pair
    assert all(t["atol"] == FP32_GRAD_THRESHOLDS["grad"] for t in pair["tensors"] if t["name"].startswith(GRAD_PREFIX))
    assert "grad/classifier.weight" in (tmp_path / "r.md").read_text()
    assert 'name="grad/deberta.embeddings.word_embeddings.weight"' in (tmp_path / "r.xml").read_text()


@pytest.mark.skipif(not installed("flax"), reason="flax not installed")
def test_backward_finds_a_loss_without_the_ignore_mask(tmp_path, monkeypatch):
    """A Flax token-classification loss that averages over -100 positions too (as class 0): inference outputs are
    untouched, the loss and every gradient move; the report names the loss and the first gradient in backward
    order (the classifier) and fails."""
    import jax
    import jax.numpy as jnp

    module = REGISTRY["flax"].implementation()
    original = module.cross_entropy

    def no_ignore_mask(logits, labels, ignore_index=-100):
        labels = jnp.where(labels == ignore_index, 0, labels)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1))

    monkeypatch.setattr(module, "cross_entropy", no_ignore_mask)
    case = os.path.join(REFERENCE, "v3", "token-classification")
    code, report = parity(tmp_path, case, "--frameworks", "torch,flax", "--backward")
    assert code == 1 and not report["passed"]
    (pair,) = report["comparisons"]
    forward = [t for t in pair["tensors"] if t["name"] != "loss" and not t["name"].startswith(GRAD_PREFIX)]
    assert forward and all(t["passed"] for t in forward)  # the fault is invisible to inference
    failing = {t["name"] for t in pair["tensors"] if not t["passed"]}
    assert "loss" in failing and "grad/classifier.weight" in failing
    assert pair["first_diverging_layer"] == "loss; first diverging gradient: head: classifier.bias"
    monkeypatch.setattr(module, "cross_entropy", original)


@pytest.mark.slow
@pytest.mark.skipif(not installed("flax"), reason="flax not installed")
def test_backward_finds_a_gradient_only_fault(tmp_path, monkeypatch):
    """Same outputs, same loss, wrong gradients: Flax's LayerNorm scales get no gradient (y + stop(xhat) *
    (stop(scale) - scale) adds exactly 0 and cancels d/d scale). Only the LayerNorm.weight gradients fail, and the
    report names the first in backward order: the last layer's output LayerNorm."""
    import jax
    from flax import nnx

    original = nnx.LayerNorm.__call__

    def frozen_scale(self, x, *args, **kwargs):
        y = original(self, x, *args, **kwargs)
        scale, bias = self.scale[...], self.bias[...]
        xhat = jax.lax.stop_gradient((y - bias) / scale)
        return y + xhat * (jax.lax.stop_gradient(scale) - scale)

    monkeypatch.setattr(nnx.LayerNorm, "__call__", frozen_scale)
    case = os.path.join(REFERENCE, "v3", "sequence-classification")
    code, report = parity(tmp_path, case, "--frameworks", "torch,flax", "--backward")
    (pair,) = report["comparisons"]
    failing = {t["name"] for t in pair["tensors"] if not t["passed"]}
    assert code == 1
    assert failing and all(n.startswith(GRAD_PREFIX) and n.endswith("LayerNorm.weight") for n in failing)
    assert "grad/deberta.encoder.layer.1.output.LayerNorm.weight" in failing
    assert pair["first_diverging_layer"] == "layer 1: deberta.encoder.layer.1.output.LayerNorm.weight"


def test_backward_bad_usage(tmp_path):
    case = os.path.join(REFERENCE, "v3", "token-classification")
    assert cli.main([case, "--backward", "--dtype", "bfloat16"]) == 2
    assert cli.main([case, "--labels", str(tmp_path / "x.npz")]) == 2
    np.savez(tmp_path / "bad.npz", start_positions=np.zeros(4, np.int64))
    assert cli.main([case, "--backward", "--labels", str(tmp_path / "bad.npz")]) == 2
    np.savez(tmp_path / "short.npz", labels=np.zeros((4, 3), np.int64))
    assert cli.main([case, "--backward", "--labels", str(tmp_path / "short.npz")]) == 2


@pytest.mark.skipif(not installed("flax"), reason="flax not installed")
def test_backward_labels_file(tmp_path):
    """--labels FILE replaces the built-in labels: every label ignored but one changes the loss the report shows."""
    from deberta_xf.parity.inputs import deterministic_inputs

    case = os.path.join(REFERENCE, "v3", "token-classification")
    config = DebertaV2Config.from_json_file(os.path.join(case, "config.json"))
    ids = deterministic_inputs(config)["input_ids"]
    labels = np.full(ids.shape, -100, np.int64)
    labels[0, 1] = 2
    np.savez(tmp_path / "labels.npz", labels=labels)
    code, report = parity(tmp_path, case, "--frameworks", "torch,flax", "--backward", "--labels",
                          str(tmp_path / "labels.npz"))
    assert code == 0
    assert report["inputs"]["labels"]["source"] == str(tmp_path / "labels.npz")
    assert report["inputs"]["labels"]["ignored"] == labels.size - 1


# === --train-steps N: the loss curve and the final weights ===

def test_train_steps_bad_usage(tmp_path):
    base = os.path.join(REFERENCE, "v3", "base")
    case = os.path.join(REFERENCE, "v3", "token-classification")
    assert cli.main([base, "--train-steps", "2"]) == 2  # no task loss
    assert cli.main([case, "--train-steps", "2", "--dtype", "bfloat16"]) == 2
    assert cli.main([case, "--train-steps", "-1"]) == 2
    assert cli.main([case, "--train-steps", "2", "--lr", "0"]) == 2


@pytest.mark.slow
@pytest.mark.skipif(not installed("flax"), reason="flax not installed")
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_train_steps_torch_flax(tmp_path, optimizer):
    """torch.optim and optax from the same weights on the same batch: same loss before every step, same weights
    after the last (FP32_TRAIN_THRESHOLDS); the loss goes down."""
    case = os.path.join(REFERENCE, "v3", "token-classification")
    code, report = parity(tmp_path, case, "--frameworks", "torch,flax", "--train-steps", "3", "--optimizer",
                          optimizer, "--lr", "1e-3")
    assert code == 0, report.get("checks")
    (pair,) = report["comparisons"]
    names = [t["name"] for t in pair["tensors"]]
    assert [n for n in names if n.startswith("train_loss.")] == ["train_loss.0", "train_loss.1", "train_loss.2"]
    config = DebertaV2Config.from_json_file(os.path.join(case, "config.json"))
    assert {"weights/" + n for n in expected_shapes(config, "token-classification")} <= set(names)
    assert report["inputs"]["training"] == {"steps": 3, "optimizer": optimizer, "lr": 1e-3}


@pytest.mark.skipif(not installed("flax"), reason="flax not installed")
def test_train_steps_finds_a_wrong_learning_rate(tmp_path, monkeypatch):
    """Flax's optimizer built with twice the learning rate: the first step's loss still agrees, the second does
    not, and the report says so and names the first diverging weight."""
    flax = REGISTRY["flax"]
    original = flax.optimizer
    monkeypatch.setattr(flax, "optimizer", lambda model, name, lr: original(model, name, 2 * lr))
    case = os.path.join(REFERENCE, "v3", "sequence-classification")
    code, report = parity(tmp_path, case, "--frameworks", "torch,flax", "--train-steps", "2", "--lr", "1e-2")
    assert code == 1
    (pair,) = report["comparisons"]
    failing = {t["name"] for t in pair["tensors"] if not t["passed"]}
    assert "train_loss.0" not in failing and "train_loss.1" in failing
    assert pair["first_diverging_layer"].startswith("loss before step 1; final weights: embeddings: deberta.embeddings")


# === examples/: fine-tune the tiny checkpoint in each framework; the results convert and pass parity ===

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
OWN_FILE = {"torch": "model.safetensors", "tf": "tf_model.h5", "flax": "flax_model.msgpack"}


@pytest.mark.slow
@pytest.mark.parametrize("framework", [pytest.param(f, marks=pytest.mark.skipif(
    not all(installed(g) for g in FRAMEWORKS), reason="every framework is needed")) for f in FRAMEWORKS])
def test_finetune_example(tmp_path, framework):
    """examples/finetune_<framework>.py fine-tunes fixtures/tiny-deberta-v3 and saves a complete checkpoint whose
    weights moved; every framework loads it and they agree (parity), and it converts to the other frameworks."""
    import subprocess
    import sys

    from reference_cases import DEFAULT_CHECKPOINT

    out = tmp_path / f"finetuned-{framework}"
    run = subprocess.run([sys.executable, os.path.join(EXAMPLES, f"finetune_{framework}.py"), DEFAULT_CHECKPOINT,
                          str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "step 2: loss" in run.stdout
    assert {OWN_FILE[framework], "config.json", "spm.model"} <= set(os.listdir(out))
    before = REGISTRY["torch"].load(DEFAULT_CHECKPOINT, "sequence-classification").canonical_state()
    after = REGISTRY["torch"].load(str(out), "sequence-classification").canonical_state()
    assert set(before) == set(after)
    assert any(not np.array_equal(before[n], after[n]) for n in before)
    code, report = parity(tmp_path, str(out))
    assert code == 0, report.get("checks")
    assert {fw: s["weights_file"] for fw, s in report["frameworks"].items()}[framework] == OWN_FILE[framework]
    for target in FRAMEWORKS:
        if target != framework:
            assert deberta_xf_cli.main(["convert", str(out), str(tmp_path / f"{framework}-to-{target}"), "--to",
                                        target, "--quiet"]) == 0


@pytest.mark.slow
@pytest.mark.skipif(not installed("tf"), reason="tf not installed")
def test_train_steps_keras_adamw_differs(tmp_path):
    """The documented difference (docs/tolerances.md): keras.optimizers.AdamW adds epsilon to the uncorrected
    sqrt(v), torch.optim.AdamW to the corrected one; with SGD torch and tf agree, with AdamW the final weights
    do not, and the report names them."""
    case = os.path.join(REFERENCE, "v3", "token-classification")
    code, _ = parity(tmp_path, case, "--frameworks", "torch,tf", "--train-steps", "3", name="sgd")
    assert code == 0
    code, report = parity(tmp_path, case, "--frameworks", "torch,tf", "--train-steps", "3", "--optimizer", "adamw")
    assert code == 1
    (pair,) = report["comparisons"]
    assert pair["first_diverging_layer"].startswith("final weights: embeddings: deberta.embeddings")


@pytest.mark.slow
@pytest.mark.skipif(not installed("flax"), reason="flax not installed")
def test_train_steps_adamw_zero_gradient_parameters(tmp_path):
    """QA's start/end softmax over positions ignores a shift shared by every position, so qa_outputs.bias (and the
    last LayerNorm bias) have zero gradient; AdamW turns the rounding noise into steps of up to lr. Those weights
    are held to 2 x lr x steps, with a note, and torch.optim.AdamW vs optax.adamw passes."""
    case = os.path.join(REFERENCE, "v3", "question-answering")
    code, report = parity(tmp_path, case, "--frameworks", "torch,flax", "--train-steps", "3", "--optimizer", "adamw")
    assert code == 0, [c for c in report["checks"] if c["status"] == "failed"]
    (pair,) = report["comparisons"]
    bias = next(t for t in pair["tensors"] if t["name"] == "weights/qa_outputs.bias")
    assert bias["atol"] == pytest.approx(2 * 1e-3 * 3) and "gradient zero" in bias["note"]
    others = [t for t in pair["tensors"] if t["name"].startswith("weights/") and not t["note"]]
    assert others and all(t["atol"] == FP32_TRAIN_THRESHOLDS["weights"] for t in others)
