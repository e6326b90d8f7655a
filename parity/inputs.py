"""Model inputs for a parity run: real text through the checkpoint's tokenizers, or deterministic token ids.

- :func:`read_texts` reads ``--texts FILE`` (UTF-8, one text per line; a TAB splits a sentence pair) or the
  built-in ``parity/sample_texts.txt``.
- :func:`tokenizer_checks` tokenizes the texts with the slow (sentencepiece) and the fast (tokenizers)
  tokenizer of the checkpoint, batched with padding, and compares ``input_ids``, ``token_type_ids`` and
  ``attention_mask``; offsets only where they are defined (the slow tokenizer has none, so the fast one's
  offsets are checked for being well formed).
- :func:`deterministic_inputs` gives seeded token ids, with padding, for a checkpoint without tokenizer files.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from typing import Any

import numpy as np

from deberta_xf.configuration import DebertaV2Config
from deberta_xf.errors import DebertaXfError

SAMPLE_TEXTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample_texts.txt")
TOKENIZER_FILES = ("spm.model", "tokenizer.json")
TOKENIZER_FIELDS = ("input_ids", "token_type_ids", "attention_mask")
DETERMINISTIC_SEED = 0
# --texts limits (docs/limits.md): every text runs through every framework in one batch
MAX_TEXTS_BYTES = 4 * 2**20
MAX_TEXTS = 1024



# === Texts ===

@dataclasses.dataclass
class Texts:
    source: str                      # the file they came from
    first: list[str]
    second: list[str] | None         # sentence pairs when every line has a TAB

    def __len__(self) -> int:
        return len(self.first)


def read_texts(path: str | None) -> Texts:
    """One text per non-empty line; ``a<TAB>b`` is a sentence pair (all lines, or none).

    At most :data:`MAX_TEXTS_BYTES` bytes are read and at most :data:`MAX_TEXTS` texts accepted (docs/limits.md):
    every text runs through every framework in one batch. A regular file or a pipe (``--texts <(cmd)``) is read;
    a directory, a device (``/dev/zero``) or a socket is refused before reading."""
    if path is not None and not path.strip():
        raise DebertaXfError(f"--texts {path!r}: empty file name")
    source = path or SAMPLE_TEXTS
    try:
        mode = os.stat(source).st_mode
    except FileNotFoundError:
        raise DebertaXfError(f"--texts {source}: no such file") from None
    if stat.S_ISDIR(mode):
        raise DebertaXfError(f"--texts {source}: is a directory, expected a text file")
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
        kind = "a socket" if stat.S_ISSOCK(mode) else "a device"
        raise DebertaXfError(f"--texts {source}: is {kind}, expected a text file")
    with open(source, "rb") as f:
        raw = f.read(MAX_TEXTS_BYTES + 1)  # never more, whatever the file claims or keeps producing
    if len(raw) > MAX_TEXTS_BYTES:
        raise DebertaXfError(f"--texts {source}: more than {MAX_TEXTS_BYTES} bytes ({MAX_TEXTS_BYTES // 2**20} "
                             f"MiB, the limit of --texts; docs/limits.md)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DebertaXfError(f"--texts {source}: not UTF-8 text (invalid byte at offset {err.start})") from None
    lines = [(i + 1, line) for i, line in enumerate(text.splitlines()) if line.strip()]
    if not lines:
        raise DebertaXfError(f"--texts {source}: no non-empty lines; expected one text per line")
    if len(lines) > MAX_TEXTS:
        raise DebertaXfError(f"--texts {source}: {len(lines)} texts; at most {MAX_TEXTS} (they run as one batch; "
                             f"docs/limits.md)")
    paired = [n for n, line in lines if "\t" in line]
    if paired and len(paired) != len(lines):
        single = next(n for n, line in lines if "\t" not in line)
        raise DebertaXfError(f"--texts {source}: line {single} is a single text but line {paired[0]} is a "
                             f"TAB-separated pair; use one kind per file")
    if paired:
        pairs = [line.split("\t", 1) for _, line in lines]
        return Texts(source, [a for a, _ in pairs], [b for _, b in pairs])
    return Texts(source, [line for _, line in lines], None)


# === Tokenizers ===

@dataclasses.dataclass
class TokenizerCheck:
    name: str          # input_ids | token_type_ids | attention_mask | offset_mapping
    passed: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class TokenizerResult:
    checked: bool                    # both tokenizers ran and were compared
    note: str
    tokenizers: list[str]            # which ran: "slow (spm.model)", "fast (tokenizer.json)"
    checks: list[TokenizerCheck]
    encoding: dict[str, np.ndarray] | None  # the model inputs (slow tokenizer's, else the fast one's)
    truncated: int = 0               # texts cut to max_length

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


def has_tokenizer(checkpoint: str) -> bool:
    return any(os.path.isfile(os.path.join(checkpoint, f)) for f in TOKENIZER_FILES)


def _first_mismatch(a: np.ndarray, b: np.ndarray, texts: Texts) -> str:
    if a.shape != b.shape:
        return f"shapes differ: slow {list(a.shape)} vs fast {list(b.shape)}"
    rows = np.nonzero((a != b).any(axis=tuple(range(1, a.ndim))))[0]
    if rows.size == 0:
        return ""
    row = int(rows[0])
    col = int(np.nonzero((a[row] != b[row]).reshape(a.shape[1], -1).any(axis=1))[0][0])
    snippet = texts.first[row][:40]
    return (f"{rows.size} of {a.shape[0]} texts differ; first: text {row + 1} ({snippet!r}) at token {col}: "
            f"slow {a[row, col].tolist()} vs fast {b[row, col].tolist()}")


def _check_offsets(offsets: np.ndarray, mask: np.ndarray, special: np.ndarray, texts: Texts) -> TokenizerCheck:
    """The fast tokenizer's offsets: within the text, non-decreasing, (0, 0) on [CLS], [SEP] and padding."""
    problems = []
    for row in range(offsets.shape[0]):
        length = len(texts.first[row]) if texts.second is None else max(len(texts.first[row]),
                                                                       len(texts.second[row]))
        real = (mask[row] == 1) & ~special[row]
        starts, ends = offsets[row, real, 0], offsets[row, real, 1]
        if (starts > ends).any() or (ends > length).any() or (starts < 0).any():
            problems.append(f"text {row + 1}: an offset outside [0, {length}] or with start > end")
        elif texts.second is None and (np.diff(starts) < 0).any():
            problems.append(f"text {row + 1}: offsets go backwards")
        elif (offsets[row, ~real] != 0).any():
            problems.append(f"text {row + 1}: [CLS], [SEP] or padding has a non-zero offset")
    detail = ("; ".join(problems[:3]) if problems else
              "slow tokenizer defines no offsets; the fast tokenizer's are well formed "
              "(within the text, non-decreasing, (0, 0) on [CLS], [SEP] and padding)")
    return TokenizerCheck("offset_mapping", not problems, detail)


def tokenizer_checks(checkpoint: str, texts: Texts, max_length: int) -> TokenizerResult:
    """Tokenize ``texts`` with both tokenizers of ``checkpoint`` (batched, padded) and compare them."""
    from deberta_xf.tokenization_deberta_v2 import DebertaV2Tokenizer
    from deberta_xf.tokenization_deberta_v2_fast import DebertaV2TokenizerFast

    kwargs = dict(padding=True, truncation=True, max_length=max_length, return_tensors="np")
    args = (texts.first,) if texts.second is None else (texts.first, texts.second)
    has_spm = os.path.isfile(os.path.join(checkpoint, "spm.model"))
    fast_source = ("tokenizer.json" if os.path.isfile(os.path.join(checkpoint, "tokenizer.json"))
                   else "converted from spm.model")
    try:
        fast = DebertaV2TokenizerFast.from_pretrained(checkpoint)
        fast_enc = fast(*args, return_offsets_mapping=True, **kwargs)
        slow_enc = None
        if has_spm:
            slow = DebertaV2Tokenizer.from_pretrained(checkpoint)
            slow_enc = slow(*args, **kwargs)
    except (OSError, ValueError, RuntimeError) as err:
        raise DebertaXfError(f"{checkpoint}: cannot load or run its tokenizer: {err}") from err
    tokenizers = (["slow (spm.model)"] if has_spm else []) + [f"fast ({fast_source})"]
    untruncated = fast(*args, padding=False, truncation=False)["input_ids"]
    truncated = sum(len(ids) > max_length for ids in untruncated)

    checks: list[TokenizerCheck] = []
    if slow_enc is not None:
        for field in TOKENIZER_FIELDS:
            a, b = slow_enc.get(field), fast_enc.get(field)
            if a is None or b is None:
                checks.append(TokenizerCheck(field, False, f"{'slow' if a is None else 'fast'} tokenizer returned "
                                                           f"no {field}"))
                continue
            mismatch = _first_mismatch(np.asarray(a), np.asarray(b), texts)
            checks.append(TokenizerCheck(field, not mismatch, mismatch or
                                         f"identical, shape {list(np.shape(a))}"))
        note = f"slow and fast tokenizers compared on {len(texts)} texts from {texts.source}"
    else:
        note = "no spm.model: only the fast tokenizer (tokenizer.json) ran; slow/fast parity not checked"
    # [CLS] and [SEP] added by the tokenizer span no text; every other token (even [UNK]) spans some.
    added = [i for i in (fast.cls_token_id, fast.sep_token_id) if i is not None]
    special = np.isin(fast_enc["input_ids"], np.asarray(added, dtype=np.int64))
    checks.append(_check_offsets(np.asarray(fast_enc["offset_mapping"]), np.asarray(fast_enc["attention_mask"]),
                                 special, texts))
    encoding_source = slow_enc if slow_enc is not None else fast_enc
    encoding = {k: np.asarray(encoding_source[k]).astype(np.int64) for k in TOKENIZER_FIELDS if k in encoding_source}
    return TokenizerResult(slow_enc is not None, note, tokenizers, checks, encoding, truncated)


# === Deterministic ids ===

def deterministic_inputs(config: DebertaV2Config, batch: int = 4, seq_len: int = 32) -> dict[str, np.ndarray]:
    """Seeded ids in [5, vocab_size) for a checkpoint without a tokenizer; rows are padded to different lengths
    (the mask is 0 on the padding) and, when the config has token types, the second half of each row is
    segment 1."""
    if config.position_biased_input:
        seq_len = min(seq_len, config.max_position_embeddings)
    rng = np.random.default_rng(DETERMINISTIC_SEED)
    low = min(5, config.vocab_size - 1)
    ids = rng.integers(low, config.vocab_size, size=(batch, seq_len)).astype(np.int64)
    lengths = [max(2, seq_len - (seq_len * i) // (2 * batch)) for i in range(batch)]
    mask = np.zeros((batch, seq_len), dtype=np.int64)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    pad = config.pad_token_id if config.pad_token_id is not None and config.pad_token_id < config.vocab_size else 0
    ids = np.where(mask == 1, ids, pad)
    inputs = {"input_ids": ids, "attention_mask": mask}
    if config.type_vocab_size > 1:
        segment = (np.arange(seq_len)[None, :] >= (np.asarray(lengths)[:, None] // 2)).astype(np.int64)
        inputs["token_type_ids"] = segment * mask
    else:
        inputs["token_type_ids"] = np.zeros_like(ids)
    return inputs


def as_task_inputs(inputs: dict[str, np.ndarray], task: str, source: str) -> dict[str, np.ndarray]:
    """Multiple choice takes [batch, choices, seq]: consecutive rows become the 2 choices of one example."""
    if task != "multiple-choice" or inputs["input_ids"].ndim == 3:
        return inputs
    rows = inputs["input_ids"].shape[0]
    if rows < 2:
        raise DebertaXfError(f"{source}: multiple choice needs at least 2 texts (2 choices), got {rows}")
    keep = rows - rows % 2
    return {k: v[:keep].reshape(keep // 2, 2, v.shape[-1]) for k, v in inputs.items()}


def check_ids(inputs: dict[str, np.ndarray], config: DebertaV2Config, source: str, config_path: str) -> None:
    """Token ids and token types must index the checkpoint's embeddings."""
    ids = inputs["input_ids"]
    if ids.size and int(ids.max()) >= config.vocab_size:
        raise DebertaXfError(f"{source}: token id {int(ids.max())} is outside the embeddings: {config_path} "
                             f"vocab_size is {config.vocab_size} (tokenizer and model do not belong together)")
    types = inputs.get("token_type_ids")
    if types is not None and config.type_vocab_size > 0 and types.size and int(types.max()) >= config.type_vocab_size:
        raise DebertaXfError(f"{source}: token type {int(types.max())} is outside the embeddings: {config_path} "
                             f"type_vocab_size is {config.type_vocab_size}")


LABEL_SEED = 1234
LABEL_KEYS = {"base": ("hidden_target",), "masked-lm": ("labels",), "sequence-classification": ("labels",),
              "token-classification": ("labels",), "multiple-choice": ("labels",),
              "question-answering": ("start_positions", "end_positions")}


def builtin_labels(inputs: dict[str, np.ndarray], config: DebertaV2Config, task: str,
                   seed: int = LABEL_SEED) -> dict[str, np.ndarray]:
    """Seeded labels for ``parity --backward`` that exercise each task's loss rules.

    masked-lm: the input id at about a third of the real tokens, -100 elsewhere (padding included);
    token-classification: a class per real token, -100 on padding and on the first token;
    sequence-classification: by ``problem_type`` / ``num_labels`` (regression floats, multi-hot floats, or
    class ids); multiple-choice: a choice per example; question-answering: spans inside the real tokens, the last
    row's end past the sequence (clamped and ignored as the reference does); base (no task loss): a float target
    ``hidden_target`` [batch, seq, hidden] for the surrogate ``sum(h * target * mask) / sum(mask)``.
    """
    rng = np.random.default_rng(seed)
    ids = np.asarray(inputs["input_ids"])
    mask = np.asarray(inputs["attention_mask"]).astype(bool)
    if task == "base":
        return {"hidden_target": rng.standard_normal(ids.shape + (config.hidden_size,)).astype(np.float32)}
    if task == "masked-lm":
        chosen = mask & (rng.random(ids.shape) < 0.35)
        chosen.reshape(-1, ids.shape[-1])[:, 0] |= mask.reshape(-1, ids.shape[-1])[:, 0]  # every row has one
        return {"labels": np.where(chosen, ids, -100).astype(np.int64)}
    if task == "token-classification":
        labels = rng.integers(0, config.num_labels, size=ids.shape).astype(np.int64)
        labels[~mask] = -100
        labels[..., 0] = -100
        return {"labels": labels}
    if task == "multiple-choice":
        return {"labels": rng.integers(0, ids.shape[1], size=ids.shape[0]).astype(np.int64)}
    if task == "sequence-classification":
        n, batch = config.num_labels, ids.shape[0]
        problem = config.problem_type
        if problem == "regression" or (problem is None and n == 1):
            return {"labels": rng.standard_normal((batch,) if n == 1 else (batch, n)).astype(np.float32)}
        if problem == "multi_label_classification":
            return {"labels": (rng.random((batch, n)) < 0.5).astype(np.float32)}
        return {"labels": rng.integers(0, n, size=batch).astype(np.int64)}
    lengths = mask.sum(-1)
    start = np.array([rng.integers(0, max(1, n)) for n in lengths], np.int64)
    end = np.array([rng.integers(s, max(s + 1, n)) for s, n in zip(start, lengths)], np.int64)
    if len(end) > 1:
        end[-1] = ids.shape[-1] + 3  # out of range: clamped to seq_len, then ignored
    return {"start_positions": start, "end_positions": end}


def read_labels(path: str, inputs: dict[str, np.ndarray], task: str) -> dict[str, np.ndarray]:
    """``--labels FILE.npz``: the task's label arrays (keys as :data:`LABEL_KEYS`), checked against the batch."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k]) for k in data.files}
    except FileNotFoundError:
        raise DebertaXfError(f"--labels {path}: no such file") from None
    except Exception as err:
        raise DebertaXfError(f"--labels {path}: not a readable .npz file ({type(err).__name__}: {err})") from None
    wanted = LABEL_KEYS[task]
    missing = [k for k in wanted if k not in arrays]
    if missing:
        raise DebertaXfError(f"--labels {path}: missing key(s) {', '.join(missing)} for task {task} (expected "
                             f"{', '.join(wanted)}; found {', '.join(sorted(arrays)) or 'none'})")
    ids_shape = list(np.asarray(inputs["input_ids"]).shape)
    out = {}
    for key in wanted:
        value = arrays[key]
        if value.ndim == 0 or value.shape[0] != ids_shape[0]:
            raise DebertaXfError(f"--labels {path}: {key} has shape {list(value.shape)}; its first dimension must "
                                 f"be the batch size {ids_shape[0]}")
        if (task in ("masked-lm", "token-classification") and list(value.shape) != ids_shape) or \
                (key == "hidden_target" and list(value.shape[:-1]) != ids_shape):
            raise DebertaXfError(f"--labels {path}: {key} has shape {list(value.shape)}; {task} needs the inputs' "
                                 f"shape {ids_shape}" + (" + [hidden]" if key == "hidden_target" else ""))
        out[key] = value.astype(np.float32) if value.dtype.kind == "f" else value.astype(np.int64)
    return out
