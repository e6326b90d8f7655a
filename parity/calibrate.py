"""How the bf16 / fp16 thresholds in :mod:`deberta_xf.compare` were measured; rerun with ``python -m deberta_xf.parity.calibrate``.

For each measured checkpoint and each installed framework that runs the dtype, the checkpoint runs in float32
and in the low dtype on the same inputs; we record the max abs difference, per threshold class (hidden states,
logits, masked-LM logits; DESIGN §5 masking), of

- low dtype vs float32 in the same framework ("vs fp32"), and
- low dtype in one framework vs the same dtype in another ("cross"), which is what ``parity --dtype`` checks.

Two independent low-precision runs can each be off by their "vs fp32" error in opposite directions, so the
threshold is ``margin x max(cross, 2 x vs fp32)`` over every checkpoint, rounded up to 1, 2 or 5 x 10^k.

Checkpoints: the shipped fixtures (``fixtures/tiny-deberta-v3`` on the sample texts, the reference cases on
deterministic ids) and a randomly initialised model with deberta-v3-base's shapes (768 hidden, 12 layers, 12
heads, 3072 intermediate, 128100 vocabulary, 256 position buckets), written to a temporary directory.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile

import numpy as np

from deberta_xf.parity import inputs as parity_inputs
from deberta_xf.compare import THRESHOLD_KEYS, compare_outputs, threshold
from deberta_xf.frameworks import FRAMEWORKS, REGISTRY

# The fixtures of a checkout (this module sits in <checkout>/parity/); an installed package has none: pass --fixtures.
CHECKOUT_FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")
FIXTURE_CASES = ["v3/masked-lm", "v3/sequence-classification", "v2-conv/masked-lm", "abs-noshare/question-answering",
                 "emb-proj/token-classification", "no-rel/base"]
BASE_SIZED = dict(vocab_size=128100, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                  intermediate_size=3072, hidden_act="gelu", max_position_embeddings=512, type_vocab_size=0,
                  relative_attention=True, position_buckets=256, max_relative_positions=-1, norm_rel_ebd="layer_norm",
                  share_att_key=True, pos_att_type="p2c|c2p", position_biased_input=False, layer_norm_eps=1e-7,
                  pad_token_id=0, pooler_hidden_size=768, pooler_dropout=0, pooler_hidden_act="gelu", num_labels=3)


def _nice_ceiling(x: float) -> float:
    """Smallest 1, 2 or 5 x 10^k that is >= x."""
    exponent = math.floor(math.log10(x))
    for mantissa in (1, 2, 5, 10):
        if mantissa * 10 ** exponent >= x * (1 - 1e-12):
            return float(f"{mantissa * 10 ** exponent:.0e}")
    return float(f"{10 ** (exponent + 1):.0e}")


def _by_class(reference, candidate, task, mask) -> dict[str, float]:
    worst = {k: 0.0 for k in THRESHOLD_KEYS}
    for result in compare_outputs(reference, candidate, task, mask, strict=True):
        cls = _threshold_class(result.name, task)
        worst[cls] = max(worst[cls], result.max_abs)
    return worst


def _threshold_class(name: str, task: str) -> str:
    """hidden | logits | mlm_logits: which threshold applies to an output."""
    probe = {"hidden": 1.0, "logits": 2.0, "mlm_logits": 3.0}
    return {v: k for k, v in probe.items()}[threshold(name, task, probe)]


def measure(checkpoint: str, task: str, model_inputs: dict[str, np.ndarray], dtypes: list[str],
            frameworks: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """{dtype: {"torch vs fp32": {class: max abs}, "torch vs flax": {...}, ...}}"""
    runs: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for fw in frameworks:
        runner = REGISTRY[fw]
        if runner.available() is not None:
            continue
        for dtype in ["float32"] + dtypes:
            try:
                out = runner.run(checkpoint, task, dtype, model_inputs, runner.cpu()).outputs
            except Exception as err:  # a framework that cannot compute in this dtype on CPU
                print(f"  {fw} {dtype}: not measured ({type(err).__name__}: {str(err)[:100]})")
                continue
            runs.setdefault(dtype, {})[fw] = out
    mask = model_inputs["attention_mask"]
    result: dict[str, dict[str, dict[str, float]]] = {}
    for dtype in dtypes:
        low = runs.get(dtype, {})
        rows = {}
        for fw, out in low.items():
            if fw in runs.get("float32", {}):
                rows[f"{fw} vs fp32"] = _by_class(runs["float32"][fw], out, task, mask)
        names = list(low)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                rows[f"{a} vs {b}"] = _by_class(low[a], low[b], task, mask)
        result[dtype] = rows
    return result


def base_sized_checkpoint(directory: str, task: str, seed: int = 0) -> str:
    """A randomly initialised deberta-v3-base-sized checkpoint (torch init, written as model.safetensors)."""
    import torch

    from deberta_xf.factory import create_model

    torch.manual_seed(seed)
    model = create_model("torch", task, config=dict(BASE_SIZED))
    path = os.path.join(directory, f"base-sized-{task}")
    model.save_pretrained(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deberta_xf.parity.calibrate", description=__doc__.splitlines()[0])
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    parser.add_argument("--dtypes", default="bfloat16,float16")
    parser.add_argument("--margin", type=float, default=2.0)
    parser.add_argument("--skip-base-sized", action="store_true")
    parser.add_argument("--fixtures", default=CHECKOUT_FIXTURES,
                        help="the repository's fixtures/ folder (default: that of the checkout this module is in)")
    args = parser.parse_args(argv)
    if not os.path.isdir(os.path.join(args.fixtures, "reference")):
        parser.error(f"--fixtures {args.fixtures}: no reference/ fixtures there; calibration runs from a checkout "
                     f"of deberta-xf (pass --fixtures CHECKOUT/fixtures)")
    frameworks = args.frameworks.split(",")
    dtypes = args.dtypes.split(",")

    targets = []
    tiny = os.path.join(args.fixtures, "tiny-deberta-v3")
    texts = parity_inputs.read_texts(None)
    encoding = parity_inputs.tokenizer_checks(tiny, texts, 128).encoding
    targets.append(("tiny-deberta-v3", tiny, "sequence-classification", encoding))
    from deberta_xf.configuration import DebertaV2Config

    for case in FIXTURE_CASES:
        directory = os.path.join(args.fixtures, "reference", case)
        config = DebertaV2Config.from_pretrained(directory)
        task = case.split("/")[1]
        targets.append((case, directory, task, parity_inputs.deterministic_inputs(config)))
    tmp = tempfile.TemporaryDirectory()
    if not args.skip_base_sized:
        for task in ("masked-lm", "sequence-classification"):
            targets.append((f"base-sized/{task}", base_sized_checkpoint(tmp.name, task), task, encoding))

    worst = {d: {k: 0.0 for k in THRESHOLD_KEYS} for d in dtypes}
    for label, directory, task, model_inputs in targets:
        print(f"{label} ({task}), inputs {list(model_inputs['input_ids'].shape)}")
        for dtype, rows in measure(directory, task, model_inputs, dtypes, frameworks).items():
            for row, values in rows.items():
                print(f"  {dtype:9s} {row:16s} " + "  ".join(f"{k} {v:.3e}" for k, v in values.items()))
                factor = 2.0 if row.endswith("vs fp32") else 1.0
                for k, v in values.items():
                    worst[dtype][k] = max(worst[dtype][k], factor * v)
    tmp.cleanup()
    print(f"\nthresholds = {args.margin} x max(cross, 2 x vs fp32), rounded up to 1/2/5 x 10^k:")
    for dtype in dtypes:
        chosen = {k: _nice_ceiling(args.margin * v) if v > 0 else None for k, v in worst[dtype].items()}
        print(f"  {dtype}: measured {', '.join(f'{k} {v:.3e}' for k, v in worst[dtype].items())} -> {chosen}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
