"""A ``tf_model.h5`` written by us loads in the reference TF classes (transformers 4.57.6 + tf-keras) and gives the
reference outputs.

The reference runs in a subprocess: its TF classes need tf-keras (Keras 2, ``TF_USE_LEGACY_KERAS=1``), while our
model runs on Keras 3 in this process.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

pytestmark = [pytest.mark.reference, pytest.mark.slow]  # the reference TF runs in a subprocess
pytest.importorskip("transformers")
pytest.importorskip("tf_keras")
tf = pytest.importorskip("tensorflow")

import deberta_xf  # noqa: E402
from deberta_xf.tf.modeling_tf_deberta_v2 import MODEL_CLASSES  # noqa: E402
from deberta_xf.compare import flatten_outputs  # noqa: E402
from deberta_xf.tasks import TASK_TABLE  # noqa: E402
from reference_cases import TF_CASES, assert_matches, load_case, run_reference_tf  # noqa: E402


# Loads each job's directory with the reference TF class (tf_model.h5 only), runs it on the job's inputs and
# saves its outputs; prints the loading report as one JSON line per job.
REFERENCE_RUNNER = r"""
for job in json.loads(sys.argv[1]):
    cls = getattr(transformers, job["cls"])
    model, info = cls.from_pretrained(job["dir"], use_safetensors=False, output_loading_info=True)
    inputs = {k: tf.constant(v) for k, v in np.load(job["inputs"]).items()}
    out = model(inputs, output_hidden_states=True, training=False)
    arrays = {k: out[k].numpy() for k in ("logits", "start_logits", "end_logits", "last_hidden_state")
              if getattr(out, k, None) is not None}
    arrays.update({f"hidden_states.{i}": h.numpy() for i, h in enumerate(out.hidden_states)})
    np.savez(job["out"], **arrays)
    print(json.dumps({k: sorted(str(x) for x in v) for k, v in info.items()}), flush=True)
"""
# Weight-less layers (dropouts) get auto-numbered names in the reference; only their names can differ.
WEIGHTLESS = re.compile(r"^(cls_)?dropout(_\d+)?$")


def run_reference(jobs: list[dict], tmp_path) -> list[dict]:
    stdout = run_reference_tf(REFERENCE_RUNNER, jobs, tmp_path)
    reports = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert len(reports) == len(jobs), stdout[-2000:]
    for job, report in zip(jobs, reports):
        assert report["mismatched_keys"] == [], job
        for key in ("missing_keys", "unexpected_keys"):
            assert all(WEIGHTLESS.match(name) for name in report[key]), (job["dir"], key, report[key])
    return [dict(np.load(job["out"])) for job in jobs]


def _job(model, task: str, inputs: dict, directory) -> dict:
    model.save_pretrained(directory)
    assert sorted(os.listdir(directory)) == ["config.json", "tf_model.h5"]
    np.savez(os.path.join(directory, "inputs.npz"), **inputs)
    return {"cls": TASK_TABLE[task].class_name("tf"), "dir": str(directory), "inputs": os.path.join(directory, "inputs.npz"),
            "out": os.path.join(directory, "out.npz")}


def test_our_tf_model_h5_loads_in_the_reference(tmp_path):
    """Every fixture case the reference TF can represent: our model, loaded from model.safetensors (so the h5 is
    produced from canonical arrays, not copied), writes tf_model.h5; the reference TF class loads it with no missing
    weight and reproduces the reference outputs (TF and PyTorch)."""
    jobs, cases = [], []
    for i, (variant, task) in enumerate(TF_CASES):
        case = load_case(variant, task)
        model = MODEL_CLASSES[task].from_pretrained(os.path.join(case.directory, "model.safetensors"),
                                                    config=os.path.join(case.directory, "config.json"))
        jobs.append(_job(model, task, case.model_inputs, tmp_path / f"{i}"))
        cases.append(case)
    for case, outputs in zip(cases, run_reference(jobs, tmp_path)):
        label = f"{case.variant}/{case.task} reference TF on our tf_model.h5"
        compared_tf = {k: v for k, v in case.tf.items() if k in outputs}
        compared_pt = {k: v for k, v in case.pt.items() if k in outputs}
        assert "hidden_states.0" in compared_tf and len(compared_tf) == len(outputs)
        assert_matches(compared_tf, outputs, case.task, case.attention_mask, label + " vs reference TF")
        assert_matches(compared_pt, outputs, case.task, case.attention_mask, label + " vs reference PyTorch")


def test_chunked_weight_names_load_in_the_reference(tmp_path):
    """A model deep enough for weight_names to be split into weight_names0, weight_names1, ... (the HDF5 object-header
    limit); its reference TF twin computes what ours computes."""
    config = deberta_xf.DebertaV2Config(vocab_size=60, hidden_size=8, num_hidden_layers=40, num_attention_heads=2,
                                   intermediate_size=16, max_position_embeddings=32, relative_attention=True,
                                   position_buckets=8, norm_rel_ebd="layer_norm", share_att_key=True,
                                   pos_att_type="p2c|c2p", position_biased_input=False, num_labels=3)
    model = deberta_xf.TFDebertaV2ForSequenceClassification.from_config(config, seed=3)
    rng = np.random.default_rng(0)
    for variable in model.weights:  # O(1) weights so that every layer matters
        variable.assign(rng.normal(size=variable.shape).astype(np.float32) / np.sqrt(variable.shape[0]))
    ids = rng.integers(1, 60, size=(2, 12))
    mask = np.ones_like(ids)
    mask[1, 8:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    job = _job(model, "sequence-classification", inputs, tmp_path / "deep")
    import h5py

    with h5py.File(os.path.join(job["dir"], "tf_model.h5"), "r") as f:
        assert "weight_names" not in f["deberta"].attrs and "weight_names1" in f["deberta"].attrs
    (reference,) = run_reference([job], tmp_path)
    ours = flatten_outputs(model(**inputs, output_hidden_states=True))
    assert len(reference) == 1 + 41  # logits and 41 hidden states
    assert_matches(reference, ours, "sequence-classification", mask, "40-layer model, ours vs reference TF")
