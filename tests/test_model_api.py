"""The reference's model API in every framework (issue 11, items 2-3): ``return_dict=False`` tuples, output flags from
the config, ``ignore_mismatched_sizes``, ``dtype`` spellings and ``"auto"``; and, PyTorch first, the embedding
getters/setters, ``resize_token_embeddings``, ``num_parameters``, ``.dtype`` and gradient checkpointing.

Shared behaviour is parametrized over the registered frameworks (:data:`deberta_xf.frameworks.FRAMEWORKS`); what is
the reference's own behaviour (tuple contents, resized models, parameter counts) is compared live with
transformers 4.57.6 under the ``reference`` marker.
"""

from __future__ import annotations

import functools
import logging

import numpy as np
import pytest

import deberta_xf
from deberta_xf.errors import CheckpointError, CheckpointShapeError
from deberta_xf.frameworks import FRAMEWORKS, REGISTRY
from deberta_xf.tasks import TASKS
from reference_cases import load_case

TINY = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=20,
            max_position_embeddings=32, relative_attention=True, pos_att_type="p2c|c2p", position_buckets=8,
            position_biased_input=False, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
TASK_NAMES = list(TASKS)


def tiny_config(**overrides) -> deberta_xf.DebertaV2Config:
    return deberta_xf.DebertaV2Config(**{**TINY, **overrides})


@functools.lru_cache(maxsize=None)
def _unavailable(name: str) -> str | None:
    return REGISTRY[name].available()


@pytest.fixture(params=FRAMEWORKS)
def fw(request):
    reason = _unavailable(request.param)
    if reason is not None:
        pytest.skip(f"{request.param}: {reason}")
    return REGISTRY[request.param]


def to_numpy(x):
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def inputs_for(task: str, batch: int = 2, seq: int = 5, labels: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    shape = (batch, 3, seq) if task == "multiple-choice" else (batch, seq)
    ids = rng.integers(1, TINY["vocab_size"], shape)
    mask = np.ones(shape, np.int64)
    mask[0, ..., -1] = 0
    out = {"input_ids": ids, "attention_mask": mask}
    if labels:
        if task == "question-answering":
            out.update(start_positions=np.array([1, 2]), end_positions=np.array([3, 4]))
        elif task == "masked-lm":
            out["labels"] = rng.integers(0, TINY["vocab_size"], shape)
        elif task == "token-classification":
            out["labels"] = rng.integers(0, 2, shape)
        elif task in ("sequence-classification", "multiple-choice"):
            out["labels"] = np.array([1, 0])
    return out


def flat(x) -> list[np.ndarray]:
    """A tuple output (nested tuples of hidden states / attentions) as a flat list of arrays."""
    if isinstance(x, (tuple, list)):
        return [a for item in x for a in flat(item)]
    return [to_numpy(x)]


# ----------------------------------------------------------------------------------------------------------------
# A. return_dict=False and the output flags' defaults
@pytest.mark.parametrize("task", TASK_NAMES)
def test_return_dict_false_is_the_outputs_tuple(fw, task):
    model = fw.model_class(task).from_config(tiny_config(num_labels=2), seed=0)
    inputs = inputs_for(task, labels=task != "base")
    out = model(**inputs, output_hidden_states=True, output_attentions=True)
    tup = model(**inputs, output_hidden_states=True, output_attentions=True, return_dict=False)
    assert isinstance(tup, tuple) and not isinstance(tup, dict)
    assert len(tup) == len(out)
    expected_fields = (["loss"] if task != "base" else []) + list(
        {"base": ["last_hidden_state"], "question-answering": ["start_logits", "end_logits"]}.get(task, ["logits"])
    ) + ["hidden_states", "attentions"]
    assert list(out.keys()) == expected_fields
    for a, b in zip(flat(tup), flat(out.to_tuple())):
        np.testing.assert_array_equal(a, b)
    # without the optional outputs, the tuple has only what is set
    short = model(**inputs_for(task, labels=False), return_dict=False)
    assert len(short) == (2 if task == "question-answering" else 1)


def test_output_flags_default_to_the_config(fw):
    config = tiny_config()
    config.output_hidden_states = True
    config.output_attentions = True
    model = fw.model_class("sequence-classification").from_config(config, seed=0)
    out = model(**inputs_for("sequence-classification", labels=False))
    assert len(out.hidden_states) == TINY["num_hidden_layers"] + 1
    assert len(out.attentions) == TINY["num_hidden_layers"]
    out = model(**inputs_for("sequence-classification", labels=False), output_hidden_states=False,
                output_attentions=False)  # an explicit argument wins
    assert "hidden_states" not in out and "attentions" not in out
    config.return_dict = False
    assert isinstance(model(**inputs_for("sequence-classification", labels=False)), tuple)
    assert not isinstance(model(**inputs_for("sequence-classification", labels=False), return_dict=True), tuple)


@pytest.mark.reference
@pytest.mark.parametrize("task", TASK_NAMES)
def test_torch_tuple_matches_the_reference(task):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    if _unavailable("torch"):
        pytest.skip("torch implementation unavailable")
    config = tiny_config(num_labels=2)
    ours = REGISTRY["torch"].model_class(task).from_config(config, seed=0)
    ref_class = getattr(transformers, ours.__class__.__name__)
    reference = ref_class(transformers.DebertaV2Config(**TINY, num_labels=2)).eval()
    state = {k: torch.from_numpy(v) for k, v in ours.canonical_state().items()}
    missing, unexpected = reference.load_state_dict(state, strict=False)
    assert not unexpected and all("position_ids" in m or "decoder" in m for m in missing)
    if task == "masked-lm":
        reference.tie_weights()
    inputs = {k: torch.from_numpy(v) for k, v in inputs_for(task, labels=task != "base").items()}
    for flags in ({}, {"output_hidden_states": True}, {"output_attentions": True},
                  {"output_hidden_states": True, "output_attentions": True}):
        with torch.no_grad():
            got = ours(**inputs, **flags, return_dict=False)
            want = reference(**inputs, **flags, return_dict=False)
        assert isinstance(want, tuple) and isinstance(got, tuple)
        got, want = flat(got), flat(want)
        assert [a.shape for a in got] == [b.shape for b in want], flags
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# B. ignore_mismatched_sizes
@pytest.mark.parametrize("task", ["sequence-classification", "token-classification"])
def test_ignore_mismatched_sizes_reinitialises_the_head(fw, task, caplog):
    case = load_case("v3", task)
    cls = fw.model_class(task)
    plain = cls.from_pretrained(case.directory)
    n = plain.config.num_labels + 3
    with pytest.raises(CheckpointError, match="classifier"):
        cls.from_pretrained(case.directory, num_labels=n)
    with caplog.at_level(logging.WARNING, logger="deberta_xf"):
        model = cls.from_pretrained(case.directory, num_labels=n, ignore_mismatched_sizes=True)
    assert sorted(model.loading_report.reinitialized) == ["classifier.bias", "classifier.weight"]
    assert "classifier.weight" in caplog.text and "re-initialised" in caplog.text
    assert "re-initialised" in model.loading_report.summary()
    state, loaded = model.canonical_state(), plain.canonical_state()
    assert state["classifier.weight"].shape == (n, TINY_HIDDEN(case))
    assert not np.any(state["classifier.bias"])  # fresh init: zero bias, as the reference
    for name, value in loaded.items():  # everything else is the checkpoint's
        if not name.startswith("classifier."):
            np.testing.assert_array_equal(state[name], value, err_msg=name)
    out = model(**case.model_inputs)
    assert out.logits.shape[-1] == n


def TINY_HIDDEN(case) -> int:
    return deberta_xf.DebertaV2Config.from_pretrained(case.directory).hidden_size


def test_a_backbone_mismatch_is_a_runtime_error_and_re_initialised_when_asked(fw):
    """As the reference: a tensor of another shape raises (a CheckpointError that is also the reference's
    RuntimeError, naming the tensor and the flag); with ignore_mismatched_sizes=True any such tensor, embeddings
    included, keeps its fresh initialisation and is listed."""
    case = load_case("v3", "sequence-classification")
    cls = fw.model_class("sequence-classification")
    with pytest.raises(CheckpointShapeError, match="word_embeddings.*vocab_size=300") as err:
        cls.from_pretrained(case.directory, vocab_size=300)
    assert isinstance(err.value, RuntimeError) and isinstance(err.value, CheckpointError)
    assert "ignore_mismatched_sizes=True" in str(err.value)
    plain = cls.from_pretrained(case.directory).canonical_state()
    model = cls.from_pretrained(case.directory, vocab_size=300, ignore_mismatched_sizes=True)
    name = "deberta.embeddings.word_embeddings.weight"
    assert model.loading_report.reinitialized == [name]
    state = model.canonical_state()
    assert state[name].shape == (300, plain[name].shape[1])
    std = model.config.initializer_range
    assert 0.5 * std < state[name].std() < 1.5 * std  # drawn as the reference draws it, not copied
    for other, value in plain.items():
        if other != name:
            np.testing.assert_array_equal(state[other], value, err_msg=other)
    ids = case.model_inputs["input_ids"]
    assert model(input_ids=ids).logits.shape == (ids.shape[0], model.config.num_labels)


def test_output_loading_info_lists_missing_unexpected_and_mismatched(fw):
    """from_pretrained(..., output_loading_info=True) returns (model, info) as the reference: a base checkpoint
    in a classifier lists the head as missing; a re-initialised classifier is mismatched."""
    base = load_case("v3", "base")
    model, info = fw.model_class("sequence-classification").from_pretrained(base.directory,
                                                                            output_loading_info=True)
    assert sorted(info) == ["error_msgs", "mismatched_keys", "missing_keys", "unexpected_keys"]
    assert sorted(info["missing_keys"]) == ["classifier.bias", "classifier.weight", "pooler.dense.bias",
                                            "pooler.dense.weight"]
    assert info["unexpected_keys"] == [] and info["mismatched_keys"] == [] and info["error_msgs"] == []
    assert model.task == "sequence-classification"
    case = load_case("v3", "sequence-classification")
    n = deberta_xf.DebertaV2Config.from_pretrained(case.directory).num_labels + 2
    _, info = fw.model_class("sequence-classification").from_pretrained(
        case.directory, num_labels=n, ignore_mismatched_sizes=True, output_loading_info=True)
    hidden = TINY_HIDDEN(case)
    assert sorted(info["mismatched_keys"]) == [("classifier.bias", (n - 2,), (n,)),
                                               ("classifier.weight", (n - 2, hidden), (n, hidden))]
    assert info["missing_keys"] == []
    _, info = fw.model_class("base").from_pretrained(case.directory, output_loading_info=True)
    assert sorted(info["unexpected_keys"]) == ["classifier.bias", "classifier.weight", "pooler.dense.bias",
                                               "pooler.dense.weight"]


def test_torch_dtype_is_the_older_name_of_dtype():
    torch = pytest.importorskip("torch")
    case = load_case("v3", "base")
    cls = REGISTRY["torch"].model_class("base")
    assert cls.from_pretrained(case.directory, torch_dtype=torch.float16).dtype == torch.float16
    assert cls.from_pretrained(case.directory, torch_dtype="bfloat16").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="torch_dtype"):
        cls.from_pretrained(case.directory, dtype="float16", torch_dtype=torch.float16)


# ----------------------------------------------------------------------------------------------------------------
# F. dtype spellings and "auto"
def test_dtype_name_spellings():
    from deberta_xf.loading import dtype_name

    assert dtype_name(None) is None and dtype_name("auto") == "auto"
    assert dtype_name("fp16") == dtype_name(np.float16) == dtype_name(np.dtype("float16")) == "float16"
    assert dtype_name("bfloat16") == dtype_name("torch.bfloat16") == "bfloat16"
    with pytest.raises(ValueError, match="unsupported dtype"):
        dtype_name("int8")


def test_torch_dtype_objects_and_auto(tmp_path):
    if _unavailable("torch"):
        pytest.skip("torch implementation unavailable")
    import torch

    cls = REGISTRY["torch"].model_class("sequence-classification")
    case = load_case("v3", "sequence-classification")
    assert cls.from_pretrained(case.directory, dtype=torch.float16).dtype == torch.float16
    assert cls.from_pretrained(case.directory, dtype=np.float16).dtype == torch.float16
    assert cls.from_pretrained(case.directory, dtype="auto").dtype == torch.float32
    cls.from_pretrained(case.directory, dtype="float16").save_pretrained(tmp_path)
    assert cls.from_pretrained(tmp_path, dtype="auto").dtype == torch.float16
    assert cls.from_pretrained(tmp_path).dtype == torch.float32


def test_tf_dtype_auto(tmp_path):
    if _unavailable("tf"):
        pytest.skip("tf implementation unavailable")
    cls = REGISTRY["tf"].model_class("sequence-classification")
    if _unavailable("torch"):
        pytest.skip("needs torch to write an fp16 checkpoint")
    torch_cls = REGISTRY["torch"].model_class("sequence-classification")
    case = load_case("v3", "sequence-classification")
    torch_cls.from_pretrained(case.directory, dtype="float16").save_pretrained(tmp_path)
    model = cls.from_pretrained(tmp_path, dtype="auto")
    assert {v.dtype for v in model.weights} == {"float16"}
    import torch

    assert {v.dtype for v in cls.from_pretrained(case.directory, dtype=torch.bfloat16).weights} == {"bfloat16"}


# ----------------------------------------------------------------------------------------------------------------
# C. PyTorch: embeddings, resizing, parameter counts, dtype
@pytest.fixture
def torch_mod():
    if _unavailable("torch"):
        pytest.skip("torch implementation unavailable")
    return REGISTRY["torch"].implementation()


def test_torch_input_and_output_embeddings(torch_mod):
    import torch

    tied = torch_mod.DebertaV2ForMaskedLM.from_config(tiny_config(), seed=0)
    emb = tied.get_input_embeddings()
    assert isinstance(emb, torch.nn.Embedding) and emb is tied.deberta.get_input_embeddings()
    decoder = tied.get_output_embeddings()
    assert isinstance(decoder, torch.nn.Linear)
    assert decoder.weight is emb.weight and decoder.bias is tied.cls.predictions.bias
    # a new input embedding: the tied decoder follows it
    new = torch.nn.Embedding(TINY["vocab_size"], TINY["hidden_size"])
    tied.set_input_embeddings(new)
    assert tied.get_input_embeddings() is new and tied.get_output_embeddings().weight is new.weight
    ids = torch.tensor([[1, 2, 3]])
    hidden = tied.deberta(ids).last_hidden_state
    expected = torch.nn.functional.linear(tied.cls.predictions.transform(hidden), new.weight, tied.cls.predictions.bias)
    torch.testing.assert_close(tied(ids).logits, expected, rtol=0, atol=0)
    # setting the embedding's own weight keeps it tied; another Linear unties it
    tied.set_output_embeddings(tied.get_output_embeddings())
    assert tied.cls.predictions.decoder is None
    own = torch.nn.Linear(TINY["hidden_size"], TINY["vocab_size"], bias=False)
    tied.set_output_embeddings(own)
    assert tied.get_output_embeddings() is own and tied.config.tie_word_embeddings is False
    untied = torch_mod.DebertaV2ForMaskedLM.from_config(tiny_config(tie_word_embeddings=False), seed=0)
    assert untied.get_output_embeddings() is untied.cls.predictions.decoder
    assert torch_mod.DebertaV2ForSequenceClassification.from_config(tiny_config()).get_output_embeddings() is None


def _reference_twin(torch_mod, task: str, config_kwargs: dict):
    """Our torch model and the reference's, with the same weights."""
    import torch
    transformers = pytest.importorskip("transformers")

    ours = torch_mod.MODEL_CLASSES[task].from_config(tiny_config(**config_kwargs), seed=0)
    reference = getattr(transformers, type(ours).__name__)(transformers.DebertaV2Config(**TINY, **config_kwargs))
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in ours.canonical_state().items()}, strict=False)
    if task == "masked-lm":
        reference.tie_weights()
    return ours, reference.eval()


@pytest.mark.reference
@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_torch_resize_token_embeddings_as_the_reference(torch_mod, tie):
    import torch

    ours, reference = _reference_twin(torch_mod, "masked-lm", {"tie_word_embeddings": tie})
    for new_size in (60, 40):
        torch.manual_seed(0)
        got = ours.resize_token_embeddings(new_size, mean_resizing=False)
        want = reference.resize_token_embeddings(new_size, mean_resizing=False)
        assert tuple(got.weight.shape) == tuple(want.weight.shape) == (new_size, TINY["hidden_size"])
        assert ours.config.vocab_size == reference.config.vocab_size == new_size
        assert ours.num_parameters() == reference.num_parameters()
        assert ours.num_parameters(exclude_embeddings=True) == reference.num_parameters(exclude_embeddings=True)
        ours_state, ref_state = ours.canonical_state(), reference.state_dict()
        kept = min(new_size, TINY["vocab_size"])
        for name in ("deberta.embeddings.word_embeddings.weight", "cls.predictions.bias") + (
                () if tie else ("cls.predictions.decoder.weight",)):
            assert ours_state[name].shape == tuple(ref_state[name].shape), name
            np.testing.assert_array_equal(ours_state[name][:kept], ref_state[name][:kept].numpy(), err_msg=name)
        ids = torch.tensor([[1, 2, 3, min(new_size, TINY["vocab_size"]) - 1]])
        with torch.no_grad():
            a, b = ours(ids).logits[..., :kept], reference(ids).logits[..., :kept]
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # the resized model saves and loads (the schema follows config.vocab_size)
    assert ours.get_output_embeddings().weight.shape[0] == 40


def test_torch_resize_lm_predictions_head(torch_mod, tmp_path):
    import torch

    model = torch_mod.DebertaV2ForMaskedLM.from_config(tiny_config(legacy=False), seed=0)
    before = model.lm_predictions.lm_head.bias.detach().clone()
    model.resize_token_embeddings(61, pad_to_multiple_of=8)
    assert model.config.vocab_size == 64 and model.lm_predictions.lm_head.bias.shape == (64,)
    torch.testing.assert_close(model.lm_predictions.lm_head.bias[:50], before)
    assert model(torch.tensor([[1, 63]])).logits.shape == (1, 2, 64)
    model.save_pretrained(tmp_path)
    again = torch_mod.DebertaV2ForMaskedLM.from_pretrained(tmp_path)
    assert again.config.vocab_size == 64
    assert model.resize_token_embeddings() is model.get_input_embeddings()


@pytest.mark.reference
@pytest.mark.parametrize("task", TASK_NAMES)
def test_torch_num_parameters_as_the_reference(torch_mod, task):
    ours, reference = _reference_twin(torch_mod, task, {"num_labels": 3})
    for kwargs in ({}, {"exclude_embeddings": True}, {"only_trainable": True}):
        assert ours.num_parameters(**kwargs) == reference.num_parameters(**kwargs), kwargs
    for model in (ours, reference):
        for p in getattr(model, "deberta", model).embeddings.parameters():
            p.requires_grad_(False)
    assert ours.num_parameters(only_trainable=True) == reference.num_parameters(only_trainable=True)


def test_torch_dtype_property(torch_mod):
    import torch

    model = torch_mod.DebertaV2Model.from_config(tiny_config())
    assert model.dtype == torch.float32
    assert model.to(torch.bfloat16).dtype == torch.bfloat16


# ----------------------------------------------------------------------------------------------------------------
# D. PyTorch gradient checkpointing
@pytest.mark.parametrize("task", ["sequence-classification", "masked-lm"])
def test_torch_gradient_checkpointing_keeps_gradients(torch_mod, task):
    import torch

    config = tiny_config(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, num_labels=2)
    model = torch_mod.MODEL_CLASSES[task].from_config(config, seed=0).train()
    inputs = {k: torch.from_numpy(v) for k, v in inputs_for(task).items()}

    def grads():
        model.zero_grad()
        torch.manual_seed(1)  # the same dropout masks (checkpoint replays the RNG state)
        model(**inputs).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    assert not model.is_gradient_checkpointing
    plain = grads()
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing and model.deberta.encoder.gradient_checkpointing
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys() and len(plain) == len(list(model.parameters()))
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=0, atol=1e-6, msg=name)
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing


# ----------------------------------------------------------------------------------------------------------------
# C and D in every framework: the same names
@pytest.mark.parametrize("task", TASK_NAMES)
def test_num_parameters_agree_across_frameworks(fw, task):
    config = tiny_config(num_labels=3)
    model = fw.model_class(task).from_config(config, seed=0)
    from deberta_xf import schema

    shapes = schema.expected_shapes(config, task)
    total = int(sum(np.prod(s) for s in shapes.values()))
    embeddings = int(sum(np.prod(s) for n, s in shapes.items() if schema.param_kind(n) == "embedding"))
    assert model.num_parameters() == model.num_parameters(only_trainable=True) == total
    assert model.num_parameters(exclude_embeddings=True) == total - embeddings


def test_input_and_output_embeddings_in_every_framework(fw):
    model = fw.model_class("masked-lm").from_config(tiny_config(), seed=0)
    emb = model.get_input_embeddings()
    table = emb.weight if hasattr(emb, "weight") else getattr(emb, "embeddings", getattr(emb, "embedding", None))
    assert tuple(np.shape(table)) == (TINY["vocab_size"], TINY["hidden_size"])
    assert model.get_output_embeddings() is not None
    untied = fw.model_class("masked-lm").from_config(tiny_config(tie_word_embeddings=False), seed=0)
    assert untied.get_output_embeddings() is untied.cls.predictions.decoder
    assert fw.model_class("token-classification").from_config(tiny_config()).get_output_embeddings() is None


@pytest.mark.slow
def test_flax_gradient_checkpointing_keeps_gradients():
    if _unavailable("flax"):
        pytest.skip("flax implementation unavailable")
    import jax
    from flax import nnx

    config = tiny_config(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, num_labels=2)
    model = REGISTRY["flax"].model_class("sequence-classification").from_config(config, seed=0)
    model.train()
    inputs = inputs_for("sequence-classification")

    def grads():
        nnx.reseed(model, dropout=3)  # the same dropout masks
        return nnx.state(nnx.grad(lambda m: m(**inputs).loss)(model))

    plain = grads()
    assert not model.is_gradient_checkpointing
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    checkpointed = grads()
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(checkpointed)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-6)
    jitted = nnx.jit(lambda m: m(**inputs).logits)(model)  # remat under jit too
    assert jitted.shape == (2, 2)
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing


@pytest.mark.parametrize("legacy,tie", [(True, True), (True, False), (False, True)],
                         ids=["legacy-tied", "legacy-untied", "lm_predictions"])
def test_resize_token_embeddings_keeps_the_old_vocabulary(fw, legacy, tie, tmp_path):
    cls = fw.model_class("masked-lm")
    model = cls.from_config(tiny_config(legacy=legacy, tie_word_embeddings=tie), seed=0)
    ids = np.array([[1, 2, 3, TINY["vocab_size"] - 1]])
    before = to_numpy(model(input_ids=ids).logits)
    count = model.num_parameters()
    new = model.resize_token_embeddings(61, pad_to_multiple_of=4)
    assert model.get_input_embeddings() is new and model.config.vocab_size == 64
    after = to_numpy(model(input_ids=ids, labels=ids).logits)
    assert after.shape == (1, 4, 64)
    np.testing.assert_array_equal(after[..., :TINY["vocab_size"]], before)
    per_token = TINY["hidden_size"] * (1 if tie else 2) + 1  # embedding row (+ untied decoder row) + bias
    assert model.num_parameters() == count + 14 * per_token
    model.save_pretrained(tmp_path)
    again = cls.from_pretrained(tmp_path)
    np.testing.assert_array_equal(to_numpy(again(input_ids=ids).logits), to_numpy(model(input_ids=ids).logits))


# ----------------------------------------------------------------------------------------------------------------
# TF: the reference TF's embedding getters / setters, get_bias / set_bias / get_lm_head, gradient checkpointing
@pytest.fixture
def tf_mod():
    if _unavailable("tf"):
        pytest.skip("tf implementation unavailable")
    return REGISTRY["tf"].implementation()


def _tf_mlm_logits(model, ids, table: np.ndarray) -> np.ndarray:
    """The legacy tied head by hand: transform(hidden) @ table^T + bias."""
    head = model.get_lm_head()
    hidden = model.deberta(input_ids=ids).last_hidden_state
    return np.asarray(head.transform(hidden)) @ table.T + np.asarray(head.bias)


def test_tf_input_and_output_embeddings(tf_mod, tmp_path):
    """set_input_embeddings takes a [vocab, E] table (the reference TF's tf.Variable, or an array, or our embedding
    layer); the variable keeps its path, the tied decoder follows it, and the model saves and reloads."""
    import tensorflow as tf

    model = tf_mod.TFDebertaV2ForMaskedLM.from_config(tiny_config(), seed=0)
    emb = model.get_input_embeddings()
    path = emb.embeddings.path
    assert emb.weight is emb.embeddings.value and model.get_output_embeddings() is emb  # the tf.Variable
    bias = model.get_bias()
    assert set(bias) == {"bias"} and isinstance(bias["bias"], tf.Variable)  # the reference TF's type
    assert bias["bias"] is model.cls.predictions.bias.value and model.get_lm_head() is model.cls.predictions
    ids = np.array([[1, 2, 3, 4]])
    new = np.random.default_rng(1).normal(size=(TINY["vocab_size"], TINY["hidden_size"])).astype(np.float32)
    model.set_input_embeddings(tf.Variable(new))
    assert model.get_input_embeddings() is emb and emb.embeddings.path == path
    np.testing.assert_array_equal(emb.weight.numpy(), new)
    np.testing.assert_allclose(model(input_ids=ids).logits.numpy(), _tf_mlm_logits(model, ids, new), atol=1e-5)
    # a bigger vocabulary, with its bias: config.vocab_size follows, the tied decoder too, and it saves
    bigger = np.concatenate([new, new[:6] * 2])
    model.set_input_embeddings(bigger)
    model.set_bias({"bias": np.arange(56, dtype=np.float32) / 100})
    assert model.config.vocab_size == 56 and model.get_bias()["bias"].shape == (56,)
    logits = model(input_ids=ids).logits.numpy()
    np.testing.assert_allclose(logits, _tf_mlm_logits(model, ids, bigger), atol=1e-5)
    assert len(model.canonical_variables()) == len(model.weights)  # no stray variable
    model.save_pretrained(tmp_path)
    np.testing.assert_array_equal(tf_mod.TFDebertaV2ForMaskedLM.from_pretrained(tmp_path)(input_ids=ids).logits,
                                  logits)
    # tied: set_output_embeddings sets the word embeddings, as the reference TF
    model.set_output_embeddings(bigger[::-1])
    np.testing.assert_array_equal(model.get_input_embeddings().weight.numpy(), bigger[::-1])
    with pytest.raises(ValueError, match=r"\[vocab, 16\]"):
        model.set_input_embeddings(np.zeros((50, 8), np.float32))
    for task in ("sequence-classification", "question-answering"):
        other = tf_mod.MODEL_CLASSES[task].from_config(tiny_config(), seed=0)
        assert other.get_output_embeddings() is None and other.get_bias() is None and other.get_lm_head() is None
        assert other.get_input_embeddings().weight.shape == (TINY["vocab_size"], TINY["hidden_size"])


def test_tf_untied_decoder_set_output_embeddings(tf_mod):
    model = tf_mod.TFDebertaV2ForMaskedLM.from_config(tiny_config(tie_word_embeddings=False), seed=0)
    decoder = model.get_output_embeddings()
    assert decoder is model.cls.predictions.decoder and decoder is not model.get_input_embeddings()
    words = model.get_input_embeddings().weight.numpy().copy()
    table = np.random.default_rng(2).normal(size=(TINY["vocab_size"], TINY["hidden_size"])).astype(np.float32)
    model.set_output_embeddings(table)  # canonical [vocab, E]
    np.testing.assert_array_equal(decoder.kernel.numpy(), table.T)
    np.testing.assert_array_equal(model.get_input_embeddings().weight.numpy(), words)  # untouched
    ids = np.array([[1, 2, 3]])
    head = model.get_lm_head()
    hidden = np.asarray(head.transform(model.deberta(input_ids=ids).last_hidden_state))
    np.testing.assert_allclose(model(input_ids=ids).logits.numpy(), hidden @ table.T + np.asarray(head.bias),
                               atol=1e-5)


@pytest.mark.parametrize("task", ["masked-lm", "sequence-classification"])
def test_tf_gradient_checkpointing_keeps_gradients(tf_mod, task):
    """tf.recompute_grad around each layer: the same loss, gradients and attentions, eagerly and in a tf.function,
    and in training (dropout) with the same seed, on a fixture checkpoint (v2-conv: nGiE conv beside layer 0,
    relative embeddings with LayerNorm)."""
    import tensorflow as tf

    case = load_case("v2-conv", task)
    model = tf_mod.MODEL_CLASSES[task].from_pretrained(case.directory)

    assert model.config.hidden_dropout_prob > 0 and model.config.attention_probs_dropout_prob > 0

    def run(training=False):
        tf.random.set_seed(0)  # training: the same dropout masks in both runs
        with tf.GradientTape() as tape:
            out = model(**case.inputs, output_attentions=True, training=training)
            loss = tf.reduce_mean(out.loss)
        grads = tape.gradient(loss, model.trainable_variables)
        return loss, [tf.convert_to_tensor(g) for g in grads], out.attentions

    loss, plain, attentions = run()
    training = run(training=True)
    assert abs(float(training[0]) - float(loss)) > 1e-4  # dropout is on
    assert not model.is_gradient_checkpointing
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing and model.deberta.encoder.gradient_checkpointing
    # with dropout, the recomputed layers draw the masks of the forward pass again
    np.testing.assert_allclose(run(training=True)[0].numpy(), training[0].numpy(), rtol=0, atol=1e-6)
    for a, b in zip(training[1], run(training=True)[1]):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=0, atol=1e-6, err_msg="training")
    for how, (loss2, checkpointed, attentions2) in (("eager", run()), ("tf.function", tf.function(run)())):
        assert float(loss2) == pytest.approx(float(loss), abs=1e-6), how
        assert len(checkpointed) == len(plain) == len(model.trainable_variables)
        for v, a, b in zip(model.trainable_variables, plain, checkpointed):
            np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=0, atol=1e-6, err_msg=f"{how}: {v.path}")
        for a, b in zip(attentions, attentions2):
            np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=0, atol=1e-6, err_msg=how)
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing


def test_from_pretrained_of_a_missing_checkpoint_raises_an_oserror(fw, tmp_path):
    """As the reference's from_pretrained: a missing path, a directory without config.json and a directory without
    weights raise an OSError (also our CheckpointError / ConfigError, naming the path)."""
    from deberta_xf.errors import ConfigError

    cls = fw.model_class("base")
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    tiny_config().save_pretrained(str(no_weights))
    for path, ours, words in ((tmp_path / "missing", CheckpointError, "no such checkpoint file or directory"),
                              (tmp_path, ConfigError, "no config.json in this checkpoint directory"),
                              (no_weights, CheckpointError, "no weights file found")):
        with pytest.raises(OSError) as info:
            cls.from_pretrained(str(path))
        assert isinstance(info.value, ours) and str(path) in str(info.value) and words in str(info.value)
