"""The reference fixtures (made by fixtures/generate_reference.py with transformers 4.57.6), for every test.

``CASES`` lists (variant, task) pairs; :func:`load_case` gives the checkpoint directory, the model inputs, and
the reference PyTorch ("pt") and TF ("tf", where the reference TF port can represent the config) outputs as
flat ``{"logits": ..., "hidden_states.0": ...}`` dicts; :func:`assert_matches` applies the DESIGN §5 rules.

Bounds. The committed fixtures hold the last bits of the CPU that generated them, so no test compares a live run
with them more tightly than a fixed fraction of the documented fp32 tolerances (DESIGN §5: 5e-5 for hidden states
and pooled / QA / token logits, 1e-4 for masked-LM logits):

- :data:`FIXTURE_FRACTION` of the tolerance for a live run of any framework against the committed reference
  outputs. Worst measured on the development machine: 0.13 of the tolerance for our PyTorch (bit-exact with the
  live reference, see test_torch_model.py), 0.18 for TF (eager and XLA), 0.15 for Flax (eager and jit), always on
  masked-LM logits reaching +-25.
- :data:`KERNEL_FRACTION` for two live runs of our code through different kernels (XLA or jit vs eager, graph vs
  eager, a padded vs an unpadded batch): two runs that each stay within FIXTURE_FRACTION of the reference may
  differ by twice that. Identical computations (a 2-D mask vs the same mask as 3-D, inputs_embeds vs the ids they
  embed, a reload of the same weights) are compared exactly instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np

from deberta_xf.compare import compare_outputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "fixtures")
REFERENCE = os.path.join(FIXTURES, "reference")
DEFAULT_CHECKPOINT = os.path.join(FIXTURES, "tiny-deberta-v3")
SPM_DIR = os.path.join(FIXTURES, "deberta-v3-spm")

with open(os.path.join(REFERENCE, "manifest.json"), encoding="utf-8") as _f:
    MANIFEST = json.load(_f)

CASES = [(c["variant"], c["task"]) for c in MANIFEST["cases"]]
TF_CASES = [(c["variant"], c["task"]) for c in MANIFEST["cases"] if c["tf"]]
CASE_IDS = [f"{v}/{t}" for v, t in CASES]
TF_CASE_IDS = [f"{v}/{t}" for v, t in TF_CASES]
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
LABEL_INPUTS = ("labels", "start_positions", "end_positions")
# The default checkpoint (fixtures/tiny-deberta-v3, reference outputs on tokenized sample texts) as one more case.
DEFAULT_VARIANT = "tiny-deberta-v3"
ALL_CASES = CASES + [(DEFAULT_VARIANT, "sequence-classification")]
ALL_CASE_IDS = [f"{v}/{t}" for v, t in ALL_CASES]

FIXTURE_FRACTION = 0.5
KERNEL_FRACTION = 2 * FIXTURE_FRACTION


@dataclasses.dataclass
class Case:
    variant: str
    task: str
    directory: str
    inputs: dict[str, np.ndarray]      # model inputs and labels
    pt: dict[str, np.ndarray]          # reference PyTorch outputs
    tf: dict[str, np.ndarray]          # reference TF outputs (empty where the reference TF cannot run it)
    extra: dict[str, np.ndarray]       # other stored arrays (e.g. the 3-D mask case)

    @property
    def model_inputs(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in self.inputs.items() if k in MODEL_INPUTS}

    @property
    def attention_mask(self) -> np.ndarray:
        return self.inputs["attention_mask"]

    @property
    def has_labels(self) -> bool:
        return any(k in self.inputs for k in LABEL_INPUTS)


def _split(npz_path: str) -> tuple[dict, dict, dict, dict]:
    data = np.load(npz_path)
    groups: dict[str, dict[str, np.ndarray]] = {"inputs": {}, "pt": {}, "tf": {}, "extra": {}}
    for key in data.files:
        prefix, _, name = key.partition(".")
        if prefix in ("inputs", "pt", "tf"):
            groups[prefix][name] = data[key]
        else:
            groups["extra"][key] = data[key]
    return groups["inputs"], groups["pt"], groups["tf"], groups["extra"]


def load_case(variant: str, task: str) -> Case:
    directory = os.path.join(REFERENCE, variant, task)
    inputs, pt, tf, extra = _split(os.path.join(directory, "reference.npz"))
    return Case(variant, task, directory, inputs, pt, tf, extra)


def load_default_case() -> Case:
    inputs, pt, tf, extra = _split(os.path.join(REFERENCE, "tiny-deberta-v3.npz"))
    return Case(DEFAULT_VARIANT, "sequence-classification", DEFAULT_CHECKPOINT, inputs, pt, tf, extra)


def load_any_case(variant: str, task: str) -> Case:
    """:func:`load_case`, or the default checkpoint's case for ``DEFAULT_VARIANT`` (an entry of ALL_CASES)."""
    return load_default_case() if variant == DEFAULT_VARIANT else load_case(variant, task)


def assert_matches(reference: dict[str, np.ndarray], outputs: dict[str, np.ndarray], task: str,
                   attention_mask: np.ndarray, label: str = "", scale: float = 1.0) -> float:
    """Every reference output is present and within the DESIGN §5 threshold (times ``scale``); returns the
    worst max-abs difference."""
    from deberta_xf.compare import FP32_THRESHOLDS

    thresholds = {k: v * scale for k, v in FP32_THRESHOLDS.items()}
    results = compare_outputs(reference, outputs, task, attention_mask, thresholds)
    failed = [f"{r.name}: max abs {r.max_abs:.3e} > {r.atol:.1e}" for r in results if not r.passed]
    assert not failed, f"{label}: " + "; ".join(failed)
    assert results, f"{label}: nothing compared"
    return max(r.max_abs for r in results)


# ---------------------------------------------------------------------------------------------------------------
# The reference TF in a subprocess: its TF classes need tf-keras (Keras 2, ``TF_USE_LEGACY_KERAS=1``), while our TF
# implementation runs on Keras 3 in the test process.
REFERENCE_TF_PREAMBLE = r"""
import json, os, sys
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
try:  # triton (loaded by torch, which transformers imports) must come before TensorFlow: both bundle LLVM
    import triton  # noqa: F401
except ImportError:
    pass
import numpy as np
import tensorflow as tf
import transformers
"""


def run_reference_tf(body: str, jobs: list[dict], tmp_path) -> str:
    """Run ``body`` (after REFERENCE_TF_PREAMBLE; it reads the jobs from ``sys.argv[1]``) with the reference TF;
    return its stdout, failing the test with its stderr when it fails."""
    script = tmp_path / "reference_tf_runner.py"
    script.write_text(REFERENCE_TF_PREAMBLE + body)
    result = subprocess.run([sys.executable, str(script), json.dumps(jobs)], capture_output=True, text=True,
                            env={**os.environ, "TF_USE_LEGACY_KERAS": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout
