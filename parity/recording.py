"""Recorded runs (``--save-outputs F.npz`` / ``--compare-to F.npz``): parity across machines.

A recording is a plain ``.npz`` (read with ``allow_pickle=False``):

- ``inputs.<name>``                 the model inputs every framework ran on (``input_ids``, ``attention_mask``, ...)
- ``labels.<name>``                 with ``--backward`` / ``--train-steps``: the labels of the loss (``labels``,
  ``start_positions`` + ``end_positions``, ``hidden_target``; integers or floats)
- ``outputs.<framework>.<output>``  float32 outputs of each framework that ran (``outputs.torch.hidden_states.0``)
- ``metadata``                      a JSON string: ``format``, ``schema_version``, ``checkpoint``, ``config``,
  ``task``, ``dtype``, ``inputs_source``, ``environment``, ``training`` (null, or what ``--backward`` /
  ``--train-steps`` ran: ``backward``, ``train_steps``, ``optimizer``, ``lr``, ``batch_size``) and, per framework,
  ``device``, ``device_name``, ``versions`` and ``weights_file``.

A ``--backward`` recording also holds each framework's ``loss`` and ``grad/<canonical name>`` outputs, a
``--train-steps`` one its ``train_loss.<step>`` and ``weights/<canonical name>`` (the final weights).

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
    labels: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def task(self) -> str:
        return self.metadata["task"]

    @property
    def dtype(self) -> str:
        return self.metadata["dtype"]

    @property
    def training(self) -> dict[str, Any] | None:
        """What ``--backward`` / ``--train-steps`` recorded (None: forward outputs only)."""
        return self.metadata.get("training")


def save_recording(path: str, metadata: dict[str, Any], inputs: dict[str, np.ndarray],
                   outputs: dict[str, dict[str, np.ndarray]], labels: dict[str, np.ndarray] | None = None) -> None:
    """Write the recording atomically (a temporary name, renamed when complete)."""
    arrays: dict[str, np.ndarray] = {f"inputs.{k}": np.asarray(v) for k, v in inputs.items()}
    arrays.update({f"labels.{k}": np.asarray(v) for k, v in (labels or {}).items()})
    for framework, flat in outputs.items():
        for name, value in flat.items():
            arrays[f"outputs.{framework}.{name}"] = np.asarray(value, dtype=np.float32)
    meta = {"format": FORMAT, "schema_version": SCHEMA_VERSION, **metadata}
    arrays["metadata"] = np.asarray(json.dumps(meta, sort_keys=True))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


MAX_RECORDING_BYTES = 4 * 2**30    # all members together, as stored inflated: a bigger recording is refused
MAX_METADATA_BYTES = 16 * 2**20
_INPUT_KINDS = "iub"                # inputs are token ids and masks
_LABEL_KINDS = "iubf"               # class ids, positions, or float targets (regression, multi-label, hidden_target)
_OUTPUT_KINDS = "f"
_KIND_NAMES = {_INPUT_KINDS: "integers", _LABEL_KINDS: "numbers", _OUTPUT_KINDS: "floats"}
_TRAINING_FIELDS = {"backward": bool, "train_steps": int, "optimizer": str, "lr": (int, float),
                    "batch_size": (int, type(None))}


def _fail(path: str, what: str) -> DebertaXfError:
    return DebertaXfError(f"--compare-to {path}: {what}")


def _read_member(path: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo, kinds: str) -> np.ndarray:
    """One ``.npy`` member, its header checked (dtype kind, shape, size) before the array is allocated."""
    key = info.filename[:-4]
    with archive.open(info) as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"npy version {version}")
        except (ValueError, OSError, EOFError, SyntaxError, TypeError) as err:
            raise _fail(path, f"key {key!r} is not a .npy array ({str(err)[:200]})") from None
        dtype = np.dtype(dtype)
        if dtype.hasobject or dtype.names is not None or dtype.shape != () or dtype.kind not in kinds:
            raise _fail(path, f"key {key!r} has dtype {dtype}; expected "
                              f"{_KIND_NAMES.get(kinds, 'a string')}")
        count = 1
        for d in shape:
            count *= int(d)
        if count * dtype.itemsize > info.file_size:
            raise _fail(path, f"key {key!r} declares {list(shape)} {dtype} ({count * dtype.itemsize} bytes) but its "
                              f"member holds {info.file_size} bytes")
        try:
            return np.lib.format.read_array(archive.open(info), allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise _fail(path, f"key {key!r} cannot be read ({str(err)[:200]})") from None


def _check_metadata(path: str, meta: Any) -> dict[str, Any]:
    if not isinstance(meta, dict):
        raise _fail(path, f"metadata is a {type(meta).__name__}, not an object")
    if meta.get("format") != FORMAT:
        raise _fail(path, f"metadata field 'format' is not {FORMAT!r}")
    if meta.get("schema_version") != SCHEMA_VERSION or isinstance(meta.get("schema_version"), bool):
        raise _fail(path, f"metadata field 'schema_version' is {str(meta.get('schema_version'))[:50]}; this version "
                          f"reads {SCHEMA_VERSION}")
    for field, kind in (("task", str), ("dtype", str), ("config", dict), ("frameworks", dict)):
        if field not in meta:
            raise _fail(path, f"metadata field {field!r} is missing")
        if not isinstance(meta[field], kind):
            raise _fail(path, f"metadata field {field!r} is a {type(meta[field]).__name__}, expected "
                              f"{'a string' if kind is str else 'an object'}")
    for field in ("inputs", "environment", "training"):
        if meta.get(field) is not None and not isinstance(meta[field], dict):
            raise _fail(path, f"metadata field {field!r} is a {type(meta[field]).__name__}, expected an object")
    if meta.get("training") is not None:
        for field, kind in _TRAINING_FIELDS.items():
            value = meta["training"].get(field)
            if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
                raise _fail(path, f"metadata field 'training.{field}' is {str(value)[:50]}; expected "
                                  f"{'true or false' if kind is bool else 'a string' if kind is str else 'a number'}")
    for framework, info in meta["frameworks"].items():
        if not isinstance(info, dict):
            raise _fail(path, f"metadata field 'frameworks.{framework}' is a {type(info).__name__}, expected an "
                              f"object")
        for field in ("device", "device_name", "versions", "weights_file"):
            if field not in info:
                raise _fail(path, f"metadata field 'frameworks.{framework}.{field}' is missing")
            want = dict if field == "versions" else str
            if not isinstance(info[field], want):
                raise _fail(path, f"metadata field 'frameworks.{framework}.{field}' is a "
                                  f"{type(info[field]).__name__}, expected {'an object' if want is dict else 'a string'}")
    return meta


def load_recording(path: str) -> Recording:
    """Read and validate a recording; every problem is a DebertaXfError naming the file and the key.

    Read member by member: each member's ``.npy`` header is checked (integer inputs, float outputs, a string
    ``metadata``; a declared size the member holds) before its array is allocated, the members together may hold
    at most MAX_RECORDING_BYTES, and nothing is unpickled."""
    if not os.path.isfile(path):
        raise _fail(path, "no such file")
    try:
        archive = zipfile.ZipFile(path)
        members = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError) as err:
        raise _fail(path, f"not a .npz recording ({str(err)[:200]})") from None
    with archive:
        by_key: dict[str, zipfile.ZipInfo] = {}
        total = 0
        for info in members:
            if not info.filename.endswith(".npy") or info.filename[:-4] in by_key:
                raise _fail(path, f"member {info.filename[:100]!r} is not one .npy array of a recording")
            if info.flag_bits & 0x1 or info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise _fail(path, f"member {info.filename[:100]!r} is encrypted or compressed with method "
                                  f"{info.compress_type}")
            total += info.file_size
            if total > MAX_RECORDING_BYTES:
                raise _fail(path, f"the arrays inflate to more than {MAX_RECORDING_BYTES} bytes; refused (a zip bomb "
                                  f"or not a recording)")
            by_key[info.filename[:-4]] = info
        if "metadata" not in by_key:
            raise _fail(path, "key 'metadata' is missing; not written by --save-outputs")
        if by_key["metadata"].file_size > MAX_METADATA_BYTES:
            raise _fail(path, f"key 'metadata' holds {by_key['metadata'].file_size} bytes (at most "
                              f"{MAX_METADATA_BYTES})")
        try:
            raw = _read_member(path, archive, by_key["metadata"], "U")
            if raw.shape != ():
                raise _fail(path, f"key 'metadata' has shape {list(raw.shape)}; expected one string")
            meta = json.loads(str(raw))
        except RecursionError:
            raise _fail(path, "key 'metadata' is nested too deeply") from None
        except (ValueError, TypeError) as err:
            if isinstance(err, DebertaXfError):
                raise
            raise _fail(path, f"key 'metadata' is not valid JSON ({str(err)[:200]})") from None
        meta = _check_metadata(path, meta)
        inputs = {k.split(".", 1)[1]: _read_member(path, archive, info, _INPUT_KINDS)
                  for k, info in by_key.items() if k.startswith("inputs.")}
        for key in ("input_ids", "attention_mask"):
            if key not in inputs:
                raise _fail(path, f"key 'inputs.{key}' is missing")
        labels = {k.split(".", 1)[1]: _read_member(path, archive, info, _LABEL_KINDS)
                  for k, info in by_key.items() if k.startswith("labels.")}
        if meta.get("training") is not None and not labels:
            raise _fail(path, "metadata field 'training' is set but there are no 'labels.*' keys")
        frameworks = []
        for framework, info in meta["frameworks"].items():
            prefix = f"outputs.{framework}."
            outputs = {k[len(prefix):]: _read_member(path, archive, member, _OUTPUT_KINDS)
                       for k, member in by_key.items() if k.startswith(prefix)}
            if not outputs:
                raise _fail(path, f"metadata lists framework {framework!r} but there are no '{prefix}*' keys")
            frameworks.append(RecordedFramework(framework, info["device"], info["device_name"], info["versions"],
                                                info["weights_file"], outputs))
    if not frameworks:
        raise _fail(path, "metadata field 'frameworks' is empty")
    return Recording(path, meta, inputs, frameworks, labels)


def config_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Config fields that change the computation and differ between the recording and this checkpoint."""
    keys = (set(recorded) | set(current)) - _META_KEYS
    return [f"{k}: recorded {recorded.get(k)!r}, now {current.get(k)!r}" for k in sorted(keys)
            if recorded.get(k) != current.get(k)]
