"""Memory of a verified conversion (issue 13): each framework loads and runs in a process of its own, checkpoints
are loaded one tensor at a time, and the benchmark counts a command's child processes in its peak memory."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from deberta_xf import errors
from deberta_xf.convert import verify
from deberta_xf.convert.convert import convert_checkpoint
from deberta_xf.frameworks import get_framework
from deberta_xf.loading import load_checkpoint, open_checkpoint
from reference_cases import REFERENCE, ROOT

pytest.importorskip("torch")

SRC = os.path.join(REFERENCE, "v3", "base")


def _inputs() -> dict[str, np.ndarray]:
    ids = np.array([[1, 17, 23, 99, 2], [1, 5, 2, 0, 0]], np.int64)
    return {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64), "token_type_ids": np.zeros_like(ids)}


# ---------------------------------------------------------------------------------------------------------------
# Verification: one process per framework
def test_verification_runs_the_source_and_the_target_each_in_a_process(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow")
    runs = []
    real_run = verify.subprocess.run

    def run(command, **kwargs):
        runs.append(command)
        return real_run(command, **kwargs)

    monkeypatch.setattr(verify.subprocess, "run", run)
    dst = str(tmp_path / "out")
    result = convert_checkpoint(SRC, dst, "tf")
    assert result.kept and result.verification.passed
    assert len(result.verification.comparisons) >= 3
    assert len(runs) == 2
    assert runs[0][3:6] == ["torch", os.path.abspath(os.path.join(SRC, "model.safetensors")), "base"]
    assert runs[1][3] == "tf" and runs[1][5] == "base"
    assert os.path.dirname(runs[1][4]) == str(tmp_path) and runs[1][4] != dst  # DST's temporary directory
    assert all(c[:3] == [sys.executable, "-m", "deberta_xf.convert.verify"] for c in runs)
    assert runs[0][-1].endswith("config.json") and runs[1][-1] == ""  # the source's config; DST's own


def test_a_run_in_a_process_gives_the_outputs_of_a_run_here():
    framework = get_framework("torch")
    inputs = _inputs()
    outputs, weights = verify.run_in_subprocess("torch", SRC, "base", inputs)
    with framework.precision("float32"):
        here = framework.outputs(framework.load(SRC, "base"), inputs)
    assert os.path.basename(weights) == "model.safetensors"
    assert sorted(outputs) == sorted(here) and len(outputs) > 2
    for name in here:
        assert outputs[name].dtype == np.float32 and outputs[name].shape == here[name].shape
        np.testing.assert_allclose(outputs[name], here[name], rtol=0, atol=1e-6)


def test_a_failure_in_the_process_comes_back_with_its_type_and_message(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(verify.SubprocessError) as info:
        verify.run_in_subprocess("torch", missing, "base", _inputs())
    err = info.value
    assert err.type_name == "CheckpointNotFoundError" and missing in err.message
    assert str(err).startswith("CheckpointNotFoundError: ") and missing in str(err)
    original = err.original()  # a source that fails to load raises what from_pretrained raised
    assert type(original) is errors.CheckpointNotFoundError and str(original) == err.message
    foreign = verify.SubprocessError("tf", "ValueError", "bad value", "builtins").original()
    assert type(foreign) is RuntimeError and "tf" in str(foreign) and "ValueError: bad value" in str(foreign)


# ---------------------------------------------------------------------------------------------------------------
# Loading one tensor at a time
def test_streamed_arrays_are_load_checkpoints_arrays():
    loaded = load_checkpoint(SRC, "base", "torch")
    with open_checkpoint(SRC, "base", "torch") as checkpoint:
        assert checkpoint.stored_dtype == loaded.stored_dtype == "float32"
        names = []
        for name, array in checkpoint.arrays():
            names.append(name)
            assert array.dtype == loaded.arrays[name].dtype and np.array_equal(array, loaded.arrays[name])
    assert names == list(loaded.arrays) and len(names) > 20


def test_tf_assigns_large_tensors_in_blocks_exactly(monkeypatch):
    pytest.importorskip("tensorflow")
    from deberta_xf.tf import modeling_tf_deberta_v2 as tf_modeling

    monkeypatch.setattr(tf_modeling, "_ASSIGN_BLOCK_BYTES", 1000)  # every matrix in blocks, some of 1 row
    model = tf_modeling.TFDebertaV2Model.from_pretrained(SRC)
    state = model.canonical_state()
    loaded = load_checkpoint(SRC, "base", "tf")
    assert sorted(state) == sorted(loaded.arrays)
    for name, array in loaded.arrays.items():
        assert np.array_equal(state[name], array), name


# A memory-mapped pytorch_model.bin does not stay resident as its tensors are read
READ_BIN = """
import sys
import numpy as np
from deberta_xf.formats import open_weights

def resident(field="VmRSS"):  # VmHWM: this process's peak (ru_maxrss would carry the parent's over fork + exec)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) << 10 for line in status if line.startswith(field))

with open_weights(sys.argv[1]) as reader:
    before = resident()
    for _ in range(2):  # a second pass reads the same bytes again
        for name in reader.infos():
            array = reader.read(name)
            assert np.all(array == float(name.split("_")[1])), name
            del array
    print(before, resident(), resident("VmHWM"))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmRSS from /proc (Linux)")
@pytest.mark.parametrize("where", ["child", "here"])
def test_reading_a_mapped_bin_leaves_none_of_it_resident(tmp_path, where):
    """torch.load maps the file; the tensors are read from the file, never through the mapping, so reading every
    tensor leaves none of the file's pages in this process. "child": the reading process has not imported torch and
    the file is over 256 MiB, so torch.load runs in a child process; "here": torch is imported, so it runs here."""
    from deberta_xf.formats import write_arrays

    tensors = {f"t_{i}": np.full((1024, 16384 + 1000 * i), float(i), np.float32) for i in range(4)}  # 64-80 MiB each
    path = str(tmp_path / "pytorch_model.bin")
    write_arrays(path, tensors, format="bin")
    del tensors
    script = READ_BIN + f"assert ('torch' in sys.modules) == {where == 'here'}\n"
    if where == "here":
        script = "import torch\n" + script
    out = subprocess.run([sys.executable, "-c", script, path], capture_output=True, text=True, check=True).stdout
    before, after, peak = map(int, out.split())
    size = os.path.getsize(path)
    assert size > 256 * MIB
    assert after - before < 32 * MIB  # none of the file's pages are resident (else: + the whole file, ~300 MiB)
    assert peak - before < 2 * 81 * MIB  # about one tensor at a time


# ---------------------------------------------------------------------------------------------------------------
# The benchmark's peak memory counts child processes
HOLD = """
import subprocess, sys, time
block = bytearray({mib} << 20)  # touched: resident
for _ in range({children}):
    subprocess.run([sys.executable, "-c", "import time; b = bytearray({child_mib} << 20); time.sleep(0.4)"])
time.sleep(0.2)
"""
# Measured from a small process, as the benchmark does: Linux carries a parent's peak RSS over fork + exec into
# the child's ru_maxrss, so this (large) test process would inflate it. Prints measure()'s peak and ru_maxrss.
MEASURE = """
import importlib.util, os, subprocess, sys
spec = importlib.util.spec_from_file_location("bench_convert", sys.argv[1])
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
command = [sys.executable, "-c", sys.argv[2]]
_, peak, _ = bench.measure(command)
_, _, usage = os.wait4(subprocess.Popen(command).pid, 0)
print(peak, usage.ru_maxrss * 1024)
"""
MIB = 2 ** 20


def _measure(mib: int, children: int, child_mib: int) -> tuple[int, int]:
    """(the benchmark's peak, ru_maxrss of the command alone) in bytes for HOLD with these sizes."""
    out = subprocess.run([sys.executable, "-c", MEASURE, os.path.join(ROOT, "bench", "bench_convert.py"),
                          HOLD.format(mib=mib, children=children, child_mib=child_mib)],
                         capture_output=True, text=True, check=True).stdout
    peak, maxrss = map(int, out.split())
    return peak, maxrss


def test_bench_peak_adds_a_waiting_parent_and_its_child():
    alone, _ = _measure(150, 0, 0)
    both, maxrss = _measure(150, 1, 200)
    assert 150 * MIB < alone < 200 * MIB
    assert both > alone + 195 * MIB  # the parent's 150 MiB and the child's 200 MiB at once
    assert maxrss < both - 100 * MIB  # what wait4 alone reports: the largest process, not the sum
    sequential, _ = _measure(150, 2, 200)  # two children one after the other are not added up
    assert both - 40 * MIB < sequential < both + 40 * MIB
