"""``deberta-xf parity CHECKPOINT``: tokenizer and model parity of one checkpoint across PyTorch, TensorFlow and Flax.

The command runs through ``deberta_xf.cli.main`` (``deberta-xf parity ...`` / ``python -m deberta_xf parity ...``),
which maps exceptions to exit codes (DESIGN §4; for users, docs/cli.md): 0 every check passed; 1 a check failed
(a tensor over its tolerance, a framework that could not load the checkpoint, tokenizers that disagree); 2 bad
usage or bad input, with a message naming the file, key or field.
"""

from __future__ import annotations

import argparse
import os
import sys

from deberta_xf.configuration import ATTN_IMPLEMENTATIONS
from deberta_xf.errors import DebertaXfError
from deberta_xf.compare import FP32_GRAD_THRESHOLDS, FP32_THRESHOLDS, positive_float_arg
from deberta_xf.frameworks import FRAMEWORKS

SUMMARY = "check that torch, tf and flax tokenize and compute the same outputs for a checkpoint"
DESCRIPTION = """\
Tokenizer and model parity of one checkpoint across PyTorch, TensorFlow and Flax.

Every installed framework loads CHECKPOINT (each its own weights file first) and runs it on the same tokenized
texts; every pair of frameworks is compared on every hidden state and output, tensor by tensor, and the checkpoint's
slow and fast tokenizers are compared with each other. The report names every compared tensor and, when a pair
fails, its first diverging layer."""

EPILOG = """\
examples:
  deberta-xf parity fixtures/tiny-deberta-v3
  deberta-xf parity CKPT --frameworks torch,flax --device gpu --dtype bfloat16 --save-outputs gpu.npz
  deberta-xf parity CKPT --frameworks tf --compare-to gpu.npz --json report.json --junit parity.xml
  deberta-xf parity CKPT --backward --labels labels.npz --markdown grads.md
  deberta-xf parity CKPT --train-steps 20 --batch-size 4 --optimizer adamw --plot loss.png

tolerances (max abs; docs/tolerances.md): float32: hidden states and pooled/QA/token logits {hidden:.0e},
masked-LM logits {mlm:.0e}; bfloat16 / float16: measured thresholds, printed in every report. Token-level outputs
are compared where attention_mask == 1; pooled outputs everywhere. --backward (float32): every parameter's
gradient {grad:.0e}, masked-LM {gmlm:.0e} (measured), the loss as logits.

exit codes: 0 every check passed; 1 a check failed; 2 bad usage or bad input; 130 interrupted.
""".format(hidden=FP32_THRESHOLDS["hidden"], mlm=FP32_THRESHOLDS["mlm_logits"], grad=FP32_GRAD_THRESHOLDS["grad"],
           gmlm=FP32_GRAD_THRESHOLDS["grad_mlm"])


_positive_float = positive_float_arg


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from deberta_xf.tasks import TASKS
    from deberta_xf.parity.harness import DEVICES, DTYPES

    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint directory (config.json + weights)")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS),
                        help=f"comma-separated frameworks to run (default: {','.join(FRAMEWORKS)}; missing ones are "
                             f"skipped)")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="auto: each framework's GPU when it sees one, else CPU (default: auto)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="compute dtype (default: float32)")
    parser.add_argument("--task", choices=TASKS, default=None,
                        help='head to run (default: from config.json "architectures", else from the weights)')
    parser.add_argument("--texts", metavar="FILE", default=None,
                        help="UTF-8 text file, one text per line (a TAB splits a sentence pair); "
                             "default: parity/sample_texts.txt")
    parser.add_argument("--attentions", action="store_true", help="also compare the attention probabilities")
    parser.add_argument("--attn-implementation", choices=ATTN_IMPLEMENTATIONS, default="eager",
                        help="attention implementation of torch and flax (tf always runs eager; --attentions runs "
                             "eager); docs/attention.md (default: eager)")
    parser.add_argument("--atol-hidden", type=_positive_float("--atol-hidden"), metavar="X",
                        help="max abs tolerance of hidden states and pooled outputs (default: by --dtype)")
    parser.add_argument("--atol-logits", type=_positive_float("--atol-logits"), metavar="Y",
                        help="max abs tolerance of classification / QA / token logits (default: by --dtype)")
    parser.add_argument("--atol-mlm", type=_positive_float("--atol-mlm"), metavar="Z",
                        help="max abs tolerance of masked-LM logits (default: by --dtype)")
    parser.add_argument("--backward", action="store_true",
                        help="also compute the task loss and its gradient w.r.t. every parameter (dropout off) in each "
                             "framework and compare them per parameter (float32 only)")
    parser.add_argument("--labels", metavar="FILE", default=None,
                        help="with --backward: .npz of the task's labels (labels / start_positions + end_positions "
                             "/ hidden_target for base); default: seeded built-in labels")
    parser.add_argument("--atol-grad", type=_positive_float("--atol-grad"), metavar="G",
                        help="with --backward: max abs tolerance of every gradient (default: measured fp32 "
                             "thresholds, {grad:.0e}; masked-LM {mlm:.0e})".format(
                                 grad=FP32_GRAD_THRESHOLDS["grad"], mlm=FP32_GRAD_THRESHOLDS["grad_mlm"]).replace(
                                     "%", "%%"))
    parser.add_argument("--train-steps", type=int, default=0, metavar="N",
                        help="also run N optimizer steps on the batch (dropout off) in each framework and compare the "
                             "loss curve and the final weights (float32 only)")
    parser.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd",
                        help="with --train-steps: torch.optim / keras.optimizers / optax SGD or AdamW (default: sgd)")
    parser.add_argument("--lr", type=_positive_float("--lr"), default=1e-3, metavar="X",
                        help="with --train-steps: learning rate (default: 1e-3)")
    parser.add_argument("--batch-size", type=int, default=None, metavar="B",
                        help="with --train-steps: split the inputs into batches of B rows and cycle over them, the "
                             "same batches in every framework (default: every step on all inputs in one batch)")
    parser.add_argument("--atol-train", type=_positive_float("--atol-train"), metavar="T",
                        help="with --train-steps: max abs tolerance of the loss curve and the final weights "
                             "(default: measured fp32 thresholds, docs/tolerances.md)")
    parser.add_argument("--json", metavar="F", help="write the machine-readable report (JSON)")
    parser.add_argument("--markdown", metavar="F", help="write a Markdown summary (e.g. $GITHUB_STEP_SUMMARY)")
    parser.add_argument("--junit", metavar="F", help="write JUnit XML, one testcase per check")
    parser.add_argument("--plot", metavar="F", help="write a PNG of the max abs difference per layer (with --backward "
                        "also per layer's gradients; with --train-steps the loss curve of each framework)")
    parser.add_argument("--save-outputs", metavar="F.npz",
                        help="record inputs and outputs for a later --compare-to (with --backward / --train-steps "
                             "also the labels, gradients, loss curve and final weights)")
    parser.add_argument("--compare-to", metavar="F.npz",
                        help="compare against outputs recorded with --save-outputs (reuses the recorded inputs)")


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("parity", help=SUMMARY, usage="%(prog)s CHECKPOINT [options]",
                                   description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=run, interrupted="no report file was written half-way (files are written atomically)")
    return parser


def _check_path_given(flag: str, path: str | None) -> None:
    """An option that takes a path, given an empty one (``--json ''``, an unset shell variable): a usage error,
    not a silent no-op."""
    if path is not None and not path.strip():
        raise DebertaXfError(f"{flag} {path!r}: empty file name; name the file" +
                             ("" if flag.isupper() else " (or leave the option out)"))


def _check_output_path(flag: str, path: str | None) -> None:
    _check_path_given(flag, path)
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

    for flag in ("checkpoint", "texts", "labels", "compare_to"):
        _check_path_given("CHECKPOINT" if flag == "checkpoint" else "--" + flag.replace("_", "-"),
                          getattr(args, flag, None))
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
    if getattr(args, "atol_grad", None) is not None:
        atol.update(grad=args.atol_grad, grad_mlm=args.atol_grad)
    if getattr(args, "atol_train", None) is not None:
        atol.update(train_loss=args.atol_train, weights=args.atol_train)
    return ParityOptions(checkpoint=args.checkpoint, frameworks=frameworks, device=args.device, dtype=args.dtype,
                         texts=args.texts, task=args.task, atol=atol, attentions=args.attentions,
                         save_outputs=args.save_outputs, compare_to=args.compare_to,
                         backward=getattr(args, "backward", False), labels=getattr(args, "labels", None),
                         train_steps=getattr(args, "train_steps", 0), optimizer=getattr(args, "optimizer", "sgd"),
                         lr=getattr(args, "lr", 1e-3), batch_size=getattr(args, "batch_size", None),
                         attn_implementation=getattr(args, "attn_implementation", "eager"))


class Progress:
    """What the harness is doing, as one self-overwriting line on stderr; only when stderr is a terminal."""

    def __init__(self, enabled: bool | None = None):
        self.enabled = os.isatty(2) if enabled is None else enabled
        self.shown = False

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        import shutil

        width = max(20, shutil.get_terminal_size((100, 24)).columns - 1)
        line = f"parity: {message}"
        if len(line) > width:
            line = line[:width - 3] + "..."
        sys.stderr.write("\r\x1b[K" + line)
        sys.stderr.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self.shown = False


def run(args: argparse.Namespace) -> int:
    """The subcommand: run the harness, print the table (``--quiet``: the verdict and what failed), write the
    requested files; the exit code."""
    from deberta_xf.parity import report as render
    from deberta_xf.parity.harness import run_parity

    quiet = getattr(args, "quiet", False)
    options = options_from_args(args)
    progress = Progress()
    try:
        result = run_parity(options, progress=progress).as_dict()
    finally:
        progress.clear()
    sys.stdout.write(render.format_quiet(result) if quiet else render.format_text(result))
    sys.stdout.flush()
    try:
        for path, text in ((args.json, render.to_json), (args.markdown, render.format_markdown),
                           (args.junit, render.format_junit)):
            if path:
                progress(f"writing {path}")
                render.write_text(path, text(result))
        if args.plot:
            progress(f"writing {args.plot}")
            render.write_plot(result, args.plot)
    finally:
        progress.clear()
    written = [f for f in (args.json, args.markdown, args.junit, args.plot, args.save_outputs) if f]
    if written and not quiet:
        print("wrote " + ", ".join(written))
    return result["exit_code"]
