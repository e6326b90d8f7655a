"""Flax-specific checks: jit and NNX state, dropout streams, compute dtype, configurations the fixtures do not
cover (against our PyTorch port), the loss functions, abstract building, and flax_model.msgpack as Flax itself
writes and reads it. The contract every framework keeps (loading every weights format, round trips, every head
against the reference fixtures, masks, inputs, losses, bad checkpoints) is tests/test_contract.py."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")

import jax.numpy as jnp  # noqa: E402

import deberta_xf  # noqa: E402
from deberta_xf.formats import open_weights  # noqa: E402
from deberta_xf.errors import CheckpointError  # noqa: E402
from deberta_xf.flax import modeling_flax_deberta_v2 as flax_deberta  # noqa: E402
from deberta_xf.flax.modeling_flax_deberta_v2 import MODEL_CLASSES  # noqa: E402
from deberta_xf.schema import expected_shapes  # noqa: E402
from deberta_xf.frameworks import REGISTRY  # noqa: E402
from deberta_xf.compare import flatten_outputs, threshold  # noqa: E402
from reference_cases import FIXTURE_FRACTION, KERNEL_FRACTION, assert_matches, load_case  # noqa: E402

# Our Flax against our PyTorch port, both live on this machine, on random configurations: fp32 rounding differs
# (XLA vs ATen kernels), so the outputs are not bit-equal; measured ~2e-6 on hidden states and pooled/token logits.
# PORT_FRACTION is the fraction of the DESIGN §5 tolerances enforced there.
PORT_FRACTION = 0.25


@pytest.fixture(scope="module", autouse=True)
def pinned_precision():
    """The registry's full-fp32 matmul pin, as in the contract suite and the parity harness: full precision on any
    device, and (the pin being part of JAX's compilation keys) the kernels the contract suite compiled."""
    with REGISTRY["flax"].precision():
        yield


def run(model, inputs, jit=False, **extra):
    call = model.jit_call if jit else model
    return flatten_outputs(call(**inputs, output_hidden_states=True, output_attentions=True, **extra))


def in_eval_mode(model) -> bool:
    dropouts = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.Dropout)]
    return bool(dropouts) and all(m.deterministic for m in dropouts)


def saved_as_msgpack(case, tmp_path) -> str:
    """The case's checkpoint written by our Flax model as config.json + flax_model.msgpack."""
    model = MODEL_CLASSES[case.task].from_pretrained(case.directory)
    model.save_pretrained(tmp_path / "flax")
    return str(tmp_path / "flax")


# ----------------------------------------------------------------------------------------------------------------
# jit
JIT_CASES = [("v3", "masked-lm"), ("v2-conv", "sequence-classification"), ("abs-noshare", "multiple-choice")]


def count_traces(monkeypatch) -> list:
    """Every trace of the forward runs the encoder's Python code once; count those runs."""
    traces = []
    original = flax_deberta.FlaxDebertaV2Encoder.__call__

    def counted(self, hidden_states, *args, **kwargs):
        traces.append(tuple(hidden_states.shape))
        return original(self, hidden_states, *args, **kwargs)

    monkeypatch.setattr(flax_deberta.FlaxDebertaV2Encoder, "__call__", counted)
    return traces


@pytest.mark.parametrize(("variant", "task"), JIT_CASES, ids=[f"{v}/{t}" for v, t in JIT_CASES])
def test_jit_matches_eager_and_compiles_once_per_shape(variant, task, monkeypatch):
    case = load_case(variant, task)
    model = MODEL_CLASSES[task].from_pretrained(case.directory)
    eager = run(model, case.inputs)
    traces = count_traces(monkeypatch)
    jitted = run(model, case.inputs, jit=True)
    assert len(traces) == 1
    assert set(jitted) == set(eager)
    # jit (fused XLA kernels) vs eager (one kernel per op): KERNEL_FRACTION, padding positions included
    assert_matches(eager, jitted, task, None, f"{variant}/{task} jit vs eager", scale=KERNEL_FRACTION)
    assert_matches(case.pt, jitted, task, case.attention_mask, f"{variant}/{task} jit", scale=FIXTURE_FRACTION)

    # the same shapes again, as numpy or as jax arrays: no new trace
    run(model, case.inputs, jit=True)
    run(model, {k: jnp.asarray(v) for k, v in case.inputs.items()}, jit=True)
    assert len(traces) == 1
    # a shorter sequence: exactly one more trace, then cached too
    shorter = {k: (v[..., :-3] if v.ndim >= 2 else v) for k, v in case.inputs.items()}
    run(model, shorter, jit=True)
    run(model, shorter, jit=True)
    run(model, case.inputs, jit=True)
    assert len(traces) == 2


def test_user_jit_over_split_state():
    """Plain jax.jit over (graphdef, state) works too, and returns a ModelOutput."""
    case = load_case("emb-proj", "question-answering")
    model = deberta_xf.FlaxDebertaV2ForQuestionAnswering.from_pretrained(case.directory)
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, inputs):
        return nnx.merge(graphdef, state)(**inputs, output_hidden_states=True)

    out = forward(state, case.inputs)
    assert isinstance(out, deberta_xf.ModelOutput)
    assert set(out) == {"loss", "start_logits", "end_logits", "hidden_states"}
    assert_matches(case.pt, flatten_outputs(out), case.task, case.attention_mask, scale=FIXTURE_FRACTION)


def test_training_mode_enables_dropout():
    case = load_case("v3", "base")
    model = deberta_xf.FlaxDebertaV2Model.from_pretrained(case.directory)
    assert in_eval_mode(model)  # from_pretrained and create_model return eval-mode models
    assert in_eval_mode(deberta_xf.create_model("flax", "masked-lm", checkpoint=load_case("v3", "masked-lm").directory))
    model.train()
    a = np.asarray(model(**case.model_inputs).last_hidden_state)
    b = np.asarray(model(**case.model_inputs).last_hidden_state)
    assert np.abs(a - b).max() > 1e-3  # the dropout stream advances between calls
    c = np.asarray(model.jit_call(**case.model_inputs).last_hidden_state)
    d = np.asarray(model.jit_call(**case.model_inputs).last_hidden_state)
    assert np.abs(c - d).max() > 1e-3 and np.abs(c - b).max() > 1e-3  # also through jit_call
    model.eval()
    assert in_eval_mode(model)
    np.testing.assert_array_equal(np.asarray(model(**case.model_inputs).last_hidden_state),
                                  np.asarray(model(**case.model_inputs).last_hidden_state))


def test_jit_call_carries_the_dropout_stream_like_an_eager_call():
    """jit_call returns the model's non-parameter state (the dropout streams' counters) and writes it back: a
    compiled training call draws the masks an eager call would, and the next call continues the stream."""
    case = load_case("v3", "base")
    eager = deberta_xf.FlaxDebertaV2Model.from_pretrained(case.directory, seed=3)
    compiled = deberta_xf.FlaxDebertaV2Model.from_pretrained(case.directory, seed=3)
    eager.train()
    compiled.train()
    first, second = (np.asarray(eager(**case.model_inputs).last_hidden_state) for _ in range(2))
    jitted_first = np.asarray(compiled.jit_call(**case.model_inputs).last_hidden_state)
    then_eager = np.asarray(compiled(**case.model_inputs).last_hidden_state)
    assert np.abs(first - second).max() > 1e-3  # two different masks
    bound = KERNEL_FRACTION * threshold("last_hidden_state", "base")  # the same masks: only XLA's fusions differ
    np.testing.assert_allclose(jitted_first, first, rtol=0, atol=bound)
    np.testing.assert_allclose(then_eager, second, rtol=0, atol=bound)
    params_before = {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(compiled, nnx.Param))}
    compiled.eval()
    compiled.jit_call(**case.model_inputs)
    params_after = {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(compiled, nnx.Param))}
    assert params_after.keys() == params_before.keys()
    assert all(np.array_equal(params_after[k], params_before[k]) for k in params_before)  # weights untouched


# Config options the fixtures do not cover, against our PyTorch port (bit-exact with the reference on every fixture)
EXTRA_CONFIGS = {
    "p2c-only-noshare-log-buckets": dict(relative_attention=True, pos_att_type="p2c", share_att_key=False,
                                         position_buckets=8, hidden_act="gelu_pytorch_tanh", type_vocab_size=3),
    "c2p-only-noshare-conv-groups": dict(relative_attention=True, pos_att_type="c2p", share_att_key=False,
                                         max_relative_positions=6, position_biased_input=False,
                                         norm_rel_ebd="layer_norm", conv_kernel_size=5, conv_groups=4,
                                         conv_act="gelu_new", hidden_act="relu", pooler_hidden_act="tanh"),
}


@pytest.mark.parametrize("fields", EXTRA_CONFIGS.values(), ids=EXTRA_CONFIGS.keys())
def test_other_configs_match_the_pytorch_port(fields):
    torch = pytest.importorskip("torch")
    from deberta_xf.torch.modeling_deberta_v2 import DebertaV2ForSequenceClassification

    config = deberta_xf.DebertaV2Config(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=48, max_position_embeddings=64, num_labels=3, **fields)
    rng = np.random.default_rng(0)
    # weights 10x the init scale, so attention is far from uniform and every term matters
    arrays = {name: (1.0 + 0.2 * rng.normal(size=shape) if name.endswith("LayerNorm.weight")
                     else 0.2 * rng.normal(size=shape)).astype(np.float32)
              for name, shape in expected_shapes(config, "sequence-classification").items()}
    flax_model = deberta_xf.FlaxDebertaV2ForSequenceClassification.from_config(config, seed=0)
    flax_model.load_canonical(arrays)
    torch_model = DebertaV2ForSequenceClassification(config).eval()
    torch_model.load_canonical(arrays)
    seq = 40  # beyond the span: clipped and (with buckets) log-bucketed relative positions
    mask = np.ones((2, seq), np.int64)
    mask[1, 30:] = 0
    inputs = {"input_ids": rng.integers(1, 97, (2, seq)), "attention_mask": mask,
              "token_type_ids": rng.integers(0, 3, (2, seq)), "labels": np.array([2, 0])}
    with torch.no_grad():
        want = flatten_outputs(torch_model(**inputs, output_hidden_states=True, output_attentions=True))
    got = run(flax_model, inputs)
    assert got["attentions.1"].max() > 10 / seq  # far from uniform
    assert_matches(want, got, "sequence-classification", mask, scale=PORT_FRACTION)


# ----------------------------------------------------------------------------------------------------------------
# Inputs
def test_jax_arrays_as_inputs():
    case = load_case("abs-noshare", "base")
    model = deberta_xf.FlaxDebertaV2Model.from_pretrained(case.directory)
    ref = np.asarray(model(**case.model_inputs).last_hidden_state)
    as_jax = model(**{k: jnp.asarray(v) for k, v in case.model_inputs.items()}).last_hidden_state
    assert isinstance(as_jax, jax.Array)
    np.testing.assert_array_equal(np.asarray(as_jax), ref)
    embeds = model.embeddings.word_embeddings(jnp.asarray(case.inputs["input_ids"]))  # the module's own lookup
    via_embeds = model(inputs_embeds=embeds, attention_mask=case.attention_mask,
                       token_type_ids=case.inputs["token_type_ids"]).last_hidden_state
    np.testing.assert_array_equal(np.asarray(via_embeds), ref)


# ----------------------------------------------------------------------------------------------------------------
# Losses: the loss functions follow our PyTorch port's (itself bit-exact with the reference)
def test_losses_follow_the_pytorch_rules():
    torch = pytest.importorskip("torch")
    from deberta_xf.torch import modeling_deberta_v2 as torch_deberta

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 3)).astype(np.float32)
    hard = np.array([2, -1, 0, -7, 1])
    cases = [
        (dict(num_labels=3), hard),                                    # negative labels ignored
        (dict(num_labels=3), np.array([-1, -1, -1, -1, -1])),          # none left: 0
        (dict(num_labels=3), hard[:, None]),                           # [N, 1] labels
        (dict(num_labels=3), rng.dirichlet(np.ones(3), 5).astype(np.float32)),  # soft labels
        (dict(num_labels=3, problem_type="single_label_classification"), np.array([2, -100, 0, 1, 1])),
        (dict(num_labels=3, problem_type="multi_label_classification"),
         rng.integers(0, 2, (5, 3)).astype(np.float32)),
        (dict(num_labels=3, problem_type="regression"), rng.normal(size=(5, 3)).astype(np.float32)),
    ]
    for fields, labels in cases:
        config = deberta_xf.DebertaV2Config(hidden_size=32, num_attention_heads=4, **fields)
        got = float(flax_deberta.sequence_classification_loss(config.num_labels, config.problem_type,
                                                              jnp.asarray(logits), jnp.asarray(labels)))
        want = float(torch_deberta.sequence_classification_loss(config, torch.from_numpy(logits),
                                                                torch.from_numpy(labels)))
        assert got == pytest.approx(want, abs=1e-6), (fields, labels)
    regression = deberta_xf.DebertaV2Config(hidden_size=32, num_attention_heads=4, num_labels=1)
    for problem_type in (None, "regression"):
        regression.problem_type = problem_type
        target = rng.normal(size=(5,)).astype(np.float32)
        got = float(flax_deberta.sequence_classification_loss(1, problem_type, jnp.asarray(logits[:, :1]),
                                                              jnp.asarray(target)))
        want = float(torch_deberta.sequence_classification_loss(regression, torch.from_numpy(logits[:, :1]),
                                                                torch.from_numpy(target)))
        assert got == pytest.approx(want, abs=1e-6)
    # cross entropy with ignore_index: the mean over kept rows, NaN when none is kept (as torch)
    labels = np.array([1, -100, 2, 0, -100])
    want = float(torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)))
    assert float(flax_deberta.cross_entropy(jnp.asarray(logits), jnp.asarray(labels))) == pytest.approx(want, 1e-6)
    assert np.isnan(float(flax_deberta.cross_entropy(jnp.asarray(logits), jnp.full(5, -100))))


# ----------------------------------------------------------------------------------------------------------------
# dtype
def _param_dtypes(model) -> set:
    return {v.dtype for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_dtype_is_the_parameter_dtype_in_every_spelling():
    """``dtype`` is the parameters' dtype (DESIGN §1), whatever its spelling; ``.dtype`` says which."""
    import importlib

    others = [importlib.import_module(module) for name, module in (("torch", "torch"), ("tf", "tensorflow"))
              if REGISTRY[name].available() is None]
    case = load_case("v3", "sequence-classification")
    cls = deberta_xf.FlaxDebertaV2ForSequenceClassification
    for spelling in ["bfloat16", "bf16", jnp.bfloat16] + [m.bfloat16 for m in others]:  # torch / TF dtype objects
        model = cls.from_pretrained(case.directory, dtype=spelling)
        assert model.dtype == jnp.bfloat16 and _param_dtypes(model) == {jnp.dtype(jnp.bfloat16)}, spelling
    for spelling in ["float16", np.float16, np.dtype("float16")] + [m.float16 for m in others]:
        assert _param_dtypes(cls.from_pretrained(case.directory, dtype=spelling)) == {jnp.dtype(jnp.float16)}
    for spelling in (None, "float32", jnp.float32):
        model = cls.from_pretrained(case.directory, dtype=spelling)
        assert model.dtype == jnp.float32 and _param_dtypes(model) == {jnp.dtype(jnp.float32)}, spelling
    model = cls.from_config(model.config, dtype="bfloat16", seed=0)  # random init, then cast (as model.to(dtype))
    assert model.dtype == jnp.bfloat16 and _param_dtypes(model) == {jnp.dtype(jnp.bfloat16)}


def test_bfloat16_outputs_within_bf16_tolerance_of_the_reference():
    """bf16 parameters compute in bf16 (by default) within the bf16 thresholds of the fp32 reference; a separate
    ``compute_dtype`` computes in another dtype than the parameters'."""
    from deberta_xf.compare import BF16_THRESHOLDS

    case = load_case("v3", "sequence-classification")
    cls = deberta_xf.FlaxDebertaV2ForSequenceClassification
    keep = case.attention_mask.astype(bool)
    for dtype, compute, out_dtype in (("bfloat16", None, jnp.bfloat16), ("bfloat16", "float32", jnp.float32),
                                      ("float32", "bfloat16", jnp.bfloat16)):
        model = cls.from_pretrained(case.directory, dtype=dtype, compute_dtype=compute)
        assert model.dtype == jnp.dtype(dtype) and _param_dtypes(model) == {jnp.dtype(dtype)}
        assert model.compute_dtype == out_dtype
        out = model(**case.inputs, output_hidden_states=True)
        assert out.logits.dtype == out_dtype and out.hidden_states[-1].dtype == out_dtype, (dtype, compute)
        hidden_err = np.abs(np.asarray(out.hidden_states[-1], np.float32) - case.pt["hidden_states.2"])[keep].max()
        logits_err = np.abs(np.asarray(out.logits, np.float32) - case.pt["logits"]).max()
        assert 0 < hidden_err < BF16_THRESHOLDS["hidden"] and 0 < logits_err < BF16_THRESHOLDS["logits"], \
            (dtype, compute, hidden_err, logits_err)
        assert abs(float(out.loss) - float(case.pt["loss"])) < BF16_THRESHOLDS["logits"]


def test_dtype_auto_takes_the_checkpoints(tmp_path):
    """``dtype="auto"``: a bf16 checkpoint (written by a bf16 model, both formats) loads in bf16; without a dtype it
    loads in float32, values unchanged."""
    case = load_case("v3", "sequence-classification")
    cls = deberta_xf.FlaxDebertaV2ForSequenceClassification
    bf16 = cls.from_pretrained(case.directory, dtype="bfloat16")
    assert cls.from_pretrained(case.directory, dtype="auto").dtype == jnp.float32
    for fmt in ("msgpack", "safetensors"):
        bf16.save_pretrained(tmp_path / fmt, format=fmt)
        auto = cls.from_pretrained(tmp_path / fmt, dtype="auto")
        assert auto.dtype == jnp.bfloat16 and _param_dtypes(auto) == {jnp.dtype(jnp.bfloat16)}, fmt
        default = cls.from_pretrained(tmp_path / fmt)
        assert default.dtype == jnp.float32
        for name, value in bf16.canonical_state().items():
            np.testing.assert_array_equal(default.canonical_state()[name], value.astype(np.float32), err_msg=name)


# ----------------------------------------------------------------------------------------------------------------
# Saving and loading
def test_flax_model_msgpack_is_flax_serialization(tmp_path):
    """flax_model.msgpack is flax serialization of the nested parameter dict, in flax names and layouts, byte for
    byte what flax itself writes."""
    from flax import serialization

    case = load_case("v2-conv", "masked-lm")
    model = deberta_xf.FlaxDebertaV2ForMaskedLM.from_pretrained(case.directory)
    state = model.canonical_state()
    model.save_pretrained(tmp_path)
    raw = (tmp_path / "flax_model.msgpack").read_bytes()
    tree = serialization.msgpack_restore(raw)
    query = tree["deberta"]["encoder"]["layer"]["0"]["attention"]["self"]["query_proj"]
    np.testing.assert_array_equal(query["kernel"], state["deberta.encoder.layer.0.attention.self.query_proj.weight"].T)
    np.testing.assert_array_equal(tree["deberta"]["encoder"]["conv"]["conv"]["kernel"],
                                  state["deberta.encoder.conv.conv.weight"].transpose(2, 1, 0))
    assert set(tree["cls"]["predictions"]["transform"]["LayerNorm"]) == {"scale", "bias"}
    assert serialization.msgpack_serialize(tree) == raw  # byte for byte what flax itself writes


def test_loads_msgpack_written_by_flax_itself(tmp_path):
    """A file written with flax.serialization from the model's own NNX state (int layer keys) loads."""
    from flax import serialization

    case = load_case("v3", "sequence-classification")
    model = deberta_xf.FlaxDebertaV2ForSequenceClassification.from_pretrained(case.directory)
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    (tmp_path / "flax_model.msgpack").write_bytes(serialization.msgpack_serialize(pure))
    shutil.copy(os.path.join(case.directory, "config.json"), tmp_path)
    reloaded = deberta_xf.FlaxDebertaV2ForSequenceClassification.from_pretrained(tmp_path)
    assert reloaded.weights_path.endswith("flax_model.msgpack")
    state, again = model.canonical_state(), reloaded.canonical_state()  # the weights that match the reference
    assert set(again) == set(state)
    for name in state:
        np.testing.assert_array_equal(again[name], state[name], err_msg=name)
    with open_weights(str(tmp_path / "flax_model.msgpack")) as reader:  # readable without a model
        with open_weights(os.path.join(case.directory, "model.safetensors")) as reference:
            assert reader.shapes() == reference.shapes()
            name = "deberta.encoder.layer.1.intermediate.dense.weight"
            np.testing.assert_array_equal(reader.read(name), reference.read(name))


def test_abstract_build_when_loading(monkeypatch):
    """from_pretrained never initialises parameters concretely (nnx.eval_shape); from_config does."""
    calls = []
    original = flax_deberta._normal

    def recording(config):
        init = original(config)

        def wrapped(key, shape, dtype=jnp.float32):
            value = init(key, shape, dtype)
            calls.append(isinstance(value, jax.core.Tracer))
            return value

        return wrapped

    monkeypatch.setattr(flax_deberta, "_normal", recording)
    case = load_case("v3", "base")
    deberta_xf.FlaxDebertaV2Model.from_pretrained(case.directory)
    assert calls and all(calls)  # every initialiser ran on abstract values only
    calls.clear()
    deberta_xf.FlaxDebertaV2Model.from_config(deberta_xf.DebertaV2Config.from_pretrained(case.directory), seed=0)
    assert calls and not any(calls)


def test_random_init_follows_the_reference():
    config = deberta_xf.DebertaV2Config(vocab_size=500, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                                   intermediate_size=128, pad_token_id=3, relative_attention=True,
                                   position_buckets=8, norm_rel_ebd="layer_norm",
                                   conv_kernel_size=3)
    a = deberta_xf.FlaxDebertaV2ForMaskedLM.from_config(config, seed=1).canonical_state()
    b = deberta_xf.FlaxDebertaV2ForMaskedLM.from_config(config, seed=1).canonical_state()
    assert all(np.array_equal(a[k], b[k]) for k in a)  # seeded
    words = a["deberta.embeddings.word_embeddings.weight"]
    assert not words[3].any() and words[4].any()  # the padding row is zero
    assert abs(words.std() - 0.02) < 0.002
    assert abs(a["deberta.encoder.layer.0.intermediate.dense.weight"].std() - 0.02) < 0.002
    assert (a["deberta.encoder.LayerNorm.weight"] == 1).all()
    assert (a["deberta.embeddings.LayerNorm.weight"] == 1).all()
    assert not a["cls.predictions.bias"].any() and not a["deberta.encoder.conv.conv.bias"].any()


# ----------------------------------------------------------------------------------------------------------------
# Bad input: CheckpointError naming the file, key or shape
def _msgpack_checkpoint(tmp_path, variant="v3", task="base") -> str:
    return saved_as_msgpack(load_case(variant, task), tmp_path)


def test_load_canonical_names_a_misshapen_tensor(tmp_path):
    model = deberta_xf.FlaxDebertaV2Model.from_pretrained(_msgpack_checkpoint(tmp_path))
    with pytest.raises(CheckpointError, match=r"'encoder\.rel_embeddings\.weight' of shape \[5, 32\]"):
        model.load_canonical({"encoder.rel_embeddings.weight": np.zeros((5, 32), np.float32)})


DAMAGE = {  # how the file is damaged -> what the error says after naming the file
    "truncated": "truncated msgpack file at byte",
    "garbage": "at byte 0: unknown type byte 0xc1",
    "empty": "empty file",
    "stray-bytes": "2 stray bytes after the parameter tree",
    "not-a-tree": "not a flax parameter tree",
    "bad-leaf": "'encoder.layer.0.output.dense.kernel' is a float, not an array",
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_corrupt_msgpack_names_the_file(tmp_path, damage):
    import re

    import msgpack

    directory = _msgpack_checkpoint(tmp_path)
    path = os.path.join(directory, "flax_model.msgpack")
    data = open(path, "rb").read()
    corrupt = {
        "truncated": data[: len(data) // 2],
        "garbage": b"\xc1" + data[1:],
        "empty": b"",
        "stray-bytes": data + b"\x00\x01",
        "not-a-tree": msgpack.packb([1, 2, 3]),
        "bad-leaf": msgpack.packb({"encoder": {"layer": {"0": {"output": {"dense": {"kernel": 1.5}}}}}}),
    }[damage]
    with open(path, "wb") as f:
        f.write(corrupt)
    with pytest.raises(CheckpointError, match=re.escape(path) + ": .*" + re.escape(DAMAGE[damage])):
        deberta_xf.FlaxDebertaV2Model.from_pretrained(directory)


def test_msgpack_with_unknown_parameter_name(tmp_path):
    from flax import serialization

    directory = _msgpack_checkpoint(tmp_path)
    path = os.path.join(directory, "flax_model.msgpack")
    tree = serialization.msgpack_restore(open(path, "rb").read())
    tree["encoder"]["layer"]["0"]["output"]["dense"]["weights"] = tree["encoder"]["layer"]["0"]["output"][
        "dense"].pop("kernel")
    open(path, "wb").write(serialization.msgpack_serialize(tree))
    with pytest.raises(CheckpointError, match=r"flax_model\.msgpack.*'encoder\.layer\.0\.output\.dense\.weights'"):
        deberta_xf.FlaxDebertaV2Model.from_pretrained(directory)
