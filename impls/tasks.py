"""The one table of tasks, and the one task inference that everything uses.

A task is one of the reference's model classes. :data:`TASK_TABLE` gives, for each task name used on the command
line and in :func:`deberta_xf.create_model`, the class name suffix (``DebertaV2`` + suffix in PyTorch, with a
``TF`` / ``Flax`` prefix in the other frameworks), the ``config.json`` "architectures" value (the reference writes
PyTorch class names there whichever framework saved), and the reference TF class's Keras model name and top-level
layers (the layout of ``tf_model.h5``).

:func:`infer_task` decides the task of a checkpoint from its config's "architectures" and its head tensors; the
converter, the parity harness and the weight-file writers all call it, so they always agree.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

from deberta_xf.errors import DebertaXfError


@dataclasses.dataclass(frozen=True)
class Task:
    name: str                       # "masked-lm"
    suffix: str                     # "ForMaskedLM": DebertaV2ForMaskedLM, TFDebertaV2ForMaskedLM, ...
    keras_name: str                 # the reference TF class's Keras model name (tf_model.h5 root)
    keras_layers: tuple[str, ...]   # its top-level layers, in model.layers order

    @property
    def architecture(self) -> str:
        """The ``config.json`` "architectures" value: the reference's PyTorch class name."""
        return f"DebertaV2{self.suffix}"

    def class_name(self, framework: str) -> str:
        from deberta_xf.frameworks import get_framework  # the registry builds on this table, not the reverse

        return f"{get_framework(framework).class_prefix}DebertaV2{self.suffix}"


TASK_TABLE: dict[str, Task] = {t.name: t for t in (
    Task("base", "Model", "tf_deberta_v2_model", ("deberta",)),
    Task("masked-lm", "ForMaskedLM", "tf_deberta_v2_for_masked_lm", ("deberta", "cls")),
    Task("sequence-classification", "ForSequenceClassification", "tf_deberta_v2_for_sequence_classification",
         ("deberta", "pooler", "cls_dropout", "classifier")),
    Task("token-classification", "ForTokenClassification", "tf_deberta_v2_for_token_classification",
         ("deberta", "dropout", "classifier")),
    Task("question-answering", "ForQuestionAnswering", "tf_deberta_v2_for_question_answering",
         ("deberta", "qa_outputs")),
    Task("multiple-choice", "ForMultipleChoice", "tf_deberta_v2_for_multiple_choice",
         ("deberta", "dropout", "pooler", "classifier")),
)}
TASKS = tuple(TASK_TABLE)
# The shared base class of every framework's models (not a task).
PRETRAINED_SUFFIX = "PreTrainedModel"


def check_task(task: str) -> str:
    if task not in TASK_TABLE:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return task


def task_of_architecture(architecture: str) -> str | None:
    """``"TFDebertaV2ForMaskedLM"`` (any framework prefix) -> ``"masked-lm"``; None for any other class."""
    from deberta_xf.frameworks import REGISTRY  # the registry builds on this table, not the reverse

    name = str(architecture)
    for framework in REGISTRY.values():
        prefix = framework.class_prefix
        if prefix and name.startswith(prefix + "DebertaV2"):
            name = name[len(prefix):]
    return next((t.name for t in TASK_TABLE.values() if t.architecture == name), None)


# ---------------------------------------------------------------------------------------------------------------
# Task inference
# The head tensors of each family of tasks (top-level names of the canonical state dict). Sequence classification
# and multiple choice have the same head (pooler + classifier): only "architectures" or the classifier's row
# count tells them apart.
_POOLED = ("sequence-classification", "multiple-choice")


def _head_family(names: Iterable[str]) -> tuple[str, ...]:
    tops = {n.split(".", 1)[0] for n in names}
    if tops & {"cls", "lm_predictions"}:
        return ("masked-lm",)
    if "qa_outputs" in tops:
        return ("question-answering",)
    if {"pooler", "classifier"} <= tops:
        return _POOLED
    if "classifier" in tops:
        return ("token-classification",)
    return ("base",)


def _architectures(config: Any) -> list[str]:
    if config is None:
        return []
    values = config.get("architectures") if isinstance(config, Mapping) else getattr(config, "architectures", None)
    if isinstance(values, str):
        values = [values]
    return [str(a) for a in (values or [])]


def _num_labels(config: Any) -> int | None:
    """``num_labels`` of a config object or of a config.json dict (from ``id2label`` when not given, as the
    reference derives it)."""
    if config is None:
        return None
    if not isinstance(config, Mapping):
        return getattr(config, "num_labels", None)
    if config.get("num_labels") is not None:
        return int(config["num_labels"])
    return len(config["id2label"]) if isinstance(config.get("id2label"), Mapping) else 2


def infer_task(shapes: Mapping[str, Iterable[int]], config: Any = None) -> tuple[str, str]:
    """The task of a checkpoint and how it was decided, from its tensors' names and shapes and its config.

    The head tensors decide the family (``mask_predictions.*``, the replaced-token-detection head of v3
    checkpoints, is no task head; a checkpoint without head tensors is a base checkpoint, whatever its config
    says). Config "architectures" (any framework's class name) picks the task within the family. Without
    "architectures", a pooler + classifier head is multiple choice when the classifier has one row and the
    config's ``num_labels`` is not 1, else sequence classification. "architectures" that contradicts the head
    tensors is an error naming both.
    """
    family = _head_family(shapes)
    architectures = _architectures(config)
    named = [(a, task_of_architecture(a)) for a in architectures]
    named = [(a, t) for a, t in named if t is not None]
    if named:
        architecture, task = named[0]
        if family == ("base",):
            return "base", f'no task head tensors (config "architectures" {architecture} names a head it lacks)'
        if task in family:
            return task, f'config "architectures" {architecture}, matching its head tensors'
        raise DebertaXfError(
            f'config "architectures" names {architecture} ({task}), but the weights hold the head of '
            f"{' / '.join(family)}; pass --task to choose the model")
    note = "" if not architectures else f' (config "architectures" {architectures} names no DeBERTa-v2 class)'
    if family == _POOLED:
        rows = tuple(shapes.get("classifier.weight", (None,)))[0]
        num_labels = _num_labels(config)
        if rows == 1 and num_labels is not None and num_labels != 1:
            return "multiple-choice", (f"from its pooler.* tensors and a one-row classifier.weight (config "
                                       f"num_labels={num_labels}){note}")
        return "sequence-classification", f"from its pooler.* and classifier.* tensors{note}"
    reasons = {"masked-lm": "from its MLM head tensors (cls.predictions.* / lm_predictions.lm_head.*)",
               "question-answering": "from its qa_outputs.* tensors",
               "token-classification": "from its classifier.* tensors without a pooler",
               "base": "no task head tensors"}
    return family[0], reasons[family[0]] + note
