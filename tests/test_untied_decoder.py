"""A masked-LM checkpoint saved with ``tie_word_embeddings: false`` has its own decoder weight, which the reference
uses: every framework loads and uses it (it used to be dropped as a tied duplicate, off by up to 0.57 in the
logits), and a tied checkpoint still reuses the word embeddings, as the reference does. The committed fixtures
fixtures/reference-untied/ (made by fixtures/generate_untied.py with transformers 4.57.6, both head layouts) are
loaded in every framework, compared with the reference outputs, and converted between formats."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import deberta_xf
from deberta_xf import schema
from deberta_xf.compare import FP32_THRESHOLDS, flatten_outputs
from deberta_xf.configuration import DebertaV2Config
from deberta_xf.formats import open_weights
from deberta_xf.frameworks import FRAMEWORKS, REGISTRY
from reference_cases import FIXTURE_FRACTION, FIXTURES, assert_matches

CONFIG = dict(vocab_size=97, hidden_size=32, embedding_size=24, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=64, max_position_embeddings=64, relative_attention=True, position_buckets=16,
              pos_att_type="p2c|c2p", position_biased_input=False, legacy=True, initializer_range=0.3)
INSTALLED = [f for f in FRAMEWORKS if REGISTRY[f].available() is None]


def inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    mask = np.ones((2, 12), dtype=np.int64)
    mask[1, 9:] = 0
    return {"input_ids": rng.integers(5, 97, size=(2, 12)), "attention_mask": mask}


def test_schema_expects_the_decoder_only_when_untied():
    tied = DebertaV2Config(**CONFIG)
    untied = DebertaV2Config(**CONFIG, tie_word_embeddings=False)
    assert "cls.predictions.decoder.weight" not in schema.expected_shapes(tied, "masked-lm")
    assert schema.expected_shapes(untied, "masked-lm")["cls.predictions.decoder.weight"] == (97, 24)
    non_legacy = DebertaV2Config(**{**CONFIG, "embedding_size": 32, "legacy": False}, tie_word_embeddings=False)
    assert not any("decoder" in n for n in schema.expected_shapes(non_legacy, "masked-lm"))  # always tied


@pytest.fixture(scope="module")
def untied_checkpoint(tmp_path_factory):
    """An untied checkpoint written by our torch model, with a decoder far from the word embeddings."""
    torch = pytest.importorskip("torch")
    directory = tmp_path_factory.mktemp("untied")
    model = deberta_xf.create_model("torch", "masked-lm", config={**CONFIG, "tie_word_embeddings": False})
    with torch.no_grad():
        model.cls.predictions.decoder.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(1))
    model.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("framework", INSTALLED)
def test_every_framework_uses_the_untied_decoder(untied_checkpoint, framework):
    with open_weights(str(untied_checkpoint / "model.safetensors")) as reader:
        arrays = reader.read_all()
    decoder, embeddings = arrays["cls.predictions.decoder.weight"], arrays["deberta.embeddings.word_embeddings.weight"]
    assert decoder.shape == (97, 24) and not np.allclose(decoder, embeddings)
    model = deberta_xf.create_model(framework, "masked-lm", checkpoint=str(untied_checkpoint))
    state = model.canonical_state()
    np.testing.assert_array_equal(state["cls.predictions.decoder.weight"], decoder)
    # the logits, recomputed in numpy from the head's own decoder
    out = flatten_outputs(REGISTRY[framework].forward(model, inputs()))
    hidden = out[f"hidden_states.{CONFIG['num_hidden_layers']}"]  # the encoder output
    dense = hidden @ state["cls.predictions.transform.dense.weight"].T + state["cls.predictions.transform.dense.bias"]
    from math import erf, sqrt

    act = dense * 0.5 * (1 + np.vectorize(lambda x: erf(x / sqrt(2)))(dense))
    mean, var = act.mean(-1, keepdims=True), act.var(-1, keepdims=True)
    normed = (act - mean) / np.sqrt(var + 1e-7) * state["cls.predictions.transform.LayerNorm.weight"] + \
        state["cls.predictions.transform.LayerNorm.bias"]
    want = normed @ decoder.T + state["cls.predictions.bias"]
    keep = inputs()["attention_mask"].astype(bool)
    assert np.abs(out["logits"] - want)[keep].max() <= FP32_THRESHOLDS["mlm_logits"]
    tied_logits = normed @ embeddings.T + state["cls.predictions.bias"]
    assert np.abs(out["logits"] - tied_logits)[keep].max() > 0.5  # the decoder really is not the embeddings
    # and it survives save_pretrained in the framework's own format
    model.save_pretrained(untied_checkpoint.parent / f"saved-{framework}")
    again = deberta_xf.create_model(framework, "masked-lm", checkpoint=str(untied_checkpoint.parent /
                                                                           f"saved-{framework}"))
    np.testing.assert_array_equal(again.canonical_state()["cls.predictions.decoder.weight"], decoder)


def test_a_tied_config_reuses_the_embeddings_whatever_the_file_holds(untied_checkpoint, tmp_path):
    pytest.importorskip("torch")
    tied_dir = tmp_path / "tied"
    tied_dir.mkdir()
    config = json.loads((untied_checkpoint / "config.json").read_text())
    config["tie_word_embeddings"] = True
    (tied_dir / "config.json").write_text(json.dumps(config))
    (tied_dir / "model.safetensors").write_bytes((untied_checkpoint / "model.safetensors").read_bytes())
    model = deberta_xf.create_model("torch", "masked-lm", checkpoint=str(tied_dir))
    assert "cls.predictions.decoder.weight" in model.loading_report.ignored
    assert model.cls.predictions.decoder is None


@pytest.mark.reference
def test_untied_decoder_matches_the_reference(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    config = transformers.DebertaV2Config(**CONFIG, tie_word_embeddings=False)
    reference = transformers.DebertaV2ForMaskedLM(config).eval()
    reference.save_pretrained(tmp_path)
    batch = {k: torch.as_tensor(v) for k, v in inputs().items()}
    with torch.no_grad():
        want = reference(**batch).logits.numpy()
    assert not torch.equal(reference.cls.predictions.decoder.weight, reference.deberta.embeddings.word_embeddings.weight)
    for framework in INSTALLED:
        model = deberta_xf.create_model(framework, "masked-lm", checkpoint=str(tmp_path))
        got = flatten_outputs(REGISTRY[framework].forward(model, inputs()))["logits"]
        keep = inputs()["attention_mask"].astype(bool)
        assert np.abs(got - want)[keep].max() <= FP32_THRESHOLDS["mlm_logits"], framework


# ----------------------------------------------------------------------------------------------------------------
# The reference's own untied checkpoints (fixtures/reference-untied/, both head layouts; PyTorch reference outputs:
# the reference TF port has no untied decoder, see the manifest)
UNTIED = os.path.join(FIXTURES, "reference-untied")
with open(os.path.join(UNTIED, "manifest.json"), encoding="utf-8") as _f:
    UNTIED_CASES = {c["variant"]: c for c in json.load(_f)["cases"]}
DECODER = "cls.predictions.decoder.weight"
WORD_EMBEDDINGS = "deberta.embeddings.word_embeddings.weight"


def untied_case(variant: str) -> tuple[str, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The checkpoint directory, the inputs (with labels) and the reference PyTorch outputs of one case."""
    directory = os.path.join(UNTIED, variant, "masked-lm")
    data = np.load(os.path.join(directory, "reference.npz"))
    inputs = {k.partition(".")[2]: data[k] for k in data.files if k.startswith("inputs.")}
    reference = {k.partition(".")[2]: data[k] for k in data.files if k.startswith("pt.")}
    return directory, inputs, reference


def test_the_untied_fixtures_hold_both_head_layouts():
    assert set(UNTIED_CASES) == {"legacy", "lmpred"} and not any(c["tf"] for c in UNTIED_CASES.values())
    legacy, _, reference = untied_case("legacy")
    with open_weights(os.path.join(legacy, "model.safetensors")) as reader:
        arrays = reader.read_all()
    assert arrays[DECODER].shape == (97, 24) and arrays[WORD_EMBEDDINGS].shape == (97, 24)
    assert np.abs(arrays[DECODER] - arrays[WORD_EMBEDDINGS]).max() > 1.0
    assert UNTIED_CASES["legacy"]["max_abs_untied_vs_tied_logits"] > 1.0  # the reference uses its own decoder
    assert reference["logits"].shape == (3, 20, 97) and "loss" in reference
    lmpred, _, _ = untied_case("lmpred")
    with open_weights(os.path.join(lmpred, "model.safetensors")) as reader:
        names = set(reader.shapes())
    assert "lm_predictions.lm_head.dense.weight" in names and not any("decoder" in n for n in names)
    assert json.loads(open(os.path.join(lmpred, "config.json")).read())["tie_word_embeddings"] is False


@pytest.mark.parametrize("variant", ["legacy", "lmpred"])
@pytest.mark.parametrize("framework", INSTALLED)
def test_every_framework_matches_the_reference_untied_checkpoint(framework, variant):
    directory, inputs, reference = untied_case(variant)
    fw = REGISTRY[framework]
    execution = fw.run(directory, "masked-lm", "float32", inputs, fw.resolve_device("cpu"))
    assert execution.weights_file == "model.safetensors"
    assert_matches(reference, execution.outputs, "masked-lm", inputs["attention_mask"],
                   f"{framework} {variant}", scale=FIXTURE_FRACTION)


@pytest.mark.parametrize("variant", ["legacy", "lmpred"])
@pytest.mark.parametrize("to", [f for f in ("tf", "flax") if f in INSTALLED])
def test_conversion_keeps_the_untied_decoder(tmp_path, variant, to):
    from deberta_xf.convert.convert import convert_checkpoint

    directory, inputs, reference = untied_case(variant)
    destination = str(tmp_path / to)
    result = convert_checkpoint(directory, destination, to, verify=False, log=lambda s: None)
    assert result.kept
    assert json.loads(open(os.path.join(destination, "config.json")).read())["tie_word_embeddings"] is False
    with open_weights(os.path.join(directory, "model.safetensors")) as reader:
        source = reader.read_all()
    fw = REGISTRY[to]
    execution = fw.run(destination, "masked-lm", "float32", inputs, fw.resolve_device("cpu"))
    assert execution.weights_file == {"tf": "tf_model.h5", "flax": "flax_model.msgpack"}[to]
    assert_matches(reference, execution.outputs, "masked-lm", inputs["attention_mask"], f"{variant} -> {to}",
                   scale=FIXTURE_FRACTION)
    model = fw.load(destination, "masked-lm", "float32", fw.resolve_device("cpu"))
    state = model.canonical_state()
    if variant == "legacy":
        np.testing.assert_array_equal(state[DECODER], source[DECODER])  # kept, bit for bit
    else:
        assert DECODER not in state  # lm_predictions multiplies by the word embeddings, untied or not
    # and back to PyTorch safetensors
    back = str(tmp_path / f"{to}-back")
    assert convert_checkpoint(destination, back, "torch", verify=False, log=lambda s: None).kept
    with open_weights(os.path.join(back, "model.safetensors")) as reader:
        again = reader.read_all()
    assert set(again) == set(source)
    for name in source:
        np.testing.assert_array_equal(again[name], source[name], err_msg=name)
