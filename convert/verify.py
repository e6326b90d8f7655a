"""Verification of a conversion (on by default in ``deberta-xf convert``).

Two checks on the converted checkpoint, while it is still in its temporary directory:

1. **Tensors**: every tensor is read back from the written file (through the format's reader, i.e. the way every
   framework loads it) and compared bit for bit with the source tensor after the ``--dtype`` cast.
2. **Outputs**: the source is loaded in the framework that writes its format by default (safetensors / bin:
   torch, tf_model.h5 / .weights.h5: tf, msgpack: flax), the converted checkpoint in the target framework
   (``from_pretrained`` on the temporary directory), both in float32; they are run on one fixed, padded batch and
   every output (hidden states, last hidden state, logits) is compared by the DESIGN §5 rules of
   :mod:`deberta_xf.compare` (token-level outputs where ``attention_mask == 1``). Each framework loads and runs in
   a process of its own (:func:`run_in_subprocess`, one after the other), so that no two frameworks are imported
   into one process and no two models are in memory at once: the conversion's peak memory is this process's
   plus one framework's load and forward pass.

The batch is tokenized from fixed sentence pairs with the checkpoint's own tokenizer when SRC has tokenizer files
(``tokenizer.json`` -> the fast tokenizer, else ``spm.model`` -> the sentencepiece one); otherwise it is made of
deterministic token ids (seeded), and the report says which.

Thresholds (max abs difference):
- float32 (and any cast that loses nothing, e.g. fp16 -> fp32): DESIGN §5, 5e-5 for hidden states and pooled /
  token / QA logits, 1e-4 for masked-LM logits.
- a cast to float16 / bfloat16 (``--dtype``): the converted weights are loaded, upcast to float32, and compared
  with the float32 source, so the outputs differ by what rounding the weights to 11 (fp16) or 8 (bf16) mantissa
  bits does to them. The threshold is relative to the size of each output:
  ``max abs <= LOSSY_RTOL[dtype] * max(1, max |reference output|)``, with ``LOSSY_RTOL`` = 1e-2 for float16 and
  5e-2 for bfloat16. (Measured on the fixture checkpoints: at most ~1e-3 (fp16) and ~1e-2 (bf16) relative;
  a wrong layout or a lost tensor is off by O(1).) The tensors must still equal the source rounded to that dtype
  bit for bit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Sequence

import numpy as np

from deberta_xf import errors, schema
from deberta_xf.errors import DebertaXfError
from deberta_xf.compare import FP32_THRESHOLDS, Comparison, compare_arrays, output_order, threshold, token_mask
from deberta_xf.formats import open_checked
from deberta_xf.frameworks import get_framework

if TYPE_CHECKING:  # the plan is made by deberta_xf.convert.convert, which imports this module
    from deberta_xf.convert.convert import ConversionPlan

LOSSY_RTOL = {"float16": 1e-2, "bfloat16": 5e-2}
TEXTS = ("The quick brown fox jumps over the lazy dog.",
         "DeBERTa improves BERT and RoBERTa using disentangled attention and an enhanced mask decoder.")
PAIRS = ("Is the dog lazy?", "What does it improve?")
CHOICES = (("It is asleep.", "The fox is faster than the dog, which does not move at all."),
           ("BERT.", "Attention over content and relative positions, separately."))
MAX_TOKENS = 48
SEED = 0


# ---------------------------------------------------------------------------------------------------------------
# Inputs
def _tokenizer(directory: str | None):
    """The checkpoint's tokenizer, or (None, why not)."""
    if directory is None:
        return None, "SRC is a bare weights file"
    has_fast = os.path.isfile(os.path.join(directory, "tokenizer.json"))
    has_spm = os.path.isfile(os.path.join(directory, "spm.model"))
    if not (has_fast or has_spm):
        return None, "SRC has no tokenizer files (spm.model / tokenizer.json)"
    name = "DebertaV2TokenizerFast" if has_fast else "DebertaV2Tokenizer"
    try:
        import deberta_xf

        return getattr(deberta_xf, name).from_pretrained(directory), f"{'tokenizer.json' if has_fast else 'spm.model'}"
    except (ImportError, AttributeError) as err:
        return None, f"the tokenizer is not available ({err})"
    except Exception as err:  # a broken tokenizer file must not stop a weights conversion
        return None, f"its tokenizer could not be loaded ({type(err).__name__}: {err})"


def make_inputs(config, task: str, directory: str | None) -> tuple[dict[str, np.ndarray], str]:
    """One fixed padded batch for ``task`` and a sentence saying where it came from."""
    max_length = min(MAX_TOKENS, config.max_position_embeddings) if config.position_biased_input else MAX_TOKENS
    tokenizer, source = _tokenizer(directory)
    if tokenizer is not None:
        if task == "multiple-choice":
            first = [t for t in TEXTS for _ in range(2)]
            second = [c for pair in CHOICES for c in pair]
        else:
            first, second = list(TEXTS), list(PAIRS)
        enc = tokenizer(first, second, padding=True, truncation=True, max_length=max_length, return_tensors="np")
        inputs = {k: np.asarray(enc[k]).astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
        too_big = int(inputs["input_ids"].max()) >= config.vocab_size
        if not too_big:
            if task == "multiple-choice":
                inputs = {k: v.reshape(len(TEXTS), 2, -1) for k, v in inputs.items()}
            shape = "x".join(map(str, inputs["input_ids"].shape))
            return inputs, f"{shape} tokens of fixed sentence pairs tokenized with the checkpoint's {source}, padded"
        source = f"its tokenizer gives ids beyond config vocab_size={config.vocab_size}"
    rng = np.random.default_rng(SEED)
    batch, length = 2, min(16, max_length)
    low = min(5, config.vocab_size - 1)
    ids = rng.integers(low, config.vocab_size, size=(batch, length), dtype=np.int64)
    mask = np.ones((batch, length), dtype=np.int64)
    mask[1, length - 5:] = 0  # the second row is padded
    ids[mask == 0] = config.pad_token_id
    types = np.zeros_like(ids)
    if config.type_vocab_size > 1:
        types[:, length // 2:] = 1
        types[mask == 0] = 0
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    if task == "multiple-choice":
        inputs = {k: np.stack([v, v[::-1]], axis=1) for k, v in inputs.items()}  # [batch, 2 choices, seq]
    shape = "x".join(map(str, inputs["input_ids"].shape))
    return inputs, f"{shape} deterministic token ids (seed {SEED}, one row padded): {source}"


def tensor_digest(array: np.ndarray) -> bytes:
    """A 128-bit BLAKE2b digest of a tensor's dtype, shape and bytes (C order): equal digests, identical tensors.
    Free of copies for a C-contiguous array (a conversion hashes each tensor in the layout its file stores)."""
    digest = hashlib.blake2b(f"{array.dtype.str}{array.dtype.name}{list(array.shape)}".encode(), digest_size=16)
    digest.update(schema.contiguous(array).reshape(-1).view(np.uint8))
    return digest.digest()


@dataclasses.dataclass
class VerificationReport:
    source_label: str
    target_label: str
    input_note: str
    tolerance_note: str
    comparisons: list[Comparison]
    tensors_checked: int
    tensors_identical: int
    tensor_problems: list[str]
    seconds: float = 0.0
    load_error: str = ""

    @property
    def passed(self) -> bool:
        return (bool(self.comparisons) and all(c.passed for c in self.comparisons) and not self.tensor_problems
                and not self.load_error)

    def table(self) -> str:
        rows = [("output", "shape", "max abs", "threshold", "pass")]
        for c in self.comparisons:
            note = getattr(c, "note", "")
            rows.append((c.name, str(list(c.shape)), f"{c.max_abs:.3e}", f"{c.atol:.3e}",
                         "ok" if c.passed else ("FAIL" + (f" ({note})" if note else ""))))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [f"verification: {self.source_label} vs {self.target_label}",
                 f"input: {self.input_note}", f"thresholds: {self.tolerance_note}"]
        lines += ["  " + "  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] for r in rows]
        lines.append(f"tensors: {self.tensors_identical}/{self.tensors_checked} read back identical to the source"
                     + ("" if not self.tensor_problems else ":\n  - " + "\n  - ".join(self.tensor_problems)))
        failed = [c.name for c in self.comparisons if not c.passed]
        if self.passed:
            lines.append(f"verification passed ({len(self.comparisons)} outputs, {self.seconds:.1f} s)")
        else:
            what = [self.load_error] if self.load_error else []
            if failed:
                what.append(f"{len(failed)} output(s) over threshold: {', '.join(failed)}")
            if self.tensor_problems:
                what.append(f"{len(self.tensor_problems)} tensor(s) differ from the source")
            if not self.comparisons:
                what.append("no outputs were compared")
            lines.append("verification FAILED: " + "; ".join(what))
        return "\n".join(lines)


def _without_loss(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    outputs.pop("loss", None)
    return outputs


class SubprocessError(Exception):
    """A framework's load or forward pass failed in its process: the exception's type and message as it raised
    them (``str()``: ``"Type: message"``), or how the process ended when it could not say."""

    def __init__(self, framework: str, type_name: str, message: str, module: str = ""):
        super().__init__(f"{type_name}: {message}")
        self.framework, self.type_name, self.message, self.module = framework, type_name, message, module

    def original(self) -> BaseException:
        """The exception to raise in this process: the same deberta_xf error (a bad checkpoint keeps its exit code),
        else a RuntimeError naming the framework and what it raised."""
        cls = getattr(errors, self.type_name, None) if self.module == errors.__name__ else None
        if isinstance(cls, type) and issubclass(cls, DebertaXfError):
            return cls(self.message)
        return RuntimeError(f"the {self.framework} process failed: {self}")


def run_in_subprocess(framework: str, checkpoint: str, task: str, inputs: dict[str, np.ndarray],
                      config_path: str | None = None) -> tuple[dict[str, np.ndarray], str]:
    """Load ``checkpoint`` (``config_path``: its config file, else the checkpoint's own) in ``framework`` in a new
    Python process, run it in float32 on ``inputs``, and return its outputs (the loss left out) and the weights
    file it loaded. Inputs and outputs travel as ``.npz`` files (no pickle). Raises :class:`SubprocessError`."""
    with tempfile.TemporaryDirectory(prefix="deberta-xf-verify.") as work:
        np.savez(os.path.join(work, "inputs.npz"), **inputs)
        command = [sys.executable, "-m", "deberta_xf.convert.verify", framework,
                   os.path.abspath(checkpoint), task, work, os.path.abspath(config_path) if config_path else ""]
        done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace")
        error_path = os.path.join(work, "error.json")
        if os.path.isfile(error_path):
            with open(error_path, encoding="utf-8") as f:
                error = json.load(f)
            raise SubprocessError(framework, error["type"], error["message"], error["module"])
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
            raise SubprocessError(framework, "ProcessError", f"the {framework} process exited with code "
                                  f"{done.returncode}" + (f":\n{tail}" if tail else ""))
        with np.load(os.path.join(work, "outputs.npz"), allow_pickle=False) as saved:
            outputs = {name: saved[name] for name in saved.files}
        with open(os.path.join(work, "result.json"), encoding="utf-8") as f:
            return outputs, json.load(f)["weights"]


def _subprocess_main(framework_name: str, checkpoint: str, task: str, work: str, config_path: str) -> int:
    """The process of :func:`run_in_subprocess`: writes ``outputs.npz`` and ``result.json``, or ``error.json``."""
    try:
        from deberta_xf.configuration import DebertaV2Config

        framework = get_framework(framework_name)
        with np.load(os.path.join(work, "inputs.npz"), allow_pickle=False) as saved:
            inputs = {name: saved[name] for name in saved.files}
        config = DebertaV2Config.from_json_file(config_path) if config_path else None
        with framework.precision("float32"):
            model = framework.load(checkpoint, task, config=config)
            outputs = _without_loss(framework.outputs(model, inputs))
        np.savez(os.path.join(work, "outputs.npz"), **outputs)
        with open(os.path.join(work, "result.json"), "w", encoding="utf-8") as f:
            json.dump({"weights": os.fspath(getattr(model, "weights_path", "") or "")}, f)
        return 0
    except BaseException as err:  # noqa: BLE001 - handed to the parent process, which reports or raises it
        with open(os.path.join(work, "error.json"), "w", encoding="utf-8") as f:
            json.dump({"type": type(err).__name__, "module": type(err).__module__, "message": str(err)}, f)
        return 1


class Verifier:
    """Built before anything is written, so that a framework that is not installed is reported first.

    ``frameworks``: the frameworks that load the converted checkpoint and are compared with the source's run
    (default: the target framework only). ``atol`` replaces every output's threshold; ``rtol`` adds
    ``rtol x max |reference output|`` to it (see :meth:`tolerance`)."""

    def __init__(self, plan: ConversionPlan, *, atol: float | None = None, rtol: float | None = None,
                 frameworks: Sequence[str] | None = None):
        self.plan = plan
        self.atol, self.rtol = atol, rtol
        names = list(dict.fromkeys(frameworks or [plan.to]))
        self.frameworks = {"source": get_framework(plan.source_framework)}
        self.targets = [get_framework(name) for name in names]  # get_framework names the known ones
        checks = [("source", self.frameworks["source"])] + [("converted", fw) for fw in self.targets]
        for role, framework in checks:
            missing = framework.missing_package()  # not imported here: only in the process that runs it
            if missing:
                raise DebertaXfError(
                    f"verification needs the {framework.name!r} framework to load the {role} checkpoint, and it is not "
                    f"available ({missing}); install it, or pass --no-verify to convert without verification")
        for fmt in {plan.source_format, plan.target_format}:
            if not fmt.available():
                raise DebertaXfError(f"verification cannot read {fmt.name} files: {fmt.module} is missing")

    def tolerance(self) -> tuple[dict[str, float] | None, float | None, str]:
        """(per-output max abs thresholds or None, relative factor or None, the sentence for the table)."""
        if self.atol is not None or self.rtol is not None:
            atol, rtol = self.atol or 0.0, self.rtol or 0.0
            thresholds = {name: atol for name in FP32_THRESHOLDS} if self.atol is not None else FP32_THRESHOLDS
            base = f"{atol:g} (--atol)" if self.atol is not None else "the float32 thresholds (docs/tolerances.md)"
            return thresholds, rtol, f"max abs <= {base} + {rtol:g} (--rtol) x max |reference output|"
        lossy = self.plan.lossy_dtypes
        if not lossy:
            return FP32_THRESHOLDS, None, ("float32 (docs/tolerances.md): 5e-5 (hidden states, pooled/token/QA "
                                           "logits), 1e-4 (masked-LM logits)")
        rtol = max(LOSSY_RTOL[d] for d in lossy)
        names = "/".join(sorted(lossy))
        return None, rtol, (f"weights rounded to {names}, compared in float32 with the source: max abs <= "
                            f"{rtol:g} x max(1, max |reference output|)")

    def _atol(self, name: str, reference: np.ndarray) -> float:
        thresholds, rtol, _ = self.tolerance()
        scale = float(np.abs(reference).max()) if reference.size else 0.0
        if thresholds is None:  # a lossy cast: relative to the size of the output
            return rtol * max(1.0, scale)
        return threshold(name, self.plan.task, thresholds) + (rtol or 0.0) * scale

    def run(self, directory: str, status=None, digests: dict[str, bytes] | None = None) -> VerificationReport:
        start = time.perf_counter()
        plan = self.plan
        say = status or (lambda message: None)
        say(f"verifying: reading back {len(plan.names)} tensors")
        problems, identical = self.check_tensors(directory, digests)
        inputs, input_note = make_inputs(plan.config, plan.task, plan.source_dir)
        say(f"verifying: loading and running the source in {plan.source_framework}")
        try:
            reference, _ = run_in_subprocess(plan.source_framework, plan.weights_path, plan.task, inputs,
                                             config_path=plan.config_path)
        except SubprocessError as err:
            raise err.original() from None
        mask = token_mask(inputs["attention_mask"])
        comparisons, labels, load_errors = [], [], []
        prefix = len(self.targets) > 1  # several frameworks: each output row names its framework
        for target in self.targets:
            say(f"verifying: loading and running the converted checkpoint in {target.name}")
            used, candidate = plan.weights_filename, {}
            try:  # the source loaded, so a converted checkpoint that does not is a failed conversion (exit 1)
                candidate, weights = run_in_subprocess(target.name, directory, plan.task, inputs)
                used = os.path.basename(weights or used)
            except SubprocessError as err:  # reported in the table, the result is not kept
                load_errors.append(f"the converted checkpoint failed to load or run in {target.name}: {err}")
            labels.append(f"{target.name} ({used} of DST)")
            rows = []
            for name, ref in reference.items():
                atol = self._atol(name, ref)
                if name not in candidate:
                    rows.append(Comparison(name, tuple(ref.shape), float("inf"), float("inf"), float("inf"), atol, 0,
                                           "missing"))
                    continue
                rows.append(compare_arrays(name, ref, candidate[name], atol, mask))
            for name in candidate:
                if name not in reference:
                    rows.append(Comparison(name, tuple(candidate[name].shape), float("inf"), float("inf"),
                                           float("inf"), 0.0, 0, "not in the source's outputs"))
            rows.sort(key=lambda c: output_order(c.name))
            if prefix:
                rows = [dataclasses.replace(c, name=f"{target.name}: {c.name}") for c in rows]
            comparisons += rows
        _, _, note = self.tolerance()
        return VerificationReport(
            f"{plan.source_framework} ({os.path.basename(plan.weights_path)} of SRC)",
            ", ".join(labels), input_note, note, comparisons, len(plan.names), identical, problems,
            time.perf_counter() - start, "; ".join(load_errors))

    def check_tensors(self, directory: str, digests: dict[str, bytes] | None = None) -> tuple[list[str], int]:
        """Read every tensor back from the written file; it must equal the (cast) source bit for bit: its
        :func:`tensor_digest` must be the one taken as it was written (``digests``), or, without digests, the
        source tensor is read again and compared byte for byte. One tensor in memory at a time.

        Returns the problems found and the number of tensors that are identical."""
        plan = self.plan
        problems = []
        identical = 0
        path = os.path.join(directory, plan.weights_filename)
        layout = plan.target_format.layout
        with open_checked(plan.weights_path) as source, open_checked(path) as written:
            infos = written.infos()
            # Written names back to the plan's names, as every loader does (a format may store the other MLM
            # head layout, e.g. tf_model.h5 always uses the reference TF's cls.predictions.*).
            mapping, report = schema.match_checkpoint(plan.config, plan.task, {k: v.shape for k, v in infos.items()})
            mapping.update({n: n for n in report.ignored if n in plan.names})
            extra = sorted(set(infos) - set(mapping.values()))
            if extra:
                problems.append(f"unexpected tensor(s) in the written file: {', '.join(extra)}")
            for name, src in plan.names.items():
                if name not in mapping:
                    problems.append(f"{name}: missing from the written file")
                    continue
                stored = mapping[name]
                want_info = plan.infos[name]
                if infos[stored].shape != want_info.shape or infos[stored].dtype != want_info.dtype:
                    problems.append(f"{name}: written as {infos[stored].dtype}{list(infos[stored].shape)}, expected "
                                    f"{want_info.dtype}{list(want_info.shape)}")
                    continue
                # compared in the file's layout, as the digests were taken (write_checkpoint)
                got = tensor_digest(schema.to_framework(name, written.read(stored), layout))
                if digests is not None and name in digests:
                    want = digests[name]
                else:
                    array = source.read(src)
                    array = array if array.dtype == want_info.dtype else array.astype(want_info.dtype)
                    want = tensor_digest(schema.to_framework(name, array, layout))
                if got != want:
                    problems.append(f"{name}: differs from the source")
                else:
                    identical += 1
        return problems, identical


if __name__ == "__main__":
    sys.exit(_subprocess_main(*sys.argv[1:]))
