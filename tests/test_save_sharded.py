"""``save_pretrained(max_shard_size=...)`` in PyTorch and Flax (:func:`deberta_xf.loading.save_sharded`): the
reference's shard rule, file names and index, round trips, and a failed save leaving the directory untouched."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import deberta_xf  # noqa: E402
from deberta_xf import DebertaV2Config, DebertaV2ForMaskedLM, DebertaV2Model  # noqa: E402
from deberta_xf.errors import DebertaXfError  # noqa: E402

SMALL = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
             max_position_embeddings=512, type_vocab_size=16, relative_attention=False, position_biased_input=True,
             pos_att_type="None")


def ids_tensor(shape, vocab_size):
    return torch.randint(0, vocab_size, tuple(shape), generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------------------------------------------------------
# PyTorch
def _sharded_model(model_class=DebertaV2ForMaskedLM):
    torch.manual_seed(0)
    return model_class(DebertaV2Config(**SMALL))


@pytest.mark.parametrize("safe_serialization, weights_name", [(True, "model.safetensors"),
                                                              (False, "pytorch_model.bin")])
def test_save_pretrained_max_shard_size_round_trip(tmp_path, safe_serialization, weights_name):
    model = _sharded_model()
    model.save_pretrained(tmp_path, max_shard_size="20KB", safe_serialization=safe_serialization)
    stem, ext = weights_name.split(".")
    index = json.loads((tmp_path / f"{weights_name}.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2
    assert shards == [f"{stem}-{i:05d}-of-{len(shards):05d}.{ext}" for i in range(1, len(shards) + 1)]
    assert sorted(os.listdir(tmp_path)) == sorted(["config.json", f"{weights_name}.index.json", *shards])
    state = model.state_dict()
    assert set(index["weight_map"]) == set(state)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in state.values())
    for shard in shards:  # at most 20 kB each, unless one tensor alone is larger (the reference's rule)
        names = [n for n, f in index["weight_map"].items() if f == shard]
        size = sum(state[n].numel() * state[n].element_size() for n in names)
        assert size <= 20_000 or len(names) == 1

    reloaded = DebertaV2ForMaskedLM.from_pretrained(tmp_path)
    assert reloaded.weights_path.endswith(f"{weights_name}.index.json")
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    ids = ids_tensor([2, 7], 99)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=0)

    # a later unsharded save replaces the shards and the index (a loader prefers an index: no stale one is left)
    model.save_pretrained(tmp_path, safe_serialization=safe_serialization)
    assert sorted(os.listdir(tmp_path)) == ["config.json", weights_name]
    assert DebertaV2ForMaskedLM.from_pretrained(tmp_path).weights_path.endswith(weights_name)


def test_save_pretrained_default_is_one_file_and_sizes_are_parsed(tmp_path):
    model = _sharded_model(DebertaV2Model)
    model.save_pretrained(tmp_path / "default")  # 5GB: one file
    assert sorted(os.listdir(tmp_path / "default")) == ["config.json", "model.safetensors"]
    total = sum(p.numel() * 4 for p in model.parameters())
    model.save_pretrained(tmp_path / "exact", max_shard_size=total)  # an int is bytes; everything fits
    assert sorted(os.listdir(tmp_path / "exact")) == ["config.json", "model.safetensors"]
    model.save_pretrained(tmp_path / "mib", max_shard_size="0.02MiB")  # 20971 bytes
    assert "model.safetensors.index.json" in os.listdir(tmp_path / "mib")
    with pytest.raises(ValueError, match="max shard size"):
        model.save_pretrained(tmp_path / "bad", max_shard_size="lots")


@pytest.mark.reference
def test_sharded_files_are_the_references(tmp_path):
    """The same weights saved by transformers 4.57.6 with the same max_shard_size: the same files and index; and
    each side loads the other's sharded directory."""
    transformers = pytest.importorskip("transformers")
    model = _sharded_model(DebertaV2Model)
    reference = transformers.DebertaV2Model(transformers.DebertaV2Config(**model.config.to_dict()))
    reference.load_state_dict(model.state_dict())
    model.save_pretrained(tmp_path / "ours", max_shard_size="20KB")
    reference.save_pretrained(tmp_path / "ref", max_shard_size="20KB")
    ours_files = sorted(f for f in os.listdir(tmp_path / "ours") if f != "config.json")
    ref_files = sorted(f for f in os.listdir(tmp_path / "ref") if f != "config.json")
    assert ours_files == ref_files and len(ref_files) > 2
    ours_index = json.loads((tmp_path / "ours" / "model.safetensors.index.json").read_text())
    ref_index = json.loads((tmp_path / "ref" / "model.safetensors.index.json").read_text())
    assert ours_index["weight_map"] == ref_index["weight_map"]
    assert ours_index["metadata"]["total_size"] == ref_index["metadata"]["total_size"]

    ids = ids_tensor([2, 7], 99)
    loaded_ref = transformers.DebertaV2Model.from_pretrained(tmp_path / "ours").eval()
    loaded_ours = DebertaV2Model.from_pretrained(tmp_path / "ref")
    with torch.no_grad():
        expected = model(ids).last_hidden_state
        torch.testing.assert_close(loaded_ref(ids).last_hidden_state, expected, rtol=0, atol=0)
        torch.testing.assert_close(loaded_ours(ids).last_hidden_state, expected, rtol=0, atol=0)


def test_a_failed_sharded_save_leaves_the_directory_as_it_was(tmp_path, monkeypatch):
    from deberta_xf.formats import safetensors_io

    model = _sharded_model()
    model.save_pretrained(tmp_path)
    before = {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)}
    write, calls = safetensors_io.write, []

    def full_disk_at_the_third_shard(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device", path)
        return write(path, *args, **kwargs)

    monkeypatch.setattr(safetensors_io, "write", full_disk_at_the_third_shard)
    with pytest.raises(OSError, match="No space left"):
        model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)} == before  # no shard, no staging left


# ---------------------------------------------------------------------------------------------------------------
# Flax
def _flax_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 2, (13, 7), dtype=np.int32)
    mask[:, -1] = 1
    return {"input_ids": rng.integers(0, 99, (13, 7), dtype=np.int32), "attention_mask": mask,
            "token_type_ids": rng.integers(0, 16, (13, 7), dtype=np.int32)}


def test_flax_save_pretrained_max_shard_size_round_trip(tmp_path):
    pytest.importorskip("flax.nnx")
    from deberta_xf.frameworks import REGISTRY

    with REGISTRY["flax"].precision():  # full-fp32 matmuls: the PyTorch comparison below is at fp32 tolerance
        _check_flax_sharded_round_trip(tmp_path)


def _check_flax_sharded_round_trip(tmp_path):
    config, inputs = DebertaV2Config(**SMALL), _flax_inputs()
    model = deberta_xf.FlaxDebertaV2ForMaskedLM(config)
    model.save_pretrained(tmp_path, max_shard_size="20KB", safe_serialization=True)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2
    assert shards == [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    assert sorted(os.listdir(tmp_path)) == sorted(["config.json", "model.safetensors.index.json", *shards])
    state = model.canonical_state()
    assert set(index["weight_map"]) == set(state)
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in state.values())

    reloaded = deberta_xf.FlaxDebertaV2ForMaskedLM.from_pretrained(tmp_path)
    assert reloaded.weights_path.endswith("model.safetensors.index.json")
    for name, array in reloaded.canonical_state().items():
        np.testing.assert_array_equal(array, state[name], err_msg=name)
    np.testing.assert_array_equal(np.asarray(reloaded(**inputs).logits), np.asarray(model(**inputs).logits))
    pt = deberta_xf.DebertaV2ForMaskedLM.from_pretrained(tmp_path)  # the PyTorch model reads the same shards
    with torch.no_grad():
        pt_logits = pt(**{k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items()}).logits.numpy()
    np.testing.assert_allclose(pt_logits, np.asarray(model(**inputs).logits), atol=1e-5, rtol=0)

    model.save_pretrained(tmp_path, format="safetensors")  # unsharded: the shards and the index are removed
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]


def test_flax_save_pretrained_msgpack_is_one_file(tmp_path):
    pytest.importorskip("flax.nnx")
    model = deberta_xf.FlaxDebertaV2Model(DebertaV2Config(**SMALL))
    model.save_pretrained(tmp_path / "default")  # 10GB, msgpack: the reference's Flax defaults
    assert sorted(os.listdir(tmp_path / "default")) == ["config.json", "flax_model.msgpack"]
    with pytest.raises(DebertaXfError, match="msgpack format cannot be sharded"):
        model.save_pretrained(tmp_path / "small", max_shard_size="20KB")
    assert not (tmp_path / "small").exists()  # refused before anything is written
