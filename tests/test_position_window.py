"""The relative-embedding window: inputs shorter than the span read only part of the 2 * span rows.

The fixtures' sequences are longer than their spans, so this path is checked here: trimmed == untrimmed in
PyTorch (whose untrimmed path is bit-exact against the reference), and TF and Flax agree with it on a
configuration where the window is trimmed and log buckets are in use.
"""

from __future__ import annotations

import numpy as np
import pytest

from deberta_xf import relative_position
from deberta_xf.configuration import DebertaV2Config
from deberta_xf.compare import flatten_outputs
from reference_cases import assert_matches

torch = pytest.importorskip("torch")

# span 64 (mid 32): a length of 50 uses log buckets for |i - j| > 32 and reads rows 15..113 of 128.
CONFIG = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
              max_position_embeddings=128, relative_attention=True, position_buckets=64, norm_rel_ebd="layer_norm",
              share_att_key=True, pos_att_type="p2c|c2p", position_biased_input=False, initializer_range=0.3)
LENGTH = 50


def inputs():
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 97, size=(2, LENGTH))
    mask = np.ones((2, LENGTH), dtype=np.int64)
    mask[1, 40:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_window_is_trimmed_and_indices_by_distance():
    config = DebertaV2Config(**CONFIG)
    full = relative_position.attention_position_window(config, LENGTH, trim=False)
    window = relative_position.attention_position_window(config, LENGTH)
    assert (full.start, full.stop) == (0, 128)
    assert 0 < window.start and window.stop < 128
    for term in ("c2p", "p2c"):
        np.testing.assert_array_equal(window.index[term] + window.start, full.index[term])
        vector = relative_position.by_distance(full.index[term])
        a, b = np.indices((LENGTH, LENGTH))
        np.testing.assert_array_equal(vector[LENGTH - 1 - a + b], full.index[term])


def test_distance_table_gives_every_length_its_indices():
    """The one small table per config, looked up by clamped distance, is exactly the [L, L] indices and window of
    every length, short, long, and beyond the span and max_position_embeddings."""
    config = DebertaV2Config(**CONFIG)
    table = relative_position.distance_table(config)
    for length in (1, 2, 33, LENGTH, 64, 65, 129, 400):
        positions = np.arange(length)
        got = table.lookup(positions[:, None] - positions[None, :])
        want = relative_position.attention_position_window(config, length, trim=False)
        assert set(got) == set(want.index) == {"c2p", "p2c"}
        for term in got:
            np.testing.assert_array_equal(got[term], want.index[term])
        trimmed = relative_position.attention_position_window(config, length)
        assert table.window(length) == (trimmed.start, trimmed.stop)


def test_trimmed_equals_untrimmed(monkeypatch):
    from deberta_xf.torch import modeling_deberta_v2 as modeling

    model = modeling.DebertaV2Model.from_config(DebertaV2Config(**CONFIG), seed=0)
    with torch.no_grad():
        trimmed = model(**inputs(), output_hidden_states=True).last_hidden_state
        monkeypatch.setattr(relative_position.DistanceTable, "window", lambda self, length: (0, 2 * self.span))
        untrimmed = model(**inputs(), output_hidden_states=True).last_hidden_state
    assert torch.equal(trimmed, untrimmed)
    assert float(trimmed.abs().max()) > 0.5


@pytest.mark.parametrize("framework", ["tf", "flax"])
def test_frameworks_agree_on_a_trimmed_window(tmp_path, framework):
    import deberta_xf

    torch_model = deberta_xf.create_model("torch", "base", config=CONFIG)
    torch_model.save_pretrained(tmp_path)
    with torch.no_grad():
        expected = flatten_outputs(torch_model(**inputs(), output_hidden_states=True))
    other = deberta_xf.create_model(framework, "base", checkpoint=tmp_path)
    got = flatten_outputs(other(**inputs(), output_hidden_states=True))
    assert_matches(expected, got, "base", inputs()["attention_mask"], f"{framework} vs torch")
