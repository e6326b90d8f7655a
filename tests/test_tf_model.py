"""TensorFlow (Keras 3) implementation against the reference fixtures (transformers 4.57.6), and its weight files."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
h5py = pytest.importorskip("h5py")

import deberta_xf  # noqa: E402
from deberta_xf import schema  # noqa: E402
from deberta_xf.tasks import TASKS  # noqa: E402
from deberta_xf.errors import CheckpointError  # noqa: E402
from deberta_xf.tf.modeling_tf_deberta_v2 import MODEL_CLASSES, relative_position_indices  # noqa: E402
from deberta_xf.compare import flatten_outputs  # noqa: E402
from reference_cases import CASES, assert_matches, load_case, load_default_case  # noqa: E402

# (variant, task, weights file) for every fixture case and every file it has
LOADS = [(v, t, w) for v, t in CASES for w in ("model.safetensors", "pytorch_model.bin", "tf_model.h5")
         if os.path.exists(os.path.join(load_case(v, t).directory, w))]


def run(model, case, **extra):
    return flatten_outputs(model(**case.inputs, output_hidden_states=True, output_attentions=True, **extra))


def canonical_equal(a, b) -> None:
    sa, sb = a.canonical_state(), b.canonical_state()
    assert set(sa) == set(sb)
    for name in sa:
        np.testing.assert_array_equal(sa[name], sb[name], err_msg=name)


# ----------------------------------------------------------------------------------------------------------------
# Numbers against the reference
@pytest.mark.parametrize(("variant", "task", "weights"), LOADS, ids=[f"{v}/{t}/{w}" for v, t, w in LOADS])
def test_matches_reference(variant, task, weights):
    case = load_case(variant, task)
    model = MODEL_CLASSES[task].from_pretrained(os.path.join(case.directory, weights),
                                                config=os.path.join(case.directory, "config.json"))
    assert model.weights_path.endswith(weights)
    outputs = run(model, case)
    assert ("loss" in outputs) == (task != "base") and "hidden_states.0" in outputs
    assert_matches(case.pt, outputs, task, case.attention_mask, f"{variant}/{task} vs reference PyTorch")
    if case.tf:  # the reference TF port, where it can represent the config
        assert_matches(case.tf, outputs, task, case.attention_mask, f"{variant}/{task} vs reference TF")


def test_checkpoint_directory_prefers_tf_model_h5(tmp_path):
    case = load_case("v3", "question-answering")
    model = deberta_xf.TFDebertaV2ForQuestionAnswering.from_pretrained(case.directory)
    assert os.path.basename(model.weights_path) == "tf_model.h5"
    dst = tmp_path / "ckpt"
    shutil.copytree(case.directory, dst)
    os.remove(dst / "tf_model.h5")
    model.save_pretrained(tmp_path / "keras", format="keras_h5")
    shutil.copy(tmp_path / "keras" / "model.weights.h5", dst)
    assert os.path.basename(deberta_xf.TFDebertaV2ForQuestionAnswering.from_pretrained(dst).weights_path) == \
        "model.weights.h5"
    os.remove(dst / "model.weights.h5")
    again = deberta_xf.TFDebertaV2ForQuestionAnswering.from_pretrained(dst)
    assert os.path.basename(again.weights_path) == "model.safetensors"
    assert_matches(case.pt, run(again, case), case.task, case.attention_mask)


def test_default_checkpoint_matches_reference():
    case = load_default_case()
    model = deberta_xf.TFDebertaV2ForSequenceClassification.from_pretrained(case.directory)
    outputs = run(model, case)
    assert_matches(case.pt, outputs, case.task, case.attention_mask, "tiny-deberta-v3 vs PyTorch")
    assert_matches(case.tf, outputs, case.task, case.attention_mask, "tiny-deberta-v3 vs TF")


def test_three_dimensional_attention_mask():
    case = load_case("v3", "base")
    model = deberta_xf.TFDebertaV2Model.from_pretrained(case.directory)
    ids, mask2 = case.inputs["input_ids"], case.inputs["attention_mask"]
    outer = mask2[:, None, :] * mask2[:, :, None]
    out3 = model(input_ids=ids, attention_mask=outer).last_hidden_state.numpy()
    out2 = model(input_ids=ids, attention_mask=mask2).last_hidden_state.numpy()
    np.testing.assert_array_equal(out3, out2)
    causal = case.extra["inputs3d.attention_mask"]
    got = model(input_ids=ids, attention_mask=causal).last_hidden_state.numpy()
    keep = mask2.astype(bool)
    assert np.abs(got - case.extra["pt3d.last_hidden_state"])[keep].max() <= 5e-5
    assert np.abs(got - out2)[keep].max() > 1e-2  # the causal mask really changes the result


def test_inputs_embeds_position_ids_and_tf_tensors():
    case = load_case("abs-noshare", "base")
    model = deberta_xf.TFDebertaV2Model.from_pretrained(case.directory)
    ids = case.inputs["input_ids"]
    ref = model(**case.model_inputs).last_hidden_state.numpy()
    embeds = tf.gather(model.embeddings.word_embeddings.embeddings, ids)
    via_embeds = model(inputs_embeds=embeds, attention_mask=case.inputs["attention_mask"],
                       token_type_ids=case.inputs["token_type_ids"]).last_hidden_state.numpy()
    positions = np.broadcast_to(np.arange(ids.shape[1])[None], ids.shape)
    via_positions = model(**case.model_inputs, position_ids=positions).last_hidden_state.numpy()
    shifted = model(**case.model_inputs, position_ids=positions + 1).last_hidden_state.numpy()
    as_tensors = model(**{k: tf.constant(v) for k, v in case.model_inputs.items()}).last_hidden_state.numpy()
    np.testing.assert_array_equal(via_embeds, ref)
    np.testing.assert_array_equal(via_positions, ref)
    np.testing.assert_array_equal(as_tensors, ref)
    assert np.abs(shifted - ref).max() > 1e-2  # absolute positions matter in this variant
    with pytest.raises(ValueError, match="either input_ids or inputs_embeds"):
        model(attention_mask=case.inputs["attention_mask"])


def test_multiple_choice_inputs_embeds():
    case = load_case("v2-conv", "multiple-choice")
    model = deberta_xf.TFDebertaV2ForMultipleChoice.from_pretrained(case.directory)
    embeds = tf.gather(model.deberta.embeddings.word_embeddings.embeddings, case.inputs["input_ids"])  # [B, C, L, E]
    out = model(inputs_embeds=embeds, attention_mask=case.inputs["attention_mask"], labels=case.inputs["labels"])
    assert tuple(out.logits.shape) == case.pt["logits"].shape
    np.testing.assert_allclose(out.logits.numpy(), case.pt["logits"], atol=5e-5, rtol=0)
    np.testing.assert_allclose(float(out.loss), float(case.pt["loss"]), atol=5e-5, rtol=0)


# ----------------------------------------------------------------------------------------------------------------
# Graph mode, XLA, dynamic shapes
@pytest.mark.parametrize(("variant", "task"), [("v3", "masked-lm"), ("v2-conv", "multiple-choice"),
                                               ("emb-proj", "sequence-classification")])
def test_xla_equals_eager(variant, task):
    case = load_case(variant, task)
    model = MODEL_CLASSES[task].from_pretrained(case.directory)
    eager = flatten_outputs(model(**case.inputs, output_hidden_states=True))
    compiled = tf.function(lambda **kw: model(**kw, output_hidden_states=True), jit_compile=True)
    xla = flatten_outputs(compiled(**case.inputs))
    assert set(xla) == set(eager)
    for name in eager:  # MLM logits reach ~25 in magnitude: within 1e-5 relative there, 1e-5 absolute elsewhere
        np.testing.assert_allclose(xla[name], eager[name], rtol=1e-5, atol=1e-5, err_msg=name)
    assert_matches(case.pt, xla, task, case.attention_mask, f"{variant}/{task} XLA vs reference")
    compiled(**case.inputs)
    assert compiled.experimental_get_tracing_count() == 1


def test_tf_function_two_shapes_without_retracing():
    case = load_case("v3", "token-classification")
    model = deberta_xf.TFDebertaV2ForTokenClassification.from_pretrained(case.directory)
    fn = tf.function(lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits)
    ids, mask = case.inputs["input_ids"], case.inputs["attention_mask"]
    short_ids, short_mask = ids[:2, :11], mask[:2, :11]
    for a, m in ((ids, mask), (short_ids, short_mask), (ids, mask), (short_ids, short_mask)):
        np.testing.assert_allclose(fn(a, m).numpy(), model(input_ids=a, attention_mask=m).logits.numpy(),
                                   atol=1e-5, rtol=0)
    assert fn.experimental_get_tracing_count() == 2
    keep = mask.astype(bool)
    assert np.abs(fn(ids, mask).numpy() - case.pt["logits"])[keep].max() <= 5e-5


@pytest.mark.parametrize("variant", ["v3", "abs-noshare", "emb-proj"])
def test_dynamic_batch_and_length(variant):
    case = load_case(variant, "base")
    model = deberta_xf.TFDebertaV2Model.from_pretrained(case.directory)
    spec = tf.TensorSpec([None, None], tf.int64)
    fn = tf.function(lambda ids, mask, types: model(input_ids=ids, attention_mask=mask,
                                                    token_type_ids=types).last_hidden_state,
                     input_signature=[spec, spec, spec])
    ids, mask = case.inputs["input_ids"], case.inputs["attention_mask"]
    types = case.inputs.get("token_type_ids", np.zeros_like(ids))
    got = fn(ids, mask, types).numpy()
    keep = mask.astype(bool)
    assert np.abs(got - case.pt["last_hidden_state"])[keep].max() <= 5e-5
    for rows, length in ((1, 1), (2, 9)):
        a, m, t = ids[:rows, :length], mask[:rows, :length], types[:rows, :length]
        np.testing.assert_allclose(fn(a, m, t).numpy(),
                                   model(input_ids=a, attention_mask=m, token_type_ids=t).last_hidden_state.numpy(),
                                   atol=1e-5, rtol=0)
    assert fn.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("variant", ["v3", "abs-noshare", "emb-proj", "no-rel"])
def test_dynamic_position_index_equals_static(variant):
    """The graph path (table over i - j) gives the same rows as the NumPy path of deberta_xf.relative_position, also far
    beyond the bucketed / clipped range."""
    config = deberta_xf.DebertaV2Config.from_pretrained(load_case(variant, "base").directory, relative_attention=True)
    for length in (1, 2, 7, 40, 130, 700):
        static = relative_position_indices(config, length)
        dynamic = relative_position_indices(config, tf.constant(length))
        assert dynamic.rows == (0, 2 * config.att_span)
        for term in ("c2p", "p2c"):
            if term in config.pos_att_types:
                np.testing.assert_array_equal(getattr(static, term).numpy() + static.rows[0],
                                              getattr(dynamic, term).numpy(), err_msg=f"{term} L={length}")
            else:
                assert getattr(static, term) is None and getattr(dynamic, term) is None


# ----------------------------------------------------------------------------------------------------------------
# Losses, dropout, dtype, factory
def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_losses_follow_reference_rules():
    case = load_case("v3", "sequence-classification")
    model = deberta_xf.TFDebertaV2ForSequenceClassification.from_pretrained(case.directory)
    inputs = case.model_inputs
    logits = model(**inputs).logits.numpy().astype(np.float64)
    loss = float(model(**inputs, labels=np.array([-1, 1, -5])).loss)  # rows with a negative label are ignored
    assert loss == pytest.approx(-_log_softmax(logits[1:2])[0, 1], abs=1e-5)
    assert float(model(**inputs, labels=np.array([-1, -1, -1])).loss) == 0.0
    soft = np.array([[0.5, 0.5], [1.0, 0.0], [0.2, 0.8]], dtype=np.float32)
    assert float(model(**inputs, labels=soft).loss) == pytest.approx(
        -(_log_softmax(logits) * soft).sum(-1).mean(), abs=1e-5)
    regression = deberta_xf.TFDebertaV2ForSequenceClassification.from_config(
        deberta_xf.DebertaV2Config.from_pretrained(case.directory, num_labels=1), seed=0)
    target = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    out = regression(**inputs, labels=target)
    assert float(out.loss) == pytest.approx(((out.logits.numpy()[:, 0] - target) ** 2).mean(), abs=1e-6)
    multi = deberta_xf.TFDebertaV2ForSequenceClassification.from_pretrained(
        case.directory, problem_type="multi_label_classification")
    labels = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
    x = multi(**inputs).logits.numpy().astype(np.float64)
    bce = np.mean(np.maximum(x, 0) - x * labels + np.log1p(np.exp(-np.abs(x))))
    assert float(multi(**inputs, labels=labels).loss) == pytest.approx(bce, abs=1e-6)


def test_question_answering_and_token_losses():
    case = load_case("abs-noshare", "question-answering")  # one start position is beyond the sequence: ignored
    model = deberta_xf.TFDebertaV2ForQuestionAnswering.from_pretrained(case.directory)
    out = model(**case.inputs)
    start, end = out.start_logits.numpy(), out.end_logits.numpy()
    s, e = case.inputs["start_positions"], case.inputs["end_positions"]
    kept = s < start.shape[1]
    expected = (-_log_softmax(start)[kept, s[kept]].mean() - _log_softmax(end)[np.arange(3), e].mean()) / 2
    assert float(out.loss) == pytest.approx(expected, abs=1e-5)
    tok = load_case("v3", "token-classification")
    model = deberta_xf.TFDebertaV2ForTokenClassification.from_pretrained(tok.directory)
    out = model(**tok.inputs)
    labels = tok.inputs["labels"].reshape(-1)
    logp = _log_softmax(out.logits.numpy().reshape(labels.size, -1))
    kept = labels != -100
    assert float(out.loss) == pytest.approx(-logp[kept, labels[kept]].mean(), abs=1e-5)


def test_training_mode_enables_dropout():
    case = load_case("v2-conv", "base")
    model = deberta_xf.TFDebertaV2Model.from_pretrained(case.directory)
    a = model(**case.model_inputs, training=True).last_hidden_state.numpy()
    b = model(**case.model_inputs, training=True).last_hidden_state.numpy()
    assert np.abs(a - b).max() > 1e-3
    c = model(**case.model_inputs).last_hidden_state.numpy()
    d = model.call(**case.model_inputs, training=False).last_hidden_state.numpy()
    np.testing.assert_array_equal(c, d)


def test_bfloat16_dtype():
    case = load_case("v3", "base")
    model = deberta_xf.TFDebertaV2Model.from_pretrained(case.directory, dtype="bfloat16")
    assert {v.dtype for v in model.weights} == {"bfloat16"}
    out = model(**case.model_inputs).last_hidden_state
    assert out.dtype == tf.bfloat16
    keep = case.attention_mask.astype(bool)
    err = np.abs(out.numpy().astype(np.float32) - case.pt["last_hidden_state"])[keep].max()
    assert 0 < err < 0.5


@pytest.mark.parametrize("task", TASKS)
def test_create_model(task):
    case = load_case("v2-conv", task)
    model = deberta_xf.create_model("tf", task, checkpoint=case.directory)
    assert isinstance(model, MODEL_CLASSES[task]) and isinstance(model, keras.Model)
    assert_matches(case.pt, run(model, case), task, case.attention_mask, f"create_model tf {task}")
    fresh = deberta_xf.create_model("tf", task, config=os.path.join(case.directory, "config.json"))
    assert isinstance(fresh, MODEL_CLASSES[task])
    assert set(fresh.canonical_state()) == set(schema.expected_shapes(fresh.config, task))


# ----------------------------------------------------------------------------------------------------------------
# The variable tree and the weight files
def test_variable_paths_mirror_canonical_names():
    case = load_case("abs-noshare", "masked-lm")
    model = deberta_xf.TFDebertaV2ForMaskedLM.from_pretrained(case.directory)
    paths = {v.path for v in model.weights}
    assert "tf_deberta_v2_for_masked_lm/deberta/encoder/layer/1/attention/self/pos_query_proj/kernel" in paths
    assert "tf_deberta_v2_for_masked_lm/cls/predictions/transform/LayerNorm/gamma" in paths
    expected = schema.expected_shapes(model.config, "masked-lm")
    assert paths == {f"{model.name}/{schema.framework_name(n, 'tf', '/')}" for n in expected}
    for name, variable in model.canonical_variables().items():
        assert tuple(variable.shape) == schema.framework_shape(name, expected[name], "tf")
    base = deberta_xf.TFDebertaV2Model.from_pretrained(load_case("v2-conv", "base").directory)
    assert "tf_deberta_v2_model/encoder/conv/conv/kernel" in {v.path for v in base.weights}


@pytest.mark.parametrize(("variant", "task"), [("emb-proj", "sequence-classification"), ("abs-noshare", "masked-lm"),
                                               ("v3-lmpred", "masked-lm")])
def test_save_load_round_trip_is_exact(tmp_path, variant, task):
    case = load_case(variant, task)
    model = MODEL_CLASSES[task].from_pretrained(case.directory)
    model.save_pretrained(tmp_path / "h5")
    assert sorted(os.listdir(tmp_path / "h5")) == ["config.json", "tf_model.h5"]
    model.save_pretrained(tmp_path / "keras", format="keras_h5")
    assert sorted(os.listdir(tmp_path / "keras")) == ["config.json", "model.weights.h5"]
    for directory in ("h5", "keras"):
        again = MODEL_CLASSES[task].from_pretrained(tmp_path / directory)
        assert again.config == model.config
        canonical_equal(model, again)
        assert_matches(case.pt, run(again, case), task, case.attention_mask)


def test_tf_model_h5_layout(tmp_path):
    """What we write has the reference's Keras-2 layout: layer groups, weight_names, model-name level, renames."""
    case = load_case("abs-noshare", "masked-lm")
    model = deberta_xf.TFDebertaV2ForMaskedLM.from_pretrained(case.directory)
    model.save_pretrained(tmp_path)
    with h5py.File(tmp_path / "tf_model.h5", "r") as ours, h5py.File(os.path.join(case.directory, "tf_model.h5"),
                                                                     "r") as ref:
        assert list(ours.attrs["layer_names"]) == list(ref.attrs["layer_names"]) == ["deberta", "cls"]

        def names(f, layer):
            return sorted(n.split("/", 1)[1] for n in f[layer].attrs["weight_names"])

        for layer in ("deberta", "cls"):
            assert names(ours, layer) == names(ref, layer)  # same variables, up to the model's instance name
            for weight_name in ours[layer].attrs["weight_names"]:
                ref_name = next(n for n in ref[layer].attrs["weight_names"]
                                if n.split("/", 1)[1] == weight_name.split("/", 1)[1])
                np.testing.assert_array_equal(ours[layer][weight_name][()], ref[layer][ref_name][()])
        assert "tf_deberta_v2_for_masked_lm/deberta/encoder/layer_._0/attention/self/pos_q_proj/kernel:0" in \
            ours["deberta"]
        assert list(ours["top_level_model_weights"].attrs["weight_names"]) == []


def test_long_weight_names_are_chunked(tmp_path):
    config = deberta_xf.DebertaV2Config(vocab_size=50, hidden_size=8, num_hidden_layers=40, num_attention_heads=2,
                                   intermediate_size=8, max_position_embeddings=16, relative_attention=True,
                                   position_buckets=4, position_biased_input=False, pos_att_type="p2c|c2p")
    model = deberta_xf.TFDebertaV2ForSequenceClassification.from_config(config, seed=0)
    model.save_pretrained(tmp_path)
    with h5py.File(tmp_path / "tf_model.h5", "r") as f:
        attrs = set(f["deberta"].attrs)
        assert "weight_names" not in attrs and {"weight_names0", "weight_names1"} <= attrs
        listed = sum(len(f["deberta"].attrs[a]) for a in attrs)
    assert listed == len(model.deberta.weights)
    again = deberta_xf.TFDebertaV2ForSequenceClassification.from_pretrained(tmp_path)
    canonical_equal(model, again)


def _keras_tree(path) -> dict:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(
            name, (np.asarray(obj[()]) if isinstance(obj, h5py.Dataset) else None, dict(obj.attrs))))
    return out


KERAS_CASES = [("emb-proj", t) for t in TASKS] + [("abs-noshare", "base"), ("v3-lmpred", "masked-lm")]


@pytest.mark.parametrize(("variant", "task"), KERAS_CASES, ids=[f"{v}/{t}" for v, t in KERAS_CASES])
def test_keras_weights_file_is_what_keras_writes_and_reads(tmp_path, variant, task):
    """convert.keras_h5 (plain h5py) writes exactly the file Keras's save_weights writes, Keras's load_weights reads
    ours, and our reader reads Keras's."""
    case = load_case(variant, task)
    model = MODEL_CLASSES[task].from_pretrained(case.directory)
    model.save_weights(str(tmp_path / "keras.weights.h5"))
    model.save_pretrained(tmp_path / "ours", format="keras_h5")
    theirs, ours = _keras_tree(tmp_path / "keras.weights.h5"), _keras_tree(tmp_path / "ours" / "model.weights.h5")
    assert set(theirs) == set(ours)
    for key, (value, attrs) in theirs.items():
        assert ours[key][1] == attrs, key
        if value is not None:
            np.testing.assert_array_equal(ours[key][0], value, err_msg=key)
    fresh = MODEL_CLASSES[task].from_config(model.config, seed=123)
    fresh.load_weights(str(tmp_path / "ours" / "model.weights.h5"))
    canonical_equal(model, fresh)
    from deberta_xf.formats import open_weights

    with open_weights(str(tmp_path / "keras.weights.h5")) as reader:
        state = model.canonical_state()
        assert set(reader.keys()) == set(state)
        for name, array in state.items():
            np.testing.assert_array_equal(reader.read(name), array, err_msg=name)


# ----------------------------------------------------------------------------------------------------------------
# Bad input: a CheckpointError naming the variable
def _copy_case(tmp_path, variant="v3", task="base"):
    dst = tmp_path / "ckpt"
    shutil.copytree(load_case(variant, task).directory, dst)
    return dst


def _edit_weight_names(group, edit) -> None:
    names = [n.encode() for n in edit(list(group.attrs["weight_names"]))]
    del group.attrs["weight_names"]
    group.attrs["weight_names"] = names


def test_tf_h5_missing_variable(tmp_path):
    dst = _copy_case(tmp_path)
    with h5py.File(dst / "tf_model.h5", "r+") as f:
        group = f["deberta"]
        gone = next(n for n in group.attrs["weight_names"] if n.endswith("layer_._1/attention/self/key_proj/bias:0"))
        del group[gone]
        _edit_weight_names(group, lambda names: [n for n in names if n != gone])
    with pytest.raises(CheckpointError, match=r"(?s)tf_model\.h5.*missing 1 required tensor\(s\): "
                                              r"encoder\.layer\.1\.attention\.self\.key_proj\.bias"):
        deberta_xf.TFDebertaV2Model.from_pretrained(dst)


def test_tf_h5_listed_but_not_stored(tmp_path):
    dst = _copy_case(tmp_path)
    with h5py.File(dst / "tf_model.h5", "r+") as f:
        group = f["deberta"]
        name = next(n for n in group.attrs["weight_names"] if n.endswith("rel_embeddings.weight:0"))
        del group[name]
    with pytest.raises(CheckpointError, match=r"(?s)tf_model\.h5: variable '.*rel_embeddings\.weight:0' of layer "
                                              r"'deberta' is listed in 'weight_names' but not stored"):
        deberta_xf.TFDebertaV2Model.from_pretrained(dst)


def test_tf_h5_misshapen_variable(tmp_path):
    dst = _copy_case(tmp_path)
    with h5py.File(dst / "tf_model.h5", "r+") as f:
        group = f["deberta"]
        name = next(n for n in group.attrs["weight_names"]
                    if n.endswith("layer_._0/attention/self/query_proj/kernel:0"))
        del group[name]
        group.create_dataset(name, data=np.zeros((32, 16), np.float32))
    with pytest.raises(CheckpointError, match=r"(?s)tf_model\.h5.*'deberta\.encoder\.layer\.0\.attention\.self\."
                                              r"query_proj\.weight' has shape \[16, 32\] but the config expects "
                                              r"\[32, 32\]"):
        deberta_xf.TFDebertaV2Model.from_pretrained(dst)


def test_tf_h5_from_another_model(tmp_path):
    """A Keras-2 weights file of a BERT (the reference's layout, other names) is not taken for a DeBERTa."""
    from deberta_xf.formats.tf_h5 import save_attributes

    dst = _copy_case(tmp_path)
    with h5py.File(dst / "tf_model.h5", "w") as f:
        save_attributes(f, "layer_names", [b"bert"])
        group = f.create_group("bert")
        names = ["tf_bert_model/bert/embeddings/word_embeddings/weight:0",
                 "tf_bert_model/bert/encoder/layer_._0/attention/self/query/kernel:0"]
        save_attributes(group, "weight_names", [n.encode() for n in names])
        for n in names:
            group.create_dataset(n, data=np.zeros((4, 4), np.float32))
    with pytest.raises(CheckpointError, match=r"(?s)tf_model\.h5.*missing \d+ required tensor\(s\): "
                                              r"embeddings\.word_embeddings\.weight"):
        deberta_xf.TFDebertaV2Model.from_pretrained(dst)


def test_keras_3_file_named_tf_model_h5_and_not_hdf5(tmp_path):
    dst = _copy_case(tmp_path)
    model = deberta_xf.TFDebertaV2Model.from_pretrained(dst)
    model.save_weights(str(tmp_path / "x.weights.h5"))
    shutil.copy(tmp_path / "x.weights.h5", dst / "tf_model.h5")
    with pytest.raises(CheckpointError, match=r"(?s)tf_model\.h5: not a Keras-2 .* no 'layer_names' attribute "
                                              r"\(it looks like a Keras 3 weights file"):
        deberta_xf.TFDebertaV2Model.from_pretrained(dst)
    (dst / "tf_model.h5").write_bytes(b"definitely not hdf5" * 10)
    with pytest.raises(CheckpointError, match=r"(?s)tf_model\.h5: not a readable HDF5 file"):
        deberta_xf.TFDebertaV2Model.from_pretrained(dst)


def test_keras_h5_missing_misshapen_and_foreign(tmp_path):
    dst = _copy_case(tmp_path)
    os.remove(dst / "tf_model.h5")
    model = deberta_xf.TFDebertaV2Model.from_pretrained(dst)
    model.save_pretrained(tmp_path / "k", format="keras_h5")
    path = dst / "model.weights.h5"
    shutil.copy(tmp_path / "k" / "model.weights.h5", path)
    with h5py.File(path, "r+") as f:
        del f["encoder/layer/tf_deberta_v2_layer_1/output_/dense/vars/1"]
    with pytest.raises(CheckpointError, match=r"(?s)model\.weights\.h5.*missing 1 required tensor\(s\): "
                                              r"encoder\.layer\.1\.output\.dense\.bias"):
        deberta_xf.TFDebertaV2Model.from_pretrained(dst)
    shutil.copy(tmp_path / "k" / "model.weights.h5", path)
    with h5py.File(path, "r+") as f:
        del f["embeddings/word_embeddings/vars/0"]
        f["embeddings/word_embeddings/vars"].create_dataset("0", data=np.zeros((7, 32), np.float32))
    with pytest.raises(CheckpointError, match=r"(?s)'embeddings\.word_embeddings\.weight' has shape \[7, 32\] but the "
                                              r"config expects \[211, 32\]"):
        deberta_xf.TFDebertaV2Model.from_pretrained(dst)
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    other.save_weights(str(path))
    with pytest.raises(CheckpointError, match=r"(?s)model\.weights\.h5.*missing \d+ required tensor\(s\): "
                                              r"embeddings\.word_embeddings\.weight"):
        deberta_xf.TFDebertaV2Model.from_pretrained(dst)
