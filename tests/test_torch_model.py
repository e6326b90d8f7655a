"""PyTorch-specific checks. The contract every framework keeps (loading every weights format, round trips, every
head against the reference fixtures, masks, inputs, losses, bad checkpoints) is tests/test_contract.py.

The claim "our PyTorch port is the reference's math" is checked live here: against transformers 4.57.6 on this
machine (the `reference` extra), the outputs are the same to 1e-6 (measured: 0.0, or ~1e-7 on multiple-choice
logits). Against the committed fixtures (made on another CPU) the contract allows FIXTURE_FRACTION of the
documented tolerance instead, since those hold the last bits of the CPU that generated them.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import deberta_xf  # noqa: E402
from deberta_xf.compare import BF16_THRESHOLDS, compare_outputs, flatten_outputs  # noqa: E402
from deberta_xf.frameworks import REGISTRY  # noqa: E402
from deberta_xf.tasks import TASK_TABLE  # noqa: E402
from deberta_xf.torch.modeling_deberta_v2 import MODEL_CLASSES  # noqa: E402
from reference_cases import ALL_CASE_IDS, ALL_CASES, load_any_case, load_case  # noqa: E402

# Same math on the same machine: what may differ is the order of a few float reductions (multiple choice).
BIT_EXACT = 1e-6
# transformers' import warns that torch.jit.script is deprecated (torch 2.13); not ours to fix
IGNORE_REFERENCE_IMPORT_WARNING = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")


# ----------------------------------------------------------------------------------------------------------------
# Live bit-exactness against the reference implementation
@pytest.fixture
def same_torch_settings():
    """One thread and deterministic algorithms, full fp32 matmuls: the same settings for the reference and ours."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        with REGISTRY["torch"].precision():
            yield
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)


@pytest.mark.parametrize(("variant", "task"), ALL_CASES, ids=ALL_CASE_IDS)
@pytest.mark.reference
@IGNORE_REFERENCE_IMPORT_WARNING
def test_bit_exact_with_transformers(variant, task, same_torch_settings):
    transformers = pytest.importorskip("transformers")
    case = load_any_case(variant, task)
    reference_class = getattr(transformers, TASK_TABLE[task].architecture)
    reference = reference_class.from_pretrained(case.directory, local_files_only=True).eval()
    ours = MODEL_CLASSES[task].from_pretrained(case.directory)
    assert os.path.basename(ours.weights_path) == "model.safetensors"  # the file transformers loads
    tensors = {k: torch.as_tensor(v) for k, v in case.inputs.items()}
    with torch.no_grad():
        want = flatten_outputs(reference(**tensors, output_hidden_states=True, output_attentions=True))
        got = flatten_outputs(ours(**tensors, output_hidden_states=True, output_attentions=True))
    assert set(got) == set(want)
    results = compare_outputs(want, got, task, case.attention_mask,
                              thresholds={"hidden": BIT_EXACT, "logits": BIT_EXACT, "mlm_logits": BIT_EXACT})
    failed = [f"{r.name}: {r.max_abs:.2e} {r.note}" for r in results if not r.passed]
    assert not failed, f"{variant}/{task}: ours vs transformers {transformers.__version__}: " + "; ".join(failed)


@pytest.mark.reference
@IGNORE_REFERENCE_IMPORT_WARNING
def test_causal_3d_mask_bit_exact_with_transformers(same_torch_settings):
    """A genuine 3-D mask (causal x padding), as fixtures/generate_reference.py runs the reference with it: its
    embeddings get the 2-D token mask (they cannot take a 3-D one), its encoder the 3-D mask."""
    transformers = pytest.importorskip("transformers")
    case = load_case("v3", "base")
    reference = transformers.DebertaV2Model.from_pretrained(case.directory, local_files_only=True).eval()
    ours = deberta_xf.DebertaV2Model.from_pretrained(case.directory)
    ids, mask2 = torch.as_tensor(case.inputs["input_ids"]), torch.as_tensor(case.attention_mask)
    mask3 = torch.as_tensor(case.extra["inputs3d.attention_mask"])
    with torch.no_grad():
        want = reference.encoder(reference.embeddings(input_ids=ids, mask=mask2), mask3).last_hidden_state
        got = ours(input_ids=ids, attention_mask=mask3).last_hidden_state
    keep = case.attention_mask.astype(bool)
    assert np.abs((got - want).numpy())[keep].max() <= BIT_EXACT


# ----------------------------------------------------------------------------------------------------------------
# torch API
def test_training_mode_enables_dropout():
    case = load_case("v3", "base")
    model = deberta_xf.DebertaV2Model.from_pretrained(case.directory)
    assert not model.training  # from_pretrained returns an eval-mode model
    assert not deberta_xf.create_model("torch", "base", checkpoint=case.directory).training
    model.train()
    with torch.no_grad():
        a = model(**case.model_inputs).last_hidden_state
        b = model(**case.model_inputs).last_hidden_state
    assert (a - b).abs().max() > 1e-3
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**case.model_inputs).last_hidden_state, model(**case.model_inputs).last_hidden_state)


def test_bfloat16_dtype():
    case = load_case("v3", "base")
    model = deberta_xf.DebertaV2Model.from_pretrained(case.directory, dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        out = model(**case.model_inputs).last_hidden_state
    assert out.dtype == torch.bfloat16
    keep = case.attention_mask.astype(bool)
    err = np.abs(out.float().numpy() - case.pt["last_hidden_state"])[keep].max()
    assert 0 < err < BF16_THRESHOLDS["hidden"]


def test_state_dict_names_are_the_canonical_names_and_tensors_are_inputs(tmp_path):
    case = load_case("v2-conv", "sequence-classification")
    model = deberta_xf.DebertaV2ForSequenceClassification.from_pretrained(case.directory)
    state = model.state_dict()
    canonical = model.canonical_state()
    assert list(state) == list(canonical)
    for name, tensor in state.items():
        np.testing.assert_array_equal(tensor.numpy(), canonical[name], err_msg=name)
    from safetensors.torch import load_file

    model.save_pretrained(tmp_path)  # model.safetensors loads with the safetensors library into this state dict
    model.load_state_dict(load_file(str(tmp_path / "model.safetensors")), strict=True)
    with torch.no_grad():
        from_numpy = model(**case.model_inputs).logits
        from_tensors = model(**{k: torch.as_tensor(v) for k, v in case.model_inputs.items()}).logits
    assert torch.equal(from_numpy, from_tensors)
