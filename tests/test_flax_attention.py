"""Flax attention implementations: "sdpa" (jax.nn.dot_product_attention with the relative terms and the mask as one
bias) and "fused" (the Pallas kernel of deberta_xf.flax.fused_attention, interpret mode on CPU) against "eager"
and against the committed reference outputs.

Bounds, as in the other tests (tests/reference_cases.py): KERNEL_FRACTION of the fp32 tolerances (DESIGN §5,
docs/tolerances.md) between two live runs through different kernels (an implementation vs eager),
FIXTURE_FRACTION against the committed reference outputs; gradients against FP32_GRAD_THRESHOLDS the same way; bf16
against the measured bf16 / fp16 thresholds. Never this machine's numbers.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest

jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")
pytest.importorskip("jax.experimental.pallas")

import jax.numpy as jnp  # noqa: E402
from jax.extend import core as jax_core  # noqa: E402

import deberta_xf  # noqa: E402
from deberta_xf.compare import (DTYPE_THRESHOLDS, FP32_GRAD_THRESHOLDS, FP32_THRESHOLDS, GRAD_PREFIX,  # noqa: E402
                                compare_outputs, flatten_outputs, threshold)
from deberta_xf.configuration import DebertaV2Config  # noqa: E402
from deberta_xf.errors import ConfigError  # noqa: E402
from deberta_xf.flax import fused_attention as fused  # noqa: E402
from deberta_xf.flax import modeling_flax_deberta_v2 as flax_deberta  # noqa: E402
from deberta_xf.flax.modeling_flax_deberta_v2 import MODEL_CLASSES  # noqa: E402
from deberta_xf.frameworks import REGISTRY  # noqa: E402
from reference_cases import (ALL_CASES, FIXTURE_FRACTION, KERNEL_FRACTION, REFERENCE, assert_matches,  # noqa: E402
                             load_any_case, load_case)

IMPLEMENTATIONS = ("sdpa", "fused")
# One head per variant in the quick suite (log buckets, share_att_key off with clipped positions, c2p only with an
# embedding projection, no relative attention, the conv layer); the other heads (and the lm_predictions and default
# checkpoints) run the same attention and are marked slow.
QUICK_CASES = {("v3", "masked-lm"), ("abs-noshare", "question-answering"), ("emb-proj", "token-classification"),
               ("no-rel", "base"), ("v2-conv", "sequence-classification")}


@pytest.fixture(scope="module", autouse=True)
def pinned_precision():
    """Full-fp32 matmuls, as the parity harness and the other Flax tests run."""
    with REGISTRY["flax"].precision():
        yield


def run(model, inputs, **extra) -> dict[str, np.ndarray]:
    return flatten_outputs(model(**inputs, output_hidden_states=True, **extra))


@functools.lru_cache(maxsize=None)
def eager_outputs(variant: str, task: str) -> dict[str, np.ndarray]:
    case = load_any_case(variant, task)
    return run(MODEL_CLASSES[task].from_pretrained(case.directory), case.model_inputs)


def implementations_used(model) -> set[str]:
    return {m.attn_implementation for _, m in nnx.iter_modules(model)
            if isinstance(m, flax_deberta.FlaxDisentangledSelfAttention)}


def case_params():
    params = []
    for variant, task in ALL_CASES:
        for implementation in IMPLEMENTATIONS:
            marks = [] if (variant, task) in QUICK_CASES else [pytest.mark.slow]
            params.append(pytest.param(variant, task, implementation, marks=marks,
                                       id=f"{variant}/{task}/{implementation}"))
    return params


# ----------------------------------------------------------------------------------------------------------------
# Every fixture case and head
@pytest.mark.parametrize(("variant", "task", "implementation"), case_params())
def test_case_matches_eager_and_reference(variant, task, implementation):
    case = load_any_case(variant, task)
    model = MODEL_CLASSES[task].from_pretrained(case.directory, attn_implementation=implementation)
    assert implementations_used(model) == {implementation}
    assert model.config._attn_implementation == implementation
    out = run(model, case.model_inputs)
    eager = eager_outputs(variant, task)
    assert set(out) == set(eager)
    assert_matches(eager, out, task, case.attention_mask, f"{implementation} vs eager", scale=KERNEL_FRACTION)
    reference = {k: v for k, v in case.pt.items() if k in out}
    assert any(k.startswith("hidden_states.") for k in reference)
    assert_matches(reference, out, task, case.attention_mask, f"{implementation} vs reference",
                   scale=FIXTURE_FRACTION)


# ----------------------------------------------------------------------------------------------------------------
# Lengths and padding the fixtures do not have: odd lengths, several tiles, a fully padded row, lengths beyond the
# 2 * span relative rows (v3: 32 rows, abs-noshare: 16, emb-proj: 24) and beyond max_position_embeddings (64; v3
# has no absolute positions). No reference outputs here: against eager.
LENGTHS = [("v3", 70), ("abs-noshare", 37), pytest.param("emb-proj", 45, marks=pytest.mark.slow),
           pytest.param("no-rel", 21, marks=pytest.mark.slow)]


def padded_inputs(vocab_size: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Three rows: full, padded after 2/3 of the length, fully padded."""
    rng = np.random.default_rng(seed)
    input_ids = rng.integers(3, vocab_size, size=(3, length)).astype(np.int32)
    attention_mask = np.ones((3, length), np.int32)
    attention_mask[1, 2 * length // 3:] = 0
    attention_mask[2] = 0
    input_ids[attention_mask == 0] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@pytest.mark.parametrize(("variant", "length"), LENGTHS, ids=["v3-L70", "abs-noshare-L37", "emb-proj-L45",
                                                              "no-rel-L21"])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_lengths_and_padding_match_eager(variant, length, implementation, monkeypatch):
    monkeypatch.setattr(fused, "DEFAULT_BLOCK", 16)  # several query and key tiles, the last one partly past L
    directory = load_case(variant, "base").directory
    eager_model = MODEL_CLASSES["base"].from_pretrained(directory)
    inputs = padded_inputs(eager_model.config.vocab_size, length)
    eager = run(eager_model, inputs)
    out = run(MODEL_CLASSES["base"].from_pretrained(directory, attn_implementation=implementation), inputs)
    assert_matches(eager, out, "base", inputs["attention_mask"], f"{implementation} L={length}",
                   scale=KERNEL_FRACTION)
    # every position, the padding ones and the fully padded row included (its fully masked attention rows are
    # uniform over the keys in every implementation, as the reference's finfo.min fill makes them)
    bound = KERNEL_FRACTION * FP32_THRESHOLDS["hidden"]
    for name in eager:
        assert np.abs(out[name] - eager[name]).max() <= bound, name


@pytest.mark.parametrize(("terms", "share_att_key"), [("p2c", False), ("c2p", False), ("c2p|p2c", True)])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_term_subsets_match_eager(terms, share_att_key, implementation):
    """Random configs for the subsets the fixtures lack (p2c alone; c2p alone with separate projections), with log
    buckets and a max_relative_positions below the length; the same seed gives the same weights."""
    config = DebertaV2Config(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                             intermediate_size=37, max_position_embeddings=64, relative_attention=True,
                             pos_att_type=terms, share_att_key=share_att_key, position_buckets=8,
                             max_relative_positions=20, position_biased_input=False)
    inputs = padded_inputs(config.vocab_size, 29, seed=1)
    eager = run(MODEL_CLASSES["base"].from_config(config, seed=0), inputs)
    model = MODEL_CLASSES["base"].from_config(config, seed=0, attn_implementation=implementation)
    assert implementations_used(model) == {implementation}
    out = run(model, inputs)
    assert_matches(eager, out, "base", inputs["attention_mask"], f"{implementation} {terms}", scale=KERNEL_FRACTION)


def test_three_dimensional_mask_matches_eager():
    """A [B, L, L] mask that is no outer product (a query that sees only itself and a fully masked query)."""
    case = load_case("v3", "base")
    length = case.model_inputs["input_ids"].shape[1]
    mask = np.repeat(np.tril(np.ones((length, length), np.int32))[None], len(case.model_inputs["input_ids"]), 0)
    mask[:, 3] = 0
    inputs = {**case.model_inputs, "attention_mask": mask}
    eager = run(MODEL_CLASSES["base"].from_pretrained(case.directory), inputs)
    for implementation in IMPLEMENTATIONS:
        out = run(MODEL_CLASSES["base"].from_pretrained(case.directory, attn_implementation=implementation), inputs)
        for name in eager:
            assert np.abs(out[name] - eager[name]).max() <= KERNEL_FRACTION * FP32_THRESHOLDS["hidden"], name


# ----------------------------------------------------------------------------------------------------------------
# What the fused path is: the kernel once per layer, no [L, L] tensor outside it (not even the mask)
def _walk(jaxpr, seen: list, square: list, length: int):
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "pallas_call":
            seen.append(eqn)
            continue
        for var in eqn.outvars:
            shape, dtype = getattr(var.aval, "shape", ()), getattr(var.aval, "dtype", None)
            if len(shape) >= 2 and shape[-2:] == (length, length) and dtype is not None:
                square.append((eqn.primitive.name, shape))
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(sub, jax_core.ClosedJaxpr):
                    _walk(sub.jaxpr, seen, square, length)
                elif isinstance(sub, jax_core.Jaxpr):
                    _walk(sub, seen, square, length)


@pytest.mark.parametrize("implementation", ["eager", "fused"])
def test_fused_runs_the_kernel_without_square_tensors(implementation):
    case = load_case("abs-noshare", "base")
    model = MODEL_CLASSES["base"].from_pretrained(case.directory, attn_implementation=implementation)
    inputs = padded_inputs(model.config.vocab_size, 37)
    graphdef, state = nnx.split(model)
    jaxpr = jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(**x).last_hidden_state)(state, inputs)
    kernels, square = [], []
    _walk(jaxpr.jaxpr, kernels, square, 37)
    if implementation == "fused":
        assert len(kernels) == model.config.num_hidden_layers
        assert square == []
    else:  # the check can fail: eager has its [B, h, L, L] scores
        assert kernels == [] and square


def test_output_attentions_falls_back_to_eager():
    case = load_case("v3", "base")
    eager = run(MODEL_CLASSES["base"].from_pretrained(case.directory), case.model_inputs, output_attentions=True)
    for implementation in IMPLEMENTATIONS:
        model = MODEL_CLASSES["base"].from_pretrained(case.directory, attn_implementation=implementation)
        out = run(model, case.model_inputs, output_attentions=True)
        assert set(out) == set(eager) and any(k.startswith("attentions.") for k in out)
        for name in eager:
            np.testing.assert_array_equal(out[name], eager[name], err_msg=name)  # the same eager computation


# ----------------------------------------------------------------------------------------------------------------
# Training: the fused forward's custom_vjp (backward through the materialising reference formulation)
def reference_gradients(variant: str, task: str):
    with np.load(os.path.join(REFERENCE, variant, task, "gradients.npz")) as data:
        labels = {k[len("labels."):]: data[k] for k in data.files if k.startswith("labels.")}
        grads = {k: data[k] for k in data.files if k != "loss" and not k.startswith("labels.")}
        return float(data["loss"]), labels, grads


GRADIENT_CASES = [("v3", "sequence-classification"), ("abs-noshare", "token-classification")]


@pytest.mark.slow
@pytest.mark.parametrize(("variant", "task"), GRADIENT_CASES)
def test_fused_gradients_match_eager_and_reference(variant, task):
    case = load_case(variant, task)
    ref_loss, labels, ref_grads = reference_gradients(variant, task)
    runner = REGISTRY["flax"]
    eager_loss, eager = runner.loss_and_gradients(MODEL_CLASSES[task].from_pretrained(case.directory),
                                                  case.model_inputs, labels)
    model = MODEL_CLASSES[task].from_pretrained(case.directory, attn_implementation="fused")
    loss, grads = runner.loss_and_gradients(model, case.model_inputs, labels)
    assert set(grads) == set(eager) == set(ref_grads)
    assert abs(loss - eager_loss) <= KERNEL_FRACTION * FP32_THRESHOLDS["logits"]
    assert abs(loss - ref_loss) <= FIXTURE_FRACTION * FP32_THRESHOLDS["logits"]
    bound = threshold(GRAD_PREFIX + "x", task, FP32_GRAD_THRESHOLDS)
    for name in grads:
        assert np.abs(grads[name] - eager[name]).max() <= KERNEL_FRACTION * bound, name
        assert np.abs(grads[name] - ref_grads[name]).max() <= FIXTURE_FRACTION * bound, name
    # the relative-position parameters do get gradients through the kernel's position projections
    assert np.abs(grads["deberta.encoder.rel_embeddings.weight"]).max() > 0


# ----------------------------------------------------------------------------------------------------------------
def test_fused_gradients_match_eager_on_a_small_config():
    """The quick gradient check, under nnx.jit: one layer, both terms with separate position projections, padding;
    weights drawn wide enough (initializer_range 0.4) that the position terms move the loss."""
    config = DebertaV2Config(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=24, initializer_range=0.4, max_position_embeddings=32,
                             relative_attention=True, pos_att_type="c2p|p2c", share_att_key=False,
                             position_buckets=8, max_relative_positions=12, position_biased_input=False)
    inputs = padded_inputs(config.vocab_size, 13, seed=2)
    target = jnp.asarray(np.random.default_rng(3).normal(size=(3, 13, 16)), jnp.float32)
    mask = jnp.asarray(inputs["attention_mask"], jnp.float32)[..., None]

    @nnx.jit
    def gradients(model):
        def objective(m):
            return jnp.sum(m(**inputs).last_hidden_state * target * mask) / jnp.sum(mask)
        return nnx.to_flat_state(nnx.grad(objective)(model))

    eager = dict(gradients(MODEL_CLASSES["base"].from_config(config, seed=0)))
    grads = dict(gradients(MODEL_CLASSES["base"].from_config(config, seed=0, attn_implementation="fused")))
    assert set(grads) == set(eager)
    bound = KERNEL_FRACTION * FP32_GRAD_THRESHOLDS["grad"]
    for path in grads:
        assert np.abs(np.asarray(grads[path][...]) - np.asarray(eager[path][...])).max() <= bound, path
    attention = ("encoder", "layer", 0, "attention", "self")
    for path in (attention + ("pos_key_proj", "kernel"), attention + ("pos_query_proj", "kernel"),
                 ("encoder", "rel_embeddings", "embedding")):
        assert np.abs(np.asarray(grads[path][...])).max() > 1e-2, path  # the position terms are differentiated


# ----------------------------------------------------------------------------------------------------------------
# bfloat16 and nnx.jit
@pytest.mark.parametrize("dtype", ["bfloat16", pytest.param("float16", marks=pytest.mark.slow)])
@pytest.mark.parametrize("implementation", ["fused", pytest.param("sdpa", marks=pytest.mark.slow)])
def test_half_precision_forward(implementation, dtype):
    case = load_case("v3", "masked-lm")
    eager = run(MODEL_CLASSES["masked-lm"].from_pretrained(case.directory, dtype=dtype), case.model_inputs)
    model = MODEL_CLASSES["masked-lm"].from_pretrained(case.directory, dtype=dtype,
                                                        attn_implementation=implementation)
    out = run(model, case.model_inputs)
    assert out["logits"].dtype == np.float32 and jnp.dtype(model(**case.model_inputs).logits.dtype) == jnp.dtype(dtype)
    reference = {k: v for k, v in case.pt.items() if k in out}
    for label, expected in ((f"vs eager {dtype}", eager), ("vs fp32 reference", reference)):
        results = compare_outputs(expected, out, "masked-lm", case.attention_mask, DTYPE_THRESHOLDS[dtype])
        failed = [f"{r.name}: {r.max_abs:.3e} > {r.atol:.1e}" for r in results if not r.passed]
        assert results and not failed, f"{implementation} {dtype} {label}: {failed}"


@pytest.mark.parametrize("implementation", ["fused", pytest.param("sdpa", marks=pytest.mark.slow)])
def test_jit_traces_once_per_shape(implementation, monkeypatch):
    case = load_case("emb-proj", "sequence-classification")
    model = MODEL_CLASSES[case.task].from_pretrained(case.directory, attn_implementation=implementation)
    traces = []
    if implementation == "fused":
        original = flax_deberta.fused_attention
        monkeypatch.setattr(flax_deberta, "fused_attention", lambda *a, **k: traces.append(1) or original(*a, **k))
    else:
        original = jax.nn.dot_product_attention
        monkeypatch.setattr(jax.nn, "dot_product_attention", lambda *a, **k: traces.append(1) or original(*a, **k))
    layers = model.config.num_hidden_layers
    jitted = flatten_outputs(model.jit_call(**case.model_inputs, output_hidden_states=True))
    model.jit_call(**case.model_inputs, output_hidden_states=True)
    model.jit_call(**{k: jnp.asarray(v) for k, v in case.model_inputs.items()}, output_hidden_states=True)
    assert len(traces) == layers  # one trace: the Python attention ran once per layer
    shorter = {k: v[:, :-5] for k, v in case.model_inputs.items()}
    model.jit_call(**shorter, output_hidden_states=True)
    model.jit_call(**shorter, output_hidden_states=True)
    assert len(traces) == 2 * layers
    assert_matches(eager_outputs(case.variant, case.task), jitted, case.task, case.attention_mask,
                   f"{implementation} jit vs eager", scale=KERNEL_FRACTION)


# ----------------------------------------------------------------------------------------------------------------
# Plumbing
def test_attn_implementation_plumbing():
    case = load_case("no-rel", "base")
    config = DebertaV2Config.from_json_file(os.path.join(case.directory, "config.json"))
    model = MODEL_CLASSES["base"].from_pretrained(case.directory, config=config, attn_implementation="sdpa")
    assert implementations_used(model) == {"sdpa"} and model.config._attn_implementation == "sdpa"
    assert config._attn_implementation == "eager"  # the caller's config is not changed
    assert implementations_used(MODEL_CLASSES["base"].from_pretrained(case.directory)) == {"eager"}
    # read from the config when not given
    chosen = DebertaV2Config.from_dict({**config.to_dict(), "attn_implementation": "fused"})
    assert implementations_used(MODEL_CLASSES["base"].from_config(chosen, seed=0)) == {"fused"}
    assert implementations_used(MODEL_CLASSES["base"](chosen, rngs=nnx.Rngs(0))) == {"fused"}
    with pytest.raises(ConfigError, match="flash"):
        MODEL_CLASSES["base"].from_pretrained(case.directory, attn_implementation="flash")
    # through the factory and the registry (what the parity harness's --attn-implementation calls)
    assert implementations_used(deberta_xf.create_model("flax", checkpoint=case.directory,
                                                        attn_implementation="fused")) == {"fused"}
    assert implementations_used(deberta_xf.create_model("flax", config=config, attn_implementation="sdpa")) == {"sdpa"}
    assert implementations_used(REGISTRY["flax"].load(case.directory, "base", attn_implementation="fused")) == {"fused"}


def test_kernel_tiles_match_reference_formulation():
    """The kernel alone, one tile and tiles of 8 (the last one past the length), against the same
    attention with every [L, L] score materialised; an arbitrary mask with a fully masked row."""
    rng = np.random.default_rng(0)
    batch, heads, length, size, rows = 2, 3, 21, 8, 9
    q, k, v = (jnp.asarray(rng.normal(size=(batch, heads, length, size)), jnp.float32) for _ in range(3))
    c2p, p2c = (jnp.asarray(rng.normal(size=(batch, heads, length, rows)), jnp.float32) for _ in range(2))
    c2p_table = jnp.asarray(np.clip(np.arange(-6, 7) + 4, 0, rows - 1), jnp.int32)
    p2c_table = jnp.asarray(np.clip(4 - np.arange(-6, 7), 0, rows - 1), jnp.int32)
    mask = jnp.asarray(rng.random((batch, length, length)) > 0.3).at[1, 4].set(False)
    expected = fused.reference_attention(q, k, v, mask, c2p, c2p_table, p2c, p2c_table)
    # the reference formulation itself: distance i - j -> row through the tables, clamped at +-6
    i = 5
    scores = (q[0, 0, i] @ k[0, 0].T + c2p[0, 0, i, c2p_table[np.clip(i - np.arange(length), -6, 6) + 6]]
              + p2c[0, 0, np.arange(length), p2c_table[np.clip(np.arange(length) - i, -6, 6) + 6]])
    scores = jnp.where(mask[0, i], scores, jnp.finfo(jnp.float32).min)
    bound = KERNEL_FRACTION * FP32_THRESHOLDS["hidden"]
    np.testing.assert_allclose(expected[0, 0, i], jax.nn.softmax(scores) @ v[0, 0], atol=bound)
    for block in (None, 8):
        out = fused.fused_attention(q, k, v, mask, c2p, c2p_table, p2c, p2c_table, block=block)
        assert np.abs(np.asarray(out) - np.asarray(expected)).max() <= bound, block


@pytest.mark.parametrize("length, rows", [(8, 15), (8, 5), (13, 25), (40, 9), (64, 64), (6, 1)])
def test_relative_scores_both_ways_are_the_per_pair_dot_products(length, rows):
    """relative_scores picks by shape between gathering the rows by distance before scoring (2L <= 1.5 R) and
    scoring the R rows before gathering the columns (long sequences); both give states[a] . pos[row(a - b)] for
    every pair (a, b)."""
    rng = np.random.default_rng(length * 100 + rows)
    states = rng.standard_normal((2, 3, length, 4)).astype(np.float32)
    pos = rng.standard_normal((3, rows, 4)).astype(np.float32)
    by_distance = rng.integers(0, rows, size=2 * length).astype(np.int32)  # any row for each distance L-1..-(L-1)
    got = np.asarray(flax_deberta.relative_scores(jnp.asarray(states), jnp.asarray(pos), jnp.asarray(by_distance)))
    a, b = np.meshgrid(np.arange(length), np.arange(length), indexing="ij")
    rows_of_pairs = by_distance[length - 1 - (a - b)]  # [L, L]
    want = np.einsum("zhad,hjd->zhaj", states.astype(np.float64), pos.astype(np.float64))
    want = np.take_along_axis(want, np.broadcast_to(rows_of_pairs, want.shape[:2] + (length, length)), axis=-1)
    assert got.shape == (2, 3, length, length)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
