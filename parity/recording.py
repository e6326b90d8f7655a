"""Recorded runs (``--save-outputs F.npz`` / ``--compare-to F.npz``): parity across machines.

A recording is a plain ``.npz`` (read with ``allow_pickle=False``):

- ``inputs.<name>``                 the model inputs every framework ran on (``input_ids``, ``attention_mask``, ...)
- ``outputs.<framework>.<output>``  float32 outputs of each framework that ran (``outputs.torch.hidden_states.0``)
- ``metadata``                      a JSON string: ``format``, ``schema_version``, ``checkpoint``, ``config``,
  ``task``, ``dtype``, ``inputs_source``, ``environment`` and, per framework, ``device``, ``device_name``,
  ``versions`` and ``weights_file``.

So torch and Flax can be recorded on a GPU machine without TensorFlow and compared later, elsewhere, against TF:
the later run reuses the recorded inputs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from typing import Any

import numpy as np

from deberta_xf.errors import DebertaXfError
from deberta_xf.fileio import atomic_path

FORMAT = "deberta-xf parity recording"
SCHEMA_VERSION = 1
# config.json keys that say nothing about the model's computation
_META_KEYS = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures", "id2label",
              "label2id", "problem_type"}


@dataclasses.dataclass
class RecordedFramework:
    framework: str
    device: str                # "cpu" | "gpu"
    device_name: str
    versions: dict[str, str]
    weights_file: str
    outputs: dict[str, np.ndarray]

    @property
    def label(self) -> str:
        return f"{self.framework}@{self.device}(recorded)"


@dataclasses.dataclass
class Recording:
    path: str
    metadata: dict[str, Any]
    inputs: dict[str, np.ndarray]
    frameworks: list[RecordedFramework]

    @property
    def task(self) -> str:
        return self.metadata["task"]

    @property
    def dtype(self) -> str:
        return self.metadata["dtype"]


def save_recording(path: str, metadata: dict[str, Any], inputs: dict[str, np.ndarray],
                   outputs: dict[str, dict[str, np.ndarray]]) -> None:
    """Write the recording atomically (a temporary name, renamed when complete)."""
    arrays: dict[str, np.ndarray] = {f"inputs.{k}": np.asarray(v) for k, v in inputs.items()}
    for framework, flat in outputs.items():
        for name, value in flat.items():
            arrays[f"outputs.{framework}.{name}"] = np.asarray(value, dtype=np.float32)
    meta = {"format": FORMAT, "schema_version": SCHEMA_VERSION, **metadata}
    arrays["metadata"] = np.asarray(json.dumps(meta, sort_keys=True))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def load_recording(path: str) -> Recording:
    """Read and validate a recording; every problem is a DebertaXfError naming the file and the key."""
    if not os.path.isfile(path):
        raise DebertaXfError(f"--compare-to {path}: no such file")
    try:
        data = np.load(path, allow_pickle=False)
        files = set(data.files)
    except (zipfile.BadZipFile, ValueError, OSError) as err:
        raise DebertaXfError(f"--compare-to {path}: not a .npz recording ({err})") from None
    if "metadata" not in files:
        raise DebertaXfError(f"--compare-to {path}: key 'metadata' is missing; not written by --save-outputs")
    try:
        meta = json.loads(str(data["metadata"]))
    except (ValueError, TypeError) as err:
        raise DebertaXfError(f"--compare-to {path}: key 'metadata' is not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DebertaXfError(f"--compare-to {path}: metadata field 'format' is not {FORMAT!r}")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise DebertaXfError(f"--compare-to {path}: metadata field 'schema_version' is "
                             f"{meta.get('schema_version')!r}; this version reads {SCHEMA_VERSION}")
    for field in ("task", "dtype", "config", "frameworks"):
        if field not in meta:
            raise DebertaXfError(f"--compare-to {path}: metadata field {field!r} is missing")
    inputs = {k.split(".", 1)[1]: data[k] for k in files if k.startswith("inputs.")}
    for key in ("input_ids", "attention_mask"):
        if key not in inputs:
            raise DebertaXfError(f"--compare-to {path}: key 'inputs.{key}' is missing")
    frameworks = []
    for framework, info in meta["frameworks"].items():
        prefix = f"outputs.{framework}."
        outputs = {k[len(prefix):]: data[k] for k in files if k.startswith(prefix)}
        if not outputs:
            raise DebertaXfError(f"--compare-to {path}: metadata lists framework {framework!r} but there are no "
                                 f"'{prefix}*' keys")
        missing = [f for f in ("device", "device_name", "versions", "weights_file") if f not in info]
        if missing:
            raise DebertaXfError(f"--compare-to {path}: metadata field 'frameworks.{framework}.{missing[0]}' is "
                                 f"missing")
        frameworks.append(RecordedFramework(framework, info["device"], info["device_name"], info["versions"],
                                            info["weights_file"], outputs))
    if not frameworks:
        raise DebertaXfError(f"--compare-to {path}: metadata field 'frameworks' is empty")
    return Recording(path, meta, inputs, frameworks)


def config_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Config fields that change the computation and differ between the recording and this checkpoint."""
    keys = (set(recorded) | set(current)) - _META_KEYS
    return [f"{k}: recorded {recorded.get(k)!r}, now {current.get(k)!r}" for k in sorted(keys)
            if recorded.get(k) != current.get(k)]
