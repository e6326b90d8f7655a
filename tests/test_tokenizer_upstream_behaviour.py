"""What a Hugging Face user relies on from a tokenizer beyond single encodings: constructor bookkeeping
(`init_kwargs`), special-token setters, `split_special_tokens`, the `legacy_format` of `save_pretrained`, `pad`,
the fast tokenizer's `add_prefix_space`, and the relations that must hold between calls (slow vs fast, batch vs
single, padding and truncation variants, pre-tokenized input, `prepare_for_model` vs `encode_plus`, offsets,
length limits, pickling).

Values pinned to transformers 4.57.6 live in the golden steps (tests/test_tokenizer_api.py) and are not repeated
here; what is asserted here is either a reference fact checked by hand against transformers 4.57.6 (named in the
test) or a relation between two of our own outputs. Fixture: fixtures/deberta-v3-spm/spm.model.
"""

from __future__ import annotations

import copy
import functools
import gzip
import inspect
import json
import logging
import os
import pickle

import pytest
from tokenizers import AddedToken

from deberta_xf.tokenization_deberta_v2 import DebertaV2Tokenizer
from deberta_xf.tokenization_deberta_v2_fast import DebertaV2TokenizerFast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPM_DIR = os.path.join(ROOT, "fixtures", "deberta-v3-spm")
SPM_MODEL = os.path.join(SPM_DIR, "spm.model")
GOLDEN_DIR = os.path.join(ROOT, "fixtures", "tokenizer")
CLASSES = {"slow": DebertaV2Tokenizer, "fast": DebertaV2TokenizerFast}
KINDS = tuple(CLASSES)
OPTION_SETS = {"default": {}, "lower": {"do_lower_case": True}, "punct": {"split_by_punct": True}}

SENTENCES = [
    "Tokenizers cut text into pieces.",
    "The lighthouse keeper counted 42 ships before dawn!",
    "short",
    "A much longer sentence, with commas, numbers like 3.14 and words such as unbelievably.",
]
PAIR = ("Where did the ships go after the storm had passed over the harbour?",
        "They sailed north along the rocky coast toward the old fishing village.")


@functools.lru_cache(maxsize=None)
def _cached(kind: str, options: str):
    return CLASSES[kind].from_pretrained(SPM_DIR, **json.loads(options))


def load(kind: str, **options):
    """A tokenizer of its own (loaded once per option set, then deep-copied, so a test may change it)."""
    return copy.deepcopy(_cached(kind, json.dumps(options, sort_keys=True)))


@functools.lru_cache(maxsize=None)
def reference_single(option_set: str) -> tuple[list[str], list[dict], list[dict]]:
    """Corpus texts with the reference's slow and fast single-text results (fixtures/tokenizer/goldens.json.gz)."""
    with open(os.path.join(GOLDEN_DIR, "corpus.json"), encoding="utf-8") as handle:
        texts = json.load(handle)["texts"]
    with gzip.open(os.path.join(GOLDEN_DIR, "goldens.json.gz"), "rt", encoding="utf-8") as handle:
        results = json.load(handle)["results"][option_set]
    return texts, results["slow"]["single"], results["fast"]["single"]


# === Construction ===


@pytest.mark.parametrize("kind", KINDS)
def test_init_kwargs_record_every_constructor_option(kind):
    cls = CLASSES[kind]
    extra = ["<a>"]
    tok = cls(vocab_file=SPM_MODEL, do_lower_case=True, additional_special_tokens=extra, my_flag=True)
    extra.append("<b>")  # the caller's list is copied, not kept
    assert tok.init_inputs == ()
    assert tok.init_kwargs["do_lower_case"] is True and tok.init_kwargs["my_flag"] is True
    assert tok.init_kwargs["additional_special_tokens"] == ["<a>"]
    files = {"vocab_file", "tokenizer_file"}
    defaulted = [name for name, p in inspect.signature(cls.__init__).parameters.items()
                 if p.default is not inspect.Parameter.empty and name not in files]
    assert len(defaulted) >= 9  # do_lower_case, split_by_punct and the seven special tokens at least
    missing = [name for name in defaulted if name not in tok.init_kwargs]
    assert not missing, missing
    other = cls(vocab_file=SPM_MODEL, my_flag=False)
    assert other.init_kwargs["my_flag"] is False and tok.init_kwargs["my_flag"] is True


@pytest.mark.parametrize("name", ["add_special_tokens", "get_vocab", "tokenize"])
@pytest.mark.parametrize("kind", KINDS)
def test_keyword_named_like_a_method_raises_attribute_error(kind, name):
    with pytest.raises(AttributeError, match=f"{name} conflicts with the method"):
        CLASSES[kind].from_pretrained(SPM_DIR, **{name: True})


@pytest.mark.parametrize("add_prefix_space", [True, False])
def test_fast_add_prefix_space_is_kept_saved_and_changes_nothing(add_prefix_space, tmp_path):
    """As transformers 4.57.6: the flag reads back and is saved, and the Metaspace pre-tokenizer prepends "▁"
    either way, so the ids equal the default tokenizer's."""
    tok = DebertaV2TokenizerFast.from_pretrained(SPM_DIR, add_prefix_space=add_prefix_space)
    assert tok.add_prefix_space is add_prefix_space
    tok.save_pretrained(str(tmp_path))
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["add_prefix_space"] is add_prefix_space
    assert DebertaV2TokenizerFast.from_pretrained(str(tmp_path)).add_prefix_space is add_prefix_space
    default = load("fast")
    assert [tok(s)["input_ids"] for s in SENTENCES] == [default(s)["input_ids"] for s in SENTENCES]


# === Special tokens ===


@pytest.mark.parametrize("key", ["eos", "unk", "sep", "cls", "mask"])
@pytest.mark.parametrize("kind", KINDS)
def test_special_token_id_setter(kind, key):
    tok = load(kind)
    setattr(tok, f"{key}_token_id", 7)
    assert getattr(tok, f"{key}_token") == tok.convert_ids_to_tokens(7) == "<0x03>"
    assert getattr(tok, f"{key}_token_id") == 7 and 7 in tok.all_special_ids
    setattr(tok, f"{key}_token_id", None)
    assert getattr(tok, f"{key}_token") is None and getattr(tok, f"{key}_token_id") is None


@pytest.mark.parametrize("kind", KINDS)
def test_cls_and_sep_setters_reach_the_slow_inputs_only(kind):
    """As transformers 4.57.6: the slow tokenizer builds [CLS] A [SEP] from the current ids; the fast one's
    backend post-processor keeps the ids it was built with."""
    tok = load(kind)
    plain_ids = tok("a b", add_special_tokens=False)["input_ids"]
    tok.cls_token_id, tok.sep_token_id = 7, 8
    want = [7, *plain_ids, 8] if kind == "slow" else [1, *plain_ids, 2]
    assert tok("a b")["input_ids"] == want


@pytest.mark.parametrize("kind", KINDS)
def test_additional_special_tokens_after_none(kind):
    tok = load(kind)
    tok.additional_special_tokens = None
    assert tok.add_special_tokens({"additional_special_tokens": ["<q>"]}) == 1
    assert tok.additional_special_tokens == ["<q>"] and tok.additional_special_tokens_ids == [len(tok) - 1]
    tok.additional_special_tokens_ids = [1, 2]
    assert tok.additional_special_tokens == ["[CLS]", "[SEP]"]


@pytest.mark.parametrize("error", [ValueError, AssertionError])
@pytest.mark.parametrize("kind", KINDS)
def test_additional_special_tokens_as_a_string_raises(kind, error):
    """A bare string is refused; the error is the AssertionError the reference raises and a ValueError."""
    tok = load(kind)
    size = len(tok)
    with pytest.raises(error, match="additional_special_tokens"):
        tok.add_special_tokens({"additional_special_tokens": "<x>"})
    assert len(tok) == size and "<x>" not in tok.get_vocab()


@pytest.mark.parametrize("reload_kind", KINDS)
@pytest.mark.parametrize("kind", KINDS)
def test_split_special_tokens_survives_save_pretrained(kind, reload_kind, tmp_path):
    tok = CLASSES[kind].from_pretrained(SPM_DIR, additional_special_tokens=["<my_tok>"], split_special_tokens=True)
    token_id = tok.convert_tokens_to_ids("<my_tok>")
    assert token_id == 128001
    assert tok.encode("<my_tok>", add_special_tokens=False, split_special_tokens=False) == [token_id]
    assert token_id not in tok.encode("<my_tok>", add_special_tokens=False)
    tok.save_pretrained(str(tmp_path))
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["split_special_tokens"] is True

    again = CLASSES[reload_kind].from_pretrained(str(tmp_path))
    sentence = "see the <my_tok> here"
    assert again.split_special_tokens is True
    assert "<my_tok>" not in again.tokenize(sentence) and token_id not in again(sentence)["input_ids"]
    assert "<my_tok>" in again.tokenize(sentence, split_special_tokens=False)


# === Files ===


@pytest.mark.parametrize("legacy_format", [None, True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_save_pretrained_legacy_format(kind, legacy_format, tmp_path):
    """None: every file; True: the sentencepiece files only; False: tokenizer.json only (the fast tokenizer;
    the slow one has no such format and raises). Each tokenizer class that can read the directory reloads a
    tokenizer that encodes as a fresh one of its class with the same added token."""
    tok = load(kind)
    tok.add_tokens(["<new>"])
    if kind == "slow" and legacy_format is False:
        with pytest.raises(ValueError, match="legacy_format"):
            tok.save_pretrained(str(tmp_path), legacy_format=False)
        return
    written = tok.save_pretrained(str(tmp_path), legacy_format=legacy_format)
    names = sorted(os.path.basename(path) for path in written)
    common = ["special_tokens_map.json", "tokenizer_config.json"]
    slow_files = ["added_tokens.json", "spm.model"]
    expected = {None: common + slow_files + (["tokenizer.json"] if kind == "fast" else []),
                True: common + slow_files, False: common + ["tokenizer.json"]}[legacy_format]
    assert names == sorted(expected) == sorted(os.listdir(tmp_path))

    text = "a <new> b [MASK]"
    for reader in [kind] if legacy_format is False else KINDS:
        want = load(reader)
        want.add_tokens(["<new>"])
        again = CLASSES[reader].from_pretrained(str(tmp_path))
        assert again(text)["input_ids"] == want(text)["input_ids"] and len(again) == len(want) == 128002


def with_added_tokens(kind: str):
    """A tokenizer with an lstrip token, a non-normalized token and an rstrip special token."""
    tok = load(kind)
    tok.add_tokens([AddedToken("<left>", lstrip=True), AddedToken("<raw>", normalized=False)])
    tok.add_special_tokens({"additional_special_tokens": [AddedToken("<sp>", rstrip=True, normalized=False)]})
    return tok


@pytest.mark.parametrize("writer,reader", [("slow", "fast"), ("fast", "slow")])
def test_added_tokens_keep_their_flags_across_kinds(writer, reader, tmp_path):
    with_added_tokens(writer).save_pretrained(str(tmp_path))
    again, want = CLASSES[reader].from_pretrained(str(tmp_path)), with_added_tokens(reader)
    assert again.added_tokens_decoder == want.added_tokens_decoder
    decoder = again.added_tokens_decoder
    assert (decoder[128001].lstrip, decoder[128002].normalized, decoder[128003].rstrip) == (True, False, True)
    assert decoder[128003].special and not decoder[128001].special
    text = "x <left> y <raw>z <sp> w"
    assert again(text)["input_ids"] == want(text)["input_ids"]
    assert again.additional_special_tokens == ["<sp>"]


@pytest.mark.parametrize("kind", KINDS)
def test_pickle_keeps_added_tokens_and_options(kind):
    tok = CLASSES[kind].from_pretrained(SPM_DIR, model_max_length=16, split_special_tokens=True)
    tok.add_tokens(["<new>"])
    tok.add_special_tokens({"additional_special_tokens": ["<sp>"]})
    clone = pickle.loads(pickle.dumps(tok))
    assert (clone.model_max_length, clone.split_special_tokens, len(clone)) == (16, True, 128003)
    assert clone.get_added_vocab() == tok.get_added_vocab()
    assert clone.additional_special_tokens == ["<sp>"]
    for text in ("a <new> b <sp>", *SENTENCES):
        assert clone(text, truncation=True)["input_ids"] == tok(text, truncation=True)["input_ids"]


# === pad ===


@pytest.mark.parametrize("kind", KINDS)
def test_pad_reads_the_first_model_input_name(kind):
    tok = load(kind)
    rows = tok(["a b c d", "a"])
    tok.model_input_names = ["inputs"] + tok.model_input_names[1:]
    with pytest.raises(ValueError, match="inputs"):
        tok.pad({"input_ids": rows["input_ids"]})
    padded = tok.pad({"inputs": rows["input_ids"], "attention_mask": rows["attention_mask"]})
    long, short = rows["input_ids"]
    assert "input_ids" not in padded
    assert padded["inputs"] == [long, short + [tok.pad_token_id] * (len(long) - len(short))]
    assert padded["attention_mask"][1] == [1] * len(short) + [0] * (len(long) - len(short))


# === Relations between calls ===


@pytest.mark.parametrize("option_set", OPTION_SETS)
def test_slow_and_fast_agree_where_the_references_agree(option_set):
    """On each corpus text where the reference's slow and fast tokenizers give the same tokens, ours agree on
    tokens, ids with a pair partner, special-token masks, padding and decoding."""
    texts, ref_slow, ref_fast = reference_single(option_set)
    agreed = [t for t, s, f in zip(texts, ref_slow, ref_fast, strict=True)
              if s["tokens"] == f["tokens"] and s["input_ids"] == f["input_ids"] and s["decode"] == f["decode"]]
    assert len(agreed) >= len(texts) // 2
    slow, fast = load("slow", **OPTION_SETS[option_set]), load("fast", **OPTION_SETS[option_set])
    options = dict(return_special_tokens_mask=True, padding="max_length", max_length=96, pad_to_multiple_of=32)
    mismatches = []
    for text in agreed:
        if slow.tokenize(text) != fast.tokenize(text):
            mismatches.append(("tokenize", text))
        slow_out, fast_out = (dict(tok(text, "and a partner", **options)) for tok in (slow, fast))
        if slow_out != fast_out:
            mismatches.append(("pair", text))
        ids = fast_out["input_ids"]
        if slow.decode(ids, skip_special_tokens=True) != fast.decode(ids, skip_special_tokens=True):
            mismatches.append(("decode", text))
    assert not mismatches, f"{len(mismatches)} of {3 * len(agreed)} checks differ, first: {mismatches[:3]}"


@pytest.mark.parametrize("kind", KINDS)
def test_batch_rows_equal_single_calls(kind):
    tok = load(kind)
    pairs = [(s, PAIR[1]) for s in SENTENCES]
    singles = [dict(tok(s)) for s in SENTENCES]
    batch = tok(SENTENCES)
    assert [{key: batch[key][i] for key in batch} for i in range(len(SENTENCES))] == singles
    pair_batch = tok(pairs)
    assert pair_batch["input_ids"] == [tok(a, b)["input_ids"] for a, b in pairs]
    assert pair_batch["token_type_ids"] == [tok(a, b)["token_type_ids"] for a, b in pairs]
    padded = tok(SENTENCES, padding=True)
    for row, single in zip(padded["input_ids"], singles, strict=True):
        assert row[: len(single["input_ids"])] == single["input_ids"]


PADDING_CASES = [  # (padding, max_length, pad_to_multiple_of, padding_side)
    ("longest", None, None, "right"),
    ("longest", None, 8, "right"),
    ("longest", None, 8, "left"),
    ("max_length", 40, None, "right"),
    ("max_length", 37, 8, "left"),
    ("do_not_pad", None, 8, "right"),
]


@pytest.mark.parametrize("padding,max_length,multiple,side", PADDING_CASES)
@pytest.mark.parametrize("kind", KINDS)
def test_padding_variants(kind, padding, max_length, multiple, side):
    tok = load(kind)
    plain = tok(SENTENCES, return_special_tokens_mask=True)
    lengths = [len(ids) for ids in plain["input_ids"]]
    padded = tok(SENTENCES, padding=padding, max_length=max_length, pad_to_multiple_of=multiple, padding_side=side,
                 return_special_tokens_mask=True)
    if padding == "do_not_pad":
        assert padded["input_ids"] == plain["input_ids"]
        return
    target = max(lengths) if padding == "longest" else max_length
    if multiple:
        target = -(-target // multiple) * multiple
    assert target > min(lengths)  # some row gets padding
    pad_values = {"input_ids": tok.pad_token_id, "attention_mask": 0, "token_type_ids": 0,
                  "special_tokens_mask": 1}
    for i, length in enumerate(lengths):
        for key, pad_value in pad_values.items():
            row, want = padded[key][i], plain[key][i]
            pads = [pad_value] * (target - length)
            assert row == (want + pads if side == "right" else pads + want), (key, i)
    assert dict(tok.pad(plain, padding=padding, max_length=max_length, pad_to_multiple_of=multiple,
                        padding_side=side)) == dict(padded)


@pytest.mark.parametrize("strategy", ["longest_first", "only_first", "only_second"])
@pytest.mark.parametrize("kind", KINDS)
def test_pair_truncation_strategies(kind, strategy):
    tok = load(kind)
    first, second = (tok.encode(text, add_special_tokens=False) for text in PAIR)
    assert len(first) > 12 and len(second) > 12
    max_length = len(first) + len(second) + 3 - 6  # six tokens too long
    out = tok(*PAIR, truncation=strategy, max_length=max_length)
    ids, types = out["input_ids"], out["token_type_ids"]
    assert len(ids) == max_length and ids[0] == tok.cls_token_id and ids.count(tok.sep_token_id) == 2
    kept_first = ids[1: types.index(1) - 1]
    kept_second = ids[types.index(1): -1]
    if strategy == "only_first":
        assert kept_first == first[:-6] and kept_second == second
    elif strategy == "only_second":
        assert kept_first == first and kept_second == second[:-6]
    else:  # the longer of the two loses tokens first; both are prefixes of their sequences
        assert len(kept_first) + len(kept_second) == len(first) + len(second) - 6
        assert kept_first == first[: len(kept_first)] and kept_second == second[: len(kept_second)]


@pytest.mark.parametrize("kind", KINDS)
def test_left_truncation_keeps_the_end(kind):
    tok = load(kind)
    body = tok.encode(SENTENCES[3], add_special_tokens=False)
    tok.truncation_side = "left"
    ids = tok(SENTENCES[3], truncation=True, max_length=10)["input_ids"]
    assert ids == [tok.cls_token_id, *body[-8:], tok.sep_token_id]


@pytest.mark.parametrize("kind", KINDS)
def test_pretokenized_input_matches_the_joined_text(kind):
    tok = load(kind)
    words = [s.split() for s in SENTENCES]
    assert [tok(w, is_split_into_words=True)["input_ids"] for w in words] == [tok(s)["input_ids"] for s in SENTENCES]
    batch = tok(words, is_split_into_words=True, padding=True)
    assert batch["input_ids"] == tok(SENTENCES, padding=True)["input_ids"]
    pair = tok(PAIR[0].split(), PAIR[1].split(), is_split_into_words=True)
    assert dict(pair) == dict(tok(*PAIR))


PREPARE_OPTIONS = [
    {},
    {"add_special_tokens": False},
    {"padding": "max_length", "max_length": 64, "return_special_tokens_mask": True},
    {"truncation": "longest_first", "max_length": 20},
    {"truncation": "only_first", "max_length": 24, "return_length": True},
]


@pytest.mark.parametrize("options", PREPARE_OPTIONS, ids=lambda o: ",".join(o) or "plain")
@pytest.mark.parametrize("kind", KINDS)
def test_prepare_for_model_equals_encode_plus(kind, options):
    """The same encoding from ids as from text, except where transformers 4.57.6's fast tokenizer differs: its
    backend gives a pair without special tokens type ids 0 then 1, and it returns the length as a list."""
    tok = load(kind)
    first, second = (tok.encode(text, add_special_tokens=False) for text in PAIR)
    for ids, texts in (((first, second), PAIR), ((first,), PAIR[:1])):
        prepared, encoded = dict(tok.prepare_for_model(*ids, **options)), dict(tok.encode_plus(*texts, **options))
        if kind == "fast" and options.get("return_length"):
            assert encoded.pop("length") == [prepared.pop("length")]
        if kind == "fast" and options.get("add_special_tokens") is False and len(ids) == 2:
            assert encoded.pop("token_type_ids") == [0] * len(first) + [1] * len(second)
            assert prepared.pop("token_type_ids") == [0] * (len(first) + len(second))
        assert prepared == encoded


@pytest.mark.parametrize("kind", KINDS)
def test_special_token_counts_and_max_lengths(kind, caplog):
    tok = load(kind, model_max_length=12)
    assert tok.num_special_tokens_to_add() == len(tok.build_inputs_with_special_tokens([])) == 2
    assert tok.num_special_tokens_to_add(pair=True) == len(tok.build_inputs_with_special_tokens([], [])) == 3
    assert (tok.max_len_single_sentence, tok.max_len_sentences_pair) == (10, 9)
    assert len(tok(SENTENCES[3], truncation=True)["input_ids"]) == 12
    assert len(tok(*PAIR, truncation=True)["input_ids"]) == 12
    with caplog.at_level(logging.WARNING):
        ids = tok(SENTENCES[3])["input_ids"]
    assert len(ids) > 12  # without truncation nothing is cut, and the user is warned
    assert f"({len(ids)} > 12)" in caplog.text


# === Offsets and word mapping (fast tokenizer) ===


@pytest.mark.parametrize("text", SENTENCES + [PAIR[0]])
def test_offsets_point_at_each_token_text(text):
    """A piece's span covers its text and, for a piece starting with "▁" after a space, that space too (as
    transformers 4.57.6: the Metaspace pre-tokenizer turns the space into the "▁")."""
    tok = load("fast")
    out = tok(text, return_offsets_mapping=True, return_special_tokens_mask=True)
    tokens = tok.convert_ids_to_tokens(out["input_ids"])
    for token, (start, end), special in zip(tokens, out["offset_mapping"], out["special_tokens_mask"], strict=True):
        if special:
            assert (start, end) == (0, 0)
            continue
        covered = token.replace("\u2581", " ") if start > 0 and token.startswith("\u2581") else token.lstrip("\u2581")
        assert text[start:end] == covered, (token, start, end)


@pytest.mark.parametrize("sequence", [0, 1])
def test_word_and_char_mappings_invert_each_other(sequence):
    tok = load("fast")
    out = tok(*PAIR)
    text = PAIR[sequence]
    position = 0
    for index, word in enumerate(text.split()):
        start = text.index(word, position)
        position = start + len(word)
        span = out.word_to_chars(index, sequence_index=sequence)
        # the span ends with the word and starts at the space before it (none for the first word), as the offsets
        assert (span.start, span.end) == (max(start - 1, 0), position), (word, span)
        assert out.char_to_word(start, sequence_index=sequence) == index
        assert out.char_to_word(0, start, sequence_index=sequence) == index  # (batch index, char index)


def test_slow_encodings_have_no_char_mappings():
    out = load("slow")(PAIR[0])
    with pytest.raises(ValueError, match="DebertaV2TokenizerFast"):
        out.char_to_word(0)
    with pytest.raises(ValueError, match="DebertaV2TokenizerFast"):
        out.word_to_chars(0)
