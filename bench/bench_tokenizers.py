"""Throughput of our DeBERTa-v2 tokenizers against transformers 4.57.6's, on the golden corpus.

    python bench/bench_tokenizers.py [--repeat 10] [--corpus fixtures/tokenizer/corpus.json] [--json out.json]

Measures lines/s and MB/s (UTF-8 input bytes) for:
- slow (sentencepiece) and fast (tokenizers), one text per call: `tok(text)`;
- fast, the whole corpus in one batch call: `tok(texts)`, and padded: `tok(texts, padding=True)`
  (the padded lists of the long texts dominate that one).
Each figure is the best of `--repeat` timed passes after one warm-up pass, ours and the reference timed
alternately; the ratio is our speed / the reference's (> 1 means ours is faster). Outputs are checked to
be identical before timing. Needs transformers (the reference), which is imported here only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SPM_DIR = os.path.join(ROOT, "fixtures", "deberta-v3-spm")


def best_times(fn, ours, ref, repeat: int) -> tuple[float, float]:
    """Best wall time of `fn(ours)` and of `fn(ref)`, timed alternately so both see the same machine load."""
    fn(ours), fn(ref)  # warm-up
    times: dict[str, list[float]] = {"ours": [], "ref": []}
    for _ in range(repeat):
        for name, tok in (("ours", ours), ("ref", ref)):
            start = time.perf_counter()
            fn(tok)
            times[name].append(time.perf_counter() - start)
    return min(times["ours"]), min(times["ref"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--corpus", default=os.path.join(ROOT, "fixtures", "tokenizer", "corpus.json"))
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)

    import transformers

    from deberta_xf.tokenization_deberta_v2 import DebertaV2Tokenizer
    from deberta_xf.tokenization_deberta_v2_fast import DebertaV2TokenizerFast

    transformers.logging.set_verbosity(logging.CRITICAL)
    warnings.simplefilter("ignore")
    with open(args.corpus, encoding="utf-8") as handle:
        texts = json.load(handle)["texts"]
    megabytes = sum(len(t.encode("utf-8")) for t in texts) / 1e6

    pairs = {
        "slow": (DebertaV2Tokenizer.from_pretrained(SPM_DIR), transformers.DebertaV2Tokenizer.from_pretrained(SPM_DIR)),
        "fast": (DebertaV2TokenizerFast.from_pretrained(SPM_DIR),
                 transformers.DebertaV2TokenizerFast.from_pretrained(SPM_DIR)),
    }
    cases = []
    for kind, (ours, ref) in pairs.items():
        one_by_one = lambda tok: [tok(text)["input_ids"] for text in texts]  # noqa: E731
        assert one_by_one(ours) == one_by_one(ref), f"{kind}: outputs differ from the reference"
        cases.append((f"{kind}, one text per call", ours, ref, one_by_one))
    batch = lambda tok: tok(texts)["input_ids"]  # noqa: E731
    padded = lambda tok: tok(texts, padding=True)["input_ids"]  # noqa: E731
    for name, fn in (("fast, one batch call", batch), ("fast, batch call, padded", padded)):
        assert fn(pairs["fast"][0]) == fn(pairs["fast"][1]), f"{name}: outputs differ from the reference"
        cases.append((name, *pairs["fast"], fn))

    print(f"corpus: {len(texts)} texts, {megabytes:.3f} MB; best of {args.repeat}; "
          f"transformers {transformers.__version__}")
    header = f"{'case':<26}{'ours lines/s':>14}{'ref lines/s':>14}{'ours MB/s':>11}{'ref MB/s':>10}{'ratio':>8}"
    print(header)
    print("-" * len(header))
    results = []
    for name, ours, ref, fn in cases:
        t_ours, t_ref = best_times(fn, ours, ref, args.repeat)
        row = {
            "case": name,
            "ours_lines_per_s": len(texts) / t_ours,
            "ref_lines_per_s": len(texts) / t_ref,
            "ours_mb_per_s": megabytes / t_ours,
            "ref_mb_per_s": megabytes / t_ref,
            "ratio": t_ref / t_ours,
        }
        results.append(row)
        print(f"{name:<26}{row['ours_lines_per_s']:>14,.0f}{row['ref_lines_per_s']:>14,.0f}"
              f"{row['ours_mb_per_s']:>11.2f}{row['ref_mb_per_s']:>10.2f}{row['ratio']:>7.2f}x")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"texts": len(texts), "megabytes": megabytes, "results": results}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
