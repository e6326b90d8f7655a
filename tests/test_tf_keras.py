"""The TF models as proper Keras models (issue 11, item 4): the reference TF's calling conventions (keywords, a dict,
a list/tuple in the reference's order), ``get_config`` / ``from_config`` and a ``.keras`` round trip, and
``compile(optimizer)`` + ``fit`` / ``evaluate`` / ``predict`` on dict inputs with labels using the model's own
loss."""

from __future__ import annotations

import os

import numpy as np
import pytest

from deberta_xf.frameworks import REGISTRY

if REGISTRY["tf"].available() is not None:
    pytest.skip(f"tf: {REGISTRY['tf'].available()}", allow_module_level=True)

import keras  # noqa: E402

import deberta_xf  # noqa: E402

tfm = REGISTRY["tf"].implementation()

TINY = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=20,
            max_position_embeddings=32, relative_attention=True, pos_att_type="p2c|c2p", position_buckets=8,
            position_biased_input=False, type_vocab_size=2)


def config(**overrides):
    return deberta_xf.DebertaV2Config(**{**TINY, **overrides})


def batch(n: int = 8, seq: int = 6):
    rng = np.random.default_rng(0)
    ids = rng.integers(1, TINY["vocab_size"], (n, seq))
    mask = np.ones_like(ids)
    mask[0, -2:] = 0
    return ids, mask, np.zeros_like(ids)


@pytest.fixture(scope="module")
def classifier():
    return tfm.TFDebertaV2ForSequenceClassification.from_config(config(num_labels=3), seed=0)


def test_inputs_as_keywords_dict_list_and_tuple(classifier):
    ids, mask, types = batch()
    want = classifier(input_ids=ids, attention_mask=mask, token_type_ids=types).logits.numpy()
    calls = {
        "dict": classifier({"input_ids": ids, "attention_mask": mask, "token_type_ids": types}),
        "list": classifier([ids, mask, types]),
        "tuple": classifier((ids, mask, types)),
        "dict + keyword": classifier({"input_ids": ids, "attention_mask": mask}, token_type_ids=types),
        "positional": classifier(ids, mask, types),
    }
    for how, out in calls.items():
        np.testing.assert_array_equal(out.logits.numpy(), want, err_msg=how)
    # nested Python lists of ids are ids, not a list of inputs
    np.testing.assert_array_equal(classifier(ids.tolist()).logits.numpy(), classifier(ids).logits.numpy())
    with pytest.raises(ValueError, match="unexpected inputs"):
        classifier({"input_ids": ids, "bogus": ids})
    with pytest.raises(ValueError, match="both in the inputs and as keywords"):
        classifier({"input_ids": ids, "attention_mask": mask}, attention_mask=mask)


def test_list_follows_the_reference_order(classifier):
    """input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, output_attentions,
    output_hidden_states, return_dict, labels: the reference TF call signature."""
    ids, mask, types = batch()
    labels = np.arange(len(ids)) % 3
    out = classifier([ids, mask, types, None, None, True, True, True, labels])
    assert len(out.attentions) == 2 and len(out.hidden_states) == 3 and out.loss is not None
    tup = classifier([ids, mask, types, None, None, False, False, False, labels])
    assert isinstance(tup, tuple) and len(tup) == 2


def test_get_config_from_config_and_keras_file(classifier, tmp_path):
    ids, mask, _ = batch()
    cfg = classifier.get_config()
    assert cfg["deberta_config"]["num_labels"] == 3 and cfg["dtype"] == "float32"
    clone = type(classifier).from_config(cfg)
    assert clone.name == classifier.name and clone.config.num_labels == 3
    assert [tuple(w.shape) for w in clone.weights] == [tuple(w.shape) for w in classifier.weights]
    path = os.path.join(tmp_path, "model.keras")
    classifier.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is type(classifier)
    np.testing.assert_array_equal(loaded({"input_ids": ids, "attention_mask": mask}).logits.numpy(),
                                  classifier({"input_ids": ids, "attention_mask": mask}).logits.numpy())


def test_bfloat16_get_config_keeps_the_dtype():
    model = tfm.TFDebertaV2Model.from_config(config(), dtype="bfloat16")
    clone = tfm.TFDebertaV2Model.from_config(model.get_config())
    assert {w.dtype for w in clone.weights} == {"bfloat16"}


@pytest.mark.slow
@pytest.mark.parametrize("task", ["sequence-classification", "token-classification", "question-answering",
                                  "masked-lm", "multiple-choice"])
def test_compile_fit_evaluate_predict_with_the_models_own_loss(task):
    ids, mask, _ = batch()
    model = REGISTRY["tf"].model_class(task).from_config(config(num_labels=2), seed=0)
    n = len(ids)
    if task == "multiple-choice":
        ids, mask = np.stack([ids, ids[::-1]], 1), np.stack([mask, mask], 1)
    x = {"input_ids": ids, "attention_mask": mask}
    labels = {"sequence-classification": {"labels": np.arange(n) % 2},
              "multiple-choice": {"labels": np.arange(n) % 2},
              "token-classification": {"labels": ids % 2},
              "masked-lm": {"labels": ids},
              "question-answering": {"start_positions": np.arange(n) % 6, "end_positions": np.arange(n) % 6}}[task]
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    before = model.evaluate({**x, **labels}, batch_size=4, verbose=0)
    history = model.fit({**x, **labels}, epochs=3, batch_size=4, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < before
    # labels as y (a dict, or the one label array) train the same way
    model.fit(x, labels, epochs=1, batch_size=4, verbose=0)
    if len(labels) == 1:
        model.fit(x, next(iter(labels.values())), epochs=1, batch_size=4, verbose=0)
    # the evaluated loss is the model's own loss, averaged over batches
    direct = np.mean([float(np.mean(model({k: v[i:i + 4] for k, v in {**x, **labels}.items()}).loss))
                      for i in range(0, n, 4)])
    np.testing.assert_allclose(model.evaluate({**x, **labels}, batch_size=4, verbose=0), direct, rtol=1e-5)
    predicted = model.predict(x, batch_size=4, verbose=0)
    field = "start_logits" if task == "question-answering" else "logits"
    np.testing.assert_allclose(predicted[field], model(x)[field].numpy(), atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# The calls transformers' tests/models/deberta_v2/test_modeling_tf_deberta_v2.py (and its TFModelTesterMixin) make
UPSTREAM = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                max_position_embeddings=512, type_vocab_size=16, relative_attention=False,
                position_biased_input=True, initializer_range=0.02, return_dict=True)
LOSS_SHAPES = {"masked-lm": [1], "token-classification": [1], "sequence-classification": [13],
               "question-answering": [13], "multiple-choice": [13]}


def _upstream_inputs():
    import tensorflow as tf

    rng = np.random.default_rng(3)
    ids = tf.constant(rng.integers(0, 99, (13, 7)), tf.int32)
    mask = tf.constant(np.concatenate([np.ones((13, 1)), rng.integers(0, 2, (13, 6))], 1), tf.int32)
    types = tf.constant(rng.integers(0, 16, (13, 7)), tf.int32)
    return ids, mask, types


def test_upstream_model_calls(tmp_path):
    """TFDebertaV2Model(config=...), a list of inputs, bare ids, ``model(...)[0]``, the config's return_dict, and
    save_pretrained(saved_model=False) / from_pretrained giving the same outputs; save_pretrained(saved_model=True,
    version=2) also writes a SavedModel whose serving signatures (int32 and int64 inputs) give the model's outputs."""
    import tensorflow as tf

    ids, mask, types = _upstream_inputs()
    model = tfm.TFDebertaV2Model(config=deberta_xf.DebertaV2Config(**UPSTREAM))
    assert model([ids, mask]).last_hidden_state.shape == (13, 7, 32)
    out = model(ids, attention_mask=mask)
    assert model(ids).last_hidden_state.shape == (13, 7, 32)
    np.testing.assert_array_equal(out[0].numpy(), out.last_hidden_state.numpy())
    model.save_pretrained(tmp_path, saved_model=False)
    assert os.path.exists(tmp_path / "config.json") and os.path.exists(tmp_path / "tf_model.h5")
    assert not os.path.exists(tmp_path / "saved_model")
    again = tfm.TFDebertaV2Model.from_pretrained(tmp_path)
    np.testing.assert_array_equal(again(ids, attention_mask=mask)[0].numpy(), out[0].numpy())

    model.save_pretrained(tmp_path / "sm", saved_model=True, version=2)
    assert os.path.exists(tmp_path / "sm" / "tf_model.h5")
    loaded = tf.saved_model.load(str(tmp_path / "sm" / "saved_model" / "2"))
    assert set(loaded.signatures) == {"serving_default", "int64_serving"}
    want = model(ids, attention_mask=mask, token_type_ids=types).last_hidden_state.numpy()
    served = loaded.signatures["serving_default"](input_ids=ids, attention_mask=mask, token_type_ids=types)
    assert set(served) == {"last_hidden_state"}  # hidden states / attentions only when the config asks
    np.testing.assert_allclose(served["last_hidden_state"].numpy(), want, atol=1e-5)
    served = loaded.signatures["int64_serving"](
        **{k: tf.cast(v[:4, :5], tf.int64) for k, v in dict(input_ids=ids, attention_mask=mask,
                                                              token_type_ids=types).items()})  # other sizes
    np.testing.assert_allclose(served["last_hidden_state"].numpy(),
                               model(ids[:4, :5], attention_mask=mask[:4, :5], token_type_ids=types[:4, :5])[0].numpy(),
                               atol=1e-5)


@pytest.mark.parametrize("task", list(LOSS_SHAPES))
def test_upstream_heads_and_loss_computation(task):
    """Each head on a dict of inputs (the upstream shapes), and TFModelTesterMixin.test_loss_computation's rules:
    the loss is [batch] or [1], the same with the labels as a keyword, in the dict, or in a list in the signature's
    order; ``return_dict=False`` puts it first; the model's common attributes (embedding layer, bias dict)."""
    import tensorflow as tf

    ids, mask, types = _upstream_inputs()
    num_labels = 3 if task in ("sequence-classification", "token-classification") else 2
    model = REGISTRY["tf"].model_class(task).from_config(deberta_xf.DebertaV2Config(**UPSTREAM, num_labels=num_labels),
                                                         seed=0)
    if task == "multiple-choice":
        ids, mask, types = (tf.stack([x, x[::-1]], 1) for x in (ids, mask, types))
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    out = model(inputs)
    head = {"masked-lm": ("logits", (13, 7, 99)), "sequence-classification": ("logits", (13, 3)),
            "token-classification": ("logits", (13, 7, 3)), "question-answering": ("start_logits", (13, 7)),
            "multiple-choice": ("logits", (13, 2))}[task]
    assert tuple(out[head[0]].shape) == head[1]
    labels = {"masked-lm": {"labels": ids}, "token-classification": {"labels": ids % 3},
              "sequence-classification": {"labels": tf.range(13) % 3}, "multiple-choice": {"labels": tf.range(13) % 2},
              "question-answering": {"start_positions": tf.range(13) % 7, "end_positions": tf.range(13) % 5}}[task]
    loss = model(inputs, **labels).loss
    assert loss.shape.as_list() == LOSS_SHAPES[task]
    names = ["input_ids", "attention_mask", "token_type_ids", "position_ids", "inputs_embeds", "output_attentions",
             "output_hidden_states", "return_dict", *labels]  # the reference TF call signature
    listed = [{**inputs, **labels}.get(n) for n in names]
    for how, got in (("dict", model({**inputs, **labels}).loss), ("list", model(listed).loss),
                     ("tuple output", model(inputs, **labels, return_dict=False)[0])):
        np.testing.assert_array_equal(got.numpy(), loss.numpy(), err_msg=how)
    assert isinstance(model.get_input_embeddings(), keras.layers.Layer)
    if task == "masked-lm":
        assert isinstance(model.get_output_embeddings(), keras.layers.Layer)
        assert all(isinstance(v, tf.Variable) for v in model.get_bias().values())
    else:
        assert model.get_output_embeddings() is None and model.get_bias() is None


def test_saved_model_is_written_atomically_and_replaces_only_a_saved_model(tmp_path, monkeypatch):
    """The SavedModel appears complete or not at all: a failing save leaves nothing (and an earlier SavedModel as
    it was); saving again replaces a SavedModel; a folder of other files at that path is refused and kept."""
    import tensorflow as tf

    model = tfm.TFDebertaV2Model(config=deberta_xf.DebertaV2Config(**UPSTREAM))
    ids, mask, _ = _upstream_inputs()
    target = tmp_path / "m" / "saved_model" / "1"

    def broken_save(*args, **kwargs):
        raise RuntimeError("disk on fire")

    with monkeypatch.context() as m:
        m.setattr(tf.saved_model, "save", broken_save)
        with pytest.raises(RuntimeError, match="disk on fire"):
            model.save_pretrained(tmp_path / "m", saved_model=True)
    assert not (tmp_path / "m").exists()  # nothing left: no partial SavedModel, no folder created for it
    model.save_pretrained(tmp_path / "m", saved_model=True)
    first = sorted(os.listdir(target))
    assert "saved_model.pb" in first and "variables" in first
    with monkeypatch.context() as m:
        m.setattr(tf.saved_model, "save", broken_save)
        with pytest.raises(RuntimeError, match="disk on fire"):
            model.save_saved_model(target)
    assert sorted(os.listdir(target)) == first  # the earlier SavedModel is untouched
    model.save_saved_model(target)  # a SavedModel is replaced
    served = tf.saved_model.load(str(target)).signatures["serving_default"]
    np.testing.assert_allclose(served(input_ids=ids, attention_mask=mask, token_type_ids=tf.zeros_like(ids))[
        "last_hidden_state"].numpy(), model(ids, attention_mask=mask).last_hidden_state.numpy(), atol=1e-5)
    user = tmp_path / "notes"
    user.mkdir()
    (user / "todo.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a SavedModel"):
        model.save_saved_model(user)
    assert (user / "todo.txt").read_text() == "mine" and sorted(os.listdir(user)) == ["todo.txt"]
