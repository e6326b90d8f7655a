"""Resource limits (issue 12, docs/limits.md): a model that cannot fit in memory is refused before anything is
allocated, in every framework; NaN/Inf weights load with a warning naming them."""

from __future__ import annotations

import os
import re
import shutil
import time
import warnings

import numpy as np
import pytest

from deberta_xf import limits
from deberta_xf.configuration import DebertaV2Config
from deberta_xf.errors import DebertaXfError, MemoryLimitError
from deberta_xf.formats import open_weights, write_arrays
from deberta_xf.loading import load_checkpoint

TINY = os.path.join(os.path.dirname(__file__), "..", "fixtures", "tiny-deberta-v3")

# 10**9 rows of 64: 6.4e10 parameters (under the config's MAX_PARAMETERS, so the config itself is valid), 256 GB
HUGE = dict(vocab_size=10**9, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
CAP = 2**36  # the tests see at most 64 GiB available, so they hold on any machine


@pytest.fixture
def capped(monkeypatch):
    real = limits.available_memory
    monkeypatch.setattr(limits, "available_memory", lambda: min(real() or CAP, CAP))


def assert_refused(err: MemoryLimitError, model: str) -> None:
    message = str(err)
    assert isinstance(err, DebertaXfError)
    assert model in message and "vocab_size 1000000000" in message and "hidden_size 64" in message
    needed = 4 * (10**9 * 64)  # the word embeddings alone, float32
    needed_shown, available_shown = (int(n.replace(",", "")) for n in re.findall(r"\(([\d,]+) bytes\)", message))
    assert needed_shown > needed and available_shown <= CAP, message


# ---------------------------------------------------------------------------------------------------------------
# The estimate and the machine's memory
def test_parameter_bytes_matches_a_built_model():
    torch = pytest.importorskip("torch")
    from deberta_xf.torch.modeling_deberta_v2 import DebertaV2ForMaskedLM, DebertaV2ForSequenceClassification

    config = DebertaV2Config.from_pretrained(TINY)
    for cls, task in ((DebertaV2ForSequenceClassification, "sequence-classification"),
                      (DebertaV2ForMaskedLM, "masked-lm")):
        model = cls.from_config(config, seed=0)
        count = sum(p.numel() for p in model.parameters())
        assert limits.parameter_bytes(config, task) == 4 * count
        assert limits.parameter_bytes(config, task, torch.bfloat16) == 2 * count
        assert limits.parameter_bytes(config, task, "float16") == 2 * count


def test_available_memory_reads_memavailable(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       32000000 kB\nMemFree:         1000000 kB\nMemAvailable:   24104740 kB\n")
    assert limits.available_memory(str(meminfo)) == 24104740 * 1024
    # no /proc (macOS): the free pages from sysconf
    fallback = limits.available_memory(str(tmp_path / "missing"))
    assert fallback == os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def test_check_memory_names_the_sizes_and_both_numbers():
    config = DebertaV2Config(**HUGE)
    with pytest.raises(MemoryLimitError) as info:
        limits.check_memory(config, "masked-lm", available=8 * 2**30)
    message = str(info.value)
    assert "DebertaV2ForMaskedLM" in message and "vocab_size 1000000000" in message and "2 layers" in message
    assert "8,589,934,592 bytes" in message and "float32" in message
    small = DebertaV2Config.from_pretrained(TINY)
    assert limits.check_memory(small, "sequence-classification", available=8 * 2**30) < 2**24


# ---------------------------------------------------------------------------------------------------------------
# Every framework refuses before allocating
def _refused_fast(build) -> MemoryLimitError:
    start = time.perf_counter()
    with pytest.raises(MemoryLimitError) as info:
        build()
    assert time.perf_counter() - start < 2.0  # 256 GB would take minutes to allocate (or kill the process)
    return info.value


def test_torch_refuses_a_model_larger_than_memory(capped):
    pytest.importorskip("torch")
    import deberta_xf as dx

    config = DebertaV2Config(**HUGE)
    assert_refused(_refused_fast(lambda: dx.DebertaV2ForMaskedLM.from_config(config)), "DebertaV2ForMaskedLM")
    assert_refused(_refused_fast(lambda: dx.create_model("torch", "base", config=config)), "DebertaV2Model")
    assert_refused(_refused_fast(lambda: dx.DebertaV2ForTokenClassification(config)),  # the class itself
                   "DebertaV2ForTokenClassification")


def test_tf_refuses_a_model_larger_than_memory(capped):
    pytest.importorskip("tensorflow")
    import deberta_xf as dx

    config = DebertaV2Config(**HUGE)
    assert_refused(_refused_fast(lambda: dx.TFDebertaV2Model.from_config(config)), "TFDebertaV2Model")
    assert_refused(_refused_fast(lambda: dx.create_model("tf", "masked-lm", config=config.to_dict())),
                   "TFDebertaV2ForMaskedLM")
    assert_refused(_refused_fast(lambda: dx.TFDebertaV2ForQuestionAnswering(config)), "TFDebertaV2ForQuestionAnswering")


def test_flax_refuses_a_model_larger_than_memory(capped):
    pytest.importorskip("flax")
    import deberta_xf as dx

    config = DebertaV2Config(**HUGE)
    assert_refused(_refused_fast(lambda: dx.FlaxDebertaV2Model.from_config(config)), "FlaxDebertaV2Model")
    assert_refused(_refused_fast(lambda: dx.create_model("flax", "base", config=config)), "FlaxDebertaV2Model")
    import flax.nnx as nnx

    assert_refused(_refused_fast(lambda: dx.FlaxDebertaV2ForMultipleChoice(config, rngs=nnx.Rngs(0))),
                   "FlaxDebertaV2ForMultipleChoice")


def test_from_pretrained_refuses_before_reading(tmp_path, capped):
    """A checkpoint whose config.json describes a model too large: refused before its weights are opened."""
    ckpt = tmp_path / "huge"
    ckpt.mkdir()
    DebertaV2Config(**HUGE).to_json_file(str(ckpt / "config.json"))
    (ckpt / "model.safetensors").write_bytes(b"not even read")
    with pytest.raises(MemoryLimitError) as info:
        load_checkpoint(str(ckpt), "base", "torch")
    assert_refused(info.value, "DebertaV2Model")


# ---------------------------------------------------------------------------------------------------------------
# NaN / Inf weights: loaded, with one warning naming the file and the tensors
def poisoned_copy(tmp_path, poison: dict[str, float], dtype=None) -> tuple[str, dict[str, np.ndarray]]:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(TINY, ckpt)
    with open_weights(os.path.join(TINY, "model.safetensors")) as reader:
        arrays = reader.read_all()
    for name, value in poison.items():
        arrays[name] = arrays[name].copy()
        arrays[name].reshape(-1)[-1] = value
    if dtype is not None:
        arrays = {k: v.astype(dtype) if v.dtype.kind == "f" else v for k, v in arrays.items()}
    write_arrays(str(ckpt / "model.safetensors"), arrays)
    return str(ckpt), arrays


NAMES = sorted(n for n in ("deberta.encoder.layer.0.attention.self.query_proj.weight",
                           "deberta.encoder.layer.1.output.dense.bias", "classifier.weight"))


def test_nonfinite_weights_warn_naming_file_and_tensors(tmp_path):
    ckpt, _ = poisoned_copy(tmp_path, dict(zip(NAMES, (np.nan, np.inf, -np.inf))))
    with pytest.warns(UserWarning) as record:
        loaded = load_checkpoint(ckpt, "sequence-classification", "torch")
    messages = [str(w.message) for w in record if "NaN or Inf" in str(w.message)]
    assert len(messages) == 1
    assert os.path.join(ckpt, "model.safetensors") in messages[0] and "3 tensors" in messages[0]
    assert all(name in messages[0] for name in NAMES)
    assert np.isnan(loaded.arrays[NAMES[0]]).sum() + np.isinf(loaded.arrays[NAMES[0]]).sum() == 1  # loaded as is


def test_nonfinite_warning_lists_the_first_five(tmp_path):
    with open_weights(os.path.join(TINY, "model.safetensors")) as reader:
        floats = sorted(n for n, a in reader.read_all().items() if a.dtype.kind == "f")[:7]
    ckpt, _ = poisoned_copy(tmp_path, {n: np.nan for n in floats}, dtype=np.float16)
    with pytest.warns(UserWarning, match=r"7 tensors with NaN or Inf values: .* and 2 more") as record:
        load_checkpoint(ckpt, "sequence-classification", "flax", dtype=None)
    message = next(str(w.message) for w in record if "NaN or Inf" in str(w.message))
    assert [n for n in floats if n in message] == floats[:5]


def test_from_pretrained_warns_in_every_framework(tmp_path):
    import deberta_xf as dx

    ckpt, _ = poisoned_copy(tmp_path, {NAMES[1]: np.nan})
    for cls_name in ("DebertaV2ForSequenceClassification", "TFDebertaV2ForSequenceClassification",
                     "FlaxDebertaV2ForSequenceClassification"):
        with pytest.warns(UserWarning, match="1 tensor with NaN or Inf values: " + NAMES[1].replace(".", r"\.")):
            getattr(dx, cls_name).from_pretrained(ckpt)


def test_clean_weights_load_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_checkpoint(TINY, "sequence-classification", "torch")
