"""attn_implementation "sdpa" and "fused" (the Triton kernel) in PyTorch, against "eager" and the reference fixtures.

Eager is the reference's math (bit-exact with transformers 4.57.6, tests/test_torch_model.py); sdpa and fused do the
same math through other kernels, so they are held to KERNEL_FRACTION of the documented fp32 tolerances against a
live eager run (on every position, padding included: a fully masked query row must come out as eager's uniform
average) and to FIXTURE_FRACTION against the committed reference outputs.

The fused kernel runs on CPU tensors in Triton's interpreter: TRITON_INTERPRET=1 must be set before triton is
imported (triton.language's own helpers are decorated at import), so this module sets it when it is collected, on a
machine without CUDA and before any test has imported triton (collection imports no triton before this module;
Triton reads the variable only when it is imported or decorates a kernel, and without CUDA the interpreter is the
only way Triton runs at all). Where that is not possible, the fused tests are skipped with the reason. The
interpreter costs per tile operation, so the model-level cases use its default 32-wide tiles on the tiny fixture
configs (several tiles only on the long sequences), and the multi-tile paths are checked directly on the kernel with
16-wide tiles. Measured on CPU (fp32, every fixture case, every position): hidden states within ~1.5e-6 of eager,
masked-LM logits (|x| up to ~24) within 1.5e-5.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

_TRITON_IMPORTED_BEFORE = "triton" in sys.modules
if not torch.cuda.is_available() and not _TRITON_IMPORTED_BEFORE:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import deberta_xf  # noqa: E402
from deberta_xf.compare import (DTYPE_THRESHOLDS, FP32_GRAD_THRESHOLDS, FP32_THRESHOLDS,  # noqa: E402
                                compare_outputs, flatten_outputs)
from deberta_xf.errors import ConfigError  # noqa: E402
from deberta_xf.frameworks import REGISTRY  # noqa: E402
from deberta_xf.torch import fused_attention  # noqa: E402
from deberta_xf.torch.modeling_deberta_v2 import MODEL_CLASSES  # noqa: E402
from reference_cases import (CASE_IDS, CASES, DEFAULT_CHECKPOINT, FIXTURE_FRACTION, KERNEL_FRACTION,  # noqa: E402
                             assert_matches, load_case)

if importlib.util.find_spec("triton") is None:
    _NO_FUSED = "the fused kernel needs triton (pip install 'deberta-xf[triton]')"
elif not fused_attention.interpreting():
    _NO_FUSED = ("these tests run the fused kernel on CPU in Triton's interpreter; TRITON_INTERPRET=1 could not be "
                 "set before triton was imported" + (" (CUDA present)" if torch.cuda.is_available() else ""))
else:
    _NO_FUSED = ""
needs_triton = pytest.mark.skipif(bool(_NO_FUSED), reason=_NO_FUSED)
IMPLEMENTATIONS = ("sdpa", "fused")


def run(model, inputs: dict, **kwargs) -> dict[str, np.ndarray]:
    tensors = {k: torch.as_tensor(v) for k, v in inputs.items()}
    with torch.no_grad():
        return flatten_outputs(model(**tensors, output_hidden_states=True, **kwargs))


def without_attentions(outputs: dict) -> dict:
    """The reference fixtures hold attention maps too; sdpa and fused return none (output_attentions: eager)."""
    return {k: v for k, v in outputs.items() if not k.startswith("attentions.")}


def with_implementation(model, implementation: str):
    model.config._attn_implementation = implementation  # read at each call, as the reference
    return model


def assert_close_everywhere(want: dict, got: dict, task: str, mask: np.ndarray, label: str,
                            thresholds=FP32_THRESHOLDS, scale: float = KERNEL_FRACTION) -> float:
    """Every output within ``scale`` x the threshold on every position (padding included)."""
    everywhere = np.ones_like(mask)
    limits = {k: v * scale for k, v in thresholds.items()}
    results = compare_outputs(want, got, task, everywhere, limits, strict=True)
    failed = [f"{r.name}: max abs {r.max_abs:.3e} > {r.atol:.1e} {r.note}" for r in results if not r.passed]
    assert results and not failed, f"{label}: " + "; ".join(failed)
    return max(r.max_abs for r in results)


# ----------------------------------------------------------------------------------------------------------------
# Every fixture case and head: sdpa and fused against eager (every position) and against the reference fixtures
def _case_params():
    params = []
    for implementation in IMPLEMENTATIONS:
        for (variant, task), case_id in zip(CASES, CASE_IDS):
            marks = [needs_triton] if implementation == "fused" else []
            if implementation == "fused" and task not in ("base", "masked-lm"):
                marks.append(pytest.mark.slow)  # the heads do not change the attention; every variant stays quick
            params.append(pytest.param(implementation, variant, task, marks=marks, id=f"{implementation}-{case_id}"))
    return params


@pytest.mark.parametrize(("implementation", "variant", "task"), _case_params())
def test_matches_eager_and_reference_on_every_case(implementation, variant, task):
    case = load_case(variant, task)
    model = MODEL_CLASSES[task].from_pretrained(case.directory)
    eager = run(model, case.inputs)  # with the labels: the loss is compared too
    got = run(with_implementation(model, implementation), case.inputs)
    assert_close_everywhere(eager, got, task, case.attention_mask, f"{implementation} vs eager {variant}/{task}")
    assert_matches(without_attentions(case.pt), got, task, case.attention_mask,
                   f"{implementation} vs reference {variant}/{task}", scale=FIXTURE_FRACTION)


# ----------------------------------------------------------------------------------------------------------------
# Lengths beyond the fixtures: past 2 span relative rows (clamped / log-bucketed distances) and past
# max_position_embeddings, odd, padded, with a fully padded row
LONG_CASES = [
    # variant, length: v3 / v2-conv: log buckets (16), 2 span = 32 rows, no absolute positions (any length);
    # abs-noshare: no buckets, clamp at 8 (16 rows), absolute positions up to 64; emb-proj: c2p only, buckets 12
    pytest.param("v3", 77, id="v3-77"),
    pytest.param("v2-conv", 71, id="v2-conv-71", marks=pytest.mark.slow),
    pytest.param("abs-noshare", 41, id="abs-noshare-41"),
    pytest.param("emb-proj", 53, id="emb-proj-53", marks=pytest.mark.slow),
]


def long_inputs(length: int, vocab: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(length)
    ids = rng.integers(3, vocab, size=(3, length))
    mask = np.ones((3, length), np.int64)
    mask[1, length - 19:] = 0  # padding
    mask[2, :] = 0             # a fully padded row: every query of it is masked
    return {"input_ids": ids * mask, "attention_mask": mask}


@pytest.mark.parametrize(("variant", "length"), LONG_CASES)
@pytest.mark.parametrize("implementation", [pytest.param("sdpa"), pytest.param("fused", marks=needs_triton)])
def test_long_padded_sequences(implementation, variant, length):
    case = load_case(variant, "base")
    model = MODEL_CLASSES["base"].from_pretrained(case.directory)
    config = model.config
    assert length > 2 * config.att_span
    assert length > config.max_position_embeddings or config.position_biased_input
    inputs = long_inputs(length, config.vocab_size)
    eager = run(model, inputs)
    got = run(with_implementation(model, implementation), inputs)
    assert_close_everywhere(eager, got, "base", inputs["attention_mask"], f"{implementation} {variant} L={length}")
    padded = eager["last_hidden_state"][2]
    assert np.abs(padded).max() > 0  # the fully padded row is not trivially zero: it went through attention


@pytest.mark.parametrize("implementation", [pytest.param("sdpa"), pytest.param("fused", marks=needs_triton)])
def test_three_dimensional_mask(implementation):
    """A causal x padding 3-D mask (the fused kernel reads it as a pair mask), against the reference's encoder run
    with the same mask."""
    case = load_case("v3", "base")
    model = MODEL_CLASSES["base"].from_pretrained(case.directory)
    inputs = {"input_ids": case.inputs["input_ids"], "attention_mask": case.extra["inputs3d.attention_mask"]}
    eager = run(model, inputs)
    got = run(with_implementation(model, implementation), inputs)
    assert_close_everywhere(eager, got, "base", case.attention_mask, f"{implementation} 3-D mask")
    assert_matches({"last_hidden_state": case.extra["pt3d.last_hidden_state"]},
                   {"last_hidden_state": got["last_hidden_state"]}, "base", case.attention_mask,
                   f"{implementation} 3-D mask vs reference", scale=FIXTURE_FRACTION)


# ----------------------------------------------------------------------------------------------------------------
# The kernel itself with small tiles: several query and key tiles, distances past the table's reach
@needs_triton
@pytest.mark.parametrize("terms", [("c2p", "p2c"), ("c2p",), ("p2c",), ()], ids=lambda t: "+".join(t) or "none")
@pytest.mark.parametrize("mask_kind", ["none", "tokens", "pairs"])
def test_kernel_multi_tile(terms, mask_kind):
    generator = torch.Generator().manual_seed(7)
    batch, heads, length, head_d, rows, reach = 2, 2, 37, 8, 12, 5
    q, k, v = (torch.randn(batch, heads, length, head_d, generator=generator) for _ in range(3))
    projections = {t: torch.randn(batch, heads, length, rows, generator=generator) for t in terms}
    tables = {t: torch.randint(0, rows, (2 * reach + 1,), generator=generator) for t in terms}
    tokens = torch.ones(batch, length, dtype=torch.bool)
    tokens[0, 20:] = False  # padding
    tokens[1, :] = False    # a fully masked sequence
    mask = {"none": None, "tokens": tokens[:, None, None, :],
            "pairs": tokens[:, None, :, None] & torch.ones(length, length, dtype=torch.bool).tril()}[mask_kind]
    args = (q, k, v, projections.get("c2p"), projections.get("p2c"), tables, mask, 2.0)
    got = fused_attention.attention_forward(*args, block_m=16, block_n=16)
    want = fused_attention.attention_reference(*args)
    assert float((got - want).abs().max()) < 2e-6


# ----------------------------------------------------------------------------------------------------------------
# Backward (fused: recomputed through the eager math) and bf16
@pytest.mark.parametrize("implementation", [pytest.param("sdpa"), pytest.param("fused", marks=needs_triton)])
@pytest.mark.parametrize(("variant", "task"), [("v3", "token-classification"),
                                               pytest.param("abs-noshare", "masked-lm", marks=pytest.mark.slow)])
def test_gradients_match_eager(implementation, variant, task):
    case = load_case(variant, task)
    torch_fw = REGISTRY["torch"]
    labels = {k: v for k, v in case.inputs.items() if k in ("labels", "start_positions", "end_positions")}
    model = MODEL_CLASSES[task].from_pretrained(case.directory)
    loss_eager, grads_eager = torch_fw.loss_and_gradients(model, case.model_inputs, labels)
    loss, grads = torch_fw.loss_and_gradients(with_implementation(model, implementation), case.model_inputs, labels)
    assert abs(loss - loss_eager) <= FP32_THRESHOLDS["logits"] * KERNEL_FRACTION
    limit = FP32_GRAD_THRESHOLDS["grad_mlm" if task == "masked-lm" else "grad"] * KERNEL_FRACTION
    assert set(grads) == set(grads_eager)
    worst = max(float(np.abs(grads[n] - grads_eager[n]).max()) for n in grads)
    assert worst <= limit, f"{implementation}: gradient differs from eager by {worst:.2e}"
    assert max(float(np.abs(g).max()) for g in grads.values()) > 1e-3  # real gradients flowed


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("implementation", ["eager", "sdpa", pytest.param("fused", marks=needs_triton)])
def test_half_precision_forward(implementation, dtype):
    """bf16 / fp16 against the fp32 reference outputs, within the documented tolerance of that dtype."""
    case = load_case("v3", "masked-lm")
    model = MODEL_CLASSES["masked-lm"].from_pretrained(case.directory, dtype=dtype,
                                                       attn_implementation=implementation)
    got = run(model, case.inputs)
    assert model.dtype == getattr(torch, dtype)
    results = compare_outputs(without_attentions(case.pt), got, "masked-lm", case.attention_mask,
                              DTYPE_THRESHOLDS[dtype])
    failed = [f"{r.name}: {r.max_abs:.3e} > {r.atol}" for r in results if not r.passed]
    assert results and not failed, f"{dtype} {implementation}: " + "; ".join(failed)
    worst_hidden = max(r.max_abs for r in results if r.name.startswith("hidden_states"))
    assert worst_hidden > FP32_THRESHOLDS["hidden"]  # it really ran in bf16


# ----------------------------------------------------------------------------------------------------------------
# Training mode: sdpa's dropout_p; fused runs eager when attention dropout is on (the kernel has none)
def train_outputs(model, inputs, seed: int) -> np.ndarray:
    torch.manual_seed(seed)
    tensors = {k: torch.as_tensor(v) for k, v in inputs.items()}
    with torch.no_grad():
        return model(**tensors).last_hidden_state.numpy()


def test_training_dropout():
    case = load_case("v3", "base")
    no_hidden_dropout = {"hidden_dropout_prob": 0.0}
    model = MODEL_CLASSES["base"].from_pretrained(case.directory, attention_probs_dropout_prob=0.0,
                                                  **no_hidden_dropout).train()
    eager = train_outputs(model, case.model_inputs, 0)
    sdpa = train_outputs(with_implementation(model, "sdpa"), case.model_inputs, 0)
    keep = case.attention_mask.astype(bool)
    assert np.abs(sdpa - eager)[keep].max() <= FP32_THRESHOLDS["hidden"] * KERNEL_FRACTION  # no dropout: same

    model = MODEL_CLASSES["base"].from_pretrained(case.directory, attention_probs_dropout_prob=0.3,
                                                  **no_hidden_dropout).train()
    eager = train_outputs(model, case.model_inputs, 0)
    first, second = (train_outputs(with_implementation(model, "sdpa"), case.model_inputs, seed) for seed in (0, 1))
    assert np.abs(first - second)[keep].max() > 1e-3  # dropout acts: other draws, other outputs
    fused = train_outputs(with_implementation(model, "fused"), case.model_inputs, 0)
    np.testing.assert_array_equal(fused, eager)  # the eager computation, with the same dropout draws


# ----------------------------------------------------------------------------------------------------------------
# Plumbing: from_pretrained, from_config, create_model, output_attentions, errors
@pytest.mark.parametrize("implementation", ["eager", "sdpa", "fused"])
def test_argument_reaches_the_config(implementation):
    case = load_case("v3", "base")
    config = deberta_xf.DebertaV2Config.from_pretrained(case.directory)
    loaded = deberta_xf.DebertaV2Model.from_pretrained(case.directory, attn_implementation=implementation)
    built = deberta_xf.DebertaV2Model.from_config(config, attn_implementation=implementation)
    created = deberta_xf.create_model("torch", "base", config=config, attn_implementation=implementation)
    from_checkpoint = deberta_xf.create_model("torch", "base", checkpoint=case.directory,
                                              attn_implementation=implementation)
    for model in (loaded, built, created, from_checkpoint):
        assert model.config._attn_implementation == implementation
    assert config._attn_implementation == "eager"  # the caller's config is left as it was
    assert deberta_xf.DebertaV2Model.from_pretrained(case.directory).config._attn_implementation == "eager"
    saved = loaded.config.to_dict()
    assert "attn_implementation" not in saved and "_attn_implementation" not in saved


def test_unknown_implementation_is_a_config_error():
    with pytest.raises(ConfigError, match="attn_implementation 'flash'.*eager, sdpa, fused"):
        deberta_xf.DebertaV2Model.from_pretrained(DEFAULT_CHECKPOINT, attn_implementation="flash")


@pytest.mark.parametrize("implementation", ["sdpa", pytest.param("fused", marks=needs_triton)])
def test_output_attentions_falls_back_to_eager(implementation):
    case = load_case("v3", "base")
    eager = MODEL_CLASSES["base"].from_pretrained(case.directory)
    other = MODEL_CLASSES["base"].from_pretrained(case.directory, attn_implementation=implementation)
    want, got = run(eager, case.model_inputs, output_attentions=True), run(other, case.model_inputs,
                                                                          output_attentions=True)
    assert set(got) == set(want) and any(k.startswith("attentions.") for k in got)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])  # the same eager computation


def test_fused_on_cpu_without_interpreter_says_why(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    model = MODEL_CLASSES["base"].from_pretrained(load_case("v3", "base").directory, attn_implementation="fused")
    with pytest.raises(RuntimeError, match="needs the model on a GPU.*TRITON_INTERPRET=1.*'eager' or 'sdpa'"):
        model(input_ids=torch.ones(1, 5, dtype=torch.long))


def test_model_imports_and_runs_without_triton():
    """triton is an optional extra: the model imports and runs eager/sdpa without it; fused names the extra."""
    script = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, deberta_xf\n"
        f"m = deberta_xf.DebertaV2Model.from_pretrained({DEFAULT_CHECKPOINT!r}, attn_implementation='sdpa')\n"
        "m(input_ids=torch.ones(1, 5, dtype=torch.long))\n"
        "m.config._attn_implementation = 'fused'\n"
        "import os; os.environ['TRITON_INTERPRET'] = '1'\n"
        "try:\n"
        "    m(input_ids=torch.ones(1, 5, dtype=torch.long))\n"
        "except ImportError as err:\n"
        "    print('ERROR', err)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "ERROR attn_implementation='fused' needs Triton" in done.stdout
    assert "pip install 'deberta-xf[triton]'" in done.stdout


@pytest.mark.slow
def test_sdpa_compiles_as_one_graph():
    case = load_case("v3", "sequence-classification")
    model = MODEL_CLASSES["sequence-classification"].from_pretrained(case.directory, attn_implementation="sdpa")
    torch._dynamo.reset()
    try:
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        inputs = {k: torch.as_tensor(v) for k, v in case.model_inputs.items()}
        with torch.no_grad():
            want, got = model(**inputs).logits, compiled(**inputs).logits
    finally:
        torch._dynamo.reset()
    assert float((got - want).abs().max()) <= FP32_THRESHOLDS["logits"] / 10


# ----------------------------------------------------------------------------------------------------------------
# deberta-xf parity --attn-implementation
@pytest.mark.slow
def test_parity_cli_runs_the_requested_implementation(tmp_path):
    """torch and flax both run sdpa (flax when it is installed) and agree within the fp32 tolerances; the JSON and
    Markdown reports say which implementation each framework ran."""
    from deberta_xf.cli import main

    frameworks = "torch,flax" if importlib.util.find_spec("flax") else "torch"
    report, markdown = tmp_path / "report.json", tmp_path / "report.md"
    args = ["parity", DEFAULT_CHECKPOINT, "--frameworks", frameworks, "--attn-implementation", "sdpa",
            "--json", str(report), "--markdown", str(markdown), "--quiet"]
    if frameworks == "torch":
        args += ["--compare-to", os.path.join(os.path.dirname(DEFAULT_CHECKPOINT), "reference", "tiny-deberta-v3.npz")]
    assert main(args) == 0
    data = json.loads(report.read_text())
    ran = {name: fw["attn_implementation"] for name, fw in data["frameworks"].items() if fw["status"] == "ran"}
    assert ran == {name: "sdpa" for name in frameworks.split(",")}
    assert data["passed"] and data["comparisons"] and all(p["passed"] for p in data["comparisons"])
    assert all(p["max_abs"] < FP32_THRESHOLDS["hidden"] for p in data["comparisons"])
    assert "| torch@cpu | ran | cpu | attention sdpa |" in markdown.read_text()


def test_parity_cli_rejects_an_unknown_implementation(capsys):
    from deberta_xf.cli import main

    assert main(["parity", DEFAULT_CHECKPOINT, "--attn-implementation", "flash"]) == 2
    assert "argument --attn-implementation: invalid choice: 'flash'" in capsys.readouterr().err
