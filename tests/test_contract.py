"""The contract every framework's implementation keeps, checked for each registered framework.

Parametrized over :data:`deberta_xf.frameworks.FRAMEWORKS` (a framework whose ``available()`` says why it cannot
run is skipped) and the reference fixture cases (tests/reference_cases.py). Nothing here names a framework: it
goes through the registry entry (``model_class``, ``precision``, ``run``, ``default_format``, ``formats``,
``search_order``) and the model API all implementations share (``from_pretrained``, ``from_config``, ``save_pretrained``,
``canonical_state``, ``config``, ``weights_path``, ``loading_report``, and calls with numpy inputs returning a
``ModelOutput``), so a fourth framework needs only its registry entry to be held to all of it.

What each framework's own test file keeps is what is genuinely its own: graph mode / XLA / Keras files for TF,
jit / NNX state / msgpack trees for Flax, the live bit-exactness against transformers for PyTorch, dropout and
low-precision dtypes everywhere.

Bounds: against the committed fixtures FIXTURE_FRACTION of the DESIGN §5 tolerances (see reference_cases);
between two loads of the same weights, or two runs of the same computation, exact.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import shutil

import numpy as np
import pytest

import deberta_xf
from deberta_xf import schema
from deberta_xf.compare import flatten_outputs
from deberta_xf.errors import CheckpointError, ConfigError
from deberta_xf.formats import FORMATS, open_weights, write_arrays
from deberta_xf.frameworks import FRAMEWORKS, REGISTRY
from deberta_xf.tasks import TASKS
from reference_cases import (ALL_CASE_IDS, ALL_CASES, DEFAULT_VARIANT, FIXTURE_FRACTION, KERNEL_FRACTION,
                             assert_matches, load_any_case, load_case)

FIXTURE_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "tf_model.h5")
# The model-specific output fields of each task (besides loss, hidden_states and attentions)
HEAD_FIELDS = {"base": ("last_hidden_state",), "question-answering": ("start_logits", "end_logits")}


def head_fields(task: str) -> tuple[str, ...]:
    return HEAD_FIELDS.get(task, ("logits",))


@functools.lru_cache(maxsize=None)
def _unavailable(name: str) -> str | None:
    return REGISTRY[name].available()


@pytest.fixture(scope="module")
def _pinned():
    """Full fp32 matmul precision (the registry's pin, TF32 off on GPU), entered once per framework on its first
    test and restored after the module: one setting for every call, and so one set of compiled kernels."""
    with contextlib.ExitStack() as stack:
        yield stack, set()
    for cache in (case_of, loaded, state, outputs):  # the models of this module are not needed after it
        cache.cache_clear()


@pytest.fixture(params=FRAMEWORKS)
def fw(request, _pinned):
    """The registry entry of each framework (skipped, saying why, where it cannot run)."""
    reason = _unavailable(request.param)
    if reason is not None:
        pytest.skip(f"{request.param}: {reason}")
    entry = REGISTRY[request.param]
    stack, pinned = _pinned
    if entry.name not in pinned:
        stack.enter_context(entry.precision())
        pinned.add(entry.name)
    return entry


# ----------------------------------------------------------------------------------------------------------------
# Module-level caches: each (framework, case) is loaded and run once for all the tests that read it.
@functools.lru_cache(maxsize=None)
def case_of(variant: str, task: str):
    return load_any_case(variant, task)


@functools.lru_cache(maxsize=None)
def loaded(name: str, variant: str, task: str):
    """The case's checkpoint directory loaded by the framework's class (its own choice of weights file)."""
    return REGISTRY[name].model_class(task).from_pretrained(case_of(variant, task).directory)


@functools.lru_cache(maxsize=None)
def state(name: str, variant: str, task: str) -> dict[str, np.ndarray]:
    return loaded(name, variant, task).canonical_state()


@functools.lru_cache(maxsize=None)
def outputs(name: str, variant: str, task: str) -> dict[str, np.ndarray]:
    """Every output (hidden states, attentions, loss from the case's labels) of the loaded model on the case."""
    return run(loaded(name, variant, task), case_of(variant, task).inputs)


# Every call here is the shared model API with numpy inputs (the registry's own forward, which parity and convert
# use, is checked against it once, in test_registry_runs_the_same_computation): one input convention, so Flax
# compiles each shape once for the whole module.
def call(model, **inputs):
    """The model called as a user would, with numpy inputs: its ModelOutput."""
    return model(**inputs)


def run(model, inputs) -> dict[str, np.ndarray]:
    """Every output of a call, flattened to numpy."""
    return flatten_outputs(call(model, **inputs, output_hidden_states=True, output_attentions=True))


def loss_of(out) -> float:
    return float(flatten_outputs(out)["loss"])


def assert_same_weights(model, expected: dict[str, np.ndarray], label: str = "") -> None:
    got = model.canonical_state()
    assert set(got) == set(expected), f"{label}: names differ: {sorted(set(got) ^ set(expected))}"
    for name, array in expected.items():
        assert got[name].dtype == array.dtype, f"{label}: {name} is {got[name].dtype}, expected {array.dtype}"
        np.testing.assert_array_equal(got[name], array, err_msg=f"{label}: {name}")


def expected_file(directory: str, entry) -> str:
    """The weights file a checkpoint directory is loaded from (DESIGN §1): the first format of the framework's
    search order that the directory holds (the index of a sharded checkpoint before a single file)."""
    for fmt in entry.search_order:
        for filename in reversed(FORMATS[fmt].filenames):
            if os.path.isfile(os.path.join(directory, filename)):
                return filename
    raise AssertionError(f"{directory}: no weights file")


def copy_case(tmp_path, variant="v3", task="base"):
    dst = tmp_path / "ckpt"
    shutil.copytree(load_case(variant, task).directory, dst)
    return dst


# ----------------------------------------------------------------------------------------------------------------
# Every head against the reference, and the outputs' fields
@pytest.mark.parametrize(("variant", "task"), ALL_CASES, ids=ALL_CASE_IDS)
def test_outputs_match_the_reference(fw, variant, task):
    case = case_of(variant, task)
    model = loaded(fw.name, variant, task)
    assert os.path.basename(model.weights_path) == expected_file(case.directory, fw)
    assert model.loading_report.ok and not model.loading_report.unexpected and not model.loading_report.missing
    out = outputs(fw.name, variant, task)
    layers = model.config.num_hidden_layers
    fields = {*head_fields(task), *(f"hidden_states.{i}" for i in range(layers + 1)),
              *(f"attentions.{i}" for i in range(layers))}
    if case.has_labels:
        fields.add("loss")
    assert set(out) == fields
    assert_matches(case.pt, out, task, case.attention_mask, f"{fw.name} {variant}/{task} vs reference PyTorch",
                   scale=FIXTURE_FRACTION)
    if case.tf:  # the reference TF port, where it can represent the config
        assert_matches(case.tf, out, task, case.attention_mask, f"{fw.name} {variant}/{task} vs reference TF",
                       scale=FIXTURE_FRACTION)
    # padding: no real token attends to a padding position, in any layer
    mask = case.attention_mask.reshape(-1, case.attention_mask.shape[-1]).astype(bool)
    to_padding = mask[:, None, :, None] & ~mask[:, None, None, :]
    assert to_padding.any()
    for i in range(layers):
        attention = out[f"attentions.{i}"]
        assert not attention[np.broadcast_to(to_padding, attention.shape)].any(), f"attentions.{i}"

    # Called without labels and output flags: the head's fields, no loss. The loaded model is in inference mode:
    # this call and the one above (with labels and every output) give the same numbers, bit for bit.
    raw = call(model, **case.model_inputs)
    assert isinstance(raw, deberta_xf.ModelOutput)
    assert "loss" not in raw and raw.loss is None and raw.hidden_states is None and raw.attentions is None
    plain = flatten_outputs(raw)
    assert list(plain) == list(head_fields(task))
    np.testing.assert_array_equal(flatten_outputs({"first": raw[0]})["first"], plain[head_fields(task)[0]])
    for name in plain:
        np.testing.assert_array_equal(out[name], plain[name], err_msg=f"{name}: differs between two calls")


def test_registry_runs_the_same_computation(fw):
    """The registry's load-and-run step (what the parity harness and the converter's verification run: pinned
    precision, device scope, its own forward) gives exactly the outputs of the model's own call, and names the
    file it loaded. (A case without relative attention: the plumbing is under test, and it compiles fastest.)"""
    variant, task = "no-rel", "base"
    case = case_of(variant, task)
    want = outputs(fw.name, variant, task)
    execution = fw.run(case.directory, task, "float32", case.inputs, fw.resolve_device("cpu"), attentions=True)
    assert execution.weights_file == expected_file(case.directory, fw) and execution.device.kind == "cpu"
    assert set(execution.outputs) == set(want)
    for name in want:
        np.testing.assert_array_equal(execution.outputs[name], want[name], err_msg=name)


# ----------------------------------------------------------------------------------------------------------------
# Weight files: every format loads the same weights; save_pretrained / from_pretrained is exact
@pytest.mark.parametrize(("variant", "task"), ALL_CASES, ids=ALL_CASE_IDS)
def test_every_fixture_weights_file_loads_the_same_weights(fw, variant, task):
    case = case_of(variant, task)
    cls = fw.model_class(task)
    reference = state(fw.name, variant, task)
    present = [w for w in FIXTURE_WEIGHTS if os.path.exists(os.path.join(case.directory, w))]
    assert "model.safetensors" in present
    chosen = os.path.basename(loaded(fw.name, variant, task).weights_path)  # its weights are `reference`
    for weights in present:
        if weights == chosen:
            continue
        model = cls.from_pretrained(os.path.join(case.directory, weights),
                                    config=os.path.join(case.directory, "config.json"))
        assert os.path.basename(model.weights_path) == weights
        assert model.loading_report.ok and not model.loading_report.unexpected, weights
        assert model.config == loaded(fw.name, variant, task).config
        assert_same_weights(model, reference, f"{fw.name} {variant}/{task} from {weights}")


def assert_round_trip(entry, variant: str, task: str, directory, fmt: str | None) -> None:
    """save_pretrained (in ``fmt``, or without a format: the default) and from_pretrained give back the config and
    every weight bit for bit; the directory holds config.json and the format's file, whose tensors are exactly
    the model's."""
    model = loaded(entry.name, variant, task)
    reference = state(entry.name, variant, task)
    if fmt is None:
        model.save_pretrained(directory)
    else:
        model.save_pretrained(directory, format=fmt)
    fmt = fmt or entry.default_format
    filename = FORMATS[fmt].filenames[0]
    assert sorted(os.listdir(directory)) == sorted(["config.json", filename])
    again = entry.model_class(task).from_pretrained(directory)
    assert os.path.basename(again.weights_path) == filename
    assert again.config == model.config
    assert again.loading_report.ok and not again.loading_report.unexpected
    assert_same_weights(again, reference, f"{entry.name} {variant}/{task} via {filename}")
    with open_weights(str(directory / filename)) as reader:  # any reader finds exactly the model's tensors
        _, report = schema.match_checkpoint(model.config, task, reader.shapes())
        assert report.ok and not report.unexpected and not report.ignored, report.summary()
        if fmt == "safetensors":
            assert set(reader.keys()) == set(reference) and reader.metadata() == {"format": "pt"}


@pytest.mark.parametrize(("variant", "task"), ALL_CASES, ids=ALL_CASE_IDS)
def test_save_load_round_trip_is_exact(fw, variant, task, tmp_path):
    """In the framework's own (default) format, for every case."""
    assert fw.default_format in fw.formats
    assert_round_trip(fw, variant, task, tmp_path / "saved", None)


# Every other format a framework writes, on cases that cover every head (v2-conv and emb-proj: the convolution and
# the embedding projection), every variant's masked-LM head layout, and the default checkpoint.
ROUND_TRIP_CASES = [(v, t) for v, t in ALL_CASES if v in ("v2-conv", "emb-proj") or t == "masked-lm"
                    or v == DEFAULT_VARIANT]


@pytest.mark.parametrize(("variant", "task"), ROUND_TRIP_CASES, ids=[f"{v}/{t}" for v, t in ROUND_TRIP_CASES])
def test_round_trip_in_every_other_format(fw, variant, task, tmp_path):
    for fmt in fw.formats:
        if fmt != fw.default_format:
            assert_round_trip(fw, variant, task, tmp_path / fmt, fmt)


def test_directory_loads_the_frameworks_own_file_first(fw, tmp_path):
    """With every format beside each other, a directory loads by the framework's search order; removing the
    chosen file falls back to the next; with none left the error lists what was looked for."""
    case = load_case("v3", "question-answering")
    reference = state(fw.name, "v3", "question-answering")
    dst = tmp_path / "all"
    dst.mkdir()
    shutil.copy(os.path.join(case.directory, "config.json"), dst)
    for fmt in fw.search_order:
        write_arrays(str(dst / FORMATS[fmt].filenames[0]), reference, format=fmt, task=case.task)
    cls = fw.model_class(case.task)
    assert set(fw.search_order) == set(FORMATS)
    for fmt in fw.search_order:
        filename = FORMATS[fmt].filenames[0]
        model = cls.from_pretrained(dst)
        assert os.path.basename(model.weights_path) == filename, f"expected {filename} ({fw.search_order})"
        assert_same_weights(model, reference, filename)
        os.remove(dst / filename)
    with pytest.raises(CheckpointError, match=r"no weights file found \(looked for .*model\.safetensors"):
        cls.from_pretrained(dst)


def test_sharded_safetensors(fw, tmp_path):
    from deberta_xf.formats.safetensors_io import write

    case = load_case("v3", "token-classification")
    with open_weights(os.path.join(case.directory, "model.safetensors")) as reader:
        infos = reader.infos()
        names = list(infos)
        half = len(names) // 2
        weight_map = {}
        for i, part in enumerate((names[:half], names[half:])):
            fname = f"model-0000{i + 1}-of-00002.safetensors"
            write(str(tmp_path / fname), {n: infos[n] for n in part}, reader.read)
            weight_map.update({n: fname for n in part})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    shutil.copy(os.path.join(case.directory, "config.json"), tmp_path / "config.json")
    model = fw.model_class(case.task).from_pretrained(tmp_path)
    assert model.weights_path.endswith("model.safetensors.index.json")
    assert_same_weights(model, state(fw.name, "v3", "token-classification"), "sharded")


def test_create_model(fw):
    """create_model(framework, task) for every task: from a checkpoint (the same weights as from_pretrained) and
    from a config with overrides (fresh weights with the schema's names and shapes, which load_canonical fills)."""
    config_dir = load_case("emb-proj", "base").directory
    for task in TASKS:
        variant = "v3-lmpred" if task == "masked-lm" else "v2-conv"
        model = deberta_xf.create_model(fw.name, task, checkpoint=case_of(variant, task).directory)
        assert type(model) is fw.model_class(task)
        assert model.weights_path == loaded(fw.name, variant, task).weights_path
        assert_same_weights(model, state(fw.name, variant, task), f"create_model {task}")
        fresh = deberta_xf.create_model(fw.name, task, config=os.path.join(config_dir, "config.json"), num_labels=3)
        assert type(fresh) is fw.model_class(task) and fresh.config.num_labels == 3
        assert {k: v.shape for k, v in fresh.canonical_state().items()} == schema.expected_shapes(fresh.config, task)
        if task == "masked-lm":  # load_canonical: canonical arrays into the parameters, in place, by name
            fresh.load_canonical(state(fw.name, "emb-proj", "masked-lm"))
            assert_same_weights(fresh, state(fw.name, "emb-proj", "masked-lm"), "load_canonical")


# ----------------------------------------------------------------------------------------------------------------
# Inputs: attention masks and padding, inputs_embeds, position and token type ids
def test_three_dimensional_attention_mask(fw):
    case = load_case("v3", "base")
    model = loaded(fw.name, "v3", "base")
    ids, mask2 = case.inputs["input_ids"], case.attention_mask

    def hidden(mask):
        return flatten_outputs(call(model, input_ids=ids, attention_mask=mask))["last_hidden_state"]

    out2 = hidden(mask2)
    # the outer product of the 2-D mask as a 3-D mask is the same computation as the 2-D mask
    np.testing.assert_array_equal(hidden(mask2[:, None, :] * mask2[:, :, None]), out2)
    # a causal 3-D mask, against the reference encoder run with the same mask
    causal = hidden(case.extra["inputs3d.attention_mask"])
    assert_matches({"last_hidden_state": case.extra["pt3d.last_hidden_state"]}, {"last_hidden_state": causal},
                   "base", mask2, f"{fw.name} causal 3-D mask", scale=FIXTURE_FRACTION)
    keep = mask2.astype(bool)
    assert np.abs(causal - out2)[keep].max() > 1e-2  # the causal mask really changes the result
    with pytest.raises(ValueError, match=r"2-D.*3-D"):
        call(model, input_ids=ids, attention_mask=np.ones((1,) + ids.shape + (1,)))


def test_padding_does_not_change_real_tokens(fw):
    """A padded row run alone, cut to its real length, gives the same hidden states on its tokens (a different
    shape, so different kernels: KERNEL_FRACTION). v2-conv: its convolution reads the neighbouring positions."""
    variant = "v2-conv"
    case = load_case(variant, "base")
    model = loaded(fw.name, variant, "base")
    batch = outputs(fw.name, variant, "base")
    lengths = case.attention_mask.sum(-1)
    padded = [b for b in range(len(lengths)) if lengths[b] < case.attention_mask.shape[-1]]
    assert padded
    row = padded[-1]  # the shortest: the most padding
    alone = {k: v[row:row + 1, :lengths[row]] for k, v in case.model_inputs.items()}
    got = run(model, alone)
    want = {k: v[row:row + 1, :lengths[row]] for k, v in batch.items() if k.startswith("hidden_states")}
    assert_matches(want, got, "base", alone["attention_mask"], f"{fw.name} {variant} row {row} alone",
                   scale=KERNEL_FRACTION)


def test_inputs_embeds_position_and_token_type_ids(fw):
    case = load_case("abs-noshare", "base")
    model = loaded(fw.name, "abs-noshare", "base")
    ids, mask, types = case.inputs["input_ids"], case.attention_mask, case.inputs["token_type_ids"]
    assert model.config.type_vocab_size > 1 and model.config.position_biased_input

    def hidden(**inputs):
        return flatten_outputs(call(model, **inputs))["last_hidden_state"]

    ref = hidden(**case.model_inputs)
    embeds = state(fw.name, "abs-noshare", "base")["embeddings.word_embeddings.weight"][ids]
    np.testing.assert_array_equal(hidden(inputs_embeds=embeds, attention_mask=mask, token_type_ids=types), ref)
    positions = np.broadcast_to(np.arange(ids.shape[1])[None], ids.shape).copy()
    np.testing.assert_array_equal(hidden(**case.model_inputs, position_ids=positions), ref)
    assert np.abs(hidden(**case.model_inputs, position_ids=positions + 1) - ref).max() > 1e-2  # positions matter
    no_types = hidden(input_ids=ids, attention_mask=mask)
    np.testing.assert_array_equal(no_types, hidden(input_ids=ids, attention_mask=mask,
                                                   token_type_ids=np.zeros_like(ids)))  # omitted = zeros
    assert np.abs(no_types - ref).max() > 1e-2  # token types matter
    no_mask = hidden(input_ids=ids, token_type_ids=types)  # omitted mask = all ones
    ones = np.ones_like(ids)
    np.testing.assert_array_equal(no_mask, hidden(input_ids=ids, token_type_ids=types, attention_mask=ones))
    assert np.abs(no_mask - ref)[mask.astype(bool)].max() > 1e-3  # the padding is attended to now
    with pytest.raises(ValueError, match="both input_ids and inputs_embeds"):
        call(model, input_ids=ids, inputs_embeds=embeds)
    with pytest.raises(ValueError, match="either input_ids or inputs_embeds"):
        call(model, attention_mask=mask)


def test_multiple_choice_inputs_embeds(fw):
    case = load_case("v2-conv", "multiple-choice")
    model = loaded(fw.name, "v2-conv", "multiple-choice")
    embeds = state(fw.name, "v2-conv", "multiple-choice")["deberta.embeddings.word_embeddings.weight"][
        case.inputs["input_ids"]]  # [batch, choices, seq, embedding]
    common = dict(attention_mask=case.attention_mask, labels=case.inputs["labels"])
    via_embeds = flatten_outputs(call(model, inputs_embeds=embeds, **common))
    via_ids = flatten_outputs(call(model, input_ids=case.inputs["input_ids"], **common))
    assert set(via_embeds) == {"logits", "loss"} and via_embeds["logits"].shape == case.pt["logits"].shape
    for name in via_ids:
        np.testing.assert_array_equal(via_embeds[name], via_ids[name], err_msg=name)
    assert_matches({k: case.pt[k] for k in ("logits", "loss")}, via_embeds, case.task, case.attention_mask,
                   scale=FIXTURE_FRACTION)


# ----------------------------------------------------------------------------------------------------------------
# Losses (against the reference: the fixtures' "loss" in test_outputs_match_the_reference; the rules here)
def _log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_sequence_classification_losses(fw):
    case = load_case("v3", "sequence-classification")
    model = loaded(fw.name, "v3", "sequence-classification")
    inputs = case.model_inputs
    logits = np.asarray(flatten_outputs(call(model, **inputs))["logits"], np.float64)
    loss = loss_of(call(model, **inputs, labels=np.array([-1, 1, -5])))  # negative labels are ignored
    assert loss == pytest.approx(-_log_softmax(logits[1:2])[0, 1], abs=1e-5)
    assert loss_of(call(model, **inputs, labels=np.array([-1, -1, -1]))) == 0.0  # none left: 0
    soft = np.array([[0.5, 0.5], [1.0, 0.0], [0.2, 0.8]], dtype=np.float32)
    assert loss_of(call(model, **inputs, labels=soft)) == pytest.approx(
        -(_log_softmax(logits) * soft).sum(-1).mean(), abs=1e-5)
    cls = fw.model_class(case.task)
    regression = cls.from_config(deberta_xf.DebertaV2Config.from_pretrained(case.directory, num_labels=1), seed=0)
    target = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    out = call(regression, **inputs, labels=target)
    predicted = flatten_outputs(out)["logits"]
    assert predicted.shape == (3, 1)
    assert loss_of(out) == pytest.approx(((predicted[:, 0].astype(np.float64) - target) ** 2).mean(), abs=1e-6)
    multi = cls.from_pretrained(case.directory, problem_type="multi_label_classification")
    labels = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
    x = np.asarray(flatten_outputs(call(multi, **inputs))["logits"], np.float64)
    bce = np.mean(np.maximum(x, 0) - x * labels + np.log1p(np.exp(-np.abs(x))))
    assert loss_of(call(multi, **inputs, labels=labels)) == pytest.approx(bce, abs=1e-6)


def test_question_answering_loss_ignores_positions_beyond_the_sequence(fw):
    case = load_case("v3", "question-answering")
    model = loaded(fw.name, "v3", "question-answering")
    seq = case.inputs["input_ids"].shape[1]
    out = call(model, **case.model_inputs, start_positions=np.array([3, seq + 5, 1]),
               end_positions=np.array([4, 2, 99]))
    start, end = (flatten_outputs(out)[k] for k in ("start_logits", "end_logits"))

    def nll(logits, rows, labels):
        return -_log_softmax(logits[rows])[np.arange(len(rows)), labels].mean()

    expected = (nll(start, [0, 2], [3, 1]) + nll(end, [0, 1], [4, 2])) / 2
    assert loss_of(out) == pytest.approx(expected, abs=1e-5)
    # the fixture's own positions (one beyond the sequence) give the reference's loss
    fixture = load_case("abs-noshare", "question-answering")
    assert (fixture.inputs["start_positions"] >= fixture.inputs["input_ids"].shape[1]).any()
    got = outputs(fw.name, "abs-noshare", "question-answering")["loss"]
    assert abs(float(got) - float(fixture.pt["loss"])) <= FIXTURE_FRACTION * 5e-5


def test_token_classification_loss_ignores_minus_100(fw):
    case = load_case("v3", "token-classification")
    model = loaded(fw.name, "v3", "token-classification")
    labels = np.where(case.attention_mask == 1, case.inputs["labels"], -100)
    labels[0, 1] = -100
    out = call(model, **case.model_inputs, labels=labels)
    logits = flatten_outputs(out)["logits"].reshape(labels.size, -1)
    flat = labels.reshape(-1)
    kept = flat != -100
    assert loss_of(out) == pytest.approx(-_log_softmax(logits[kept])[np.arange(kept.sum()), flat[kept]].mean(),
                                            abs=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints of other heads: base <-> head, both MLM head layouts, known extras
def test_head_model_from_base_checkpoint_and_back(fw, caplog):
    base = load_case("v3", "base")
    cls = fw.model_class("sequence-classification")
    with caplog.at_level(logging.WARNING, logger="deberta_xf"):
        model = cls.from_pretrained(base.directory)
    assert "freshly initialised" in caplog.text
    assert set(model.loading_report.missing) == {"pooler.dense.weight", "pooler.dense.bias", "classifier.weight",
                                                 "classifier.bias"}
    weights = model.canonical_state()
    assert 0.005 < weights["classifier.weight"].std() < 0.05 and not weights["classifier.bias"].any()
    hidden = {k: v for k, v in base.pt.items() if k.startswith("hidden_states")}
    out = run(model, base.model_inputs)
    assert_matches(hidden, out, "base", base.attention_mask, f"{fw.name} backbone of a head model",
                   scale=FIXTURE_FRACTION)
    head_case = load_case("v3", "question-answering")
    backbone = fw.model_class("base").from_pretrained(head_case.directory)
    assert set(backbone.loading_report.unexpected) == {"qa_outputs.bias", "qa_outputs.weight"}
    assert_matches({k: v for k, v in head_case.pt.items() if k.startswith("hidden_states")},
                   run(backbone, head_case.model_inputs), "base", head_case.attention_mask,
                   f"{fw.name} base model of a head checkpoint", scale=FIXTURE_FRACTION)


@pytest.mark.parametrize(("variant", "legacy"), [("v3-lmpred", True), ("v3", False)])
def test_either_mlm_head_layout_loads_into_either_model(fw, variant, legacy):
    """The published checkpoints carry lm_predictions.lm_head.*, the reference's legacy head cls.predictions.*;
    a model of either layout loads a checkpoint of the other by name. The new head always projects with the word
    embeddings; the legacy head does so when its decoder is tied (tie_word_embeddings)."""
    case = load_case(variant, "masked-lm")
    config = deberta_xf.DebertaV2Config.from_pretrained(case.directory, legacy=legacy, tie_word_embeddings=True)
    assert config.legacy is legacy and config.legacy != loaded(fw.name, variant, "masked-lm").config.legacy
    model = fw.model_class("masked-lm").from_pretrained(case.directory, config=config)
    assert model.loading_report.ok and not model.loading_report.missing
    renamed = model.loading_report.renamed
    if legacy:
        assert renamed["lm_predictions.lm_head.bias"] == "cls.predictions.bias"
    else:
        assert renamed["cls.predictions.bias"] == "lm_predictions.lm_head.bias"
    assert_matches(case.pt, run(model, case.inputs), case.task, case.attention_mask,
                   f"{fw.name} {variant} with legacy={legacy}", scale=FIXTURE_FRACTION)
    if legacy:  # v3-lmpred says tie_word_embeddings=false: a legacy head of its own has no decoder weight to load
        untied = deberta_xf.DebertaV2Config.from_pretrained(case.directory, legacy=True)
        assert untied.tie_word_embeddings is False
        model = fw.model_class("masked-lm").from_pretrained(case.directory, config=untied)
        assert model.loading_report.missing == ["cls.predictions.decoder.weight"]


def test_known_extras_are_ignored(fw, tmp_path):
    case = load_case("v3", "masked-lm")
    arrays = open_weights(os.path.join(case.directory, "model.safetensors")).read_all()
    arrays["deberta.embeddings.position_ids"] = np.arange(64)[None]
    arrays["deberta.embeddings.position_embeddings.weight"] = np.zeros((64, 32), np.float32)
    arrays["mask_predictions.classifer.weight"] = np.zeros((1, 32), np.float32)
    arrays["cls.predictions.decoder.weight"] = arrays["deberta.embeddings.word_embeddings.weight"]
    write_arrays(str(tmp_path / "model.safetensors"), arrays)
    shutil.copy(os.path.join(case.directory, "config.json"), tmp_path)
    model = fw.model_class("masked-lm").from_pretrained(tmp_path)
    assert not model.loading_report.unexpected
    assert len(model.loading_report.ignored) == 4
    assert_same_weights(model, state(fw.name, "v3", "masked-lm"), "with known extras")


# ----------------------------------------------------------------------------------------------------------------
# Bad input: clear errors naming the problem, whichever framework loads
def test_missing_config(fw, tmp_path):
    dst = copy_case(tmp_path)
    os.remove(dst / "config.json")
    with pytest.raises(ConfigError, match="config.json"):
        fw.model_class("base").from_pretrained(dst)


def test_weights_file_without_config_is_an_error(fw):
    case = load_case("v3", "base")
    with pytest.raises(ConfigError, match="needs a config"):
        fw.model_class("base").from_pretrained(os.path.join(case.directory, "model.safetensors"))


def test_missing_checkpoint(fw, tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        fw.model_class("base").from_pretrained(tmp_path / "nope", config=load_case("v3", "base").directory)


def _load_file(fw, dst, filename):
    return fw.model_class("base").from_pretrained(dst / filename, config=dst / "config.json")


@pytest.mark.parametrize("cut", [4, 100, -10])
def test_truncated_safetensors(fw, tmp_path, cut):
    dst = copy_case(tmp_path)
    data = (dst / "model.safetensors").read_bytes()
    (dst / "model.safetensors").write_bytes(data[:cut])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*(truncated|corrupt)"):
        _load_file(fw, dst, "model.safetensors")


def test_corrupt_safetensors_header(fw, tmp_path):
    dst = copy_case(tmp_path)
    data = bytearray((dst / "model.safetensors").read_bytes())
    data[8:20] = b"not json!!!!"
    (dst / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        _load_file(fw, dst, "model.safetensors")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_that_would_run_code_is_refused(fw, tmp_path):
    torch = pytest.importorskip("torch")  # to write the malicious file
    dst = copy_case(tmp_path)
    torch.save({"embeddings.word_embeddings.weight": torch.zeros(2, 2), "evil": _Evil()}, dst / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: refused to load.*could run code"):
        _load_file(fw, dst, "pytorch_model.bin")


def test_corrupt_bin(fw, tmp_path):
    dst = copy_case(tmp_path)
    (dst / "pytorch_model.bin").write_bytes(b"\x80\x02garbage" * 10)
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin"):
        _load_file(fw, dst, "pytorch_model.bin")


def _own_checkpoint(fw, tmp_path, drop=()):
    """The v3 base checkpoint in the framework's own format (config.json + its default weights file), less the
    tensors in ``drop``."""
    case = load_case("v3", "base")
    directory = tmp_path / fw.name
    directory.mkdir()
    shutil.copy(os.path.join(case.directory, "config.json"), directory)
    arrays = {k: v for k, v in state(fw.name, "v3", "base").items() if k not in drop}
    filename = FORMATS[fw.default_format].filenames[0]
    write_arrays(str(directory / filename), arrays, format=fw.default_format, task="base")
    return directory, filename


def test_wrong_shape_and_contradicting_config(fw, tmp_path):
    directory, filename = _own_checkpoint(fw, tmp_path)
    cls = fw.model_class("base")
    assert os.path.basename(cls.from_pretrained(directory).weights_path) == filename
    config = deberta_xf.DebertaV2Config.from_pretrained(directory, vocab_size=300)
    with pytest.raises(CheckpointError, match=r"(?s)" + re.escape(filename) + r".*embeddings\.word_embeddings\.weight.*"
                                              r"\[211, 32\].*\[300, 32\].*vocab_size=300"):
        cls.from_pretrained(directory, config=config)
    config = deberta_xf.DebertaV2Config.from_pretrained(directory, position_buckets=32)
    with pytest.raises(CheckpointError, match="rel_embeddings.weight.*position_buckets=32"):
        cls.from_pretrained(directory, config=config)


def test_missing_keys_are_listed(fw, tmp_path):
    directory, filename = _own_checkpoint(
        fw, tmp_path, drop=("encoder.layer.1.attention.self.key_proj.bias", "encoder.rel_embeddings.weight"))
    with pytest.raises(CheckpointError, match=r"(?s)" + re.escape(filename) + r".*missing 2 required tensor\(s\): "
                                              r"encoder\.layer\.1\.attention\.self\.key_proj\.bias, "
                                              r"encoder\.rel_embeddings\.weight"):
        fw.model_class("base").from_pretrained(directory)
