"""deberta-xf: DeBERTa-v2/v3 in PyTorch, TensorFlow (Keras 3) and Flax (NNX).

Every public name is resolved lazily, so ``import impls`` imports no framework: ``impls.DebertaV2Model``
imports torch, ``impls.TFDebertaV2Model`` TensorFlow, ``impls.FlaxDebertaV2Model`` JAX/Flax.
"""

from __future__ import annotations

import importlib

_TASK_CLASSES = (
    "PreTrainedModel",
    "Model",
    "ForMaskedLM",
    "ForSequenceClassification",
    "ForTokenClassification",
    "ForQuestionAnswering",
    "ForMultipleChoice",
)

_LAZY: dict[str, str] = {
    "DebertaV2Config": "impls.configuration",
    "ModelOutput": "impls.outputs",
    "create_model": "impls.factory",
    "DebertaV2Tokenizer": "impls.tokenization_deberta_v2",
    "DebertaV2TokenizerFast": "impls.tokenization_deberta_v2_fast",
}
for _suffix in _TASK_CLASSES:
    _LAZY[f"DebertaV2{_suffix}"] = "impls.torch.modeling_deberta_v2"
    _LAZY[f"TFDebertaV2{_suffix}"] = "impls.tf.modeling_tf_deberta_v2"
    _LAZY[f"FlaxDebertaV2{_suffix}"] = "impls.flax.modeling_flax_deberta_v2"

_EXTRA = {"impls.torch": "torch", "impls.tf": "tf", "impls.flax": "flax"}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'impls' has no attribute {name!r}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        extra = next((e for prefix, e in _EXTRA.items() if module_name.startswith(prefix)), None)
        if extra is None or (err.name or "").startswith("impls"):
            raise
        raise ImportError(
            f"{name} needs the {extra!r} extra, which is not installed ({err.name} is missing): "
            f"pip install 'deberta-xf[{extra}]'"
        ) from err
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
