"""What a Hugging Face TF user does with a model, beyond tests/test_tf_keras.py and tests/test_tf_model.py (issue 11).

The behaviours transformers' TF model tests rely on and that deberta_xf's TF classes had to gain: a model called on
``keras.Input`` tensors inside a functional ``keras.Model``; ``compile(metrics=...)`` with the model's own loss; mixed
precision policies, given or global; resizing the vocabulary both ways; traced sequence lengths beyond the relative
position tables; ``main_input_name`` and the call order; SavedModel signatures read by a process that never imported
deberta_xf; attention / hidden-state shapes; ``jit_compile`` training; weights exchanged with the torch models through
files.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import numpy as np
import pytest

from deberta_xf.frameworks import REGISTRY

if REGISTRY["tf"].available() is not None:
    pytest.skip(f"tf: {REGISTRY['tf'].available()}", allow_module_level=True)

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from deberta_xf import DebertaV2Config  # noqa: E402
from deberta_xf.tasks import TASKS  # noqa: E402

tfm = REGISTRY["tf"].implementation()

SMALL = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24,
             max_position_embeddings=64, relative_attention=True, pos_att_type="p2c|c2p", position_buckets=4,
             max_relative_positions=16, share_att_key=True, norm_rel_ebd="layer_norm", position_biased_input=False,
             type_vocab_size=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2)
HEAD_TASKS = [t for t in TASKS if t != "base"]
CHOICES = 3
FIRST_OUTPUT = {"base": "last_hidden_state", "question-answering": "start_logits"}
CALL_ORDER = ["input_ids", "attention_mask", "token_type_ids", "position_ids", "inputs_embeds", "output_attentions",
              "output_hidden_states", "return_dict"]  # the reference TF call order; then labels, then training


def small_config(**overrides) -> DebertaV2Config:
    return DebertaV2Config(**{**SMALL, **overrides})


def build(task: str, **overrides):
    return REGISTRY["tf"].model_class(task).from_config(small_config(**overrides), seed=0)


def features(task: str, batch: int = 4, seq: int = 7, seed: int = 0) -> dict[str, np.ndarray]:
    """Random ids, a mask with padding in the first row, token types; [batch, CHOICES, seq] for multiple choice."""
    rng = np.random.default_rng(seed)
    shape = (batch, CHOICES, seq) if task == "multiple-choice" else (batch, seq)
    mask = np.ones(shape, np.int32)
    mask[0, ..., -2:] = 0
    return {"input_ids": rng.integers(1, SMALL["vocab_size"], shape).astype(np.int32), "attention_mask": mask,
            "token_type_ids": rng.integers(0, 2, shape).astype(np.int32)}


def labels_for(task: str, batch: int = 4, seq: int = 7, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"masked-lm": lambda: {"labels": rng.integers(0, SMALL["vocab_size"], (batch, seq))},
            "token-classification": lambda: {"labels": rng.integers(0, SMALL["num_labels"], (batch, seq))},
            "sequence-classification": lambda: {"labels": rng.integers(0, SMALL["num_labels"], batch)},
            "multiple-choice": lambda: {"labels": rng.integers(0, CHOICES, batch)},
            "question-answering": lambda: {"start_positions": rng.integers(0, seq, batch),
                                           "end_positions": rng.integers(0, seq, batch)}}[task]()


def first_output(task: str, out) -> np.ndarray:
    return np.asarray(out[FIRST_OUTPUT.get(task, "logits")])


# ----------------------------------------------------------------------------------------------------------------
# Functional Keras models
@pytest.mark.parametrize("task", ["base", "question-answering", "multiple-choice"])
def test_model_inside_a_functional_keras_model(task, tmp_path):
    """Called on ``keras.Input`` tensors the model returns its output fields as symbolic tensors (ModelOutput is a
    keras.tree node); a functional model built from them computes the eager outputs, takes extra Keras layers,
    compiles, and survives a ``.keras`` round trip."""
    model = build(task)
    x = features(task)
    symbolic = {name: keras.Input(shape=value.shape[1:], dtype="int32", name=name) for name, value in x.items()}
    out = model(symbolic)
    expected_fields = {"base": ["last_hidden_state"], "question-answering": ["start_logits", "end_logits"]}
    assert list(out) == expected_fields.get(task, ["logits"])
    assert all(keras.backend.is_keras_tensor(v) for v in out.values())
    functional = keras.Model(symbolic, dict(out))
    eager = model(x)
    for name, value in functional(x).items():
        np.testing.assert_allclose(np.asarray(value), np.asarray(eager[name]), atol=1e-6, err_msg=name)

    extended = keras.Model(symbolic, keras.layers.Dense(2, name="extra")(out[0]))
    extended.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert extended(x).shape[-1] == 2

    fixed = {name: keras.Input(batch_shape=(2, *value.shape[1:]), dtype="int32", name=name)
             for name, value in x.items()}  # a fully static shape, as a serving graph would fix it
    fixed_out = model(fixed)
    assert tuple(fixed_out[0].shape) == (2, *np.shape(eager[0])[1:])

    path = str(tmp_path / "functional.keras")
    functional.save(path)
    restored = keras.models.load_model(path)
    for name, value in restored(x).items():
        np.testing.assert_allclose(np.asarray(value), np.asarray(eager[name]), atol=1e-6, err_msg=name)


@pytest.mark.parametrize("task", list(TASKS))
def test_json_config_and_copied_weights_rebuild_the_model(task):
    """``get_config()`` is JSON (what Keras writes); ``from_config`` of it, or of the DebertaV2Config itself, builds
    the same architecture, and ``set_weights(get_weights())`` makes it compute the same outputs."""
    model = build(task)
    x = features(task)
    want = first_output(task, model(x))
    from_json = type(model).from_config(json.loads(json.dumps(model.get_config())))
    from_deberta_config = type(model).from_config(model.config)
    for clone in (from_json, from_deberta_config):
        assert [tuple(w.shape) for w in clone.weights] == [tuple(w.shape) for w in model.weights]
    assert not np.allclose(first_output(task, from_json(x)), want)  # freshly drawn weights
    from_json.set_weights(model.get_weights())
    np.testing.assert_array_equal(first_output(task, from_json(x)), want)


# ----------------------------------------------------------------------------------------------------------------
# compile(metrics=...) with the model's own loss
def expected_accuracy(task: str, out, labels: dict[str, np.ndarray]) -> float:
    """Each label array against its output's argmax, all of them pooled (question answering: starts and ends)."""
    pairs = ([("start_positions", "start_logits"), ("end_positions", "end_logits")] if task == "question-answering"
             else [("labels", "logits")])
    hits = [np.argmax(np.asarray(out[o]), -1) == labels[k] for k, o in pairs]
    return float(np.mean(np.concatenate([h.ravel() for h in hits])))


@pytest.mark.parametrize("task", [t if t == "sequence-classification" else pytest.param(t, marks=pytest.mark.slow)
                                  for t in HEAD_TASKS])  # ~10 s each (four traced train / test functions)
def test_compiled_metrics_compare_labels_with_outputs(task):
    """The metric keys fit reports, and their values: the accuracy of the model's own outputs against the labels,
    whether the labels come inside x or as y (no learning: SGD with rate 0, no dropout)."""
    model = build(task)
    x, y = features(task), labels_for(task)
    model.compile(optimizer=keras.optimizers.SGD(0.0), metrics=[keras.metrics.SparseCategoricalAccuracy("accuracy")])
    want = expected_accuracy(task, model(x), y)
    own_loss = float(np.mean(model({**x, **y}).loss))
    in_x = model.fit({**x, **y}, validation_data=({**x, **y},), batch_size=4, shuffle=False, verbose=0).history
    as_y = model.fit(x, y, validation_data=(x, y), batch_size=4, shuffle=False, verbose=0).history
    for history in (in_x, as_y):
        assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
        for key in ("accuracy", "val_accuracy"):
            np.testing.assert_allclose(history[key][0], want, atol=1e-6, err_msg=key)
        for key in ("loss", "val_loss"):
            np.testing.assert_allclose(history[key][0], own_loss, rtol=1e-5, err_msg=key)


# ----------------------------------------------------------------------------------------------------------------
# Mixed precision
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("how", ["argument", "global"])
def test_mixed_precision_policy(policy, how):
    """A mixed policy given as ``dtype`` or set globally (no ``dtype``): float32 variables, outputs in the half
    compute dtype, close to the float32 model with the same weights; ``float32`` given explicitly still wins."""
    reference = build("sequence-classification")
    previous = keras.config.dtype_policy()
    try:
        if how == "global":
            keras.mixed_precision.set_global_policy(policy)
            model = tfm.TFDebertaV2ForSequenceClassification(small_config())
            assert tfm.TFDebertaV2Model(small_config(), dtype="float32").compute_dtype == "float32"
        else:
            model = tfm.TFDebertaV2ForSequenceClassification(small_config(), dtype=policy)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    compute = policy.split("_")[1]
    assert model.dtype_policy.name == policy and model.deberta.dtype_policy.name == policy
    model.load_canonical(reference.canonical_state())
    assert {w.dtype for w in model.weights} == {"float32"}
    x = features("sequence-classification")
    out = model(x, output_hidden_states=True)
    assert out.logits.dtype == compute and out.hidden_states[-1].dtype == compute
    tolerance = {"float16": 2e-2, "bfloat16": 1e-1}[compute]
    np.testing.assert_allclose(np.asarray(out.logits, np.float32), reference(x).logits.numpy(), atol=tolerance)


# ----------------------------------------------------------------------------------------------------------------
# Embeddings
@pytest.mark.parametrize("delta", [-10, 10, None])
def test_resize_token_embeddings_shrinks_grows_or_keeps(delta):
    """``get_input_embeddings().weight`` (a tf.Variable) and the bias of ``get_bias()`` take the new vocabulary size;
    the rows both sizes share keep their values (``None``: unchanged)."""
    model = build("masked-lm")
    old_table = model.get_input_embeddings().weight.numpy()
    old_bias = model.get_bias()["bias"].numpy()
    size = None if delta is None else SMALL["vocab_size"] + delta
    model.resize_token_embeddings(size)
    table, bias = model.get_input_embeddings().weight, model.get_bias()["bias"]
    assert isinstance(table, tf.Variable) and isinstance(bias, tf.Variable)
    rows = size or SMALL["vocab_size"]
    assert table.shape == (rows, SMALL["hidden_size"]) and bias.shape == (rows,)
    kept = min(rows, SMALL["vocab_size"])
    np.testing.assert_array_equal(table.numpy()[:kept], old_table[:kept])
    np.testing.assert_array_equal(bias.numpy()[:kept], old_bias[:kept])
    assert model.get_output_embeddings().weight.shape[0] == rows  # tied decoder
    ids = np.array([[1, 2, kept - 1]])
    assert model(input_ids=ids).logits.shape == (1, 3, rows)


# ----------------------------------------------------------------------------------------------------------------
# Traced sequence lengths beyond the relative position tables
@pytest.mark.parametrize("config", [
    dict(),  # 4 log buckets, distances up to 16: tables for |i - j| <= 17, saturated beyond
    dict(max_position_embeddings=5, position_buckets=256, max_relative_positions=-1),  # buckets that turn back
], ids=["saturating", "unsaturated"])
def test_one_trace_serves_lengths_beyond_the_tables(config):
    """A [None, None] signature traced once gives the eager (static-shape) outputs at lengths inside and far beyond
    the tables of the graph path's relative position lookup."""
    model = build("base", **config, initializer_range=0.5)  # weights large enough for every position to count
    spec = tf.TensorSpec([None, None], tf.int32)
    traced = tf.function(lambda ids, mask: model(input_ids=ids, attention_mask=mask).last_hidden_state,
                         input_signature=[spec, spec])
    rng = np.random.default_rng(0)
    for length in (3, 40, 200, 300):
        ids = rng.integers(1, SMALL["vocab_size"], (2, length)).astype(np.int32)
        mask = np.ones_like(ids)
        mask[1, length // 2:] = 0
        np.testing.assert_allclose(traced(ids, mask).numpy(),
                                   model(input_ids=ids, attention_mask=mask).last_hidden_state.numpy(),
                                   atol=1e-5, err_msg=f"length {length}")
    assert traced.experimental_get_tracing_count() == 1


# ----------------------------------------------------------------------------------------------------------------
# Call signature
@pytest.mark.parametrize("task", list(TASKS))
def test_main_input_name_and_call_order(task):
    cls = REGISTRY["tf"].model_class(task)
    names = list(inspect.signature(cls.call).parameters)[1:]
    assert cls.main_input_name == "input_ids" == names[0]
    labels = [n for n in names if n in ("labels", "start_positions", "end_positions")]
    assert names == CALL_ORDER + labels + ["training"]


# ----------------------------------------------------------------------------------------------------------------
# Attentions and hidden states
@pytest.mark.parametrize("task", list(TASKS))
def test_attention_and_hidden_state_shapes(task):
    """One attention map per layer, [rows, heads, L, L], each real query's row a distribution over the real keys
    (padded keys get nothing); one hidden
    state per layer plus the embeddings, [rows, L, hidden]; attentions come last (rows: batch x choices)."""
    model = build(task)
    x = features(task, batch=2, seq=6)
    rows = 2 * CHOICES if task == "multiple-choice" else 2
    out = model(x, output_attentions=True, output_hidden_states=True)
    assert list(out)[-2:] == ["hidden_states", "attentions"]
    assert len(out.attentions) == SMALL["num_hidden_layers"]
    assert len(out.hidden_states) == SMALL["num_hidden_layers"] + 1
    assert {tuple(a.shape) for a in out.attentions} == {(rows, SMALL["num_attention_heads"], 6, 6)}
    assert {tuple(h.shape) for h in out.hidden_states} == {(rows, 6, SMALL["hidden_size"])}
    real = x["attention_mask"].reshape(rows, 1, 6).astype(bool)  # [rows, 1, L]
    for layer in out.attentions:
        weights = np.moveaxis(layer.numpy(), 1, -1)  # [rows, L query, L key, heads]
        np.testing.assert_allclose(weights.sum(2)[real[:, 0]], 1.0, atol=1e-5)
        assert np.all(weights[real[:, 0, :, None] & ~real] < 1e-6)  # real queries give padded keys nothing
    only_attentions = model(x, output_attentions=True)
    assert list(only_attentions)[-1] == "attentions" and "hidden_states" not in only_attentions


# ----------------------------------------------------------------------------------------------------------------
# Input types
@pytest.mark.parametrize("task", list(TASKS))
def test_numpy_int32_int64_tensors_and_embeddings_agree(task):
    model = build(task)
    x = features(task)
    want = first_output(task, model(x))
    variants = {"int64 numpy": {k: v.astype(np.int64) for k, v in x.items()},
                "int64 tensors": {k: tf.constant(v, tf.int64) for k, v in x.items()},
                "keywords": None}
    for how, inputs in variants.items():
        got = model(**x) if inputs is None else model(inputs)
        np.testing.assert_array_equal(first_output(task, got), want, err_msg=how)
    embeds = model.get_input_embeddings()(x["input_ids"])
    via_embeds = model({**{k: v for k, v in x.items() if k != "input_ids"}, "inputs_embeds": embeds})
    np.testing.assert_allclose(first_output(task, via_embeds), want, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# XLA training
@pytest.mark.slow
@pytest.mark.parametrize("task", ["sequence-classification", "question-answering"])
def test_jit_compiled_fit_takes_the_eager_step(task):
    """``compile(jit_compile=True)``: one SGD step on the model's own loss gives the eager step's loss and weights."""
    x, y = features(task), labels_for(task)
    results = []
    for jit in (True, False):
        model = build(task)
        model.compile(optimizer=keras.optimizers.SGD(0.5), jit_compile=jit, run_eagerly=not jit)
        history = model.fit(x, y, batch_size=4, shuffle=False, verbose=0).history
        results.append((history["loss"][0], model.canonical_state()))
    (xla_loss, xla_state), (eager_loss, eager_state) = results
    np.testing.assert_allclose(xla_loss, eager_loss, rtol=1e-5)
    moved = 0
    start = build(task).canonical_state()
    for name, value in eager_state.items():
        np.testing.assert_allclose(xla_state[name], value, atol=1e-5, err_msg=name)
        moved += not np.array_equal(value, start[name])
    assert moved > len(start) // 2


# ----------------------------------------------------------------------------------------------------------------
# SavedModel signatures, read by a fresh process
SERVE_SCRIPT = r"""
import importlib.util, json, sys
if importlib.util.find_spec("triton") is not None:
    import triton  # noqa: F401  (before TensorFlow)
import numpy as np, tensorflow as tf
directory, inputs_file, out_file = sys.argv[1:]
loaded = tf.saved_model.load(directory)
inputs = dict(np.load(inputs_file))
report, arrays = {"modules": sorted(m for m in sys.modules if m.startswith("deberta_xf"))}, {}
for name, dtype in (("serving_default", tf.int32), ("int64_serving", tf.int64)):
    signature = loaded.signatures[name]
    report[name] = {k: [s.shape.as_list(), s.dtype.name] for k, s in signature.structured_input_signature[1].items()}
    for key, value in signature(**{k: tf.constant(v, dtype) for k, v in inputs.items()}).items():
        arrays[f"{name}/{key}"] = value.numpy()
np.savez(out_file, **arrays)
print(json.dumps(report))
"""


@pytest.mark.slow
@pytest.mark.parametrize("task", ["base", "multiple-choice"])
def test_saved_model_signatures_in_a_fresh_process(task, tmp_path):
    """``save_pretrained(saved_model=True)``: a SavedModel whose two signatures (int32, int64; every size dynamic)
    give the model's outputs in a process without deberta_xf, hidden states / attentions stacked when the config
    asks for them."""
    model = build(task, output_hidden_states=True, output_attentions=task == "base")
    model.save_pretrained(tmp_path, saved_model=True)
    x = features(task, batch=3, seq=9)
    np.savez(tmp_path / "inputs.npz", **x)
    done = subprocess.run([sys.executable, "-c", SERVE_SCRIPT, str(tmp_path / "saved_model" / "1"),
                           str(tmp_path / "inputs.npz"), str(tmp_path / "served.npz")],
                          capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["modules"] == []
    rank = 3 if task == "multiple-choice" else 2
    for name, dtype in (("serving_default", "int32"), ("int64_serving", "int64")):
        assert report[name] == {k: [[None] * rank, dtype] for k in ("input_ids", "attention_mask", "token_type_ids")}
    out = model(x)
    want = {FIRST_OUTPUT.get(task, "logits"): first_output(task, out),
            "hidden_states": np.stack([h.numpy() for h in out.hidden_states])}
    if task == "base":
        want["attentions"] = np.stack([a.numpy() for a in out.attentions])
    served = np.load(tmp_path / "served.npz")
    for name in ("serving_default", "int64_serving"):
        assert {k.split("/")[1] for k in served.files if k.startswith(name)} == set(want)
        for key, value in want.items():
            np.testing.assert_allclose(served[f"{name}/{key}"], value, atol=1e-5, err_msg=f"{name} {key}")


# ----------------------------------------------------------------------------------------------------------------
# torch <-> TF through files
@pytest.mark.parametrize("task", list(TASKS))
def test_torch_and_tf_agree_through_files(task, tmp_path):
    """TF weights saved and read by the torch class, and the torch model's own file read back by the TF class: every
    output (the loss as the mean of TF's per-example losses, hidden states, attentions) within 1e-5."""
    if REGISTRY["torch"].available() is not None:
        pytest.skip(f"torch: {REGISTRY['torch'].available()}")
    import torch

    tf_model = build(task)
    tf_model.save_pretrained(tmp_path / "from_tf")
    torch_model = REGISTRY["torch"].model_class(task).from_pretrained(tmp_path / "from_tf").eval()
    torch_model.save_pretrained(tmp_path / "from_torch")
    tf_again = REGISTRY["tf"].model_class(task).from_pretrained(tmp_path / "from_torch")
    x = {**features(task), **({} if task == "base" else labels_for(task))}
    with torch.no_grad():
        reference = torch_model(**{k: torch.from_numpy(np.asarray(v, np.int64)) for k, v in x.items()},
                                output_hidden_states=True, output_attentions=True)
    for which, model in (("TF -> torch", tf_model), ("torch -> TF", tf_again)):
        out = model(x, output_hidden_states=True, output_attentions=True)
        assert list(out) == list(reference), which
        for key in out:
            ours, theirs = out[key], reference[key]
            if key == "loss":
                ours = tf.reduce_mean(ours)
            pairs = zip(ours, theirs) if isinstance(ours, tuple) else [(ours, theirs)]
            for i, (a, b) in enumerate(pairs):
                np.testing.assert_allclose(np.asarray(a), b.numpy(), atol=1e-5, err_msg=f"{which} {key}[{i}]")
