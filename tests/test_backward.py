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


# === problem_type: regression (num_labels 1) and multi-label classification (float labels, BCEWithLogits) ===

PROBLEM_TYPES = ("regression", "multi_label_classification")


def problem_type_case(problem_type: str, directory) -> tuple[float, dict, dict, dict]:
    """The checkpoint of fixtures/reference/v3/sequence-classification/gradients-<problem_type>.npz, rebuilt in
    ``directory`` (its stored config.json, the model.safetensors of the v3 task directory it names), and the
    reference's loss, labels, gradients and the v3 sequence-classification inputs it ran on."""
    import shutil

    with np.load(os.path.join(REFERENCE, "v3", "sequence-classification",
                              f"gradients-{problem_type}.npz")) as data:
        config, weights = json.loads(str(data["meta.config"])), str(data["meta.weights"])
        loss = float(data["loss"])
        labels = {"labels": data["labels.labels"]}
        grads = {k: data[k] for k in data.files if k != "loss" and not k.startswith(("labels.", "meta."))}
    (directory / "config.json").write_text(json.dumps(config))
    shutil.copy(os.path.join(REFERENCE, "v3", weights, "model.safetensors"), directory)
    return loss, labels, grads, load_case("v3", "sequence-classification").model_inputs


def test_problem_type_fixtures_are_what_they_claim(tmp_path):
    """regression: one label, float targets; multi-label: two labels, multi-hot float targets; a gradient for
    every parameter of the head's schema."""
    for problem_type, num_labels in (("regression", 1), ("multi_label_classification", 2)):
        _, labels, grads, inputs = problem_type_case(problem_type, tmp_path)
        config = DebertaV2Config.from_json_file(str(tmp_path / "config.json"))
        assert config.problem_type == problem_type and config.num_labels == num_labels
        assert set(grads) == set(expected_shapes(config, "sequence-classification"))
        assert grads["classifier.weight"].shape == (num_labels, config.hidden_size)
        assert labels["labels"].dtype == np.float32 and len(labels["labels"]) == len(inputs["input_ids"])
        if problem_type == "multi_label_classification":
            assert labels["labels"].shape == (len(inputs["input_ids"]), 2)
            assert set(np.unique(labels["labels"])) == {0.0, 1.0}


@pytest.mark.parametrize("problem_type", PROBLEM_TYPES)
@pytest.mark.parametrize("framework", [pytest.param(f, marks=pytest.mark.skipif(
    not installed(f), reason=f"{f} not installed")) for f in FRAMEWORKS])
def test_problem_type_gradients_match_reference(tmp_path, problem_type, framework):
    """MSE (regression) and BCEWithLogits (multi-label) losses and every gradient against the reference PyTorch's.
    TF follows the reference PyTorch's problem_type (the reference TF has none: docs/tolerances.md)."""
    ref_loss, labels, ref_grads, inputs = problem_type_case(problem_type, tmp_path)
    runner = REGISTRY[framework]
    execution = runner.backward(str(tmp_path), "sequence-classification", "float32", inputs, labels, runner.cpu())
    loss = float(execution.outputs["loss"])
    assert abs(loss - ref_loss) <= FIXTURE_FRACTION * FP32_THRESHOLDS["logits"], (loss, ref_loss)
    grads = {k[len(GRAD_PREFIX):]: v for k, v in execution.outputs.items() if k.startswith(GRAD_PREFIX)}
    assert set(grads) == set(ref_grads)
    bound = FIXTURE_FRACTION * FP32_GRAD_THRESHOLDS["grad"]
    worst = {n: float(np.abs(grads[n].astype(np.float64) - ref).max()) for n, ref in ref_grads.items()}
    failing = {n: d for n, d in worst.items() if not d <= bound}
    assert not failing, f"{framework} {problem_type}: gradients over {bound:.1e}: {failing}"
    assert np.abs(ref_grads["classifier.weight"]).max() > 100 * bound  # the head's gradient is not ~0


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


# === --batch-size B: --train-steps cycles over batches of B rows, the same in every framework ===

def test_split_batches():
    from deberta_xf.frameworks import split_batches

    inputs = {"input_ids": np.arange(10).reshape(5, 2), "attention_mask": np.ones((5, 2), np.int64)}
    labels = {"labels": np.arange(5)}
    batches = split_batches(inputs, labels, 2)
    assert [b[1]["labels"].tolist() for b in batches] == [[0, 1], [2, 3], [4]]
    assert [b[0]["input_ids"][:, 0].tolist() for b in batches] == [[0, 2], [4, 6], [8]]
    (whole,) = split_batches(inputs, labels, None)
    assert whole[0]["input_ids"] is not None and len(whole[1]["labels"]) == 5


def test_batch_size_bad_usage():
    case = os.path.join(REFERENCE, "v3", "sequence-classification")
    assert cli.main([case, "--batch-size", "2"]) == 2                         # without --train-steps
    assert cli.main([case, "--train-steps", "2", "--batch-size", "0"]) == 2


@pytest.mark.slow
@pytest.mark.skipif(not installed("flax"), reason="flax not installed")
def test_batches_loss_curves_and_plot(tmp_path, monkeypatch):
    """--train-steps 3 --batch-size 2 on the 4 rows of deterministic inputs: steps 0 and 2 run the first batch,
    step 1 the second, so the loss jumps between steps. Flax given the second batch's labels flipped at step 1 only:
    the curves part at step 1, the report gives both curves, the Markdown table and the plot's loss panel show them."""
    case = os.path.join(REFERENCE, "v3", "sequence-classification")
    flax = REGISTRY["flax"]
    original, calls = flax.train_step, []

    def flipped_at_step_1(model, optimizer, inputs, labels, device=None):
        calls.append(len(labels["labels"]))
        if len(calls) == 2:
            labels = {"labels": 1 - labels["labels"]}
        return original(model, optimizer, inputs, labels, device)

    monkeypatch.setattr(flax, "train_step", flipped_at_step_1)
    code, report = parity(tmp_path, case, "--frameworks", "torch,flax", "--train-steps", "3", "--batch-size", "2",
                          "--markdown", str(tmp_path / "r.md"), "--plot", str(tmp_path / "r.png"))
    assert code == 1 and report["inputs"]["shape"][0] == 4 and calls == [2, 2, 2]
    assert report["inputs"]["training"] == {"steps": 3, "optimizer": "sgd", "lr": 1e-3, "batch_size": 2,
                                            "batches": 2}
    (pair,) = report["comparisons"]
    curves = pair["train_loss"]
    assert curves["parted_at"] == 1 and pair["first_diverging_layer"].startswith("loss before step 1")
    torch_curve, flax_curve = curves["reference"], curves["candidate"]
    assert abs(torch_curve[0] - flax_curve[0]) <= FP32_TRAIN_THRESHOLDS["train_loss"]
    assert abs(torch_curve[1] - flax_curve[1]) > 20 * FP32_TRAIN_THRESHOLDS["train_loss"]  # flipped labels
    assert abs(torch_curve[1] - torch_curve[0]) > 0.1                  # a different batch, not a step's change
    assert "the loss curves part at step 1" in (tmp_path / "r.md").read_text()
    png = (tmp_path / "r.png").read_bytes()
    height = int.from_bytes(png[20:24], "big")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and height == 2 * 4 * 110  # hidden states + loss panel


# === --backward / --train-steps with --save-outputs / --compare-to ===

def _perturbed(src, dst, key: str, delta: float) -> None:
    """A copy of a recording with ``delta`` added to one element of array ``key``."""
    with np.load(src, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    arrays[key] = arrays[key].copy()
    arrays[key].flat[0] += delta
    np.savez(dst, **arrays)


def test_training_recording_round_trip_and_fault(tmp_path):
    """torch records --backward --train-steps (labels, loss, gradients, loss curve, final weights); torch compared
    against it passes; a recording with one gradient moved by 1e-3 fails and names that gradient; a run with other
    training flags, or --labels, is refused (exit 2)."""
    from deberta_xf.parity.recording import load_recording

    case = os.path.join(REFERENCE, "v3", "sequence-classification")
    flags = ["--backward", "--train-steps", "2", "--batch-size", "2"]
    rec = tmp_path / "torch.npz"
    code, _ = parity(tmp_path, case, "--frameworks", "torch", *flags, "--save-outputs", str(rec))
    assert code == 0
    recording = load_recording(str(rec))
    assert recording.training == {"backward": True, "train_steps": 2, "optimizer": "sgd", "lr": 1e-3,
                                  "batch_size": 2}
    outputs = recording.frameworks[0].outputs
    config = DebertaV2Config.from_json_file(os.path.join(case, "config.json"))
    names = expected_shapes(config, "sequence-classification")
    assert {GRAD_PREFIX + n for n in names} | {"weights/" + n for n in names} | {"loss", "train_loss.1"} <= set(outputs)
    from deberta_xf.parity.inputs import builtin_labels

    expected_labels = builtin_labels(recording.inputs, config, "sequence-classification")["labels"]
    assert recording.labels["labels"].tolist() == expected_labels.tolist()  # the labels the gradients were taken on

    code, report = parity(tmp_path, case, "--frameworks", "torch", *flags, "--compare-to", str(rec), name="clean")
    assert code == 0 and report["inputs"]["labels"]["source"] == "recording"
    (pair,) = report["comparisons"]
    assert pair["pair"] == "torch@cpu(recorded) vs torch@cpu" and pair["gradients"]["failed"] == 0
    assert pair["train_loss"]["parted_at"] is None

    bad = tmp_path / "bad.npz"
    _perturbed(rec, bad, "outputs.torch.grad/pooler.dense.weight", 1e-3)
    code, report = parity(tmp_path, case, "--frameworks", "torch", *flags, "--compare-to", str(bad), name="bad")
    assert code == 1
    (pair,) = report["comparisons"]
    assert [t["name"] for t in pair["tensors"] if not t["passed"]] == ["grad/pooler.dense.weight"]
    assert pair["gradients"]["worst"] == "pooler.dense.weight"
    assert pair["first_diverging_layer"] == "head: pooler.dense.weight"

    assert cli.main([case, "--frameworks", "torch", "--backward", "--compare-to", str(rec)]) == 2
    assert cli.main([case, "--frameworks", "torch", *flags[:-1], "3", "--compare-to", str(rec)]) == 2
    np.savez(tmp_path / "labels.npz", labels=np.zeros(3, np.int64))
    assert cli.main([case, "--frameworks", "torch", *flags, "--compare-to", str(rec), "--labels",
                     str(tmp_path / "labels.npz")]) == 2


@pytest.mark.slow
@pytest.mark.skipif(not installed("flax"), reason="flax not installed")
def test_training_recording_torch_then_flax(tmp_path):
    """Recorded with torch, compared with Flax later (another machine's recording): gradients, loss curve and
    final weights agree within the fp32 gradient / training tolerances."""
    case = os.path.join(REFERENCE, "v3", "token-classification")
    flags = ["--backward", "--train-steps", "2", "--optimizer", "adamw"]
    rec = tmp_path / "torch.npz"
    assert parity(tmp_path, case, "--frameworks", "torch", *flags, "--save-outputs", str(rec))[0] == 0
    code, report = parity(tmp_path, case, "--frameworks", "flax", *flags, "--compare-to", str(rec), name="flax")
    assert code == 0, [c for c in report["checks"] if c["status"] == "failed"]
    (pair,) = report["comparisons"]
    assert pair["pair"] == "torch@cpu(recorded) vs flax@cpu"
    config = DebertaV2Config.from_json_file(os.path.join(case, "config.json"))
    assert pair["gradients"]["compared"] == len(expected_shapes(config, "token-classification"))
    assert pair["final_weights"]["compared"] == len(expected_shapes(config, "token-classification"))
    assert len(pair["train_loss"]["candidate"]) == 2 and pair["train_loss"]["parted_at"] is None


TRAINING = {"backward": True, "train_steps": 2, "optimizer": "sgd", "lr": 1e-3, "batch_size": None}


@pytest.mark.parametrize(("training", "labels", "fragment"), [
    (dict(TRAINING, train_steps="2"), True, "training.train_steps"),
    (dict(TRAINING, backward=1), True, "training.backward"),
    (dict(TRAINING, batch_size=True), True, "training.batch_size"),
    ([1], True, "'training' is a list"),
    (TRAINING, False, "no 'labels.*' keys"),
])
def test_training_recording_validated(tmp_path, training, labels, fragment):
    """A recording's training fields and labels are checked like the rest (DebertaXfError naming the file and field)."""
    from deberta_xf.errors import DebertaXfError
    from deberta_xf.parity.recording import load_recording, save_recording

    path = str(tmp_path / "rec.npz")
    meta = {"task": "sequence-classification", "dtype": "float32", "config": {}, "training": training,
            "frameworks": {"torch": {"device": "cpu", "device_name": "cpu", "versions": {}, "weights_file": "w"}}}
    save_recording(path, meta, {"input_ids": np.ones((2, 4), np.int64), "attention_mask": np.ones((2, 4), np.int64)},
                   {"torch": {"grad/classifier.weight": np.zeros((2, 8), np.float32)}},
                   {"labels": np.zeros(2, np.int64)} if labels else None)
    with pytest.raises(DebertaXfError) as info:
        load_recording(path)
    assert path in str(info.value) and fragment in str(info.value)


def test_training_recording_labels_must_be_numbers(tmp_path):
    from deberta_xf.errors import DebertaXfError
    from deberta_xf.parity.recording import load_recording, save_recording

    path = str(tmp_path / "rec.npz")
    meta = {"task": "sequence-classification", "dtype": "float32", "config": {}, "training": TRAINING,
            "frameworks": {"torch": {"device": "cpu", "device_name": "cpu", "versions": {}, "weights_file": "w"}}}
    inputs = {"input_ids": np.ones((2, 4), np.int64), "attention_mask": np.ones((2, 4), np.int64)}
    outputs = {"torch": {"loss": np.zeros((), np.float32)}}
    save_recording(path, meta, inputs, outputs, {"labels": np.array([0.5, 1.0], np.float32)})
    assert load_recording(path).labels["labels"].tolist() == [0.5, 1.0]  # float targets are labels too
    save_recording(path, meta, inputs, outputs, {"labels": np.array(["a", "b"])})
    with pytest.raises(DebertaXfError, match="labels.labels.*numbers"):
        load_recording(path)
