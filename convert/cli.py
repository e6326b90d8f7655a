"""``deberta-xf convert SRC DST --to {torch,tf,flax}``: convert a checkpoint to another framework or format.

The command's help text is DESCRIPTION below; the pipeline is convert/convert.py, verification convert/verify.py.
The command runs through ``deberta_xf.cli.main`` (``deberta-xf convert ...`` / ``python -m deberta_xf convert ...``),
which maps exceptions to exit codes.
"""

from __future__ import annotations

import argparse
import os
import sys

from deberta_xf.compare import positive_float_arg
from deberta_xf.errors import DebertaXfError
from deberta_xf.formats import DEFAULT_FORMAT, FORMATS
from deberta_xf.frameworks import FRAMEWORKS, parse_frameworks
from deberta_xf.tasks import TASKS

SUMMARY = "convert a checkpoint to another framework or weights format, verified by default"
DESCRIPTION = """Convert a DeBERTa-v2/v3 checkpoint to another framework or format.

SRC is a checkpoint directory (config.json + weights in any supported format) or a weights file with --config.
DST becomes a complete checkpoint directory: config.json, the weights in the target's format, and SRC's tokenizer
files. The result is verified by default and written atomically: DST appears only when everything succeeded.

exit codes: 0 converted (and verified); 1 verification failed (nothing kept); 2 bad usage or bad input;
130 interrupted (nothing written).
"""

DTYPES = ("keep", "float32", "float16", "bfloat16")

EPILOG = """\
formats written (--format): torch: safetensors (default) | bin; tf: tf_h5 (default, the reference's
tf_model.h5) | keras_h5 (model.weights.h5); flax: msgpack (default, flax_model.msgpack) | safetensors.
Any of them is read from SRC. Formats, file names and the weight-naming schema: docs/formats.md;
verification thresholds: docs/tolerances.md.

examples:
  deberta-xf convert ./deberta-v3-base ./deberta-v3-base-tf --to tf
  deberta-xf convert ./deberta-v3-base ./deberta-v3-base-flax --to flax --dtype bfloat16
  deberta-xf convert weights.bin ./out --config config.json --to torch --task masked-lm
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SRC", help="checkpoint directory, or a weights file (then --config)")
    parser.add_argument("destination", metavar="DST", help="output checkpoint directory (must not exist unless "
                                                           "--force)")
    parser.add_argument("--to", required=True, choices=FRAMEWORKS, help="target framework")
    parser.add_argument("--format", choices=list(FORMATS), default=None,
                        help="weights format to write, where the framework has two (default: "
                             + ", ".join(f"{k}: {v}" for k, v in DEFAULT_FORMAT.items()) + ")")
    parser.add_argument("--dtype", choices=DTYPES, default="keep",
                        help="cast floating-point weights (default: keep each tensor's stored dtype)")
    parser.add_argument("--config", metavar="CONFIG.json", default=None,
                        help="model config (default: config.json of SRC; required when SRC is a weights file)")
    parser.add_argument("--task", choices=TASKS, default=None,
                        help="model to convert into (default: inferred from the head tensors of SRC)")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing DST (only once the conversion has succeeded)")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="skip loading the result in the target framework and comparing it with the source")
    parser.add_argument("--keep-rtd", action="store_true",
                        help="keep the replaced-token-detection head of v3 checkpoints (mask_predictions.*); "
                             "only safetensors and bin can carry it")
    parser.add_argument("--allow-nonfinite", action="store_true",
                        help="convert weights that contain NaN or Inf instead of refusing them")
    parser.add_argument("--max-shard-size", metavar="SIZE", default=None,
                        help="split safetensors / bin output into shards of at most SIZE (bytes, or '5GB', '500MiB') "
                             "with the reference's *.index.json (default: one file)")
    parser.add_argument("--atol", type=positive_float_arg("--atol"), default=None, metavar="X",
                        help="verification: max abs difference allowed for every output (default: the documented "
                             "float32 thresholds, or relative ones after a lossy --dtype)")
    parser.add_argument("--rtol", type=positive_float_arg("--rtol"), default=None, metavar="R",
                        help="verification: also allow R x max |source output| (added to the --atol threshold)")
    parser.add_argument("--verify-frameworks", metavar="LIST", default=None,
                        help="verification: the frameworks that load DST and are compared with the source's run, "
                             "comma-separated (default: the --to framework)")


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("convert", help=SUMMARY, usage="%(prog)s SRC DST --to {" + ",".join(FRAMEWORKS) + "} [options]",
                                   description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=run, interrupted="nothing was written (DST appears only once complete)")
    return parser


def _progress_bar(total_tensors: int, total_bytes: int):
    """A tqdm bar over bytes, on a terminal only."""
    if not os.isatty(2):
        return None
    from tqdm.auto import tqdm

    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc="converting", leave=False)

    def tick(nbytes: int) -> None:
        bar.update(nbytes)
        if bar.n >= total_bytes:
            bar.close()

    return tick


def run(args: argparse.Namespace) -> int:
    """The subcommand: convert, print the plan, the verification table and the result line; the exit code.

    ``--quiet``: only the result line, and on a failed verification its table."""
    from deberta_xf.convert.convert import convert_checkpoint

    for flag, path in (("SRC", args.source), ("DST", args.destination), ("--config", args.config)):
        if path is not None and not path.strip():
            raise DebertaXfError(f"{flag} {path!r}: empty path; name the " +
                                 ("checkpoint directory to write" if flag == "DST" else "file or directory"))
    quiet = getattr(args, "quiet", False)
    result = convert_checkpoint(
        args.source, args.destination, args.to, format=args.format, dtype=args.dtype, config=args.config,
        task=args.task, force=args.force, verify=args.verify, keep_rtd=args.keep_rtd,
        allow_nonfinite=args.allow_nonfinite, max_shard_size=args.max_shard_size, atol=args.atol, rtol=args.rtol,
        verify_frameworks=(None if args.verify_frameworks is None
                           else parse_frameworks(args.verify_frameworks, "--verify-frameworks")),
        progress=_progress_bar,
        log=(lambda s: None) if quiet else (lambda s: print(s, flush=True)),
        status=lambda s: print(s, file=sys.stderr, flush=True) if os.isatty(2) else None)
    if result.verification is not None and not (quiet and result.kept):
        print(result.verification.table())
    if not result.kept:
        print(f"deberta-xf convert: the converted checkpoint failed verification and was not kept; "
              f"{args.destination} is unchanged", file=sys.stderr)
        return 1
    verified = "verified" if result.verification is not None else "not verified (--no-verify)"
    print(f"converted {args.source} -> {args.destination} ({args.to}, {result.plan.target_format.name}), {verified}")
    return 0
