"""keras-hub's DeBERTa-v3 model checks, run against deberta_xf's TF (Keras 3) classes (issue 11).

Our own tests of what keras_hub/src/models/deberta_v3/deberta_v3_backbone_test.py, deberta_v3_text_classifier_test.py
and deberta_v3_masked_lm_test.py check through the helpers of keras_hub/src/tests/test_case.py (backbone, task,
serialization, precision and saving checks), written for our classes.

keras-hub names -> ours:

- ``DebertaV3Backbone`` -> ``TFDebertaV2Model`` (its output: ``last_hidden_state``);
  ``DebertaV3TextClassifier`` -> ``TFDebertaV2ForSequenceClassification`` (``logits``);
  ``DebertaV3MaskedLM`` -> ``TFDebertaV2ForMaskedLM`` (``logits`` at every position instead of at
  ``mask_positions``; the masked-LM labels are ``labels`` with -100 where nothing is predicted);
- init kwargs ``vocabulary_size`` / ``num_layers`` / ``num_heads`` / ``hidden_dim`` / ``intermediate_dim`` /
  ``max_sequence_length`` / ``bucket_size`` / ``num_classes`` -> the DebertaV2Config fields ``vocab_size`` /
  ``num_hidden_layers`` / ``num_attention_heads`` / ``hidden_size`` / ``intermediate_size`` /
  ``max_position_embeddings`` / ``position_buckets`` / ``num_labels`` (keras-hub's DeBERTa-v3 attention is the
  v3 configuration: relative attention with log buckets, c2p + p2c, shared keys, LayerNorm'd relative
  embeddings, no absolute positions); ``dtype`` is the model's ``dtype`` argument;
- inputs ``token_ids`` / ``padding_mask`` -> ``input_ids`` / ``attention_mask``;
- ``backbone.token_embedding`` -> ``model.get_input_embeddings()``.

Not ported: preprocessors and tokenizers (our models take token ids: tests/test_tokenizers.py covers the
tokenizer), presets (downloads), run_quantization_test (Keras' ``quantize`` rewrites ``keras.layers.Dense`` /
``EinsumDense``; ours are the canonical-weight layers of deberta_xf, which ``quantize`` does not apply to).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from deberta_xf.frameworks import REGISTRY

if REGISTRY["tf"].available() is not None:
    pytest.skip(f"tf: {REGISTRY['tf'].available()}", allow_module_level=True)

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import ops, tree  # noqa: E402

from deberta_xf import DebertaV2Config  # noqa: E402

_tf = REGISTRY["tf"].implementation()

# keras-hub's init_kwargs of the DeBERTa-v3 tests, in DebertaV2Config's names (see the module docstring)
INIT_KWARGS = dict(vocab_size=10, num_hidden_layers=2, num_attention_heads=2, hidden_size=2, intermediate_size=4,
                   max_position_embeddings=5)
V3 = dict(relative_attention=True, pos_att_type="p2c|c2p", position_buckets=256, share_att_key=True,
          norm_rel_ebd="layer_norm", position_biased_input=False, type_vocab_size=0)


def make(cls, dtype=None, **init_kwargs):
    """``cls(**init_kwargs)`` in keras-hub's spelling: a config from keras-hub's init kwargs (+ ``init_kwargs``)."""
    return cls(DebertaV2Config(**{**INIT_KWARGS, **V3, **init_kwargs}), dtype=dtype)


def input_data():
    return {"input_ids": ops.ones((2, 5), dtype="int32"), "attention_mask": ops.ones((2, 5), dtype="int32")}


def float_dtypes(tensors) -> list[str]:
    names = [keras.backend.standardize_dtype(t.dtype) for t in tensors]
    return [n for n in names if "float" in n]


def assert_config_round_trips(model):
    """keras-hub's serialization check, in our words: ``from_config(get_config())`` and Keras' object
    (de)serialization through JSON rebuild a model of the same class, config and attributes."""
    config = model.get_config()
    attributes = set(dir(model))
    serialized = json.dumps(keras.saving.serialize_keras_object(model))
    rebuilt = [type(model).from_config(config), keras.saving.deserialize_keras_object(json.loads(serialized))]
    for clone in rebuilt:
        assert type(clone) is type(model)
        assert clone.get_config() == config
        assert set(dir(clone)) == attributes


def assert_policy_dtypes(cls, init_kwargs, data):
    """keras-hub's precision check: for each policy, float outputs in its compute dtype, float weights in its
    variable dtype, every sublayer on the policy, and the policy kept by get_config / from_config."""
    for name in ("mixed_float16", "mixed_bfloat16", "bfloat16"):
        policy = keras.mixed_precision.Policy(name)
        model = make(cls, dtype=policy, **init_kwargs)
        outputs = float_dtypes(tree.flatten(model(data)))
        assert outputs and set(outputs) == {policy.compute_dtype}, name
        assert set(float_dtypes(model.weights)) == {policy.variable_dtype}, name
        wrong = [layer.path for layer in model._flatten_layers()
                 if (layer.compute_dtype, layer.variable_dtype) != (policy.compute_dtype, policy.variable_dtype)]
        assert not wrong, (name, wrong)
        assert model.get_config()["dtype"] == name
        assert cls.from_config(model.get_config()).dtype_policy.name == name


def assert_keras_file_round_trip(cls, init_kwargs, data, tmp_path):
    """keras-hub's saving check: ``model.save`` to a .keras file and ``keras.models.load_model`` give a model of
    the same class with the same outputs."""
    model = make(cls, **init_kwargs)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, cls)
    want, got = dict(model(data)), dict(loaded(data))
    assert set(got) == set(want)
    for key in want:
        np.testing.assert_allclose(np.asarray(got[key]), np.asarray(want[key]), atol=1e-6, err_msg=key)


# ---------------------------------------------------------------------------------------------------------------
# deberta_v3_backbone_test.py
def test_backbone_basics():
    """keras-hub's backbone test (expected output shape (2, 5, 2)): config round trip, output shape, the embedding
    layer called on its own, shorter sequences in the same model, predict on arrays and on batched datasets, the
    default name, and the dtype policies."""
    cls, data = _tf.TFDebertaV2Model, input_data()
    backbone = make(cls)
    assert_config_round_trips(backbone)
    assert backbone.name == "tf_deberta_v2_model"

    output = backbone(data)
    assert tuple(output.last_hidden_state.shape) == (2, 5, 2)
    assert tuple(backbone.get_input_embeddings()(ops.zeros((2, 3), dtype="int32")).shape) == (2, 3, 2)
    for length in (2, 3, 4):
        shorter = {k: v[:, :length] for k, v in data.items()}
        assert tuple(backbone(shorter).last_hidden_state.shape) == (2, length, 2)

    predicted = backbone.predict(data, verbose=0)["last_hidden_state"]
    np.testing.assert_allclose(predicted, output.last_hidden_state.numpy(), atol=1e-6)
    arrays = {k: ops.convert_to_numpy(v) for k, v in data.items()}
    for batch_size in (2, 1):
        dataset = tf.data.Dataset.from_tensor_slices(arrays).batch(batch_size)
        np.testing.assert_allclose(backbone.predict(dataset, verbose=0)["last_hidden_state"], predicted, atol=1e-6)

    assert_policy_dtypes(cls, {}, data)


def test_backbone_variable_batch_and_sequence_in_one_traced_function():
    """The backbone's compiled predict function retraces for new shapes; a ``tf.function`` with a [None, None]
    signature serves every batch and sequence size from one graph, with the eager outputs."""
    backbone = make(_tf.TFDebertaV2Model)
    spec = tf.TensorSpec([None, None], tf.int32)
    serve = tf.function(lambda ids, mask: backbone(input_ids=ids, attention_mask=mask).last_hidden_state,
                        input_signature=[spec, spec])
    rng = np.random.default_rng(0)
    for batch, seq in ((1, 5), (3, 2), (2, 4)):
        ids = rng.integers(0, 10, (batch, seq)).astype(np.int32)
        mask = np.ones_like(ids)
        mask[0, -1] = 0
        np.testing.assert_allclose(serve(ids, mask).numpy(),
                                   backbone(input_ids=ids, attention_mask=mask).last_hidden_state.numpy(), atol=1e-5)
    assert len(serve._list_all_concrete_functions()) == 1


def test_backbone_saved_model(tmp_path):
    """keras-hub's test_saved_model for the backbone: a .keras round trip."""
    assert_keras_file_round_trip(_tf.TFDebertaV2Model, {}, input_data(), tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# deberta_v3_text_classifier_test.py / deberta_v3_masked_lm_test.py: the task checks, without a preprocessor
def train_data(task: str):
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 10, (4, 5)).astype(np.int32)
    x = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if task == "sequence-classification":
        return x, np.array([0, 1, 1, 0])  # num_classes=2
    labels = np.full_like(ids, -100)
    labels[:, 1] = ids[:, 1]  # the masked positions' tokens
    return x, labels


@pytest.mark.slow
@pytest.mark.parametrize("task", ["sequence-classification", "masked-lm"])
def test_task_basics(task, tmp_path):
    """keras-hub's task checks: config round trip, predict on arrays and on a dataset (equal), fit(x, y) and
    fit(dataset), the dtype policies, and a .keras round trip."""
    cls = REGISTRY["tf"].model_class(task)
    init_kwargs = {"num_labels": 2} if task == "sequence-classification" else {}
    task_model = make(cls, **init_kwargs)
    assert_config_round_trips(task_model)
    x, y = train_data(task)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(2)

    output = task_model.predict(x, verbose=0)
    expected_shape = (4, 2) if task == "sequence-classification" else (4, 5, 10)
    assert output["logits"].shape == expected_shape
    output_ds = task_model.predict(ds, verbose=0)
    np.testing.assert_allclose(output_ds["logits"], output["logits"], atol=1e-6)

    task_model.compile(optimizer=keras.optimizers.Adam(1e-2))
    before = [w.numpy().copy() for w in task_model.trainable_weights]
    history = task_model.fit(x, y, epochs=2, verbose=0)
    history_ds = task_model.fit(ds, epochs=1, verbose=0)
    assert np.all(np.isfinite(history.history["loss"] + history_ds.history["loss"]))
    changed = [not np.array_equal(b, w.numpy()) for b, w in zip(before, task_model.trainable_weights)]
    assert sum(changed) > len(changed) // 2  # (hidden_dim 2: the loss itself barely moves)
    # evaluate's loss is the model's own loss (one batch of 4: its mean)
    own = float(np.mean(task_model({**x, "labels": y}).loss))
    np.testing.assert_allclose(task_model.evaluate(x, y, batch_size=4, verbose=0), own, rtol=1e-5)

    assert_policy_dtypes(cls, init_kwargs, x)
    assert_keras_file_round_trip(cls, init_kwargs, x, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_fit_keeps_float32_variables(policy):
    """Training under a mixed policy: the variables stay float32 and change, the loss is finite (the model's own
    loss, computed in float32)."""
    x, y = train_data("sequence-classification")
    model = make(_tf.TFDebertaV2ForSequenceClassification, dtype=policy, num_labels=2)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(x, y, epochs=1, batch_size=2, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert {w.dtype for w in model.weights} == {"float32"}
    assert any(not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights))


@pytest.mark.parametrize("length", [4, 300])
def test_unsaturated_buckets_dynamic_length_equals_static(length):
    """keras-hub's config has max_sequence_length (5) < bucket_size / 2, where the log buckets turn back instead of
    saturating: a traced dynamic length (tables up to 257, the formula in graph ops beyond) gives the static
    length's gather rows."""
    config = DebertaV2Config(**{**INIT_KWARGS, **V3})
    dynamic = _tf.relative_position_indices(config, tf.constant(length))
    static = _tf.relative_position_indices(config, length)
    for kind in ("c2p", "p2c"):
        np.testing.assert_array_equal(getattr(dynamic, kind).numpy() + dynamic.rows[0],
                                      getattr(static, kind).numpy() + static.rows[0])
