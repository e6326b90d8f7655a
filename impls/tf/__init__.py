"""The TensorFlow (Keras 3) implementation: deberta_xf.tf.modeling_tf_deberta_v2.

triton (the kernel compiler torch uses, an optional dependency) and TensorFlow each bundle LLVM, and importing
triton *after* TensorFlow aborts the process ("LLVM ERROR: inconsistency in registered CommandLine options").
torch imports triton lazily whenever it is installed (torch.compile, torch.optim through torch._dynamo), so a
process that runs our TensorFlow models and then trains or compiles a torch model would die. Imported first, triton
and TensorFlow coexist: this package, which every TensorFlow model import goes through, imports triton before
TensorFlow is imported, when triton is installed and TensorFlow is not loaded yet.
"""

import importlib.util
import sys

if "tensorflow" not in sys.modules and "triton" not in sys.modules and importlib.util.find_spec("triton") is not None:
    import triton  # noqa: F401
