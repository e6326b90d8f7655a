"""Errors for bad user input. The CLI turns these into a message and exit code 2, never a traceback."""

from __future__ import annotations


class DebertaXfError(ValueError):
    """Bad input: a file, key, shape or field that cannot be used. The message names it."""


class ConfigError(DebertaXfError):
    """An invalid configuration; the message lists every problem at once."""


class CheckpointError(DebertaXfError):
    """A checkpoint that cannot be read or does not fit the model (missing, corrupt, wrong shape, unsafe)."""
