"""`create_model(framework, task, ...)`: one entry point for all three implementations."""

from __future__ import annotations

import os
from typing import Any

from deberta_xf.loading import resolve_config
from deberta_xf.frameworks import get_framework

def model_class(framework: str, task: str = "base"):
    """The class of ``task`` in ``framework`` (an ImportError names the extra to install when it is missing)."""
    return get_framework(framework).model_class(task)


def create_model(framework: str, task: str = "base", *, checkpoint: str | os.PathLike | None = None,
                 config: Any = None, dtype: Any = None, **kwargs: Any):
    """Build a DeBERTa-v2 model in ``framework`` ("torch" | "tf" | "flax") for ``task``.

    - ``checkpoint``: a directory with ``config.json`` and weights in any supported format (the framework's own
      file first), or a weights file (then ``config`` is required).
    - ``config`` alone (a DebertaV2Config, dict or JSON path): a randomly initialised model; ``kwargs``
      override config fields.
    Returns the framework's native model, in inference mode.
    """
    cls = model_class(framework, task)
    if checkpoint is not None:
        return cls.from_pretrained(checkpoint, config=config, dtype=dtype, **kwargs)
    if config is None:
        raise ValueError("create_model needs a checkpoint or a config")
    cfg = resolve_config(None, config)
    if kwargs:
        cfg = type(cfg).from_dict(cfg.to_dict(), **kwargs)
    return cls.from_config(cfg, dtype=dtype)
