"""Running one checkpoint in one framework: availability, device, pinned matmul precision, load, forward.

Each framework has a small runner with the same four steps, so the harness never branches on the framework:
``available()`` (is the implementation importable), ``resolve_device(request)``, ``precision(dtype)`` (a context
that pins full-precision matmuls: TF32 off) and ``run(checkpoint, task, dtype, inputs, device)``.

Models are built through :func:`impls.factory.create_model`, which loads a checkpoint directory by DESIGN §1's
rule (the framework's own file first). A framework whose implementation module or package is missing is
"not installed": the harness skips it with a note.
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

from impls.errors import DebertaXfError
from parity.compare import flatten_outputs

FRAMEWORKS = ("torch", "tf", "flax")
PACKAGES = {"torch": ("torch",), "tf": ("tensorflow", "keras"), "flax": ("jax", "flax")}


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


class Runner(abc.ABC):
    framework = ""

    def available(self) -> str | None:
        """None when the implementation can run, else why not ("tensorflow is not installed", ...)."""
        for package in PACKAGES[self.framework]:
            if importlib.util.find_spec(package) is None:
                return f"{package} is not installed (pip install 'deberta-xf[{self.framework}]')"
        from impls.factory import framework_module

        try:
            module = framework_module(self.framework)
        except ImportError as err:  # the implementation module itself is missing, or a dependency of it
            return f"implementation not importable: {err}"
        if not hasattr(module, "MODEL_CLASSES"):
            return f"{module.__name__} has no MODEL_CLASSES"
        return None

    def versions(self) -> dict[str, str]:
        out = {}
        for package in PACKAGES[self.framework]:
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
    def precision(self, dtype: str) -> contextlib.AbstractContextManager:
        """A context pinning full-precision matmuls (TF32 off) for a run in ``dtype``."""

    def device_scope(self, device: Device) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def load(self, checkpoint: str, task: str, dtype: str, device: Device):
        from impls.factory import create_model

        return create_model(self.framework, task, checkpoint=checkpoint, dtype=dtype)

    @abc.abstractmethod
    def forward(self, model, inputs: dict[str, np.ndarray], device: Device, attentions: bool) -> dict[str, Any]:
        """One forward pass on ``device``, outputs flattened to numpy."""

    def run(self, checkpoint: str, task: str, dtype: str, inputs: dict[str, np.ndarray], device: Device,
            attentions: bool = False) -> Execution:
        from convert.formats import find_weights

        start = time.perf_counter()
        with self.precision(dtype), self.device_scope(device):
            model = self.load(checkpoint, task, dtype, device)
            outputs = flatten_outputs(self.forward(model, inputs, device, attentions))
        # The file the model says it loaded; the loading rule's answer for implementations that do not say.
        weights = getattr(model, "weights_path", None) or find_weights(checkpoint, self.framework)[0]
        return Execution(outputs, os.path.relpath(os.fspath(weights), checkpoint), device,
                         time.perf_counter() - start)


class TorchRunner(Runner):
    framework = "torch"

    def gpu(self) -> Device | None:
        import torch

        if not torch.cuda.is_available():
            return None
        return Device("gpu", f"cuda:0 ({torch.cuda.get_device_name(0)})", torch.device("cuda:0"))

    def cpu(self) -> Device:
        import torch

        return Device("cpu", "cpu", torch.device("cpu"))

    @contextlib.contextmanager
    def precision(self, dtype: str) -> Iterator[None]:
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

    def load(self, checkpoint: str, task: str, dtype: str, device: Device):
        return super().load(checkpoint, task, dtype, device).to(device.handle)

    def forward(self, model, inputs, device, attentions):
        import torch

        tensors = {k: torch.as_tensor(v).to(device.handle) for k, v in inputs.items()}
        with torch.no_grad():
            return model(**tensors, output_hidden_states=True, output_attentions=attentions)


class TFRunner(Runner):
    framework = "tf"

    def versions(self) -> dict[str, str]:
        return {"tensorflow": self._tf().__version__, "keras": importlib.import_module("keras").__version__}

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
    def precision(self, dtype: str) -> Iterator[None]:
        tf = self._tf()
        saved = tf.config.experimental.tensor_float_32_execution_enabled()
        tf.config.experimental.enable_tensor_float_32_execution(False)
        try:
            yield
        finally:
            tf.config.experimental.enable_tensor_float_32_execution(saved)

    def device_scope(self, device: Device):
        return self._tf().device(device.handle)

    def forward(self, model, inputs, device, attentions):
        tf = self._tf()
        tensors = {k: tf.constant(v) for k, v in inputs.items()}
        return model(**tensors, output_hidden_states=True, output_attentions=attentions)


class FlaxRunner(Runner):
    framework = "flax"

    def versions(self) -> dict[str, str]:
        import flax
        import jax
        import jaxlib

        return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__}

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

    def precision(self, dtype: str):
        import jax

        return jax.default_matmul_precision("highest")

    def device_scope(self, device: Device):
        import jax

        return jax.default_device(device.handle)

    def forward(self, model, inputs, device, attentions):
        import jax

        arrays = {k: jax.device_put(v, device.handle) for k, v in inputs.items()}
        return model(**arrays, output_hidden_states=True, output_attentions=attentions)


RUNNERS: dict[str, Runner] = {"torch": TorchRunner(), "tf": TFRunner(), "flax": FlaxRunner()}


def parse_frameworks(value: str) -> list[str]:
    """``--frameworks torch,tf,flax`` -> ["torch", "tf", "flax"]; unknown or repeated names are bad usage."""
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise DebertaXfError("--frameworks: empty; expected a comma-separated list of torch, tf, flax")
    unknown = [n for n in names if n not in FRAMEWORKS]
    if unknown:
        raise DebertaXfError(f"--frameworks: unknown framework(s) {', '.join(map(repr, unknown))}; expected a "
                             f"comma-separated list of {', '.join(FRAMEWORKS)}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DebertaXfError(f"--frameworks: {', '.join(repeated)} listed more than once")
    return names
