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
