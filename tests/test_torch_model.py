"""PyTorch implementation against the reference fixtures (transformers 4.57.6)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import deberta_xf  # noqa: E402
from deberta_xf.errors import CheckpointError, ConfigError  # noqa: E402
from deberta_xf.torch.modeling_deberta_v2 import MODEL_CLASSES  # noqa: E402
from deberta_xf.compare import flatten_outputs  # noqa: E402
from reference_cases import CASE_IDS, CASES, assert_matches, load_case, load_default_case  # noqa: E402


def run(model, case, **extra):
    with torch.no_grad():
        out = model(**case.inputs, output_hidden_states=True, output_attentions=True, **extra)
    return flatten_outputs(out)


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
@pytest.mark.parametrize(("variant", "task"), CASES, ids=CASE_IDS)
def test_matches_reference(variant, task, weights):
    case = load_case(variant, task)
    path = case.directory if weights == "model.safetensors" else os.path.join(case.directory, weights)
    config = None if weights == "model.safetensors" else os.path.join(case.directory, "config.json")
    model = MODEL_CLASSES[task].from_pretrained(path, config=config)
    assert model.weights_path.endswith(weights)
    assert not model.training
    outputs = run(model, case)
    assert ("loss" in outputs) == (task != "base") and "hidden_states.0" in outputs
    worst = assert_matches(case.pt, outputs, task, case.attention_mask, f"{variant}/{task}")
    assert worst <= 1e-6, f"same framework, same math: expected ~1e-6, got {worst:.2e}"


def test_default_checkpoint_matches_reference():
    case = load_default_case()
    model = deberta_xf.DebertaV2ForSequenceClassification.from_pretrained(case.directory)
    outputs = run(model, case)
    assert_matches(case.pt, outputs, case.task, case.attention_mask, "tiny-deberta-v3")


def test_three_dimensional_attention_mask():
    case = load_case("v3", "base")
    model = deberta_xf.DebertaV2Model.from_pretrained(case.directory)
    mask2 = case.inputs["attention_mask"]
    with torch.no_grad():
        # The outer product of the 2-D mask as a 3-D mask is the same computation as the 2-D mask.
        outer = mask2[:, None, :] * mask2[:, :, None]
        out3 = model(input_ids=case.inputs["input_ids"], attention_mask=outer).last_hidden_state.numpy()
        out2 = model(input_ids=case.inputs["input_ids"], attention_mask=mask2).last_hidden_state.numpy()
        np.testing.assert_array_equal(out3, out2)
        # A causal 3-D mask, against the reference encoder run with the same mask.
        causal = case.extra["inputs3d.attention_mask"]
        got = model(input_ids=case.inputs["input_ids"], attention_mask=causal).last_hidden_state.numpy()
    keep = mask2.astype(bool)
    assert np.abs(got - case.extra["pt3d.last_hidden_state"])[keep].max() <= 1e-6
    assert np.abs(got - out2)[keep].max() > 1e-2  # the causal mask really changes the result


def test_inputs_embeds_and_position_ids_match_defaults():
    case = load_case("abs-noshare", "base")
    model = deberta_xf.DebertaV2Model.from_pretrained(case.directory)
    ids = torch.as_tensor(case.inputs["input_ids"])
    with torch.no_grad():
        ref = model(**case.model_inputs).last_hidden_state
        embeds = model.embeddings.word_embeddings(ids)
        via_embeds = model(inputs_embeds=embeds, attention_mask=case.inputs["attention_mask"],
                           token_type_ids=case.inputs["token_type_ids"]).last_hidden_state
        positions = torch.arange(ids.shape[1])[None].expand_as(ids)
        via_positions = model(**case.model_inputs, position_ids=positions).last_hidden_state
        shifted = model(**case.model_inputs, position_ids=positions + 1).last_hidden_state
    torch.testing.assert_close(via_embeds, ref, rtol=0, atol=0)
    torch.testing.assert_close(via_positions, ref, rtol=0, atol=0)
    assert (shifted - ref).abs().max() > 1e-2  # absolute positions matter in this variant


def test_save_load_round_trip_is_exact(tmp_path):
    case = load_case("v2-conv", "sequence-classification")
    model = deberta_xf.DebertaV2ForSequenceClassification.from_pretrained(case.directory)
    model.save_pretrained(tmp_path / "saved")
    assert sorted(os.listdir(tmp_path / "saved")) == ["config.json", "model.safetensors"]
    reloaded = deberta_xf.DebertaV2ForSequenceClassification.from_pretrained(tmp_path / "saved")
    for (name, a), (name_b, b) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert name == name_b
        assert torch.equal(a, b), name
    assert reloaded.config == model.config
    from safetensors import safe_open

    with safe_open(str(tmp_path / "saved" / "model.safetensors"), framework="np") as f:
        assert f.metadata() == {"format": "pt"}
        assert set(f.keys()) == set(model.state_dict())
    model.save_pretrained(tmp_path / "bin", format="bin")
    again = deberta_xf.DebertaV2ForSequenceClassification.from_pretrained(tmp_path / "bin")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_sharded_safetensors(tmp_path):
    import json

    from deberta_xf.formats import open_weights
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
    model = deberta_xf.DebertaV2ForTokenClassification.from_pretrained(tmp_path)
    assert model.weights_path.endswith("model.safetensors.index.json")
    assert_matches(case.pt, run(model, case), case.task, case.attention_mask)


def test_losses_follow_reference_rules():
    case = load_case("v3", "sequence-classification")
    model = deberta_xf.DebertaV2ForSequenceClassification.from_pretrained(case.directory)
    inputs = case.model_inputs
    with torch.no_grad():
        logits = model(**inputs).logits
        # rows with a negative label are ignored; none left gives 0
        loss = model(**inputs, labels=np.array([-1, 1, -5])).loss
        expected = torch.nn.functional.cross_entropy(logits[1:2], torch.tensor([1]))
        torch.testing.assert_close(loss, expected)
        assert float(model(**inputs, labels=np.array([-1, -1, -1])).loss) == 0.0
        soft = np.array([[0.5, 0.5], [1.0, 0.0], [0.2, 0.8]], dtype=np.float32)
        soft_loss = model(**inputs, labels=soft).loss
        expected = -(torch.log_softmax(logits, -1) * torch.from_numpy(soft)).sum(-1).mean()
        torch.testing.assert_close(soft_loss, expected)
    regression = deberta_xf.DebertaV2ForSequenceClassification.from_config(
        deberta_xf.DebertaV2Config.from_pretrained(case.directory, num_labels=1), seed=0)
    with torch.no_grad():
        out = regression(**inputs, labels=np.array([0.5, -1.0, 2.0], dtype=np.float32))
    expected = torch.nn.functional.mse_loss(out.logits.view(-1), torch.tensor([0.5, -1.0, 2.0]))
    torch.testing.assert_close(out.loss, expected)


def test_training_mode_enables_dropout():
    case = load_case("v3", "base")
    model = deberta_xf.DebertaV2Model.from_pretrained(case.directory)
    model.train()
    with torch.no_grad():
        a = model(**case.model_inputs).last_hidden_state
        b = model(**case.model_inputs).last_hidden_state
    assert (a - b).abs().max() > 1e-3
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**case.model_inputs).last_hidden_state, model(**case.model_inputs).last_hidden_state)


def test_bfloat16_dtype():
    case = load_case("v3", "base")
    model = deberta_xf.DebertaV2Model.from_pretrained(case.directory, dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        out = model(**case.model_inputs).last_hidden_state
    assert out.dtype == torch.bfloat16
    keep = case.attention_mask.astype(bool)
    err = np.abs(out.float().numpy() - case.pt["last_hidden_state"])[keep].max()
    assert 0 < err < 0.5


# ----------------------------------------------------------------------------------------------------------------
# Loading both MLM head layouts, base <-> head checkpoints, known extras
def test_lm_predictions_layout_loads_into_legacy_head(tmp_path):
    """The published checkpoints carry lm_predictions.lm_head.*; a legacy-layout model loads them by name."""
    case = load_case("v3-lmpred", "masked-lm")
    config = deberta_xf.DebertaV2Config.from_pretrained(case.directory, legacy=True)
    model = deberta_xf.DebertaV2ForMaskedLM.from_pretrained(case.directory, config=config)
    assert model.loading_report.renamed["lm_predictions.lm_head.bias"] == "cls.predictions.bias"
    assert_matches(case.pt, run(model, case), case.task, case.attention_mask)
    # and the reverse: a legacy checkpoint into a legacy=False model
    legacy_case = load_case("v3", "masked-lm")
    config = deberta_xf.DebertaV2Config.from_pretrained(legacy_case.directory, legacy=False)
    model = deberta_xf.DebertaV2ForMaskedLM.from_pretrained(legacy_case.directory, config=config)
    assert_matches(legacy_case.pt, run(model, legacy_case), legacy_case.task, legacy_case.attention_mask)


def test_head_model_from_base_checkpoint_and_back(caplog):
    case = load_case("v3", "base")
    with caplog.at_level("WARNING", logger="deberta_xf"):
        model = deberta_xf.DebertaV2ForSequenceClassification.from_pretrained(case.directory)
    assert "freshly initialised" in caplog.text
    assert set(model.loading_report.missing) == {"pooler.dense.weight", "pooler.dense.bias", "classifier.weight",
                                                 "classifier.bias"}
    with torch.no_grad():
        hidden = model.deberta(**case.model_inputs).last_hidden_state.numpy()
    assert np.abs(hidden - case.pt["last_hidden_state"])[case.attention_mask.astype(bool)].max() <= 1e-6
    head_case = load_case("v3", "question-answering")
    base = deberta_xf.DebertaV2Model.from_pretrained(head_case.directory)
    assert set(base.loading_report.unexpected) == {"qa_outputs.bias", "qa_outputs.weight"}


def test_known_extras_are_ignored(tmp_path):
    from deberta_xf.formats import open_weights, write_arrays

    case = load_case("v3", "masked-lm")
    arrays = open_weights(os.path.join(case.directory, "model.safetensors")).read_all()
    arrays["deberta.embeddings.position_ids"] = np.arange(64)[None]
    arrays["deberta.embeddings.position_embeddings.weight"] = np.zeros((64, 32), np.float32)
    arrays["mask_predictions.classifer.weight"] = np.zeros((1, 32), np.float32)
    arrays["cls.predictions.decoder.weight"] = arrays["deberta.embeddings.word_embeddings.weight"]
    write_arrays(str(tmp_path / "model.safetensors"), arrays)
    shutil.copy(os.path.join(case.directory, "config.json"), tmp_path)
    model = deberta_xf.DebertaV2ForMaskedLM.from_pretrained(tmp_path)
    assert not model.loading_report.unexpected
    assert len(model.loading_report.ignored) == 4
    assert_matches(case.pt, run(model, case), case.task, case.attention_mask)


# ----------------------------------------------------------------------------------------------------------------
# Bad input: clear errors naming the problem
def _copy_case(tmp_path, variant="v3", task="base"):
    case = load_case(variant, task)
    dst = tmp_path / "ckpt"
    shutil.copytree(case.directory, dst)
    return dst


def test_missing_weights_file(tmp_path):
    dst = _copy_case(tmp_path)
    for name in ("model.safetensors", "pytorch_model.bin", "tf_model.h5"):
        os.remove(dst / name)
    with pytest.raises(CheckpointError, match="no weights file found"):
        deberta_xf.DebertaV2Model.from_pretrained(dst)


def test_missing_config(tmp_path):
    dst = _copy_case(tmp_path)
    os.remove(dst / "config.json")
    with pytest.raises(ConfigError, match="config.json"):
        deberta_xf.DebertaV2Model.from_pretrained(dst)


@pytest.mark.parametrize("cut", [4, 100, -10])
def test_truncated_safetensors(tmp_path, cut):
    dst = _copy_case(tmp_path)
    data = (dst / "model.safetensors").read_bytes()
    (dst / "model.safetensors").write_bytes(data[:cut])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*(truncated|corrupt)"):
        deberta_xf.DebertaV2Model.from_pretrained(dst)


def test_corrupt_safetensors_header(tmp_path):
    dst = _copy_case(tmp_path)
    data = bytearray((dst / "model.safetensors").read_bytes())
    data[8:20] = b"not json!!!!"
    (dst / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        deberta_xf.DebertaV2Model.from_pretrained(dst)


def test_wrong_shape_and_contradicting_config(tmp_path):
    dst = _copy_case(tmp_path)
    config = deberta_xf.DebertaV2Config.from_pretrained(dst, vocab_size=300)
    with pytest.raises(CheckpointError, match=r"embeddings\.word_embeddings\.weight.*\[211, 32\].*\[300, 32\].*"
                                              r"vocab_size=300"):
        deberta_xf.DebertaV2Model.from_pretrained(dst, config=config)
    config = deberta_xf.DebertaV2Config.from_pretrained(dst, position_buckets=32)
    with pytest.raises(CheckpointError, match="rel_embeddings.weight.*position_buckets=32"):
        deberta_xf.DebertaV2Model.from_pretrained(dst, config=config)


def test_missing_keys_are_listed(tmp_path):
    from deberta_xf.formats import open_weights, write_arrays

    dst = _copy_case(tmp_path)
    arrays = open_weights(str(dst / "model.safetensors")).read_all()
    del arrays["encoder.layer.1.attention.self.key_proj.bias"]
    del arrays["encoder.rel_embeddings.weight"]
    write_arrays(str(dst / "model.safetensors"), arrays)
    with pytest.raises(CheckpointError, match=r"missing 2 required tensor\(s\): encoder\.layer\.1\.attention\.self"
                                              r"\.key_proj\.bias, encoder\.rel_embeddings\.weight"):
        deberta_xf.DebertaV2Model.from_pretrained(dst)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    dst = _copy_case(tmp_path)
    os.remove(dst / "model.safetensors")
    torch.save({"embeddings.word_embeddings.weight": torch.zeros(2, 2), "evil": _Evil()}, dst / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: refused to load.*could run code"):
        deberta_xf.DebertaV2Model.from_pretrained(dst)


def test_corrupt_bin(tmp_path):
    dst = _copy_case(tmp_path)
    os.remove(dst / "model.safetensors")
    (dst / "pytorch_model.bin").write_bytes(b"\x80\x02garbage" * 10)
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin"):
        deberta_xf.DebertaV2Model.from_pretrained(dst)


def test_weights_file_without_config_is_an_error(tmp_path):
    case = load_case("v3", "base")
    with pytest.raises(ConfigError, match="needs a config"):
        deberta_xf.DebertaV2Model.from_pretrained(os.path.join(case.directory, "model.safetensors"))
