"""Memory limit: a clear error, before any allocation, when a model's parameters would not fit in memory.

:func:`parameter_bytes` counts the bytes of every parameter the schema lists for a config and task
(:func:`deberta_xf.schema.expected_shapes`) in a dtype; :func:`available_memory` is the memory the machine has
available now; :func:`check_memory` raises :class:`~deberta_xf.errors.MemoryLimitError` naming the config's sizes
and both numbers when the first exceeds the second. The estimate counts parameters only, so it refuses only
models that certainly do not fit (docs/limits.md). Framework-free: nothing is allocated, nothing is imported.
"""

from __future__ import annotations

import math
import os
from typing import Any

from deberta_xf import schema
from deberta_xf.configuration import DebertaV2Config
from deberta_xf.errors import MemoryLimitError
from deberta_xf.tasks import TASK_TABLE

ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}
MEMINFO = "/proc/meminfo"


def parameter_bytes(config: DebertaV2Config, task: str = "base", dtype: Any = None) -> int:
    """Bytes of the parameters of ``task``'s model for ``config`` in ``dtype`` (None or "auto": float32)."""
    itemsize = ITEMSIZE[_dtype(dtype)]
    return itemsize * sum(math.prod(shape) for shape in schema.expected_shapes(config, task).values())


def _dtype(dtype: Any) -> str:
    """float32, float16 or bfloat16; float32 for None, "auto" and what is not a plain dtype (a Keras policy
    such as "mixed_bfloat16" keeps float32 variables)."""
    from deberta_xf.loading import dtype_name  # deferred: loading calls this module

    try:
        name = dtype_name(dtype)
    except ValueError:
        return "float32"
    return name if name in ITEMSIZE else "float32"


def available_memory(meminfo: str = MEMINFO) -> int | None:
    """Bytes of memory available now: ``MemAvailable`` of /proc/meminfo (Linux), else the free pages
    (``os.sysconf``), else all physical pages; None when the platform says nothing."""
    try:
        with open(meminfo, "rb") as f:
            for line in f.read(1 << 16).decode("ascii", "replace").splitlines():
                key, _, value = line.partition(":")
                if key == "MemAvailable" and value.split() and value.split()[0].isdigit():
                    return int(value.split()[0]) * 1024  # kB
    except OSError:
        pass
    for pages in ("SC_AVPHYS_PAGES", "SC_PHYS_PAGES"):
        try:
            count, size = os.sysconf(pages), os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            continue
        if count > 0 and size > 0:
            return count * size
    return None


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB ({n:,} bytes)"


def check_memory(config: DebertaV2Config, task: str = "base", dtype: Any = None, framework: str = "",
                 available: int | None = None) -> int:
    """Raise :class:`MemoryLimitError` when the parameters of ``task``'s model for ``config`` in ``dtype`` need more
    bytes than ``available`` (default: :func:`available_memory`); returns the bytes needed. An invalid config
    raises its ConfigError first (the sizes are meaningful only once it is valid)."""
    config.validate()
    needed = parameter_bytes(config, task, dtype)
    available = available_memory() if available is None else available
    if available is not None and needed > available:
        model = TASK_TABLE[task].class_name(framework) if framework else TASK_TABLE[task].architecture
        raise MemoryLimitError(
            f"{model} with vocab_size {config.vocab_size}, hidden_size {config.hidden_size}, "
            f"{config.num_hidden_layers} layers, intermediate_size {config.intermediate_size} needs "
            f"{_gb(needed)} for its {_dtype(dtype)} parameters; "
            f"this machine has {_gb(available)} of memory available (docs/limits.md)")
    return needed
