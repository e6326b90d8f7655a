"""`create_model(framework, task, ...)`: one entry point for all three implementations."""

from __future__ import annotations

import importlib
import os
from typing import Any

from impls.loading import resolve_config
from impls.schema import TASKS, check_task

FRAMEWORK_MODULES = {
    "torch": ("impls.torch.modeling_deberta_v2", "torch"),
    "tf": ("impls.tf.modeling_tf_deberta_v2", "tf"),
    "flax": ("impls.flax.modeling_flax_deberta_v2", "flax"),
}


def framework_module(framework: str):
    """The implementation module of a framework, or an ImportError naming the extra to install."""
    if framework not in FRAMEWORK_MODULES:
        raise ValueError(f"unknown framework {framework!r}; expected one of {', '.join(FRAMEWORK_MODULES)}")
    module_name, extra = FRAMEWORK_MODULES[framework]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if (err.name or "").startswith("impls"):
            raise
        raise ImportError(f"the {framework!r} implementation needs the {extra!r} extra ({err.name} is not "
                          f"installed): pip install 'deberta-xf[{extra}]'") from err


def model_class(framework: str, task: str = "base"):
    check_task(task)
    return framework_module(framework).MODEL_CLASSES[task]


def create_model(framework: str, task: str = "base", *, checkpoint: str | os.PathLike | None = None,
                 config: Any = None, dtype: Any = None, **kwargs: Any):
    """Build a DeBERTa-v2 model in ``framework`` ("torch" | "tf" | "flax") for ``task``.

    - ``checkpoint``: a directory with ``config.json`` and weights in any supported format (the framework's own
      file first), or a weights file (then ``config`` is required).
    - ``config`` alone (a DebertaV2Config, dict or JSON path): a randomly initialised model; ``kwargs``
      override config fields.
    Returns the framework's native model, in inference mode.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    cls = model_class(framework, task)
    if checkpoint is not None:
        return cls.from_pretrained(checkpoint, config=config, dtype=dtype, **kwargs)
    if config is None:
        raise ValueError("create_model needs a checkpoint or a config")
    cfg = resolve_config(None, config)
    if kwargs:
        cfg = type(cfg).from_dict({**cfg.to_dict(), **kwargs})
    return cls.from_config(cfg, dtype=dtype)
