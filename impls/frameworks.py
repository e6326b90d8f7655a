"""The framework registry: everything that differs between PyTorch, TensorFlow and Flax outside the models.

One entry per framework (:data:`REGISTRY`, in :data:`FRAMEWORKS` order) says where its implementation lives, which
extra installs it, its class-name prefix, and how to check availability, pick a device, pin full-precision
matmuls (and restore what was there), load a checkpoint, run a forward pass and turn its outputs into numpy.
The factory (:func:`deberta_xf.create_model`), the converter's verification and the parity harness all go through
it, so a fourth framework would be one more entry here (plus its layout column in the schema's table).

Importing this module imports no framework: each step imports its framework when it runs.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import importlib
import importlib.util
import os
import time
from typing import Any, Iterator

import numpy as np

from deberta_xf.compare import flatten_outputs
from deberta_xf.errors import DebertaXfError


# AdamW hyper-parameters every framework's optimizer gets (torch.optim.AdamW's defaults, spelled out: keras and
# optax default differently, e.g. keras weight_decay=0.004, optax eps=1e-8 / weight_decay=1e-4).
ADAMW = {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01}
GRAD_PREFIX = "grad/"  # output name of a parameter's gradient: grad/<canonical name>
TRAIN_LOSS_PREFIX = "train_loss."  # train_loss.<step>: the loss before optimizer step <step>
WEIGHTS_PREFIX = "weights/"  # weights/<canonical name>: a parameter after the last optimizer step


@dataclasses.dataclass
class Device:
    kind: str          # "cpu" | "gpu": the label used in pair names (torch@gpu)
    name: str          # what the framework calls it: "cuda:0 (NVIDIA H100 80GB HBM3)", "/CPU:0", "TFRT_CPU_0"
    handle: Any = None  # the framework's device object / string


@dataclasses.dataclass
class Execution:
    outputs: dict[str, np.ndarray]
    weights_file: str
    device: Device
    seconds: float


class Framework(abc.ABC):
    name = ""                        # "torch" | "tf" | "flax": the --frameworks / --to / create_model name
    module = ""                      # the implementation module (its MODEL_CLASSES maps task -> class)
    class_prefix = ""                # "", "TF", "Flax": TFDebertaV2Model, FlaxDebertaV2Model
    packages: tuple[str, ...] = ()   # what the extra installs; the extra is the framework's name
    default_format = ""              # what save_pretrained / `convert --to` writes
    formats: tuple[str, ...] = ()    # what it can write (--format)
    search_order: tuple[str, ...] = ()  # the weights file it loads from a checkpoint directory: its own first
    attn_implementations: tuple[str, ...] = ("eager",)  # what attn_implementation= may pick (docs/attention.md)

    @property
    def extra(self) -> str:
        return self.name

    def implementation(self):
        """The implementation module, or an ImportError naming the extra to install."""
        try:
            return importlib.import_module(self.module)
        except ModuleNotFoundError as err:
            if (err.name or "").startswith("deberta_xf"):
                raise
            raise ImportError(f"the {self.name!r} implementation needs the {self.extra!r} extra ({err.name} is not "
                              f"installed): pip install 'deberta-xf[{self.extra}]'") from err

    def model_class(self, task: str):
        from deberta_xf.tasks import check_task

        return self.implementation().MODEL_CLASSES[check_task(task)]

    def missing_package(self) -> str | None:
        """Which package the framework needs is not installed ("tensorflow is not installed (pip install ...)"),
        found without importing any of them; None when all are."""
        for package in self.packages:
            if importlib.util.find_spec(package) is None:
                return f"{package} is not installed (pip install 'deberta-xf[{self.extra}]')"
        return None

    def available(self) -> str | None:
        """None when the implementation can run, else why not ("tensorflow is not installed", ...)."""
        missing = self.missing_package()
        if missing:
            return missing
        try:
            self.implementation()
        except ImportError as err:  # the implementation module itself is missing, or a dependency of it
            return f"implementation not importable: {err}"
        return None

    def versions(self) -> dict[str, str]:
        out = {}
        for package in self.packages:
            try:
                out[package] = str(importlib.import_module(package).__version__)
            except (ImportError, AttributeError):
                out[package] = "unknown"
        return out

    @abc.abstractmethod
    def gpu(self) -> Device | None:
        """The framework's first GPU, or None when it sees none."""

    @abc.abstractmethod
    def cpu(self) -> Device:
        """The framework's CPU device."""

    def resolve_device(self, request: str) -> Device | None:
        """``auto``: the GPU when the framework sees one; ``gpu``: the GPU or None; ``cpu``: the CPU."""
        if request == "cpu":
            return self.cpu()
        gpu = self.gpu()
        if request == "gpu":
            return gpu
        return gpu or self.cpu()

    @abc.abstractmethod
    def precision(self, dtype: str = "float32") -> contextlib.AbstractContextManager:
        """A context pinning full-precision matmuls (TF32 off) for a run in ``dtype``; the settings that were in
        force are restored on exit."""

    def device_scope(self, device: Device | None) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def attention_implementation(self, requested: str | None) -> str:
        """The attention implementation a run asked for ``requested`` uses: the request where the framework has it,
        else eager (TF has only eager)."""
        return requested if requested in self.attn_implementations else "eager"

    def load(self, checkpoint: str, task: str, dtype: Any = None, device: Device | None = None, config: Any = None,
             attn_implementation: str | None = None):
        """``from_pretrained`` of the task's class (the checkpoint directory's own file first, DESIGN §1), with
        :meth:`attention_implementation` of ``attn_implementation``."""
        extra = {}
        if self.attention_implementation(attn_implementation) != "eager":
            extra["attn_implementation"] = attn_implementation
        return self.model_class(task).from_pretrained(checkpoint, config=config, dtype=dtype, **extra)

    @abc.abstractmethod
    def forward(self, model, inputs: dict[str, np.ndarray], device: Device | None = None,
                attentions: bool = False) -> dict[str, Any]:
        """One inference forward pass with every hidden state (no gradient), on ``device``."""

    def outputs(self, model, inputs: dict[str, np.ndarray], device: Device | None = None,
                attentions: bool = False) -> dict[str, np.ndarray]:
        """:meth:`forward`, flattened to ``{"logits": ..., "hidden_states.0": ...}`` float32 numpy arrays."""
        return flatten_outputs(self.forward(model, inputs, device, attentions))

    # === Training: the loss and its gradients, and one optimizer step (mirrored in every entry) ===

    @abc.abstractmethod
    def loss_and_gradients(self, model, inputs: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                           device: Device | None = None) -> tuple[float, dict[str, np.ndarray]]:
        """The task loss on ``inputs`` with ``labels`` (dropout off: the model's inference mode) and its gradient
        with respect to every parameter, as ``(loss, {canonical name: float32 array in canonical layout})``.

        A tied parameter is one entry (the reference's accumulation: the legacy MLM decoder's gradient lands on
        the word embeddings). The base model has no task loss: ``labels = {"hidden_target": [batch, seq, H]}``
        stands in for a task loss: ``sum(last_hidden_state * hidden_target * attention_mask) / sum(attention_mask)``."""

    def backward(self, checkpoint: str, task: str, dtype: str, inputs: dict[str, np.ndarray],
                 labels: dict[str, np.ndarray], device: Device, attn_implementation: str | None = None) -> Execution:
        """Load ``checkpoint`` and compute loss and gradients with pinned precision on ``device``; the outputs are
        ``{"loss": ..., "grad/<canonical name>": ...}``."""
        start = time.perf_counter()
        with self.precision(dtype), self.device_scope(device):
            model = self.load(checkpoint, task, dtype, device, attn_implementation=attn_implementation)
            loss, grads = self.loss_and_gradients(model, inputs, labels, device)
        outputs = {"loss": np.asarray(loss, np.float32)}
        outputs.update({GRAD_PREFIX + name: grads[name] for name in sorted(grads)})
        weights = getattr(model, "weights_path", "") or ""
        return Execution(outputs, os.fspath(weights), device, time.perf_counter() - start)

    @abc.abstractmethod
    def optimizer(self, model, name: str, lr: float):
        """The framework's own optimizer over every parameter: ``"sgd"`` (plain, no momentum) or ``"adamw"``
        (:data:`ADAMW` hyper-parameters)."""

    @abc.abstractmethod
    def train_step(self, model, optimizer, inputs: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                   device: Device | None = None) -> float:
        """One optimizer step on the task loss (dropout off); the loss before the step."""

    def train(self, checkpoint: str, task: str, dtype: str, inputs: dict[str, np.ndarray],
              labels: dict[str, np.ndarray], device: Device, steps: int, optimizer: str, lr: float,
              batch_size: int | None = None, attn_implementation: str | None = None) -> Execution:
        """``steps`` optimizer steps from the checkpoint's weights, step i on batch ``i % len(batches)`` of
        :func:`split_batches` (``batch_size`` None: every step on the whole batch); the outputs are the loss
        before each step (``train_loss.<i>``) and the final weights (``weights/<canonical name>``)."""
        start = time.perf_counter()
        batches = split_batches(inputs, labels, batch_size)
        with self.precision(dtype), self.device_scope(device):
            model = self.load(checkpoint, task, dtype, device, attn_implementation=attn_implementation)
            opt = self.optimizer(model, optimizer, lr)
            losses = [self.train_step(model, opt, *batches[i % len(batches)], device) for i in range(steps)]
            state = model.canonical_state()
        outputs = {f"{TRAIN_LOSS_PREFIX}{i}": np.asarray(v, np.float32) for i, v in enumerate(losses)}
        outputs.update({WEIGHTS_PREFIX + name: np.asarray(state[name], np.float32) for name in sorted(state)})
        return Execution(outputs, "", device, time.perf_counter() - start)

    def run(self, checkpoint: str, task: str, dtype: str, inputs: dict[str, np.ndarray], device: Device,
            attentions: bool = False, attn_implementation: str | None = None) -> Execution:
        """Load and run a checkpoint with pinned precision on ``device``; the outputs and the file it loaded."""
        from deberta_xf.formats import find_weights

        start = time.perf_counter()
        with self.precision(dtype), self.device_scope(device):
            model = self.load(checkpoint, task, dtype, device, attn_implementation=attn_implementation)
            outputs = self.outputs(model, inputs, device, attentions)
        # The file the model says it loaded; the loading rule's answer for implementations that do not say.
        weights = getattr(model, "weights_path", None) or find_weights(checkpoint, self.name)[0]
        return Execution(outputs, os.path.relpath(os.fspath(weights), checkpoint), device,
                         time.perf_counter() - start)


class Torch(Framework):
    name = "torch"
    module = "deberta_xf.torch.modeling_deberta_v2"
    packages = ("torch",)
    default_format = "safetensors"
    formats = ("safetensors", "bin")
    search_order = ("safetensors", "bin", "tf_h5", "keras_h5", "msgpack")
    attn_implementations = ("eager", "sdpa", "fused")

    def gpu(self) -> Device | None:
        import torch

        if not torch.cuda.is_available():
            return None
        return Device("gpu", f"cuda:0 ({torch.cuda.get_device_name(0)})", torch.device("cuda:0"))

    def cpu(self) -> Device:
        import torch

        return Device("cpu", "cpu", torch.device("cpu"))

    @contextlib.contextmanager
    def precision(self, dtype: str = "float32") -> Iterator[None]:
        import torch

        saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                 torch.get_float32_matmul_precision())
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
            torch.set_float32_matmul_precision(saved[2])

    def load(self, checkpoint, task, dtype=None, device=None, config=None, attn_implementation=None):
        model = super().load(checkpoint, task, dtype, device, config, attn_implementation)
        return model if device is None else model.to(device.handle)

    def forward(self, model, inputs, device=None, attentions=False):
        import torch

        tensors = {k: torch.as_tensor(v).to(device.handle if device else "cpu") for k, v in inputs.items()}
        with torch.no_grad():
            return model(**tensors, output_hidden_states=True, output_attentions=attentions)


    def loss_and_gradients(self, model, inputs, labels, device=None):
        import torch

        handle = device.handle if device else "cpu"
        tensors = {k: torch.as_tensor(v).to(handle) for k, v in inputs.items()}
        extra = {k: torch.as_tensor(v).to(handle) for k, v in labels.items() if k != "hidden_target"}
        model.eval()  # dropout off
        params = dict(model.named_parameters())  # tied parameters once (named_parameters deduplicates)
        with torch.enable_grad():
            out = model(**tensors, **extra)
            if "hidden_target" in labels:
                mask = tensors["attention_mask"].to(out.last_hidden_state.dtype)[..., None]
                target = torch.as_tensor(labels["hidden_target"]).to(handle, out.last_hidden_state.dtype)
                loss = (out.last_hidden_state * target * mask).sum() / mask.sum()
            else:
                loss = out.loss
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        result = {}
        for (name, param), grad in zip(params.items(), grads):
            g = torch.zeros_like(param) if grad is None else grad
            result[name] = g.detach().float().cpu().numpy()
        return float(loss.detach().float().cpu()), result

    def optimizer(self, model, name: str, lr: float):
        import torch

        params = list(model.parameters())
        if name == "sgd":
            return torch.optim.SGD(params, lr=lr)
        return torch.optim.AdamW(params, lr=lr, **ADAMW)

    def train_step(self, model, optimizer, inputs, labels, device=None) -> float:
        """One optimizer step (dropout off) on the task loss; the loss before the step."""
        import torch

        handle = device.handle if device else "cpu"
        tensors = {k: torch.as_tensor(v).to(handle) for k, v in inputs.items()}
        extra = {k: torch.as_tensor(v).to(handle) for k, v in labels.items()}
        model.eval()
        optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = model(**tensors, **extra).loss
            loss.backward()
        optimizer.step()
        return float(loss.detach().float().cpu())



class TF(Framework):
    name = "tf"
    module = "deberta_xf.tf.modeling_tf_deberta_v2"
    class_prefix = "TF"
    packages = ("tensorflow", "keras")
    default_format = "tf_h5"
    formats = ("tf_h5", "keras_h5")
    search_order = ("tf_h5", "keras_h5", "safetensors", "bin", "msgpack")

    @staticmethod
    def _tf():
        import tensorflow as tf

        return tf

    def gpu(self) -> Device | None:
        tf = self._tf()
        gpus = tf.config.list_physical_devices("GPU")
        if not gpus:
            return None
        details = tf.config.experimental.get_device_details(gpus[0])
        return Device("gpu", f"/GPU:0 ({details.get('device_name', 'GPU')})", "/GPU:0")

    def cpu(self) -> Device:
        return Device("cpu", "/CPU:0", "/CPU:0")

    @contextlib.contextmanager
    def precision(self, dtype: str = "float32") -> Iterator[None]:
        tf = self._tf()
        saved = tf.config.experimental.tensor_float_32_execution_enabled()
        tf.config.experimental.enable_tensor_float_32_execution(False)
        try:
            yield
        finally:
            tf.config.experimental.enable_tensor_float_32_execution(saved)

    def device_scope(self, device: Device | None):
        return contextlib.nullcontext() if device is None else self._tf().device(device.handle)

    def forward(self, model, inputs, device=None, attentions=False):
        tf = self._tf()
        tensors = {k: tf.constant(v) for k, v in inputs.items()}
        return model(**tensors, output_hidden_states=True, output_attentions=attentions)


    def loss_and_gradients(self, model, inputs, labels, device=None):
        tf = self._tf()
        tensors = {k: tf.constant(v) for k, v in inputs.items()}
        extra = {k: tf.constant(v) for k, v in labels.items() if k != "hidden_target"}
        variables = model.canonical_variables()  # one variable per canonical name (the decoder is the embeddings)
        with tf.GradientTape() as tape:
            out = model(**tensors, **extra, training=False)  # dropout off
            if "hidden_target" in labels:
                hidden = out.last_hidden_state
                mask = tf.cast(tensors["attention_mask"], hidden.dtype)[..., None]
                loss = tf.reduce_sum(hidden * tf.cast(labels["hidden_target"], hidden.dtype) * mask) / \
                    tf.reduce_sum(mask)
            else:
                loss = tf.reduce_mean(out.loss)  # the reference TF's [batch] or (1,) loss -> its mean
        grads = tape.gradient(loss, list(variables.values()))
        from deberta_xf.schema import from_framework as schema_from_framework

        result = {}
        for (name, variable), grad in zip(variables.items(), grads):
            value = np.zeros(variable.shape, np.float32) if grad is None else \
                np.asarray(tf.convert_to_tensor(grad).numpy(), np.float32)  # IndexedSlices -> dense
            result[name] = np.ascontiguousarray(schema_from_framework(name, value, "tf"))
        return float(loss.numpy()), result

    def optimizer(self, model, name: str, lr: float):
        import keras

        if name == "sgd":
            return keras.optimizers.SGD(learning_rate=lr)
        return keras.optimizers.AdamW(learning_rate=lr, beta_1=ADAMW["betas"][0], beta_2=ADAMW["betas"][1],
                                      epsilon=ADAMW["eps"], weight_decay=ADAMW["weight_decay"])

    def train_step(self, model, optimizer, inputs, labels, device=None) -> float:
        tf = self._tf()
        tensors = {k: tf.constant(v) for k, v in inputs.items()}
        extra = {k: tf.constant(v) for k, v in labels.items()}
        variables = list(model.canonical_variables().values())
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model(**tensors, **extra, training=False).loss)
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients([(g if g is not None else tf.zeros_like(v), v) for g, v in zip(grads, variables)])
        return float(loss.numpy())



class Flax(Framework):
    name = "flax"
    module = "deberta_xf.flax.modeling_flax_deberta_v2"
    class_prefix = "Flax"
    packages = ("jax", "jaxlib", "flax")
    default_format = "msgpack"
    formats = ("msgpack", "safetensors")
    search_order = ("msgpack", "safetensors", "bin", "tf_h5", "keras_h5")
    attn_implementations = ("eager", "sdpa", "fused")

    def gpu(self) -> Device | None:
        import jax

        try:
            devices = jax.devices("gpu")
        except RuntimeError:  # no GPU backend
            return None
        if not devices:
            return None
        return Device("gpu", f"{devices[0]} ({devices[0].device_kind})", devices[0])

    def cpu(self) -> Device:
        import jax

        device = jax.devices("cpu")[0]
        return Device("cpu", str(device), device)

    def precision(self, dtype: str = "float32"):
        import jax

        return jax.default_matmul_precision("highest")

    def device_scope(self, device: Device | None):
        import jax

        return contextlib.nullcontext() if device is None else jax.default_device(device.handle)

    def forward(self, model, inputs, device=None, attentions=False):
        import jax

        arrays = {k: jax.device_put(v, device.handle if device else self.cpu().handle) for k, v in inputs.items()}
        return model(**arrays, output_hidden_states=True, output_attentions=attentions)


    def loss_and_gradients(self, model, inputs, labels, device=None):
        import jax
        import jax.numpy as jnp
        from flax import nnx

        module = self.implementation()
        handle = device.handle if device else self.cpu().handle
        arrays = {k: jax.device_put(v, handle) for k, v in inputs.items()}
        extra = {k: jax.device_put(v, handle) for k, v in labels.items() if k != "hidden_target"}
        model.eval()  # dropout off

        def objective(m):
            out = m(**arrays, **extra)
            if "hidden_target" in labels:
                hidden = out.last_hidden_state
                mask = jnp.asarray(arrays["attention_mask"], hidden.dtype)[..., None]
                return jnp.sum(hidden * jnp.asarray(labels["hidden_target"], hidden.dtype) * mask) / jnp.sum(mask)
            return jnp.mean(out.loss)

        loss, grads = nnx.value_and_grad(objective)(model)
        names = module.flax_names(model.config, model.task)
        from deberta_xf.schema import from_framework as schema_from_framework

        result = {}
        for path, variable in nnx.to_flat_state(grads):
            name = names[".".join(str(p) for p in path)]
            value = np.asarray(variable[...], np.float32)
            result[name] = np.ascontiguousarray(schema_from_framework(name, value, self.name))
        return float(loss), result

    def optimizer(self, model, name: str, lr: float):
        import optax
        from flax import nnx

        tx = optax.sgd(lr) if name == "sgd" else optax.adamw(lr, b1=ADAMW["betas"][0], b2=ADAMW["betas"][1],
                                                          eps=ADAMW["eps"], weight_decay=ADAMW["weight_decay"])
        return nnx.Optimizer(model, tx, wrt=nnx.Param)

    def train_step(self, model, optimizer, inputs, labels, device=None) -> float:
        import jax
        import jax.numpy as jnp
        from flax import nnx

        handle = device.handle if device else self.cpu().handle
        arrays = {k: jax.device_put(v, handle) for k, v in {**inputs, **labels}.items()}
        model.eval()
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean(m(**arrays).loss))(model)
        optimizer.update(model, grads)
        return float(loss)



def split_batches(inputs: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                  batch_size: int | None = None) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """The rows of ``inputs`` and ``labels`` in consecutive batches of ``batch_size`` (the last may be smaller);
    None: one batch of every row."""
    rows = len(inputs["input_ids"])
    size = batch_size or rows
    return [({k: v[i:i + size] for k, v in inputs.items()}, {k: v[i:i + size] for k, v in labels.items()})
            for i in range(0, rows, size)]


REGISTRY: dict[str, Framework] = {f.name: f for f in (Torch(), TF(), Flax())}
FRAMEWORKS = tuple(REGISTRY)


def get_framework(name: str) -> Framework:
    """The registry entry of ``name``, or a ValueError listing the known frameworks."""
    if name not in REGISTRY:
        raise ValueError(f"unknown framework {name!r}; expected one of {', '.join(FRAMEWORKS)}")
    return REGISTRY[name]


def parse_frameworks(value: str, flag: str = "--frameworks") -> list[str]:
    """``--frameworks torch,tf,flax`` -> ["torch", "tf", "flax"]; unknown or repeated names are bad usage."""
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise DebertaXfError(f"{flag}: empty; expected a comma-separated list of {', '.join(FRAMEWORKS)}")
    unknown = [n for n in names if n not in FRAMEWORKS]
    if unknown:
        raise DebertaXfError(f"{flag}: unknown framework(s) {', '.join(map(repr, unknown))}; expected a "
                             f"comma-separated list of {', '.join(FRAMEWORKS)}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DebertaXfError(f"{flag}: {', '.join(repeated)} listed more than once")
    return names
