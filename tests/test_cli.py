"""The `deberta-xf` command line as a whole: one exit-code mapping for every command, -v / -q anywhere, quiet
output, help text and messages that point at docs/ (never at the developers' design notes), and no native
TensorFlow log lines on stderr.
"""

from __future__ import annotations

import ast
import errno
import glob
import os
import re
import shutil
import subprocess
import sys

import pytest

from deberta_xf import cli
from deberta_xf.errors import (CheckpointError, ConfigError, DebertaXfError, error_message, exit_code_for,
                               run_cli)
from deberta_xf.frameworks import REGISTRY
from reference_cases import DEFAULT_CHECKPOINT, REFERENCE, ROOT

# absl / glog records ("I0000 00:00:1795932037.513452    5340 port.cc:153] ...") and absl's preamble.
NATIVE_LOG_LINE = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ \S+:\d+\] |absl::InitializeLog|cuInit|oneDNN custom",
                             re.MULTILINE)


def installed(framework: str) -> bool:
    return REGISTRY[framework].available() is None


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- one mapping from an exception to an exit code ------------------------------------------------------------

@pytest.mark.parametrize("exc, code", [
    (DebertaXfError("bad field"), 2),
    (ConfigError("hidden_size: must be positive"), 2),
    (CheckpointError("x.safetensors: corrupt"), 2),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "missing.json"), 2),
    (FileExistsError("out already exists"), 2),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "some/dir"), 2),
    (NotADirectoryError(errno.ENOTDIR, "Not a directory", "file.txt"), 2),
    (PermissionError(errno.EACCES, "Permission denied", "/root/x"), 2),
    (OSError(errno.ENOSPC, "No space left on device", "out/model.safetensors"), 2),
    (ImportError("the 'tf' implementation needs the 'tf' extra", name="tensorflow"), 2),
    (ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib"), 2),
    (KeyboardInterrupt(), 130),
    (BrokenPipeError(errno.EPIPE, "Broken pipe"), 141),
    # bugs keep their traceback
    (ModuleNotFoundError("No module named 'deberta_xf.nope'", name="deberta_xf.nope"), None),
    (ImportError("cannot import name 'x' from 'deberta_xf.schema'", name="deberta_xf.schema"), None),
    (ValueError("a bug"), None),
    (RuntimeError("a bug"), None),
    (AttributeError("a bug"), None),
    (SystemExit(3), None),
])
def test_exit_code_for(exc, code):
    assert exit_code_for(exc) == code


def test_error_message_names_the_path():
    assert error_message(FileNotFoundError(errno.ENOENT, "No such file or directory", "a/b.json")) == \
        "a/b.json: No such file or directory"
    assert error_message(FileExistsError("out already exists (pass --force)")) == "out already exists (pass --force)"
    assert error_message(DebertaXfError("config.json: hidden_size: must be positive")) == \
        "config.json: hidden_size: must be positive"


def test_run_cli_prints_one_line_and_reraises_bugs(capsys):
    def raises(exc):
        def command():
            raise exc
        return command

    assert run_cli(lambda: 0, "prog") == 0
    assert run_cli(lambda: 1, "prog") == 1
    assert run_cli(lambda: None, "prog") == 0
    assert run_cli(raises(CheckpointError("w.bin: truncated")), "deberta-xf x") == 2
    assert capsys.readouterr().err == "deberta-xf x: error: w.bin: truncated\n"
    assert run_cli(raises(KeyboardInterrupt()), "deberta-xf x", interrupted="nothing was written") == 130
    assert capsys.readouterr().err == "deberta-xf x: interrupted; nothing was written\n"
    with pytest.raises(ZeroDivisionError):
        run_cli(raises(ZeroDivisionError()), "deberta-xf x")


@pytest.mark.parametrize("command", ["convert", "parity"])
@pytest.mark.parametrize("exc, code", [
    (DebertaXfError("bad input named here"), 2),
    (PermissionError(errno.EACCES, "Permission denied", "/no/write"), 2),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "a/dir"), 2),
    (ImportError("the 'tf' implementation needs the 'tf' extra: pip install 'deberta-xf[tf]'", name="tensorflow"), 2),
    (KeyboardInterrupt(), 130),
])
def test_every_command_uses_the_one_mapping(command, exc, code, monkeypatch, capsys, tmp_path):
    """Both commands, in-process through deberta_xf.cli.main: the same code and a one-line message."""
    def fail(*args, **kwargs):
        raise exc

    if command == "convert":
        import deberta_xf.convert.convert as target

        monkeypatch.setattr(target, "convert_checkpoint", fail)
        argv = ["convert", DEFAULT_CHECKPOINT, str(tmp_path / "out"), "--to", "torch"]
    else:
        import deberta_xf.parity.harness as target

        monkeypatch.setattr(target, "run_parity", fail)
        argv = ["parity", DEFAULT_CHECKPOINT, "--frameworks", "torch,flax"]
    got, out, err = run_main(capsys, *argv)
    assert got == code
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"deberta-xf {command}: ")
    assert ("interrupted" if code == 130 else "error: ") in err


def test_bug_keeps_its_traceback(monkeypatch):
    import deberta_xf.parity.harness as harness

    def fail(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(harness, "run_parity", fail)
    with pytest.raises(ZeroDivisionError):
        cli.main(["parity", DEFAULT_CHECKPOINT, "--frameworks", "torch,flax"])


def test_usage_errors_return_2(capsys):
    assert run_main(capsys, "parity")[0] == 2
    assert run_main(capsys, "convert", "src")[0] == 2
    assert run_main(capsys, "bogus")[0] == 2
    code, out, err = run_main(capsys)
    assert code == 2 and "COMMAND" in err


def test_old_entry_points_are_gone():
    """One entry point: the commands' modules register subparsers and have no main() of their own."""
    from deberta_xf.convert import cli as convert_cli
    from deberta_xf.parity import cli as parity_cli

    assert not hasattr(convert_cli, "main") and not hasattr(parity_cli, "main")


# --- -v / -q before or after the command ----------------------------------------------------------------------

@pytest.mark.parametrize("argv, verbose, quiet", [
    (["parity", "CKPT"], False, False),
    (["parity", "CKPT", "-v"], True, False),
    (["parity", "-v", "CKPT"], True, False),
    (["-v", "parity", "CKPT"], True, False),
    (["parity", "CKPT", "--verbose"], True, False),
    (["-q", "parity", "CKPT"], False, True),
    (["parity", "CKPT", "-q"], False, True),
    (["-v", "parity", "CKPT", "-q"], True, True),
    (["convert", "A", "B", "--to", "tf", "-v"], True, False),
    (["-v", "convert", "A", "B", "--to", "tf"], True, False),
    (["convert", "A", "B", "--to", "tf", "--quiet"], False, True),
])
def test_verbose_and_quiet_anywhere(argv, verbose, quiet):
    args = cli.build_parser().parse_args(argv)
    assert (args.verbose, args.quiet) == (verbose, quiet)


def test_verbose_after_the_command_runs(capsys, tmp_path):
    code, out, err = run_main(capsys, "parity", str(tmp_path / "missing"), "-v")
    assert code == 2 and "no such checkpoint directory" in err


# --- quiet output --------------------------------------------------------------------------------------------

@pytest.mark.skipif(not (installed("torch") and installed("flax")), reason="needs torch and flax")
def test_quiet_passing_parity_prints_one_line(capsys):
    code, out, err = run_main(capsys, "parity", DEFAULT_CHECKPOINT, "--frameworks", "torch,flax", "--quiet")
    assert code == 0
    assert len(out.splitlines()) == 1 and out.startswith("PASSED: ") and "worst max abs" in out
    assert err == ""


def test_quiet_failing_parity_prints_verdict_and_failures(capsys, tmp_path):
    """torch only: record a checkpoint, change one layer-1 weight, compare: verdict first, then only failures."""
    from safetensors.numpy import load_file, save_file

    ckpt = tmp_path / "ckpt"
    shutil.copytree(os.path.join(REFERENCE, "v3", "base"), ckpt)
    recording = str(tmp_path / "good.npz")
    code, out, _ = run_main(capsys, "parity", str(ckpt), "--frameworks", "torch", "--save-outputs", recording, "-q")
    assert code == 0 and len(out.splitlines()) == 1
    tensors = load_file(str(ckpt / "model.safetensors"))
    name = "encoder.layer.1.attention.self.query_proj.weight"
    tensors[name] = tensors[name].copy()
    tensors[name][0, 0] += 0.5
    save_file(tensors, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    code, out, _ = run_main(capsys, "parity", str(ckpt), "--frameworks", "torch", "--compare-to", recording, "-q")
    lines = out.splitlines()
    assert code == 1 and lines[0].startswith("FAILED: ")
    assert any("first diverging layer: layer 1 (hidden_states.2)" in line for line in lines)
    assert any("hidden_states.2" in line and line.rstrip().endswith("FAIL") for line in lines)
    assert not any(line.rstrip().endswith("PASS") for line in lines)  # passing tensors are not listed
    assert "hidden_states.0" not in out and "tokenizer" not in out


@pytest.mark.skipif(not (installed("torch") and installed("flax")), reason="needs torch and flax")
def test_quiet_parity_names_a_framework_that_failed_to_load(capsys, tmp_path):
    """A corrupt flax_model.msgpack: a failed check (exit 1) named in the quiet output, not a traceback."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(DEFAULT_CHECKPOINT, ckpt)
    (ckpt / "flax_model.msgpack").write_bytes(b"not msgpack")
    code, out, err = run_main(capsys, "parity", str(ckpt), "--frameworks", "torch,flax", "-q")
    assert code == 1 and out.startswith("FAILED: ")
    assert "load :: flax: flax: failed: " in out and "flax_model.msgpack" in out
    assert "Traceback" not in err


def test_quiet_convert_prints_the_result_line(capsys, tmp_path):
    code, out, err = run_main(capsys, "convert", os.path.join(REFERENCE, "v3", "base"), str(tmp_path / "out"),
                              "--to", "torch", "--no-verify", "-q")
    assert code == 0 and len(out.splitlines()) == 1 and out.startswith("converted ")


# --- progress on a terminal only -----------------------------------------------------------------------------

def test_parity_progress_on_a_terminal_only(capsys, tmp_path, monkeypatch):
    import deberta_xf.parity.cli as parity_cli

    ckpt = os.path.join(REFERENCE, "no-rel", "base")
    argv = ["parity", ckpt, "--frameworks", "torch", "--save-outputs", str(tmp_path / "a.npz"), "-q"]
    code, out, err = run_main(capsys, *argv)
    assert code == 0 and err == ""
    monkeypatch.setattr(parity_cli.os, "isatty", lambda fd: True)
    code, out, err = run_main(capsys, *argv)
    assert code == 0 and len(out.splitlines()) == 1
    assert "parity: [1/1] torch: loading the checkpoint and running it on cpu" in err
    assert "parity: writing " in err
    assert err.endswith("\r\x1b[K")  # the status line is cleared when done


# --- help and messages point at docs/, never at DESIGN -------------------------------------------------------

@pytest.mark.parametrize("argv", [["--help"], ["parity", "--help"], ["convert", "--help"]])
def test_help_text(argv, capsys):
    code, out, err = run_main(capsys, *argv)
    assert code == 0
    assert "DESIGN" not in out and "§" not in out
    assert "docs/" in out
    assert "{convert,parity}" not in out
    if argv == ["--help"]:
        assert re.search(r"^  convert +\S", out, re.MULTILINE) and re.search(r"^  parity +\S", out, re.MULTILINE)
        assert "exit codes:" in out and "130" in out


def test_messages_do_not_cite_design(capsys, tmp_path):
    for argv in (["parity", str(tmp_path / "missing")], ["parity", DEFAULT_CHECKPOINT, "--frameworks", "torch"],
                 ["convert", str(tmp_path / "missing"), str(tmp_path / "out"), "--to", "tf"],
                 ["parity", DEFAULT_CHECKPOINT, "--dtype", "float64"]):
        code, out, err = run_main(capsys, *argv)
        assert code == 2 and "DESIGN" not in out + err


def _user_visible_strings(path: str):
    """String constants of a module that are not docstrings (what help texts and messages are made of)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_no_user_visible_string_cites_design():
    """Comments and docstrings may cite the design contract for developers; strings users see cite docs/."""
    import deberta_xf.convert
    import deberta_xf.parity

    files = sorted({os.path.realpath(f) for package in (cli, deberta_xf.convert, deberta_xf.parity)
                    for f in glob.glob(os.path.join(os.path.dirname(package.__file__), "**", "*.py"), recursive=True)})
    assert len(files) > 20 and any(f.endswith(os.path.join("parity", "harness.py")) for f in files)
    offenders = [f"{f}:{line}: {text[:60]!r}" for f in files
                 for line, text in _user_visible_strings(f) if "DESIGN" in text]
    assert not offenders, offenders


def test_docs_exist_where_messages_point():
    docs = os.path.join(ROOT, "docs")
    if not os.path.isdir(docs):
        pytest.skip("no docs/ beside the tests (an installed package run from elsewhere)")
    for page in ("cli.md", "tolerances.md", "formats.md"):
        assert os.path.isfile(os.path.join(docs, page)), page


# --- no native TensorFlow log lines on stderr -----------------------------------------------------------------

def _run(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deberta_xf", *argv], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=ROOT)


def test_python_m_deberta_xf_convert_to_tf_no_native_logs(tmp_path):
    done = _run("convert", DEFAULT_CHECKPOINT, str(tmp_path / "dst"), "--to", "tf", "--no-verify")
    assert done.returncode == 0, done.stderr
    assert not NATIVE_LOG_LINE.search(done.stderr), done.stderr
    assert done.stderr == ""


@pytest.mark.slow
@pytest.mark.skipif(not (installed("torch") and installed("tf")), reason="needs torch and tf")
def test_verified_convert_to_tf_imports_tensorflow_without_native_logs(tmp_path):
    """Verification loads the result in TensorFlow: its import-time log lines must not reach stderr."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "GRPC_VERBOSITY")}
    done = subprocess.run([sys.executable, "-m", "deberta_xf", "convert", DEFAULT_CHECKPOINT, str(tmp_path / "dst"),
                           "--to", "tf"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verification passed" in done.stdout
    assert not NATIVE_LOG_LINE.search(done.stderr), done.stderr


FILTER_SCRIPT = r"""
import os, sys, warnings
from deberta_xf.cli import filtered_native_stderr
with filtered_native_stderr() as f:
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
    os.write(2, b"I0000 00:00:1795932037.513452    5340 cpu_feature_guard.cc:227] This binary is optimized.\n"
                b"To enable the following instructions: AVX2, rebuild TensorFlow.\n")
    os.write(2, b"E0000 00:00:1795932040.354245    5340 cuda_platform.cc:52] failed call to cuInit: UNKNOWN\n")
    os.write(2, b"E0000 00:00:1795932040.354245    5340 other.cc:1] a real native error\n")
    os.write(2, b"a plain native line\n")
    warnings.warn("a real Python warning")
    print("python stderr line", file=sys.stderr)
print(f"dropped {f.dropped}", file=sys.stderr)
"""


def test_native_log_filter_keeps_what_matters():
    done = subprocess.run([sys.executable, "-c", FILTER_SCRIPT], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    err = done.stderr
    for kept in ("a real native error", "a plain native line", "UserWarning: a real Python warning",
                 "python stderr line", "dropped 4"):
        assert kept in err, err
    for dropped in ("absl::InitializeLog", "cpu_feature_guard", "To enable the following", "cuInit"):
        assert dropped not in err, err


TF_IMPORT_SCRIPT = r"""
from deberta_xf import cli
with cli.quiet_native_logs():
    import tensorflow as tf
print(type(tf.__loader__).__name__, type(tf.__spec__.loader).__name__)
"""


@pytest.mark.skipif(not installed("tf"), reason="needs tensorflow")
def test_tensorflow_import_is_filtered_and_keeps_its_loader():
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "GRPC_VERBOSITY")}
    done = subprocess.run([sys.executable, "-c", TF_IMPORT_SCRIPT], capture_output=True, text=True, env=env,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["SourceFileLoader", "SourceFileLoader"]
    assert not NATIVE_LOG_LINE.search(done.stderr), done.stderr


def test_native_log_environment_is_a_default_only(monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    monkeypatch.setenv("GRPC_VERBOSITY", "DEBUG")
    with cli.quiet_native_logs():
        assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
        assert os.environ["GRPC_VERBOSITY"] == "DEBUG"  # the user's value stays
    assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ and os.environ["GRPC_VERBOSITY"] == "DEBUG"
    finders = list(sys.meta_path)
    with cli.quiet_native_logs(enabled=False):
        assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ and sys.meta_path == finders
