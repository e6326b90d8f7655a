"""`DebertaV2TokenizerFast`: the DeBERTa-v2/v3 tokenizer on the Rust `tokenizers` library.

Built from `tokenizer.json` when there is one, else converted from `spm.model` the way transformers
4.57.6's `DebertaV2Converter` converts it:

- normalizer: [Lowercase if do_lower_case] + Strip + Precompiled(the model's nmt_nfkc charsmap) +
  Replace(" {2,}" -> " ");
- pre-tokenizer: [Punctuation("isolated") if split_by_punct] + Metaspace("▁", prepend_scheme="always");
- model: Unigram over the sentencepiece pieces and scores, unk = trainer_spec.unk_id, *no* byte fallback
  (so characters the slow tokenizer spells as <0xNN> byte pieces become [UNK] here, as in the reference);
- control pieces ([PAD] [CLS] [SEP]) become special added tokens, then [UNK] and [MASK] are added;
- post-processor: `[CLS]:0 $A:0 [SEP]:0` / `[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1`; decoder: Metaspace.

Offsets (`return_offsets_mapping=True`) come from the Rust encoding.
"""

from __future__ import annotations

import os
from typing import Optional

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import Unigram

from deberta_xf.fileio import atomic_copy, atomic_path
from deberta_xf.tokenization_utils import (
    TOKENIZER_FILE,
    VOCAB_FILE,
    BatchEncoding,
    CallOptions,
    DebertaV2TokenizerBase,
)

_SPM_CONTROL, _SPM_USER_DEFINED = 3, 4  # sentencepiece piece types that become added tokens
_SPM_UNIGRAM = 1


def _read_spm_proto(vocab_file: str):
    """Parse `spm.model` (a sentencepiece ModelProto); errors name the file."""
    from sentencepiece import sentencepiece_model_pb2

    vocab_file = os.fspath(vocab_file)
    if not os.path.isfile(vocab_file):
        raise FileNotFoundError(f"SentencePiece model file not found: {vocab_file}")
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        with open(vocab_file, "rb") as handle:
            proto.ParseFromString(handle.read())
    except Exception as err:  # protobuf's DecodeError and friends
        raise ValueError(f"{vocab_file} is not a valid SentencePiece model: {err}") from err
    if not proto.pieces:
        raise ValueError(f"{vocab_file} is not a valid SentencePiece model: it has no pieces")
    return proto


def convert_spm_to_tokenizer(vocab_file: str, do_lower_case: bool = False, split_by_punct: bool = False) -> Tokenizer:
    """The `tokenizers.Tokenizer` that transformers' DebertaV2Converter builds from `spm.model`."""
    proto = _read_spm_proto(vocab_file)
    if proto.trainer_spec.model_type != _SPM_UNIGRAM:
        raise ValueError(
            f"{vocab_file}: only Unigram sentencepiece models are supported "
            f"(model_type={proto.trainer_spec.model_type}); DeBERTa-v2/v3 models are Unigram"
        )
    vocab = [(piece.piece, piece.score) for piece in proto.pieces]
    tokenizer = Tokenizer(Unigram(vocab, unk_id=proto.trainer_spec.unk_id, byte_fallback=False))
    tokenizer.add_tokens(
        [
            AddedToken(piece.piece, normalized=False, special=piece.type == _SPM_CONTROL)
            for piece in proto.pieces
            if piece.type in (_SPM_CONTROL, _SPM_USER_DEFINED)
        ]
    )

    steps = [normalizers.Lowercase()] if do_lower_case else []
    steps.append(normalizers.Strip())
    charsmap = proto.normalizer_spec.precompiled_charsmap
    if charsmap:
        steps.append(normalizers.Precompiled(charsmap))
    steps.append(normalizers.Replace(Regex(" {2,}"), " "))
    tokenizer.normalizer = normalizers.Sequence(steps)

    # The reference's prepend scheme is "always": the slow tokenizer has no `add_prefix_space` attribute
    # (so it counts as True) and no `legacy` attribute (counts as True).
    pre = [pre_tokenizers.Punctuation(behavior="isolated")] if split_by_punct else []
    pre.append(pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(pre)
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")

    # Literal "[CLS]" / "[SEP]" with their sentencepiece ids, as the reference converter writes them.
    piece_ids = {piece.piece: i for i, piece in enumerate(proto.pieces)}
    unk_id = proto.trainer_spec.unk_id
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[(t, piece_ids.get(t, unk_id)) for t in ("[CLS]", "[SEP]")],
    )
    return tokenizer


class DebertaV2TokenizerFast(DebertaV2TokenizerBase):
    """DeBERTa-v2/v3 tokenizer on `tokenizers`, with the reference's arguments and defaults.

    Args:
        vocab_file: the sentencepiece model (`spm.model`), converted when `tokenizer_file` is not given;
            also what `save_vocabulary` copies.
        tokenizer_file: a `tokenizer.json`; when given, the pipeline is read from it (`do_lower_case` and
            `split_by_punct` then only describe it).
        do_lower_case, split_by_punct, special tokens, added_tokens_decoder, model_max_length, padding_side,
        truncation_side, clean_up_tokenization_spaces: as for `DebertaV2Tokenizer`.
    """

    is_fast = True
    vocab_files_names = {"vocab_file": VOCAB_FILE, "tokenizer_file": TOKENIZER_FILE}

    def __init__(
        self,
        vocab_file=None,
        tokenizer_file=None,
        do_lower_case: bool = False,
        split_by_punct: bool = False,
        bos_token="[CLS]",
        eos_token="[SEP]",
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        added_tokens_decoder: Optional[dict[int, AddedToken]] = None,
        **kwargs,
    ) -> None:
        init_kwargs = self._constructor_arguments(locals())
        self.vocab_file = None if vocab_file is None else os.fspath(vocab_file)
        # Kept (and saved) as the reference keeps it; the Metaspace pre-tokenizer always prepends "▁" here.
        self.add_prefix_space = kwargs.get("add_prefix_space", False)
        self.do_lower_case = do_lower_case
        self.split_by_punct = split_by_punct
        if tokenizer_file is not None:
            tokenizer_file = os.fspath(tokenizer_file)
            if not os.path.isfile(tokenizer_file):
                raise FileNotFoundError(f"tokenizer file not found: {tokenizer_file}")
            try:
                self._tokenizer = Tokenizer.from_file(tokenizer_file)
            except Exception as err:
                raise ValueError(f"{tokenizer_file} is not a valid tokenizers JSON file: {err}") from err
        elif vocab_file is not None:
            self._tokenizer = convert_spm_to_tokenizer(vocab_file, do_lower_case, split_by_punct)
        else:
            raise ValueError(
                "DebertaV2TokenizerFast needs a vocab_file (spm.model) or a tokenizer_file (tokenizer.json)"
            )

        if isinstance(unk_token, str):  # as the slow tokenizer: [UNK] is a *normalized* special token
            unk_token = AddedToken(unk_token, lstrip=False, rstrip=False, normalized=True, special=True)
        kwargs.setdefault("sp_model_kwargs", {})
        self._init_common(
            dict(
                bos_token=bos_token, eos_token=eos_token, unk_token=unk_token, sep_token=sep_token,
                pad_token=pad_token, cls_token=cls_token, mask_token=mask_token,
            ),
            kwargs,
            init_kwargs,
        )

        # As the reference: the saved added tokens, then the special tokens the backend does not have yet.
        to_add = [token for _, token in sorted((added_tokens_decoder or {}).items())]
        known = {token.content for token in self._tokenizer.get_added_tokens_decoder().values()}
        known |= {token.content for token in to_add}
        to_add += [token for token in self.all_special_tokens_extended if token.content not in known]
        if to_add:
            self._tokenizer.add_tokens(to_add)
        self._tokenizer.encode_special_tokens = self.split_special_tokens
        self._backend_settings = None  # (truncation, padding) last set on the backend

    # --- vocabulary ---

    @property
    def backend_tokenizer(self) -> Tokenizer:
        """The `tokenizers.Tokenizer`. Truncation and padding on it are set by each call."""
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """Size of the base vocabulary (128000 for DeBERTa-v3), without added tokens such as [MASK]."""
        return self._tokenizer.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self._tokenizer.get_vocab(with_added_tokens=True)

    @property
    def vocab(self) -> dict[str, int]:
        return self.get_vocab()

    @property
    def added_tokens_decoder(self) -> dict[int, AddedToken]:
        return dict(sorted(self._tokenizer.get_added_tokens_decoder().items()))

    @property
    def added_tokens_encoder(self) -> dict[str, int]:
        return self.get_added_vocab()

    def convert_tokens_to_ids(self, tokens):
        """Token(s) to id(s); unknown tokens give the unk id."""
        if tokens is None:
            return None
        if isinstance(tokens, str):
            return self._token_to_id(tokens)
        return [self._token_to_id(token) for token in tokens]

    def _token_to_id(self, token: str) -> int:
        index = self._tokenizer.token_to_id(token)
        return self._tokenizer.token_to_id(self.unk_token) if index is None else index

    def convert_ids_to_tokens(self, ids, skip_special_tokens: bool = False):
        """Id(s) to token(s); an id outside the vocabulary gives None."""
        if isinstance(ids, int):
            return self._tokenizer.id_to_token(ids)
        special_ids = set(self.all_special_ids) if skip_special_tokens else ()
        return [self._tokenizer.id_to_token(int(i)) for i in ids if int(i) not in special_ids]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return self._tokenizer.decoder.decode(tokens)

    # --- tokenization ---

    def tokenize(
        self, text: str, pair: Optional[str] = None, add_special_tokens: bool = False,
        split_special_tokens: Optional[bool] = None,
    ) -> list[str]:
        """Text (and optional pair) to tokens, without [CLS]/[SEP] unless `add_special_tokens`.
        `split_special_tokens` (default: the tokenizer's attribute): added-token strings are tokenized as text."""
        for name, value in (("text", text), ("pair", pair)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"`{name}` must be a string, got {type(value).__name__}")
        self._set_truncation_and_padding(None, None)
        self._tokenizer.encode_special_tokens = self._split_special_tokens(split_special_tokens)
        return self._tokenizer.encode(text, pair or None, add_special_tokens=add_special_tokens).tokens

    def _set_truncation_and_padding(self, truncation: Optional[dict], padding: Optional[dict]) -> None:
        if self._backend_settings == (truncation, padding):
            return
        if truncation is None:
            self._tokenizer.no_truncation()
        else:
            self._tokenizer.enable_truncation(**truncation)
        if padding is None:
            self._tokenizer.no_padding()
        else:
            self._tokenizer.enable_padding(**padding)
        self._backend_settings = (truncation, padding)

    def _encode(self, inputs, options: CallOptions) -> BatchEncoding:
        """The reference's fast path: the backend truncates (in windows of `max_length` sharing `stride`
        tokens) and pads; each window of an input is a row, `overflow_to_sample_mapping` names its input."""
        truncation = None
        if options.truncation_strategy != "do_not_truncate":
            # A length past any text (MAX_TEXT_CHARS characters give fewer than 2**31 tokens) is clamped: the
            # backend takes a 64-bit size and `max_length` may be as large as MAX_LENGTH_OPTION.
            truncation = dict(
                max_length=min(options.max_length, 2**31), stride=options.stride, strategy=options.truncation_strategy,
                direction=self.truncation_side,
            )
        padding = None
        if options.padding_strategy != "do_not_pad":
            padding = dict(
                length=options.max_length if options.padding_strategy == "max_length" else None,
                direction=options.padding_side,
                pad_id=self.pad_token_id,
                pad_type_id=self.pad_token_type_id,
                pad_token=self.pad_token,
                pad_to_multiple_of=options.pad_to_multiple_of,
            )
        self._set_truncation_and_padding(truncation, padding)
        self._tokenizer.encode_special_tokens = options.split_special_tokens

        special, pretokenized = options.add_special_tokens, options.is_split_into_words
        if options.batched:
            batch = [first if second is None else (first, second) for first, second in inputs]
            encodings = self._tokenizer.encode_batch(batch, add_special_tokens=special, is_pretokenized=pretokenized)
        else:
            first, second = inputs[0]
            # The reference passes the second text only when it is truthy: text_pair="" encodes no pair.
            encodings = [
                self._tokenizer.encode(first, second or None, is_pretokenized=pretokenized, add_special_tokens=special)
            ]

        rows, sample_mapping = [], []
        for index, encoding in enumerate(encodings):
            self._warn_if_too_long(len(encoding.ids), options)
            windows = [encoding] + (encoding.overflowing if options.return_overflowing_tokens else [])
            rows += windows
            sample_mapping += [index] * len(windows)
        data = {"input_ids": [e.ids for e in rows]}
        if options.return_token_type_ids:
            data["token_type_ids"] = [e.type_ids for e in rows]
        if options.return_attention_mask:
            data["attention_mask"] = [e.attention_mask for e in rows]
        if options.return_special_tokens_mask:
            data["special_tokens_mask"] = [e.special_tokens_mask for e in rows]
        if options.return_offsets_mapping:
            data["offset_mapping"] = [e.offsets for e in rows]
        if options.return_length:
            data["length"] = [len(e.ids) for e in rows]
        if options.return_overflowing_tokens:
            data["overflow_to_sample_mapping"] = sample_mapping
        # A single input loses the batch axis, unless it has tensors or windows (as the reference).
        # (`length` stays a one-item list there, as the reference's unbatching only unwraps lists of lists.)
        if not options.batched and options.return_tensors is None and not options.return_overflowing_tokens:
            data = {key: value[0] if value and isinstance(value[0], list) else value for key, value in data.items()}
        return BatchEncoding(data, rows, tensor_type=options.return_tensors)

    # --- adding tokens ---

    def _add_tokens(self, new_tokens: list, special_tokens: bool = False) -> int:
        """Into the backend, as the reference's fast `_add_tokens`: a string is normalized unless special."""
        self._set_truncation_and_padding(None, None)
        if special_tokens:
            return self._tokenizer.add_special_tokens(new_tokens)
        return self._tokenizer.add_tokens(new_tokens)

    # --- decoding ---

    def _decode(self, token_ids, skip_special_tokens: bool = False, spaces_between_special_tokens: bool = True) -> str:
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        return self._tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)

    # --- saving ---

    @property
    def can_save_slow_tokenizer(self) -> bool:
        return self.vocab_file is not None and os.path.isfile(self.vocab_file)

    def save_vocabulary(self, save_directory: str, filename_prefix: Optional[str] = None) -> tuple[str]:
        """Copy `spm.model` into `save_directory` (needs the `vocab_file` this tokenizer was built from)."""
        if not self.can_save_slow_tokenizer:
            raise ValueError(
                "This fast tokenizer was not built from an existing spm.model, so it cannot save one "
                f"(vocab_file={self.vocab_file!r})"
            )
        name = f"{filename_prefix}-{VOCAB_FILE}" if filename_prefix else VOCAB_FILE
        path = os.path.join(os.fspath(save_directory), name)
        if os.path.abspath(self.vocab_file) != os.path.abspath(path):
            atomic_copy(self.vocab_file, path)
        return (path,)

    def _save_model_files(
        self, save_directory: str, filename_prefix: Optional[str], legacy_format: Optional[bool]
    ) -> list[str]:
        """`spm.model` (when there is one, unless legacy_format=False) and `tokenizer.json` (unless
        legacy_format=True)."""
        save_slow = legacy_format is not False and self.can_save_slow_tokenizer
        written = list(self.save_vocabulary(save_directory, filename_prefix)) if save_slow else []
        if legacy_format is True:
            return written
        name = f"{filename_prefix}-{TOKENIZER_FILE}" if filename_prefix else TOKENIZER_FILE
        path = os.path.join(os.fspath(save_directory), name)
        self._set_truncation_and_padding(None, None)  # save the pipeline, not the last call's settings
        self._tokenizer.encode_special_tokens = self.split_special_tokens
        with atomic_path(path) as tmp:
            self._tokenizer.save(tmp)
        return written + [path]


__all__ = ["DebertaV2TokenizerFast"]
