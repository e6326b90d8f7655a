"""TensorFlow-specific checks: graph mode, XLA and dynamic shapes, dropout and dtypes, the Keras variable tree and
the two Keras weight files. The contract every framework keeps (loading every weights format, round trips, every
head against the reference fixtures, masks, inputs, losses, bad checkpoints) is tests/test_contract.py."""

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
from deberta_xf.compare import BF16_THRESHOLDS  # noqa: E402
from deberta_xf.errors import CheckpointError  # noqa: E402
from deberta_xf.frameworks import REGISTRY  # noqa: E402
from deberta_xf.tf.modeling_tf_deberta_v2 import MODEL_CLASSES, relative_position_indices  # noqa: E402
from deberta_xf.compare import flatten_outputs  # noqa: E402
from reference_cases import FIXTURE_FRACTION, KERNEL_FRACTION, assert_matches, load_case, run_reference_tf  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def pinned_precision():
    """The registry's full-fp32 matmul pin (TF32 off on GPU), as in the contract suite and the parity harness."""
    with REGISTRY["tf"].precision():
        yield


def canonical_equal(a, b) -> None:
    sa, sb = a.canonical_state(), b.canonical_state()
    assert set(sa) == set(sb)
    for name in sa:
        np.testing.assert_array_equal(sa[name], sb[name], err_msg=name)


# ----------------------------------------------------------------------------------------------------------------
# TF inputs and classes
def test_tf_tensors_as_inputs_and_keras_classes():
    case = load_case("abs-noshare", "base")
    model = deberta_xf.TFDebertaV2Model.from_pretrained(case.directory)
    ref = model(**case.model_inputs).last_hidden_state.numpy()
    as_tensors = model(**{k: tf.constant(v) for k, v in case.model_inputs.items()}).last_hidden_state.numpy()
    np.testing.assert_array_equal(as_tensors, ref)
    embeds = tf.gather(model.embeddings.word_embeddings.embeddings, case.inputs["input_ids"])  # a tf.Tensor
    via_embeds = model(inputs_embeds=embeds, attention_mask=case.attention_mask,
                       token_type_ids=case.inputs["token_type_ids"]).last_hidden_state.numpy()
    np.testing.assert_array_equal(via_embeds, ref)
    assert all(issubclass(MODEL_CLASSES[task], keras.Model) for task in TASKS)


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
    # XLA and eager are different kernels (measured up to 0.27 of the tolerance, on masked-LM logits reaching +-25):
    # KERNEL_FRACTION of the documented tolerance, padding positions included
    assert_matches(eager, xla, task, None, f"{variant}/{task} XLA vs eager", scale=KERNEL_FRACTION)
    assert_matches(case.pt, xla, task, case.attention_mask, f"{variant}/{task} XLA vs reference",
                   scale=FIXTURE_FRACTION)
    compiled(**case.inputs)
    assert compiled.experimental_get_tracing_count() == 1


def test_tf_function_two_shapes_without_retracing():
    case = load_case("v3", "token-classification")
    model = deberta_xf.TFDebertaV2ForTokenClassification.from_pretrained(case.directory)
    fn = tf.function(lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits)
    ids, mask = case.inputs["input_ids"], case.inputs["attention_mask"]
    short_ids, short_mask = ids[:2, :11], mask[:2, :11]
    for a, m in ((ids, mask), (short_ids, short_mask), (ids, mask), (short_ids, short_mask)):
        # graph and eager may run different (fused) kernels: KERNEL_FRACTION, padding positions included
        assert_matches({"logits": model(input_ids=a, attention_mask=m).logits.numpy()}, {"logits": fn(a, m).numpy()},
                       case.task, None, "tf.function vs eager", scale=KERNEL_FRACTION)
    assert fn.experimental_get_tracing_count() == 2
    assert_matches({"logits": case.pt["logits"]}, {"logits": fn(ids, mask).numpy()}, case.task, mask,
                   "tf.function vs reference", scale=FIXTURE_FRACTION)


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
    assert_matches({"last_hidden_state": case.pt["last_hidden_state"]}, {"last_hidden_state": got}, "base", mask,
                   f"{variant} dynamic shapes vs reference", scale=FIXTURE_FRACTION)
    for rows, length in ((1, 1), (2, 9)):
        a, m, t = ids[:rows, :length], mask[:rows, :length], types[:rows, :length]
        eager = model(input_ids=a, attention_mask=m, token_type_ids=t).last_hidden_state.numpy()
        assert_matches({"last_hidden_state": eager}, {"last_hidden_state": fn(a, m, t).numpy()}, "base", None,
                       f"{variant} [{rows}, {length}] graph vs eager", scale=KERNEL_FRACTION)
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
# Dropout, dtype
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
    assert 0 < err < BF16_THRESHOLDS["hidden"]


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


@pytest.mark.slow
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
                                              r"'deberta' is listed (in 'weight_names' )?but not stored"):
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


# ----------------------------------------------------------------------------------------------------------------
# Losses shaped as the reference TF returns them (hf_compute_loss): [B] for sequence classification, question
# answering and multiple choice, the masked mean as (1,) for masked LM and token classification.
LOSS_SHAPES = {"masked-lm": (1,), "token-classification": (1,), "sequence-classification": (3,),
               "question-answering": (3,), "multiple-choice": (2,)}
# The reference TF runs in a subprocess (it needs tf-keras): each job's model from its tf_model.h5, on its inputs and
# labels; the loss is written to the job's out file.
REFERENCE_LOSS_RUNNER = r"""
for job in json.loads(sys.argv[1]):
    model = getattr(transformers, job["cls"]).from_pretrained(job["dir"], use_safetensors=False)
    inputs = {k: tf.constant(v) for k, v in np.load(job["inputs"]).items()}
    np.save(job["out"], model(inputs, training=False).loss.numpy())
"""


def _loss_cases(tmp_path):
    """(label, model, inputs with labels, checkpoint directory, reference TF class name) for every head: the v3
    fixtures (question answering without padding and with positions inside the sequence: the reference TF fails on
    the fixture's out-of-range one), token classification with -1 labels too, and regression (num_labels == 1)."""
    from deberta_xf.tasks import TASK_TABLE

    out = []
    for task in LOSS_SHAPES:
        case = load_case("v3", task)
        inputs = dict(case.inputs)
        if task == "question-answering":  # span logits cover padding, where the reference TF computes otherwise
            inputs.update(attention_mask=np.ones_like(inputs["attention_mask"]), start_positions=np.array([3, 0, 20]))
        out.append((f"v3/{task}", MODEL_CLASSES[task].from_pretrained(case.directory), inputs, case.directory))
        if task == "token-classification":
            minus_one = dict(inputs, labels=np.where(inputs["labels"] == -100, -1, inputs["labels"]))
            out.append(("v3/token-classification -1", out[-1][1], minus_one, case.directory))
    case = load_case("v3", "sequence-classification")
    regression = MODEL_CLASSES["sequence-classification"].from_pretrained(case.directory, num_labels=1,
                                                                          ignore_mismatched_sizes=True)
    regression.save_pretrained(tmp_path / "regression")
    out.append(("v3/regression", regression, dict(case.model_inputs, labels=np.array([0.5, -1.0, 2.0])),
                str(tmp_path / "regression")))
    return [(label, model, inputs, directory, TASK_TABLE[model.task].class_name("tf"))
            for label, model, inputs, directory in out]


@pytest.mark.reference
@pytest.mark.slow
def test_losses_are_shaped_and_valued_as_the_live_reference_tf(tmp_path):
    """Every head's loss has the reference TF's shape and values (transformers 4.57.6 + tf-keras, live)."""
    pytest.importorskip("transformers")
    pytest.importorskip("tf_keras")
    cases = _loss_cases(tmp_path)
    jobs = []
    for i, (label, model, inputs, directory, cls) in enumerate(cases):
        np.savez(tmp_path / f"inputs{i}.npz", **inputs)
        jobs.append({"cls": cls, "dir": str(directory), "inputs": str(tmp_path / f"inputs{i}.npz"),
                     "out": str(tmp_path / f"loss{i}.npy")})
    run_reference_tf(REFERENCE_LOSS_RUNNER, jobs, tmp_path)
    for (label, model, inputs, _, _), job in zip(cases, jobs):
        want = np.load(job["out"])
        got = model(**inputs).loss.numpy()
        assert got.shape == want.shape, f"{label}: loss shape {got.shape}, the reference TF's {want.shape}"
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=label)


@pytest.mark.parametrize("task", list(LOSS_SHAPES))
def test_loss_shapes_and_their_mean_is_the_reference_pytorch_loss(task):
    """The committed fixtures (fixture labels, a question-answering start beyond the sequence included): the TF
    loss has the reference TF's shape, and its mean (what Keras minimises, what parity compares) is the reference
    PyTorch loss."""
    case = load_case("v3", task)
    loss = MODEL_CLASSES[task].from_pretrained(case.directory)(**case.inputs).loss
    assert tuple(loss.shape) == LOSS_SHAPES[task] and loss.dtype == tf.float32
    assert float(np.mean(loss)) == pytest.approx(float(case.pt["loss"]), abs=1e-5)
    assert flatten_outputs({"loss": loss})["loss"].shape == ()  # deberta_xf.compare takes the mean


def test_ignored_rows_keep_the_pytorch_mean():
    """Rows the reference PyTorch ignores (a -100 multiple-choice label, negative sequence-classification labels)
    are 0 and the others scaled, so the mean stays PyTorch's; all ignored: nan (cross entropy) or 0 (negative
    sequence-classification labels), as PyTorch."""
    import torch

    from deberta_xf.torch import modeling_deberta_v2 as torch_deberta

    case = load_case("v3", "multiple-choice")
    model = MODEL_CLASSES["multiple-choice"].from_pretrained(case.directory)
    logits = model(**case.model_inputs).logits.numpy()
    kept = torch.nn.functional.cross_entropy(torch.from_numpy(logits[1:]), torch.tensor([2]))
    loss = model(**case.model_inputs, labels=np.array([-100, 2])).loss.numpy()
    assert loss[0] == 0.0 and float(loss.mean()) == pytest.approx(float(kept), abs=1e-6)
    assert np.isnan(model(**case.model_inputs, labels=np.array([-100, -100])).loss.numpy()).all()
    case = load_case("v3", "sequence-classification")
    model = MODEL_CLASSES["sequence-classification"].from_pretrained(case.directory)
    logits = model(**case.model_inputs).logits.numpy()
    labels = np.array([-1, 1, 0])
    want = torch_deberta.sequence_classification_loss(model.config, torch.from_numpy(logits), torch.from_numpy(labels))
    loss = model(**case.model_inputs, labels=labels).loss.numpy()
    assert loss.shape == (3,) and loss[0] == 0.0 and float(loss.mean()) == pytest.approx(float(want), abs=1e-6)
    np.testing.assert_array_equal(model(**case.model_inputs, labels=np.array([-1, -1, -1])).loss.numpy(), 0.0)


def test_weights_the_checkpoint_lacks_are_drawn_at_random():
    """from_pretrained builds its variables as zeros only when the checkpoint holds every one of them (they are all
    assigned); a head the checkpoint lacks is drawn from normal(0, initializer_range) as in from_config."""
    from reference_cases import REFERENCE

    base = os.path.join(REFERENCE, "v3", "base")
    model = MODEL_CLASSES["sequence-classification"].from_pretrained(base)
    kernel = np.asarray(model.classifier.kernel.numpy())
    std = model.config.initializer_range
    assert 0.5 * std < kernel.std() < 2 * std  # random, not the zeros of a skipped init
    pooler = np.asarray(model.pooler.dense.kernel.numpy())
    assert 0.5 * std < pooler.std() < 2 * std
    full = MODEL_CLASSES["base"].from_pretrained(base)
    state = full.canonical_state()
    from deberta_xf.formats import open_checked

    with open_checked(os.path.join(base, "model.safetensors")) as reader:  # the same weights, canonical names
        assert set(state) <= set(reader.keys())
        for name, array in state.items():
            assert np.array_equal(array, reader.read(name)), name  # every variable assigned from the checkpoint
