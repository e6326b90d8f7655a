"""Shared machinery of the DeBERTa-v2 tokenizers: special tokens, the call API and the encoding container.

`DebertaV2Tokenizer` (sentencepiece) and `DebertaV2TokenizerFast` (tokenizers) both derive from
`DebertaV2TokenizerBase`. This module owns what they have in common and what must behave exactly like
Hugging Face transformers 4.57.6: the checks on the inputs of `__call__`, how `padding`, `truncation` and
`max_length` resolve to strategies, the `[CLS] A [SEP] B [SEP]` templates, `from_pretrained` /
`save_pretrained` file handling and the `BatchEncoding` result (dict and attribute access, tensors for
"np" | "pt" | "tf" | "jax", each framework imported only when asked for; for the fast tokenizer
`sequence_ids` / `word_ids` / `token_to_chars` / `char_to_token` per row). Also the reference's Python path
shared by both: `encode_plus` / `batch_encode_plus`, `prepare_for_model` (truncation with `stride` and
overflowing tokens, special-token masks, lengths), `pad`, `add_tokens` / `add_special_tokens`, and the size
limits of docs/limits.md ("Tokenizers").

Inputs: `__call__` takes texts only (a TokenizerInputError, both the TypeError naming the argument and the
ValueError the reference raises, otherwise); `encode` / `encode_plus` / `batch_encode_plus` take what each
reference class takes: the sentencepiece tokenizer also lists of tokens or token ids (its `get_input_ids`), the
fast one reads a list of two strings as a pair and refuses ids with a TypeError.

Each subclass provides the encoding itself (`_encode(inputs, CallOptions)`), the decoding (`_decode`),
`_add_tokens`, and may override what `encode_plus` / `batch_encode_plus` accept (`_single_input`,
`_batch_inputs`).
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import os
from collections import UserDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

from tokenizers import AddedToken

from deberta_xf.errors import DebertaXfError, UnsupportedFeatureError
from deberta_xf.fileio import atomic_write_bytes

logger = logging.getLogger(__name__)
# The warnings the reference logs to its users go to the reference's logger name, so that what silences or
# captures them there (logging.getLogger("transformers").setLevel(...), assertLogs("transformers")) still does.
reference_logger = logging.getLogger("transformers.tokenization_utils_base")

VERY_LARGE_INTEGER = int(1e30)  # the reference's "no model_max_length" value
LARGE_INTEGER = int(1e20)

VOCAB_FILE = "spm.model"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
ADDED_TOKENS_FILE = "added_tokens.json"

# Same order as the reference's SPECIAL_TOKENS_ATTRIBUTES: it decides the order of `all_special_tokens`.
SPECIAL_TOKENS_ATTRIBUTES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)

PADDING_STRATEGIES = ("longest", "max_length", "do_not_pad")
TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second", "do_not_truncate")
TENSOR_TYPES = ("np", "pt", "tf", "jax")

# Bounds on what a call accepts (docs/limits.md, "Tokenizers"); past them a DebertaXfError names the argument.
MAX_TEXT_CHARS = 10_000_000  # characters of one text (or one word of a pre-split text)
MAX_BATCH_SIZE = 1_000_000  # texts (or pairs) in one call, rows in one `pad`
MAX_PADDED_LENGTH = 10_000_000  # tokens a row may be padded to: `max_length` with "max_length" padding
MAX_LENGTH_OPTION = 10**30  # `max_length` / `stride` / `pad_to_multiple_of` (a truncation length costs nothing)


class CharSpan(NamedTuple):
    """Characters [start, end) of the original text (the reference's CharSpan)."""

    start: int
    end: int


class TokenSpan(NamedTuple):
    """Tokens [start, end) of an encoding (the reference's TokenSpan)."""

    start: int
    end: int


# === Encoding container ===


class BatchEncoding(UserDict):
    """The result of a tokenizer call: a dict (`input_ids`, `token_type_ids`, `attention_mask`,
    `offset_mapping`) whose keys are also attributes.

    Fast tokenizers also keep the `tokenizers.Encoding` objects (`encodings`, `tokens()`).
    """

    def __init__(self, data=None, encodings=None, tensor_type: Optional[str] = None, prepend_batch_axis=False):
        super().__init__(data)
        self._encodings = encodings
        if tensor_type is not None:
            self.convert_to_tensors(tensor_type, prepend_batch_axis=prepend_batch_axis)

    def __getattr__(self, item: str):
        # Only called when normal lookup fails; `data` itself must not recurse while unpickling.
        if item == "data":
            raise AttributeError(item)
        try:
            return self.data[item]
        except KeyError:
            raise AttributeError(f"'BatchEncoding' has no field {item!r}; fields: {list(self.data)}") from None

    def __getstate__(self):
        return {"data": self.data, "encodings": self._encodings}

    def __setstate__(self, state):
        self.data = state["data"]
        self._encodings = state["encodings"]

    @property
    def encodings(self):
        """The `tokenizers.Encoding` of each row (fast tokenizers only), else None."""
        return self._encodings

    @property
    def is_fast(self) -> bool:
        return self._encodings is not None

    @property
    def n_sequences(self) -> Optional[int]:
        """1 or 2 (a pair) for the output of the fast tokenizer, else None."""
        return self._encodings[0].n_sequences if self._encodings else None

    def _encoding(self, method: str, batch_index: int):
        if not self._encodings:
            raise ValueError(f"{method}() is only available on the output of DebertaV2TokenizerFast")
        return self._encodings[batch_index]

    def tokens(self, batch_index: int = 0) -> list[str]:
        """The tokens of row `batch_index`, special and padding tokens included (fast tokenizers only)."""
        return self._encoding("tokens", batch_index).tokens

    def sequence_ids(self, batch_index: int = 0) -> list[Optional[int]]:
        """Per token of row `batch_index`: 0 (first text), 1 (second text) or None (special, padding)."""
        return self._encoding("sequence_ids", batch_index).sequence_ids

    def word_ids(self, batch_index: int = 0) -> list[Optional[int]]:
        """Per token of row `batch_index`: the index of its word in its text, None for special tokens."""
        return self._encoding("word_ids", batch_index).word_ids

    def words(self, batch_index: int = 0) -> list[Optional[int]]:
        return self.word_ids(batch_index)

    def token_to_sequence(self, batch_or_token_index: int, token_index: Optional[int] = None) -> Optional[int]:
        batch_index, token_index = _batch_and_index(batch_or_token_index, token_index)
        return self._encoding("token_to_sequence", batch_index).token_to_sequence(token_index)

    def token_to_word(self, batch_or_token_index: int, token_index: Optional[int] = None) -> Optional[int]:
        batch_index, token_index = _batch_and_index(batch_or_token_index, token_index)
        return self._encoding("token_to_word", batch_index).token_to_word(token_index)

    def token_to_chars(self, batch_or_token_index: int, token_index: Optional[int] = None) -> Optional[CharSpan]:
        """The characters a token comes from; `tok_out.token_to_chars(i)` or `(batch_index, i)`."""
        batch_index, token_index = _batch_and_index(batch_or_token_index, token_index)
        span = self._encoding("token_to_chars", batch_index).token_to_chars(token_index)
        return None if span is None else CharSpan(*span)

    def char_to_token(
        self, batch_or_char_index: int, char_index: Optional[int] = None, sequence_index: int = 0
    ) -> Optional[int]:
        """The token holding character `char_index` of text `sequence_index` (0 or 1), or None."""
        batch_index, char_index = _batch_and_index(batch_or_char_index, char_index)
        return self._encoding("char_to_token", batch_index).char_to_token(char_index, sequence_index)

    def char_to_word(
        self, batch_or_char_index: int, char_index: Optional[int] = None, sequence_index: int = 0
    ) -> Optional[int]:
        """The word holding character `char_index` of text `sequence_index` (0 or 1), or None."""
        batch_index, char_index = _batch_and_index(batch_or_char_index, char_index)
        return self._encoding("char_to_word", batch_index).char_to_word(char_index, sequence_index)

    def word_to_chars(
        self, batch_or_word_index: int, word_index: Optional[int] = None, sequence_index: int = 0
    ) -> Optional[CharSpan]:
        """The characters of word `word_index` of text `sequence_index` (0 or 1)."""
        batch_index, word_index = _batch_and_index(batch_or_word_index, word_index)
        span = self._encoding("word_to_chars", batch_index).word_to_chars(word_index, sequence_index)
        return None if span is None else CharSpan(*span)

    def word_to_tokens(
        self, batch_or_word_index: int, word_index: Optional[int] = None, sequence_index: int = 0
    ) -> Optional[TokenSpan]:
        batch_index, word_index = _batch_and_index(batch_or_word_index, word_index)
        span = self._encoding("word_to_tokens", batch_index).word_to_tokens(word_index, sequence_index)
        return None if span is None else TokenSpan(*span)

    def convert_to_tensors(self, tensor_type: Optional[str], prepend_batch_axis: bool = False) -> "BatchEncoding":
        """Turn every field into a tensor of `tensor_type` ("np", "pt", "tf" or "jax"), in place."""
        if tensor_type is None:
            return self
        as_tensor = _tensor_factory(tensor_type)
        for key, value in self.data.items():
            if prepend_batch_axis:
                value = [value]
            try:
                self.data[key] = as_tensor(value)
            except (ValueError, TypeError) as err:
                raise ValueError(
                    f"Unable to create a tensor for `{key}`: the rows have different lengths. "
                    "Use padding=True (and truncation=True) to get a rectangular batch."
                ) from err
        return self


def _batch_and_index(batch_or_index: int, index: Optional[int]) -> tuple[int, int]:
    """The reference's (batch_or_token_index, token_index) convention: one argument means row 0."""
    return (0, batch_or_index) if index is None else (batch_or_index, index)


def _is_empty(value) -> bool:
    while isinstance(value, (list, tuple)):
        if not value:
            return True
        value = value[0]
    return False


def _tensor_factory(tensor_type: str):
    """A function list -> tensor for the framework; the framework is imported here, only when asked for.

    dtypes are the reference's: what each framework infers from Python ints (int64 for numpy/torch, int32
    for TensorFlow and for JAX without x64), and that same dtype for an empty input.
    """
    if tensor_type == "np":
        import numpy as np

        def as_tensor(value):
            if isinstance(value, (list, tuple)) and value and isinstance(value[0], (list, tuple)):
                if len({len(row) for row in value}) > 1:  # ragged: an object array of rows, as the reference
                    rows = np.empty(len(value), dtype=object)
                    rows[:] = [np.asarray(row) for row in value]
                    return rows
            return np.asarray(value, dtype=np.int64 if _is_empty(value) else None)

        return as_tensor
    if tensor_type == "pt":
        import torch

        return lambda value: torch.tensor(value, dtype=torch.int64 if _is_empty(value) else None)
    if tensor_type == "tf":
        import tensorflow as tf

        return lambda value: tf.constant(value, dtype=tf.int32 if _is_empty(value) else None)
    if tensor_type == "jax":
        import jax.numpy as jnp

        return lambda value: jnp.array(value, dtype=jnp.int32 if _is_empty(value) else None)
    raise ValueError(f"return_tensors must be one of {TENSOR_TYPES} or None, got {tensor_type!r}")


# === Argument checks ===


def _is_str_list(value) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value)


def _check_length(value: str, name: str) -> None:
    if len(value) > MAX_TEXT_CHARS:
        raise DebertaXfError(
            f"`{name}` has {len(value):,} characters; the tokenizers accept at most {MAX_TEXT_CHARS:,} per text "
            "(docs/limits.md): split it first"
        )


class TokenizerInputError(TypeError, ValueError):
    """An input of the wrong type, named in the message: a TypeError that is also the ValueError the
    reference raises for it (e.g. `tokenizer([1, 2])`), so callers catching either see it."""


class SpecialTokensError(ValueError, AssertionError):
    """A special-tokens argument of the wrong form: a ValueError that is also the AssertionError the reference
    raises for it (e.g. `add_special_tokens({"additional_special_tokens": "<x>"})`)."""


def _wrong_type(name: str, value, expected: str) -> TokenizerInputError:
    hint = ""
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, int) for v in value):
        hint = (
            "; token ids go to prepare_for_model (both tokenizers) or to encode / encode_plus / batch_encode_plus "
            "of DebertaV2Tokenizer, as in the reference"
        )
    return TokenizerInputError(f"`{name}` must be {expected}, got {type(value).__name__}: {value!r:.80}{hint}")


def _check_text(value, name: str, is_split_into_words: bool) -> bool:
    """Raise TokenizerInputError naming the argument unless `value` is valid text input (the reference's
    `__call__` rules), DebertaXfError past the size limits (MAX_TEXT_CHARS per string, MAX_BATCH_SIZE items
    per list); return whether it is a batch."""
    if isinstance(value, str):
        if is_split_into_words:
            raise TokenizerInputError(
                f"`{name}` must be a list of words (or a list of such lists) when is_split_into_words=True"
            )
        _check_length(value, name)
        return False
    if not isinstance(value, (list, tuple)):
        raise _wrong_type(name, value, "a string, a list of strings or a list of (text, text_pair) pairs")
    if len(value) > MAX_BATCH_SIZE:
        raise DebertaXfError(
            f"`{name}` has {len(value):,} items; the tokenizers accept at most {MAX_BATCH_SIZE:,} per call "
            "(docs/limits.md): call them in chunks"
        )
    for i, item in enumerate(value):
        if isinstance(item, str):
            _check_length(item, f"{name}[{i}]")
            continue
        if isinstance(item, (list, tuple)):
            want_pair = not is_split_into_words and name != "text_pair"
            if _is_str_list(item) and (not want_pair or len(item) == 2):
                if len(item) > MAX_BATCH_SIZE:
                    raise DebertaXfError(f"`{name}[{i}]` has {len(item):,} words; at most {MAX_BATCH_SIZE:,}")
                for j, word in enumerate(item):
                    _check_length(word, f"{name}[{i}][{j}]")
                continue
        if not is_split_into_words and all(isinstance(v, int) for v in value):  # token ids: say where they go
            raise _wrong_type(name, value, "a string, a list of strings or a list of (text, text_pair) pairs")
        expected = "a list of words" if is_split_into_words else "a string" + (
            " or a (text, text_pair) pair of strings" if name != "text_pair" else ""
        )
        raise TokenizerInputError(f"`{name}[{i}]` must be {expected}, got {type(item).__name__}: {item!r:.80}")
    if is_split_into_words:
        return bool(value) and isinstance(value[0], (list, tuple))
    return True


def check_ids_or_text(value, name: str) -> None:
    """What the reference's slow `get_input_ids` accepts: a text, a non-empty list of strings (tokens, or
    words with is_split_into_words) or of token ids; else a ValueError naming the argument."""
    if isinstance(value, str):
        _check_length(value, name)
        return
    if isinstance(value, (list, tuple)) and value:
        if len(value) > MAX_TEXT_CHARS:
            raise DebertaXfError(f"`{name}` has {len(value):,} items; at most {MAX_TEXT_CHARS:,} (docs/limits.md)")
        if _is_str_list(value):
            for j, word in enumerate(value):
                _check_length(word, f"{name}[{j}]")
            return
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return
        raise TokenizerInputError(
            f"`{name}` mixes types: a list must hold only strings (tokens or words) or only token ids (ints), "
            f"got {value!r:.80}"
        )
    raise ValueError(
        f"`{name}` = {value!r:.80} is not valid: it should be a string, a list/tuple of strings or a list/tuple "
        "of integers (token ids)"
    )


def check_size_option(name: str, value, minimum: int, maximum: int = MAX_LENGTH_OPTION) -> None:
    """`max_length` / `stride` / `pad_to_multiple_of`: None or an int in [minimum, maximum]."""
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int or None, got {type(value).__name__}: {value!r}")
    if not minimum <= value <= maximum:
        raise DebertaXfError(f"{name} must be between {minimum} and {maximum:,} (docs/limits.md), got {value:,}")


def resolve_strategies(
    padding, truncation, max_length: Optional[int], pad_to_multiple_of: Optional[int], model_max_length: int
) -> tuple[str, str, Optional[int]]:
    """Map the call arguments to (padding strategy, truncation strategy, max_length) as the reference does.

    - `max_length` alone (padding False, truncation None) turns on "longest_first" truncation;
    - padding True is "longest"; truncation True is "longest_first";
    - without `max_length`, "max_length" padding and any truncation fall back to `model_max_length`, and
      are switched off when the model has none (the reference's default).

    `max_length` and `pad_to_multiple_of` are checked (ints, not negative, `pad_to_multiple_of` >= 1), and
    "max_length" padding past MAX_PADDED_LENGTH tokens raises DebertaXfError (docs/limits.md).
    """
    check_size_option("max_length", max_length, 0)
    check_size_option("pad_to_multiple_of", pad_to_multiple_of, 1, MAX_PADDED_LENGTH)
    max_length_given = max_length is not None
    if max_length is not None and padding is False and truncation is None:
        logger.warning(
            "Truncation was not explicitly activated but `max_length` is provided a specific value, "
            "defaulting to 'longest_first' truncation."
        )
        truncation = "longest_first"

    if padding is True:
        if max_length is not None and truncation in (None, False, "do_not_truncate"):
            logger.warning("`max_length` is ignored when `padding`=`True` and there is no truncation strategy.")
        padding_strategy = "longest"
    elif padding is False or padding is None:
        padding_strategy = "do_not_pad"
    elif padding in PADDING_STRATEGIES:
        padding_strategy = padding
    else:
        raise ValueError(f"padding must be True, False or one of {PADDING_STRATEGIES}, got {padding!r}")

    if truncation is True:
        truncation_strategy = "longest_first"
    elif truncation is False or truncation is None:
        truncation_strategy = "do_not_truncate"
    elif truncation in TRUNCATION_STRATEGIES:
        truncation_strategy = truncation
    else:
        raise ValueError(f"truncation must be True, False or one of {TRUNCATION_STRATEGIES}, got {truncation!r}")

    if max_length is None:
        if padding_strategy == "max_length":
            if model_max_length > LARGE_INTEGER:
                logger.warning("Asking to pad to max_length but no maximum length is provided: no padding.")
                padding_strategy = "do_not_pad"
            else:
                max_length = model_max_length
        if truncation_strategy != "do_not_truncate":
            if model_max_length > LARGE_INTEGER:
                logger.warning("Asking to truncate to max_length but no maximum length is provided: no truncation.")
                truncation_strategy = "do_not_truncate"
            else:
                max_length = model_max_length
    if padding_strategy == "max_length" and max_length is not None and max_length > MAX_PADDED_LENGTH:
        source = "max_length" if max_length_given else "model_max_length (the max_length used)"
        raise DebertaXfError(
            f"{source} is {max_length:,}: padding to more than {MAX_PADDED_LENGTH:,} tokens per row is refused "
            "(docs/limits.md); use padding=True (to the longest row) or a smaller max_length"
        )

    if (
        truncation_strategy != "do_not_truncate"
        and padding_strategy != "do_not_pad"
        and pad_to_multiple_of is not None
        and max_length is not None
        and max_length % pad_to_multiple_of != 0
    ):
        raise ValueError(
            f"Truncation and padding are both activated but truncation length ({max_length}) is not a multiple "
            f"of pad_to_multiple_of ({pad_to_multiple_of})."
        )
    return padding_strategy, truncation_strategy, max_length


@dataclass(frozen=True)
class CallOptions:
    """The arguments of one tokenizer call, resolved (strategies as strings, None defaults applied)."""

    batched: bool
    add_special_tokens: bool
    padding_strategy: str  # "longest" | "max_length" | "do_not_pad"
    truncation_strategy: str  # "longest_first" | "only_first" | "only_second" | "do_not_truncate"
    max_length: Optional[int]
    stride: int
    is_split_into_words: bool
    pad_to_multiple_of: Optional[int]
    padding_side: str
    return_tensors: Optional[str]
    return_token_type_ids: bool
    return_attention_mask: bool
    return_offsets_mapping: bool
    return_overflowing_tokens: bool
    return_special_tokens_mask: bool
    return_length: bool
    token_type_ids_requested: Optional[bool]  # the argument as given (None: not asked for explicitly)
    split_special_tokens: bool  # encode special-token strings as text (default: the tokenizer's attribute)
    verbose: bool = True  # warn (once per tokenizer) about a row longer than model_max_length


_CALL_OPTION_NAMES = (
    "add_special_tokens", "padding", "truncation", "max_length", "stride", "is_split_into_words",
    "pad_to_multiple_of", "padding_side", "return_tensors", "return_token_type_ids", "return_attention_mask",
    "return_overflowing_tokens", "return_special_tokens_mask", "return_offsets_mapping", "return_length",
    "split_special_tokens", "verbose",
)


def _batch_rows(batch: list, is_split_into_words: bool) -> list[tuple]:
    """(first, second) per item of a checked batch: a text (or list of words), or a (text, text_pair) pair."""
    if is_split_into_words:
        return [(words, None) for words in batch]
    return [(item, None) if isinstance(item, str) else (item[0], item[1]) for item in batch]


# === Files ===


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err


def _write_json(path: str, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8"))


def _token_to_dict(token: AddedToken, with_special: bool = True) -> dict:
    out = {
        "content": token.content,
        "lstrip": token.lstrip,
        "normalized": token.normalized,
        "rstrip": token.rstrip,
        "single_word": token.single_word,
    }
    if with_special:
        out["special"] = token.special
    return out


def _token_from_dict(value: dict, path: str, special: Optional[bool] = None) -> AddedToken:
    try:
        fields = {k: value[k] for k in ("content", "single_word", "lstrip", "rstrip", "normalized") if k in value}
        return AddedToken(special=value.get("special", False) if special is None else special, **fields)
    except (TypeError, KeyError) as err:
        raise ValueError(f"{path}: invalid added-token entry {value!r}") from err


def load_pretrained_kwargs(directory: str, with_tokenizer_file: bool) -> dict[str, Any]:
    """The constructor arguments stored in a tokenizer directory, resolved as the reference resolves them.

    Reads `tokenizer_config.json`, `special_tokens_map.json` and `added_tokens.json`; every file is
    optional. `vocab_file` / `tokenizer_file` are the paths of `spm.model` / `tokenizer.json` (the latter
    only for the fast tokenizer; None when absent). The added tokens of a `tokenizer.json` are already in
    the pipeline it describes, so they are not read here.
    """
    if not os.path.isdir(directory):
        if os.path.exists(directory):
            raise NotADirectoryError(f"{directory} is not a directory; from_pretrained expects a tokenizer directory")
        raise FileNotFoundError(f"Tokenizer directory {directory} does not exist")
    path = lambda name: os.path.join(directory, name)  # noqa: E731

    config_path = path(TOKENIZER_CONFIG_FILE)
    kwargs: dict[str, Any] = _read_json(config_path) if os.path.isfile(config_path) else {}
    if not isinstance(kwargs, dict):
        raise ValueError(f"{config_path} must hold a JSON object")
    for key in ("tokenizer_class", "tokenizer_file", "name_or_path", "init_inputs", "auto_map"):
        kwargs.pop(key, None)
    kwargs["vocab_file"] = path(VOCAB_FILE) if os.path.isfile(path(VOCAB_FILE)) else None
    tokenizer_file = path(TOKENIZER_FILE) if with_tokenizer_file and os.path.isfile(path(TOKENIZER_FILE)) else None
    kwargs["tokenizer_file"] = tokenizer_file

    decoder: dict[int, AddedToken] = {}
    if "added_tokens_decoder" in kwargs:  # written by save_pretrained: authoritative
        for index, value in kwargs.pop("added_tokens_decoder").items():
            decoder[int(index)] = _token_from_dict(value, config_path)
    else:
        map_path = path(SPECIAL_TOKENS_MAP_FILE)
        if os.path.isfile(map_path):
            for key, value in _read_json(map_path).items():
                if key in SPECIAL_TOKENS_ATTRIBUTES:
                    kwargs[key] = _token_from_dict(value, map_path, special=True) if isinstance(value, dict) else value
                elif key == "additional_special_tokens":
                    kwargs[key] = [
                        _token_from_dict(v, map_path, special=True) if isinstance(v, dict) else v for v in value
                    ]
        added_path = path(ADDED_TOKENS_FILE)
        if os.path.isfile(added_path):
            special = {str(kwargs[k]) for k in SPECIAL_TOKENS_ATTRIBUTES if kwargs.get(k) is not None}
            special |= {str(t) for t in kwargs.get("additional_special_tokens") or []}
            for content, index in _read_json(added_path).items():
                is_special = content in special
                decoder[int(index)] = AddedToken(
                    content, lstrip=False, rstrip=False, normalized=not is_special, special=is_special
                )
    # A special token given as a plain string takes the flags of the added token of the same content.
    by_content = {token.content: token for token in decoder.values()}
    for key in SPECIAL_TOKENS_ATTRIBUTES:
        if isinstance(kwargs.get(key), str) and kwargs[key] in by_content:
            kwargs[key] = by_content[kwargs[key]]
    kwargs["added_tokens_decoder"] = decoder
    return kwargs


# === The shared tokenizer API ===


class DebertaV2TokenizerBase:
    """What the slow and the fast DeBERTa-v2 tokenizers share (see the module docstring)."""

    model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
    padding_side = "right"
    truncation_side = "right"
    pad_token_type_id = 0
    is_fast = False

    # --- construction and files ---

    def _constructor_arguments(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """The named arguments of the constructor, from its `locals()` taken on entry, less the files
        (`vocab_files_names`): the reference's `init_kwargs` besides the extra keywords. An argument added to a
        constructor is kept without being listed again."""
        parameters = list(inspect.signature(type(self).__init__).parameters.values())[1:]  # after `self`
        named = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        return {name: arguments[name] for name in named if name not in self.vocab_files_names}

    def _init_common(self, special_tokens: dict[str, Any], kwargs: dict[str, Any], init_kwargs: dict[str, Any]) -> None:
        """Store the special tokens and the generic options; the rest of `kwargs` is kept for saving.
        `init_kwargs`: the constructor's named arguments (`_constructor_arguments`), kept with `kwargs` as the
        reference's `init_kwargs`."""
        for key in kwargs:  # as the reference: a keyword may not shadow a method (`add_special_tokens=True`)
            if callable(getattr(type(self), key, None)):
                raise AttributeError(f"{key} conflicts with the method {key} in {type(self).__name__}")
        self.init_inputs = ()
        self.init_kwargs = {**init_kwargs, **copy.deepcopy(kwargs)}
        self.split_special_tokens = kwargs.pop("split_special_tokens", False)
        self.deprecation_warnings: dict[str, bool] = {}  # warnings already given, by key (the reference's)
        self.model_max_length = kwargs.pop("model_max_length", None) or VERY_LARGE_INTEGER
        self.clean_up_tokenization_spaces = kwargs.pop("clean_up_tokenization_spaces", False)
        self.padding_side = kwargs.pop("padding_side", self.padding_side)
        self.truncation_side = kwargs.pop("truncation_side", self.truncation_side)
        if self.padding_side not in ("right", "left") or self.truncation_side not in ("right", "left"):
            raise ValueError("padding_side and truncation_side must be 'right' or 'left'")
        self._special_tokens: dict[str, Optional[AddedToken]] = {}
        for key in SPECIAL_TOKENS_ATTRIBUTES:
            token = special_tokens.get(key)
            if isinstance(token, str):
                token = AddedToken(token, lstrip=False, rstrip=False, normalized=False, special=True)
            elif token is not None and not isinstance(token, AddedToken):
                raise TypeError(f"`{key}` must be a string or an AddedToken, got {type(token).__name__}")
            self._special_tokens[key] = token
        additional = kwargs.pop("additional_special_tokens", None) or []
        self._additional_special_tokens = [
            t if isinstance(t, AddedToken) else AddedToken(t, normalized=False, special=True) for t in additional
        ]
        self._additional_special_tokens_unset = False  # set to None: the attribute reads None, as the reference's
        self.extra_init_kwargs = kwargs  # unknown keys (e.g. vocab_type) survive save_pretrained

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, **kwargs):
        """Load from a directory holding `spm.model` (and/or `tokenizer.json` for the fast tokenizer) and the
        optional `tokenizer_config.json`, `special_tokens_map.json`, `added_tokens.json`. Keyword arguments
        override the stored configuration."""
        directory = os.fspath(pretrained_model_name_or_path)
        init_kwargs = load_pretrained_kwargs(directory, with_tokenizer_file=cls.is_fast)
        init_kwargs.update(kwargs)
        if init_kwargs.get("vocab_file") is None and init_kwargs.get("tokenizer_file") is None:
            wanted = f"{VOCAB_FILE} or {TOKENIZER_FILE}" if cls.is_fast else VOCAB_FILE
            raise FileNotFoundError(f"No {wanted} in tokenizer directory {directory}")
        return cls(**init_kwargs)

    def _config_to_save(self) -> dict[str, Any]:
        config = dict(self.extra_init_kwargs)
        config.update(
            {
                "added_tokens_decoder": {
                    str(index): _token_to_dict(token) for index, token in sorted(self.added_tokens_decoder.items())
                },
                "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
                "do_lower_case": self.do_lower_case,
                "split_by_punct": self.split_by_punct,
                "model_max_length": self.model_max_length,
                "tokenizer_class": "DebertaV2Tokenizer",
            }
        )
        if self.padding_side != type(self).padding_side:
            config["padding_side"] = self.padding_side
        if self.truncation_side != type(self).truncation_side:
            config["truncation_side"] = self.truncation_side
        if self.split_special_tokens:
            config["split_special_tokens"] = True
        for key, token in self._special_tokens.items():
            if token is not None:
                config[key] = token.content
        if self._additional_special_tokens:
            config["additional_special_tokens"] = [t.content for t in self._additional_special_tokens]
        return config

    def save_pretrained(
        self, save_directory: str, legacy_format: Optional[bool] = None, filename_prefix: Optional[str] = None,
        push_to_hub: bool = False, **kwargs,
    ) -> tuple[str, ...]:
        """Write `tokenizer_config.json`, `special_tokens_map.json`, `added_tokens.json` (tokens past the
        sentencepiece vocabulary), `spm.model` and, for the fast tokenizer, `tokenizer.json`. Each file is
        written to a temporary name and renamed when complete. Returns the paths written. `legacy_format` (fast
        tokenizer, as the reference): True writes only the sentencepiece files, False only `tokenizer.json`."""
        if push_to_hub:
            raise UnsupportedFeatureError("push_to_hub: deberta_xf does not upload; save to a directory instead")
        if legacy_format is False and not self.is_fast:
            raise ValueError(
                "Only fast tokenizers (DebertaV2TokenizerFast) can be saved in non legacy format (legacy_format=False)"
            )
        save_directory = os.fspath(save_directory)
        if os.path.isfile(save_directory):
            raise NotADirectoryError(f"{save_directory} is a file; save_pretrained expects a directory")
        os.makedirs(save_directory, exist_ok=True)
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        path = lambda name: os.path.join(save_directory, prefix + name)  # noqa: E731

        written = [path(TOKENIZER_CONFIG_FILE), path(SPECIAL_TOKENS_MAP_FILE)]
        _write_json(written[0], self._config_to_save())
        special_map = {
            key: _token_to_dict(token, with_special=False)
            for key, token in self._special_tokens.items()
            if token is not None
        }
        if self._additional_special_tokens:
            special_map["additional_special_tokens"] = [
                _token_to_dict(t, with_special=False) for t in self._additional_special_tokens
            ]
        _write_json(written[1], special_map)
        written += self._save_model_files(save_directory, filename_prefix, legacy_format)
        added = {t.content: i for i, t in sorted(self.added_tokens_decoder.items()) if i >= self.vocab_size}
        if added and legacy_format is not False:
            _write_json(path(ADDED_TOKENS_FILE), added)
            written.append(path(ADDED_TOKENS_FILE))
        return tuple(written)

    def _save_model_files(
        self, save_directory: str, filename_prefix: Optional[str], legacy_format: Optional[bool]
    ) -> list[str]:
        return list(self.save_vocabulary(save_directory, filename_prefix=filename_prefix))

    # --- special tokens ---

    def _special_token(self, key: str) -> Optional[str]:
        token = self._special_tokens[key]
        return None if token is None else token.content

    def _set_special_token(self, key: str, value) -> None:
        """`tok.pad_token = "[PAD]"` (or an AddedToken, or None), as the reference's attribute setters: the
        token is not added to the vocabulary (use `add_special_tokens` for that)."""
        if isinstance(value, str):
            value = AddedToken(value, lstrip=False, rstrip=False, normalized=False, special=True)
        elif value is not None and not isinstance(value, AddedToken):
            raise ValueError(f"{key} must be a str, an AddedToken or None, got {type(value).__name__}")
        self._special_tokens[key] = value
        self._special_tokens_changed()

    def _special_tokens_changed(self) -> None:
        """Hook for the slow tokenizer's derived lookups."""

    bos_token = property(
        lambda self: self._special_token("bos_token"), lambda self, v: self._set_special_token("bos_token", v)
    )
    eos_token = property(
        lambda self: self._special_token("eos_token"), lambda self, v: self._set_special_token("eos_token", v)
    )
    unk_token = property(
        lambda self: self._special_token("unk_token"), lambda self, v: self._set_special_token("unk_token", v)
    )
    sep_token = property(
        lambda self: self._special_token("sep_token"), lambda self, v: self._set_special_token("sep_token", v)
    )
    pad_token = property(
        lambda self: self._special_token("pad_token"), lambda self, v: self._set_special_token("pad_token", v)
    )
    cls_token = property(
        lambda self: self._special_token("cls_token"), lambda self, v: self._set_special_token("cls_token", v)
    )
    mask_token = property(
        lambda self: self._special_token("mask_token"), lambda self, v: self._set_special_token("mask_token", v)
    )

    def _special_token_id(self, key: str) -> Optional[int]:
        token = self._special_token(key)
        return None if token is None else self.convert_tokens_to_ids(token)

    def _set_special_token_id(self, key: str, value: Optional[int]) -> None:
        """`tok.pad_token_id = 0` sets `pad_token` to the token of that id (None unsets it), as the reference."""
        self._set_special_token(key, None if value is None else self.convert_ids_to_tokens(value))

    bos_token_id = property(
        lambda self: self._special_token_id("bos_token"), lambda self, v: self._set_special_token_id("bos_token", v)
    )
    eos_token_id = property(
        lambda self: self._special_token_id("eos_token"), lambda self, v: self._set_special_token_id("eos_token", v)
    )
    unk_token_id = property(
        lambda self: self._special_token_id("unk_token"), lambda self, v: self._set_special_token_id("unk_token", v)
    )
    sep_token_id = property(
        lambda self: self._special_token_id("sep_token"), lambda self, v: self._set_special_token_id("sep_token", v)
    )
    pad_token_id = property(
        lambda self: self._special_token_id("pad_token"), lambda self, v: self._set_special_token_id("pad_token", v)
    )
    cls_token_id = property(
        lambda self: self._special_token_id("cls_token"), lambda self, v: self._set_special_token_id("cls_token", v)
    )
    mask_token_id = property(
        lambda self: self._special_token_id("mask_token"), lambda self, v: self._set_special_token_id("mask_token", v)
    )

    @property
    def _special_tokens_map(self) -> dict[str, Any]:
        """The special tokens as AddedToken (None when unset), as the reference's private map."""
        return {**self._special_tokens, "additional_special_tokens": list(self._additional_special_tokens)}

    @property
    def special_tokens_map(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: t.content for k, t in self._special_tokens.items() if t is not None}
        if self._additional_special_tokens:
            out["additional_special_tokens"] = [t.content for t in self._additional_special_tokens]
        return out

    @property
    def all_special_tokens_extended(self) -> list[AddedToken]:
        """Special tokens (AddedToken), unique, in the reference's attribute order."""
        seen: dict[str, AddedToken] = {}
        for token in [*self._special_tokens.values(), *self._additional_special_tokens]:
            if token is not None and token.content not in seen:
                seen[token.content] = token
        return list(seen.values())

    @property
    def all_special_tokens(self) -> list[str]:
        return [token.content for token in self.all_special_tokens_extended]

    @property
    def all_special_ids(self) -> list[int]:
        return self.convert_tokens_to_ids(self.all_special_tokens)

    def get_added_vocab(self) -> dict[str, int]:
        return {token.content: index for index, token in sorted(self.added_tokens_decoder.items())}

    @property
    def additional_special_tokens(self) -> Optional[list[str]]:
        """The additional special tokens; None after `tok.additional_special_tokens = None`, as the reference."""
        if self._additional_special_tokens_unset:
            return None
        return [token.content for token in self._additional_special_tokens]

    @additional_special_tokens.setter
    def additional_special_tokens(self, tokens) -> None:
        self._additional_special_tokens = [
            t if isinstance(t, AddedToken) else AddedToken(t, normalized=False, special=True) for t in tokens or []
        ]
        self._additional_special_tokens_unset = tokens is None
        self._special_tokens_changed()

    @property
    def additional_special_tokens_ids(self) -> Optional[list[int]]:
        tokens = self.additional_special_tokens
        return None if tokens is None else self.convert_tokens_to_ids(tokens)

    @additional_special_tokens_ids.setter
    def additional_special_tokens_ids(self, ids) -> None:
        self.additional_special_tokens = None if ids is None else [self.convert_ids_to_tokens(i) for i in ids]

    @property
    def max_len_single_sentence(self) -> int:
        """model_max_length minus the 2 special tokens of `[CLS] A [SEP]`."""
        return self.model_max_length - self.num_special_tokens_to_add(pair=False)

    @property
    def max_len_sentences_pair(self) -> int:
        """model_max_length minus the 3 special tokens of `[CLS] A [SEP] B [SEP]`."""
        return self.model_max_length - self.num_special_tokens_to_add(pair=True)

    def _convert_token_to_id(self, token: str) -> int:
        return self.convert_tokens_to_ids(token)

    def _convert_id_to_token(self, index: int) -> str:
        return self.convert_ids_to_tokens(index)

    # --- adding tokens ---

    def add_tokens(self, new_tokens, special_tokens: bool = False) -> int:
        """Add tokens (strings or AddedToken) after the vocabulary; returns how many new ids were made.

        A string becomes an AddedToken that is normalized unless it is special. With `special_tokens=True`
        they are special (never split, skipped by `decode(skip_special_tokens=True)`)."""
        if not new_tokens:
            return 0
        if not isinstance(new_tokens, (list, tuple)):
            new_tokens = [new_tokens]
        for token in new_tokens:
            if not isinstance(token, (str, AddedToken)):
                raise TypeError(f"Token {token!r} is not a string or an AddedToken but a {type(token).__name__}")
        return self._add_tokens(list(new_tokens), special_tokens=special_tokens)

    def add_special_tokens(self, special_tokens_dict: dict, replace_additional_special_tokens: bool = True) -> int:
        """Set special tokens (`cls_token`, ..., `additional_special_tokens`) and add those not yet in the
        vocabulary; returns how many new ids were made. `additional_special_tokens` replaces the current
        list unless `replace_additional_special_tokens=False` (the replaced ones stay in the vocabulary)."""
        if not special_tokens_dict:
            return 0
        to_add: list[AddedToken] = []
        for key, value in special_tokens_dict.items():
            if key == "additional_special_tokens":
                if not isinstance(value, (list, tuple)) or not all(isinstance(t, (str, AddedToken)) for t in value):
                    raise SpecialTokensError(
                        f"additional_special_tokens must be a list of str or AddedToken, got {value!r}"
                    )
                tokens = []
                for token in value:
                    if isinstance(token, str):
                        token = AddedToken(token, rstrip=False, lstrip=False, normalized=False, special=True)
                    if not replace_additional_special_tokens and str(token) in (self.additional_special_tokens or []):
                        continue
                    tokens.append(token)
                if replace_additional_special_tokens and tokens:
                    self._additional_special_tokens = list(tokens)
                else:
                    self._additional_special_tokens.extend(tokens)
                self._additional_special_tokens_unset = False
                to_add += tokens
            elif key in SPECIAL_TOKENS_ATTRIBUTES:
                if not isinstance(value, (str, AddedToken)):
                    raise ValueError(f"{key} must be a str or an AddedToken, got {type(value).__name__}")
                if isinstance(value, str):
                    value = AddedToken(value, rstrip=False, lstrip=False, normalized=False, special=True)
                self._special_tokens[key] = value
                if value not in to_add:
                    to_add.append(value)
            else:
                raise ValueError(
                    f"Key {key!r} is not a special token; use one of {SPECIAL_TOKENS_ATTRIBUTES} "
                    "or additional_special_tokens"
                )
        return self.add_tokens(to_add, special_tokens=True)

    # --- templates ---

    def build_inputs_with_special_tokens(self, token_ids_0: list[int], token_ids_1: Optional[list[int]] = None):
        """`[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]`."""
        if token_ids_1 is None:
            return [self.cls_token_id] + list(token_ids_0) + [self.sep_token_id]
        sep = [self.sep_token_id]
        return [self.cls_token_id] + list(token_ids_0) + sep + list(token_ids_1) + sep

    def create_token_type_ids_from_sequences(self, token_ids_0: list[int], token_ids_1: Optional[list[int]] = None):
        """0 for `[CLS] A [SEP]`, 1 for `B [SEP]`."""
        first = [0] * (len(token_ids_0) + 2)
        return first if token_ids_1 is None else first + [1] * (len(token_ids_1) + 1)

    def get_special_tokens_mask(
        self, token_ids_0: list[int], token_ids_1: Optional[list[int]] = None, already_has_special_tokens=False
    ) -> list[int]:
        """1 where the template puts a special token, 0 on sequence tokens. With
        `already_has_special_tokens=True`, 1 for every id that is a special token's id."""
        if already_has_special_tokens:
            if token_ids_1 is not None:
                raise ValueError("token_ids_1 must be None when already_has_special_tokens=True")
            special_ids = set(self.all_special_ids)
            return [1 if token_id in special_ids else 0 for token_id in token_ids_0]
        if token_ids_1 is None:
            return [1] + [0] * len(token_ids_0) + [1]
        return [1] + [0] * len(token_ids_0) + [1] + [0] * len(token_ids_1) + [1]

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return 3 if pair else 2

    # --- call ---

    def __call__(
        self,
        text,
        text_pair=None,
        *,
        add_special_tokens: bool = True,
        padding=False,
        truncation=None,
        max_length: Optional[int] = None,
        stride: int = 0,
        is_split_into_words: bool = False,
        pad_to_multiple_of: Optional[int] = None,
        padding_side: Optional[str] = None,
        return_tensors: Optional[str] = None,
        return_token_type_ids: Optional[bool] = None,
        return_attention_mask: Optional[bool] = None,
        return_overflowing_tokens: bool = False,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
        return_length: bool = False,
        split_special_tokens: Optional[bool] = None,
        verbose: bool = True,
        **kwargs,
    ) -> BatchEncoding:
        """Encode a text, a pair, or a batch (a list of texts or of (text, text_pair) pairs, or `text` and
        `text_pair` as two lists).

        `padding`: False | True / "longest" | "max_length"; `truncation`: None / False | True /
        "longest_first" | "only_first" | "only_second", both with `max_length` (`max_length` alone means
        "longest_first", as in the reference). `stride` with `return_overflowing_tokens`: the fast tokenizer
        returns every window of `max_length` tokens (consecutive windows share `stride` tokens) as its own row,
        with `overflow_to_sample_mapping`; the slow one returns the cut tokens (plus `stride` kept ones) in
        `overflowing_tokens` and `num_truncated_tokens`, as the reference's. `return_token_type_ids` /
        `return_attention_mask` None mean True. `return_tensors`: None (lists) | "np" | "pt" | "tf" | "jax" (a
        batch axis is added to a single input). `return_offsets_mapping` is only available on the fast
        tokenizer. `split_special_tokens` (default: the tokenizer's attribute, False): special-token strings
        in the text are tokenized as text. Keyword arguments the slow tokenizer understands: `add_prefix_space`.
        Size limits: see docs/limits.md.
        """
        batched = _check_text(text, "text", is_split_into_words)
        if text_pair is not None:
            pair_batched = _check_text(text_pair, "text_pair", is_split_into_words)
            if batched != pair_batched:
                raise TokenizerInputError(
                    "`text` and `text_pair` must both be single inputs or both be lists of the same length"
                )
            if batched and len(text) != len(text_pair):
                raise ValueError(
                    f"batch length of `text`: {len(text)} does not match batch length of `text_pair`: {len(text_pair)}"
                )
        if not batched:
            inputs = [(text, text_pair)]
        elif text_pair is not None:
            inputs = list(zip(text, text_pair, strict=True))
        else:
            inputs = _batch_rows(text, is_split_into_words)
        options = self._call_options(
            batched,
            add_special_tokens=add_special_tokens,
            padding=padding,
            truncation=truncation,
            max_length=max_length,
            stride=stride,
            is_split_into_words=is_split_into_words,
            pad_to_multiple_of=pad_to_multiple_of,
            padding_side=padding_side,
            return_tensors=return_tensors,
            return_token_type_ids=return_token_type_ids,
            return_attention_mask=return_attention_mask,
            return_overflowing_tokens=return_overflowing_tokens,
            return_special_tokens_mask=return_special_tokens_mask,
            return_offsets_mapping=return_offsets_mapping,
            return_length=return_length,
            split_special_tokens=split_special_tokens,
        )
        return self._encode(inputs, options, **kwargs)

    def _call_options(
        self,
        batched: bool,
        *,
        add_special_tokens: bool = True,
        padding=False,
        truncation=None,
        max_length: Optional[int] = None,
        stride: int = 0,
        is_split_into_words: bool = False,
        pad_to_multiple_of: Optional[int] = None,
        padding_side: Optional[str] = None,
        return_tensors: Optional[str] = None,
        return_token_type_ids: Optional[bool] = None,
        return_attention_mask: Optional[bool] = None,
        return_overflowing_tokens: bool = False,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
        return_length: bool = False,
        split_special_tokens: Optional[bool] = None,
        verbose: bool = True,
    ) -> CallOptions:
        """The options of one call (`__call__`, `encode_plus`, `batch_encode_plus`, `prepare_for_model`),
        checked and resolved as the reference resolves them: strategies as strings, None defaults applied."""
        if return_tensors is not None and return_tensors not in TENSOR_TYPES:
            raise ValueError(f"return_tensors must be one of {TENSOR_TYPES} or None, got {return_tensors!r}")
        if padding_side not in (None, "left", "right"):
            raise ValueError(f"padding_side must be 'left', 'right' or None, got {padding_side!r}")
        check_size_option("stride", stride, 0, MAX_PADDED_LENGTH)
        padding_strategy, truncation_strategy, max_length = resolve_strategies(
            padding, truncation, max_length, pad_to_multiple_of, self.model_max_length
        )
        if padding_strategy != "do_not_pad" and self.pad_token is None:
            raise ValueError("Asking to pad but the tokenizer has no pad_token")
        return CallOptions(
            batched=batched,
            add_special_tokens=add_special_tokens,
            padding_strategy=padding_strategy,
            truncation_strategy=truncation_strategy,
            max_length=max_length,
            stride=stride,
            is_split_into_words=is_split_into_words,
            pad_to_multiple_of=pad_to_multiple_of,
            padding_side=padding_side or self.padding_side,
            return_tensors=return_tensors,
            return_token_type_ids=True if return_token_type_ids is None else return_token_type_ids,
            return_attention_mask=True if return_attention_mask is None else return_attention_mask,
            return_offsets_mapping=return_offsets_mapping,
            return_overflowing_tokens=return_overflowing_tokens,
            return_special_tokens_mask=return_special_tokens_mask,
            return_length=return_length,
            token_type_ids_requested=return_token_type_ids,
            split_special_tokens=self._split_special_tokens(split_special_tokens),
            verbose=verbose,
        )

    def _split_special_tokens(self, value: Optional[bool]) -> bool:
        """A call's `split_special_tokens`: the tokenizer's attribute when the call passes None."""
        return self.split_special_tokens if value is None else value

    def _encode_with(self, inputs: list, batched: bool, kwargs: dict) -> BatchEncoding:
        """`_encode` with `kwargs` split into the call options and the subclass's own keywords."""
        options = {key: kwargs.pop(key) for key in _CALL_OPTION_NAMES if key in kwargs}
        return self._encode(inputs, self._call_options(batched, **options), **kwargs)

    def encode_plus(self, text, text_pair=None, **kwargs) -> BatchEncoding:
        """One input (the reference's `encode_plus`; keyword arguments as for calling the tokenizer): a text
        or, with `is_split_into_words=True`, a list of words. The sentencepiece tokenizer also takes a list of
        tokens or of token ids (`text` and `text_pair`), the fast one reads a list of two strings as a pair,
        as the reference's do; see `_single_input`."""
        kwargs = dict(kwargs)
        inputs = [self._single_input(text, text_pair, kwargs.get("is_split_into_words", False))]
        return self._encode_with(inputs, False, kwargs)

    def batch_encode_plus(self, batch_text_or_text_pairs, **kwargs) -> BatchEncoding:
        """A list of inputs or of (input, input_pair) pairs (the reference's `batch_encode_plus`); what an input
        may be is as for `encode_plus`, see `_batch_inputs`."""
        if not isinstance(batch_text_or_text_pairs, (list, tuple)):
            raise TokenizerInputError(
                "batch_encode_plus takes a list of texts or of (text, text_pair) pairs, "
                f"got {type(batch_text_or_text_pairs).__name__}"
            )
        kwargs = dict(kwargs)
        inputs = self._batch_inputs(list(batch_text_or_text_pairs), kwargs.get("is_split_into_words", False))
        return self._encode_with(inputs, True, kwargs)

    def encode(self, text, text_pair=None, **kwargs) -> list[int]:
        """The `input_ids` of one input or pair (the reference's `encode`; inputs as for `encode_plus`)."""
        kwargs.setdefault("return_token_type_ids", False)
        kwargs.setdefault("return_attention_mask", False)
        return self.encode_plus(text, text_pair, **kwargs)["input_ids"]

    def _single_input(self, text, text_pair, is_split_into_words: bool) -> tuple:
        """The (text, text_pair) of `encode_plus` as the reference's fast tokenizer takes them: texts (lists of
        words with is_split_into_words), and a list of two strings alone is a pair (the backend reads it so).
        The sentencepiece tokenizer overrides this to take tokens and token ids."""
        if text_pair is None and not is_split_into_words and isinstance(text, (list, tuple)) and len(text) == 2:
            if _is_str_list(text):
                return tuple(text)
        for value, name in ((text, "text"), (text_pair, "text_pair")):
            if (value is not None or name == "text") and _check_text(value, name, is_split_into_words):
                raise _wrong_type(name, value, "one text (a string), or a list of words with is_split_into_words=True")
        return text, text_pair

    def _batch_inputs(self, batch: list, is_split_into_words: bool) -> list[tuple]:
        """The rows of `batch_encode_plus` as the reference's fast tokenizer takes them: texts, (text, text_pair)
        pairs, lists of words with is_split_into_words. Overridden by the sentencepiece tokenizer."""
        if not is_split_into_words:
            _check_text(batch, "batch_text_or_text_pairs", False)
            return _batch_rows(batch, False)
        if len(batch) > MAX_BATCH_SIZE:
            raise DebertaXfError(f"batch_encode_plus got {len(batch):,} inputs; at most {MAX_BATCH_SIZE:,} per call")
        rows = []
        for i, item in enumerate(batch):
            name = f"batch_text_or_text_pairs[{i}]"
            is_pair = isinstance(item, (list, tuple)) and len(item) == 2
            if is_pair and all(isinstance(part, (list, tuple)) for part in item):  # (words, pair words)
                _check_text(list(item), name, True)
                rows.append(tuple(item))
            else:
                _check_text(item, name, True)
                rows.append((item, None))
        return rows

    def prepare_for_model(
        self,
        ids: list[int],
        pair_ids: Optional[list[int]] = None,
        add_special_tokens: bool = True,
        padding=False,
        truncation=None,
        max_length: Optional[int] = None,
        stride: int = 0,
        pad_to_multiple_of: Optional[int] = None,
        padding_side: Optional[str] = None,
        return_tensors: Optional[str] = None,
        return_token_type_ids: Optional[bool] = None,
        return_attention_mask: Optional[bool] = None,
        return_overflowing_tokens: bool = False,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
        return_length: bool = False,
        verbose: bool = True,
        prepend_batch_axis: bool = False,
        **kwargs,
    ) -> BatchEncoding:
        """Ids (e.g. from `convert_tokens_to_ids`) to model inputs, as the reference's `prepare_for_model`
        (the same Python path for slow and fast): truncation, special tokens, padding, masks."""
        if return_offsets_mapping:
            raise UnsupportedFeatureError(
                "return_offsets_mapping is not available in prepare_for_model; call the tokenizer instead"
            )
        if return_token_type_ids and not add_special_tokens:
            raise ValueError(
                "Asking to return token_type_ids while setting add_special_tokens to False is undefined; "
                "set add_special_tokens=True or leave return_token_type_ids unset"
            )
        options = self._call_options(
            False,
            add_special_tokens=add_special_tokens,
            padding=padding,
            truncation=truncation,
            max_length=max_length,
            stride=stride,
            pad_to_multiple_of=pad_to_multiple_of,
            padding_side=padding_side,
            return_tensors=return_tensors,
            return_token_type_ids=return_token_type_ids,
            return_attention_mask=return_attention_mask,
            return_overflowing_tokens=return_overflowing_tokens,
            return_special_tokens_mask=return_special_tokens_mask,
            return_length=return_length,
        )
        row = self._prepare_row(list(ids), None if pair_ids is None else list(pair_ids), options, pad=True)
        return BatchEncoding(row, tensor_type=return_tensors, prepend_batch_axis=prepend_batch_axis)

    def _prepare_row(self, ids, pair_ids, options: CallOptions, pad: bool) -> dict:
        """One row as the reference's `prepare_for_model`: truncate (keeping the cut tokens when asked),
        add [CLS]/[SEP], the special-token mask, then pad (`pad`: a single input) and the length."""
        pair = pair_ids is not None
        if options.return_overflowing_tokens and options.truncation_strategy == "longest_first" and pair:
            raise ValueError(
                "Not possible to return overflowing tokens for pair of sequences with the `longest_first`. "
                "Please select another truncation strategy than `longest_first`, for instance `only_second` or "
                "`only_first`."
            )
        total = len(ids) + (len(pair_ids) if pair else 0)
        if options.add_special_tokens:
            total += self.num_special_tokens_to_add(pair=pair)
        max_length = options.max_length
        overflowing: list[int] = []
        if options.truncation_strategy != "do_not_truncate" and max_length and total > max_length:
            ids, pair_ids, overflowing = self.truncate_sequences(
                ids, pair_ids, total - max_length, options.truncation_strategy, options.stride
            )

        row: dict[str, Any] = {}
        if options.return_overflowing_tokens:
            if max_length is None:  # the reference fails here too (total_len - None)
                raise TypeError(
                    "return_overflowing_tokens needs a max_length (and truncation) with the sentencepiece tokenizer"
                )
            row["overflowing_tokens"] = overflowing
            row["num_truncated_tokens"] = total - max_length
        if options.add_special_tokens:
            row["input_ids"] = self.build_inputs_with_special_tokens(ids, pair_ids)
            token_type_ids = self.create_token_type_ids_from_sequences(ids, pair_ids)
        else:
            row["input_ids"] = ids + pair_ids if pair else list(ids)
            token_type_ids = [0] * len(row["input_ids"])
        if options.return_token_type_ids:
            row["token_type_ids"] = token_type_ids
        if options.return_special_tokens_mask:
            row["special_tokens_mask"] = (
                self.get_special_tokens_mask(ids, pair_ids) if options.add_special_tokens
                else [0] * len(row["input_ids"])
            )
        if pad and (options.padding_strategy != "do_not_pad" or options.return_attention_mask):
            row = self.pad(
                row,
                padding=options.padding_strategy,
                max_length=max_length,
                pad_to_multiple_of=options.pad_to_multiple_of,
                padding_side=options.padding_side,
                return_attention_mask=options.return_attention_mask,
            ).data
        self._warn_if_too_long(len(row["input_ids"]), options)
        if options.return_length:
            row["length"] = len(row["input_ids"])
        return row

    def _warn_if_too_long(self, length: int, options: CallOptions) -> None:
        """The reference's warning, once per tokenizer, about a row longer than model_max_length when no
        max_length applies (the model would fail on it)."""
        if options.max_length is None and length > self.model_max_length and options.verbose:
            key = "sequence-length-is-longer-than-the-specified-maximum"
            if not self.deprecation_warnings.get(key, False):
                reference_logger.warning(
                    "Token indices sequence length is longer than the specified maximum sequence length for this "
                    f"model ({length} > {self.model_max_length}). Running this sequence through the model will "
                    "result in indexing errors"
                )
            self.deprecation_warnings[key] = True

    def truncate_sequences(
        self, ids, pair_ids=None, num_tokens_to_remove: int = 0, truncation_strategy: str = "longest_first",
        stride: int = 0,
    ):
        """Remove `num_tokens_to_remove` tokens as the reference's Python truncation does; returns
        (ids, pair_ids, overflowing_tokens): the removed tokens plus up to `stride` kept ones next to them
        (not for a pair cut with "longest_first"). When the sequence to cut is too short it logs an error
        and cuts nothing."""
        if num_tokens_to_remove <= 0:
            return ids, pair_ids, []
        right = self.truncation_side == "right"
        overflowing: list[int] = []
        if truncation_strategy == "only_first" or (truncation_strategy == "longest_first" and pair_ids is None):
            if len(ids) > num_tokens_to_remove:
                window = min(len(ids), stride + num_tokens_to_remove)
                overflowing = ids[-window:] if right else ids[:window]
                ids = ids[:-num_tokens_to_remove] if right else ids[num_tokens_to_remove:]
            else:
                logger.error(
                    "We need to remove %d to truncate the input but the first sequence has a length %d.",
                    num_tokens_to_remove, len(ids),
                )
        elif truncation_strategy == "longest_first":
            # Remove the length difference from the longer sequence first, then alternate.
            first_remove = min(abs(len(pair_ids) - len(ids)), num_tokens_to_remove)
            second_remove = num_tokens_to_remove - first_remove
            if len(ids) > len(pair_ids):
                ids_to_move = first_remove + second_remove // 2
                pair_to_move = second_remove - second_remove // 2
            else:
                ids_to_move = second_remove // 2
                pair_to_move = first_remove + second_remove - second_remove // 2
            if right:
                ids = ids[:-ids_to_move] if ids_to_move > 0 else ids
                pair_ids = pair_ids[:-pair_to_move] if pair_to_move > 0 else pair_ids
            else:
                ids, pair_ids = ids[ids_to_move:], pair_ids[pair_to_move:]
        elif truncation_strategy == "only_second" and pair_ids is not None:
            if len(pair_ids) > num_tokens_to_remove:
                window = min(len(pair_ids), stride + num_tokens_to_remove)
                overflowing = pair_ids[-window:] if right else pair_ids[:window]
                pair_ids = pair_ids[:-num_tokens_to_remove] if right else pair_ids[num_tokens_to_remove:]
            else:
                logger.error(
                    "We need to remove %d to truncate the input but the second sequence has a length %d.",
                    num_tokens_to_remove, len(pair_ids),
                )
        return ids, pair_ids, overflowing

    # --- padding ---

    def pad(
        self,
        encoded_inputs,
        padding=True,
        max_length: Optional[int] = None,
        pad_to_multiple_of: Optional[int] = None,
        padding_side: Optional[str] = None,
        return_attention_mask: Optional[bool] = None,
        return_tensors: Optional[str] = None,
        verbose: bool = True,
    ) -> BatchEncoding:
        """Pad encodings (a BatchEncoding or dict of one row or of a batch, or a list of one-row encodings)
        as the reference's `pad`: `input_ids` with the pad id, `token_type_ids` with 0,
        `special_tokens_mask` with 1, `attention_mask` (made when missing) with 0; other fields unchanged.
        Tensors (numpy / torch / tf) in the input give tensors of that kind unless `return_tensors` says."""
        if isinstance(encoded_inputs, (list, tuple)) and encoded_inputs and isinstance(encoded_inputs[0], Mapping):
            if len(encoded_inputs) > MAX_BATCH_SIZE:
                raise DebertaXfError(f"pad got {len(encoded_inputs):,} encodings; at most {MAX_BATCH_SIZE:,}")
            encoded_inputs = {key: [example[key] for example in encoded_inputs] for key in encoded_inputs[0]}
        main = self.model_input_names[0]  # "input_ids" (the reference pads the first model input)
        if not isinstance(encoded_inputs, Mapping) or main not in encoded_inputs:
            found = list(encoded_inputs) if isinstance(encoded_inputs, Mapping) else type(encoded_inputs).__name__
            raise ValueError(
                f"pad expects an encoding or a list of encodings that includes {main}, "
                f"but got {found}"
            )
        if padding_side not in (None, "left", "right"):
            raise ValueError(f"padding_side must be 'left', 'right' or None, got {padding_side!r}")
        if return_tensors is not None and return_tensors not in TENSOR_TYPES:
            raise ValueError(f"return_tensors must be one of {TENSOR_TYPES} or None, got {return_tensors!r}")
        encoded_inputs = dict(encoded_inputs)
        required_input = encoded_inputs[main]
        if required_input is None or len(required_input) == 0:
            if return_attention_mask:
                encoded_inputs["attention_mask"] = []
            return BatchEncoding(encoded_inputs)

        first_element = required_input[0]
        if isinstance(first_element, (list, tuple)):
            first_element = next((row[0] for row in required_input if len(row)), first_element)
        if not isinstance(first_element, (int, list, tuple)):  # tensors: back to lists, same kind out
            if return_tensors is None:
                return_tensors = _tensor_kind(first_element)
            encoded_inputs = {key: _to_python(value) for key, value in encoded_inputs.items()}

        padding_strategy, _, max_length = resolve_strategies(padding, None, max_length, None, self.model_max_length)
        check_size_option("pad_to_multiple_of", pad_to_multiple_of, 1, MAX_PADDED_LENGTH)
        required_input = encoded_inputs[main]
        if required_input and not isinstance(required_input[0], (list, tuple)):
            encoded_inputs = self._pad(
                encoded_inputs, max_length, padding_strategy, pad_to_multiple_of, padding_side, return_attention_mask
            )
            return BatchEncoding(encoded_inputs, tensor_type=return_tensors)

        batch_size = len(required_input)
        if batch_size > MAX_BATCH_SIZE:
            raise DebertaXfError(f"pad got {batch_size:,} rows; at most {MAX_BATCH_SIZE:,}")
        for key, value in encoded_inputs.items():
            if len(value) != batch_size:
                raise ValueError(f"pad: `{key}` has {len(value)} rows but {main} has {batch_size}")
        if padding_strategy == "longest":
            max_length = max(len(row) for row in required_input)
            padding_strategy = "max_length"
        batch_outputs: dict[str, list] = {}
        for i in range(batch_size):
            row = self._pad(
                {key: value[i] for key, value in encoded_inputs.items()},
                max_length, padding_strategy, pad_to_multiple_of, padding_side, return_attention_mask,
            )
            for key, value in row.items():
                batch_outputs.setdefault(key, []).append(value)
        return BatchEncoding(batch_outputs, tensor_type=return_tensors)

    def _pad(
        self,
        encoded_inputs: dict,
        max_length: Optional[int],
        padding_strategy: str,
        pad_to_multiple_of: Optional[int],
        padding_side: Optional[str],
        return_attention_mask: Optional[bool],
    ) -> dict:
        """Pad one row, a dict of lists (the reference's `_pad`; the keys keep their order, a new
        `attention_mask` goes last)."""
        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names
        main = self.model_input_names[0]
        required_input = encoded_inputs[main]
        if padding_strategy == "longest":
            max_length = len(required_input)
        if max_length is not None and pad_to_multiple_of is not None and max_length % pad_to_multiple_of != 0:
            max_length = (max_length // pad_to_multiple_of + 1) * pad_to_multiple_of
        too_long = max_length is not None and max_length > max(MAX_PADDED_LENGTH, len(required_input))
        if too_long and padding_strategy != "do_not_pad":
            raise DebertaXfError(f"padding to {max_length:,} tokens: more than {MAX_PADDED_LENGTH:,} (docs/limits.md)")
        out = dict(encoded_inputs)
        if return_attention_mask and "attention_mask" not in out:
            out["attention_mask"] = [1] * len(required_input)
        if padding_strategy == "do_not_pad" or len(required_input) == max_length:
            return out
        difference = max_length - len(required_input)
        pads = {main: self.pad_token_id, "token_type_ids": self.pad_token_type_id, "special_tokens_mask": 1}
        if return_attention_mask:
            pads["attention_mask"] = 0
        right = (padding_side or self.padding_side) == "right"
        for key, pad in pads.items():
            if key in out:
                out[key] = list(out[key]) + [pad] * difference if right else [pad] * difference + list(out[key])
        return out

    # --- decoding ---

    def decode(
        self, token_ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces=None,
        spaces_between_special_tokens: bool = True, **kwargs,
    ) -> str:
        """Ids (a list, an int, or a 1-D numpy/torch/tf/jax tensor) back to text. `spaces_between_special_tokens`
        (the sentencepiece tokenizer; the fast one ignores it, as the reference's): join the added tokens and
        the text between them with spaces. Other keyword arguments are ignored, as the reference ignores them."""
        token_ids = _to_python(token_ids)
        text = self._decode(token_ids, skip_special_tokens, spaces_between_special_tokens)
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        return clean_up_tokenization(text) if clean_up_tokenization_spaces else text

    def batch_decode(self, sequences, skip_special_tokens: bool = False, clean_up_tokenization_spaces=None, **kwargs):
        return [
            self.decode(seq, skip_special_tokens=skip_special_tokens,
                        clean_up_tokenization_spaces=clean_up_tokenization_spaces, **kwargs)
            for seq in _to_python(sequences)
        ]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(vocab_size={self.vocab_size}, do_lower_case={self.do_lower_case}, "
            f"split_by_punct={self.split_by_punct}, special_tokens={self.special_tokens_map})"
        )


def _tensor_kind(value) -> str:
    """"pt", "tf" or "np" for a torch / TensorFlow / numpy value (the input of `pad`)."""
    module = type(value).__module__.split(".")[0]
    kinds = {"torch": "pt", "tensorflow": "tf", "numpy": "np", "jax": "jax", "jaxlib": "jax"}
    if module not in kinds:
        raise ValueError(f"pad: type of {value!r} unknown: expected ints, lists, or numpy / torch / tf tensors")
    return kinds[module]


def _to_python(value):
    """numpy / torch / tf / jax values to Python ints and lists."""
    if hasattr(value, "numpy") and not hasattr(value, "tolist"):  # tf.Tensor
        value = value.numpy()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_to_python(item) for item in value]
    return value


def clean_up_tokenization(out_string: str) -> str:
    """The reference's clean-up of spaces before punctuation and English contractions."""
    for before, after in (
        (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
        (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
    ):
        out_string = out_string.replace(before, after)
    return out_string

