"""The tokenizer API a Hugging Face user relies on, held to transformers 4.57.6.

Goldens: fixtures/tokenizer/api_goldens.json.gz, made by fixtures/tokenizer/generate_api_goldens.py from the
reference's slow and fast tokenizers (loaded from fixtures/deberta-v3-spm/). Each golden case is a list of steps
(encode_plus / batch_encode_plus, pad, add_tokens / add_special_tokens, QA windowing with stride and
return_overflowing_tokens, special-token masks, lengths, vocabulary) replayed here on a fresh tokenizer of the same
kind: our slow tokenizer against the reference's slow one, our fast against its fast one (where the two
references differ, e.g. the slow one has no overflow_to_sample_mapping, each matches its own).

Also: a port of the reference's own tests for this tokenizer that need no download (with the fixture spm.model),
the size limits of docs/limits.md ("Tokenizers"), and a `reference`-marked live check against transformers.
"""

from __future__ import annotations

import copy
import functools
import gzip
import json
import os

import pytest

from deberta_xf.errors import DebertaXfError
from deberta_xf.tokenization_deberta_v2 import DebertaV2Tokenizer
from deberta_xf.tokenization_deberta_v2_fast import DebertaV2TokenizerFast
from deberta_xf.tokenization_utils import MAX_BATCH_SIZE, MAX_PADDED_LENGTH, MAX_TEXT_CHARS
from tokenizer_steps import plain, replay

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPM_DIR = os.path.join(ROOT, "fixtures", "deberta-v3-spm")
SPM_MODEL = os.path.join(SPM_DIR, "spm.model")
GOLDENS = os.path.join(ROOT, "fixtures", "tokenizer", "api_goldens.json.gz")
CLASSES = {"slow": DebertaV2Tokenizer, "fast": DebertaV2TokenizerFast}
KINDS = tuple(CLASSES)
GROUPS = (
    "encode_plus", "pad", "qa_windows", "single_windows", "added_tokens", "vocab", "prepare_and_setters", "token_ids",
    "upstream_api",
)


@functools.lru_cache(maxsize=None)
def goldens() -> dict:
    with gzip.open(GOLDENS, "rt", encoding="utf-8") as handle:
        return json.load(handle)


@functools.lru_cache(maxsize=None)
def shared_tokenizer(kind: str):
    return CLASSES[kind].from_pretrained(SPM_DIR)


@functools.lru_cache(maxsize=None)
def _loaded(kind: str, init_json: str):
    return CLASSES[kind].from_pretrained(SPM_DIR, **json.loads(init_json))


def fresh_tokenizer(kind: str, init: dict):
    """A tokenizer of its own for a case that changes it (loaded once per init, then deep-copied)."""
    return copy.deepcopy(_loaded(kind, json.dumps(init, sort_keys=True)))


# === Replaying the golden steps (tests/tokenizer_steps.py, shared with the generator) ===


def differs(got, want) -> bool:
    """Different values, a different key order of an encoding, or a different error type."""
    if isinstance(want, dict) and "error" in want:  # ours may be a subclass (e.g. TokenizerInputError)
        return not (isinstance(got, dict) and want["error"] in got.get("types", ()))
    if isinstance(got, dict) and "error" in got:
        return True
    if got != want:
        return True
    return isinstance(want, dict) and "input_ids" in want and list(got) != list(want)


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("kind", KINDS)
def test_api_matches_reference(kind, group):
    """Every golden case of the group, step by step, equals the reference's result."""
    cases = goldens()[kind][group]
    assert cases, f"no golden cases for {kind}/{group}"
    mismatches, total = [], 0
    for number, case in enumerate(cases):
        needs_fresh = case["init"] or group in ("added_tokens", "prepare_and_setters", "upstream_api")
        tok = fresh_tokenizer(kind, case["init"]) if needs_fresh else shared_tokenizer(kind)
        got = replay(tok, case["steps"])
        for step, (g, w) in enumerate(zip(got, case["out"], strict=True)):
            total += 1
            if differs(g, w):
                mismatches.append((number, case["steps"][step][0], str(g)[:300], str(w)[:300]))
    assert not mismatches, f"{len(mismatches)} of {total} steps differ from the reference, first: {mismatches[:2]}"


def test_goldens_cover_each_call():
    """The goldens hold every call the issue names, with real windows (several rows per QA input)."""
    methods = {step[0] for kind in KINDS for group in GROUPS for case in goldens()[kind][group]
               for step in case["steps"]}
    for wanted in ("encode_plus", "batch_encode_plus", "pad", "add_tokens", "add_special_tokens",
                   "enc:sequence_ids", "enc:word_ids", "enc:char_to_token", "enc:token_to_chars",
                   "attr:max_len_single_sentence", "attr:max_len_sentences_pair",
                   "attr:additional_special_tokens_ids", "get_vocab_hash", "prepare_for_model", "set:pad_token"):
        assert wanted in methods, wanted
    first = goldens()["fast"]["qa_windows"][0]["out"][0]
    assert len(first["input_ids"]) > 2 and first["overflow_to_sample_mapping"] == [0] * len(first["input_ids"])


# === What a QA pipeline does with the windows ===


def test_qa_windows_cover_the_context_with_stride_overlap():
    """Fast: each window is [CLS] question [SEP] context-part [SEP]; consecutive windows share `stride`
    context tokens and together cover the whole context; offsets map context tokens back into the context."""
    tok = shared_tokenizer("fast")
    question = "What does the disentangled attention use?"
    context = " ".join(["DeBERTa improves BERT with disentangled attention and an enhanced mask decoder."] * 12)
    enc = tok(question, context, truncation="only_second", max_length=48, stride=12,
              return_overflowing_tokens=True, return_offsets_mapping=True, padding="max_length")
    full = tok(context, add_special_tokens=False)["input_ids"]
    rows = len(enc["input_ids"])
    assert rows > 3 and enc["overflow_to_sample_mapping"] == [0] * rows
    parts = []
    for i in range(rows):
        seq = enc.sequence_ids(i)
        part = [t for t, s in zip(enc["input_ids"][i], seq) if s == 1]
        assert len(enc["input_ids"][i]) == 48 and part
        for t, s, (start, end) in zip(enc["input_ids"][i], seq, enc["offset_mapping"][i]):
            if s == 1 and t != tok.unk_token_id:
                assert tok.decode([t]).strip() in context[start:end] or context[start:end] in tok.decode([t])
        parts.append(part)
    for a, b in zip(parts, parts[1:]):
        assert a[-12:] == b[:12]
    merged = parts[0] + [t for p in parts[1:] for t in p[12:]]
    assert merged == full


# === Added tokens, padding, lengths (behaviour the goldens also pin, stated directly) ===


@pytest.mark.parametrize("kind", KINDS)
def test_added_tokens_round_trip_through_save_pretrained(kind, tmp_path):
    tok = CLASSES[kind].from_pretrained(SPM_DIR)
    assert tok.add_tokens(["<new>"]) == 1
    assert tok.add_special_tokens({"additional_special_tokens": ["[Q]"]}) == 1
    ids = tok("a <new> b [Q]")["input_ids"]
    assert tok.convert_tokens_to_ids(["<new>", "[Q]"]) == [128001, 128002]
    assert 128001 in ids and 128002 in ids and len(tok) == 128003
    assert tok.additional_special_tokens == ["[Q]"] and tok.additional_special_tokens_ids == [128002]
    assert "[Q]" not in tok.decode(ids, skip_special_tokens=True)
    tok.save_pretrained(str(tmp_path))
    again = CLASSES[kind].from_pretrained(str(tmp_path))
    assert again("a <new> b [Q]")["input_ids"] == ids and len(again) == len(tok)
    assert again.additional_special_tokens == ["[Q]"]


def test_fast_save_pretrained_writes_tokenizer_json(tmp_path):
    tok = shared_tokenizer("fast")
    written = tok.save_pretrained(str(tmp_path))
    assert str(tmp_path / "tokenizer.json") in written
    reloaded = DebertaV2TokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    assert reloaded("Hello world [MASK]")["input_ids"] == tok("Hello world [MASK]")["input_ids"]


@pytest.mark.parametrize("kind", KINDS)
def test_pad_tensors_and_errors(kind):
    tok = shared_tokenizer(kind)
    rows = [tok(t) for t in ("short", "a somewhat longer text here")]
    torch = pytest.importorskip("torch")
    padded = tok.pad({"input_ids": [torch.tensor(r["input_ids"]) for r in rows]})
    assert isinstance(padded["input_ids"], torch.Tensor) and padded["attention_mask"].shape == padded["input_ids"].shape
    with pytest.raises(ValueError, match="input_ids"):
        tok.pad([{"attention_mask": [1]}])
    with pytest.raises(ValueError, match="rows"):
        tok.pad({"input_ids": [[1, 2], [1]], "attention_mask": [[1, 1]]})


# === Size limits and input checks (docs/limits.md, "Tokenizers") ===


@pytest.mark.parametrize("kind", KINDS)
def test_option_bounds_raise_our_error_naming_the_option(kind):
    tok = shared_tokenizer(kind)
    with pytest.raises(DebertaXfError, match="max_length"):
        tok("text", padding="max_length", max_length=10**12)
    with pytest.raises(DebertaXfError, match="max_length"):
        tok(["a", "b"], padding="max_length", max_length=MAX_PADDED_LENGTH + 1)
    with pytest.raises(DebertaXfError, match="max_length"):
        tok("text", truncation=True, max_length=-1)
    with pytest.raises(TypeError, match="max_length"):
        tok("text", truncation=True, max_length=3.5)
    with pytest.raises(DebertaXfError, match="stride"):
        tok("text", truncation=True, max_length=8, stride=-2, return_overflowing_tokens=True)
    with pytest.raises(TypeError, match="stride"):
        tok("text", stride="4")
    for bad in (0, -8, 10**12):
        with pytest.raises(DebertaXfError, match="pad_to_multiple_of"):
            tok("text", padding=True, pad_to_multiple_of=bad)
        with pytest.raises(DebertaXfError, match="pad_to_multiple_of"):
            tok.pad({"input_ids": [1, 2]}, pad_to_multiple_of=bad)
    with pytest.raises(DebertaXfError, match="max_length"):
        tok.pad({"input_ids": [1, 2]}, padding="max_length", max_length=10**12)
    # a big truncation length costs nothing and stays allowed (users pass model_max_length)
    assert tok("text", truncation=True, max_length=10**20)["input_ids"] == tok("text")["input_ids"]


@pytest.mark.parametrize("kind", KINDS)
def test_model_max_length_too_large_for_padding_is_named(kind):
    tok = CLASSES[kind].from_pretrained(SPM_DIR, model_max_length=10**12)
    with pytest.raises(DebertaXfError, match="model_max_length"):
        tok("text", padding="max_length")


@pytest.mark.parametrize("kind", KINDS)
def test_text_and_batch_size_limits(kind):
    tok = shared_tokenizer(kind)
    long_text = "a" * (MAX_TEXT_CHARS + 1)
    with pytest.raises(DebertaXfError, match=r"`text` has 10,000,001 characters"):
        tok(long_text)
    with pytest.raises(DebertaXfError, match=r"`text\[1\]`"):
        tok(["fine", long_text])
    with pytest.raises(DebertaXfError, match=r"`text_pair`"):
        tok("q", long_text)
    with pytest.raises(DebertaXfError, match=r"`text\[0\]\[1\]`"):
        tok([["w", long_text]], is_split_into_words=True)
    with pytest.raises(DebertaXfError, match="at most 1,000,000 per call"):
        tok([""] * (MAX_BATCH_SIZE + 1))


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_input_types_raise_type_error_naming_the_argument(kind):
    """A TypeError naming the argument, that is also the ValueError the reference's `__call__` raises."""
    tok = shared_tokenizer(kind)
    for bad in (None, 7, b"bytes", [["a", 1]], [[["nested"]]], ["ok", None], [5, 6]):
        with pytest.raises(TypeError, match="text"):
            tok(bad)
        with pytest.raises(ValueError, match="text"):
            tok(bad)
    with pytest.raises(TypeError, match="prepare_for_model"):  # token ids: a hint where they go
        tok([329, 269])
    with pytest.raises(TypeError, match="batch_encode_plus"):
        tok.batch_encode_plus("a")
    with pytest.raises(TypeError if kind == "fast" else ValueError, match="text"):
        tok.encode_plus(None)
    with pytest.raises(TypeError, match="AddedToken"):
        tok.add_tokens([3])
    with pytest.raises(ValueError, match="not a special token"):
        tok.add_special_tokens({"nonsense_token": "<x>"})


# === Port of the reference's tests/models/deberta_v2/test_tokenization_deberta_v2.py (no downloads) ===
# The reference runs them on its 30,000-piece test model; here on the DeBERTa-v3 spm.model fixture, with the
# expected values from the reference (the goldens and the `reference` test below).

SPIECE_UNDERLINE = "\u2581"
SEQUENCE = "I was born in 92000, and this is falsé."


@pytest.mark.parametrize("kind", KINDS)
def test_port_convert_token_and_id_and_get_vocab(kind):
    tok = shared_tokenizer(kind)
    if kind == "slow":
        assert tok._convert_token_to_id("[PAD]") == 0 and tok._convert_id_to_token(0) == "[PAD]"
        vocab_keys = list(tok.get_vocab())
        assert vocab_keys[0] == "[PAD]" and vocab_keys[1] == "[CLS]" and vocab_keys[-1] == "[MASK]"
    assert len(tok.get_vocab()) == 128001 and tok.vocab_size == 128000


@pytest.mark.parametrize("kind", KINDS)
def test_port_sequence_builders(kind):
    tok = shared_tokenizer(kind)
    text = tok.encode("sequence builders")
    text_2 = tok.encode("multi-sequence build")
    assert tok.build_inputs_with_special_tokens(text) == [tok.cls_token_id] + text + [tok.sep_token_id]
    assert tok.build_inputs_with_special_tokens(text, text_2) == (
        [tok.cls_token_id] + text + [tok.sep_token_id] + text_2 + [tok.sep_token_id]
    )


def test_port_rust_and_python_full_tokenizers():
    slow, fast = shared_tokenizer("slow"), shared_tokenizer("fast")
    ids = slow.encode(SEQUENCE, add_special_tokens=False)
    fast_ids = fast.encode(SEQUENCE, add_special_tokens=False)
    assert slow.convert_ids_to_tokens(ids) == fast.convert_ids_to_tokens(fast_ids)
    assert ids == fast.encode(SEQUENCE, add_special_tokens=False)
    assert slow.encode(SEQUENCE) == fast.encode(SEQUENCE)


# (options, text) -> the reference's tokens (transformers 4.57.6, slow and fast agree on all of them).
HELLO = " \tHeLLo!how  \n Are yoU?  "
PORT_TOKENS = [
    ({}, SEQUENCE, "▁I ▁was ▁born ▁in ▁92 000 , ▁and ▁this ▁is ▁fal s é ."),
    ({}, HELLO, "▁He LL o ! how ▁Are ▁yo U ?"),
    ({"do_lower_case": True}, SEQUENCE, "▁i ▁was ▁born ▁in ▁92 000 , ▁and ▁this ▁is ▁fal s é ."),
    ({"do_lower_case": True}, HELLO, "▁hello ! how ▁are ▁you ?"),
    ({"split_by_punct": True}, SEQUENCE, "▁I ▁was ▁born ▁in ▁92 000 ▁, ▁and ▁this ▁is ▁fal s é ▁."),
    ({"split_by_punct": True}, HELLO, "▁He LL o ▁! ▁how ▁Are ▁yo U ▁?"),
    ({"do_lower_case": True, "split_by_punct": True}, SEQUENCE,
     "▁i ▁was ▁born ▁in ▁92 000 ▁, ▁and ▁this ▁is ▁fal s é ▁."),
    ({"do_lower_case": True, "split_by_punct": True}, HELLO, "▁hello ▁! ▁how ▁are ▁you ▁?"),
]


@pytest.mark.parametrize("options,text,want", PORT_TOKENS)
@pytest.mark.parametrize("kind", KINDS)
def test_port_lower_case_and_split_by_punct(kind, options, text, want):
    """The reference's test_do_lower_case* / test_split_by_punct*: built directly from the spm.model (with its
    `keep_accents` argument accepted), tokens of encode(add_special_tokens=False)."""
    tok = _loaded(kind, json.dumps({"keep_accents": True, **options}, sort_keys=True))
    assert tok.convert_ids_to_tokens(tok.encode(text, add_special_tokens=False)) == want.split(" ")


@pytest.mark.parametrize("kind", KINDS)
def test_port_full_tokenizer(kind):
    """The reference's test_full_tokenizer, with the reference's ids for this spm.model."""
    tok = CLASSES[kind](SPM_MODEL, keep_accents=True)
    assert tok.encode("This is a test", add_special_tokens=False) == [329, 269, 266, 1010]
    assert tok.tokenize("This is a test") == ["▁This", "▁is", "▁a", "▁test"]
    assert tok.encode(SEQUENCE) == [1, 273, 284, 1338, 267, 8972, 528, 261, 263, 291, 269, 45428, 268, 5858, 260, 2]


# === Token ids and tokens as inputs (the goldens' "token_ids" group holds the reference's results) ===


def test_slow_takes_token_ids_and_tokens_as_the_reference():
    """encode / encode_plus / batch_encode_plus of the sentencepiece tokenizer take ids as given, a list of strings as
    tokens (words with is_split_into_words), and give what the same text gives."""
    tok = shared_tokenizer("slow")
    ids = tok.encode(SEQUENCE, add_special_tokens=False)
    pair = tok.encode("short pair", add_special_tokens=False)
    assert tok.encode(ids) == tok.encode(SEQUENCE) == [1, *ids, 2]
    assert tok.encode_plus(ids, pair).data == tok(SEQUENCE, "short pair").data
    assert tok.encode(tok.tokenize(SEQUENCE)) == tok.encode(SEQUENCE)
    batch = tok.batch_encode_plus([(ids, pair), (pair, ids)], padding=True)
    assert batch.data == tok([SEQUENCE, "short pair"], ["short pair", SEQUENCE], padding=True).data
    assert tok.batch_encode_plus([ids], is_split_into_words=True)["input_ids"] == [[1, *ids, 2]]
    with pytest.raises(ValueError, match=r"batch_text_or_text_pairs\[0\]` has 4 items"):
        tok.batch_encode_plus([[1, 2, 3, 4]])
    with pytest.raises(TypeError, match="mixes types"):
        tok.encode([5, "a"])


def test_fast_refuses_token_ids_with_a_type_error():
    tok = shared_tokenizer("fast")
    ids = [329, 269, 266, 1010]
    for call in (lambda: tok.encode(ids), lambda: tok.encode_plus("a", ids), lambda: tok.batch_encode_plus([ids]),
                 lambda: tok.batch_encode_plus([(ids, ids)]), lambda: tok.encode_plus(ids, is_split_into_words=True)):
        with pytest.raises(TypeError, match="text"):
            call()
    # a list of two strings is a (text, text_pair) pair, as the backend reads it in the reference
    assert tok.encode(["hello", "world"]) == tok.encode("hello", "world")
    assert tok.prepare_for_model(ids)["input_ids"] == [1, *ids, 2]


# === Live against the reference ===


@pytest.mark.reference
def test_reference_live_windows_pad_and_added_tokens():
    """A few calls against transformers 4.57.6 itself (the goldens' generator is not run here)."""
    transformers = pytest.importorskip("transformers")
    refs = {"slow": transformers.DebertaV2Tokenizer, "fast": transformers.DebertaV2TokenizerFast}
    question, context = "Where was he born?", "I was born in 92000, and this is falsé. " * 20
    for kind in KINDS:
        ref, ours = refs[kind].from_pretrained(SPM_DIR), CLASSES[kind].from_pretrained(SPM_DIR)
        kwargs = dict(truncation="only_second", max_length=40, stride=7, return_overflowing_tokens=True,
                      return_special_tokens_mask=True, return_length=True, padding="max_length")
        if kind == "fast":
            kwargs["return_offsets_mapping"] = True
        want, got = ref(question, context, **kwargs), ours(question, context, **kwargs)
        assert plain(got) == plain(want) and list(got) == list(want)
        if kind == "fast":
            for i in range(len(want["input_ids"])):
                assert got.sequence_ids(i) == want.sequence_ids(i) and got.word_ids(i) == want.word_ids(i)
        rows = [dict(ref(t)) for t in ("one", "two three four", SEQUENCE)]
        for options in ({}, {"pad_to_multiple_of": 8, "padding_side": "left"}, {"return_tensors": "np"}):
            assert plain(ours.pad(rows, **options)) == plain(ref.pad(rows, **options))
        for tok in (ref, ours):
            tok.add_tokens(["<new>", "falsé"])
            tok.add_special_tokens({"additional_special_tokens": ["[Q]"]})
        text = "[Q] <new> falsé born"
        assert ours(text)["input_ids"] == ref(text)["input_ids"] and len(ours) == len(ref)
        assert ours.decode(ours(text)["input_ids"]) == ref.decode(ref(text)["input_ids"])
        assert ours.all_special_ids == ref.all_special_ids
        assert ours.max_len_single_sentence == ref.max_len_single_sentence
        ids, pair = ref.encode(SEQUENCE, add_special_tokens=False), ref.encode("short pair", add_special_tokens=False)
        for options in (
            {},
            {"truncation": "only_first", "max_length": 8, "stride": 2, "return_overflowing_tokens": True},
            {"padding": "max_length", "max_length": 30, "return_special_tokens_mask": True},
        ):
            want, got = ref.prepare_for_model(ids, pair, **options), ours.prepare_for_model(ids, pair, **options)
            assert plain(got) == plain(want) and list(got) == list(want)
