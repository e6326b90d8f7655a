"""Test-session setup shared by every test module.

triton and TensorFlow each bundle LLVM: importing triton *after* TensorFlow aborts the process ("LLVM ERROR:
inconsistency in registered CommandLine options"), and torch imports triton lazily whenever it is installed
(torch.compile, torch._dynamo, transformers' model classes). Imported in the other order they coexist, so the
session imports triton first when it is installed. On a machine without a GPU, triton kernels run in triton's
interpreter (TRITON_INTERPRET=1, read when a kernel is defined), the only way they run on CPU tensors.
"""

import importlib.util
import os

if importlib.util.find_spec("triton") is not None:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import triton  # noqa: F401  (before any test imports TensorFlow)
