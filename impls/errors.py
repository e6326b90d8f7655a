"""Errors for bad user input, and the one mapping from an exception to the command line's exit code.

Every entry point of the ``deberta-xf`` command line (``deberta_xf.cli.main``, hence ``python -m deberta_xf``)
runs its command through :func:`run_cli`, so the exit codes and messages are the same everywhere (docs/cli.md):

- 0: every check passed; 1: a parity or verification check failed (the command returns it);
- 2: bad usage or bad input: a :class:`DebertaXfError`, an ``OSError`` (a missing, existing, unreadable or
  unwritable path, a full disk), an ``ImportError`` of a missing optional dependency; one line naming the
  file, key, shape or field, never a traceback;
- 130: interrupted (Ctrl-C); 141: the reader of stdout went away (``deberta-xf parity ... | head``).

Anything else is a bug and keeps its traceback. This module is framework-free and imports nothing of the package.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader went away


class DebertaXfError(ValueError):
    """Bad input: a file, key, shape or field that cannot be used. The message names it."""


class ConfigError(DebertaXfError):
    """An invalid configuration; the message lists every problem at once."""


class ConfigNotFoundError(ConfigError, OSError):
    """No config where one was asked for (a missing path, a directory without ``config.json``): a ConfigError that
    is also the ``OSError`` the reference raises, so callers catching either see it."""


class CheckpointError(DebertaXfError):
    """A checkpoint that cannot be read or does not fit the model (missing, corrupt, wrong shape, unsafe)."""


class CheckpointShapeError(CheckpointError, RuntimeError):
    """A checkpoint tensor of another shape than the model's: a CheckpointError that is also the ``RuntimeError``
    the reference's ``from_pretrained`` raises for a size mismatch (``ignore_mismatched_sizes=True`` re-initialises
    such tensors instead)."""


class CheckpointNotFoundError(CheckpointError, OSError):
    """No checkpoint where one was asked for (a missing path, a directory without a weights file): a CheckpointError
    that is also the ``OSError`` the reference's ``from_pretrained`` raises."""


class MemoryLimitError(DebertaXfError):
    """A model whose parameters would need more memory than the machine has available (deberta_xf.limits)."""


class UnsupportedFeatureError(DebertaXfError, NotImplementedError):
    """A feature deberta_xf deliberately does not provide: a DebertaXfError that is also the
    ``NotImplementedError`` the reference raises."""


def _is_own_import_error(exc: ImportError) -> bool:
    """An ImportError of this package's own modules is a bug (traceback), not a missing optional dependency."""
    return (exc.name or "").split(".")[0] == "deberta_xf"


def exit_code_for(exc: BaseException) -> int | None:
    """The exit code of a command that raised ``exc``; None when ``exc`` is a bug that keeps its traceback."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, BrokenPipeError):
        return EXIT_BROKEN_PIPE
    if isinstance(exc, (DebertaXfError, OSError)):
        return EXIT_BAD_INPUT
    if isinstance(exc, ImportError):
        return None if _is_own_import_error(exc) else EXIT_BAD_INPUT
    return None


def error_message(exc: BaseException) -> str:
    """One line for the user: the message of a DebertaXfError as is, an OSError as ``path: reason``."""
    if isinstance(exc, OSError) and exc.strerror:
        paths = [p for p in (exc.filename, exc.filename2) if p is not None]
        where = " -> ".join(os.fsdecode(p) for p in paths)
        return f"{where}: {exc.strerror}" if where else exc.strerror
    return str(exc) or type(exc).__name__


def run_cli(command: Callable[[], int | None], prog: str, interrupted: str = "") -> int:
    """Run ``command`` and return its exit code; an exception becomes a one-line message on stderr and its code
    (:func:`exit_code_for`), and a bug is re-raised. ``interrupted`` completes the Ctrl-C line (what was kept)."""
    try:
        return int(command() or 0)
    except BaseException as exc:  # noqa: BLE001 - every exception is either mapped or re-raised
        code = exit_code_for(exc)
        if code is None:
            raise
        if code == EXIT_BROKEN_PIPE:
            _silence_stdout()
        elif code == EXIT_INTERRUPTED:
            print(f"{prog}: interrupted" + (f"; {interrupted}" if interrupted else ""), file=sys.stderr, flush=True)
        else:
            print(f"{prog}: error: {error_message(exc)}", file=sys.stderr, flush=True)
        return code


def _silence_stdout() -> None:
    """After EPIPE on stdout: point it at /dev/null so that the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout is not a file (a test's capture)
        pass
