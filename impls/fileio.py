"""Atomic file and directory writes: everything is written under a temporary name and renamed when complete."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable (where the platform allows opening a directory)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary file path beside ``path``; when the block succeeds, the file is flushed to disk, given the
    permissions of any new file (0666 less the umask) and renamed onto ``path``. On any failure, or an
    interruption, the temporary file is removed and ``path`` is left as it was.

    The one way this package writes a file: weights, configs, tokenizer files, reports and recordings."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_copy(source: str | os.PathLike, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, force: bool = False) -> Iterator[str]:
    """Yield a temporary directory beside ``path``; it replaces ``path`` only if the block succeeds.

    An existing ``path`` is left alone unless ``force``; with ``force`` it is replaced only at the very end,
    so a failure leaves the old directory untouched.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.lexists(path) and not force:
        raise FileExistsError(f"{path} already exists (pass --force / force=True to replace it)")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".partial", dir=parent)
    try:
        yield tmp
        _apply_umask(tmp)
        if os.path.lexists(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".old", dir=parent)
            os.rmdir(old)
            os.replace(path, old)
            os.replace(tmp, path)
            if os.path.isdir(old) and not os.path.islink(old):
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.unlink(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _apply_umask(directory: str) -> None:
    """Temporary files and directories are created private (0600 / 0700); a finished directory and the files in it
    get the permissions of any other new file or directory (0666 / 0777 less the umask)."""
    mask = _umask()
    os.chmod(directory, 0o777 & ~mask)
    for entry in os.scandir(directory):
        if entry.is_file(follow_symlinks=False):
            os.chmod(entry.path, 0o666 & ~mask)
