"""The conversion's read-ahead pipeline (issue 13): tensors are read, checked and laid out in a background thread in
the order each format writer announces, bounded in bytes; errors surface at the tensor that caused them; the digests
that verification compares are taken in the written file's layout, and only when verifying."""

from __future__ import annotations

import os
import threading
import time
import weakref

import numpy as np
import pytest

from deberta_xf import formats
from deberta_xf.convert import verify
from deberta_xf.convert.convert import ReadAhead, plan_conversion, write_checkpoint
from deberta_xf.errors import CheckpointError
from deberta_xf.formats import FORMATS, open_weights, write_weights
from reference_cases import REFERENCE

SRC = os.path.join(REFERENCE, "v3", "base")
THREAD = "deberta-xf-read-ahead"


def _source_tensors() -> dict[str, np.ndarray]:
    with open_weights(os.path.join(SRC, "model.safetensors")) as reader:
        return {name: reader.read(name) for name in reader.infos()}


def _no_read_ahead_thread() -> bool:
    return not any(t.name == THREAD for t in threading.enumerate())


# ---------------------------------------------------------------------------------------------------------------
# Every writer tells the producer its order, and then asks in exactly that order
class _Recorder:
    def __init__(self, tensors):
        self.tensors, self.announced, self.asked = tensors, [], []

    def prefetch(self, names):
        self.announced.append(list(names))

    def __call__(self, name):
        self.asked.append(name)
        return self.tensors[name]


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_writer_announces_the_order_it_asks_in(tmp_path, fmt):
    if fmt == "bin":
        pytest.importorskip("torch")
    tensors = _source_tensors()
    infos = {n: formats.TensorInfo(tuple(a.shape), a.dtype) for n, a in tensors.items()}
    get = _Recorder(tensors)
    write_weights(str(tmp_path / FORMATS[fmt].filenames[0]), infos, get, format=fmt, task="base")
    assert len(get.announced) == 1
    assert get.announced[0] == get.asked
    assert sorted(get.asked) == sorted(tensors)


# ---------------------------------------------------------------------------------------------------------------
# ReadAhead on its own
def _tracked_maker(sizes: dict[str, int], alive: dict[int, int], seen: list[tuple[str, int]], lock):
    """make(name): an array of sizes[name] bytes; records, as each is started, the bytes of the arrays still alive."""
    def make(name):
        with lock:
            seen.append((name, sum(alive.values())))
        array = np.full(sizes[name], len(name), np.uint8)
        with lock:
            alive[id(array)] = array.nbytes
        weakref.finalize(array, lambda key=id(array): alive.pop(key, None))
        time.sleep(0.002)
        return array
    return make


def test_read_ahead_keeps_to_its_budget_and_hands_over_in_order():
    sizes = {f"t{i}": size for i, size in enumerate([10, 30, 30, 100, 10, 10, 60, 5, 5, 5, 90, 1])}
    budget = 100
    alive, seen, lock = {}, [], threading.Lock()
    taken = []
    read_ahead = ReadAhead(_tracked_maker(sizes, alive, seen, lock), sizes, budget, taken.append)
    order = list(sizes)
    read_ahead.prefetch(order)
    for name in order:
        array = read_ahead(name)
        assert array.nbytes == sizes[name] and array[0] == len(name)
        time.sleep(0.005)  # the writer writes; the thread reads ahead meanwhile
        del array
    read_ahead.close()
    assert [name for name, _ in seen] == order  # each made once, in order
    assert taken == [sizes[n] for n in order]
    for name, alive_bytes in seen:  # what was alive when each was started, plus it, fits (or it was made alone)
        assert alive_bytes + sizes[name] <= budget or alive_bytes == 0, (name, alive_bytes)
    assert max(alive_bytes for _, alive_bytes in seen) > 0  # it did read ahead
    assert _no_read_ahead_thread()


def test_read_ahead_makes_an_unannounced_request_directly():
    sizes = {"a": 4, "b": 4, "c": 4}
    made = []

    def make(name):
        made.append(name)
        return np.full(4, ord(name), np.uint8)

    read_ahead = ReadAhead(make, sizes, 8)
    read_ahead.prefetch(["a", "b", "c"])
    assert read_ahead("a")[0] == ord("a")
    assert read_ahead("c")[0] == ord("c")  # out of order: the thread is stopped, c made here
    assert _no_read_ahead_thread()
    assert read_ahead("b")[0] == ord("b")  # nothing announced any more: made directly too
    assert made.count("c") == 1 or made[-2:] == ["c", "b"]
    without_prefetch = ReadAhead(make, sizes, 8)  # a writer that never announces: every tensor made directly
    assert [without_prefetch(n)[0] for n in "cab"] == [ord("c"), ord("a"), ord("b")]


def test_read_ahead_raises_an_error_when_its_tensor_is_asked_for():
    sizes = {"a": 1, "b": 1, "c": 1}

    def make(name):
        if name == "b":
            raise CheckpointError("weights.bin: cannot read tensor 'b'")
        return np.zeros(1, np.uint8)

    read_ahead = ReadAhead(make, sizes, 10)
    read_ahead.prefetch(["a", "b", "c"])
    time.sleep(0.05)  # the thread has met the error by now; it is not raised before b is asked for
    assert read_ahead("a").shape == (1,)
    with pytest.raises(CheckpointError, match="cannot read tensor 'b'"):
        read_ahead("b")
    assert _no_read_ahead_thread()


def test_a_failing_conversion_leaves_no_thread_behind(tmp_path, monkeypatch):
    plan = plan_conversion(SRC, str(tmp_path / "out"), "tf")
    real = formats.TensorReader
    reads = []

    def read(self, name, _real=plan.source_format.open(plan.weights_path).__class__.read):
        reads.append(name)
        if len(reads) == 3:
            raise OSError("disk went away")
        return _real(self, name)

    monkeypatch.setattr(plan.source_format.open(plan.weights_path).__class__, "read", read)
    os.makedirs(tmp_path / "tmp")
    with pytest.raises(CheckpointError, match=r"cannot read tensor .*OSError: disk went away"):
        write_checkpoint(plan, str(tmp_path / "tmp"))
    assert len(reads) == 3 and real is formats.TensorReader
    assert _no_read_ahead_thread()


# ---------------------------------------------------------------------------------------------------------------
# Digests in the written file's layout
@pytest.mark.parametrize("to, fmt", [("tf", "tf_h5"), ("flax", "msgpack"), ("torch", "safetensors")])
def test_digests_are_taken_in_the_files_layout_and_catch_a_changed_tensor(tmp_path, to, fmt):
    plan = plan_conversion(SRC, str(tmp_path / "out"), to, format=fmt)
    directory = str(tmp_path / "written")
    os.makedirs(directory)
    assert write_checkpoint(plan, directory).digests == {}  # not verifying: no digest taken
    written = write_checkpoint(plan, directory, digest=True)
    assert sorted(written.digests) == sorted(plan.infos)
    verifier = verify.Verifier.__new__(verify.Verifier)
    verifier.plan = plan
    assert verifier.check_tensors(directory, written.digests) == ([], len(plan.infos))
    assert verifier.check_tensors(directory) == ([], len(plan.infos))  # source re-read and compared instead
    # a kernel stored transposed in TF and Flax: its digest is of the bytes as stored
    name = "encoder.layer.0.attention.self.query_proj.weight"
    with open_weights(os.path.join(SRC, "model.safetensors")) as reader:
        kernel = reader.read(name)
    stored = np.ascontiguousarray(kernel.T if fmt != "safetensors" else kernel)
    assert written.digests[name] == verify.tensor_digest(stored)
    # change one number of that tensor in the written file: verification names it
    wrong = dict(written.digests, **{name: verify.tensor_digest(stored + np.float32(1))})
    problems, identical = verifier.check_tensors(directory, wrong)
    assert problems == [f"{name}: differs from the source"] and identical == len(plan.infos) - 1
