"""deberta-xf: DeBERTa-v2/v3 in PyTorch, TensorFlow (Keras 3) and Flax (NNX).

Every public name is resolved lazily, so ``import deberta_xf`` imports no framework: ``deberta_xf.DebertaV2Model``
imports torch, ``deberta_xf.TFDebertaV2Model`` TensorFlow, ``deberta_xf.FlaxDebertaV2Model`` JAX/Flax.
"""

from __future__ import annotations

import importlib

from deberta_xf.frameworks import REGISTRY
from deberta_xf.tasks import PRETRAINED_SUFFIX, TASK_TABLE

_LAZY: dict[str, str] = {
    "DebertaV2Config": "deberta_xf.configuration",
    "ModelOutput": "deberta_xf.outputs",
    "create_model": "deberta_xf.factory",
    "DebertaV2Tokenizer": "deberta_xf.tokenization_deberta_v2",
    "DebertaV2TokenizerFast": "deberta_xf.tokenization_deberta_v2_fast",
}
# Every framework's classes, by the task table's names: DebertaV2ForMaskedLM, TFDebertaV2ForMaskedLM, ...
for _framework in REGISTRY.values():
    for _suffix in (PRETRAINED_SUFFIX, *(t.suffix for t in TASK_TABLE.values())):
        _LAZY[f"{_framework.class_prefix}DebertaV2{_suffix}"] = _framework.module

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'deberta_xf' has no attribute {name!r}")
    framework = next((f for f in REGISTRY.values() if f.module == module_name), None)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if framework is None or (err.name or "").startswith("deberta_xf"):
            raise
        raise ImportError(
            f"{name} needs the {framework.extra!r} extra, which is not installed ({err.name} is missing): "
            f"pip install 'deberta-xf[{framework.extra}]'"
        ) from err
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
