"""PyTorch ``from_pretrained`` draws no random weights for a checkpoint that holds every parameter: the model is
built under :func:`no_init_weights` (torch.nn.init's initialisers and ``_init_weights`` skipped), then every
parameter is written from the checkpoint. A checkpoint without the head, or with tensors re-initialised by
``ignore_mismatched_sizes=True``, still builds the model as ``from_config`` does, so a seed gives the same fresh
tensors as before. torch.nn.init is restored after every load, a failed one included."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from deberta_xf.configuration import DebertaV2Config  # noqa: E402
from deberta_xf.errors import CheckpointShapeError  # noqa: E402
from deberta_xf.frameworks import REGISTRY  # noqa: E402
from deberta_xf.loading import CheckpointStream  # noqa: E402
from deberta_xf.torch.modeling_deberta_v2 import TORCH_INIT_FUNCTIONS, DebertaV2Model, no_init_weights  # noqa: E402

TINY = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=20,
            max_position_embeddings=32, relative_attention=True, pos_att_type="p2c|c2p", position_buckets=8,
            position_biased_input=False, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
# v2-style: nGiE convolution, absolute positions, embedding_size != hidden_size, token types, untied legacy decoder
V2_LIKE = dict(TINY, conv_kernel_size=3, position_biased_input=True, embedding_size=12, type_vocab_size=2,
               norm_rel_ebd="layer_norm", tie_word_embeddings=False)
ORIGINAL_INIT = {name: getattr(torch.nn.init, name) for name in TORCH_INIT_FUNCTIONS}
FULL_CASES = [pytest.param(task, TINY, id=task) for task in ["base", "sequence-classification", "token-classification",
                                                               "question-answering", "multiple-choice"]] + [
    pytest.param("masked-lm", dict(TINY, legacy=True), id="masked-lm-legacy"),
    pytest.param("masked-lm", dict(TINY, legacy=False), id="masked-lm-lm_predictions"),
    pytest.param("masked-lm", V2_LIKE, id="masked-lm-v2-untied-decoder"),
    pytest.param("sequence-classification", V2_LIKE, id="sequence-classification-v2")]


def model_class(task: str):
    return REGISTRY["torch"].model_class(task)


def saved(tmp_path, task: str, config: dict):
    """A checkpoint of a seeded random model of ``task``: (its directory, its parameters)."""
    model = model_class(task).from_config(DebertaV2Config(**config), seed=0)
    model.save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt", model.canonical_state()


def assert_init_restored():
    for name, function in ORIGINAL_INIT.items():
        assert getattr(torch.nn.init, name) is function, name


@pytest.mark.parametrize("task,config", FULL_CASES)
def test_a_full_checkpoint_is_loaded_without_drawing_random_numbers(tmp_path, task, config):
    directory, want = saved(tmp_path, task, config)
    before = torch.random.get_rng_state()
    model = model_class(task).from_pretrained(directory)
    assert torch.equal(torch.random.get_rng_state(), before)
    got = model.canonical_state()
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    fresh = model_class(task).from_config(DebertaV2Config(**config))  # buffers are computed, not skipped
    buffers = dict(model.named_buffers())
    assert sorted(buffers) == sorted(n for n, _ in fresh.named_buffers())
    for name, buffer in fresh.named_buffers():
        assert torch.equal(buffers[name], buffer), name
    assert not model.training
    assert_init_restored()


def test_a_legacy_masked_lm_checkpoint_fills_the_other_layout_completely(tmp_path):
    """cls.predictions.* read into the lm_predictions.lm_head layout (the decoder tied to the word embeddings in
    both): every parameter written, nothing drawn, the same logits."""
    directory, want = saved(tmp_path, "masked-lm", dict(TINY, legacy=True))
    before = torch.random.get_rng_state()
    model = model_class("masked-lm").from_pretrained(directory, legacy=False)
    assert torch.equal(torch.random.get_rng_state(), before)
    legacy = model_class("masked-lm").from_pretrained(directory)
    got = model.canonical_state()
    np.testing.assert_array_equal(got["lm_predictions.lm_head.dense.weight"],
                                  want["cls.predictions.transform.dense.weight"])
    np.testing.assert_array_equal(got["lm_predictions.lm_head.bias"], want["cls.predictions.bias"])
    ids = torch.tensor([[1, 5, 7, 9, 2]])
    torch.testing.assert_close(model(input_ids=ids).logits, legacy(input_ids=ids).logits, rtol=0, atol=1e-6)


def test_a_missing_head_is_drawn_as_from_config_draws_it(tmp_path):
    """A base checkpoint in a classifier: the backbone is the checkpoint's, the head is what from_config gives for
    the same seed (the model is built as before), and the RNG is consumed."""
    directory, backbone = saved(tmp_path, "base", TINY)
    cls = model_class("sequence-classification")
    torch.manual_seed(7)
    before = torch.random.get_rng_state()
    model = cls.from_pretrained(directory)
    assert not torch.equal(torch.random.get_rng_state(), before)
    assert sorted(model.loading_report.missing) == ["classifier.bias", "classifier.weight", "pooler.dense.bias",
                                                    "pooler.dense.weight"]
    reference = cls.from_config(DebertaV2Config(**TINY), seed=7).canonical_state()
    got = model.canonical_state()
    for name in model.loading_report.missing:
        np.testing.assert_array_equal(got[name], reference[name], err_msg=name)
    assert got["classifier.weight"].std() > 0 and not np.any(got["classifier.bias"])
    for name, value in backbone.items():
        np.testing.assert_array_equal(got["deberta." + name], value, err_msg=name)


def test_ignore_mismatched_sizes_draws_the_mismatched_tensor_as_before(tmp_path):
    directory, want = saved(tmp_path, "sequence-classification", dict(TINY, num_labels=2))
    cls = model_class("sequence-classification")
    torch.manual_seed(3)
    model = cls.from_pretrained(directory, num_labels=5, ignore_mismatched_sizes=True)
    assert sorted(model.loading_report.reinitialized) == ["classifier.bias", "classifier.weight"]
    got = model.canonical_state()
    weight = got["classifier.weight"]
    assert weight.shape == (5, 16) and np.all(np.isfinite(weight))
    std = model.config.initializer_range
    assert abs(weight.mean()) < 0.5 * std and 0.5 * std < weight.std() < 1.5 * std  # normal(0, 0.02)-like
    assert not np.any(got["classifier.bias"])
    reference = cls.from_config(DebertaV2Config(**TINY, num_labels=5), seed=3).canonical_state()
    np.testing.assert_array_equal(weight, reference["classifier.weight"])
    for name, value in want.items():
        if not name.startswith("classifier."):
            np.testing.assert_array_equal(got[name], value, err_msg=name)
    assert_init_restored()


def test_torch_init_is_restored_after_a_load_that_raises(tmp_path):
    directory, _ = saved(tmp_path, "base", TINY)
    expected = DebertaV2Model.from_config(DebertaV2Config(**TINY), seed=0).canonical_state()

    class FailsWhileBuilt(DebertaV2Model):
        def __init__(self, config):
            super().__init__(config)
            raise RuntimeError("failed while built")

    with pytest.raises(RuntimeError, match="failed while built"):
        FailsWhileBuilt.from_pretrained(directory)
    assert_init_restored()
    with pytest.raises(CheckpointShapeError, match="vocab_size=60"):
        DebertaV2Model.from_pretrained(directory, vocab_size=60)
    assert_init_restored()
    with pytest.raises(ZeroDivisionError), no_init_weights():
        assert torch.nn.init.normal_ is not ORIGINAL_INIT["normal_"]
        1 / 0
    assert_init_restored()
    again = DebertaV2Model.from_config(DebertaV2Config(**TINY), seed=0).canonical_state()  # _init_weights runs
    for name, value in expected.items():
        np.testing.assert_array_equal(again[name], value, err_msg=name)


def test_no_init_weights_allocates_without_initialising():
    config = DebertaV2Config(**TINY)
    before = torch.random.get_rng_state()
    with no_init_weights():
        model = DebertaV2Model(config)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert sorted(n for n, _ in model.named_parameters()) == sorted(
        n for n, _ in DebertaV2Model(config).named_parameters())


def test_a_parameter_the_checkpoint_did_not_write_is_an_internal_error(tmp_path, monkeypatch):
    directory, _ = saved(tmp_path, "base", TINY)
    arrays = CheckpointStream.arrays
    skipped = "encoder.layer.1.output.dense.bias"

    def arrays_but_one(self, stacklevel=3):
        return ((name, array) for name, array in arrays(self, stacklevel) if name != skipped)

    monkeypatch.setattr(CheckpointStream, "arrays", arrays_but_one)
    with pytest.raises(RuntimeError, match=f"internal error: .*model.safetensors.*{skipped}"):
        DebertaV2Model.from_pretrained(directory)
    assert_init_restored()
