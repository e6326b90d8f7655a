"""``tf_model.h5``: the Keras-2 (tf-keras) weights file of the reference's TF classes, read and written with h5py.

Layout, as ``TFDebertaV2*.save_pretrained`` (transformers 4.x) writes it and ``from_pretrained`` reads it:

- root attributes ``layer_names`` (the model's top-level layers: ``deberta``, ``cls``, ``pooler``, ``cls_dropout``,
  ``classifier``, ``dropout``, ``qa_outputs``), ``backend``, ``keras_version``;
- one group per top-level layer with a ``weight_names`` attribute (split into ``weight_names0``, ``weight_names1``,
  ... when it exceeds the 64 KiB HDF5 object-header limit), listing full variable names such as
  ``tf_deberta_v2_for_masked_lm/deberta/encoder/layer_._0/attention/self/query_proj/kernel:0``; each name is also
  the dataset's path inside the group. The first level is the Keras model's name (dropped on read, as
  transformers does); weight-less layers (dropouts) have an empty list; the MLM head's group also lists the
  embedding layer's variables (the reference's head holds that layer; stored here as hard links);
- a ``top_level_model_weights`` group with an empty ``weight_names``.

Names and layouts (reference-deberta-v2 §1.9), canonical <-> file:
  ``encoder.layer.{i}`` <-> ``encoder/layer_._{i}``; ``weight`` <-> ``kernel`` (2-D, transposed [in, out]; the conv
  kernel [out, in/groups, k] <-> [k, in/groups, out]), ``gamma``/``beta`` (LayerNorm), ``embeddings`` (position
  and token-type tables), ``weight`` (word embeddings), ``rel_embeddings.weight`` (a dotted variable name);
  ``pos_key_proj`` / ``pos_query_proj`` <-> ``pos_proj`` / ``pos_q_proj``. The MLM head is written in the
  reference TF's legacy layout ``cls/predictions/...`` (``lm_predictions.lm_head.*`` is renamed; the schema maps
  it back on load). A base model's names get the ``deberta/`` level, as the reference TF base model has.

Configs the reference TF cannot represent are still written faithfully (it would then fail to load them):
``conv_groups > 1`` (the reference TF ignores groups) and ``embedding_size != hidden_size`` with absolute
positions (the reference TF sizes that table by hidden_size).
"""

from __future__ import annotations

import abc
import contextlib
from typing import Iterator, Mapping

import numpy as np

from deberta_xf.formats import BFLOAT16, Producer, TensorInfo, TensorReader, announce, check_dtype, check_shape, produce
from deberta_xf import schema
from deberta_xf.errors import CheckpointError
from deberta_xf.fileio import atomic_path
from deberta_xf.tasks import TASK_TABLE, check_task, infer_task

HDF5_OBJECT_HEADER_LIMIT = 64512  # bytes; tf-keras splits larger attributes into name0, name1, ...
KERAS_VERSION = "2.21.0"  # the tf-keras layout this file follows

_MODULE_TO_TF = {"pos_key_proj": "pos_proj", "pos_query_proj": "pos_q_proj"}
_MODULE_FROM_TF = {v: k for k, v in _MODULE_TO_TF.items()}
_LEAF_FROM_TF = {"kernel": "weight", "gamma": "weight", "embeddings": "weight", "weight": "weight", "beta": "bias",
                 "bias": "bias"}
_LM_PREDICTIONS = "lm_predictions.lm_head."


# ---------------------------------------------------------------------------------------------------------------
# Names
def tf_weight_path(name: str) -> str:
    """Canonical name -> the reference TF's variable path below the model name (no ``:0``)."""
    if name.startswith(_LM_PREDICTIONS):  # the reference TF has only the legacy head layout
        rest = name[len(_LM_PREDICTIONS):]
        name = "cls.predictions." + (rest if rest == "bias" else "transform." + rest)
    if name.split(".", 1)[0] in ("embeddings", "encoder"):
        name = schema.BACKBONE_PREFIX + name
    if name.endswith("encoder.rel_embeddings.weight"):
        return name[: -len(".rel_embeddings.weight")].replace(".", "/") + "/rel_embeddings.weight"
    module, leaf = schema.module_path(name)
    parts = module.split(".")
    out = []
    for i, part in enumerate(parts):
        if part.isdigit() and i > 0 and parts[i - 1] == "layer":
            out[-1] = f"layer_._{part}"
        else:
            out.append(_MODULE_TO_TF.get(part, part))
    if module.endswith("word_embeddings"):
        tf_leaf = "weight"
    else:
        try:
            tf_leaf = schema.framework_leaf(name, "tf")
        except KeyError:
            raise CheckpointError(f"tensor {name!r} is not a DeBERTa-v2 parameter; cannot name it in tf_model.h5") \
                from None
    return "/".join(out + [tf_leaf])


def canonical_name(weight_name: str) -> str:
    """A reference TF variable name (``model/deberta/.../kernel:0``) -> canonical name.

    Names that do not follow the reference's scheme are returned as ``/``-joined paths (they are then reported
    as unexpected by the schema, with every missing DeBERTa tensor)."""
    name = weight_name[:-2] if weight_name.endswith(":0") else weight_name
    parts = [p for p in name.split("/") if p][1:]  # drop the model name
    if not parts:
        return name
    leaf = parts[-1]
    if leaf == "rel_embeddings.weight":
        return ".".join(parts)
    if leaf not in _LEAF_FROM_TF or len(parts) < 2:
        return "/".join(parts)
    module = [_MODULE_FROM_TF.get(p, p).replace("_._", ".") for p in parts[:-1]]
    return ".".join(module + [_LEAF_FROM_TF[leaf]])


def _canonical_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    try:
        return schema.framework_shape(name, shape, "tf")
    except KeyError:  # not a canonical name: leave as stored
        return tuple(shape)


# ---------------------------------------------------------------------------------------------------------------
# Attributes (tf-keras hdf5_format.save/load_attributes_to/from_hdf5_group)
def save_attributes(group, name: str, data: list[bytes]) -> None:
    """Store a list of names, split into ``name0``, ``name1``, ... above the HDF5 object-header limit."""
    data_npy = np.asarray(data)
    num_chunks = 1
    chunks = np.array_split(data_npy, num_chunks)
    while any(chunk.nbytes > HDF5_OBJECT_HEADER_LIMIT for chunk in chunks):
        num_chunks += 1
        chunks = np.array_split(data_npy, num_chunks)
    if num_chunks > 1:
        for i, chunk in enumerate(chunks):
            group.attrs[f"{name}{i}"] = chunk
    else:
        group.attrs[name] = data


def load_attributes(group, name: str) -> list[str] | None:
    """The list stored by :func:`save_attributes` (None when absent)."""
    def decode(values) -> list[str]:
        return [v.decode("utf8") if hasattr(v, "decode") else str(v) for v in values]

    if name in group.attrs:
        return decode(group.attrs[name])
    if f"{name}0" not in group.attrs:
        return None
    data, i = [], 0
    while f"{name}{i}" in group.attrs:
        data.extend(decode(group.attrs[f"{name}{i}"]))
        i += 1
    return data


# ---------------------------------------------------------------------------------------------------------------
def _open_h5(path: str, mode: str = "r"):
    import h5py

    try:
        return h5py.File(path, mode)
    except OSError as err:
        raise CheckpointError(f"{path}: not a readable HDF5 file ({err})") from None


@contextlib.contextmanager
def create_h5(path: str) -> Iterator:
    """A new HDF5 file for writing, through a Python file object: a write that fails (a full disk, a file-size
    limit) raises that OSError here, where HDF5 writing to the path itself would fail inside its C library (an
    unrelated RuntimeError, or a crash on some errors)."""
    import h5py

    with open(path, "w+b") as raw:
        with h5py.File(raw, "w") as f:
            yield f


MAX_LINK_DEPTH = 64


MAX_LINKS = 100_000


def scan_links(h5file, path: str) -> list[tuple[str, object]]:
    """Every link of the file reached from its root, as ``[(path in file, h5py link)]``, after refusing every link
    a reader must never follow: external links (to any file, existing or not), soft links to groups, dangling or
    cyclic soft links, user-defined links. What remains are hard links and soft links to datasets of this file."""
    import h5py

    from h5py import h5l

    links: list[tuple[str, object]] = []

    def visit(raw: bytes, info) -> None:
        name = raw.decode("utf-8", "surrogateescape")
        if len(links) >= MAX_LINKS:
            raise CheckpointError(f"{path}: more than {MAX_LINKS} objects; not a weights file of this model")
        if info.type == h5l.TYPE_HARD:
            links.append((name, h5py.HardLink()))
            return None
        if info.type == h5l.TYPE_SOFT:
            target = h5file.id.links.get_val(raw).decode("utf-8", "surrogateescape")
            absolute = target if target.startswith("/") else "/" + "/".join(name.split("/")[:-1] + [target])
            node = _hard_path(h5file, absolute)
            if node is None:
                raise CheckpointError(f"{path}: {name!r} is a soft link to {target!r}, which is dangling, cyclic "
                                      f"or reached through another link; refused")
            if not isinstance(node, h5py.Dataset):
                raise CheckpointError(f"{path}: {name!r} is a soft link to a group ({target!r}); refused")
            links.append((name, h5py.SoftLink(target)))
            return None
        if info.type == h5l.TYPE_EXTERNAL:
            filename, target = (x.decode("utf-8", "replace") for x in h5file.id.links.get_val(raw))
            raise CheckpointError(f"{path}: {name!r} is an external link to {filename}:{target}; links to other "
                                  f"files are refused, never followed")
        raise CheckpointError(f"{path}: {name!r} is a user-defined link (type {info.type}); refused")

    failure: list[CheckpointError] = []

    def guarded(raw: bytes, info):
        try:
            return visit(raw, info)
        except CheckpointError as err:  # an exception raised inside the HDF5 visitor is mangled: stop, raise after
            failure.append(err)
            return 1

    h5file.id.links.visit(guarded, info=True)
    if failure:
        raise failure[0]
    return links


def _hard_path(h5file, target: str):
    """The object at an absolute path reached by hard links only; None if there is none."""
    import h5py

    node = h5file
    parts = target.strip("/").split("/")
    if len(parts) > MAX_LINK_DEPTH:
        return None
    for part in parts:
        if not isinstance(node, h5py.Group) or part in ("", ".", ".."):
            return None
        link = node.get(part, getlink=True)
        if not isinstance(link, h5py.HardLink):
            return None
        node = node[part]
    return node


def lookup(h5file, location: str, path: str, what: str):
    """The dataset at ``location`` of a file whose links :func:`scan_links` has checked."""
    import h5py

    parts = location.strip("/").split("/")
    if not location or any(p in ("", ".", "..") for p in parts):
        raise CheckpointError(f"{path}: {what}: invalid location {location!r} in the file")
    node = h5file.get(location)
    if node is None:
        raise CheckpointError(f"{path}: {what} is listed but not stored (nothing at {location!r})")
    if not isinstance(node, h5py.Dataset):
        raise CheckpointError(f"{path}: {what}: {location!r} is a group, not a dataset")
    return node


def _text_attr(path: str, obj, key: str, what: str) -> str | None:
    if key not in obj.attrs:
        return None
    value = obj.attrs[key]
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        raise CheckpointError(f"{path}: {what}: attribute {key!r} is {str(value)[:50]!r}, not a string")
    return value


def dataset_info(path: str, name: str, dataset, file_size: int) -> tuple[TensorInfo, np.dtype]:
    """(canonical-order shape not yet applied: the stored shape; the dtype handed out) and the stored dtype of a
    dataset, checked before any data is read: a plain numeric dtype (bfloat16 only as 2-byte data carrying
    ``attrs["dtype"] == "bfloat16"``), a simple shape, and a byte size the file can hold."""
    shape = dataset.shape
    if shape is None:
        raise CheckpointError(f"{path}: tensor {name!r} is an empty (null dataspace) dataset")
    shape = check_shape(path, name, tuple(shape))
    stored = np.dtype(dataset.dtype)
    marker = _text_attr(path, dataset, "dtype", f"tensor {name!r}")
    if marker == "bfloat16":
        if stored.itemsize != 2 or stored.kind not in "Vui" or stored.names is not None or stored.shape != ():
            raise CheckpointError(f"{path}: tensor {name!r} says it is bfloat16 (attribute dtype) but holds "
                                  f"{stored} data; expected 2-byte elements")
        dtype = BFLOAT16
    elif marker is not None and marker != stored.name:
        raise CheckpointError(f"{path}: tensor {name!r} has a dtype attribute {marker[:50]!r} that does not "
                              f"match its {stored} data")
    else:
        if stored.kind in "SUOVMmc" or stored.names is not None or stored.shape != ():
            raise CheckpointError(f"{path}: tensor {name!r} holds {stored} data (strings, compound, opaque, "
                                  f"complex or dates); expected float numbers")
        dtype = stored.newbyteorder("<") if stored.itemsize > 1 else stored
    info = TensorInfo(shape, check_dtype(path, name, dtype))
    plist = dataset.id.get_create_plist()
    limit = file_size if plist.get_nfilters() == 0 else 1100 * max(dataset.id.get_storage_size(), 1)
    if info.nbytes > limit:
        raise CheckpointError(f"{path}: tensor {name!r} of shape {list(shape)} {dtype} needs {info.nbytes} "
                              f"bytes, more than the file holds ({limit})")
    return info, stored


def read_dataset(dataset, info: TensorInfo | None = None) -> np.ndarray:
    """A dataset as numpy; bfloat16 is stored as 2-byte opaque data with ``attrs["dtype"] == "bfloat16"`` (the
    Keras 3 convention); big-endian data comes back little-endian (``info``: what the reader announced)."""
    value = np.asarray(dataset[()])
    if info is not None:
        if info.dtype == BFLOAT16:
            value = np.ascontiguousarray(value).view(np.uint8).view(BFLOAT16).reshape(value.shape)
        elif value.dtype != info.dtype:
            value = value.astype(info.dtype)
        if tuple(value.shape) != tuple(dataset.shape) or value.dtype != info.dtype:
            raise CheckpointError(f"dataset {dataset.name!r} read as {value.dtype}{list(value.shape)}, announced "
                                  f"as {info.dtype}{list(info.shape)}")
        return value
    if dataset.attrs.get("dtype") == "bfloat16":
        value = value.view(BFLOAT16)
    return value


def write_dataset(group, key: str, array: np.ndarray):
    array = schema.contiguous(array)  # layout conversions are views until here
    if array.dtype == BFLOAT16:
        dataset = group.create_dataset(key, data=array)
        dataset.attrs["dtype"] = "bfloat16"
        return dataset
    return group.create_dataset(key, data=array)


class H5Reader(TensorReader):
    """An HDF5 weights file read lazily: a subclass's ``_open`` indexes its datasets into ``_entries`` (canonical
    name -> (location, stored info)) and ``_datasets``; reads convert the TF layout to the canonical one."""

    def __init__(self, path: str):
        super().__init__(path)
        self._file = _open_h5(path)
        self._entries: dict[str, tuple[str, TensorInfo]] = {}
        self._datasets: dict[str, object] = {}
        try:
            self._open(path)
        except BaseException:
            self._file.close()
            raise

    @abc.abstractmethod
    def _open(self, path: str) -> None:
        """Index the file's datasets into ``_entries`` and ``_datasets`` (validating them)."""

    def infos(self) -> dict[str, TensorInfo]:
        return {k: v[1] for k, v in self._entries.items()}

    def read(self, name: str) -> np.ndarray:
        if name not in self._entries:
            raise CheckpointError(f"{self.path}: no tensor named {name!r}")
        location, info = self._entries[name]
        dataset = self._datasets[name]
        array = read_dataset(dataset, TensorInfo(tuple(dataset.shape), info.dtype))
        try:
            return schema.from_framework(name, array, "tf")
        except KeyError:
            return array

    def close(self) -> None:
        if self._file:
            self._file.close()


class TFH5Reader(H5Reader):
    """A reference ``tf_model.h5`` with canonical names and layouts, read lazily."""

    format = "tf_h5"

    def _open(self, path: str) -> None:
        import os

        file_size = os.path.getsize(path)
        layer_names = load_attributes(self._file, "layer_names")
        if layer_names is None:
            hint = (" (it looks like a Keras 3 weights file: name it *.weights.h5)"
                    if "vars" in self._file else "")
            raise CheckpointError(f"{path}: not a Keras-2 / transformers TF weights file: no 'layer_names' "
                                  f"attribute{hint}")
        import h5py

        links = scan_links(self._file, path)
        listed: set[str] = set()
        for layer in layer_names:
            link = self._file.get(layer, getlink=True) if layer and "/" not in layer else None
            if link is None:
                raise CheckpointError(f"{path}: layer {layer!r} is listed in 'layer_names' but has no group")
            if not isinstance(link, h5py.HardLink) or not isinstance(self._file[layer], h5py.Group):
                raise CheckpointError(f"{path}: layer {layer!r} is not a group of this file (a link or a dataset); "
                                      f"refused")
            group = self._file[layer]
            weight_names = load_attributes(group, "weight_names") or []
            for weight_name in weight_names:
                location = f"{layer}/{weight_name}"
                dataset = lookup(self._file, location, path, f"variable {weight_name!r} of layer {layer!r}")
                listed.add(location)
                name = canonical_name(weight_name)
                if name in self._entries:  # the MLM head's group repeats the embedding layer's variables
                    continue
                stored, _ = dataset_info(path, name, dataset, file_size)
                info = TensorInfo(_canonical_shape(name, stored.shape), stored.dtype)
                self._entries[name] = (location, info)
                self._datasets[name] = dataset
        # A dataset no layer lists is not ignored silently: it is a tensor under its path in the file, which the
        # schema then reports as unexpected.
        for location, _ in links:
            if location in listed or location in self._entries:
                continue
            dataset = self._file[location]
            if isinstance(dataset, h5py.Dataset):
                stored, _ = dataset_info(path, location, dataset, file_size)
                self._entries[location] = (location, stored)
                self._datasets[location] = dataset

    def metadata(self) -> dict[str, str]:
        return {k: str(v) for k, v in self._file.attrs.items() if k in ("backend", "keras_version")}


def open_reader(path: str) -> TensorReader:
    return TFH5Reader(path)


def write(path: str, infos: Mapping[str, TensorInfo], get: Producer, task: str | None = None,
          progress=None, **_: object) -> None:
    """Stream tensors (canonical names and layouts) into a reference-layout ``tf_model.h5``, atomically.

    ``task`` picks the reference class whose layout is written (inferred from the names when omitted).
    """
    layout = TASK_TABLE[check_task(task or infer_task({n: i.shape for n, i in infos.items()})[0])]
    model_name, layer_names = layout.keras_name, layout.keras_layers
    by_layer: dict[str, list[tuple[str, str]]] = {layer: [] for layer in layer_names}  # layer -> [(var, name)]
    for name in infos:
        var = f"{model_name}/{tf_weight_path(name)}:0"
        layer = var.split("/")[1]
        if layer not in by_layer:
            raise CheckpointError(f"{path}: tensor {name!r} does not belong to the {task} model's layers "
                                  f"({', '.join(layer_names)})")
        by_layer[layer].append((var, name))
    # The reference's MLM head owns the embedding layer too: its group lists those variables as well.
    shared = [var for var, _ in by_layer["deberta"] if var.split("/")[2] == "embeddings"] if "cls" in by_layer \
        else []

    names = list(infos)
    order = progress(names) if progress else names
    with atomic_path(path) as tmp:
        with create_h5(tmp) as f:
            save_attributes(f, "layer_names", [n.encode("utf8") for n in layer_names])
            f.attrs["backend"] = b"tensorflow"
            f.attrs["keras_version"] = KERAS_VERSION.encode("utf8")
            groups = {}
            for layer in layer_names:
                group = f.create_group(layer)
                weight_names = [var for var, _ in by_layer[layer]] + (shared if layer == "cls" else [])
                save_attributes(group, "weight_names", [w.encode("utf8") for w in weight_names])
                groups[layer] = group
            where = {name: (layer, var) for layer, entries in by_layer.items() for var, name in entries}
            announce(get, names)
            for name in order:
                array = produce(get, name, infos, path)
                layer, var = where[name]
                write_dataset(groups[layer], var, schema.to_framework(name, array, "tf"))
            for var in shared:
                groups["cls"][var] = groups["deberta"][var]  # hard link: one copy of the data
            top = f.create_group("top_level_model_weights")
            save_attributes(top, "weight_names", [])
