"""`deberta-xf convert`: streamed, verified, atomic conversion between every framework and format.

- Every fixture checkpoint round-trips torch -> tf -> flax -> torch with bit-identical tensors (the pipeline
  without verification), and the reference's own tf_model.h5 converts to the reference's own PyTorch tensors.
- The full command, with verification, on a handful of cases and directions: table printed, exit 0.
- fp16 / bf16 casts: stored in the narrow dtype, verified with the documented tolerance.
- Every bad input: exit 2, a message naming the problem, nothing written (DST absent, no temporary directory
  left beside it); --force replaces DST only on success; a failed verification exits 1 and keeps nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from deberta_xf.formats import safetensors_io
from deberta_xf.convert.convert import convert_checkpoint
from deberta_xf.frameworks import REGISTRY
from deberta_xf.tasks import infer_task
from deberta_xf.formats import BFLOAT16, FORMATS, TensorInfo, open_weights, write_arrays
from deberta_xf import schema
from deberta_xf.configuration import DebertaV2Config
from reference_cases import CASE_IDS, CASES, DEFAULT_CHECKPOINT, REFERENCE, ROOT, TF_CASES

pytest.importorskip("torch")

HAS_TF_H5 = FORMATS["tf_h5"].available()
HAS_KERAS_H5 = FORMATS["keras_h5"].available()
HAS_MSGPACK = FORMATS["msgpack"].available()
needs_tf_h5 = pytest.mark.skipif(not HAS_TF_H5, reason="convert/tf_h5.py (issue 4) is not there yet")
needs_keras_h5 = pytest.mark.skipif(not HAS_KERAS_H5, reason="convert/keras_h5.py (issue 4) is not there yet")
needs_msgpack = pytest.mark.skipif(not HAS_MSGPACK, reason="convert/flax_msgpack.py (issue 5) is not there yet")


def _impl(framework: str) -> bool:
    """The framework's implementation module exists and its packages are installed (nothing is imported)."""
    from importlib.util import find_spec

    entry = REGISTRY[framework]
    return find_spec(entry.module) is not None and all(find_spec(p) for p in entry.packages)


needs_tf = pytest.mark.skipif(not (HAS_TF_H5 and _impl("tf")), reason="the TF implementation is not there yet")
needs_flax = pytest.mark.skipif(not (HAS_MSGPACK and _impl("flax")), reason="the Flax implementation is not there yet")
TOKENIZER_FILES = ("spm.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


# ---------------------------------------------------------------------------------------------------------------
# Helpers
def case_dir(variant: str, task: str) -> str:
    return os.path.join(REFERENCE, variant, task)


def cli(*argv: str) -> tuple[int, str, str]:
    """Run `deberta-xf convert ...` in this process; (exit code, stdout, stderr)."""
    from deberta_xf.cli import main

    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["convert", *argv])
        except SystemExit as exit_:  # argparse usage errors
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


def tensors(path: str) -> dict[str, np.ndarray]:
    with open_weights(path) as reader:
        return reader.read_all()


def canonical_tensors(path: str, config_dir: str, task: str) -> dict[str, np.ndarray]:
    """A weights file's tensors under the schema's names for ``task`` (a format may store the base model under
    ``deberta.`` or the other MLM head layout; loaders map them back the same way)."""
    config = DebertaV2Config.from_pretrained(config_dir)
    with open_weights(path) as reader:
        mapping, report = schema.match_checkpoint(config, task, reader.shapes())
        assert report.ok and not report.unexpected, f"{path}: {report.summary()}"
        return {name: reader.read(stored) for name, stored in mapping.items()}


def assert_identical(got: dict[str, np.ndarray], want: dict[str, np.ndarray], label: str) -> None:
    assert set(got) == set(want), f"{label}: names differ: {sorted(set(got) ^ set(want))}"
    for name in want:
        a, b = np.ascontiguousarray(got[name]), np.ascontiguousarray(want[name])
        assert a.shape == b.shape and a.dtype == b.dtype, f"{label}: {name}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
        assert np.array_equal(a.view(np.uint8), b.view(np.uint8)), f"{label}: {name} is not bit-identical"


def leftovers(parent: str) -> list[str]:
    """Temporary directories or files of an atomic write left in ``parent``."""
    return [n for n in os.listdir(parent) if n.startswith(".") and (".partial" in n or ".old" in n or n.endswith(
        ".tmp"))]


def assert_nothing_written(dst: str) -> None:
    assert not os.path.lexists(dst), f"{dst} was created"
    assert leftovers(os.path.dirname(dst)) == []


def snapshot(directory: str) -> dict[str, tuple[str, float]]:
    out = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        with open(path, "rb") as f:
            out[name] = (hashlib.sha256(f.read()).hexdigest(), os.stat(path).st_mtime)
    return out


def make_checkpoint(directory: str, arrays: dict[str, np.ndarray], config: dict | DebertaV2Config,
                    filename: str = "model.safetensors") -> str:
    os.makedirs(directory, exist_ok=True)
    data = config.to_dict() if isinstance(config, DebertaV2Config) else config
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
        json.dump(data, f)
    write_arrays(os.path.join(directory, filename), arrays)
    return directory


def load_config(directory: str) -> dict:
    with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------------------------------
# Pure tensor round trips (no verification): every fixture case
@needs_tf_h5
@needs_msgpack
@pytest.mark.parametrize(("variant", "task"), CASES, ids=CASE_IDS)
def test_round_trip_torch_tf_flax_torch_is_bit_identical(tmp_path, variant, task):
    src = case_dir(variant, task)
    original = tensors(os.path.join(src, "model.safetensors"))
    quiet = dict(verify=False, log=lambda s: None)
    legs = [("tf", "tf_model.h5"), ("flax", "flax_model.msgpack"), ("torch", "model.safetensors")]
    previous = src
    for framework, filename in legs:
        dst = str(tmp_path / framework)
        result = convert_checkpoint(previous, dst, framework, **quiet)
        assert result.kept and result.plan.task == task
        assert sorted(os.listdir(dst)) == sorted(["config.json", filename])
        # each intermediate file, read back through its own reader, holds exactly the original tensors
        assert_identical(canonical_tensors(os.path.join(dst, filename), src, task), original,
                         f"{variant}/{task} after -> {framework}")
        assert DebertaV2Config.from_pretrained(dst) == DebertaV2Config.from_pretrained(src)
        previous = dst


@pytest.mark.parametrize(("variant", "task"), CASES, ids=CASE_IDS)
def test_safetensors_bin_round_trip_is_bit_identical(tmp_path, variant, task):
    src = case_dir(variant, task)
    original = tensors(os.path.join(src, "model.safetensors"))
    result = convert_checkpoint(src, str(tmp_path / "bin"), "torch", format="bin", verify=False, log=lambda s: None)
    assert result.written.tensors == len(original)
    assert_identical(tensors(str(tmp_path / "bin" / "pytorch_model.bin")), original, "-> bin")
    convert_checkpoint(str(tmp_path / "bin"), str(tmp_path / "st"), "torch", verify=False, log=lambda s: None)
    assert_identical(tensors(str(tmp_path / "st" / "model.safetensors")), original, "bin -> safetensors")


@needs_tf_h5
@pytest.mark.parametrize(("variant", "task"), TF_CASES, ids=[f"{v}/{t}" for v, t in TF_CASES])
def test_reference_tf_model_h5_converts_to_the_reference_pytorch_tensors(tmp_path, variant, task):
    """transformers' own tf_model.h5 of a fixture -> torch: the same tensors transformers saved for PyTorch."""
    src = case_dir(variant, task)
    dst = str(tmp_path / "pt")
    result = convert_checkpoint(os.path.join(src, "tf_model.h5"), dst, "torch", config=os.path.join(src, "config.json"),
                                verify=False, log=lambda s: None)
    assert result.plan.task == task  # inferred from the h5's head names
    want = tensors(os.path.join(src, "model.safetensors"))
    got = tensors(os.path.join(dst, "model.safetensors"))
    assert_identical(got, want, f"{variant}/{task} tf_model.h5 -> torch")


@pytest.mark.parametrize("fmt", [
    pytest.param("keras_h5", marks=needs_keras_h5), pytest.param("safetensors", marks=needs_msgpack)])
def test_second_formats_round_trip(tmp_path, fmt):
    """tf --format keras_h5 and flax --format safetensors write and read back the same tensors."""
    to = "tf" if fmt == "keras_h5" else "flax"
    src = case_dir("v2-conv", "masked-lm")
    original = tensors(os.path.join(src, "model.safetensors"))
    result = convert_checkpoint(src, str(tmp_path / "out"), to, format=fmt, verify=False, log=lambda s: None)
    assert_identical(canonical_tensors(result.weights_file, src, "masked-lm"), original, f"-> {to} {fmt}")
    back = convert_checkpoint(str(tmp_path / "out"), str(tmp_path / "back"), "torch", verify=False,
                              log=lambda s: None)
    assert_identical(tensors(back.weights_file), original, f"{fmt} -> torch")


def test_sharded_source(tmp_path):
    src = case_dir("v3", "token-classification")
    original = tensors(os.path.join(src, "model.safetensors"))
    names = list(original)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    shutil.copy(os.path.join(src, "config.json"), sharded / "config.json")
    weight_map = {}
    for filename, part in shards.items():
        write_arrays(str(sharded / filename), {n: original[n] for n in part})
        weight_map.update({n: filename for n in part})
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    code, out, err = cli(str(sharded), str(tmp_path / "out"), "--to", "torch", "--format", "bin")
    assert code == 0, err
    assert "model.safetensors.index.json" in out and "verification passed" in out
    assert_identical(tensors(str(tmp_path / "out" / "pytorch_model.bin")), original, "sharded -> bin")


# ---------------------------------------------------------------------------------------------------------------
# Task inference
@pytest.mark.parametrize(("variant", "task"), CASES, ids=CASE_IDS)
def test_task_inferred_from_head_keys(variant, task):
    src = case_dir(variant, task)
    with open_weights(os.path.join(src, "model.safetensors")) as reader:
        shapes = reader.shapes()
    config = DebertaV2Config.from_pretrained(src)
    assert infer_task(shapes, config)[0] == task
    # without "architectures", the head tensors alone decide (a one-row classifier with a pooler is
    # multiple choice, since num_labels is 2 in these configs)
    bare = DebertaV2Config.from_dict({k: v for k, v in config.to_dict().items() if k != "architectures"})
    assert infer_task(shapes, bare)[0] == task


def test_task_from_architectures_when_the_heads_are_ambiguous():
    """pooler + a 1-row classifier is sequence classification (regression) when the config says so."""
    config = DebertaV2Config.from_pretrained(case_dir("v3", "multiple-choice"))
    with open_weights(os.path.join(case_dir("v3", "multiple-choice"), "model.safetensors")) as reader:
        shapes = reader.shapes()
    regression = DebertaV2Config.from_dict(config.to_dict(), num_labels=1,  # set after, as the reference sets kwargs
                                           architectures=["DebertaV2ForSequenceClassification"])
    assert infer_task(shapes, regression)[0] == "sequence-classification"
    assert infer_task(shapes, config)[0] == "multiple-choice"


# ---------------------------------------------------------------------------------------------------------------
# The full command with verification, on a handful of cases and directions
VERIFIED = [
    pytest.param("v3", "masked-lm", "tf", None, marks=needs_tf, id="v3/masked-lm->tf"),
    pytest.param("v2-conv", "sequence-classification", "flax", None, marks=needs_flax,
                 id="v2-conv/sequence-classification->flax"),
    pytest.param("emb-proj", "question-answering", "torch", "bin", id="emb-proj/question-answering->torch-bin"),
    pytest.param("v3-lmpred", "masked-lm", "flax", "safetensors", marks=needs_flax,
                 id="v3-lmpred/masked-lm->flax-safetensors"),
    pytest.param("abs-noshare", "multiple-choice", "tf", None, marks=needs_tf, id="abs-noshare/multiple-choice->tf"),
]


@pytest.mark.parametrize(("variant", "task", "to", "fmt"), VERIFIED)
def test_convert_verifies_and_prints_the_table(tmp_path, variant, task, to, fmt):
    src = case_dir(variant, task)
    before = snapshot(src)
    dst = str(tmp_path / "out")
    argv = [src, dst, "--to", to] + (["--format", fmt] if fmt else [])
    code, out, err = cli(*argv)
    assert code == 0, out + err
    fmt = fmt or {"torch": "safetensors", "tf": "tf_h5", "flax": "msgpack"}[to]
    filename = FORMATS[fmt].filenames[0]
    assert sorted(os.listdir(dst)) == sorted(["config.json", filename])
    assert snapshot(src) == before, "the source was modified"
    assert leftovers(str(tmp_path)) == []
    # the table: one row per output with its shape, max abs in %.3e and a verdict
    config = DebertaV2Config.from_pretrained(src)
    expected_rows = [f"hidden_states.{i}" for i in range(config.num_hidden_layers + 1)]
    expected_rows.append("last_hidden_state" if task == "base" else
                         "start_logits" if task == "question-answering" else "logits")
    lines = out.splitlines()
    for row in expected_rows:
        matching = [line for line in lines if line.split()[:1] == [row]]
        assert len(matching) == 1, f"no table row for {row}:\n{out}"
        fields = matching[0].split()
        assert fields[-1] == "ok"
        max_abs = float(fields[-3])
        assert fields[-3] == f"{max_abs:.3e}" and max_abs <= float(fields[-2]) <= 1e-4
    assert "deterministic token ids" in out  # fixtures have no tokenizer files
    assert "verification passed" in out
    assert f"tensors: {len(schema.expected_shapes(config, task))}/{len(schema.expected_shapes(config, task))} " \
           f"read back identical" in out
    summary = [line for line in lines if line.startswith("wrote ")]
    assert summary and f"wrote {len(schema.expected_shapes(config, task))} tensors" in summary[0]
    assert f"({os.path.getsize(os.path.join(dst, filename))} bytes)" in summary[0]


def _table_rows(out: str) -> dict[str, list[str]]:
    """The verification table's rows by output name (``framework: name`` when several frameworks ran)."""
    rows = {}
    for line in out.splitlines():
        if line.startswith("  ") and "  [" in line:  # "  name  [shape]  max abs  threshold  verdict"
            name, _, rest = line.strip().partition("  [")
            rows[name.strip()] = rest.split()
    return rows


@needs_flax
@needs_tf
def test_verify_frameworks_loads_the_result_in_each_listed_framework(tmp_path):
    """--verify-frameworks flax,torch,tf: the flax checkpoint is loaded by all three and each is compared with the
    source's torch run; the table names the framework of every row and the header lists what was compared."""
    src, dst = case_dir("v3", "token-classification"), str(tmp_path / "out")
    code, out, err = cli(src, dst, "--to", "flax", "--verify-frameworks", "flax,torch,tf")
    assert code == 0, out + err
    header = next(line for line in out.splitlines() if line.startswith("verification:"))
    assert header == ("verification: torch (model.safetensors of SRC) vs flax (flax_model.msgpack of DST), "
                      "torch (flax_model.msgpack of DST), tf (flax_model.msgpack of DST)")
    rows = _table_rows(out)
    config = DebertaV2Config.from_pretrained(src)
    names = [f"hidden_states.{i}" for i in range(config.num_hidden_layers + 1)] + ["logits"]
    assert sorted(rows) == sorted(f"{fw}: {n}" for fw in ("flax", "torch", "tf") for n in names)
    for name, fields in rows.items():
        max_abs, atol = float(fields[-3]), float(fields[-2])
        assert fields[-1] == "ok" and max_abs <= atol
        assert atol == 5e-5  # hidden states and token logits: DESIGN §5
        if name.startswith("torch: "):
            assert max_abs == 0.0  # the same framework and the same tensors: bit-identical


@needs_flax
def test_atol_and_rtol_set_the_verification_thresholds(tmp_path):
    """--atol replaces every threshold (a threshold below the flax-vs-torch rounding differences fails the
    verification: exit 1, nothing kept); --rtol adds R x max |source output| to it."""
    src = case_dir("v3", "sequence-classification")
    failing = str(tmp_path / "failing")
    code, out, err = cli(src, failing, "--to", "flax", "--atol", "1e-12")
    assert code == 1, out + err
    assert not os.path.exists(failing) and leftovers(str(tmp_path)) == []
    assert "thresholds: max abs <= 1e-12 (--atol) + 0 (--rtol)" in out
    rows = _table_rows(out)
    assert any(fields[-1] == "FAIL" for fields in rows.values()), out
    assert all(float(fields[-2]) == 1e-12 for fields in rows.values())

    passing = str(tmp_path / "passing")
    code, out, err = cli(src, passing, "--to", "flax", "--atol", "1e-12", "--rtol", "1e-3")
    assert code == 0, out + err
    from deberta_xf.frameworks import get_framework
    from deberta_xf.convert.verify import make_inputs

    inputs, _ = make_inputs(DebertaV2Config.from_pretrained(src), "sequence-classification", src)
    torch_fw = get_framework("torch")
    reference = torch_fw.outputs(torch_fw.load(src, "sequence-classification"), inputs)
    for name, fields in _table_rows(out).items():
        assert float(fields[-2]) == pytest.approx(1e-12 + 1e-3 * float(np.abs(reference[name]).max()), rel=1e-3)


@pytest.mark.parametrize(("argv", "message"), [
    (["--verify-frameworks", "torch,jax"], "--verify-frameworks: unknown framework(s) 'jax'"),
    (["--verify-frameworks", ""], "--verify-frameworks: empty"),
    (["--verify-frameworks", "torch,torch"], "--verify-frameworks: torch listed more than once"),
    (["--atol", "-1"], "--atol expects a positive finite number"),
    (["--rtol", "nan"], "--rtol expects a positive finite number"),
])
def test_verification_options_are_checked(tmp_path, argv, message):
    dst = str(tmp_path / "out")
    code, out, err = cli(case_dir("v3", "base"), dst, "--to", "torch", *argv)
    assert code == 2 and message in err, (code, out, err)
    assert not os.path.exists(dst)


@needs_tf
def test_tf_source_verified_into_torch_with_the_checkpoint_tokenizer(tmp_path):
    """The real-vocab checkpoint with tokenizer files: torch -> tf -> torch, each leg verified on tokenized text;
    the tokenizer files are copied (symlinks followed)."""
    tf_dir, pt_dir = str(tmp_path / "tf"), str(tmp_path / "pt")
    code, out, err = cli(DEFAULT_CHECKPOINT, tf_dir, "--to", "tf")
    assert code == 0, out + err
    assert "tokenized with the checkpoint's spm.model" in out
    for name in TOKENIZER_FILES:
        path = os.path.join(tf_dir, name)
        assert os.path.isfile(path) and not os.path.islink(path)
        with open(path, "rb") as a, open(os.path.join(DEFAULT_CHECKPOINT, name), "rb") as b:
            assert a.read() == b.read()
    code, out, err = cli(tf_dir, pt_dir, "--to", "torch")
    assert code == 0, out + err
    assert "verification: tf (tf_model.h5 of SRC) vs torch (model.safetensors of DST)" in out
    assert_identical(tensors(os.path.join(pt_dir, "model.safetensors")),
                     tensors(os.path.join(DEFAULT_CHECKPOINT, "model.safetensors")), "torch -> tf -> torch")


@needs_flax
def test_weights_file_source_with_config(tmp_path):
    """SRC may be a bare weights file (here the reference's pytorch_model.bin) with --config."""
    src = case_dir("no-rel", "token-classification")
    dst = str(tmp_path / "out")
    code, out, err = cli(os.path.join(src, "pytorch_model.bin"), dst, "--to", "flax", "--config",
                         os.path.join(src, "config.json"))
    assert code == 0, out + err
    assert "verification: torch (pytorch_model.bin of SRC) vs flax (flax_model.msgpack of DST)" in out
    assert "SRC is a bare weights file" in out and "verification passed" in out
    assert sorted(os.listdir(dst)) == ["config.json", "flax_model.msgpack"]
    assert_identical(canonical_tensors(os.path.join(dst, "flax_model.msgpack"), src, "token-classification"),
                     tensors(os.path.join(src, "model.safetensors")), "bin file -> flax")


def test_console_script(tmp_path):
    """The installed `deberta-xf` entry point runs the same command (exit codes included)."""
    exe = os.path.join(os.path.dirname(sys.executable), "deberta-xf")
    dst = str(tmp_path / "out")
    done = subprocess.run([exe, "convert", case_dir("v3", "base"), dst, "--to", "torch", "--format", "bin"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verification passed" in done.stdout
    again = subprocess.run([exe, "convert", case_dir("v3", "base"), dst, "--to", "torch"], capture_output=True,
                           text=True, cwd=ROOT, timeout=300)
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr


# ---------------------------------------------------------------------------------------------------------------
# Casting
@pytest.mark.parametrize(("dtype", "to", "fmt"), [
    ("float16", "torch", None),
    ("bfloat16", "torch", None),
    pytest.param("bfloat16", "flax", None, marks=needs_flax),
    pytest.param("float16", "tf", None, marks=needs_tf),
])
def test_half_precision_conversion_verifies_with_the_documented_tolerance(tmp_path, dtype, to, fmt):
    src = DEFAULT_CHECKPOINT
    dst = str(tmp_path / "out")
    code, out, err = cli(src, dst, "--to", to, "--dtype", dtype)
    assert code == 0, out + err
    rtol = {"float16": 1e-2, "bfloat16": 5e-2}[dtype]
    assert f"weights rounded to {dtype}" in out and f"max abs <= {rtol:g} x max(1, max |reference output|)" in out
    written = [f for f in os.listdir(dst) if f not in ("config.json", *TOKENIZER_FILES)]
    assert len(written) == 1
    got = tensors(os.path.join(dst, written[0]))
    want = tensors(os.path.join(src, "model.safetensors"))
    target = np.dtype(np.float16) if dtype == "float16" else BFLOAT16
    assert_identical(got, {k: v.astype(target) for k, v in want.items()}, f"--dtype {dtype}")
    assert load_config(dst)["dtype"] == dtype


def test_half_precision_source_keeps_or_widens_exactly(tmp_path):
    """A hub-style fp16 checkpoint: --dtype keep stays fp16, --dtype float32 widens exactly; both are verified
    at the fp32 thresholds (no rounding happened)."""
    src = case_dir("v3", "sequence-classification")
    half = {k: v.astype(np.float16) for k, v in tensors(os.path.join(src, "model.safetensors")).items()}
    hub = make_checkpoint(str(tmp_path / "hub"), half, load_config(src))
    code, out, err = cli(hub, str(tmp_path / "keep"), "--to", "torch", "--format", "bin")
    assert code == 0, out + err
    assert "thresholds: float32" in out
    assert_identical(tensors(str(tmp_path / "keep" / "pytorch_model.bin")), half, "keep")
    code, out, err = cli(hub, str(tmp_path / "wide"), "--to", "torch", "--dtype", "float32")
    assert code == 0, out + err
    assert_identical(tensors(str(tmp_path / "wide" / "model.safetensors")),
                     {k: v.astype(np.float32) for k, v in half.items()}, "float32")
    assert load_config(str(tmp_path / "wide"))["dtype"] == "float32"


# ---------------------------------------------------------------------------------------------------------------
# MLM layouts, backbone-only checkpoints, the RTD head
def test_both_mlm_layouts_convert(tmp_path):
    # lm_predictions.lm_head.* with legacy=False: kept as is
    src = case_dir("v3-lmpred", "masked-lm")
    code, out, err = cli(src, str(tmp_path / "a"), "--to", "torch", "--format", "bin")
    assert code == 0, out + err
    got = tensors(str(tmp_path / "a" / "pytorch_model.bin"))
    assert "lm_predictions.lm_head.dense.weight" in got
    assert_identical(got, tensors(os.path.join(src, "model.safetensors")), "lm_predictions layout")
    # the same tensors under a legacy=True config with tied embeddings (as published configs, which name neither,
    # read): renamed to cls.predictions.*, with a note, and verified
    config = {**{k: v for k, v in load_config(src).items() if k != "tie_word_embeddings"}, "legacy": True}
    original = tensors(os.path.join(src, "model.safetensors"))
    # (untied, the legacy head needs its own decoder, which these tensors lack: refused, naming it)
    untied = make_checkpoint(str(tmp_path / "untied-src"), original, {**config, "tie_word_embeddings": False})
    code, out, err = cli(untied, str(tmp_path / "c"), "--to", "torch")
    assert code == 2 and "cls.predictions.decoder.weight" in err
    legacy_src = make_checkpoint(str(tmp_path / "legacy-src"), original, config)
    code, out, err = cli(legacy_src, str(tmp_path / "b"), "--to", "torch")
    assert code == 0, out + err
    assert "MLM head renamed lm_predictions.lm_head.* -> cls.predictions.*" in out
    got = tensors(str(tmp_path / "b" / "model.safetensors"))
    renamed = {k.replace("lm_predictions.lm_head.dense", "cls.predictions.transform.dense")
                .replace("lm_predictions.lm_head.LayerNorm", "cls.predictions.transform.LayerNorm")
                .replace("lm_predictions.lm_head.bias", "cls.predictions.bias"): v for k, v in original.items()}
    assert_identical(got, renamed, "lm_predictions -> cls.predictions")


def test_backbone_only_checkpoint_converts_into_a_base_checkpoint(tmp_path):
    src = case_dir("v2-conv", "masked-lm")
    original = tensors(os.path.join(src, "model.safetensors"))
    backbone = {k: v for k, v in original.items() if k.startswith("deberta.")}
    only = make_checkpoint(str(tmp_path / "backbone"), backbone, load_config(src))
    code, out, err = cli(only, str(tmp_path / "out"), "--to", "torch")
    assert code == 0, out + err
    assert "task: base (no task head tensors" in out
    got = tensors(str(tmp_path / "out" / "model.safetensors"))
    assert_identical(got, {k[len("deberta."):]: v for k, v in backbone.items()}, "backbone -> base")
    assert load_config(str(tmp_path / "out"))["architectures"] == ["DebertaV2Model"]


def test_task_override_drops_the_head_with_a_note(tmp_path):
    src = case_dir("v3", "masked-lm")
    code, out, err = cli(src, str(tmp_path / "out"), "--to", "torch", "--task", "base")
    assert code == 0, out + err
    assert "dropped 5 head tensor(s)" in out and "cls.predictions.bias" in out
    got = tensors(str(tmp_path / "out" / "model.safetensors"))
    assert not any(k.startswith(("cls.", "deberta.")) for k in got)


def _with_rtd(tmp_path) -> tuple[str, dict[str, np.ndarray]]:
    """A checkpoint laid out like the published v3 ones: lm_predictions.lm_head.*, the RTD head
    mask_predictions.*, an unused position_embeddings table and the position_ids buffer."""
    src = case_dir("v3-lmpred", "masked-lm")
    arrays = tensors(os.path.join(src, "model.safetensors"))
    rng = np.random.default_rng(1)
    config = load_config(src)
    hidden, positions = config["hidden_size"], config["max_position_embeddings"]
    assert not config["position_biased_input"]
    arrays["deberta.embeddings.position_embeddings.weight"] = rng.standard_normal((positions, hidden),
                                                                                  dtype=np.float32)
    arrays["deberta.embeddings.position_ids"] = np.arange(positions, dtype=np.int64)[None]
    rtd = {"mask_predictions.dense.weight": rng.standard_normal((hidden, hidden), dtype=np.float32),
           "mask_predictions.dense.bias": np.zeros(hidden, np.float32),
           "mask_predictions.LayerNorm.weight": np.ones(hidden, np.float32),
           "mask_predictions.LayerNorm.bias": np.zeros(hidden, np.float32),
           "mask_predictions.classifier.weight": rng.standard_normal((1, hidden), dtype=np.float32),
           "mask_predictions.classifier.bias": np.zeros(1, np.float32)}
    return make_checkpoint(str(tmp_path / "v3-rtd"), {**arrays, **rtd}, load_config(src)), rtd


def test_rtd_head_is_dropped_by_default_and_kept_with_keep_rtd(tmp_path):
    src, rtd = _with_rtd(tmp_path)
    model = tensors(os.path.join(case_dir("v3-lmpred", "masked-lm"), "model.safetensors"))
    code, out, err = cli(src, str(tmp_path / "dropped"), "--to", "torch")
    assert code == 0, out + err
    assert "dropped the replaced-token-detection head of this v3 checkpoint (6 tensors" in out and "--keep-rtd" in out
    assert ("dropped 2 tensor(s) that no DeBERTa-v2 model uses" in out and "deberta.embeddings.position_ids" in out
            and "deberta.embeddings.position_embeddings.weight" in out)
    assert_identical(tensors(str(tmp_path / "dropped" / "model.safetensors")), model, "RTD dropped")
    code, out, err = cli(src, str(tmp_path / "kept"), "--to", "torch", "--keep-rtd")
    assert code == 0, out + err
    assert "kept 6 replaced-token-detection tensor(s)" in out
    assert_identical(tensors(str(tmp_path / "kept" / "model.safetensors")), {**model, **rtd}, "--keep-rtd")


def test_tied_decoder_of_a_reference_bin_is_dropped_with_a_note(tmp_path):
    """transformers' pytorch_model.bin of a legacy MLM model also stores the tied cls.predictions.decoder.*."""
    src = case_dir("v3", "masked-lm")
    code, out, err = cli(os.path.join(src, "pytorch_model.bin"), str(tmp_path / "out"), "--to", "torch",
                         "--config", os.path.join(src, "config.json"))
    assert code == 0, out + err
    assert "cls.predictions.decoder.weight" in out and "cls.predictions.decoder.bias" in out and "dropped 2" in out
    assert_identical(tensors(str(tmp_path / "out" / "model.safetensors")),
                     tensors(os.path.join(src, "model.safetensors")), "bin -> safetensors")


@pytest.mark.parametrize(("to", "fmt"), [("tf", None), ("flax", None), ("torch", None)])
def test_keep_rtd_into_a_format_without_free_names_is_refused(tmp_path, to, fmt):
    src, _ = _with_rtd(tmp_path)
    dst = str(tmp_path / "out")
    if to == "torch":  # torch formats can carry them: this one is the control
        code, out, err = cli(src, dst, "--to", to, "--keep-rtd", "--no-verify")
        assert code == 0, err
        return
    code, out, err = cli(src, dst, "--to", to, "--keep-rtd", "--no-verify")
    assert code == 2
    assert "--keep-rtd" in err and "mask_predictions.dense.weight" in err and "cannot carry" in err
    assert_nothing_written(dst)


# ---------------------------------------------------------------------------------------------------------------
# Bad input: exit 2, a message naming the problem, nothing written
def test_missing_config(tmp_path):
    src = tmp_path / "noconfig"
    src.mkdir()
    shutil.copy(os.path.join(case_dir("v3", "base"), "model.safetensors"), src)
    dst = str(tmp_path / "out")
    code, out, err = cli(str(src), dst, "--to", "torch")
    assert code == 2 and "no config.json" in err and str(src) in err
    assert_nothing_written(dst)
    code, out, err = cli(str(src / "model.safetensors"), dst, "--to", "torch")
    assert code == 2 and "--config" in err
    assert_nothing_written(dst)


def test_invalid_config_field(tmp_path):
    src = make_checkpoint(str(tmp_path / "src"), tensors(os.path.join(case_dir("v3", "base"), "model.safetensors")),
                          {**load_config(case_dir("v3", "base")), "hidden_act": "no-such-activation"})
    dst = str(tmp_path / "out")
    code, out, err = cli(src, dst, "--to", "torch")
    assert code == 2 and "hidden_act" in err and "config.json" in err
    assert_nothing_written(dst)


def test_unknown_formats(tmp_path):
    src = case_dir("v3", "base")
    dst = str(tmp_path / "out")
    weird = tmp_path / "model.onnx"
    weird.write_bytes(b"\x08\x01")
    code, out, err = cli(str(weird), dst, "--to", "torch", "--config", os.path.join(src, "config.json"))
    assert code == 2 and "unknown weights format" in err and "model.onnx" in err
    assert_nothing_written(dst)
    code, out, err = cli(src, dst, "--to", "torch", "--format", "keras_h5")
    assert code == 2 and "--to torch writes safetensors or bin, not --format keras_h5" in err
    assert_nothing_written(dst)
    code, out, err = cli(src, dst, "--to", "torch", "--format", "onnx")
    assert code == 2 and "invalid choice: 'onnx'" in err
    assert_nothing_written(dst)
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(os.path.join(src, "config.json"), empty)
    code, out, err = cli(str(empty), dst, "--to", "torch")
    assert code == 2 and "no weights file found" in err and "model.safetensors" in err
    assert_nothing_written(dst)


def _corrupt_copy(tmp_path, filename: str, mangle) -> str:
    src = case_dir("v3", "base")
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(os.path.join(src, "config.json"), bad)
    data = open(os.path.join(src, filename), "rb").read() if filename != "flax_model.msgpack" else None
    if data is None:  # make a msgpack first
        convert_checkpoint(src, str(tmp_path / "fl"), "flax", verify=False, log=lambda s: None)
        data = open(str(tmp_path / "fl" / filename), "rb").read()
        shutil.rmtree(tmp_path / "fl")
    (bad / filename).write_bytes(mangle(data))
    return str(bad)


@pytest.mark.parametrize(("filename", "mangle", "message"), [
    ("model.safetensors", lambda d: d[: len(d) // 2], "truncated safetensors file"),
    ("model.safetensors", lambda d: d[:8] + b"{not json" + d[17:], "corrupt safetensors header"),
    ("pytorch_model.bin", lambda d: d[: len(d) // 2], "corrupt or truncated PyTorch checkpoint"),
    pytest.param("tf_model.h5", lambda d: d[: len(d) // 2], "tf_model.h5", marks=needs_tf_h5),
    pytest.param("flax_model.msgpack", lambda d: d[: len(d) - 100], "truncated msgpack", marks=needs_msgpack),
], ids=["safetensors-truncated", "safetensors-header", "bin-truncated", "h5-truncated", "msgpack-truncated"])
def test_truncated_or_corrupt_file(tmp_path, filename, mangle, message):
    src = _corrupt_copy(tmp_path, filename, mangle)
    dst = str(tmp_path / "out")
    code, out, err = cli(src, dst, "--to", "torch")
    assert code == 2, out + err
    assert message in err and filename in err and "Traceback" not in err
    assert_nothing_written(dst)


def test_shape_that_contradicts_the_config(tmp_path):
    src = case_dir("v3", "sequence-classification")
    arrays = tensors(os.path.join(src, "model.safetensors"))
    config = {**load_config(src), "vocab_size": load_config(src)["vocab_size"] + 7}
    bad = make_checkpoint(str(tmp_path / "bad"), arrays, config)
    dst = str(tmp_path / "out")
    code, out, err = cli(bad, dst, "--to", "torch")
    assert code == 2
    assert "deberta.embeddings.word_embeddings.weight" in err and f"vocab_size={config['vocab_size']}" in err
    assert "[211, 32]" in err
    assert_nothing_written(dst)


def test_missing_required_tensors_are_listed(tmp_path):
    src = case_dir("v3", "token-classification")
    arrays = tensors(os.path.join(src, "model.safetensors"))
    gone = ["deberta.encoder.layer.1.attention.self.key_proj.weight", "deberta.encoder.rel_embeddings.weight"]
    bad = make_checkpoint(str(tmp_path / "bad"), {k: v for k, v in arrays.items() if k not in gone},
                          load_config(src))
    dst = str(tmp_path / "out")
    code, out, err = cli(bad, dst, "--to", "torch")
    assert code == 2 and "missing 2 required tensor(s)" in err and all(n in err for n in gone)
    assert_nothing_written(dst)
    # a head asked for with --task but absent from the checkpoint is missing too
    code, out, err = cli(case_dir("v3", "base"), dst, "--to", "torch", "--task", "question-answering")
    assert code == 2 and "qa_outputs.weight" in err and "qa_outputs.bias" in err
    assert_nothing_written(dst)


def test_tensors_outside_the_schema_are_refused(tmp_path):
    src = case_dir("v3", "base")
    arrays = {**tensors(os.path.join(src, "model.safetensors")), "adapter.up.weight": np.zeros((2, 2), np.float32)}
    bad = make_checkpoint(str(tmp_path / "bad"), arrays, load_config(src))
    dst = str(tmp_path / "out")
    code, out, err = cli(bad, dst, "--to", "torch")
    assert code == 2 and "adapter.up.weight" in err and "would be lost" in err
    assert_nothing_written(dst)


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {_RunsCode.marker}",))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    import pickle

    import torch

    _RunsCode.marker = str(tmp_path / "pwned")
    src = tmp_path / "evil"
    src.mkdir()
    shutil.copy(os.path.join(case_dir("v3", "base"), "config.json"), src)
    state = {k: torch.from_numpy(v) for k, v in tensors(os.path.join(case_dir("v3", "base"),
                                                                     "model.safetensors")).items()}
    state["payload"] = _RunsCode()
    torch.save(state, str(src / "pytorch_model.bin"), pickle_module=pickle)
    dst = str(tmp_path / "out")
    code, out, err = cli(str(src), dst, "--to", "torch")
    assert code == 2 and "refused to load" in err and "pytorch_model.bin" in err
    assert not os.path.exists(_RunsCode.marker), "the pickle ran code"
    assert_nothing_written(dst)


def test_nan_and_inf_are_refused_unless_allowed(tmp_path):
    src = case_dir("v3", "base")
    arrays = tensors(os.path.join(src, "model.safetensors"))
    arrays["encoder.layer.0.output.dense.weight"][3, 4] = np.nan
    arrays["encoder.layer.0.output.dense.weight"][5, 6] = np.inf
    bad = make_checkpoint(str(tmp_path / "bad"), arrays, load_config(src))
    dst = str(tmp_path / "out")
    code, out, err = cli(bad, dst, "--to", "torch")
    assert code == 2
    assert "encoder.layer.0.output.dense.weight" in err and "1 NaN and 1 Inf" in err and "--allow-nonfinite" in err
    assert_nothing_written(dst)
    code, out, err = cli(bad, dst, "--to", "torch", "--format", "bin", "--allow-nonfinite", "--no-verify")
    assert code == 0, err
    assert_identical(tensors(os.path.join(dst, "pytorch_model.bin")), arrays, "--allow-nonfinite")


def test_overflow_in_a_cast_is_refused(tmp_path):
    src = case_dir("v3", "base")
    arrays = tensors(os.path.join(src, "model.safetensors"))
    arrays["encoder.layer.1.intermediate.dense.bias"][0] = 1e6
    bad = make_checkpoint(str(tmp_path / "bad"), arrays, load_config(src))
    dst = str(tmp_path / "out")
    code, out, err = cli(bad, dst, "--to", "torch", "--dtype", "float16")
    assert code == 2 and "encoder.layer.1.intermediate.dense.bias" in err and "overflows float16" in err
    assert_nothing_written(dst)
    code, out, err = cli(bad, dst, "--to", "torch", "--dtype", "bfloat16")  # bf16 has fp32's range
    assert code == 0, out + err


def test_existing_destination_needs_force(tmp_path):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    code, out, err = cli(case_dir("v3", "base"), str(dst), "--to", "torch")
    assert code == 2 and "already exists" in err and "--force" in err
    assert os.listdir(dst) == ["keep.txt"] and leftovers(str(tmp_path)) == []


def test_destination_inside_the_source_is_refused(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(case_dir("v3", "base"), src)
    before = snapshot(str(src))
    for dst in (str(src), str(src / "converted")):
        code, out, err = cli(str(src), dst, "--to", "torch", "--force")
        assert code == 2 and "outside the source" in err
    assert snapshot(str(src)) == before


def test_missing_framework_for_verification(tmp_path, monkeypatch):
    monkeypatch.setattr(REGISTRY["torch"], "packages", ("no_such_torch_package",))
    dst = str(tmp_path / "out")
    code, out, err = cli(case_dir("v3", "base"), dst, "--to", "torch")
    assert code == 2
    assert "verification needs the 'torch' framework" in err and "pip install 'deberta-xf[torch]'" in err
    assert "no_such_torch_package is not installed" in err
    assert "--no-verify" in err
    assert_nothing_written(dst)
    code, out, err = cli(case_dir("v3", "base"), dst, "--to", "torch", "--no-verify")
    assert code == 0 and "not verified (--no-verify)" in out


def test_bad_argument_values_are_usage_errors(tmp_path):
    dst = str(tmp_path / "out")
    for argv in (["--to", "onnx"], ["--to", "torch", "--dtype", "int8"], ["--to", "torch", "--task", "ner"], []):
        code, out, err = cli(case_dir("v3", "base"), dst, *argv)
        assert code == 2 and "usage:" in err
        assert_nothing_written(dst)


# ---------------------------------------------------------------------------------------------------------------
# Verification failure, --force, interruption
def _corrupting_writer(monkeypatch, target: str = "encoder.layer.0.attention.self.query_proj.weight"):
    real = safetensors_io.write

    def write(path, infos, get, **kwargs):
        def produce(name):
            array = get(name)
            return array + np.float32(0.05) if name.endswith(target) else array
        real(path, infos, produce, **kwargs)

    monkeypatch.setattr(safetensors_io, "write", write)


def test_failed_verification_exits_1_and_keeps_nothing(tmp_path, monkeypatch):
    _corrupting_writer(monkeypatch)
    dst = str(tmp_path / "out")
    code, out, err = cli(case_dir("v3", "base"), dst, "--to", "torch")
    assert code == 1
    assert "verification FAILED" in out and "encoder.layer.0.attention.self.query_proj.weight: differs" in out
    failing = [line for line in out.splitlines() if line.split()[:1] == ["hidden_states.1"]]
    assert failing and "FAIL" in failing[0]
    assert [line for line in out.splitlines() if line.split()[:1] == ["hidden_states.0"]][0].split()[-1] == "ok"
    assert "was not kept" in err
    assert_nothing_written(dst)


def test_a_converted_checkpoint_that_does_not_load_fails_verification(tmp_path, monkeypatch):
    """A writer that loses a tensor: the read-back and the target framework's load both catch it (exit 1)."""
    real = safetensors_io.write
    lost = "encoder.layer.1.output.dense.bias"

    def write(path, infos, get, **kwargs):
        real(path, {k: v for k, v in infos.items() if k != lost}, get, **kwargs)

    monkeypatch.setattr(safetensors_io, "write", write)
    dst = str(tmp_path / "out")
    code, out, err = cli(case_dir("v3", "base"), dst, "--to", "torch")
    assert code == 1
    assert f"{lost}: missing from the written file" in out
    assert "the converted checkpoint failed to load or run in torch" in out and lost in out
    assert_nothing_written(dst)


def test_force_replaces_only_on_success(tmp_path, monkeypatch):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "config.json").write_text("{}")  # a previous checkpoint (only checkpoint files: replaceable)
    # a bad input with --force: the old directory stays
    code, out, err = cli(str(tmp_path / "does-not-exist"), str(dst), "--to", "torch", "--force")
    assert code == 2 and os.listdir(dst) == ["config.json"]
    # a failed verification with --force: the old directory stays
    with monkeypatch.context() as m:
        _corrupting_writer(m)
        code, out, err = cli(case_dir("v3", "base"), str(dst), "--to", "torch", "--force")
    assert code == 1 and os.listdir(dst) == ["config.json"] and leftovers(str(tmp_path)) == []
    # success with --force: replaced
    code, out, err = cli(case_dir("v3", "base"), str(dst), "--to", "torch", "--force")
    assert code == 0, err
    assert sorted(os.listdir(dst)) == ["config.json", "model.safetensors"] and leftovers(str(tmp_path)) == []


def test_interrupted_conversion_leaves_nothing(tmp_path, monkeypatch):
    real = safetensors_io.write

    def write(path, infos, get, **kwargs):
        def produce(name):
            if name.startswith("encoder.layer.1"):
                raise KeyboardInterrupt
            return get(name)
        real(path, infos, produce, **kwargs)

    monkeypatch.setattr(safetensors_io, "write", write)
    dst = str(tmp_path / "out")
    code, out, err = cli(case_dir("v3", "base"), dst, "--to", "torch")
    assert code == 130 and "interrupted" in err
    assert_nothing_written(dst)


def test_progress_bar_on_a_terminal(tmp_path, monkeypatch):
    """On a TTY a byte progress bar runs on stderr; off a TTY nothing is drawn."""
    import deberta_xf.convert.cli as convert_cli

    monkeypatch.setattr(convert_cli.os, "isatty", lambda fd: True)
    code, out, err = cli(case_dir("v3", "base"), str(tmp_path / "a"), "--to", "torch", "--no-verify")
    assert code == 0 and "converting:" in err and "B/s" in err
    monkeypatch.undo()
    code, out, err = cli(case_dir("v3", "base"), str(tmp_path / "b"), "--to", "torch", "--no-verify")
    assert code == 0 and "converting" not in err


def test_float_metadata_of_written_safetensors(tmp_path):
    """model.safetensors is written with metadata {"format": "pt"}, as transformers expects."""
    convert_checkpoint(case_dir("v3", "base"), str(tmp_path / "out"), "torch", verify=False, log=lambda s: None)
    with open_weights(str(tmp_path / "out" / "model.safetensors")) as reader:
        assert reader.metadata() == {"format": "pt"}
        assert all(i == TensorInfo(i.shape, np.dtype(np.float32)) for i in reader.infos().values())


# ---------------------------------------------------------------------------------------------------------------
# Sharded output (--max-shard-size): the reference's shard rule, file names and index
@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_max_shard_size_writes_the_reference_shards_and_index(tmp_path, fmt):
    """Shards of at most SIZE (a larger tensor alone), named model-0000i-of-0000n.*, and an index whose weight_map
    covers every tensor once and whose total_size is the tensors' bytes; the tensors read back bit-identical and the
    result loads and verifies; --force may replace a sharded checkpoint."""
    src = case_dir("v3", "masked-lm")
    dst = str(tmp_path / "out")
    code, out, err = cli(src, dst, "--to", "torch", "--format", fmt, "--max-shard-size", "20KB")
    assert code == 0, out + err
    single, index_name = FORMATS[fmt].filenames
    with open(os.path.join(dst, index_name), encoding="utf-8") as f:
        index = json.load(f)
    shards = sorted(set(index["weight_map"].values()))
    stem, ext = single.rsplit(".", 1)
    assert shards == [f"{stem}-{i:05d}-of-{len(shards):05d}.{ext}" for i in range(1, len(shards) + 1)]
    assert len(shards) > 2
    assert sorted(os.listdir(dst)) == sorted(["config.json", index_name] + shards)
    want = tensors(os.path.join(src, "model.safetensors"))
    assert sorted(index["weight_map"]) == sorted(want)
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in want.values())
    for shard in shards:
        held = tensors(os.path.join(dst, shard))
        assert sum(a.nbytes for a in held.values()) <= 20_000 or len(held) == 1
        assert all(index["weight_map"][name] == shard for name in held)
    assert_identical(tensors(os.path.join(dst, index_name)), want, f"{fmt} shards")
    assert f"and {len(shards)} shards (--max-shard-size 20000 bytes)" in out
    assert "verification passed" in out
    code, out, err = cli(src, dst, "--to", "torch", "--format", fmt, "--force")  # a sharded DST is a checkpoint
    assert code == 0, out + err
    assert sorted(os.listdir(dst)) == ["config.json", single]


@pytest.mark.reference
def test_shard_rule_matches_huggingface_hub():
    """The shard plan equals huggingface_hub's split_torch_state_dict_into_shards (what the reference's
    save_pretrained uses) for several sizes, including tensors larger than the limit, and so do the sizes it parses
    (binary units, 'MiB', are ours alone)."""
    hub = pytest.importorskip("huggingface_hub")
    import torch

    from deberta_xf.formats import parse_shard_size, plan_shards, shard_filenames

    arrays = tensors(os.path.join(case_dir("v3", "masked-lm"), "model.safetensors"))
    infos = {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in arrays.items()}
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    assert parse_shard_size("1MiB") == 2**20 and parse_shard_size("2 kib") == 2048
    for size in ("20KB", "100KB", 7_000, "1MB", "1GB"):
        split = hub.split_torch_state_dict_into_shards(state, max_shard_size=size,
                                                       filename_pattern="model{suffix}.safetensors")
        ours = plan_shards(infos, parse_shard_size(size))
        names = shard_filenames(FORMATS["safetensors"], len(ours)) if len(ours) > 1 else ["model.safetensors"]
        assert {n: names[i] for i, group in enumerate(ours) for n in group} == split.tensor_to_filename, size
        assert parse_shard_size(size) == (size if isinstance(size, int) else
                                          hub.serialization._base.parse_size_to_int(size)), size


@pytest.mark.parametrize(("argv", "message"), [
    (["--max-shard-size", "lots"], "max shard size 'lots': expected bytes or a size like '5GB'"),
    (["--max-shard-size", "0"], "must be at least 1 byte"),
    (["--to", "flax", "--max-shard-size", "1MB"], "--max-shard-size: the msgpack format is one file"),
])
def test_max_shard_size_is_checked(tmp_path, argv, message):
    dst = str(tmp_path / "out")
    to = [] if "--to" in argv else ["--to", "torch"]
    code, out, err = cli(case_dir("v3", "base"), dst, *to, *argv)
    assert code == 2 and message in err, (code, out, err)
    assert not os.path.exists(dst)


# ---------------------------------------------------------------------------------------------------------------
# pytorch_model.bin written streamed (one tensor in memory), read by torch.load as torch.save's output is
@pytest.mark.parametrize("layout", ["plain", "zip64"])
def test_streamed_bin_is_what_torch_load_reads(tmp_path, monkeypatch, layout):
    """Every dtype a checkpoint may hold (fp32, fp16, bf16, int64 buffers), a scalar and an empty tensor: torch.load
    (weights_only, with and without mmap) returns a state dict of exactly these tensors, in order, and the archive
    holds the records torch.save writes, each member's data on a 64-byte boundary as torch.save puts it. "zip64"
    writes every size, offset and count through the ZIP64 records (as a checkpoint over 4 GiB needs them) and
    computes every CRC beside its write, as it is for members of 4 MiB and more."""
    import struct
    import torch
    import zipfile

    from deberta_xf.formats import BFLOAT16, array_source, stored_zip, torch_bin

    if layout == "zip64":
        for name in ("ZIP64_LIMIT", "ZIP64_COUNT", "_OVERLAP_BYTES"):
            monkeypatch.setattr(stored_zip, name, 1)

    rng = np.random.default_rng(0)
    arrays = {"deberta.embeddings.word_embeddings.weight": rng.standard_normal((7, 4)).astype(np.float32),
              "half": rng.standard_normal(5).astype(np.float16),
              "bf16": rng.standard_normal((2, 3)).astype(np.float32).astype(BFLOAT16),
              "scalar": np.array(1.5, np.float32), "empty": np.zeros((0, 3), np.float32),
              "deberta.embeddings.position_ids": np.arange(6, dtype=np.int64)[None]}
    path = str(tmp_path / "pytorch_model.bin")
    torch_bin.write(path, *array_source(arrays))
    for mmap in (False, True):
        state = torch.load(path, weights_only=True, mmap=mmap)
        assert list(state) == list(arrays)
        for name, want in arrays.items():
            got = torch_bin.tensor_to_numpy(state[name])
            assert got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes(), name
    with torch_bin.open_reader(path) as reader:  # ours: torch.load places the tensors, the bytes are read from the file
        for name, want in arrays.items():
            got = reader.read(name)
            assert got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes(), name
    saved = str(tmp_path / "saved.bin")
    torch.save({k: torch_bin.numpy_to_tensor(v) for k, v in arrays.items()}, saved)

    def records(file):
        return sorted(n.split("/", 1)[1] for n in zipfile.ZipFile(file).namelist())

    assert records(path) == records(saved)
    assert zipfile.ZipFile(path).testzip() is None  # every member's CRC is right
    with zipfile.ZipFile(path) as archive, open(path, "rb") as f:
        assert archive.infolist()[-1].header_offset > 0 and len(archive.infolist()) == 6 + len(arrays)
        for info in archive.infolist():
            f.seek(info.header_offset + 26)
            name_length, extra_length = struct.unpack("<HH", f.read(4))
            assert (info.header_offset + 30 + name_length + extra_length) % 64 == 0, info.filename
    with open(path, "rb") as f:
        data = f.read()
    end = struct.unpack("<IHHHHIIH", data[-22:])  # the end of central directory record
    if layout == "zip64":  # its fields say "see the ZIP64 record", which the locator before it points at
        assert end[3:7] == (0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF), end
        locator = struct.unpack("<IIQI", data[-42:-22])
        assert locator[0] == 0x07064B50 and data[locator[2]:locator[2] + 4] == b"PK\x06\x06", locator
    else:
        assert end[3] == len(archive.infolist()) and end[6] + end[5] == len(data) - 22, end


def test_writing_a_bin_does_not_import_torch(tmp_path):
    """pytorch_model.bin is written without PyTorch (only reading needs torch.load); torch.load reads it."""
    import torch

    path = tmp_path / "pytorch_model.bin"
    script = ("import sys\n"
              "import numpy as np\n"
              "from deberta_xf.formats import array_source, torch_bin\n"
              "torch_bin.write(sys.argv[1], *array_source({'w': np.arange(6, dtype=np.float32).reshape(2, 3)}))\n"
              "assert 'torch' not in sys.modules, 'torch was imported'\n")
    proc = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = torch.load(path, weights_only=True)
    assert list(state) == ["w"] and torch.equal(state["w"], torch.arange(6.0).reshape(2, 3))


BIN_ARRAYS = """
import numpy as np
from deberta_xf.formats import BFLOAT16
rng = np.random.default_rng(7)
ARRAYS = {"deberta.embeddings.word_embeddings.weight": rng.standard_normal((300, 64)).astype(np.float32),
          "half": rng.standard_normal(5).astype(np.float16), "empty": np.zeros((0, 3), np.float32),
          "bf16": rng.standard_normal((2, 3)).astype(np.float32).astype(BFLOAT16), "scalar": np.array(2.5),
          "deberta.embeddings.position_ids": np.arange(6, dtype=np.int64)[None]}
"""
# Reads in a process without torch, every file through the child process (the size threshold set to 0).
BIN_IN_CHILD = BIN_ARRAYS + """
import sys
from deberta_xf.errors import CheckpointError
from deberta_xf.formats import torch_bin
torch_bin._CHILD_FROM_BYTES = 0
with torch_bin.open_reader(sys.argv[1]) as reader:
    assert list(reader.infos()) == list(ARRAYS), list(reader.infos())
    for name, want in ARRAYS.items():
        got = reader.read(name)
        assert got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes(), name
try:
    torch_bin.open_reader(sys.argv[2])
except CheckpointError as err:
    print(err)
assert "torch" not in sys.modules, "torch was imported here"
"""


def test_a_large_bin_is_unpickled_by_torch_in_its_own_process(tmp_path):
    """A pytorch_model.bin from 256 MiB on is loaded (torch.load weights_only) in a child process, so that PyTorch's
    own memory does not add to the conversion's: the tensors read here are the same bytes, in the same order; a
    pickle that would run code is refused with the message an in-process load gives, and its code does not run."""
    import torch

    from deberta_xf.errors import CheckpointError
    from deberta_xf.formats import array_source, torch_bin

    namespace: dict = {}
    exec(BIN_ARRAYS, namespace)
    good, evil = tmp_path / "pytorch_model.bin", tmp_path / "evil" / "pytorch_model.bin"
    torch_bin.write(str(good), *array_source(namespace["ARRAYS"]))
    evil.parent.mkdir()
    _RunsCode.marker = str(tmp_path / "pwned")
    torch.save({"w": torch.zeros(2), "payload": _RunsCode()}, str(evil))
    proc = subprocess.run([sys.executable, "-c", BIN_IN_CHILD, str(good), str(evil)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith(f"{evil}: refused to load: this pickle holds objects other than tensors"), \
        proc.stdout
    assert not os.path.exists(_RunsCode.marker), "the pickle ran code"
    with pytest.raises(CheckpointError, match="refused to load: this pickle holds objects other than tensors"):
        torch_bin.open_reader(str(evil))  # here (torch imported): loaded in this process, the same refusal


@pytest.mark.reference
def test_streamed_bin_loads_in_the_reference(tmp_path):
    """A converted pytorch_model.bin (streamed writer) loads in transformers' DebertaV2ForMaskedLM with no missing or
    unexpected keys, and gives the reference outputs of the source."""
    import torch
    from transformers import DebertaV2ForMaskedLM

    src, dst = case_dir("v3", "masked-lm"), str(tmp_path / "bin")
    code, out, err = cli(src, dst, "--to", "torch", "--format", "bin", "--no-verify")
    assert code == 0, out + err
    model, info = DebertaV2ForMaskedLM.from_pretrained(dst, output_loading_info=True, use_safetensors=False)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    reference = DebertaV2ForMaskedLM.from_pretrained(src)
    ids = torch.tensor([[5, 9, 11, 2, 7]])
    with torch.no_grad():
        assert torch.equal(model.eval()(ids).logits, reference.eval()(ids).logits)
