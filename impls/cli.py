"""The ``deberta-xf`` command line (also ``python -m deberta_xf``): ``convert`` and ``parity``.

:func:`main` is the one entry point. It parses the arguments (``-v`` / ``-q`` before or after the command), quiets
the frameworks' native start-up logging (below), and runs the command through
:func:`deberta_xf.errors.run_cli`, the one mapping from an exception to an exit code (DESIGN §4; for users,
docs/cli.md): 0 all checks pass; 1 a parity or verification check failed; 2 bad usage or bad input, one line
naming the file, key, shape or field, never a traceback; 130 interrupted.

Native logging. TensorFlow's C++ runtime writes absl log records to stderr while it is imported, before any
setting can reach it (``oneDNN custom operations are on``, ``Could not find cuda drivers``, ``failed call to
cuInit``, ...), on every run on a CPU machine. Unless ``-v`` is given, the command (a) sets
``TF_CPP_MIN_LOG_LEVEL=2`` and ``GRPC_VERBOSITY=ERROR`` when the user has not set them, and (b) imports
TensorFlow, when something imports it, with the process's stderr file descriptor passed through a filter that
drops those start-up records (informational and warning records, and error records about a missing CUDA
driver) and forwards everything else. Python's own warnings and logging are not touched. ``-v``, or
``TF_CPP_MIN_LOG_LEVEL=0`` set by the user, turns both off.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.abc
import importlib.util
import io
import logging
import os
import re
import sys
import threading
from typing import Iterator

from deberta_xf.errors import EXIT_BAD_INPUT, run_cli

PROG = "deberta-xf"
DOCS = "docs/cli.md, docs/tolerances.md and docs/formats.md in the deberta-xf repository"

DESCRIPTION = """\
DeBERTa-v2/v3 checkpoints in PyTorch, TensorFlow (Keras 3) and Flax (NNX): convert them between frameworks and
weight formats, and check that every framework computes the same outputs.

commands:
{commands}

Run "deberta-xf COMMAND --help" for a command's arguments."""

EPILOG = """\
exit codes:
  0    every check passed
  1    a parity or verification check failed
  2    bad usage or bad input (the message names the file, key, shape or field)
  130  interrupted (Ctrl-C); files are written atomically, so nothing half-written is left

TensorFlow's native start-up log lines are hidden unless -v is given (or TF_CPP_MIN_LOG_LEVEL=0 is set).
Documentation: """ + DOCS + "."

# Environment defaults for the frameworks' native logging, applied only where the user has not set the variable.
NATIVE_LOG_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "GRPC_VERBOSITY": "ERROR"}


# ---------------------------------------------------------------------------------------------------------------
# The parser
def _add_output_options(parser: argparse.ArgumentParser, top_level: bool) -> None:
    """-v / -q, accepted before the command (``deberta-xf -v parity``) and after it (``deberta-xf parity -v``).

    After the command their default is SUPPRESS, so that a subparser does not reset what was given before it."""
    default = (lambda value: value) if top_level else (lambda value: argparse.SUPPRESS)
    parser.add_argument("-v", "--verbose", action="store_true", default=default(False),
                        help="also show log messages and the frameworks' native log lines")
    parser.add_argument("-q", "--quiet", action="store_true", default=default(False),
                        help="print only the verdict and what failed")


def build_parser() -> argparse.ArgumentParser:
    from deberta_xf.convert import cli as convert_cli
    from deberta_xf.parity import cli as parity_cli

    commands = [("convert", convert_cli.SUMMARY), ("parity", parity_cli.SUMMARY)]
    width = max(len(name) for name, _ in commands)
    parser = argparse.ArgumentParser(
        prog=PROG, usage=f"{PROG} [-h] [-v] [-q] COMMAND ...",
        description=DESCRIPTION.format(commands="\n".join(f"  {name.ljust(width)}  {summary}"
                                                          for name, summary in commands)),
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_output_options(parser, top_level=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, help=argparse.SUPPRESS, prog=PROG)
    for module in (convert_cli, parity_cli):
        command = module.register(sub)
        command.epilog = (command.epilog or "") + "\nDocumentation: " + DOCS + ".\n"
        _add_output_options(command, top_level=False)
    return parser


# ---------------------------------------------------------------------------------------------------------------
# Native log lines
_ABSL_RECORD = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ \S+:\d+\] ")
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
# Error records that only say that this machine has no (usable) CUDA: printed on every CPU-only run.
_NO_CUDA_ERRORS = ("cuInit", "cuda_diagnostics", "Unable to register cu", "TensorRT", "CUDA driver")


class NativeLogFilter:
    """A line filter for native stderr output: drops TensorFlow's start-up log records, keeps everything else.

    Dropped: absl informational and warning records (``I0000 ...`` / ``W0000 ...``) with their continuation lines,
    error records about a missing CUDA driver, and absl's "All log messages before absl::InitializeLog()" line.
    Kept: fatal records, other error records, and any line that is not a log record."""

    def __init__(self) -> None:
        self.dropping = False  # inside a dropped record: its continuation lines go too
        self.dropped = 0

    def keep(self, line: str) -> bool:
        text = line.rstrip("\r\n")
        if text == _ABSL_PREAMBLE:
            self.dropped += 1
            return False
        record = _ABSL_RECORD.match(text)
        if record is None:
            if self.dropping and text:
                self.dropped += 1
                return False
            return True
        level = record.group(1)
        self.dropping = level in "IW" or (level == "E" and any(s in text for s in _NO_CUDA_ERRORS))
        self.dropped += self.dropping
        return not self.dropping


@contextlib.contextmanager
def filtered_native_stderr() -> Iterator[NativeLogFilter]:
    """File descriptor 2 through :class:`NativeLogFilter` for the duration of the block.

    Native code writes to fd 2 directly, so fd 2 is pointed at a pipe whose lines a thread forwards (or drops);
    Python's ``sys.stderr``, when it is the process's stderr, writes to the real stderr meanwhile, unfiltered."""
    line_filter = NativeLogFilter()
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield line_filter
        return
    read_end, write_end = os.pipe()

    def forward() -> None:
        pending = b""
        with open(read_end, "rb", buffering=0) as pipe:
            while True:
                chunk = pipe.read(65536)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                out = b"".join(line + b"\n" for line in lines
                               if line_filter.keep(line.decode("utf-8", "replace")))
                if out:
                    _write_all(saved, out)
        if pending and line_filter.keep(pending.decode("utf-8", "replace")):
            _write_all(saved, pending)

    thread = threading.Thread(target=forward, name="deberta-xf-native-stderr", daemon=True)
    thread.start()
    python_stderr = sys.stderr
    replaced = _is_fd2(python_stderr)
    if replaced:
        sys.stderr = io.TextIOWrapper(open(saved, "wb", buffering=0, closefd=False),
                                      encoding=getattr(python_stderr, "encoding", None) or "utf-8",
                                      errors="backslashreplace", line_buffering=True, write_through=True)
    os.dup2(write_end, 2)
    try:
        yield line_filter
    finally:
        if replaced:
            sys.stderr.flush()
            sys.stderr = python_stderr
        os.dup2(saved, 2)
        os.close(write_end)
        thread.join(timeout=10)
        os.close(saved)


def _is_fd2(stream) -> bool:
    try:
        return stream.fileno() == 2
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return False


def _write_all(fd: int, data: bytes) -> None:
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        pass


class _FilteredImport(importlib.abc.MetaPathFinder):
    """Imports ``tensorflow`` (whoever imports it first) inside :func:`filtered_native_stderr`, and makes its first
    look for GPUs there too (that is where "failed call to cuInit" is logged on a machine without CUDA)."""

    modules = ("tensorflow",)

    def __init__(self) -> None:
        self._busy = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.modules or self._busy:
            return None
        self._busy = True
        try:  # the other finders' answer (this one answers None while busy)
            spec = importlib.util.find_spec(fullname)
        finally:
            self._busy = False
        if spec is not None and spec.loader is not None:
            spec.loader = _FilteredLoader(spec.loader)
        return spec


class _FilteredLoader(importlib.abc.Loader):
    def __init__(self, loader) -> None:
        self._loader = loader

    def __getattr__(self, name):  # get_resource_reader, is_package, get_filename, ...
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        # The module keeps its own loader, not this wrapper (for importlib.resources, reload, inspect, ...).
        module.__loader__ = self._loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self._loader
        with filtered_native_stderr():
            self._loader.exec_module(module)
            try:
                module.config.list_physical_devices("GPU")
            except Exception:  # noqa: BLE001 - only a probe; the framework reports real problems itself
                pass


@contextlib.contextmanager
def quiet_native_logs(enabled: bool = True) -> Iterator[None]:
    """The environment defaults of :data:`NATIVE_LOG_ENV` and the filtered TensorFlow import, for one command;
    both are undone afterwards (the environment variables this set are removed again)."""
    if not enabled or os.environ.get("TF_CPP_MIN_LOG_LEVEL", "").strip() == "0":  # asked for every record
        yield
        return
    added = [key for key in NATIVE_LOG_ENV if key not in os.environ]
    for key in added:
        os.environ[key] = NATIVE_LOG_ENV[key]
    finder = _FilteredImport()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(finder)
        for key in added:
            os.environ.pop(key, None)


# ---------------------------------------------------------------------------------------------------------------
# The entry point
def main(argv: list[str] | None = None) -> int:
    """``deberta-xf [-v] [-q] COMMAND ...``: the exit code (see the module docstring)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: 2 on bad usage (message already printed), 0 after --help
        return exit_.code if isinstance(exit_.code, int) else EXIT_BAD_INPUT
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="%(levelname)s: %(message)s")
    with quiet_native_logs(enabled=not args.verbose):
        return run_cli(lambda: args.func(args), prog=f"{PROG} {args.command}",
                       interrupted=getattr(args, "interrupted", ""))


if __name__ == "__main__":
    sys.exit(main())
