"""The parity harness behind ``deberta-xf parity``: one checkpoint, every installed framework, every output.

Steps (DESIGN §5):
1. inputs: the checkpoint's slow and fast tokenizers on real text (compared with each other), or seeded token
   ids when the checkpoint has no tokenizer files; with ``--compare-to`` the recorded inputs;
2. each framework loads the checkpoint by DESIGN §1's rule (its own file first; the report names the file) on the
   requested device and dtype, with full-precision matmuls pinned, and runs the task head with every hidden state;
3. every pair of frameworks (and every recorded framework against every one run now) is compared on every
   output and hidden state by :mod:`deberta_xf.compare`; a failing pair names its first diverging layer and, when
   the two frameworks read different weight files, the tensors in which those files differ.

:func:`run_parity` returns a :class:`ParityReport`; :mod:`deberta_xf.parity.report` renders it. Bad input raises
:class:`deberta_xf.errors.DebertaXfError` (exit code 2); a failed check is a report with ``passed == False`` (1).
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import math
import os
import platform
import re
import sys
from typing import Any, Callable

import numpy as np

from deberta_xf.configuration import CONFIG_NAME, DebertaV2Config
from deberta_xf.errors import DebertaXfError
from deberta_xf.tasks import TASKS, infer_task
from deberta_xf.parity import inputs as parity_inputs
from deberta_xf.compare import (FP32_GRAD_THRESHOLDS, FP32_TRAIN_THRESHOLDS, GRAD_PREFIX, THRESHOLD_KEYS,
                                TRAIN_LOSS_PREFIX, WEIGHTS_PREFIX, Comparison, compare_outputs, divergence, threshold,
                                thresholds_for)
from deberta_xf.frameworks import FRAMEWORKS, REGISTRY
from deberta_xf.parity.recording import Recording, config_differences, load_recording, save_recording

SCHEMA_VERSION = 1
DTYPES = ("float32", "bfloat16", "float16")
OPTIMIZERS = ("sgd", "adamw")
DEVICES = ("auto", "cpu", "gpu")
MATMUL_PRECISION = ("full fp32 matmuls pinned: torch allow_tf32=False + float32_matmul_precision 'highest'; "
                    "TF enable_tensor_float_32_execution(False); JAX default_matmul_precision 'highest'")


@dataclasses.dataclass
class ParityOptions:
    checkpoint: str
    frameworks: list[str] = dataclasses.field(default_factory=lambda: list(FRAMEWORKS))
    device: str = "auto"
    dtype: str = "float32"
    texts: str | None = None
    task: str | None = None
    atol: dict[str, float] = dataclasses.field(default_factory=dict)  # overrides: hidden / logits / mlm_logits
    attentions: bool = False
    save_outputs: str | None = None
    compare_to: str | None = None
    backward: bool = False        # also the task loss and its gradient w.r.t. every parameter (dropout off)
    labels: str | None = None     # --labels FILE.npz for --backward (default: parity_inputs.builtin_labels)
    train_steps: int = 0          # --train-steps N: N optimizer steps on the batch, loss curve + final weights
    optimizer: str = "sgd"        # sgd | adamw (each framework's own: torch.optim, keras.optimizers, optax)
    lr: float = 1e-3
    batch_size: int | None = None  # --batch-size B: --train-steps cycles over the inputs in batches of B rows
    attn_implementation: str = "eager"  # --attn-implementation: torch and flax (tf always runs eager)


@dataclasses.dataclass
class FrameworkStatus:
    framework: str
    status: str                   # ran | not installed | no gpu | failed | recorded
    device: str = ""              # cpu | gpu
    device_name: str = ""
    versions: dict[str, str] = dataclasses.field(default_factory=dict)
    weights_file: str = ""
    seconds: float = 0.0
    note: str = ""
    attn_implementation: str = ""  # with --attn-implementation sdpa|fused: what it ran (tf: eager); "" = eager
    outputs: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)
    # --train-steps with adamw: max |d loss / d parameter| at the start weights, by canonical name
    start_gradients: dict[str, float] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def label(self) -> str:
        return f"{self.framework}@{self.device}" + ("(recorded)" if self.status == "recorded" else "")

    def as_dict(self) -> dict[str, Any]:
        out = {"status": self.status, "label": self.label if self.device else self.framework,
               "device": self.device or None, "device_name": self.device_name or None, "versions": self.versions,
               "weights_file": self.weights_file or None, "seconds": round(self.seconds, 3),
               "note": self.note or None}
        if self.attn_implementation:  # only in --attn-implementation runs: the default schema is unchanged
            out["attn_implementation"] = self.attn_implementation
        return out


@dataclasses.dataclass
class PairResult:
    reference: FrameworkStatus
    candidate: FrameworkStatus
    tensors: list[Comparison]
    weights_diff: dict[str, Any] | None = None   # when a failing pair read different weight files

    @property
    def name(self) -> str:
        return f"{self.reference.label} vs {self.candidate.label}"

    @property
    def passed(self) -> bool:
        return all(t.passed for t in self.tensors)

    @property
    def first_diverging_layer(self) -> str | None:
        return None if self.passed else divergence(self.tensors)

    @property
    def worst(self) -> Comparison | None:
        return max(self.tensors, key=lambda t: (t.max_abs / t.atol if t.atol else t.max_abs), default=None)

    def as_dict(self) -> dict[str, Any]:
        worst = self.worst
        return {"pair": self.name, "reference": self.reference.label, "candidate": self.candidate.label,
                "passed": self.passed, "first_diverging_layer": self.first_diverging_layer,
                "worst": None if worst is None else {"name": worst.name, "max_abs": _finite(worst.max_abs),
                                                     "atol": worst.atol},
                "max_abs": _finite(max((t.max_abs for t in self.tensors), default=0.0)),
                "weights_diff": self.weights_diff,
                # only in --backward / --train-steps reports (the forward report's schema is unchanged)
                **{key: summary for key, prefix in (("gradients", GRAD_PREFIX), ("final_weights", WEIGHTS_PREFIX))
                   if (summary := _summary(self.tensors, prefix)) is not None},
                **({"train_loss": curves} if (curves := self.loss_curves()) is not None else {}),
                "tensors": [_tensor_dict(t) for t in self.tensors]}

    def loss_curves(self) -> dict[str, Any] | None:
        """--train-steps: the loss before each step in both frameworks and the first step where they part (its
        train_loss.<step> over the tolerance; None when they never do)."""
        steps = sorted(int(name[len(TRAIN_LOSS_PREFIX):]) for name in self.reference.outputs
                       if name.startswith(TRAIN_LOSS_PREFIX))
        if not steps:
            return None
        failing = [int(t.name[len(TRAIN_LOSS_PREFIX):]) for t in self.tensors
                   if t.name.startswith(TRAIN_LOSS_PREFIX) and not t.passed]

        def curve(status: FrameworkStatus) -> list[float | None]:
            outputs = status.outputs
            return [_finite(float(outputs[f"{TRAIN_LOSS_PREFIX}{i}"])) if f"{TRAIN_LOSS_PREFIX}{i}" in outputs
                    else None for i in steps]

        return {"reference": curve(self.reference), "candidate": curve(self.candidate),
                "parted_at": min(failing, default=None)}


@dataclasses.dataclass
class Check:
    suite: str
    name: str
    status: str        # passed | failed | skipped
    message: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ParityReport:
    checkpoint: str
    task: str
    task_source: str
    dtype: str
    device_request: str
    tolerances: dict[str, Any]
    inputs: dict[str, Any]
    tokenizer: parity_inputs.TokenizerResult | None
    frameworks: list[FrameworkStatus]
    pairs: list[PairResult]
    recording: dict[str, Any] | None
    notes: list[str]
    environment: dict[str, Any]
    created: str

    def checks(self) -> list[Check]:
        out: list[Check] = []
        if self.tokenizer is not None:
            for c in self.tokenizer.checks:
                out.append(Check("tokenizer", c.name, "passed" if c.passed else "failed", c.detail))
        for fw in self.frameworks:
            if fw.status == "recorded":
                continue
            status = {"ran": "passed", "failed": "failed"}.get(fw.status, "skipped")
            message = (f"{fw.framework} loaded {fw.weights_file} on {fw.device_name} in {fw.seconds:.1f}s"
                       if fw.status == "ran" else f"{fw.framework}: {fw.status}: {fw.note}")
            out.append(Check("load", fw.framework, status, message))
        sources = sum(1 for fw in self.frameworks if fw.outputs)
        if not self.pairs:
            recording_only = self.recording is not None and self.recording.get("saved_to") and sources
            out.append(Check("model", "pairs", "skipped" if recording_only else "failed",
                             f"{sources} framework(s) produced outputs: nothing to compare"
                             + ("; outputs recorded for a later --compare-to" if recording_only else
                                "; install another framework or use --compare-to F.npz")))
        for pair in self.pairs:
            layer = pair.first_diverging_layer
            for t in pair.tensors:
                if t.passed:
                    message = f"max abs {t.max_abs:.3e} <= atol {t.atol:.1e}"
                else:
                    message = (f"max abs {_fmt(t.max_abs)} > atol {t.atol:.1e}" + (f" ({t.note})" if t.note else "")
                               + (f"; first diverging layer: {layer}" if layer else ""))
                out.append(Check(pair.name, t.name, "passed" if t.passed else "failed", message))
        return out

    @property
    def passed(self) -> bool:
        return not any(c.status == "failed" for c in self.checks())

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def as_dict(self) -> dict[str, Any]:
        checks = self.checks()
        tok = self.tokenizer
        return {
            "schema_version": SCHEMA_VERSION,
            "tool": "deberta-xf parity",
            "created": self.created,
            "checkpoint": self.checkpoint,
            "task": self.task,
            "task_source": self.task_source,
            "dtype": self.dtype,
            "device_request": self.device_request,
            "tolerances": self.tolerances,
            "environment": self.environment,
            "inputs": self.inputs,
            "tokenizer": {"checked": tok.checked, "passed": tok.passed, "note": tok.note,
                          "tokenizers": tok.tokenizers, "checks": [c.as_dict() for c in tok.checks]}
            if tok is not None else {"checked": False, "passed": None, "note": self.inputs["note"],
                                     "tokenizers": [], "checks": []},
            "frameworks": {fw.framework if fw.status != "recorded" else fw.label: fw.as_dict()
                           for fw in self.frameworks},
            "recording": self.recording,
            "comparisons": [p.as_dict() for p in self.pairs],
            "checks": [c.as_dict() for c in checks],
            "notes": self.notes,
            "summary": {"checks": len(checks), "failed": sum(c.status == "failed" for c in checks),
                        "skipped": sum(c.status == "skipped" for c in checks),
                        "tensors_compared": sum(len(p.tensors) for p in self.pairs),
                        "worst_max_abs": {p.name: _finite(max((t.max_abs for t in p.tensors), default=0.0))
                                          for p in self.pairs}},
            "passed": self.passed,
            "exit_code": self.exit_code,
        }


def _summary(tensors: list[Comparison], prefix: str) -> dict[str, Any] | None:
    """--backward / --train-steps: how many gradients (final weights) were compared, failed, and the worst."""
    group = [t for t in tensors if t.name.startswith(prefix)]
    if not group:
        return None
    worst = max(group, key=lambda t: t.max_abs)
    return {"compared": len(group), "failed": sum(not t.passed for t in group), "max_abs": _finite(worst.max_abs),
            "worst": worst.name[len(prefix):],
            "max_rel": _finite(max(t.max_rel for t in group))}


def _finite(x: float) -> float | None:
    """JSON has no inf/NaN: a comparison that could not produce a number is null (its ``note`` says why)."""
    return float(x) if math.isfinite(x) else None


def _fmt(x: float) -> str:
    return f"{x:.3e}" if math.isfinite(x) else "inf"


def _tensor_dict(t: Comparison) -> dict[str, Any]:
    return {"name": t.name, "shape": list(t.shape), "max_abs": _finite(t.max_abs), "mean_abs": _finite(t.mean_abs),
            "max_rel": _finite(t.max_rel), "atol": t.atol, "passed": t.passed, "compared": t.compared,
            "note": t.note or None}


# === Validation of the options (everything that is bad input fails here, before any model runs) ===

def _check_options(opts: ParityOptions) -> DebertaV2Config:
    if opts.dtype not in DTYPES:
        raise DebertaXfError(f"--dtype {opts.dtype!r}: expected one of {', '.join(DTYPES)}")
    if opts.device not in DEVICES:
        raise DebertaXfError(f"--device {opts.device!r}: expected one of {', '.join(DEVICES)}")
    if opts.task is not None and opts.task not in TASKS:
        raise DebertaXfError(f"--task {opts.task!r}: expected one of {', '.join(TASKS)}")
    training = opts.backward or opts.train_steps
    if opts.train_steps < 0 or opts.train_steps > 1000:
        raise DebertaXfError(f"--train-steps {opts.train_steps}: expected 1 to 1000")
    if opts.optimizer not in OPTIMIZERS:
        raise DebertaXfError(f"--optimizer {opts.optimizer!r}: expected one of {', '.join(OPTIMIZERS)}")
    if not (math.isfinite(opts.lr) and opts.lr > 0):
        raise DebertaXfError(f"--lr {opts.lr!r}: expected a positive number")
    if opts.train_steps and opts.dtype != "float32":
        raise DebertaXfError(f"--train-steps --dtype {opts.dtype}: training is compared in float32 only")
    if opts.batch_size is not None and not (opts.train_steps and opts.batch_size >= 1):
        raise DebertaXfError(f"--batch-size {opts.batch_size}: expected a positive number of rows, with --train-steps")
    if opts.backward and opts.dtype != "float32":
        raise DebertaXfError(f"--backward --dtype {opts.dtype}: gradients are checked in float32 only (the gradient "
                             f"tolerances are measured for float32; docs/tolerances.md)")
    if opts.labels is not None and not training:
        raise DebertaXfError("--labels FILE: only with --backward or --train-steps")
    for key, value in opts.atol.items():
        if key in FP32_GRAD_THRESHOLDS and not opts.backward:
            raise DebertaXfError("--atol-grad: only with --backward")
        if key in FP32_TRAIN_THRESHOLDS and not opts.train_steps:
            raise DebertaXfError("--atol-train: only with --train-steps")
        if key not in THRESHOLD_KEYS and key not in FP32_GRAD_THRESHOLDS and key not in FP32_TRAIN_THRESHOLDS:
            raise DebertaXfError(f"unknown tolerance {key!r}; expected {', '.join(THRESHOLD_KEYS)}")
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise DebertaXfError(f"--atol-{key.replace('mlm_logits', 'mlm')} {value!r}: expected a positive number")
    unknown = [f for f in opts.frameworks if f not in FRAMEWORKS]
    if unknown or not opts.frameworks:
        raise DebertaXfError(f"--frameworks: expected a comma-separated list of {', '.join(FRAMEWORKS)}")
    ckpt = opts.checkpoint
    if not os.path.exists(ckpt):
        raise DebertaXfError(f"{ckpt}: no such checkpoint directory")
    if not os.path.isdir(ckpt):
        raise DebertaXfError(f"{ckpt}: CHECKPOINT must be a directory holding {CONFIG_NAME} and weights")
    config_path = os.path.join(ckpt, CONFIG_NAME)
    if not os.path.isfile(config_path):
        raise DebertaXfError(f"{ckpt}: no {CONFIG_NAME} in this checkpoint directory")
    config = DebertaV2Config.from_json_file(config_path).validate()  # ConfigError (a DebertaXfError) names the fields
    from deberta_xf.formats import find_weights

    find_weights(ckpt, "torch")  # CheckpointError when the directory has no weights file at all
    return config


def _environment(statuses: list[FrameworkStatus]) -> dict[str, Any]:
    try:
        version = importlib.metadata.version("deberta-xf")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return {"deberta_xf": version, "python": sys.version.split()[0], "platform": platform.platform(),
            "machine": platform.machine(), "numpy": np.__version__,
            "frameworks": {fw.framework if fw.status != "recorded" else fw.label:
                           {"versions": fw.versions, "device": fw.device or None,
                            "device_name": fw.device_name or None} for fw in statuses},
            "matmul_precision": MATMUL_PRECISION}


# === Inputs ===

def _model_inputs(opts: ParityOptions, config: DebertaV2Config, task: str, recording: Recording | None,
                  progress: Callable[[str], None]) -> tuple[dict[str, np.ndarray], dict[str, Any],
                                                            parity_inputs.TokenizerResult | None]:
    ckpt = opts.checkpoint
    config_path = os.path.join(ckpt, CONFIG_NAME)
    tokenizer = None
    texts = None
    if parity_inputs.has_tokenizer(ckpt):
        texts = parity_inputs.read_texts(opts.texts)
        progress(f"tokenizing {len(texts)} texts with the checkpoint's tokenizers")
        tokenizer = parity_inputs.tokenizer_checks(ckpt, texts, config.max_position_embeddings)
    elif opts.texts is not None:
        parity_inputs.read_texts(opts.texts)  # still a bad --texts file is bad input
    info: dict[str, Any] = {"source": "", "note": "", "shape": None, "real_tokens": None, "texts_file": None,
                            "num_texts": None, "pairs": None, "seed": None, "recording": None}
    if recording is not None:
        model_inputs = dict(recording.inputs)
        recorded_note = (recording.metadata.get("inputs") or {}).get("note", "no description")
        info.update(source="recording", recording=recording.path,
                    note=f"the inputs recorded in {recording.path} ({recorded_note})")
        source = recording.path
    elif tokenizer is not None:
        model_inputs = dict(tokenizer.encoding)
        info.update(source="tokenizer", texts_file=texts.source, num_texts=len(texts), pairs=texts.second is not None,
                    note=f"{len(texts)} texts from {texts.source} tokenized by the checkpoint's "
                         f"{' and '.join(tokenizer.tokenizers)} tokenizer, padded"
                         + (f"; {tokenizer.truncated} truncated to {config.max_position_embeddings} tokens"
                            if tokenizer.truncated else ""))
        source = f"{texts.source} tokenized by {ckpt}"
    else:
        model_inputs = parity_inputs.deterministic_inputs(config)
        info.update(source="deterministic", seed=parity_inputs.DETERMINISTIC_SEED,
                    note=f"{ckpt} has no tokenizer files (spm.model / tokenizer.json): fed deterministic token ids "
                         f"(numpy seed {parity_inputs.DETERMINISTIC_SEED}) with padding"
                         + ("; --texts ignored" if opts.texts else ""))
        source = "deterministic ids"
    model_inputs = parity_inputs.as_task_inputs(model_inputs, task, source)
    parity_inputs.check_ids(model_inputs, config, source, config_path)
    info["shape"] = list(model_inputs["input_ids"].shape)
    info["real_tokens"] = int(np.asarray(model_inputs["attention_mask"]).sum())
    return model_inputs, info, tokenizer


def _labels(opts: ParityOptions, config: DebertaV2Config, task: str, model_inputs: dict[str, np.ndarray],
            recording: Recording | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The labels of a --backward / --train-steps run (with --compare-to: the recorded ones) and their description
    for the report."""
    if recording is not None and recording.labels:
        if opts.labels is not None:
            raise DebertaXfError(f"--labels {opts.labels} with --compare-to {recording.path}: the recording holds "
                                 f"the labels its gradients were computed with; drop --labels")
        labels, source = recording.labels, "recording"
        wanted, rows = parity_inputs.LABEL_KEYS[task], len(model_inputs["input_ids"])
        if sorted(labels) != sorted(wanted) or any(v.ndim == 0 or len(v) != rows for v in labels.values()):
            shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in labels.items())
            raise DebertaXfError(f"--compare-to {recording.path}: recorded labels {shapes}; task {task} needs "
                                 f"{', '.join(wanted)} for {rows} rows")
        note = f"the labels recorded in {recording.path}"
    elif opts.labels is not None:
        labels, source = parity_inputs.read_labels(opts.labels, model_inputs, task), opts.labels
        note = f"labels from {opts.labels}"
    else:
        labels, source = parity_inputs.builtin_labels(model_inputs, config, task), "built-in"
        note = (f"built-in labels (numpy seed {parity_inputs.LABEL_SEED})" if task != "base" else
                f"base model (no task loss): surrogate loss sum(last_hidden_state * target * mask) / sum(mask), "
                f"target seeded (numpy seed {parity_inputs.LABEL_SEED})")
    info = {"source": source, "note": note,
            "keys": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in labels.items()}}
    if "labels" in labels and labels["labels"].dtype.kind == "i":
        info["ignored"] = int((labels["labels"] == -100).sum())
    return labels, info


def _training(opts: ParityOptions) -> dict[str, Any] | None:
    """What a --backward / --train-steps run does, as a recording stores it (None: forward outputs only)."""
    if not (opts.backward or opts.train_steps):
        return None
    return {"backward": opts.backward, "train_steps": opts.train_steps, "optimizer": opts.optimizer, "lr": opts.lr,
            "batch_size": opts.batch_size}


def _training_mismatch(recorded: dict[str, Any] | None, current: dict[str, Any] | None) -> tuple[str, str] | None:
    """How the recorded run and this one differ in what they train (the optimizer settings only with steps)."""
    def flags(training: dict[str, Any] | None) -> str:
        if not training:
            return "forward outputs only"
        words = ["--backward"] if training["backward"] else []
        if training["train_steps"]:
            words += [f"--train-steps {training['train_steps']}", f"--optimizer {training['optimizer']}",
                      f"--lr {training['lr']:g}"]
            words += [f"--batch-size {training['batch_size']}"] if training["batch_size"] is not None else []
        return " ".join(words)

    recorded_flags, current_flags = flags(recorded), flags(current)
    return None if recorded_flags == current_flags else (recorded_flags, current_flags)


# === Thresholds ===

def _tolerances(opts: ParityOptions, recording: Recording | None) -> dict[str, Any]:
    dtypes = [opts.dtype] + ([recording.dtype] if recording is not None and recording.dtype != opts.dtype else [])
    base = {k: max(thresholds_for(d)[k] for d in dtypes) for k in THRESHOLD_KEYS}
    source = {"float32": "fp32 defaults, docs/tolerances.md", "bfloat16": "measured bf16, docs/tolerances.md",
              "float16": "measured fp16, docs/tolerances.md"}
    description = " / ".join(source[d] for d in dtypes)
    if len(dtypes) > 1:
        description += f" (the looser of {opts.dtype} now and {recording.dtype} recorded)"
    overrides = {k: float(v) for k, v in opts.atol.items()}
    if overrides:
        description += "; overridden: " + ", ".join(f"{k}={v:.1e}" for k, v in overrides.items())
    grads = dict(FP32_GRAD_THRESHOLDS) if opts.backward else {}
    if opts.train_steps:
        grads.update(FP32_TRAIN_THRESHOLDS)
    return {"dtype": opts.dtype if len(dtypes) == 1 else "+".join(dtypes), **base, **grads, **overrides,
            "source": description}


# === Running and comparing ===

def _run_frameworks(opts: ParityOptions, task: str, model_inputs: dict[str, np.ndarray],
                    progress: Callable[[str], None], labels: dict[str, np.ndarray] | None = None,
                    train_labels: dict[str, np.ndarray] | None = None) -> list[FrameworkStatus]:
    statuses: list[FrameworkStatus] = []
    plan = []
    for framework in opts.frameworks:
        runner = REGISTRY[framework]
        progress(f"{framework}: importing")
        why = runner.available()
        if why is not None:
            statuses.append(FrameworkStatus(framework, "not installed", note=why))
            continue
        progress(f"{framework}: looking for devices")
        device = runner.resolve_device(opts.device)
        status = FrameworkStatus(framework, "pending", versions=runner.versions())
        if device is None:
            status.status, status.note = "no gpu", f"--device gpu: {framework} sees no GPU"
        else:
            status.device, status.device_name = device.kind, device.name
            if opts.attn_implementation != "eager":
                status.attn_implementation = runner.attention_implementation(opts.attn_implementation)
            plan.append((runner, device, status))
        statuses.append(status)
    if opts.device == "gpu" and not plan and any(s.status == "no gpu" for s in statuses):
        raise DebertaXfError("--device gpu: no requested framework sees a GPU ("
                             + "; ".join(f"{s.framework}: {s.note or s.status}" for s in statuses) + ")")
    for i, (runner, device, status) in enumerate(plan, 1):
        progress(f"[{i}/{len(plan)}] {status.framework}: loading the checkpoint and running it on {device.name} "
                 f"({opts.dtype})")
        try:
            attn = {"attn_implementation": opts.attn_implementation}
            execution = runner.run(opts.checkpoint, task, opts.dtype, model_inputs, device, opts.attentions, **attn)
            if labels is not None:
                progress(f"[{i}/{len(plan)}] {status.framework}: loss and gradients on {device.name}")
                backward = runner.backward(opts.checkpoint, task, opts.dtype, model_inputs, labels, device, **attn)
                execution.outputs.update(backward.outputs)
                execution.seconds += backward.seconds
            if train_labels is not None:
                progress(f"[{i}/{len(plan)}] {status.framework}: {opts.train_steps} {opts.optimizer} steps")
                trained = runner.train(opts.checkpoint, task, opts.dtype, model_inputs, train_labels, device,
                                       opts.train_steps, opts.optimizer, opts.lr, opts.batch_size, **attn)
                execution.outputs.update(trained.outputs)
                execution.seconds += trained.seconds
                if opts.optimizer == "adamw":
                    grads = backward.outputs if labels is not None else runner.backward(
                        opts.checkpoint, task, opts.dtype, model_inputs, train_labels, device, **attn).outputs
                    status.start_gradients = _max_abs_gradients(grads)
        except Exception as err:  # a framework that cannot load or run the checkpoint is a failed check
            status.status = "failed"
            status.note = _one_line(f"{type(err).__name__}: {err}")
            try:
                from deberta_xf.formats import find_weights

                status.weights_file = os.path.basename(find_weights(opts.checkpoint, runner.name)[0])
            except DebertaXfError:
                pass
            continue
        status.status = "ran"
        status.outputs = execution.outputs
        status.weights_file = execution.weights_file
        status.seconds = execution.seconds
    return statuses


_MANTISSA_BITS = {"float64": 52, "float32": 23, "float16": 10, "bfloat16": 7}


def _weights_diff(checkpoint: str, file_a: str, file_b: str, limit: int = 10) -> dict[str, Any]:
    """Which tensors differ between two weight files of one checkpoint (canonical names, compared as float64
    after rounding both to the coarser of their dtypes)."""
    from deberta_xf.formats import open_weights

    result: dict[str, Any] = {"files": [file_a, file_b], "differing": [], "num_differing": 0, "only_in_first": [],
                              "only_in_second": [], "error": None}
    try:
        with open_weights(os.path.join(checkpoint, file_a)) as ra, open_weights(os.path.join(checkpoint, file_b)) as rb:
            ia, ib = ra.infos(), rb.infos()
            differing = []
            for name in [n for n in ia if n in ib]:
                a, b = ra.read(name), rb.read(name)
                if a.shape != b.shape:
                    differing.append({"name": name, "max_abs": None, "note": f"shape {list(a.shape)} vs "
                                                                             f"{list(b.shape)}"})
                    continue
                if a.dtype.kind in "iub" or b.dtype.kind in "iub":
                    continue
                coarse = min((a.dtype, b.dtype), key=lambda d: _MANTISSA_BITS.get(d.name, 23))
                diff = np.abs(a.astype(coarse).astype(np.float64) - b.astype(coarse).astype(np.float64))
                if diff.size and diff.max() > 0:
                    differing.append({"name": name, "max_abs": float(diff.max()),
                                      "changed": int((diff > 0).sum()), "size": int(diff.size)})
            result["differing"] = differing[:limit]
            result["num_differing"] = len(differing)
            result["only_in_first"] = sorted(set(ia) - set(ib))[:limit]
            result["only_in_second"] = sorted(set(ib) - set(ia))[:limit]
    except Exception as err:  # a diagnosis; the failure itself is already reported
        result["error"] = f"could not compare the files: {type(err).__name__}: {err}"
    return result


def _compare(opts: ParityOptions, task: str, statuses: list[FrameworkStatus], recorded: list[FrameworkStatus],
             mask: np.ndarray, thresholds: dict[str, float], progress: Callable[[str], None]) -> list[PairResult]:
    ran = [s for s in statuses if s.status == "ran"]
    pairs = [(a, b) for a in recorded for b in ran]
    pairs += [(ran[i], ran[j]) for i in range(len(ran)) for j in range(i + 1, len(ran))]
    results = []
    for a, b in pairs:
        progress(f"comparing {a.label} vs {b.label}")
        tensors = compare_outputs(a.outputs, b.outputs, task, mask, thresholds, strict=True)
        if opts.train_steps and opts.optimizer == "adamw":
            _adamw_noise(opts, task, a, b, tensors, thresholds)
        pair = PairResult(a, b, tensors)
        # A failing pair that read two different files: which tensors differ between them? (A recorded
        # framework's file is diffed when this checkpoint has a file of that name.)
        if (not pair.passed and a.weights_file and b.weights_file and a.weights_file != b.weights_file
                and os.path.isfile(os.path.join(opts.checkpoint, a.weights_file))):
            progress(f"comparing the weights in {a.weights_file} and {b.weights_file}")
            pair.weights_diff = _weights_diff(opts.checkpoint, a.weights_file, b.weights_file)
        results.append(pair)
    return results


def _adamw_noise(opts: ParityOptions, task: str, a: FrameworkStatus, b: FrameworkStatus,
                 tensors: list[Comparison], thresholds: dict[str, float]) -> None:
    """A parameter whose gradient is zero within the gradient tolerance in both frameworks (e.g. qa_outputs.bias
    and the last LayerNorm bias under QA's softmax over positions, which a shared shift leaves unchanged) gets
    AdamW steps made of normalised rounding noise, up to lr each: its final weights are held to 2 x lr x steps
    instead, with a note."""
    grad_atol = threshold(GRAD_PREFIX + "x", task, thresholds)
    bound = 2 * opts.lr * opts.train_steps
    for t in tensors:
        if not t.name.startswith(WEIGHTS_PREFIX) or t.passed:
            continue
        name = t.name[len(WEIGHTS_PREFIX):]
        ga, gb = a.start_gradients.get(name), b.start_gradients.get(name)
        if ga is None or gb is None or max(ga, gb) > grad_atol or not np.isfinite(t.max_abs):
            continue
        t.atol = max(t.atol, bound)
        t.note = (f"gradient zero within {grad_atol:.0e} at the start (max |grad| {max(ga, gb):.1e}): AdamW turns "
                  f"rounding noise into steps of up to lr; held to 2 x lr x steps = {bound:.1e}")


def _recorded_statuses(recording: Recording) -> list[FrameworkStatus]:
    """The recorded frameworks; a --backward recording's gradients are also its start gradients (for AdamW's
    zero-gradient rule, :func:`_adamw_noise`)."""
    return [FrameworkStatus(r.framework, "recorded", r.device, r.device_name, dict(r.versions), r.weights_file,
                            note=f"recorded in {recording.path}", outputs=r.outputs,
                            start_gradients=_max_abs_gradients(r.outputs))
            for r in recording.frameworks]


def _max_abs_gradients(outputs: dict[str, np.ndarray]) -> dict[str, float]:
    """max |d loss / d parameter| by canonical name, from ``grad/<name>`` outputs."""
    return {k[len(GRAD_PREFIX):]: float(np.abs(v).max()) if v.size else 0.0
            for k, v in outputs.items() if k.startswith(GRAD_PREFIX)}


def run_parity(opts: ParityOptions, progress: Callable[[str], None] | None = None) -> ParityReport:
    """Run the harness; ``progress`` (optional) is told each step as it starts (the CLI shows it on a terminal)."""
    progress = progress or (lambda message: None)
    config = _check_options(opts)
    ckpt = opts.checkpoint
    progress(f"reading {ckpt}")
    config_path = os.path.join(ckpt, CONFIG_NAME)
    recording = load_recording(opts.compare_to) if opts.compare_to else None
    notes: list[str] = []

    if opts.task is not None:
        task, task_source = opts.task, "--task"
    else:
        from deberta_xf.formats import open_weights, find_weights

        with open_weights(find_weights(ckpt, "torch")[0]) as reader:
            shapes = reader.shapes()
        task, task_source = infer_task(shapes, config)
    if recording is not None:
        if recording.task != task:
            raise DebertaXfError(f"--compare-to {recording.path}: recorded task {recording.task!r} but this run's "
                                 f"task is {task!r} (pass --task {recording.task} if that is meant)")
        current = json.loads(json.dumps(config.to_dict()))  # as the recording stored it (JSON types)
        diffs = config_differences(recording.metadata["config"], current)
        if diffs:
            raise DebertaXfError(f"--compare-to {recording.path}: recorded with a different config than "
                                 f"{config_path}: " + "; ".join(diffs[:5]))

    model_inputs, inputs_info, tokenizer = _model_inputs(opts, config, task, recording, progress)
    tolerances = _tolerances(opts, recording)
    thresholds = {k: tolerances[k] for k in THRESHOLD_KEYS + tuple(FP32_GRAD_THRESHOLDS) + tuple(FP32_TRAIN_THRESHOLDS)
                  if k in tolerances}
    labels = None
    if opts.train_steps and task == "base":
        raise DebertaXfError("--train-steps: the base model has no task loss; pass --task with a head "
                             "(--backward alone uses a surrogate loss for the base model)")
    if opts.backward or opts.train_steps:
        labels, inputs_info["labels"] = _labels(opts, config, task, model_inputs, recording)
    if recording is not None:
        mismatch = _training_mismatch(recording.training, _training(opts))
        if mismatch:
            raise DebertaXfError(f"--compare-to {recording.path}: recorded {mismatch[0]}, this run {mismatch[1]} "
                                 f"(repeat the recorded run's --backward / --train-steps / --optimizer / --lr / "
                                 f"--batch-size)")
    if opts.train_steps:
        inputs_info["training"] = {"steps": opts.train_steps, "optimizer": opts.optimizer, "lr": opts.lr}
        if opts.batch_size is not None:
            inputs_info["training"]["batch_size"] = opts.batch_size
            inputs_info["training"]["batches"] = -(-len(model_inputs["input_ids"]) // opts.batch_size)
        notes.append(f"--train-steps {opts.train_steps}: {opts.optimizer} (lr {opts.lr:g}; each framework's own: "
                     f"torch.optim, keras.optimizers, optax"
                     + ("; AdamW betas (0.9, 0.999), eps 1e-8, weight decay 0.01 in all three"
                        if opts.optimizer == "adamw" else "; no momentum")
                     + ") " + (f"cycling over {inputs_info['training']['batches']} batches of {opts.batch_size} "
                               f"rows (the same in every framework)" if opts.batch_size else "on the same batch")
                     + ", dropout off, from the checkpoint's weights; compared: the loss before "
                       "each step (train_loss.i) and every weight after the last step (weights/<name>)")
    if opts.backward:
        notes.append("--backward: dropout off; gradients compared per parameter by canonical name (a tied "
                     "parameter once: the legacy MLM decoder's gradient is accumulated on the word embeddings, as "
                     "the reference does); a failing pair names the loss and the first diverging gradient in "
                     "backward order (head, last layer, ..., embeddings)")
    statuses = _run_frameworks(opts, task, model_inputs, progress, labels if opts.backward else None,
                               labels if opts.train_steps else None)
    recorded = _recorded_statuses(recording) if recording is not None else []
    pairs = _compare(opts, task, statuses, recorded, model_inputs["attention_mask"], thresholds, progress)

    for s in statuses:
        if s.status in ("not installed", "no gpu"):
            notes.append(f"{s.framework} skipped: {s.note}")
    weight_files = {s.weights_file for s in statuses if s.status == "ran"}
    if len(weight_files) > 1:
        notes.append("the frameworks loaded different weight files: " + ", ".join(
            f"{s.framework}: {s.weights_file}" for s in statuses if s.status == "ran"))

    recording_info: dict[str, Any] | None = None
    if recording is not None or opts.save_outputs:
        recording_info = {"saved_to": None, "saved_frameworks": None, "compared_to": None, "recorded_dtype": None,
                          "recorded_frameworks": None, "recorded_environment": None}
    if recording is not None:
        recording_info.update(
            compared_to=recording.path, recorded_dtype=recording.dtype,
            recorded_frameworks={r.label: {"device_name": r.device_name, "versions": r.versions,
                                           "weights_file": r.weights_file} for r in recorded},
            recorded_environment=recording.metadata.get("environment"))
    env = _environment(statuses + recorded)
    if opts.save_outputs:
        ran = [s for s in statuses if s.status == "ran"]
        metadata = {"checkpoint": os.path.abspath(ckpt), "config": config.to_dict(), "task": task,
                    "dtype": opts.dtype, "inputs": inputs_info, "environment": env, "training": _training(opts),
                    "frameworks": {s.framework: {"device": s.device, "device_name": s.device_name,
                                                 "versions": s.versions, "weights_file": s.weights_file}
                                   for s in ran},
                    "created": _now()}
        if ran:
            progress(f"writing {opts.save_outputs}")
            save_recording(opts.save_outputs, metadata, model_inputs, {s.framework: s.outputs for s in ran}, labels)
            recording_info.update(saved_to=opts.save_outputs, saved_frameworks=[s.label for s in ran])
        else:
            notes.append(f"--save-outputs {opts.save_outputs}: nothing written, no framework ran")

    return ParityReport(checkpoint=ckpt, task=task, task_source=task_source, dtype=opts.dtype,
                        device_request=opts.device, tolerances=tolerances, inputs=inputs_info, tokenizer=tokenizer,
                        frameworks=recorded + statuses, pairs=pairs, recording=recording_info, notes=notes,
                        environment=env, created=_now())


def _one_line(message: str, limit: int = 400) -> str:
    """An exception message for a report cell: ANSI colours removed, lines joined, length capped."""
    text = " ".join(line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", message).splitlines() if line.strip())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
