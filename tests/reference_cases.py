"""The reference fixtures (made by fixtures/generate_reference.py with transformers 4.57.6), for every test.

``CASES`` lists (variant, task) pairs; :func:`load_case` gives the checkpoint directory, the model inputs, and
the reference PyTorch ("pt") and TF ("tf", where the reference TF port can represent the config) outputs as
flat ``{"logits": ..., "hidden_states.0": ...}`` dicts; :func:`assert_matches` applies the DESIGN §5 rules.
"""

from __future__ import annotations

import dataclasses
import json
import os

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
    return Case("tiny-deberta-v3", "sequence-classification", DEFAULT_CHECKPOINT, inputs, pt, tf, extra)


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
