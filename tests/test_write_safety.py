"""Nothing is lost and nothing is left behind: what `deberta-xf convert --force` may replace, the final rename that
refuses a destination created meanwhile, clean-up after SIGKILL, and SIGTERM/SIGHUP handled like Ctrl-C."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys

import pytest

from deberta_xf import fileio
from deberta_xf.formats import safetensors_io
from reference_cases import REFERENCE

SRC = os.path.join(REFERENCE, "v3", "base")


def cli(*argv: str) -> tuple[int, str, str]:
    from deberta_xf.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["convert", *argv])
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


def tree(directory) -> dict[str, bytes]:
    """Every file below ``directory`` with its content."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = f.read()
    return out


def user_folder(path) -> dict[str, bytes]:
    os.makedirs(path / "notes", exist_ok=True)
    (path / "thesis.tex").write_text("months of work")
    (path / "notes" / "a.txt").write_text("more")
    return tree(path)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ---------------------------------------------------------------------------------------------------------------
# --force replaces only a checkpoint directory
@pytest.mark.parametrize("dst", ["", " ", ".", "..", "./"])
def test_force_never_replaces_the_working_directory(tmp_path, monkeypatch, dst):
    work = tmp_path / "work" / "here"
    work.mkdir(parents=True)
    before = user_folder(work)
    parent_before = tree(tmp_path / "work")
    monkeypatch.chdir(work)
    code, out, err = cli(SRC, dst, "--to", "flax", "--no-verify", "--force")
    assert code == 2, (out, err)
    assert "error:" in err and "Traceback" not in err
    assert tree(work) == before and tree(tmp_path / "work") == parent_before


def test_force_never_replaces_home_or_root(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    before = user_folder(home)
    monkeypatch.setenv("HOME", str(home))
    code, out, err = cli(SRC, str(home), "--to", "torch", "--no-verify", "--force")
    assert code == 2 and "home" in err and tree(home) == before
    code, out, err = cli(SRC, os.sep, "--to", "torch", "--no-verify", "--force")
    assert code == 2 and "Traceback" not in err


def test_force_refuses_a_folder_of_user_files_and_lists_them(tmp_path):
    dst = tmp_path / "mine"
    dst.mkdir()
    before = user_folder(dst)
    (dst / "config.json").write_text("{}")
    before = tree(dst)
    code, out, err = cli(SRC, str(dst), "--to", "torch", "--no-verify", "--force")
    assert code == 2
    assert "would be lost" in err and "thesis.tex" in err and "notes/" in err
    assert "config.json" not in err.split("would be lost")[1]  # a checkpoint file is not listed as a loss
    assert tree(dst) == before


def test_force_refuses_a_file_a_symlink_and_an_ancestor_of_src(tmp_path):
    target = tmp_path / "weights.txt"
    target.write_text("not a checkpoint")
    code, out, err = cli(SRC, str(target), "--to", "torch", "--no-verify", "--force")
    assert code == 2 and target.read_text() == "not a checkpoint"
    real = tmp_path / "real"
    real.mkdir()
    (real / "config.json").write_text("{}")
    link = tmp_path / "link"
    link.symlink_to(real)
    code, out, err = cli(SRC, str(link), "--to", "torch", "--no-verify", "--force")
    assert code == 2 and "symbolic link" in err and os.path.islink(link) and os.listdir(real) == ["config.json"]
    code, out, err = cli(SRC, os.path.dirname(SRC), "--to", "torch", "--no-verify", "--force")
    assert code == 2 and "outside the source" in err


def test_force_replaces_a_checkpoint_directory(tmp_path):
    dst = tmp_path / "ckpt"
    dst.mkdir()
    for name in ("config.json", "pytorch_model.bin", "spm.model", "model-00001-of-00002.safetensors"):
        (dst / name).write_bytes(b"old")
    code, out, err = cli(SRC, str(dst), "--to", "torch", "--no-verify", "--force")
    assert code == 0, err
    assert sorted(os.listdir(dst)) == ["config.json", "model.safetensors"]


# ---------------------------------------------------------------------------------------------------------------
# Lost update: a destination created while this run was writing is never replaced
def test_destination_created_meanwhile_is_not_replaced(tmp_path, monkeypatch):
    dst = tmp_path / "out"
    real = safetensors_io.write

    def write(path, infos, get, **kwargs):
        # another run finishes first, into the same DST
        dst.mkdir()
        (dst / "config.json").write_text('{"winner": true}')
        return real(path, infos, get, **kwargs)

    monkeypatch.setattr(safetensors_io, "write", write)
    code, out, err = cli(SRC, str(dst), "--to", "torch", "--no-verify")
    assert code == 2 and "Traceback" not in err and str(dst) in err
    assert os.listdir(dst) == ["config.json"] and (dst / "config.json").read_text() == '{"winner": true}'
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []


def test_an_empty_destination_created_meanwhile_is_refused_too(tmp_path, monkeypatch):
    dst = tmp_path / "out"
    real = safetensors_io.write

    def write(path, infos, get, **kwargs):
        dst.mkdir()
        return real(path, infos, get, **kwargs)

    monkeypatch.setattr(safetensors_io, "write", write)
    code, out, err = cli(SRC, str(dst), "--to", "torch", "--no-verify")
    assert code == 2 and os.listdir(dst) == []


# ---------------------------------------------------------------------------------------------------------------
# Left behind: SIGKILL leaves temporary names that the next run removes; SIGTERM/SIGHUP clean up like Ctrl-C
def test_next_run_removes_what_a_killed_run_left(tmp_path):
    pid = dead_pid()
    partial = tmp_path / f".out.{pid}.0123abcd.partial"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\0" * 1000)
    stale_file = tmp_path / f".out.{pid}.89abcdef.tmp"
    stale_file.write_bytes(b"x")
    alive = tmp_path / f".out.{os.getpid()}.00000000.partial"  # a live process's write is left alone
    alive.mkdir()
    code, out, err = cli(SRC, str(tmp_path / "out"), "--to", "torch", "--no-verify")
    assert code == 0, err
    assert not partial.exists() and not stale_file.exists() and alive.exists()
    assert f"removed {partial}" in out and "interrupted conversion" in out


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_during_conversion_leave_nothing(tmp_path, monkeypatch, signum):
    real = safetensors_io.write

    def write(path, infos, get, **kwargs):
        def produce(name):
            if name.startswith("encoder.layer.1"):
                os.kill(os.getpid(), signum)
            return get(name)

        return real(path, infos, produce, **kwargs)

    monkeypatch.setattr(safetensors_io, "write", write)
    dst = tmp_path / "out"
    code, out, err = cli(SRC, str(dst), "--to", "torch", "--no-verify")
    assert code == 130 and "interrupted" in err
    assert not dst.exists() and os.listdir(tmp_path) == []
    assert signal.getsignal(signum) is not fileio._raise_interrupted  # the previous handler is back


def test_sigterm_during_a_file_write_removes_the_temporary_file(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(fileio.Interrupted):
        with fileio.atomic_path(target) as tmp:
            with open(tmp, "w") as f:
                f.write("partial")
            os.kill(os.getpid(), signal.SIGTERM)
    assert os.listdir(tmp_path) == ["report.json"] and target.read_text() == "old"


def test_a_failed_conversion_removes_the_parent_it_created(tmp_path):
    dst = tmp_path / "new" / "deeper" / "out"
    code, out, err = cli(os.path.join(REFERENCE, "v3", "missing"), str(dst), "--to", "torch")
    assert code == 2 and not (tmp_path / "new").exists()
