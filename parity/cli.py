"""Tokenizer and model parity of one checkpoint across PyTorch, TensorFlow and Flax (`deberta-xf parity`).

Exit codes (DESIGN §4): 0 every check passed; 1 a check failed (a tensor over its tolerance, a framework that
could not load the checkpoint, tokenizers that disagree); 2 bad usage or bad input, with a message naming the
file, key or field.
"""

from __future__ import annotations

import argparse
import os
import sys

from deberta_xf.errors import DebertaXfError
from deberta_xf.compare import FP32_THRESHOLDS

EPILOG = """\
examples:
  deberta-xf parity fixtures/tiny-deberta-v3
  deberta-xf parity CKPT --frameworks torch,flax --device gpu --dtype bfloat16 --save-outputs gpu.npz
  deberta-xf parity CKPT --frameworks tf --compare-to gpu.npz --json report.json --junit parity.xml

fp32 thresholds (max abs, DESIGN §5): hidden states and pooled/QA/token logits {hidden:.0e}, masked-LM logits
{mlm:.0e}. bf16/fp16 thresholds were measured (parity/compare.py). Token-level outputs are compared where
attention_mask == 1; pooled outputs everywhere.
""".format(hidden=FP32_THRESHOLDS["hidden"], mlm=FP32_THRESHOLDS["mlm_logits"])


def _positive_float(flag: str):
    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} expects a number, got {value!r}") from None
        if not number > 0 or number == float("inf"):
            raise argparse.ArgumentTypeError(f"{flag} expects a positive finite number, got {value!r}")
        return number

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from deberta_xf.tasks import TASKS
    from deberta_xf.parity.harness import DEVICES, DTYPES

    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint directory (config.json + weights)")
    parser.add_argument("--frameworks", default="torch,tf,flax",
                        help="comma-separated frameworks to run (default: torch,tf,flax; missing ones are skipped)")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="auto: each framework's GPU when it sees one, else CPU (default: auto)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="compute dtype (default: float32)")
    parser.add_argument("--task", choices=TASKS, default=None,
                        help='head to run (default: from config.json "architectures", else from the weights)')
    parser.add_argument("--texts", metavar="FILE", default=None,
                        help="UTF-8 text file, one text per line (a TAB splits a sentence pair); "
                             "default: parity/sample_texts.txt")
    parser.add_argument("--attentions", action="store_true", help="also compare the attention probabilities")
    parser.add_argument("--atol-hidden", type=_positive_float("--atol-hidden"), metavar="X",
                        help="max abs tolerance of hidden states and pooled outputs (default: by --dtype)")
    parser.add_argument("--atol-logits", type=_positive_float("--atol-logits"), metavar="Y",
                        help="max abs tolerance of classification / QA / token logits (default: by --dtype)")
    parser.add_argument("--atol-mlm", type=_positive_float("--atol-mlm"), metavar="Z",
                        help="max abs tolerance of masked-LM logits (default: by --dtype)")
    parser.add_argument("--json", metavar="F", help="write the machine-readable report (JSON)")
    parser.add_argument("--markdown", metavar="F", help="write a Markdown summary (e.g. $GITHUB_STEP_SUMMARY)")
    parser.add_argument("--junit", metavar="F", help="write JUnit XML, one testcase per check")
    parser.add_argument("--plot", metavar="F", help="write a PNG of the max abs difference per layer")
    parser.add_argument("--save-outputs", metavar="F.npz", help="record inputs and outputs for a later --compare-to")
    parser.add_argument("--compare-to", metavar="F.npz",
                        help="compare against outputs recorded with --save-outputs (reuses the recorded inputs)")
    parser.add_argument("--quiet", "-q", action="store_true", help="print only failing tensors and the verdict")


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("parity", help="tokenizer and model parity across torch, tf and flax",
                                   description=__doc__.splitlines()[0], epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def _check_output_path(flag: str, path: str | None) -> None:
    if path is None:
        return
    if os.path.isdir(path):
        raise DebertaXfError(f"{flag} {path}: is a directory; expected a file name")
    parent = os.path.dirname(os.path.abspath(path))
    existing = parent
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK):
        raise DebertaXfError(f"{flag} {path}: cannot write in {existing}")


def options_from_args(args: argparse.Namespace):
    from deberta_xf.frameworks import parse_frameworks
    from deberta_xf.parity.harness import ParityOptions

    frameworks = parse_frameworks(args.frameworks)
    if len(frameworks) < 2 and not (args.compare_to or args.save_outputs):
        raise DebertaXfError(f"--frameworks {args.frameworks}: parity needs two frameworks, or --compare-to F.npz "
                             f"(against a recording), or --save-outputs F.npz (to record this one)")
    for flag in ("json", "markdown", "junit", "plot", "save_outputs"):
        _check_output_path("--" + flag.replace("_", "-"), getattr(args, flag))
    if args.plot:
        from deberta_xf.parity.report import check_plot_support

        check_plot_support()
    atol = {key: value for key, value in (("hidden", args.atol_hidden), ("logits", args.atol_logits),
                                          ("mlm_logits", args.atol_mlm)) if value is not None}
    return ParityOptions(checkpoint=args.checkpoint, frameworks=frameworks, device=args.device, dtype=args.dtype,
                         texts=args.texts, task=args.task, atol=atol, attentions=args.attentions,
                         save_outputs=args.save_outputs, compare_to=args.compare_to)


def run(args: argparse.Namespace) -> int:
    """The subcommand: run the harness, print the table, write the requested files; the exit code."""
    from deberta_xf.parity import report as render
    from deberta_xf.parity.harness import run_parity

    options = options_from_args(args)
    result = run_parity(options).as_dict()
    sys.stdout.write(render.format_text(result, verbose=not args.quiet))
    if args.json:
        render.write_text(args.json, render.to_json(result))
    if args.markdown:
        render.write_text(args.markdown, render.format_markdown(result))
    if args.junit:
        render.write_text(args.junit, render.format_junit(result))
    if args.plot:
        render.write_plot(result, args.plot)
    written = [f for f in (args.json, args.markdown, args.junit, args.plot, args.save_outputs) if f]
    if written:
        print("wrote " + ", ".join(written))
    return result["exit_code"]


def main(argv: list[str] | None = None) -> int:
    """``deberta-xf parity`` on its own (the same parser and exit codes as the console script)."""
    parser = argparse.ArgumentParser(prog="deberta-xf")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    try:
        args = parser.parse_args(["parity", *(sys.argv[1:] if argv is None else argv)])
    except SystemExit as exit_:  # argparse: 2 on bad usage, 0 on --help
        return int(exit_.code or 0)
    try:
        return int(args.func(args) or 0)
    except (DebertaXfError, OSError, ImportError) as err:
        print(f"deberta-xf parity: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
