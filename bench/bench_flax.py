"""Our jitted Flax (NNX) DeBERTa-v2 forward next to our PyTorch implementation, on deberta-v3-base-sized weights.

    python bench/bench_flax.py                          # CPU, fp32, shapes 8x128 and 1x512, vs deberta_xf.torch
    python bench/bench_flax.py --device gpu --dtype bfloat16 --batch 32 --seq 512    # tokens/s on a GPU

Both models hold the same random weights (the Flax model's, copied into the PyTorch one by canonical name). The
Flax forward runs through ``model.jit_call`` (``jax.jit`` over ``nnx.split(model)``; compiled once per shape
before timing); PyTorch runs eagerly under ``torch.inference_mode``. Calls alternate between the two so machine
noise hits both alike. Prints the median of ``--repeats`` runs of each, the ratio Flax / PyTorch (<= 1.0: Flax is
not slower), tokens/s, and the largest difference of the last hidden states at real tokens (parity at this
size). fp32 runs pin full-precision matmuls in both (``Precision.HIGHEST`` in the model; TF32 off in torch).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

# deberta-v3-base (microsoft/deberta-v3-base config.json)
V3_BASE = {
    "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
    "vocab_size": 128100, "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512, "type_vocab_size": 0, "initializer_range": 0.02, "layer_norm_eps": 1e-7,
    "relative_attention": True, "max_relative_positions": -1, "position_buckets": 256, "norm_rel_ebd": "layer_norm",
    "share_att_key": True, "pos_att_type": "p2c|c2p", "position_biased_input": False, "pad_token_id": 0,
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="parameter and compute dtype (as model.to(dtype) in PyTorch)")
    parser.add_argument("--batch", type=int, help="one shape: batch size (with --seq)")
    parser.add_argument("--seq", type=int, help="one shape: sequence length (with --batch)")
    parser.add_argument("--shapes", default="8x128,1x512", help="BATCHxSEQ list, used without --batch/--seq")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-torch", action="store_true", help="time the Flax model only")
    args = parser.parse_args(argv)
    if (args.batch is None) != (args.seq is None):
        parser.error("--batch and --seq go together")
    args.shape_list = ([(args.batch, args.seq)] if args.batch else
                       [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")])
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    from deberta_xf.configuration import DebertaV2Config
    from deberta_xf.flax.modeling_flax_deberta_v2 import FlaxDebertaV2Model

    if args.device == "gpu" and jax.default_backend() != "gpu":
        print(f"no GPU visible to JAX (backend {jax.default_backend()!r})", file=sys.stderr)
        return 2
    config = DebertaV2Config(**V3_BASE)
    flax_model = FlaxDebertaV2Model.from_config(config, dtype=args.dtype, seed=0)
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(flax_model.canonical_state()))

    torch_model = torch_device = None
    if not args.no_torch:
        import torch

        from deberta_xf.torch.modeling_deberta_v2 import DebertaV2Model

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch_device = "cuda" if args.device == "gpu" else "cpu"
        if torch_device == "cuda" and not torch.cuda.is_available():
            print("torch sees no GPU; timing Flax only", file=sys.stderr)
            torch_device = None
        else:
            torch_model = DebertaV2Model(config)
            torch_model.load_canonical(flax_model.canonical_state())
            torch_model = torch_model.to(torch_device, dtype=getattr(torch, args.dtype)).eval()

    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({jax.default_backend()}), "
          f"deberta-v3-base size ({n_params / 1e6:.1f}M parameters), {args.dtype}, median of {args.repeats}")
    if torch_model is not None:
        import torch

        print(f"torch {torch.__version__} on {torch_device}, {torch.get_num_threads()} threads")
    header = f"{'shape':>8} {'flax jit (s)':>13} {'tokens/s':>10}"
    if torch_model is not None:
        header += f" {'torch (s)':>10} {'tokens/s':>10} {'flax/torch':>11} {'max |diff|':>11}"
    print(header + f" {'compile (s)':>12}")

    rng = np.random.default_rng(0)
    for batch, seq in args.shape_list:
        ids = rng.integers(5, 128000, size=(batch, seq))
        mask = np.ones((batch, seq), dtype=np.int64)
        if batch > 1:
            mask[0, seq - seq // 4:] = 0  # some padding
        inputs = {"input_ids": jax.device_put(ids.astype(np.int32)), "attention_mask": jax.device_put(mask)}

        def run_flax():
            return jax.block_until_ready(flax_model.jit_call(**inputs).last_hidden_state)

        start = time.perf_counter()
        flax_out = run_flax()  # compile
        compile_s = time.perf_counter() - start
        if torch_model is not None:
            t_inputs = {"input_ids": torch.from_numpy(ids).to(torch_device),
                         "attention_mask": torch.from_numpy(mask).to(torch_device)}

            def run_torch():
                with torch.inference_mode():
                    out = torch_model(**t_inputs).last_hidden_state
                if torch_device == "cuda":
                    torch.cuda.synchronize()
                return out

            torch_out = run_torch()  # warm-up
            keep = mask.astype(bool)
            diff = float(np.abs(np.asarray(flax_out, np.float32) - torch_out.float().cpu().numpy())[keep].max())
        t_flax, t_torch = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            run_flax()
            t_flax.append(time.perf_counter() - start)
            if torch_model is not None:
                start = time.perf_counter()
                run_torch()
                t_torch.append(time.perf_counter() - start)
        m_flax = statistics.median(t_flax)
        row = f"{f'{batch}x{seq}':>8} {m_flax:>13.3f} {batch * seq / m_flax:>10.0f}"
        if torch_model is not None:
            m_torch = statistics.median(t_torch)
            row += f" {m_torch:>10.3f} {batch * seq / m_torch:>10.0f} {m_flax / m_torch:>11.3f} {diff:>11.2e}"
        print(row + f" {compile_s:>12.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
