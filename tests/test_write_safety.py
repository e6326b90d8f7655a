"""Nothing is lost and nothing is left behind: what `deberta-xf convert --force` may replace, the final rename that
refuses a destination created meanwhile, clean-up after SIGKILL, and SIGTERM/SIGHUP handled like Ctrl-C."""

from __future__ import annotations

import contextlib
import errno
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


# ---------------------------------------------------------------------------------------------------------------
# A full disk, a file-size limit, a read-only or forbidden destination: a clear error naming the destination and
# the errno's meaning, exit 2, nothing left behind, the destination as it was. We run as root, so chmod does not
# forbid writes: a full disk is simulated at the writers' open(), a read-only file system at os.open/os.mkdir (the
# first call of every atomic write), and the file-size limit is real (RLIMIT_FSIZE: the kernel's EFBIG).
class _Disk:
    """What is left on a simulated disk, shared by every file opened through it."""

    def __init__(self, capacity: int):
        self.left = capacity


class _FileOnDisk:
    def __init__(self, f, disk: _Disk):
        self._f, self._disk = f, disk

    def write(self, data):
        n = len(data.encode()) if isinstance(data, str) else memoryview(data).nbytes
        if n > self._disk.left:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what write(2) says: no file name
        self._disk.left -= n
        return self._f.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


def full_disk(monkeypatch, capacity: int, *modules) -> None:
    """Files opened for writing by ``modules`` (their ``open``) share a disk with ``capacity`` bytes left."""
    disk = _Disk(capacity)

    def open_(file, mode="r", *args, **kwargs):
        f = open(file, mode, *args, **kwargs)
        return _FileOnDisk(f, disk) if any(c in mode for c in "wax+") else f

    for module in modules:
        monkeypatch.setattr(module, "open", open_, raising=False)


def read_only(monkeypatch, directory, code: int = errno.EROFS) -> None:
    """Creating anything below ``directory`` fails with ``code`` (EROFS: a read-only file system; EACCES)."""
    real_open, real_mkdir = os.open, os.mkdir
    prefix = os.path.abspath(directory) + os.sep

    def guard(path) -> None:
        if os.path.abspath(os.fspath(path)).startswith(prefix):
            raise OSError(code, os.strerror(code), os.fspath(path))

    def open_(path, flags, mode=0o777, *, dir_fd=None):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            guard(path)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    def mkdir(path, mode=0o777, *, dir_fd=None):
        guard(path)
        return real_mkdir(path, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "mkdir", mkdir)


def leftovers(directory) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.startswith("."))


@pytest.mark.parametrize("to, module, filename", [("torch", "safetensors_io", "model.safetensors"),
                                                   ("torch", "torch_bin", "pytorch_model.bin"),
                                                   ("flax", "flax_msgpack", "flax_model.msgpack")])
def test_convert_onto_a_full_disk_leaves_nothing(tmp_path, monkeypatch, to, module, filename):
    """(pytorch_model.bin: every member's CRC computed beside its write, so the disk fills while that thread runs.)"""
    import importlib

    from deberta_xf.formats import stored_zip

    monkeypatch.setattr(stored_zip, "_OVERLAP_BYTES", 1)
    full_disk(monkeypatch, 50_000, importlib.import_module(f"deberta_xf.formats.{module}"))  # weights: ~100 kB
    dst = tmp_path / "out"
    fmt = ["--format", "bin"] if module == "torch_bin" else []
    code, out, err = cli(SRC, str(dst), "--to", to, *fmt, "--no-verify")
    assert code == 2 and "Traceback" not in err
    assert f"error: {dst / filename}: No space left on device" in err, err
    assert os.listdir(tmp_path) == []


def test_convert_full_disk_at_config_json_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    from deberta_xf.convert import convert as convert_module

    dst = tmp_path / "ckpt"
    dst.mkdir()
    (dst / "config.json").write_text('{"old": true}')
    (dst / "model.safetensors").write_bytes(b"old weights")
    before = tree(dst)
    full_disk(monkeypatch, 0, convert_module)  # the weights fit; config.json does not
    code, out, err = cli(SRC, str(dst), "--to", "torch", "--no-verify", "--force")
    assert code == 2 and f"error: {dst}" in err and "No space left on device" in err, err
    assert tree(dst) == before and leftovers(tmp_path) == []


@pytest.mark.parametrize("to", ["torch", "tf"])
def test_convert_over_the_file_size_limit_is_refused_before_writing(tmp_path, to):
    """ulimit -f below the weights' size: refused up front (HDF5 would crash on the kernel's EFBIG half-way)."""
    import resource

    dst = tmp_path / "out"
    script = ("import resource, sys\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, resource.RLIM_INFINITY))\n"
              "from deberta_xf.cli import main\n"
              f"sys.exit(main(['convert', {SRC!r}, {str(dst)!r}, '--to', {to!r}, '--no-verify']))\n")
    assert resource.getrlimit(resource.RLIMIT_FSIZE)[1] == resource.RLIM_INFINITY  # the child may lower it
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    weights = "model.safetensors" if to == "torch" else "tf_model.h5"
    assert f"error: {dst / weights}: File too large (" in proc.stderr and "ulimit -f, is 50,000 bytes" in proc.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("code, meaning", [(errno.EROFS, "Read-only file system"), (errno.EACCES, "Permission denied")])
def test_convert_into_a_read_only_directory(tmp_path, monkeypatch, code, meaning):
    parent = tmp_path / "ro"
    parent.mkdir()
    read_only(monkeypatch, parent, code)
    code_, out, err = cli(SRC, str(parent / "out"), "--to", "torch", "--no-verify")
    assert code_ == 2 and f"error: {parent / 'out'}: {meaning}" in err, err
    assert os.listdir(parent) == []


def test_report_over_the_file_size_limit_real_efbig(tmp_path):
    """The kernel's own EFBIG (RLIMIT_FSIZE in this process, restored after): the report keeps its old content."""
    import resource

    from deberta_xf.parity import report

    target = tmp_path / "report.json"
    target.write_text("old")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))
    try:
        with pytest.raises(OSError) as info:
            report.write_text(str(target), "x" * 5000)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert info.value.errno == errno.EFBIG and info.value.filename == str(target)
    assert os.listdir(tmp_path) == ["report.json"] and target.read_text() == "old"


def parity_cli(*argv: str) -> tuple[int, str, str]:
    from deberta_xf.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["parity", *argv])
    return code, out.getvalue(), err.getvalue()


TINY = os.path.join(os.path.dirname(__file__), "..", "fixtures", "tiny-deberta-v3")


def test_parity_reports_into_a_read_only_directory(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "report.json").write_text("old")
    read_only(monkeypatch, ro)
    code, out, err = parity_cli(TINY, "--frameworks", "torch", "--save-outputs", str(tmp_path / "rec.npz"),
                                "--json", str(ro / "report.json"))
    assert code == 2 and f"error: {ro / 'report.json'}: Read-only file system" in err, err
    assert os.listdir(ro) == ["report.json"] and (ro / "report.json").read_text() == "old"
    code, out, err = parity_cli(TINY, "--frameworks", "torch", "--save-outputs", str(ro / "rec.npz"))
    assert code == 2 and f"error: {ro / 'rec.npz'}: Read-only file system" in err, err
    assert os.listdir(ro) == ["report.json"]


def test_save_pretrained_full_disk_and_read_only_leave_the_directory_as_it_was(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    import deberta_xf as dx
    from deberta_xf import formats

    model = dx.DebertaV2ForSequenceClassification.from_pretrained(TINY)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text('{"old": true}')
    (ckpt / "model.safetensors").write_bytes(b"old weights")
    before = tree(ckpt)
    with monkeypatch.context() as patch:  # the weights do not fit
        full_disk(patch, 100_000, formats.safetensors_io)
        with pytest.raises(OSError) as info:
            model.save_pretrained(ckpt)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(ckpt / "model.safetensors")
    assert tree(ckpt) == before and leftovers(ckpt) == []
    with monkeypatch.context() as patch:  # the weights fit, config.json does not: the old weights stay
        full_disk(patch, 0, fileio)
        with pytest.raises(OSError) as info:
            model.save_pretrained(ckpt)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(ckpt / "config.json")
    assert tree(ckpt) == before and leftovers(ckpt) == []
    with monkeypatch.context() as patch:
        read_only(patch, ckpt, errno.EACCES)
        with pytest.raises(PermissionError) as info:
            model.save_pretrained(ckpt)
    assert info.value.filename == str(ckpt / "model.safetensors") and tree(ckpt) == before
    new = tmp_path / "new"
    with monkeypatch.context() as patch:  # a directory created for the save is removed again
        full_disk(patch, 0, formats.safetensors_io)
        with pytest.raises(OSError):
            model.save_pretrained(new)
    assert not new.exists()


@pytest.mark.parametrize("fmt", ["safetensors", "bin", "tf_h5", "keras_h5", "msgpack"])
def test_every_writer_reports_efbig_half_way(tmp_path, fmt):
    """The kernel's EFBIG in the middle of a write (ulimit -f at ~half the data, in a child process): every writer
    raises the OSError naming the destination and leaves nothing; none crashes (HDF5 writing to a path, and torch's
    zip writer failing in its destructor, used to take the process down before pytorch_model.bin got its own)."""
    dst = tmp_path / "out"
    dst.mkdir()
    script = (
        "import os, resource, sys\n"
        "import numpy as np\n"
        "from deberta_xf.formats import FORMATS, array_source\n"
        "fmt = FORMATS[sys.argv[1]]\n"
        "arrays = {'deberta.embeddings.word_embeddings.weight': np.ones((1024, 512), np.float32),\n"
        "          'deberta.encoder.layer.0.attention.self.query_proj.weight': np.ones((512, 512), np.float32)}\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1_500_000, resource.RLIM_INFINITY))\n"
        "path = os.path.join(sys.argv[2], fmt.filenames[0])\n"
        "try:\n"
        "    fmt.write(path, *array_source(arrays), task='base')\n"
        "except OSError as err:\n"
        "    print(f'OSError {err.errno} {err.filename}')\n"
        "    sys.exit(0)\n"
        "sys.exit('no error')\n")
    proc = subprocess.run([sys.executable, "-c", script, fmt, str(dst)], capture_output=True, text=True, timeout=120)
    filename = {"safetensors": "model.safetensors", "bin": "pytorch_model.bin", "tf_h5": "tf_model.h5",
                "keras_h5": "model.weights.h5", "msgpack": "flax_model.msgpack"}[fmt]
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == f"OSError {errno.EFBIG} {dst / filename}", proc.stdout
    assert os.listdir(dst) == []
