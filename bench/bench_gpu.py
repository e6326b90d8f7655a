"""Attention implementations on one GPU: tokens/s and peak memory of our PyTorch and Flax models, against the reference.

    python bench/bench_gpu.py                      # bf16 32x512 and 4x4096, fp32 32x512; deberta-v3-base sizes
    python bench/bench_gpu.py --smoke              # tiny config, one tiny fp32 shape: every row runs, also on CPU
    python bench/bench_gpu.py --shapes bfloat16:8x1024 --repeats 20 --rows torch-eager,torch-fused,reference

Rows (each built through ``deberta_xf.create_model(..., attn_implementation=...)`` from the same random weights,
written once to a temporary checkpoint): PyTorch eager / sdpa / fused / torch.compile (eager, inductor), Flax
eager / sdpa / fused under ``jax.jit``, and, when ``transformers`` is installed, its public ``DebertaV2Model`` with
the same weights (the baseline: ratios are tokens/s of the row / tokens/s of the reference). A row that cannot run
(Flax without the argument, fused on CPU without TRITON_INTERPRET=1, out of memory) is reported as unavailable with
the reason. No TensorFlow, no network. Inference only (eval mode, no gradients), inputs with no padding.

Peak memory: PyTorch ``torch.cuda.max_memory_allocated`` during the timed calls (weights included); Flax: XLA's
compiled-memory estimate (arguments + outputs + temporaries of the jitted forward); "-" where it cannot be
measured (PyTorch on CPU). ``max |d|`` is the largest difference of the last hidden state from PyTorch eager in the
same dtype (a sanity check, not a parity verdict: ``deberta-xf parity`` is that).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

import deberta_xf  # noqa: E402
from deberta_xf.configuration import DebertaV2Config  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
V3_BASE = os.path.join(HERE, os.pardir, "fixtures", "published-configs", "deberta-v3-base.json")
TINY = os.path.join(HERE, os.pardir, "fixtures", "tiny-deberta-v3", "config.json")
ROWS = ("torch-eager", "torch-sdpa", "torch-fused", "torch-compile", "flax-eager", "flax-sdpa", "flax-fused",
        "reference")
DEFAULT_SHAPES = "bfloat16:32x512,bfloat16:4x4096,float32:32x512"
SMOKE_SHAPES = "float32:2x24"


def parse_shapes(text: str) -> list[tuple[str, int, int]]:
    """``bfloat16:32x512,float32:4x64`` -> [(dtype, batch, seq), ...]"""
    shapes = []
    for item in text.split(","):
        dtype, _, size = item.strip().rpartition(":")
        batch, seq = (int(v) for v in size.split("x"))
        shapes.append((dtype or "float32", batch, seq))
    return shapes


class Unavailable(Exception):
    """A row that cannot run here, with the reason."""


# === PyTorch rows ===============================================================================================
def torch_row(name: str, checkpoint: str, dtype: str, device, compile_backend: str = "inductor"):
    """(forward(ids, mask) -> last hidden state, synchronize, memory reset, memory peak)."""
    import torch

    if name == "reference":
        try:
            import transformers
        except ImportError:
            raise Unavailable("transformers is not installed") from None
        with open(os.path.join(checkpoint, "config.json")) as f:
            config = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
        model = transformers.DebertaV2Model(transformers.DebertaV2Config(**config)).eval()
        ours = deberta_xf.create_model("torch", "base", checkpoint=checkpoint)
        missing, unexpected = model.load_state_dict(ours.state_dict(), strict=False)
        if unexpected or any("position_ids" not in m for m in missing):
            raise Unavailable(f"the reference's weight names differ: missing {missing}, unexpected {unexpected}")
        del ours
        label = f"transformers {transformers.__version__}"
    else:
        implementation = name.split("-", 1)[1]
        if implementation == "fused" and device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            raise Unavailable("fused runs a Triton kernel: needs a GPU (or TRITON_INTERPRET=1 on CPU)")
        model = deberta_xf.create_model("torch", "base", checkpoint=checkpoint,
                                        attn_implementation="eager" if implementation == "compile" else implementation)
        label = f"torch {torch.__version__}"
    model = model.to(device=device, dtype=getattr(torch, dtype))
    run = model
    if name == "torch-compile":
        run = torch.compile(model, backend=compile_backend)
        label += f" (torch.compile {compile_backend})"

    def forward(ids, mask):
        with torch.inference_mode():
            return run(input_ids=ids, attention_mask=mask).last_hidden_state

    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    reset = torch.cuda.reset_peak_memory_stats if cuda else (lambda: None)
    peak = (lambda: torch.cuda.max_memory_allocated()) if cuda else (lambda: None)
    return forward, sync, reset, peak, label


def torch_inputs(batch: int, seq: int, vocab: int, device):
    import torch

    generator = torch.Generator().manual_seed(batch * 100003 + seq)
    ids = torch.randint(5, vocab, (batch, seq), generator=generator)
    return ids.to(device), torch.ones_like(ids).to(device)


# === Flax rows ==================================================================================================
def flax_row(name: str, checkpoint: str, dtype: str, ids: np.ndarray, mask: np.ndarray):
    """(forward(ids, mask) -> last hidden state, block, peak-memory estimate in bytes, label)."""
    try:
        import jax
        from flax import nnx
    except ImportError:
        raise Unavailable("flax is not installed") from None
    implementation = name.split("-", 1)[1]
    try:
        model = deberta_xf.create_model("flax", "base", checkpoint=checkpoint, dtype=dtype,
                                        attn_implementation=implementation)
    except TypeError as err:  # a Flax model without the argument
        raise Unavailable(f"flax does not take attn_implementation: {err}") from None
    graphdef, state = nnx.split(model)

    def pure(state, ids, mask):
        return nnx.merge(graphdef, state)(input_ids=ids, attention_mask=mask).last_hidden_state

    compiled = jax.jit(pure).lower(state, ids, mask).compile()
    memory = None
    analysis = compiled.memory_analysis()
    if analysis is not None:
        memory = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes)

    def forward(ids_, mask_):
        return compiled(state, ids_, mask_)

    return forward, (lambda out: jax.block_until_ready(out)), memory, f"jax {jax.__version__}"


# === timing =====================================================================================================
def time_calls(call, repeats: int, warmup: int) -> tuple[float, object]:
    """Median seconds per call after ``warmup`` calls; the last output."""
    out = None
    for _ in range(warmup):
        out = call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def run_row(name, checkpoint, dtype, ids, mask, repeats, warmup, device, compile_backend) -> dict:
    """One row: its model is built here and freed on return, so the next row's peak memory does not hold it."""
    batch, seq = ids.shape
    row = {"row": name, "shape": f"{dtype} {batch}x{seq}", "seconds": None, "tokens_s": None, "peak_mib": None,
           "max_diff": None, "note": ""}
    try:
        if name.startswith("flax"):
            ids_np, mask_np = ids.cpu().numpy(), mask.cpu().numpy()
            forward, block, memory, label = flax_row(name, checkpoint, dtype, ids_np, mask_np)
            seconds, out = time_calls(lambda: block(forward(ids_np, mask_np)), repeats, warmup)
        else:
            forward, sync, reset, peak, label = torch_row(name, checkpoint, dtype, device, compile_backend)
            reset()

            def call():
                out = forward(ids, mask)
                sync()
                return out

            seconds, out = time_calls(call, repeats, warmup)
            memory = peak()
        row.update(seconds=seconds, tokens_s=batch * seq / seconds, note=label, output=to_numpy(out),
                   peak_mib=None if memory is None else memory / 2**20)
    except Unavailable as why:
        row["note"] = f"unavailable: {why}"
    except Exception as err:  # out of memory, a compile failure: reported, the other rows still run
        row["note"] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"
    return row


def bench_shape(rows, checkpoint, config, dtype, batch, seq, repeats, warmup, device, compile_backend):
    import torch

    ids, mask = torch_inputs(batch, seq, config.vocab_size, device)
    results = []
    for name in rows:
        results.append(run_row(name, checkpoint, dtype, ids, mask, repeats, warmup, device, compile_backend))
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    baseline = next((r["tokens_s"] for r in results if r["row"] == "reference" and r["tokens_s"]), None)
    eager = next((r["output"] for r in results if r["row"] == "torch-eager" and "output" in r), None)
    for row in results:
        if eager is not None and "output" in row:
            row["max_diff"] = float(np.abs(row["output"] - eager).max())
        row["ratio"] = row["tokens_s"] / baseline if baseline and row["tokens_s"] else None
        row.pop("output", None)
    return results


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help=f"tiny config, shape {SMOKE_SHAPES}, 2 repeats, torch.compile with aot_eager (no code "
                             f"generation): a check that every row runs, in seconds on CPU")
    parser.add_argument("--shapes", default=None, help=f"DTYPE:BATCHxSEQ list (default: {DEFAULT_SHAPES})")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per row (default: 10; smoke: 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls first (default: 3; smoke: 1)")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows (default: {','.join(ROWS)})")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--json", metavar="F", help="also write the results as JSON")
    args = parser.parse_args(argv)

    import torch

    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"--rows: unknown {', '.join(unknown)}; expected some of {', '.join(ROWS)}")
    shapes = parse_shapes(args.shapes or (SMOKE_SHAPES if args.smoke else DEFAULT_SHAPES))
    repeats = args.repeats or (2 if args.smoke else 10)
    warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 3)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 rows in full fp32, as parity runs them
    torch.set_float32_matmul_precision("highest")

    config = DebertaV2Config.from_json_file(TINY if args.smoke else V3_BASE)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"deberta-xf bench_gpu: {'tiny config (smoke)' if args.smoke else 'deberta-v3-base sizes'}, random weights, "
          f"{where}; {repeats} timed calls after {warmup} warm-up; ratio = tokens/s / reference tokens/s")
    all_results = []
    with tempfile.TemporaryDirectory() as checkpoint:
        deberta_xf.create_model("torch", "base", config=config).save_pretrained(checkpoint)
        for dtype, batch, seq in shapes:
            results = bench_shape(rows, checkpoint, config, dtype, batch, seq, repeats, warmup, device,
                                  "aot_eager" if args.smoke else "inductor")
            print(f"\n{dtype} {batch}x{seq}")
            print(f"  {'row':<14} {'ms/call':>9} {'tokens/s':>11} {'peak MiB':>9} {'vs ref':>7} {'max |d|':>9}  note")
            for r in results:
                print(f"  {r['row']:<14} {fmt(r['seconds'] and r['seconds'] * 1e3, '9.2f'):>9} "
                      f"{fmt(r['tokens_s'], '11.0f'):>11} {fmt(r['peak_mib'], '9.0f'):>9} "
                      f"{fmt(r['ratio'], '7.2f'):>7} {fmt(r['max_diff'], '9.2e'):>9}  {r['note']}")
            all_results += results
    if args.json:
        with open(args.json, "w") as f:
            json.dump(all_results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
