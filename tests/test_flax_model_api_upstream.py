"""What a Hugging Face Flax user relies on in a model, beyond tests/test_flax_model.py and tests/test_model_api.py
(issue 11). transformers has no Flax DeBERTa-v2, so these are the behaviours its Flax models share: a model built from
a config alone is reproducible (the default seed), ``jax.jit`` over a call gives the eager numbers, the PyTorch and
Flax models agree directly and through each other's files, base and head checkpoints exchange their encoder, the class
names mirror the PyTorch ones, ``__call__`` takes the reference's arguments in its order, hidden states and attentions
come in the expected counts and shapes, a bf16 model reloads in bf16 with ``dtype="auto"``, and ``compute_dtype``
computes in half precision over float32 parameters.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")
torch = pytest.importorskip("torch")

import jax.numpy as jnp  # noqa: E402

import deberta_xf  # noqa: E402
from deberta_xf import DebertaV2Config  # noqa: E402
from deberta_xf.flax.modeling_flax_deberta_v2 import MODEL_CLASSES  # noqa: E402
from deberta_xf.frameworks import REGISTRY  # noqa: E402
from deberta_xf.tasks import TASKS  # noqa: E402
from deberta_xf.torch.modeling_deberta_v2 import MODEL_CLASSES as TORCH_CLASSES  # noqa: E402

SMALL = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24,
             max_position_embeddings=64, relative_attention=True, pos_att_type="p2c|c2p", position_buckets=4,
             max_relative_positions=16, share_att_key=True, norm_rel_ebd="layer_norm", position_biased_input=False,
             type_vocab_size=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2)
HEAD_TASKS = [t for t in TASKS if t != "base"]
CHOICES = 3
FIRST_OUTPUT = {"base": "last_hidden_state", "question-answering": "start_logits"}
CALL_ORDER = ["input_ids", "attention_mask", "token_type_ids", "position_ids", "inputs_embeds", "output_attentions",
              "output_hidden_states", "return_dict"]  # the reference's order; label arguments after inputs_embeds
LABEL_ARGUMENTS = {"base": [], "question-answering": ["start_positions", "end_positions"]}


@pytest.fixture(scope="module", autouse=True)
def full_fp32_matmuls():
    """The registry's fp32 matmul pin (as the other Flax suites): the PyTorch comparisons are at fp32 tolerance."""
    with REGISTRY["flax"].precision():
        yield


def small_config(**overrides) -> DebertaV2Config:
    return DebertaV2Config(**{**SMALL, **overrides})


def features(task: str, batch: int = 4, seq: int = 7, seed: int = 0) -> dict[str, np.ndarray]:
    """Random ids, a mask with padding in the first row, token types; [batch, CHOICES, seq] for multiple choice."""
    rng = np.random.default_rng(seed)
    shape = (batch, CHOICES, seq) if task == "multiple-choice" else (batch, seq)
    mask = np.ones(shape, np.int32)
    mask[0, ..., -2:] = 0
    return {"input_ids": rng.integers(1, SMALL["vocab_size"], shape).astype(np.int32), "attention_mask": mask,
            "token_type_ids": rng.integers(0, 2, shape).astype(np.int32)}


def all_outputs(out) -> dict[str, np.ndarray]:
    """Every output of a ModelOutput (either framework) by name, hidden states and attentions by index."""
    flat = {}
    for key, value in out.items():
        if isinstance(value, (tuple, list)):
            flat.update({f"{key}.{i}": v for i, v in enumerate(value)})
        else:
            flat[key] = value
    return {k: v.detach().numpy() if hasattr(v, "detach") else np.asarray(v) for k, v in flat.items()}


def assert_outputs_close(got, want, atol: float, what: str) -> None:
    got, want = all_outputs(got), all_outputs(want)
    assert list(got) == list(want), what
    for key in want:
        assert got[key].shape == want[key].shape, f"{what}: {key}"
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=atol, err_msg=f"{what}: {key}")


# ----------------------------------------------------------------------------------------------------------------
# Building: the default seed, the class names, the call signature
@pytest.mark.parametrize("task", list(TASKS))
def test_a_model_from_a_config_alone_is_reproducible(task):
    config = small_config()
    first = MODEL_CLASSES[task](config).canonical_state()
    second = MODEL_CLASSES[task](config).canonical_state()
    seeded = MODEL_CLASSES[task].from_config(config, seed=0).canonical_state()  # the default seed is 0
    other = MODEL_CLASSES[task](config, rngs=nnx.Rngs(1)).canonical_state()
    assert first.keys() == second.keys() == seeded.keys() == other.keys()
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
        np.testing.assert_array_equal(first[key], seeded[key], err_msg=key)
    words = "embeddings.word_embeddings.weight" if task == "base" else "deberta.embeddings.word_embeddings.weight"
    assert not np.array_equal(first[words], other[words])


@pytest.mark.parametrize("task", list(TASKS))
def test_flax_classes_mirror_the_torch_names(task):
    flax_class, torch_class = MODEL_CLASSES[task], TORCH_CLASSES[task]
    assert flax_class.__name__ == f"Flax{torch_class.__name__}"
    assert getattr(deberta_xf, flax_class.__name__) is flax_class
    assert issubclass(flax_class, nnx.Module)
    model = flax_class(small_config())
    assert model.base_model is (model if task == "base" else model.deberta)
    assert model.base_model_prefix == "deberta" and model.can_generate() is False


@pytest.mark.parametrize("task", list(TASKS))
def test_main_input_name_and_call_order(task):
    model_class = MODEL_CLASSES[task]
    names = list(inspect.signature(model_class.__call__).parameters)[1:]
    assert names == CALL_ORDER[:5] + LABEL_ARGUMENTS.get(task, ["labels"]) + CALL_ORDER[5:]
    assert model_class.main_input_name == names[0] == "input_ids"
    assert names == list(inspect.signature(TORCH_CLASSES[task].forward).parameters)[1:]


@pytest.mark.parametrize("how", ["argument", "config"])
@pytest.mark.parametrize("task", ["base", "multiple-choice"])
def test_hidden_states_and_attentions(task, how):
    config = small_config()
    flags = {"output_hidden_states": True, "output_attentions": True}
    if how == "config":
        for key, value in flags.items():
            setattr(config, key, value)
    model = MODEL_CLASSES[task](config)
    inputs = features(task)
    plain = model(**inputs, **({"output_hidden_states": False, "output_attentions": False}
                               if how == "config" else {}))
    out = model(**inputs, **(flags if how == "argument" else {}))
    rows = 4 * CHOICES if task == "multiple-choice" else 4
    assert len(out.hidden_states) == SMALL["num_hidden_layers"] + 1
    assert all(h.shape == (rows, 7, SMALL["hidden_size"]) for h in out.hidden_states)
    assert len(out.attentions) == SMALL["num_hidden_layers"]
    assert all(a.shape == (rows, SMALL["num_attention_heads"], 7, 7) for a in out.attentions)
    assert len(out) == len(plain) + 2 and list(out.keys())[-2:] == ["hidden_states", "attentions"]


# ----------------------------------------------------------------------------------------------------------------
# jit
@pytest.mark.parametrize("task", ["masked-lm", "multiple-choice"])
def test_jax_jit_over_a_call_matches_eager(task):
    model = MODEL_CLASSES[task](small_config())
    inputs = features(task)

    @jax.jit
    def forward(input_ids, attention_mask, token_type_ids):
        return model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                     output_hidden_states=True, output_attentions=True)

    jitted = forward(**inputs)
    with jax.disable_jit():
        eager = forward(**inputs)
    assert isinstance(jitted, deberta_xf.ModelOutput)
    assert_outputs_close(jitted, eager, 1e-5, f"{task} jit vs eager")


# ----------------------------------------------------------------------------------------------------------------
# PyTorch <-> Flax, in memory and through files
@pytest.mark.parametrize("direction", ["torch-to-flax", "flax-to-torch"])
@pytest.mark.parametrize("task", list(TASKS))
def test_torch_and_flax_agree_directly_and_through_files(task, direction, tmp_path):
    config = small_config(output_hidden_states=True, output_attentions=True)
    inputs = features(task)
    torch_inputs = {k: torch.from_numpy(v.astype(np.int64)) for k, v in inputs.items()}
    torch_model = TORCH_CLASSES[task].from_config(config, seed=0)
    flax_model = MODEL_CLASSES[task](config)
    if direction == "torch-to-flax":
        flax_model.load_canonical(torch_model.canonical_state())
        torch_model.save_pretrained(tmp_path)  # model.safetensors
        assert (tmp_path / "model.safetensors").exists()
        from_file = MODEL_CLASSES[task].from_pretrained(tmp_path)
    else:
        torch_model.load_canonical(flax_model.canonical_state())
        flax_model.save_pretrained(tmp_path)  # flax_model.msgpack, the reference's Flax default
        assert (tmp_path / "flax_model.msgpack").exists()
        from_file = TORCH_CLASSES[task].from_pretrained(tmp_path)
    with torch.no_grad():
        torch_out = torch_model(**torch_inputs)
        file_out = from_file(**(torch_inputs if direction == "flax-to-torch" else inputs))
    flax_out = flax_model(**inputs)
    assert_outputs_close(flax_out, torch_out, 1e-5, f"{task}: {direction} in memory")
    assert_outputs_close(file_out, torch_out if direction == "torch-to-flax" else flax_out, 1e-5,
                         f"{task}: {direction} through files")


@pytest.mark.parametrize("task", HEAD_TASKS)
def test_base_and_head_checkpoints_exchange_the_encoder(task, tmp_path):
    head = MODEL_CLASSES[task](small_config())
    head.save_pretrained(tmp_path / "head")
    base = MODEL_CLASSES["base"].from_pretrained(tmp_path / "head")
    head_state, base_state = head.canonical_state(), base.canonical_state()
    assert {f"deberta.{name}" for name in base_state} == {n for n in head_state if n.startswith("deberta.")}
    for name, array in base_state.items():
        np.testing.assert_array_equal(array, head_state[f"deberta.{name}"], err_msg=name)
    base.save_pretrained(tmp_path / "base")
    again = MODEL_CLASSES[task].from_pretrained(tmp_path / "base").canonical_state()
    for name, array in base_state.items():
        np.testing.assert_array_equal(again[f"deberta.{name}"], array, err_msg=name)


# ----------------------------------------------------------------------------------------------------------------
# Parameter and computation dtypes
def _parameter_dtypes(model) -> set:
    return {leaf.dtype for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))}


@pytest.mark.parametrize("task", list(TASKS))
def test_a_bfloat16_model_reloads_in_bfloat16_with_dtype_auto(task, tmp_path):
    model = MODEL_CLASSES[task](small_config(), dtype=jnp.bfloat16)
    assert _parameter_dtypes(model) == {jnp.dtype(jnp.bfloat16)}
    model.save_pretrained(tmp_path)
    auto = MODEL_CLASSES[task].from_pretrained(tmp_path, dtype="auto")
    assert _parameter_dtypes(auto) == {jnp.dtype(jnp.bfloat16)}
    default = MODEL_CLASSES[task].from_pretrained(tmp_path)  # float32 unless asked, as the PyTorch reference
    assert _parameter_dtypes(default) == {jnp.dtype(jnp.float32)}
    for name, array in model.canonical_state().items():
        np.testing.assert_array_equal(default.canonical_state()[name], np.asarray(array, np.float32), err_msg=name)


@pytest.mark.parametrize("task", ["base", "sequence-classification"])
def test_compute_dtype_keeps_float32_parameters(task):
    config = small_config()
    half = MODEL_CLASSES[task](config, compute_dtype=jnp.bfloat16)
    full = MODEL_CLASSES[task](config)
    assert _parameter_dtypes(half) == {jnp.dtype(jnp.float32)}
    inputs = features(task)
    got = FIRST_OUTPUT.get(task, "logits")
    half_out, full_out = half(**inputs)[got], full(**inputs)[got]
    assert half_out.dtype == jnp.bfloat16 and full_out.dtype == jnp.float32
    error = np.abs(np.asarray(half_out, np.float32) - np.asarray(full_out)).max()
    assert 0 < error < 0.1  # bf16 rounding: different, and close
