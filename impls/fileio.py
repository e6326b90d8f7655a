"""Atomic file and directory writes: everything is written under a temporary name and renamed when complete.

- :func:`atomic_path` is the one way this package writes a file (weights, configs, tokenizer files, reports,
  recordings): a temporary file beside the target, flushed, given the permissions of any new file, renamed.
- :func:`atomic_directory` builds a whole directory (a converted checkpoint) under a temporary name and renames it
  into place. Without ``force`` the final step refuses an existing destination atomically (no window between a
  check and the rename); with ``force`` it replaces only what the caller's ``replaceable`` check allows, and never
  the working directory, the home directory, the root, or an ancestor of any of them.
- Temporary names carry the writing process's id: a run killed with SIGKILL leaves names that the next write to
  the same destination removes (and logs). SIGTERM and SIGHUP are turned into :class:`Interrupted` while a write
  is in progress, so the temporary files are removed as they are on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import shutil
import signal
import threading
from typing import Callable, Iterator

logger = logging.getLogger("deberta_xf")


class Interrupted(KeyboardInterrupt):
    """SIGTERM / SIGHUP during a write, handled like Ctrl-C (SIGINT): temporary files are removed."""

    def __init__(self, signum: int):
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


_HANDLED_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def _raise_interrupted(signum, frame):  # noqa: ARG001 - the signal handler's signature
    raise Interrupted(signum)


@contextlib.contextmanager
def signals_as_interrupt() -> Iterator[None]:
    """While the block runs (in the main thread), SIGTERM and SIGHUP raise :class:`Interrupted` instead of killing
    the process outright, so that ``finally`` / ``except BaseException`` clean-ups run. Nested uses are fine; the
    previous handlers are restored on exit."""
    if (threading.current_thread() is not threading.main_thread() or not _HANDLED_SIGNALS
            or signal.getsignal(_HANDLED_SIGNALS[0]) is _raise_interrupted):  # not ours to set, or already set
        yield
        return
    previous = {s: signal.signal(s, _raise_interrupted) for s in _HANDLED_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# ---------------------------------------------------------------------------------------------------------------
# Temporary names: ".<target name>.<pid>.<random>.<kind>" beside the target
def _temp_name(target: str, kind: str) -> str:
    return os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.{os.getpid()}.{secrets.token_hex(4)}"
                                                 f".{kind}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(target: str) -> list[str]:
    """Remove the temporary files and directories that writes to ``target`` left when their process was killed
    (SIGKILL, power loss): those whose process id is no longer alive. Returns what was removed (and logs it)."""
    directory, base = os.path.split(os.path.abspath(target))
    pattern = re.compile(rf"^\.{re.escape(base)}\.(\d+)\.[0-9a-f]{{8}}\.(tmp|partial|old)$")
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if not match or _pid_alive(int(match.group(1))):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
        removed.append(entry.path)
        logger.warning("removed %s, left behind by an interrupted write (process %s is gone)", entry.path,
                       match.group(1))
    return removed


def _named(err: OSError, path: str, temporary: str) -> OSError:
    """``err`` naming ``path`` where it names nothing or the temporary name that stood for ``path`` (a full disk
    reports no file name; what the user asked to write is ``path``, not ``.path.1234.ab12cd34.tmp``). The result
    keeps the errno and its meaning (``path: No space left on device``)."""
    if not isinstance(err, OSError) or not err.strerror:
        return err
    filename = os.fsdecode(err.filename) if err.filename is not None else None
    if filename is None:
        named = path
    elif os.path.abspath(filename) == temporary or os.path.abspath(filename).startswith(temporary + os.sep):
        named = path + os.path.abspath(filename)[len(temporary):]
    else:
        return err
    return type(err)(err.errno, err.strerror, named)


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


# ---------------------------------------------------------------------------------------------------------------
# Space: a write that cannot fit is refused before it starts
def check_space(path: str | os.PathLike, needed: int) -> None:
    """Raise OSError(ENOSPC) when writing ``needed`` bytes to ``path`` cannot fit in the free space of its file
    system, and OSError(EFBIG) when ``needed`` is over this process's file-size limit (``ulimit -f``): a clear
    error before anything is written (some writers, HDF5's, fail badly half-way). ``needed`` is a lower bound
    (the tensors' bytes), so nothing that would fit is refused; a disk that fills meanwhile still fails at the
    write, with the same clean-up."""
    path = os.path.abspath(os.fspath(path))
    existing = os.path.dirname(path)
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    try:
        fs = os.statvfs(existing)
    except (OSError, AttributeError):  # no statvfs (Windows) or an unreadable parent: the write will tell
        fs = None
    if fs is not None and fs.f_frsize and needed > fs.f_bavail * fs.f_frsize:
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({needed:,} bytes to write, "
                                    f"{fs.f_bavail * fs.f_frsize:,} free)", path)
    limit = _file_size_limit()
    if limit is not None and needed > limit:
        raise OSError(errno.EFBIG, f"{os.strerror(errno.EFBIG)} ({needed:,} bytes to write; this process's file "
                                   f"size limit, ulimit -f, is {limit:,} bytes)", path)


def _file_size_limit() -> int | None:
    try:
        import resource
    except ImportError:  # not on Unix
        return None
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


# ---------------------------------------------------------------------------------------------------------------
# Files
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary file path beside ``path``; when the block succeeds, the file is flushed to disk, given the
    permissions of any new file (0666 less the umask) and renamed onto ``path``. On any failure, or an
    interruption (Ctrl-C, SIGTERM, SIGHUP), the temporary file is removed and ``path`` is left as it was.

    The one way this package writes a file: weights, configs, tokenizer files, reports and recordings."""
    path = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = _temp_name(path, "tmp")
    with signals_as_interrupt():
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except OSError as err:  # a read-only file system, no permission: name the target, not the temporary
            raise _named(err, path, tmp) from err
        try:
            yield tmp
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
        except BaseException as exc:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            if isinstance(exc, OSError) and _named(exc, path, tmp) is not exc:
                raise _named(exc, path, tmp) from exc
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


# ---------------------------------------------------------------------------------------------------------------
# Directories
def protected_directories() -> list[str]:
    """Directories that no write ever replaces: the root, the home directory, the working directory, and every
    ancestor of the last two (real paths)."""
    protected = {os.path.realpath(os.sep)}
    for start in (os.path.expanduser("~"), os.getcwd()):
        path = os.path.realpath(start)
        while True:
            protected.add(path)
            parent = os.path.dirname(path)
            if parent == path:
                break
            path = parent
    return sorted(protected)


def check_replace(path: str | os.PathLike, replaceable: Callable[[str], None] | None = None) -> None:
    """Raise FileExistsError unless ``path`` (which exists) may be replaced: never the root, the home or the working
    directory or one of their ancestors; then ``replaceable(path)`` decides (it raises, saying what would be
    lost, when the content is not something the caller wrote). Without ``replaceable`` nothing is replaceable."""
    real = os.path.realpath(os.fspath(path))
    if real in protected_directories():
        raise FileExistsError(f"{os.fspath(path) or repr('')}: refusing to replace {real}: it is the root, the home "
                              f"or the working directory, or one of their ancestors")
    if replaceable is None:
        raise FileExistsError(f"{path} already exists")
    replaceable(os.fspath(path))


def _rename_noreplace(src: str, dst: str) -> None:
    """Rename the directory ``src`` to ``dst``, failing with FileExistsError when ``dst`` exists, atomically: the
    empty placeholder made by ``mkdir`` (which fails on any existing name) is the only thing a rename may
    replace; anything put into it meanwhile makes the rename fail instead of being lost."""
    os.mkdir(dst)
    try:
        os.rename(src, dst)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.rmdir(dst)
        if err.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise FileExistsError(f"{dst} was created by someone else while this one was being written") from None
        raise


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, force: bool = False,
                     replaceable: Callable[[str], None] | None = None) -> Iterator[str]:
    """Yield a temporary directory beside ``path``; it becomes ``path`` only if the block succeeds.

    Without ``force`` an existing ``path`` is an error, checked again atomically at the final rename (a run that
    created ``path`` meanwhile wins; this one fails and leaves it alone). With ``force`` an existing ``path`` is
    replaced only at the very end, so a failure leaves it untouched, and only when :func:`check_replace` allows it
    (checked at the start and again at the end). A parent directory created for ``path`` is removed again when
    the block fails.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.lexists(path):
        if not force:
            raise FileExistsError(f"{path} already exists (pass --force / force=True to replace it)")
        check_replace(path, replaceable)
    parent = os.path.dirname(path)
    created = []
    missing = parent
    while not os.path.exists(missing):
        created.append(missing)
        missing = os.path.dirname(missing)
    os.makedirs(parent, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = _temp_name(path, "partial")
    with signals_as_interrupt():
        try:
            os.mkdir(tmp, 0o700)
        except OSError as err:
            _remove_created(created)
            raise _named(err, path, tmp) from err
        try:
            yield tmp
            _apply_umask(tmp)
            if force and os.path.lexists(path):
                check_replace(path, replaceable)
                old = _temp_name(path, "old")
                os.replace(path, old)
                os.replace(tmp, path)
                if os.path.isdir(old) and not os.path.islink(old):
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    os.unlink(old)
            else:
                _rename_noreplace(tmp, path)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            _remove_created(created)
            if isinstance(exc, OSError) and _named(exc, path, tmp) is not exc:
                raise _named(exc, path, tmp) from exc
            raise
    _fsync_directory(parent)


def _remove_created(created: list[str]) -> None:
    """Remove the parent directories a failed write created, innermost first, only if still empty."""
    for directory in created:
        with contextlib.suppress(OSError):
            os.rmdir(directory)


def _apply_umask(directory: str) -> None:
    """Temporary files and directories are created private (0600 / 0700); a finished directory and the files in it
    get the permissions of any other new file or directory (0666 / 0777 less the umask)."""
    mask = _umask()
    os.chmod(directory, 0o777 & ~mask)
    for entry in os.scandir(directory):
        if entry.is_file(follow_symlinks=False):
            os.chmod(entry.path, 0o666 & ~mask)
