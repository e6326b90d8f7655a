"""Our PyTorch DeBERTa-v2 forward vs transformers' on the same deberta-v3-base-sized random weights.

    python bench/bench_torch.py [--repeats 7] [--shapes 8x128,1x512]

CPU, fp32, eval mode, torch.inference_mode. Both models hold identical weights; calls alternate between them so
machine noise hits both alike. Prints the median time of each and the ratio ours / reference (<= 1.0 means
ours is not slower). Needs the `reference` extra (transformers 4.57.6) for the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from deberta_xf.configuration import DebertaV2Config  # noqa: E402
from deberta_xf.torch.modeling_deberta_v2 import DebertaV2Model  # noqa: E402

V3_BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "fixtures", "published-configs",
                       "deberta-v3-base.json")


def build_models():
    with open(V3_BASE) as f:
        config_dict = json.load(f)
    ours = DebertaV2Model.from_config(DebertaV2Config.from_dict(config_dict), seed=0)
    from transformers import DebertaV2Config as HFConfig
    from transformers import DebertaV2Model as HFModel

    reference = HFModel(HFConfig(**config_dict)).eval()
    missing, unexpected = reference.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and all("position_ids" in m for m in missing), (missing, unexpected)
    return ours, reference


def time_once(model, inputs) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        model(**inputs)
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--shapes", default="8x128,1x512")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    ours, reference = build_models()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, deberta-v3-base size "
          f"({sum(p.numel() for p in ours.parameters()) / 1e6:.1f}M parameters), fp32, CPU")
    print(f"{'shape':>8} {'ours (s)':>10} {'reference (s)':>14} {'ratio':>7}   max |diff|")
    rng = np.random.default_rng(0)
    for shape in args.shapes.split(","):
        batch, seq = (int(x) for x in shape.split("x"))
        ids = torch.from_numpy(rng.integers(5, 128000, size=(batch, seq)))
        mask = torch.ones(batch, seq, dtype=torch.long)
        mask[0, seq - seq // 4:] = 0  # some padding
        inputs = {"input_ids": ids, "attention_mask": mask}
        with torch.inference_mode():
            a = ours(**inputs).last_hidden_state
            b = reference(**inputs).last_hidden_state
        keep = mask.bool()
        diff = float((a - b).abs()[keep].max())
        t_ours, t_ref = [], []
        for _ in range(args.repeats):
            t_ours.append(time_once(ours, inputs))
            t_ref.append(time_once(reference, inputs))
        m_ours, m_ref = statistics.median(t_ours), statistics.median(t_ref)
        print(f"{shape:>8} {m_ours:>10.3f} {m_ref:>14.3f} {m_ours / m_ref:>7.3f}   {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
