"""`deberta-xf parity`: report contents, injected faults, file formats, exit codes, record/compare round trip.

The harness runs in-process through ``deberta_xf.cli.main`` (the console script's parser and exit codes) on the
small fixture checkpoints. Expected numbers come from the reference fixtures (transformers 4.57.6), from DESIGN §5 and
from the faults the tests inject, never from the harness's own output.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from deberta_xf import cli as deberta_xf_cli
from deberta_xf.compare import BF16_THRESHOLDS, FP32_THRESHOLDS
from deberta_xf.frameworks import REGISTRY
from reference_cases import DEFAULT_CHECKPOINT, REFERENCE, load_default_case

# `deberta-xf parity ARGS` in this process: the console script's parser, exit codes and messages.
cli = types.SimpleNamespace(main=lambda argv: deberta_xf_cli.main(["parity", *argv]))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYER1_QUERY = "deberta.encoder.layer.1.attention.self.query_proj.weight"
LAYER1 = "layer 1 (hidden_states.2)"


def installed(framework: str) -> bool:
    return REGISTRY[framework].available() is None


def needs(*frameworks: str):
    missing = [f for f in frameworks if not installed(f)]
    return pytest.mark.skipif(bool(missing), reason=f"{', '.join(missing)} implementation not installed")


def other_framework() -> str:
    """A second framework to compare torch with: Flax when installed (faster to start than TF), else TF."""
    return next((f for f in ("flax", "tf") if installed(f)), "flax")


def parity(tmp_path, *args: str, name: str = "report") -> tuple[int, dict]:
    """Run the CLI; return (exit code, JSON report)."""
    report = tmp_path / f"{name}.json"
    code = cli.main([*args, "--json", str(report), "--quiet"])
    return code, (json.loads(report.read_text()) if report.exists() else {})


def pair_of(report: dict, name: str) -> dict:
    matches = [p for p in report["comparisons"] if p["pair"] == name]
    assert len(matches) == 1, f"no pair {name!r} in {[p['pair'] for p in report['comparisons']]}"
    return matches[0]


def copy_case(tmp_path, variant: str, task: str) -> str:
    dst = tmp_path / f"{variant}-{task}"
    shutil.copytree(os.path.join(REFERENCE, variant, task), dst)
    return str(dst)


def perturb_safetensors(path: str, name: str, delta: float = 0.5) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(path)
    tensors[name] = tensors[name].copy()
    tensors[name][0, 0] += delta
    save_file(tensors, path, metadata={"format": "pt"})


def perturb_tf_h5(path: str, fragment: str, delta: float = 0.5) -> str:
    """Change one value of the dataset of the reference's tf_model.h5 whose name contains ``fragment``."""
    import h5py

    with h5py.File(path, "r+") as f:
        names: list[str] = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        (target,) = [n for n in names if fragment in n]
        data = f[target][...]
        data[0, 0] += delta
        f[target][...] = data
    return target


# --- a passing run --------------------------------------------------------------------------------------------

@needs("torch")
def test_passing_report_on_tiny_checkpoint(tmp_path):
    other = other_framework()
    if not installed(other):
        pytest.skip("needs a second framework")
    code, report = parity(tmp_path, DEFAULT_CHECKPOINT, "--frameworks", f"torch,{other}",
                          "--save-outputs", str(tmp_path / "rec.npz"))
    assert code == 0 and report["passed"] is True and report["exit_code"] == 0
    assert report["task"] == "sequence-classification" and "architectures" in report["task_source"]
    assert report["dtype"] == "float32"
    assert {k: report["tolerances"][k] for k in FP32_THRESHOLDS} == FP32_THRESHOLDS
    # The tokenizers ran on the built-in texts, agree with each other, and the inputs are the reference's inputs.
    assert report["inputs"]["source"] == "tokenizer" and report["inputs"]["num_texts"] == 8
    assert report["tokenizer"]["checked"] is True
    assert [c["name"] for c in report["tokenizer"]["checks"]] == ["input_ids", "token_type_ids", "attention_mask",
                                                                  "offset_mapping"]
    assert all(c["passed"] for c in report["tokenizer"]["checks"])
    # Each framework loaded a file by the DESIGN §1 rule: no tf_model.h5 / flax_model.msgpack here.
    assert report["frameworks"]["torch"]["weights_file"] == "model.safetensors"
    assert report["frameworks"][other]["weights_file"] == "model.safetensors"
    pair = pair_of(report, f"torch@cpu vs {other}@cpu")
    names = {t["name"]: t for t in pair["tensors"]}
    assert set(names) == {"hidden_states.0", "hidden_states.1", "hidden_states.2", "logits"}
    assert names["logits"]["shape"] == [8, 3] and names["hidden_states.2"]["shape"] == [8, 45, 16]
    # Token-level tensors are compared on the 178 real tokens only; pooled logits everywhere.
    assert names["hidden_states.1"]["compared"] == 178 * 16 and names["logits"]["compared"] == 24
    for t in pair["tensors"]:
        assert t["passed"] and 0 <= t["max_abs"] <= 5e-5 and t["atol"] == 5e-5
        assert t["mean_abs"] <= t["max_abs"]
    assert pair["first_diverging_layer"] is None

    # The recorded inputs and torch outputs are the reference's (transformers 4.57.6 on the same texts).
    case = load_default_case()
    rec = np.load(tmp_path / "rec.npz")
    np.testing.assert_array_equal(rec["inputs.input_ids"], case.inputs["input_ids"])
    np.testing.assert_array_equal(rec["inputs.attention_mask"], case.inputs["attention_mask"])
    mask = case.inputs["attention_mask"].astype(bool)
    for name in ("hidden_states.0", "hidden_states.2"):
        diff = np.abs(rec[f"outputs.torch.{name}"] - case.pt[name])[mask]
        assert diff.max() <= 5e-5
    assert np.abs(rec["outputs.torch.logits"] - case.pt["logits"]).max() <= 5e-5


def test_stdout_table(tmp_path, capsys):
    code = cli.main([DEFAULT_CHECKPOINT, "--frameworks", "torch", "--save-outputs", str(tmp_path / "r.npz")])
    assert code == 0
    code = cli.main([DEFAULT_CHECKPOINT, "--frameworks", "torch", "--compare-to", str(tmp_path / "r.npz")])
    out = capsys.readouterr().out
    assert code == 0
    header = next(line for line in out.splitlines() if line.startswith("pair"))
    assert header.split() == ["pair", "tensor", "shape", "max", "abs", "mean", "abs", "max", "rel", "atol", "result"]
    row = next(line for line in out.splitlines() if " logits " in line and line.startswith("torch@cpu(recorded)"))
    # The same framework on the same inputs reproduces itself bit for bit: 0.000e+00 in %.3e.
    assert row.split()[4:] == ["[8,", "3]", "0.000e+00", "0.000e+00", "0.000e+00", "5.0e-05", "PASS"]
    assert "tolerances (float32): hidden 5.0e-05, logits 5.0e-05, masked-LM logits 1.0e-04" in out
    assert "PASSED" in out


# --- failing runs: an injected fault is found and named --------------------------------------------------------

def test_injected_weight_fault_names_first_diverging_layer(tmp_path):
    """torch only: record the good checkpoint, change one layer-1 weight, compare against the recording."""
    good = copy_case(tmp_path, "v3", "base")
    code, _ = parity(tmp_path, good, "--frameworks", "torch", "--save-outputs", str(tmp_path / "good.npz"))
    assert code == 0
    bad = copy_case(tmp_path, "v3", "masked-lm")  # a different head: compare-to must refuse it
    code, _ = parity(tmp_path, bad, "--frameworks", "torch", "--compare-to", str(tmp_path / "good.npz"))
    assert code == 2
    perturb_safetensors(os.path.join(good, "model.safetensors"), LAYER1_QUERY.removeprefix("deberta."))
    code, report = parity(tmp_path, good, "--frameworks", "torch", "--compare-to", str(tmp_path / "good.npz"),
                          "--junit", str(tmp_path / "r.xml"), "--markdown", str(tmp_path / "r.md"))
    assert code == 1 and report["passed"] is False and report["exit_code"] == 1
    pair = pair_of(report, "torch@cpu(recorded) vs torch@cpu")
    status = {t["name"]: t["passed"] for t in pair["tensors"]}
    assert status == {"hidden_states.0": True, "hidden_states.1": True, "hidden_states.2": False,
                      "last_hidden_state": False}
    assert pair["first_diverging_layer"] == LAYER1
    failing = {t["name"]: t for t in pair["tensors"] if not t["passed"]}
    assert failing["hidden_states.2"]["max_abs"] > 5e-5 and failing["hidden_states.2"]["atol"] == 5e-5

    # JUnit: one testcase per check, a failure element on exactly the failing tensors, naming the layer.
    root = ET.parse(tmp_path / "r.xml").getroot()
    cases = {(c.get("classname"), c.get("name")): c for c in root.iter("testcase")}
    assert len(cases) == len(report["checks"])
    failed = {name for (_, name), c in cases.items() if c.find("failure") is not None}
    assert failed == {"hidden_states.2", "last_hidden_state"}
    failure = cases[("parity.torch@cpu(recorded) vs torch@cpu", "hidden_states.2")].find("failure")
    assert LAYER1 in failure.get("message") and "> atol 5.0e-05" in failure.get("message")
    assert root.get("failures") == "2"
    # Markdown: verdict, the pair row with its first diverging layer, the failed checks listed.
    md = (tmp_path / "r.md").read_text()
    assert md.startswith("## ❌ deberta-xf parity")
    assert "| torch@cpu(recorded) vs torch@cpu | ❌ | 4 |" in md and LAYER1 in md
    assert "**2 failed check(s)**" in md


@needs("torch", "tf")
def test_broken_tf_h5_next_to_good_safetensors(tmp_path):
    """DESIGN §5: TF reads its own tf_model.h5 first, so a broken one is caught and the tensor is named."""
    ckpt = copy_case(tmp_path, "v3", "sequence-classification")
    perturb_tf_h5(os.path.join(ckpt, "tf_model.h5"), "layer_._1/attention/self/query_proj/kernel")
    code, report = parity(tmp_path, ckpt, "--frameworks", "torch,tf")
    assert code == 1
    assert report["frameworks"]["torch"]["weights_file"] == "model.safetensors"
    assert report["frameworks"]["tf"]["weights_file"] == "tf_model.h5"
    pair = pair_of(report, "torch@cpu vs tf@cpu")
    assert pair["first_diverging_layer"] == LAYER1
    assert [t["passed"] for t in pair["tensors"] if t["name"] in ("hidden_states.0", "hidden_states.1")] == [True] * 2
    diff = pair["weights_diff"]
    assert set(diff) == {"files", "differing", "num_differing", "only_in_first", "only_in_second", "error"}
    assert diff["files"] == ["model.safetensors", "tf_model.h5"] and diff["error"] is None
    assert [d["name"] for d in diff["differing"]] == [LAYER1_QUERY]
    assert diff["differing"][0]["changed"] == 1 and diff["differing"][0]["max_abs"] == pytest.approx(0.5, rel=1e-3)


# --- JSON schema -----------------------------------------------------------------------------------------------

TOP_KEYS = {"schema_version", "tool", "created", "checkpoint", "task", "task_source", "dtype", "device_request",
            "tolerances", "environment", "inputs", "tokenizer", "frameworks", "recording", "comparisons", "checks",
            "notes", "summary", "passed", "exit_code"}
TENSOR_KEYS = {"name", "shape", "max_abs", "mean_abs", "max_rel", "atol", "passed", "compared", "note"}
PAIR_KEYS = {"pair", "reference", "candidate", "passed", "first_diverging_layer", "worst", "max_abs", "weights_diff",
             "tensors"}
FRAMEWORK_KEYS = {"status", "label", "device", "device_name", "versions", "weights_file", "seconds", "note"}


def test_json_schema_is_stable(tmp_path):
    ckpt = os.path.join(REFERENCE, "v3", "question-answering")
    code, report = parity(tmp_path, ckpt, "--frameworks", "torch", "--save-outputs", str(tmp_path / "r.npz"))
    assert code == 0
    code, report = parity(tmp_path, ckpt, "--frameworks", "torch,tf,flax", "--compare-to", str(tmp_path / "r.npz"))
    assert report["schema_version"] == 1
    assert set(report) == TOP_KEYS
    assert set(report["tolerances"]) == {"dtype", "hidden", "logits", "mlm_logits", "source"}
    assert set(report["environment"]) == {"deberta_xf", "python", "platform", "machine", "numpy", "frameworks",
                                          "matmul_precision"}
    assert set(report["tokenizer"]) == {"checked", "passed", "note", "tokenizers", "checks"}
    assert set(report["summary"]) == {"checks", "failed", "skipped", "tensors_compared", "worst_max_abs"}
    assert set(report["recording"]) == {"saved_to", "saved_frameworks", "compared_to", "recorded_dtype",
                                        "recorded_frameworks", "recorded_environment"}
    assert set(report["inputs"]) == {"source", "note", "shape", "real_tokens", "texts_file", "num_texts", "pairs",
                                     "seed", "recording"}
    for fw in report["frameworks"].values():
        assert set(fw) == FRAMEWORK_KEYS
    assert report["comparisons"]
    for pair in report["comparisons"]:
        assert set(pair) == PAIR_KEYS
        for t in pair["tensors"]:
            assert set(t) == TENSOR_KEYS
    for check in report["checks"]:
        assert set(check) == {"suite", "name", "status", "message"} and check["status"] in ("passed", "failed",
                                                                                           "skipped")
    # QA: start/end logits compared with the logits threshold; no tokenizer here: deterministic ids, said so.
    names = {t["name"] for t in report["comparisons"][0]["tensors"]}
    assert {"start_logits", "end_logits", "hidden_states.2"} <= names
    assert report["inputs"]["source"] == "recording"
    assert report["tokenizer"]["checked"] is False


def test_checkpoint_without_tokenizer_gets_deterministic_ids(tmp_path):
    code, report = parity(tmp_path, os.path.join(REFERENCE, "abs-noshare", "token-classification"),
                          "--frameworks", "torch", "--save-outputs", str(tmp_path / "r.npz"))
    assert code == 0
    assert report["inputs"]["source"] == "deterministic"
    assert "no tokenizer files" in report["inputs"]["note"] and report["tokenizer"]["checked"] is False
    rec = np.load(tmp_path / "r.npz")
    ids, mask, types = rec["inputs.input_ids"], rec["inputs.attention_mask"], rec["inputs.token_type_ids"]
    assert ids.shape == (4, 32) and ids.max() < 211 and mask.sum(axis=1).tolist() == [32, 28, 24, 20]
    assert set(np.unique(types[mask == 1]).tolist()) == {0, 1}  # type_vocab_size 2: both segments used
    # Deterministic: a second run feeds the same ids.
    code, _ = parity(tmp_path, os.path.join(REFERENCE, "abs-noshare", "token-classification"),
                     "--frameworks", "torch", "--save-outputs", str(tmp_path / "r2.npz"))
    np.testing.assert_array_equal(np.load(tmp_path / "r2.npz")["inputs.input_ids"], ids)


def test_tokenizer_mismatch_is_a_failed_check(tmp_path):
    """A tokenizer.json whose vocabulary disagrees with spm.model: the slow/fast check fails and names the text."""
    from deberta_xf.tokenization_deberta_v2_fast import DebertaV2TokenizerFast

    ckpt = tmp_path / "tiny"
    shutil.copytree(DEFAULT_CHECKPOINT, ckpt)
    DebertaV2TokenizerFast.from_pretrained(str(ckpt)).save_pretrained(str(ckpt))
    spec = json.loads((ckpt / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    fox = next(i for i, (piece, _) in enumerate(vocab) if piece == "▁fox")
    vocab[fox], vocab[fox + 1] = vocab[fox + 1], vocab[fox]  # "▁fox" gets another id in the fast tokenizer
    (ckpt / "tokenizer.json").write_text(json.dumps(spec))
    code, report = parity(tmp_path, str(ckpt), "--frameworks", "torch", "--save-outputs", str(tmp_path / "r.npz"))
    assert code == 1
    checks = {c["name"]: c for c in report["tokenizer"]["checks"]}
    assert checks["input_ids"]["passed"] is False
    assert f"slow {fox} vs fast {fox + 1}" in checks["input_ids"]["detail"]
    assert "text 1 ('The quick brown fox" in checks["input_ids"]["detail"]
    assert checks["attention_mask"]["passed"] is True


# --- exit code 2: bad usage / bad input ----------------------------------------------------------------------

def test_bad_input_exits_2(tmp_path, capsys):
    assert cli.main([str(tmp_path / "missing")]) == 2
    assert "missing: no such checkpoint directory" in capsys.readouterr().err
    assert cli.main([DEFAULT_CHECKPOINT, "--frameworks", "torch,mxnet"]) == 2
    assert "unknown framework(s) 'mxnet'" in capsys.readouterr().err
    assert cli.main([DEFAULT_CHECKPOINT, "--frameworks", "torch"]) == 2  # one framework, nothing to compare with
    assert "needs two frameworks" in capsys.readouterr().err
    assert cli.main([DEFAULT_CHECKPOINT, "--texts", str(tmp_path / "nope.txt")]) == 2
    assert "--texts" in capsys.readouterr().err
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café\n".encode("latin-1"))
    assert cli.main([DEFAULT_CHECKPOINT, "--texts", str(latin1)]) == 2
    assert "not UTF-8 text (invalid byte at offset 3)" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    assert cli.main([DEFAULT_CHECKPOINT, "--texts", str(empty)]) == 2
    assert "no non-empty lines" in capsys.readouterr().err
    assert cli.main([DEFAULT_CHECKPOINT, "--dtype", "float64"]) == 2  # argparse choices
    assert cli.main([DEFAULT_CHECKPOINT, "--atol-hidden", "-1"]) == 2
    no_config = tmp_path / "no-config"
    no_config.mkdir()
    assert cli.main([str(no_config)]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert cli.main([DEFAULT_CHECKPOINT, "--frameworks", "torch", "--compare-to", str(tmp_path / "x.npz")]) == 2
    not_npz = tmp_path / "bad.npz"
    not_npz.write_text("hello")
    assert cli.main([DEFAULT_CHECKPOINT, "--frameworks", "torch", "--compare-to", str(not_npz)]) == 2
    assert "not a .npz recording" in capsys.readouterr().err


def test_console_script_exit_codes(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "deberta-xf")
    if not os.path.exists(exe):
        pytest.skip("console script not installed")
    bad = subprocess.run([exe, "parity", str(tmp_path / "missing")], capture_output=True, text=True)
    assert bad.returncode == 2 and "no such checkpoint directory" in bad.stderr
    good = subprocess.run([exe, "parity", os.path.join(REFERENCE, "no-rel", "base"), "--frameworks", "torch",
                           "--save-outputs", str(tmp_path / "r.npz"), "--quiet"], capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    assert "PASSED" in good.stdout


@pytest.mark.skipif(installed("torch") and __import__("torch").cuda.is_available(), reason="a GPU is visible")
def test_device_gpu_without_gpu_is_bad_usage(tmp_path, capsys):
    assert cli.main([DEFAULT_CHECKPOINT, "--frameworks", "torch", "--device", "gpu",
                     "--save-outputs", str(tmp_path / "r.npz")]) == 2
    assert "--device gpu: no requested framework sees a GPU" in capsys.readouterr().err


# --- record here, compare elsewhere --------------------------------------------------------------------------

def test_record_and_compare_round_trip(tmp_path):
    other = other_framework()
    if not installed(other):
        pytest.skip("needs a second framework")
    ckpt = os.path.join(REFERENCE, "v2-conv", "masked-lm")
    rec = tmp_path / "torch.npz"
    code, report = parity(tmp_path, ckpt, "--frameworks", "torch", "--save-outputs", str(rec))
    assert code == 0 and report["recording"]["saved_to"] == str(rec)
    meta = json.loads(str(np.load(rec)["metadata"]))
    assert meta["task"] == "masked-lm" and meta["dtype"] == "float32"
    assert meta["frameworks"]["torch"]["weights_file"] == "model.safetensors"
    assert meta["frameworks"]["torch"]["device"] == "cpu" and "torch" in meta["frameworks"]["torch"]["versions"]

    # Compared later with a different framework set: the recorded inputs are reused, the pair is named.
    code, report = parity(tmp_path, ckpt, "--frameworks", other, "--compare-to", str(rec), "--plot",
                          str(tmp_path / "p.png"))
    assert code == 0, report["checks"]
    pair = pair_of(report, f"torch@cpu(recorded) vs {other}@cpu")
    assert pair["passed"] and {t["name"] for t in pair["tensors"]} == {
        "logits", "hidden_states.0", "hidden_states.1", "hidden_states.2"}
    mlm = next(t for t in pair["tensors"] if t["name"] == "logits")
    assert mlm["atol"] == 1e-4 and mlm["shape"] == [4, 32, 211]
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A recording whose layer-1 output was changed on one real token fails there, and only from there on.
    data = dict(np.load(rec))
    data["outputs.torch.hidden_states.2"] = data["outputs.torch.hidden_states.2"].copy()
    data["outputs.torch.hidden_states.2"][1, 3, 5] += 1e-3
    np.savez(tmp_path / "perturbed.npz", **data)
    code, report = parity(tmp_path, ckpt, "--frameworks", other, "--compare-to", str(tmp_path / "perturbed.npz"))
    assert code == 1
    pair = pair_of(report, f"torch@cpu(recorded) vs {other}@cpu")
    assert pair["first_diverging_layer"] == LAYER1
    worst = next(t for t in pair["tensors"] if t["name"] == "hidden_states.2")
    assert worst["passed"] is False and worst["max_abs"] == pytest.approx(1e-3, rel=0.05)


@pytest.mark.slow
@needs("torch", "flax")
def test_bfloat16_uses_measured_thresholds(tmp_path):
    code, report = parity(tmp_path, DEFAULT_CHECKPOINT, "--frameworks", "torch,flax", "--dtype", "bfloat16")
    assert code == 0, [c for c in report["checks"] if c["status"] == "failed"]
    assert report["tolerances"]["dtype"] == "bfloat16"
    assert {k: report["tolerances"][k] for k in BF16_THRESHOLDS} == BF16_THRESHOLDS
    pair = pair_of(report, "torch@cpu vs flax@cpu")
    # bf16 really ran: the two frameworks differ by far more than the fp32 threshold, but within bf16's.
    assert pair["max_abs"] > 10 * FP32_THRESHOLDS["hidden"]
    assert all(t["atol"] in BF16_THRESHOLDS.values() for t in pair["tensors"])


def test_tolerance_overrides(tmp_path):
    ckpt = os.path.join(REFERENCE, "v3", "token-classification")
    cli.main([ckpt, "--frameworks", "torch", "--save-outputs", str(tmp_path / "r.npz"), "--quiet"])
    data = dict(np.load(tmp_path / "r.npz"))
    data["outputs.torch.logits"] = data["outputs.torch.logits"] + 2e-4  # every logit off by 2e-4
    np.savez(tmp_path / "shifted.npz", **data)
    code, report = parity(tmp_path, ckpt, "--frameworks", "torch", "--compare-to", str(tmp_path / "shifted.npz"))
    assert code == 1 and pair_of(report, "torch@cpu(recorded) vs torch@cpu")["first_diverging_layer"] == (
        "head (logits); every hidden state matches")
    code, report = parity(tmp_path, ckpt, "--frameworks", "torch", "--compare-to", str(tmp_path / "shifted.npz"),
                          "--atol-logits", "3e-4")
    assert code == 0 and report["tolerances"]["logits"] == 3e-4 and "overridden" in report["tolerances"]["source"]
