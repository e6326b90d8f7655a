"""``model.weights.h5``: Keras 3 weights files of our TF implementation, read and written with plain h5py.

Keras 3 (``keras.src.saving.saving_lib``) stores each layer's *own* variables as datasets ``<path>/vars/<i>``
(``i`` in creation order) and gives every layer a ``<path>/vars`` group whose ``name`` attribute is the layer's
name. ``<path>`` is the chain of Python attribute names from the model down to the layer, visited in sorted
order, where a list item is named after its class (``tf_deberta_v2_layer``, ``tf_deberta_v2_layer_1``, ...) and
a layer first reached through ``keras.Model.layers`` is stored under ``layers/<snake_case class name>`` (the
property ``layers`` sorts before the attributes ``lm_predictions``, ``pooler`` and ``qa_outputs``).

For ``deberta_xf.tf.modeling_tf_deberta_v2`` (whose attributes are the canonical module names) this makes the path a
fixed function of the canonical name, which this module implements without Keras:

1. the canonical module path, ``.`` -> ``/``;
2. ``layer.{i}`` -> ``layer/tf_deberta_v2_layer`` for ``i == 0``, else ``layer/tf_deberta_v2_layer_{i}``;
   ``output`` -> ``output_`` (``output`` is a reserved ``keras.Layer`` property, so the model holds those
   sublayers as ``output_``);
3. the heads whose attribute sorts after ``layers``: ``pooler`` -> ``layers/tf_context_pooler``,
   ``qa_outputs`` -> ``layers/dense``, ``lm_predictions`` -> ``layers/tf_deberta_v2_only_mlm_head``;
4. the leaf -> ``vars/<i>``: ``weight`` -> 0 and ``bias`` -> 1 (kernel/bias, gamma/beta), except for owners
   with one variable: embedding tables (``weight`` -> 0) and the MLM heads' ``bias`` (``cls.predictions``,
   ``lm_predictions.lm_head``: ``bias`` -> 0). Arrays are in the Keras layout (``deberta_xf.schema.LAYOUT``, "tf").

Example: ``deberta.encoder.layer.3.attention.self.query_proj.weight`` <->
``deberta/encoder/layer/tf_deberta_v2_layer_3/attention/self/query_proj/vars/0`` (the kernel, [in, out]).
The tests check this against Keras's own ``save_weights`` / ``load_weights`` for every task.
bfloat16 datasets carry ``attrs["dtype"] = "bfloat16"``, as Keras writes them.
"""

from __future__ import annotations

import re
from typing import Mapping

from deberta_xf.formats import Producer, TensorInfo, TensorReader, announce, produce
from deberta_xf.formats.tf_h5 import H5Reader, create_h5, dataset_info, scan_links, write_dataset
from deberta_xf import schema
from deberta_xf.errors import CheckpointError
from deberta_xf.fileio import atomic_path
from deberta_xf.tasks import TASK_TABLE, check_task, infer_task

LAYER_ITEM = "tf_deberta_v2_layer"  # snake_case of TFDebertaV2Layer, the class of encoder.layer items
# top-level head attribute -> where Keras stores it (under keras.Model.layers, by class name)
HEADS_UNDER_LAYERS = {
    "pooler": "layers/tf_context_pooler",
    "qa_outputs": "layers/dense",
    "lm_predictions": "layers/tf_deberta_v2_only_mlm_head",
}
_HEADS_FROM_FILE = {v: k for k, v in HEADS_UNDER_LAYERS.items()}
_BIAS_ONLY_OWNERS = ("cls.predictions", "lm_predictions.lm_head")
# the Keras model names of our TF classes (the root "vars" group's name)
RESERVED_OUTPUT = "output_"  # the attribute holding the canonical `output` sublayers
_ITEM = re.compile(rf"^{LAYER_ITEM}(?:_(\d+))?$")


def _owner_variables(module: str) -> tuple[str, ...]:
    """The canonical leaves of a layer's own variables, in creation (= ``vars/<i>``) order."""
    last = module.rsplit(".", 1)[-1]
    if module in _BIAS_ONLY_OWNERS:
        return ("bias",)
    if last.endswith("embeddings"):
        return ("weight",)
    return ("weight", "bias")


def _file_components(module: str) -> list[tuple[str, str | None]]:
    """Canonical module path -> [(file component, layer name or None for containers)]."""
    parts = module.split(".") if module else []
    out: list[tuple[str, str | None]] = []
    for i, part in enumerate(parts):
        if part.isdigit() and i > 0 and parts[i - 1] == "layer":
            out[-1] = ("layer", None)  # the list: a container, not a layer
            out.append((LAYER_ITEM if part == "0" else f"{LAYER_ITEM}_{part}", part))
        elif part == "output":
            out.append((RESERVED_OUTPUT, part))
        elif i == 0 and part in HEADS_UNDER_LAYERS:
            container, item = HEADS_UNDER_LAYERS[part].split("/")
            out += [(container, None), (item, part)]
        else:
            out.append((part, part))
    return out


def keras_location(name: str) -> tuple[str, int]:
    """Canonical name -> (group path of the owning layer, index of the variable in ``vars``)."""
    module, leaf = schema.module_path(name)
    owned = _owner_variables(module)
    if leaf not in owned:
        raise CheckpointError(f"tensor {name!r} is not a DeBERTa-v2 parameter; cannot place it in model.weights.h5")
    return "/".join(c for c, _ in _file_components(module)), owned.index(leaf)


def canonical_name(dataset_path: str) -> str:
    """``deberta/encoder/layer/tf_deberta_v2_layer_3/.../vars/0`` -> canonical name (unknown paths unchanged)."""
    parts = dataset_path.strip("/").split("/")
    if len(parts) < 3 or parts[-2] != "vars" or not parts[-1].isdigit():
        return dataset_path
    index, parts = int(parts[-1]), parts[:-2]
    if len(parts) >= 2 and f"{parts[0]}/{parts[1]}" in _HEADS_FROM_FILE:
        parts = [_HEADS_FROM_FILE[f"{parts[0]}/{parts[1]}"]] + parts[2:]
    module = []
    for i, part in enumerate(parts):
        item = _ITEM.match(part)
        if item and i > 0 and parts[i - 1] == "layer":
            module.append(item.group(1) or "0")
        elif part == RESERVED_OUTPUT:
            module.append("output")
        else:
            module.append(part)
    module_name = ".".join(module)
    owned = _owner_variables(module_name)
    if index >= len(owned):
        return dataset_path
    return f"{module_name}.{owned[index]}"


def _canonical_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    try:
        return schema.framework_shape(name, shape, "tf")
    except KeyError:
        return tuple(shape)


class KerasH5Reader(H5Reader):
    """A Keras 3 ``model.weights.h5`` of our TF model, with canonical names and layouts, read lazily."""

    format = "keras_h5"

    def _open(self, path: str) -> None:
        import os

        import h5py

        if "layer_names" in self._file.attrs or "layer_names0" in self._file.attrs:
            raise CheckpointError(f"{path}: this is a Keras-2 / transformers TF weights file (it has 'layer_names'), "
                                  "not a Keras 3 .weights.h5: name it tf_model.h5")
        file_size = os.path.getsize(path)
        for location, link in scan_links(self._file, path):  # refuses external, dangling and group soft links
            dataset = self._file[location]
            if not isinstance(dataset, h5py.Dataset):
                continue
            name = canonical_name(location)
            if name in self._entries:
                raise CheckpointError(f"{path}: {location!r} and {self._entries[name][0]!r} both stand for "
                                      f"tensor {name!r}")
            stored, _ = dataset_info(path, name, dataset, file_size)
            self._entries[name] = (location, TensorInfo(_canonical_shape(name, stored.shape), stored.dtype))
            self._datasets[name] = dataset
        if not self._entries:
            raise CheckpointError(f"{path}: no weights in this file (expected Keras 3 '<layer>/vars/<i>' datasets)")


def open_reader(path: str) -> TensorReader:
    return KerasH5Reader(path)


def write(path: str, infos: Mapping[str, TensorInfo], get: Producer, task: str | None = None, progress=None,
          **_: object) -> None:
    """Stream tensors (canonical names and layouts) into a Keras 3 ``model.weights.h5``, atomically.

    ``task`` only names the root layer (inferred from the names when omitted)."""
    task = check_task(task or infer_task({n: i.shape for n, i in infos.items()})[0])
    locations = {name: keras_location(name) for name in infos}
    names = list(infos)
    with atomic_path(path) as tmp:
        with create_h5(tmp) as f:
            f.create_group("vars").attrs["name"] = TASK_TABLE[task].keras_name
            for name in names:  # every layer on the way gets its "vars" group with the layer's name
                group_path = ""
                for component, layer_name in _file_components(schema.module_path(name)[0]):
                    group_path = f"{group_path}/{component}" if group_path else component
                    if layer_name is not None and f"{group_path}/vars" not in f:
                        f.create_group(f"{group_path}/vars").attrs["name"] = layer_name
            announce(get, names)
            for name in (progress(names) if progress else names):
                array = produce(get, name, infos, path)
                group_path, index = locations[name]
                write_dataset(f[f"{group_path}/vars" if group_path else "vars"], str(index),
                              schema.to_framework(name, array, "tf"))
