"""Every CPU forward in one run, as ratios: the reference, our PyTorch (eager, sdpa, compiled), Flax jit, TF XLA.

    python bench/bench_cpu.py [--shapes 8x128,1x512] [--runs 5] [--rows reference,eager,sdpa,compiled,flax,tf]
                              [--convert] [--json out.json]

deberta-v3-base-sized random weights (184M parameters), identical in every row (copied by canonical name; the
outputs are compared), fp32, inference, some padding in the batch. Rows:

  reference   transformers 4.57.6 ``DebertaV2Model`` (the baseline; needs the `reference` extra)
  eager       ours, ``attn_implementation="eager"`` (the default; bit-identical to the reference)
  sdpa        ours, ``attn_implementation="sdpa"``
  compiled    ``torch.compile(ours)`` (inductor, default mode; compiled once per shape before timing)
  flax        ``FlaxDebertaV2Model`` through ``model.jit_call`` (``jax.jit`` over ``nnx.split(model)``)
  tf          ``TFDebertaV2Model`` under ``tf.function(jit_compile=True)`` (XLA)

Each time is the median of ``--runs`` calls after ``--warmup`` untimed ones, all rows timed in interleaved rounds
(rotating order) so a change in machine load hits them alike. The table gives each row's ratio to the reference
and to our eager PyTorch.

Then the **breakdown** that says where the time goes: the PyTorch profiler's self time of our eager forward and the
reference's by op, split into matrix products (addmm, bmm, mm: work both must do, the same FLOPs) and the rest
(gathers, scaling, masking, softmax, copies); ``GEMM floor`` is our GEMM time over the reference's total, the
ratio no change outside the matrix products can go below. And the **per-op timings** of the encoder layer's matrix
products at the same shapes in each framework (torch, XLA:CPU through jax and through TF), which show whether the
Flax/TF ratios come from XLA:CPU's GEMM kernels (timed in per-framework blocks: :func:`blocked_medians`).

``--convert`` also runs bench/bench_convert.py (884M-parameter checkpoint, every format pair against a file copy)
in a subprocess and appends its table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
try:  # triton (which torch imports lazily) must be loaded before TensorFlow: both bundle LLVM
    import triton  # noqa: F401
except ImportError:
    pass

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.pardir))
from bench_tf import interleaved_medians  # noqa: E402  (medians and minima of calls timed in rotating rounds)
V3_BASE = os.path.join(HERE, os.pardir, "fixtures", "published-configs", "deberta-v3-base.json")
ROWS = ("reference", "eager", "sdpa", "compiled", "flax", "tf")
GEMM_OPS = ("aten::addmm", "aten::bmm", "aten::mm", "aten::baddbmm")


# ---------------------------------------------------------------------------------------------------------------
# The models, all holding the same weights
def build_models(rows: list[str]) -> tuple[dict, object]:
    """name -> a callable (ids, mask) -> last hidden state as numpy, for each row; and our eager torch model."""
    import torch

    from deberta_xf import DebertaV2Config
    from deberta_xf.torch.modeling_deberta_v2 import DebertaV2Model

    with open(V3_BASE) as f:
        config_dict = json.load(f)
    config = DebertaV2Config.from_dict(config_dict)
    ours = DebertaV2Model.from_config(config, seed=0)
    weights = ours.canonical_state()
    runners = {}

    def torch_runner(model):
        def run(ids, mask):
            with torch.inference_mode():
                return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state
        return run

    if "reference" in rows:
        from transformers import DebertaV2Config as HFConfig
        from transformers import DebertaV2Model as HFModel

        reference = HFModel(HFConfig(**config_dict)).eval()
        reference.load_state_dict(ours.state_dict(), strict=False)
        runners["reference"] = torch_runner(reference)
    if "eager" in rows:
        runners["eager"] = torch_runner(ours)
    if "sdpa" in rows:
        sdpa = DebertaV2Model.from_config(config, attn_implementation="sdpa")
        sdpa.load_canonical(weights)
        runners["sdpa"] = torch_runner(sdpa)
    if "compiled" in rows:
        runners["compiled"] = torch_runner(torch.compile(ours))
    if "flax" in rows:
        import jax

        from deberta_xf.flax.modeling_flax_deberta_v2 import FlaxDebertaV2Model

        flax_model = FlaxDebertaV2Model.from_config(config, seed=0)
        flax_model.load_canonical(weights)

        def run_flax(ids, mask):
            out = flax_model.jit_call(input_ids=ids.astype(np.int32), attention_mask=mask).last_hidden_state
            return np.asarray(jax.block_until_ready(out))
        runners["flax"] = run_flax
    if "tf" in rows:
        import tensorflow as tf

        from deberta_xf.tf.modeling_tf_deberta_v2 import TFDebertaV2Model

        tf_model = TFDebertaV2Model(config)
        tf_model.load_canonical(weights)
        xla = tf.function(lambda i, m: tf_model(input_ids=i, attention_mask=m, training=False).last_hidden_state,
                          jit_compile=True)
        runners["tf"] = lambda ids, mask: xla(tf.constant(ids), tf.constant(mask)).numpy()
    return runners, ours


# ---------------------------------------------------------------------------------------------------------------
# Breakdown
def profile_split(run, ids, mask) -> dict[str, float]:
    """Self CPU seconds of one forward: matrix products vs the rest, and the five largest other ops."""
    from torch.profiler import profile

    run(ids, mask)
    with profile() as prof:
        run(ids, mask)
    gemm = rest = 0.0
    others = {}
    for event in prof.key_averages():
        seconds = event.self_cpu_time_total / 1e6
        if event.key in GEMM_OPS:
            gemm += seconds
        else:
            rest += seconds
            others[event.key] = seconds
    top = dict(sorted(others.items(), key=lambda kv: -kv[1])[:5])
    return {"gemm_s": gemm, "rest_s": rest, "top_rest": top}


def gemm_shapes(batch: int, seq: int, hidden: int = 768, ffn: int = 3072) -> dict[str, tuple[int, int, int]]:
    """The encoder layer's matrix products as (M, K, N): the four attention projections, the FFN's two."""
    tokens = batch * seq
    return {"qkvo": (tokens, hidden, hidden), "ffn up": (tokens, hidden, ffn), "ffn down": (tokens, ffn, hidden)}


def per_op_timings(rows: list[str], batch: int, seq: int, runs: int) -> dict[str, dict[str, float]]:
    """GFLOP/s of each layer matrix product in torch and, where their rows are run, XLA:CPU via jax and TF."""
    import torch

    rng = np.random.default_rng(0)
    out: dict[str, dict[str, float]] = {}
    for label, (m, k, n) in gemm_shapes(batch, seq).items():
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        fns = {}
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        fns["torch"] = lambda: torch.mm(ta, tb)
        if "flax" in rows:
            import jax
            import jax.numpy as jnp

            ja, jb = jnp.asarray(a), jnp.asarray(b)
            jmm = jax.jit(lambda x, y: jnp.matmul(x, y, precision=jax.lax.Precision.HIGHEST))
            fns["xla (jax)"] = lambda: jmm(ja, jb).block_until_ready()
        if "tf" in rows:
            import tensorflow as tf

            fa, fb = tf.constant(a), tf.constant(b)
            tmm = tf.function(lambda x, y: tf.matmul(x, y), jit_compile=True)
            fns["xla (tf)"] = lambda: tmm(fa, fb).numpy()
        medians = blocked_medians(fns, runs)
        out[label] = {name: 2 * m * k * n / seconds / 1e9 for name, seconds in medians.items()}
    return out


def blocked_medians(fns: dict, runs: int, rounds: int = 3, settle: int = 2) -> dict[str, float]:
    """Median time of one call of each function, timed in blocks of ``settle`` untimed and ``runs`` timed calls, one
    block per function per round (rotating order). Calls of a few milliseconds cannot be interleaved one by one
    across frameworks: torch's OpenMP workers keep spinning for a while after each op and take a core from the
    XLA call that follows (on 2 cores this halved XLA's measured GEMM speed); the untimed calls absorb that."""
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            for _ in range(settle):
                fns[name]()
            for _ in range(runs):
                start = time.perf_counter()
                fns[name]()
                times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


# ---------------------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="8x128,1x512", help="comma-separated BATCHxSEQ")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {','.join(ROWS)}")
    parser.add_argument("--convert", action="store_true", help="also run bench/bench_convert.py and show its table")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    rows = [r for r in args.rows.split(",") if r]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        parser.error(f"--rows: unknown {unknown}; choose from {','.join(ROWS)}")
    if "reference" in rows:
        try:
            import transformers  # noqa: F401
        except ImportError:
            print("transformers is not installed: no reference row (ratios are to our eager PyTorch)")
            rows.remove("reference")

    import torch

    runners, ours = build_models(rows)
    baseline = "reference" if "reference" in rows else rows[0]
    print(f"deberta-v3-base size ({sum(p.numel() for p in ours.parameters()) / 1e6:.1f}M parameters), fp32, CPU, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads); median of {args.runs} interleaved runs",
          flush=True)
    results = []
    for shape in args.shapes.split(","):
        batch, seq = (int(x) for x in shape.lower().split("x"))
        rng = np.random.default_rng(0)
        ids = rng.integers(5, 128000, size=(batch, seq)).astype(np.int64)
        mask = np.ones((batch, seq), dtype=np.int64)
        if batch > 1:
            mask[0, seq - seq // 4:] = 0
        keep = mask.astype(bool)
        start = time.perf_counter()
        outputs = {name: np.asarray(run(ids, mask)) for name, run in runners.items()}  # compiles happen here
        first_call_s = time.perf_counter() - start
        agree = {name: float(np.abs(out - outputs[baseline])[keep].max()) for name, out in outputs.items()}
        medians = interleaved_medians({name: (lambda r=run: r(ids, mask)) for name, run in runners.items()},
                                      args.runs, args.warmup)[0]
        row = {"shape": shape, "seconds": medians, "max_abs_vs_baseline": agree, "first_calls_s": first_call_s}
        if "eager" in runners:
            row["ours"] = profile_split(runners["eager"], ids, mask)
        if "reference" in runners:
            row["reference"] = profile_split(runners["reference"], ids, mask)
        row["gemm_gflops"] = per_op_timings(rows, batch, seq, args.runs)
        results.append(row)
        print(f"  {shape}: " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in medians.items()), flush=True)

    print(f"\n{'shape':>7} {'row':>10} {'ms':>8} {'/ ' + baseline:>12} {'/ eager':>8} {'max |diff|':>11}")
    for r in results:
        for name, seconds in r["seconds"].items():
            vs_eager = f"{seconds / r['seconds']['eager']:8.3f}" if "eager" in r["seconds"] else f"{'-':>8}"
            print(f"{r['shape']:>7} {name:>10} {seconds * 1e3:8.0f} {seconds / r['seconds'][baseline]:12.3f} "
                  f"{vs_eager} {r['max_abs_vs_baseline'][name]:11.1e}")
    if any("ours" in r for r in results):
        print("\nbreakdown (profiler self time, one forward): matrix products vs the rest")
        for r in results:
            for who in ("ours", "reference"):
                if who in r:
                    s = r[who]
                    top = ", ".join(f"{k.replace('aten::', '')} {v * 1e3:.0f}" for k, v in s["top_rest"].items())
                    print(f"{r['shape']:>7} {who:>10}: GEMM {s['gemm_s'] * 1e3:.0f} ms, rest {s['rest_s'] * 1e3:.0f} "
                          f"ms ({top})")
            if "ours" in r and "reference" in r:
                ref_total = r["reference"]["gemm_s"] + r["reference"]["rest_s"]
                floor = r["ours"]["gemm_s"] / ref_total
                r["gemm_floor"] = floor
                print(f"{r['shape']:>7} {'':>10}  GEMM floor (our GEMM time / the reference's total): {floor:.3f}")
    print("\nper-op: the layer's matrix products at these shapes, GFLOP/s (fp32)")
    for r in results:
        for label, by_framework in r["gemm_gflops"].items():
            print(f"{r['shape']:>7} {label:>10}: " + ", ".join(f"{k} {v:.0f}" for k, v in by_framework.items()))
    if args.convert:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "convert.json")
            subprocess.run([sys.executable, os.path.join(HERE, "bench_convert.py"), "--json", out], check=True)
            with open(out) as f:
                results.append({"convert": json.load(f)})
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
