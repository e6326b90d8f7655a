"""`DebertaV2Tokenizer`: the sentencepiece ("slow") DeBERTa-v2/v3 tokenizer.

Reproduces transformers 4.57.6's `DebertaV2Tokenizer` token for token:

1. `add_prefix_space=True` or `is_split_into_words` prepend a space;
2. `do_lower_case` lower-cases everything except special-token strings, one character at a time (so a
   final capital sigma becomes "σ", never "ς");
3. the added tokens (`[PAD] [CLS] [SEP] [UNK] [MASK]` plus any from `added_tokens.json`) are split out of
   the text, honouring their `lstrip` / `rstrip` / `single_word` flags;
4. every other chunk goes to sentencepiece, after splitting on punctuation when `split_by_punct`.

`[MASK]` is not a sentencepiece piece: it is appended after the vocabulary (id 128000 for the v3 model).
"""

from __future__ import annotations

import os
import re
import sys
import unicodedata
from functools import lru_cache
from typing import Any, Optional

import sentencepiece
from tokenizers import AddedToken

from deberta_xf.errors import UnsupportedFeatureError
from deberta_xf.fileio import atomic_write_bytes
from deberta_xf.tokenization_utils import (
    VOCAB_FILE,
    BatchEncoding,
    CallOptions,
    DebertaV2TokenizerBase,
    check_ids_or_text,
)

_WORD_START = "\u2581"  # "▁", sentencepiece's word-boundary marker


def load_sentencepiece(vocab_file, sp_model_kwargs: Optional[dict[str, Any]] = None):
    """A loaded `SentencePieceProcessor`; a missing or unreadable file raises an error naming it."""
    if vocab_file is None:
        raise ValueError("vocab_file is required: the path of the sentencepiece model (spm.model)")
    vocab_file = os.fspath(vocab_file)
    if not os.path.isfile(vocab_file):
        raise FileNotFoundError(f"SentencePiece model file not found: {vocab_file}")
    processor = sentencepiece.SentencePieceProcessor(**(sp_model_kwargs or {}))
    try:
        processor.Load(vocab_file)
    except (RuntimeError, OSError) as err:
        raise ValueError(f"{vocab_file} is not a valid SentencePiece model: {err}") from err
    return processor


@lru_cache(maxsize=None)
def _punctuation_splitter() -> re.Pattern:
    """A regex that isolates every character the reference's `_is_punctuation` accepts: ASCII symbols
    and punctuation, and every Unicode "P*" character. Built once, on first use (~0.3 s)."""
    ranges, start = [], None
    for cp in range(sys.maxunicode + 2):
        is_punct = cp <= sys.maxunicode and (
            33 <= cp <= 47
            or 58 <= cp <= 64
            or 91 <= cp <= 96
            or 123 <= cp <= 126
            or unicodedata.category(chr(cp)).startswith("P")
        )
        if is_punct and start is None:
            start = cp
        elif not is_punct and start is not None:
            ranges.append(re.escape(chr(start)) + ("" if start == cp - 1 else "-" + re.escape(chr(cp - 1))))
            start = None
    return re.compile("([" + "".join(ranges) + "])")


def _lower(text: str) -> str:
    """The reference lower-cases one character at a time, which differs from `str.lower` only for the
    context-dependent final sigma."""
    if "\u03a3" not in text:
        return text.lower()
    return "".join(char.lower() for char in text)


def _same_token(a: AddedToken, b: AddedToken) -> bool:
    """AddedToken equality as the reference's (every field)."""
    fields = ("content", "single_word", "lstrip", "rstrip", "normalized", "special")
    return all(getattr(a, name) == getattr(b, name) for name in fields)


def _alternation(tokens) -> Optional[re.Pattern]:
    tokens = [t for t in tokens if t]
    return re.compile("(" + "|".join(map(re.escape, tokens)) + ")") if tokens else None


class DebertaV2Tokenizer(DebertaV2TokenizerBase):
    """DeBERTa-v2/v3 tokenizer on sentencepiece, with the reference's arguments and defaults.

    Args:
        vocab_file: the sentencepiece model (`spm.model`).
        do_lower_case: lower-case the input (special-token strings excepted).
        split_by_punct: split on punctuation before sentencepiece.
        bos_token, eos_token, unk_token, sep_token, pad_token, cls_token, mask_token: special tokens.
        sp_model_kwargs: passed to `sentencepiece.SentencePieceProcessor` (e.g. sampling options).
        added_tokens_decoder: {id: AddedToken}, as read from a saved tokenizer.
        model_max_length, padding_side, truncation_side, clean_up_tokenization_spaces: as in the reference.
    """

    vocab_files_names = {"vocab_file": VOCAB_FILE}

    def __init__(
        self,
        vocab_file,
        do_lower_case: bool = False,
        split_by_punct: bool = False,
        bos_token="[CLS]",
        eos_token="[SEP]",
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        sp_model_kwargs: Optional[dict[str, Any]] = None,
        added_tokens_decoder: Optional[dict[int, AddedToken]] = None,
        **kwargs,
    ) -> None:
        init_kwargs = self._constructor_arguments(locals())
        self.sp_model_kwargs = dict(sp_model_kwargs or {})
        self.sp_model = load_sentencepiece(vocab_file, self.sp_model_kwargs)
        self.vocab_file = os.fspath(vocab_file)
        self.do_lower_case = do_lower_case
        self.split_by_punct = split_by_punct
        self._pieces = [self.sp_model.IdToPiece(i) for i in range(self.sp_model.GetPieceSize())]
        self._vocab = {piece: i for i, piece in enumerate(self._pieces)}

        if isinstance(unk_token, str):  # the reference makes [UNK] a *normalized* special token
            unk_token = AddedToken(unk_token, lstrip=False, rstrip=False, normalized=True, special=True)
        kwargs.pop("tokenizer_file", None)
        kwargs["sp_model_kwargs"] = self.sp_model_kwargs  # saved in tokenizer_config.json, as the reference
        self._init_common(
            dict(
                bos_token=bos_token, eos_token=eos_token, unk_token=unk_token, sep_token=sep_token,
                pad_token=pad_token, cls_token=cls_token, mask_token=mask_token,
            ),
            kwargs,
            init_kwargs,
        )

        # Added tokens: those read from a saved tokenizer, then every special token not yet among them.
        # A token already in the sentencepiece vocabulary keeps its id; the others go after it, in order.
        self._added_tokens_decoder = {int(i): token for i, token in sorted((added_tokens_decoder or {}).items())}
        known = {token.content for token in self._added_tokens_decoder.values()}
        next_id = len(self._vocab.keys() | known)
        for token in self.all_special_tokens_extended:
            if token.content in known:
                continue
            index = self._vocab.get(token.content)
            if index is None:
                index, next_id = next_id, next_id + 1
            self._added_tokens_decoder[index] = AddedToken(
                token.content, single_word=token.single_word, lstrip=token.lstrip, rstrip=token.rstrip,
                normalized=token.normalized, special=True,
            )
            known.add(token.content)
        self._refresh_added_tokens()
        # What `convert_tokens_to_string` keeps out of sentencepiece: the special tokens *at construction*
        # (the reference hands its SPMTokenizer a copy then; tokens added later decode through sentencepiece).
        self._spm_special_strings = self._special_strings

    def _special_tokens_changed(self) -> None:
        if hasattr(self, "_added_tokens_decoder"):  # not during __init__
            self._refresh_added_tokens()

    def _refresh_added_tokens(self) -> None:
        """Derived lookups: content -> id, the added-token splitter, the lower-casing exceptions."""
        self._added_tokens_encoder = {token.content: i for i, token in sorted(self._added_tokens_decoder.items())}
        # Longest first, so that at a given position the longest added token wins, as in the reference's trie.
        self._added_split_re = _alternation(sorted(self._added_tokens_encoder, key=len, reverse=True))
        # Strings `do_lower_case` leaves alone, in the reference's order: special tokens, then normalized
        # non-special added tokens.
        protected = self.all_special_tokens + [
            t.content for t in self._added_tokens_decoder.values() if not t.special and t.normalized
        ]
        self._lowercase_protect_re = _alternation(protected)
        self._special_strings = frozenset(self.all_special_tokens)
        self._has_strip_rules = any(t.lstrip or t.rstrip or t.single_word for t in self._added_tokens_decoder.values())

    # --- vocabulary ---

    @property
    def vocab_size(self) -> int:
        """Number of sentencepiece pieces (128000 for DeBERTa-v3), without added tokens such as [MASK]."""
        return len(self._pieces)

    @property
    def vocab(self) -> dict[str, int]:
        return dict(self._vocab)

    def get_vocab(self) -> dict[str, int]:
        vocab = dict(self._vocab)
        vocab.update(self.added_tokens_encoder)
        return vocab

    def __len__(self) -> int:
        return len(self.get_vocab())

    @property
    def added_tokens_decoder(self) -> dict[int, AddedToken]:
        return dict(sorted(self._added_tokens_decoder.items()))

    @property
    def added_tokens_encoder(self) -> dict[str, int]:
        return dict(self._added_tokens_encoder)

    def convert_tokens_to_ids(self, tokens):
        """Token(s) to id(s): added tokens first, then sentencepiece (unknown pieces give the unk id)."""
        if tokens is None:
            return None
        if isinstance(tokens, str):
            return self._token_to_id(tokens)
        return [self._token_to_id(token) for token in tokens]

    def _token_to_id(self, token: str) -> int:
        index = self._added_tokens_encoder.get(token)
        return self.sp_model.PieceToId(token) if index is None else index

    def convert_ids_to_tokens(self, ids, skip_special_tokens: bool = False):
        """Id(s) to token(s); ids past the sentencepiece vocabulary that are not added tokens give [UNK]."""
        if isinstance(ids, int):
            return self._id_to_token(ids)
        special_ids = set(self.all_special_ids) if skip_special_tokens else ()
        return [self._id_to_token(int(i)) for i in ids if int(i) not in special_ids]

    def _id_to_token(self, index: int) -> str:
        token = self._added_tokens_decoder.get(index)
        if token is not None:
            return token.content
        return self._pieces[index] if index < len(self._pieces) else self.unk_token

    # --- tokenization ---

    def _split_added_tokens(self, text: str, add_prefix_space: bool, split_special_tokens: bool = False) -> list[str]:
        """The text cut into plain chunks and added-token strings (the reference's `tokenize` up to the
        call of `_tokenize`); with `split_special_tokens` no added token is cut out, as in the reference."""
        if not isinstance(text, str):
            raise TypeError(f"`text` must be a string, got {type(text).__name__}")
        if add_prefix_space:
            text = " " + text
        if self.do_lower_case:
            if self._lowercase_protect_re is None:
                text = _lower(text)
            else:
                parts = self._lowercase_protect_re.split(text)
                parts[::2] = [_lower(part) for part in parts[::2]]
                text = "".join(parts)
        if self._added_split_re is None or split_special_tokens:
            return [text] if text else []
        chunks = [chunk for chunk in self._added_split_re.split(text) if chunk]
        if self._has_strip_rules:
            self._apply_strip_rules(chunks)
        return chunks

    def _apply_strip_rules(self, chunks: list[str]) -> None:
        """`lstrip` / `rstrip` eat the spaces beside an added token; `single_word` keeps a token glued to a
        word as text. Same walk as the reference, in place."""
        for i, chunk in enumerate(chunks):
            index = self._added_tokens_encoder.get(chunk)
            if index is None:
                continue
            token = self._added_tokens_decoder[index]
            left = chunks[i - 1] if i > 0 else None
            right = chunks[i + 1] if i < len(chunks) - 1 else None
            if token.rstrip and right:
                chunks[i + 1] = right.lstrip()
            if token.lstrip and left:
                chunks[i - 1] = left.rstrip()
            if token.single_word and left and left[-1] != " ":
                chunks[i - 1] += chunk
                chunks[i] = ""
            elif token.single_word and right and right[0] != " ":
                chunks[i + 1] = chunk + chunks[i + 1]
                chunks[i] = ""

    def _spm_inputs(self, chunk: str) -> list[str]:
        """What sentencepiece sees for one plain chunk: the chunk, or its punctuation-split words."""
        if self.do_lower_case:
            chunk = chunk.lower()  # the reference lower-cases again in `_tokenize` (a no-op after step 2)
        if not self.split_by_punct:
            return [chunk]
        return [word for word in _punctuation_splitter().split(chunk) if word]

    def _encode_text(self, text: str, add_prefix_space: bool, out_type, split_special_tokens: bool = False) -> list:
        encode = self.sp_model.encode
        out = []
        for chunk in self._split_added_tokens(text, add_prefix_space, split_special_tokens):
            index = None if split_special_tokens else self._added_tokens_encoder.get(chunk)
            if index is not None:
                out.append(chunk if out_type is str else index)
                continue
            for piece_input in self._spm_inputs(chunk):
                out.extend(encode(piece_input, out_type=out_type))
        return out

    def tokenize(
        self, text: str, *, add_prefix_space: bool = False, is_split_into_words: bool = False,
        split_special_tokens: Optional[bool] = None,
    ) -> list[str]:
        """Text to tokens (sentencepiece pieces and added-token strings), without [CLS]/[SEP].
        `split_special_tokens` (default: the tokenizer's attribute): added-token strings are tokenized as text."""
        split_special_tokens = self._split_special_tokens(split_special_tokens)
        return self._encode_text(text, add_prefix_space or is_split_into_words, str, split_special_tokens)

    def _input_ids(self, text, is_split_into_words: bool, add_prefix_space: bool, split_special: bool) -> list[int]:
        """The reference's `get_input_ids`: a text is tokenized; a list of strings is a list of words
        (is_split_into_words) or of tokens; a list of token ids is kept as given."""
        if isinstance(text, str):
            return self._encode_text(text, add_prefix_space, int, split_special)
        if text and all(isinstance(item, str) for item in text):
            if is_split_into_words:
                return [i for word in text for i in self._encode_text(word, True, int, split_special)]
            return self.convert_tokens_to_ids(list(text))
        return list(text)

    def _single_input(self, text, text_pair, is_split_into_words: bool) -> tuple:
        """`encode_plus` takes, for `text` and `text_pair`, what the reference's `get_input_ids` takes: a text, a
        list of tokens (a list of words with is_split_into_words) or a list of token ids."""
        check_ids_or_text(text, "text")
        if text_pair is not None:
            check_ids_or_text(text_pair, "text_pair")
        return text, text_pair

    def _batch_inputs(self, batch: list, is_split_into_words: bool) -> list[tuple]:
        """`batch_encode_plus` rows as the reference's: an item is an input (as for `encode_plus`) or an
        (input, input_pair) pair; with is_split_into_words a list of strings or ids is one input."""
        rows = []
        for i, item in enumerate(batch):
            name = f"batch_text_or_text_pairs[{i}]"
            single = not isinstance(item, (list, tuple)) or (
                is_split_into_words and bool(item) and not isinstance(item[0], (list, tuple))
            )
            if single:
                first, second = item, None
            elif len(item) == 2:
                first, second = item
            else:
                raise ValueError(
                    f"`{name}` has {len(item)} items: a list in a batch is an (input, input_pair) pair "
                    "(a list of token ids or tokens is one input only with is_split_into_words=True)"
                )
            check_ids_or_text(first, name)
            if second is not None:
                check_ids_or_text(second, f"{name}[1]")
            rows.append((first, second))
        return rows

    # --- call ---

    def _encode(self, inputs, options: CallOptions, add_prefix_space: bool = False) -> BatchEncoding:
        """The reference's slow path: each row truncated, given its special tokens, then padded (a single
        input in `prepare_for_model`, a batch by `pad` once every row is built)."""
        if options.return_offsets_mapping:  # as the reference's slow tokenizer
            raise UnsupportedFeatureError(
                "return_offsets_mapping is not available with the sentencepiece tokenizer; "
                "use DebertaV2TokenizerFast"
            )
        if options.token_type_ids_requested and not options.add_special_tokens:
            raise ValueError(
                "Asking to return token_type_ids while setting add_special_tokens to False is undefined; "
                "set add_special_tokens=True or leave return_token_type_ids unset"
            )
        words, split = options.is_split_into_words, options.split_special_tokens
        if options.batched:  # the reference's batch path drops the call's split_special_tokens: the attribute rules
            split = self.split_special_tokens
        encoded = [
            (
                self._input_ids(first, words, add_prefix_space, split),
                None if second is None else self._input_ids(second, words, add_prefix_space, split),
            )
            for first, second in inputs
        ]
        if not options.batched:
            ids, pair_ids = encoded[0]
            row = self._prepare_row(ids, pair_ids, options, pad=True)
            return BatchEncoding(row, tensor_type=options.return_tensors, prepend_batch_axis=True)
        if not encoded:  # an empty batch: empty fields, as our fast tokenizer (the reference fails here)
            empty = {"input_ids": []}
            empty.update({"token_type_ids": []} if options.return_token_type_ids else {})
            empty.update({"attention_mask": []} if options.return_attention_mask else {})
            return BatchEncoding(empty, tensor_type=options.return_tensors)
        columns: dict[str, list] = {}
        for ids, pair_ids in encoded:
            for key, value in self._prepare_row(ids, pair_ids, options, pad=False).items():
                columns.setdefault(key, []).append(value)
        padded = self.pad(
            columns,
            padding=options.padding_strategy,
            max_length=options.max_length,
            pad_to_multiple_of=options.pad_to_multiple_of,
            padding_side=options.padding_side,
            return_attention_mask=options.return_attention_mask,
        )
        return BatchEncoding(padded.data, tensor_type=options.return_tensors)

    # --- adding tokens ---

    def _add_tokens(self, new_tokens: list, special_tokens: bool = False) -> int:
        """The reference's slow `_add_tokens`: a token already in the vocabulary keeps its id (and does not
        count), others get the next ids; with `do_lower_case`, normalized non-special ones are lower-cased;
        new special tokens join `additional_special_tokens`."""
        current_vocab = self.get_vocab()
        new_index = len(current_vocab)
        added = 0
        for token in new_tokens:
            if str(token) == "":
                continue
            if isinstance(token, str):
                if token in self._added_tokens_encoder:
                    continue
                is_special = token in self.all_special_tokens or special_tokens
                token = AddedToken(token, rstrip=False, lstrip=False, normalized=not is_special, special=is_special)
            else:
                token = AddedToken(
                    token.content, single_word=token.single_word, lstrip=token.lstrip, rstrip=token.rstrip,
                    normalized=token.normalized, special=token.special or special_tokens,
                )
            if any(_same_token(token, known) for known in self._added_tokens_decoder.values()):
                continue
            if not token.special and token.normalized and self.do_lower_case:
                token = AddedToken(
                    token.content.lower(), single_word=token.single_word, lstrip=token.lstrip,
                    rstrip=token.rstrip, normalized=True, special=False,
                )
            if token.content not in current_vocab:
                index = new_index + added
                current_vocab[token.content] = index
                added += 1
            else:
                index = current_vocab[token.content]
            if token.special and token.content not in self.all_special_tokens:
                self._additional_special_tokens.append(token)
            self._added_tokens_decoder[index] = token
            self._added_tokens_encoder[token.content] = index
        self._refresh_added_tokens()
        return added

    # --- decoding ---

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Pieces to text with sentencepiece; special-token strings are kept verbatim, set off by one space
        from the preceding text (the reference's `SPMTokenizer.decode`)."""
        out, pending, prev_is_special = "", [], False
        for token in tokens:
            if token in self._spm_special_strings:
                if not prev_is_special:
                    out += " "
                out += self.sp_model.decode_pieces(pending) + token
                pending, prev_is_special = [], True
            else:
                pending.append(token)
                prev_is_special = False
        out += self.sp_model.decode_pieces(pending)
        return out.strip()

    def _decode(self, token_ids, skip_special_tokens: bool = False, spaces_between_special_tokens: bool = True) -> str:
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        tokens = self.convert_ids_to_tokens(token_ids, skip_special_tokens=skip_special_tokens)
        # Non-special added tokens are decoded on their own and joined with spaces (the reference's
        # "legacy added tokens"); special ones go through convert_tokens_to_string.
        legacy = set(self._added_tokens_encoder) - self._special_strings
        legacy |= {
            t.content for t in self._additional_special_tokens if self._token_to_id(t.content) >= self.vocab_size
        }
        sub_texts, current = [], []
        for token in tokens:
            if skip_special_tokens and token in self._special_strings:
                continue
            if token in legacy:
                if current:
                    text = self.convert_tokens_to_string(current)
                    if text:
                        sub_texts.append(text)
                    current = []
                sub_texts.append(token)
            else:
                current.append(token)
        if current:
            sub_texts.append(self.convert_tokens_to_string(current))
        return (" " if spaces_between_special_tokens else "").join(sub_texts)

    # --- saving ---

    def save_vocabulary(self, save_directory: str, filename_prefix: Optional[str] = None) -> tuple[str]:
        """Write the sentencepiece model as `spm.model` (prefixed by `filename_prefix-`)."""
        name = f"{filename_prefix}-{VOCAB_FILE}" if filename_prefix else VOCAB_FILE
        path = os.path.join(os.fspath(save_directory), name)
        atomic_write_bytes(path, self.sp_model.serialized_model_proto())
        return (path,)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["sp_model"] = self.sp_model.serialized_model_proto()
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.sp_model = sentencepiece.SentencePieceProcessor(**self.sp_model_kwargs)
        self.sp_model.LoadFromSerializedProto(state["sp_model"])


__all__ = ["DebertaV2Tokenizer"]
