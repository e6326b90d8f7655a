"""CPU forward-pass benchmark of the TF (Keras 3) DeBERTa-v2 next to our PyTorch implementation.

deberta-v3-base-sized random weights (hidden 768, 12 layers, 12 heads, FFN 3072, vocab 128100, relative attention
with 256 buckets, shared attention keys, p2c|c2p, LayerNorm'd relative embeddings, no absolute positions), fp32,
inference. Both frameworks get the same weights (checked: outputs agree), and are timed on the same inputs:
TF eager, ``tf.function``, ``tf.function(jit_compile=True)`` (XLA) and PyTorch eager (``torch.inference_mode``).
Each number is the median of ``--runs`` timed calls after ``--warmup`` untimed ones (compilation happens there);
the four are timed in interleaved rounds, so load from other processes skews them alike.

    python bench/bench_tf.py [--shapes 8x128,1x512] [--runs 5] [--warmup 2] [--layers 12] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

BASE_CONFIG = dict(vocab_size=128100, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                   intermediate_size=3072, hidden_act="gelu", max_position_embeddings=512, layer_norm_eps=1e-7,
                   relative_attention=True, position_buckets=256, max_relative_positions=-1,
                   norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type="p2c|c2p",
                   position_biased_input=False, type_vocab_size=0, pad_token_id=0)


def interleaved_medians(fns: dict, runs: int, warmup: int) -> dict[str, float]:
    """Median wall time of each function, timed in interleaved rounds (each round runs every function once,
    in rotating order) so that a change in machine load affects all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(runs):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return {n: statistics.median(t) for n, t in times.items()}, {n: min(t) for n, t in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="8x128,1x512", help="comma-separated BATCHxSEQ")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--layers", type=int, default=12, help="encoder layers (12 = deberta-v3-base)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    import tensorflow as tf
    import torch

    from deberta_xf import DebertaV2Config
    from deberta_xf.tf.modeling_tf_deberta_v2 import TFDebertaV2Model
    from deberta_xf.torch.modeling_deberta_v2 import DebertaV2Model

    config = DebertaV2Config(**{**BASE_CONFIG, "num_hidden_layers": args.layers})
    torch_model = DebertaV2Model.from_config(config, seed=0)
    tf_model = TFDebertaV2Model(config)
    tf_model.load_canonical(torch_model.canonical_state())

    print(f"deberta-v3-base size ({args.layers} layers), fp32, CPU: torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), tensorflow {tf.__version__}; median of {args.runs} runs "
          f"after {args.warmup} warm-up runs", flush=True)
    results = []
    for shape in args.shapes.split(","):
        batch, seq = (int(x) for x in shape.lower().split("x"))
        rng = np.random.default_rng(0)
        ids = rng.integers(5, config.vocab_size, size=(batch, seq)).astype(np.int64)
        mask = np.ones((batch, seq), dtype=np.int64)
        mask[0, seq - seq // 4:] = 0  # some padding, as real batches have
        tf_ids, tf_mask = tf.constant(ids), tf.constant(mask)
        pt_ids, pt_mask = torch.from_numpy(ids), torch.from_numpy(mask)

        def run_torch():
            with torch.inference_mode():
                return torch_model(input_ids=pt_ids, attention_mask=pt_mask).last_hidden_state

        def run_eager():
            return tf_model(input_ids=tf_ids, attention_mask=tf_mask, training=False).last_hidden_state

        graph = tf.function(lambda i, m: tf_model(input_ids=i, attention_mask=m, training=False).last_hidden_state)
        xla = tf.function(lambda i, m: tf_model(input_ids=i, attention_mask=m, training=False).last_hidden_state,
                          jit_compile=True)

        reference = run_torch().numpy()
        keep = mask.astype(bool)
        agreement = {name: float(np.abs(np.asarray(fn()) - reference)[keep].max()) for name, fn in (
            ("eager", run_eager), ("tf.function", lambda: graph(tf_ids, tf_mask)),
            ("xla", lambda: xla(tf_ids, tf_mask)))}
        row = {"shape": f"{batch}x{seq}", "max_abs_vs_torch": agreement}
        medians, minima = interleaved_medians({"torch": run_torch, "tf_eager": run_eager,
                                                "tf_function": lambda: graph(tf_ids, tf_mask),
                                                "tf_xla": lambda: xla(tf_ids, tf_mask)}, args.runs, args.warmup)
        row.update(medians)
        row["min"] = minima
        print(f"  {shape}: " + ", ".join(f"{k} {medians[k] * 1e3:.0f} ms (min {minima[k] * 1e3:.0f})"
                                         for k in medians) + f"; load average {os.getloadavg()[0]:.1f}", flush=True)
        results.append(row)

    print()
    header = f"{'shape':>7} | {'TF eager':>9} | {'tf.function':>11} | {'TF XLA':>9} | {'our PyTorch':>11} | " \
             f"{'eager/PT':>8} | {'tf.fn/PT':>8} | {'XLA/PT':>7} | max|TF-PT|"
    print(header)
    print("-" * len(header))
    for r in results:
        pt = r["torch"]
        print(f"{r['shape']:>7} | {r['tf_eager'] * 1e3:7.0f}ms | {r['tf_function'] * 1e3:9.0f}ms | "
              f"{r['tf_xla'] * 1e3:7.0f}ms | {pt * 1e3:9.0f}ms | {r['tf_eager'] / pt:8.2f} | "
              f"{r['tf_function'] / pt:8.2f} | {r['tf_xla'] / pt:7.2f} | "
              f"{max(r['max_abs_vs_torch'].values()):.1e}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
