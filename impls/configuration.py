"""`DebertaV2Config`: the fields and defaults of transformers' `DebertaV2Config` (4.57.6), framework-free.

The reference reads some fields with ``getattr(config, name, default)`` (``position_buckets``, ``share_att_key``,
``conv_kernel_size``, ...); here they are ordinary fields with those defaults, so a config that omits them means
what it means to the reference. Keys this class does not know (``architectures``, ``transformers_version``, ...) are
kept and written back, so a ``config.json`` survives a round trip.

Construction accepts what the reference accepts (docs/config.md): ``pos_att_type`` as ``"p2c|c2p"``, ``"None"``
(-> ``["none"]``) or a list, kept as the reference keeps it; ``num_labels`` is a property over ``id2label``
(setting another count regenerates both label maps); ``label2id`` is kept as given. Structural problems (a
hidden size that is not a multiple of the heads, bad sizes, an unknown activation) are found by
:meth:`DebertaV2Config.validate`, which every model build calls: one ConfigError listing every problem. Only
what the reference itself refuses at construction, and values that could not even be held (a non-dict
``id2label``, an integer of thousands of digits, a label count past the limits), are refused at construction.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
from typing import Any

from deberta_xf.errors import ConfigError, ConfigNotFoundError

CONFIG_NAME = "config.json"
MODEL_TYPE = "deberta-v2"

# Activations every implementation provides (exact erf GELU for "gelu", as ACT2FN).
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "tanh", "sigmoid", "silu", "swish", "linear")
POS_ATT_TYPES = ("c2p", "p2c")
# Entries of pos_att_type that the reference reads as "no relative term" ("None" parses to ["none"]).
POS_ATT_NOTHING = ("none", "")
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")
# How the disentangled attention is computed (the reference's name for the choice; not written to config.json).
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "fused")

# Constructor arguments of the reference, with its code defaults.
_DEFAULTS: dict[str, Any] = {
    "vocab_size": 128100,
    "hidden_size": 1536,
    "num_hidden_layers": 24,
    "num_attention_heads": 24,
    "intermediate_size": 6144,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 0,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-7,
    "relative_attention": False,
    "max_relative_positions": -1,
    "pad_token_id": 0,
    "position_biased_input": True,
    "pos_att_type": None,
    "pooler_dropout": 0,
    "pooler_hidden_act": "gelu",
    "legacy": True,
    # Read by the reference with getattr(); these are the getattr defaults.
    "position_buckets": -1,
    "norm_rel_ebd": "none",
    "share_att_key": False,
    "conv_kernel_size": 0,
    "conv_groups": 1,
    "conv_act": "tanh",
    "cls_dropout": None,
    # None means "the reference's derived default" (hidden_size, hidden_size // heads, hidden_size); these are
    # left out of config.json while None, because the reference would read an explicit null as a value.
    "embedding_size": None,
    "attention_head_size": None,
    "pooler_hidden_size": None,
    # PretrainedConfig's problem_type (the label maps and num_labels are handled apart, as the reference does).
    "problem_type": None,
}
_OMIT_WHEN_NONE = ("embedding_size", "attention_head_size", "pooler_hidden_size")
_LABEL_FIELDS = ("id2label", "label2id")

# PretrainedConfig's common fields, with its defaults: read through the config as the reference's are, kept
# (and written to config.json) only when given or set, as the reference's save_pretrained writes only values that
# differ from these defaults. The models honour the first five (docs/config.md).
_COMMON_DEFAULTS: dict[str, Any] = {
    "output_attentions": False,
    "output_hidden_states": False,
    "return_dict": True,
    "torchscript": False,
    "tie_word_embeddings": True,
    "is_decoder": False,
    "is_encoder_decoder": False,
    "add_cross_attention": False,
    "tie_encoder_decoder": False,
    "chunk_size_feed_forward": 0,
    "pruned_heads": {},
    "architectures": None,
    "finetuning_task": None,
    "task_specific_params": None,
    "tokenizer_class": None,
    "prefix": None,
    "bos_token_id": None,
    "eos_token_id": None,
    "sep_token_id": None,
    "decoder_start_token_id": None,
    "dtype": None,
}
_COMMON_FLAGS = ("output_attentions", "output_hidden_states", "return_dict", "torchscript", "tie_word_embeddings")


# Documented limits (docs: a config past them is refused before any allocation or a run that would not end):
# every size below 2**31 (what the frameworks index), at most MAX_LAYERS layers, MAX_LABELS labels, and at most
# MAX_PARAMETERS parameters in the backbone (2**36: 256 GiB in float32). The label limit is checked when the
# label maps are made (construction, or setting num_labels); the others by validate().
MAX_SIZE = 2**31 - 1
MAX_LAYERS = 4096
MAX_LABELS = 2**20
MAX_PARAMETERS = 2**36
MAX_CONFIG_BYTES = 16 * 1024 * 1024
_SIZE_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "max_position_embeddings", "type_vocab_size", "conv_kernel_size", "max_relative_positions",
                "position_buckets", "pad_token_id", "embedding_size", "attention_head_size", "pooler_hidden_size",
                "conv_groups")


class _HugeInt:
    """What ``config.json`` holds where an integer has too many digits to be a size (parsed lazily: never)."""

    def __init__(self, digits: int):
        self.digits = digits

    def __repr__(self) -> str:
        return f"<an integer of {self.digits} digits>"


def _parse_int(text: str) -> Any:
    return int(text) if len(text.lstrip("-")) <= 30 else _HugeInt(len(text.lstrip("-")))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _shown(v: Any) -> str:
    return str(v)[:50] if not _is_int(v) or v.bit_length() < 64 else f"an integer of {v.bit_length()} bits"


def _invalid(problems: list[str], source: str | None = None) -> ConfigError:
    where = f"{source}: " if source else ""
    return ConfigError(f"{where}invalid DebertaV2Config:\n  - " + "\n  - ".join(problems))


def _label_maps(num_labels: Any) -> tuple[dict[int, str], dict[str, int]]:
    """The reference's default label maps for ``num_labels`` labels (LABEL_0, LABEL_1, ...)."""
    if not _is_int(num_labels):
        raise _invalid([f"num_labels must be an integer, got {type(num_labels).__name__} {_shown(num_labels)}"])
    if num_labels > MAX_LABELS:
        raise _invalid([f"num_labels = {_shown(num_labels)} is out of range (at most {MAX_LABELS})"])
    id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
    return id2label, {label: i for i, label in id2label.items()}


def _check_construction(values: dict[str, Any], labels: dict[str, Any], extra: dict[str, Any]) -> None:
    """What the reference refuses at construction (id2label / label2id that are not dicts, id2label keys that are
    not integers, an unknown problem_type) and values that cannot even be held; one ConfigError naming each."""
    problems: list[str] = []
    for name in _LABEL_FIELDS:
        v = labels.get(name)
        if v is not None and not isinstance(v, dict):
            problems.append(f"{name} must be an object (a JSON dict), got {type(v).__name__} {str(v)[:50]}")
        elif isinstance(v, dict) and len(v) > MAX_LABELS:
            problems.append(f"{name} has {len(v)} entries (at most {MAX_LABELS})")
    id2label = labels.get("id2label")
    if isinstance(id2label, dict):
        for k in id2label:
            try:
                int(k)
            except (TypeError, ValueError):
                problems.append(f"id2label key {str(k)[:50]!r} is not a label id (an integer)")
                break
    problem_type = values.get("problem_type")
    if problem_type is not None and problem_type not in PROBLEM_TYPES:
        problems.append(f"problem_type {str(problem_type)[:50]!r} is not one of {', '.join(PROBLEM_TYPES)}")
    label_values = [v for d in labels.values() if isinstance(d, dict) for v in d.values()]
    if any(isinstance(v, _HugeInt) for v in label_values):
        problems.append("id2label / label2id hold an integer of too many digits")
    for name, v in {**values, **labels, **extra}.items():
        if isinstance(v, _HugeInt):
            problems.append(f"{name} is {v!r}, out of any range")
    for name in ("dtype", "torch_dtype"):
        v = extra.get(name)
        if v is not None and not isinstance(v, str) and type(v).__module__ != "torch":
            problems.append(f"{name} must be a string (e.g. \"float32\") or a torch.dtype, got {type(v).__name__}")
    for name in ("_name_or_path", "transformers_version"):
        v = extra.get(name)
        if v is not None and not isinstance(v, str):
            problems.append(f"{name} must be a string, got {type(v).__name__} {str(v)[:50]}")
    if problems:
        raise _invalid(problems)


def _parse_pos_att_type(value: Any) -> Any:
    """As the reference: "p2c|c2p" -> ["p2c", "c2p"], "None" -> ["none"]; anything else as given."""
    return [x.strip() for x in value.lower().split("|")] if isinstance(value, str) else value


def _dtype_name(dtype: Any) -> Any:
    """A torch.dtype as the name config.json stores ("float16"); anything else as given."""
    return str(dtype).rsplit(".", 1)[-1] if type(dtype).__module__ == "torch" else dtype


class DebertaV2Config:
    """Configuration of a DeBERTa-v2/v3 model.

    Every field of the reference with its code default (note: ``relative_attention=False`` and
    ``position_biased_input=True`` are the code defaults, the published checkpoints set the opposite).
    ``pos_att_type`` accepts ``"p2c|c2p"`` or a list. :meth:`validate` (called by every model build) raises one
    :class:`ConfigError` that lists every problem.
    """

    model_type = MODEL_TYPE
    sub_configs: dict[str, type] = {}  # no nested configs (what the reference's config tests look up)
    has_no_defaults_at_init = False

    def __init__(self, **kwargs: Any):
        kwargs.pop("model_type", None)  # checked by from_dict; constructing this class means deberta-v2
        self.__dict__["_extra"] = {}
        attn_implementation = kwargs.pop("attn_implementation", None)
        num_labels = kwargs.pop("num_labels", None)
        labels = {name: kwargs.pop(name, None) for name in _LABEL_FIELDS}
        values = {**_DEFAULTS, **{k: kwargs.pop(k) for k in list(kwargs) if k in _DEFAULTS}}
        _check_construction(values, labels, kwargs)  # before anything below converts a value of the wrong type
        dtype, torch_dtype = kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None)  # `dtype` wins over the alias
        self.__dict__["_dtype"] = (_dtype_name(torch_dtype if dtype is None else dtype), True)  # (value, from init)
        values["pos_att_type"] = _parse_pos_att_type(values["pos_att_type"])
        self.__dict__.update(values)
        # The label maps as PretrainedConfig makes them: id2label given wins (keys made ints, values and label2id
        # kept as given); otherwise LABEL_i maps for num_labels (default 2), replacing any label2id given.
        if labels["id2label"] is not None:
            self.__dict__["id2label"] = {int(k): v for k, v in labels["id2label"].items()}
            self.__dict__["label2id"] = labels["label2id"]
        else:
            self.__dict__["id2label"], self.__dict__["label2id"] = _label_maps(2 if num_labels is None else num_labels)
        self.__dict__["_extra"] = dict(kwargs)  # unknown keys (and PretrainedConfig's common ones), kept
        self._attn_implementation = attn_implementation

    def __setattr__(self, name: str, value: Any) -> None:
        """Fields and properties are attributes; anything else is kept with the unknown keys (and written)."""
        if name.startswith("_") or name in _DEFAULTS or name in _LABEL_FIELDS or isinstance(
                getattr(type(self), name, None), property):
            object.__setattr__(self, name, value)
        else:
            self._extra[name] = value

    # ----------------------------------------------------------------------------------------------------------
    # dtype, as PretrainedConfig has it: a name given at construction ("float16", or the deprecated `torch_dtype=`)
    # reads as that torch.dtype when torch is installed (imported here, on first read, never at import), else as
    # the name; config.json gets the name under "dtype". A value set later is kept as set, as in the reference.
    @property
    def dtype(self) -> Any:
        value, from_init = self._dtype
        if from_init and isinstance(value, str) and value != "auto" and importlib.util.find_spec("torch"):
            import torch

            resolved = getattr(torch, value, None)
            if not isinstance(resolved, torch.dtype):
                raise ConfigError(f"dtype {value!r} is not a torch dtype (e.g. \"float32\", \"bfloat16\")")
            self.__dict__["_dtype"] = (resolved, False)
            return resolved
        return value

    @dtype.setter
    def dtype(self, value: Any) -> None:
        self.__dict__["_dtype"] = (value, False)

    @property
    def torch_dtype(self) -> Any:
        """The deprecated name of `dtype` (reads and writes it)."""
        return self.dtype

    @torch_dtype.setter
    def torch_dtype(self, value: Any) -> None:
        self.dtype = value

    # ----------------------------------------------------------------------------------------------------------
    # Labels and the output flags, as PretrainedConfig has them.
    @property
    def num_labels(self) -> int:
        """The number of labels: ``len(id2label)``. Setting another count makes new LABEL_i maps."""
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, num_labels: int) -> None:
        if self.__dict__.get("id2label") is None or self.num_labels != num_labels:
            self.__dict__["id2label"], self.__dict__["label2id"] = _label_maps(num_labels)

    @property
    def use_return_dict(self) -> bool:
        """Whether the models return output objects: ``return_dict`` unless ``torchscript``."""
        return bool(self.return_dict) and not self.torchscript

    def get_text_config(self, *args: Any, **kwargs: Any) -> "DebertaV2Config":
        return self

    # ----------------------------------------------------------------------------------------------------------
    # The attention implementation, as the reference keeps it: an attribute set by ``attn_implementation=`` (here,
    # on from_pretrained or create_model), never written to config.json; None reads as "eager".
    @property
    def _attn_implementation(self) -> str:
        return self.__dict__.get("_attn_implementation_internal") or "eager"

    @_attn_implementation.setter
    def _attn_implementation(self, value: str | None) -> None:
        if value is not None and value not in ATTN_IMPLEMENTATIONS:
            raise ConfigError(f"attn_implementation {value!r} is not one of {', '.join(ATTN_IMPLEMENTATIONS)}")
        self.__dict__["_attn_implementation_internal"] = value

    # ----------------------------------------------------------------------------------------------------------
    # Derived quantities, computed the way the reference computes them (meaningful once validate() passed).
    @property
    def embedding_dim(self) -> int:
        """E: width of the token embeddings (``embedding_size``, default hidden_size)."""
        return self.hidden_size if self.embedding_size is None else self.embedding_size

    @property
    def head_size(self) -> int:
        """d: per-head width (``attention_head_size``, default hidden_size // heads)."""
        if self.attention_head_size is not None:
            return self.attention_head_size
        return self.hidden_size // self.num_attention_heads

    @property
    def pooler_size(self) -> int:
        return self.hidden_size if self.pooler_hidden_size is None else self.pooler_hidden_size

    @property
    def pos_att_types(self) -> tuple[str, ...]:
        """The relative terms, "c2p" and/or "p2c" ("none" entries, as in the reference, add nothing). A string set
        after construction (``from_pretrained(..., pos_att_type="p2c|c2p")``, kept as set, as the reference keeps
        it) reads as at construction."""
        return tuple(t for t in (_parse_pos_att_type(self.pos_att_type) or ()) if t not in POS_ATT_NOTHING)

    @property
    def scale_factor(self) -> int:
        """1 + #relative terms; counted even when relative attention is off, as the reference does."""
        return 1 + ("c2p" in self.pos_att_types) + ("p2c" in self.pos_att_types)

    @property
    def max_relative_positions_resolved(self) -> int:
        """``max_relative_positions``, with values < 1 replaced by ``max_position_embeddings``."""
        if self.max_relative_positions < 1:
            return self.max_position_embeddings
        return self.max_relative_positions

    @property
    def att_span(self) -> int:
        """Half the number of relative-embedding rows: position_buckets if > 0 else max_relative_positions."""
        if self.position_buckets > 0:
            return self.position_buckets
        return self.max_relative_positions_resolved

    @property
    def norm_rel_ebd_list(self) -> tuple[str, ...]:
        return tuple(x.strip() for x in str(self.norm_rel_ebd).lower().split("|"))

    @property
    def rel_embeddings_layer_norm(self) -> bool:
        return "layer_norm" in self.norm_rel_ebd_list

    @property
    def classifier_dropout(self) -> float:
        return self.hidden_dropout_prob if self.cls_dropout is None else self.cls_dropout

    # ----------------------------------------------------------------------------------------------------------
    def validate(self) -> "DebertaV2Config":
        """Raise one ConfigError listing every problem of this config (naming its file when it was read from one);
        every model build calls it. Returns the config."""
        problems: list[str] = []
        is_int = _is_int

        for name in _SIZE_FIELDS:
            v = getattr(self, name)
            if is_int(v) and abs(v) > MAX_SIZE:
                problems.append(f"{name} = {_shown(v)} is out of range (at most {MAX_SIZE})")
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "max_position_embeddings"):
            v = getattr(self, name)
            if not is_int(v) or v < 1:
                problems.append(f"{name} must be a positive integer, got {v!r}"[:200])
        if is_int(self.num_hidden_layers) and MAX_LAYERS < self.num_hidden_layers <= MAX_SIZE:
            problems.append(f"num_hidden_layers = {self.num_hidden_layers} is more than this implementation "
                            f"runs (at most {MAX_LAYERS})")
        for name in ("type_vocab_size", "conv_kernel_size"):
            v = getattr(self, name)
            if not is_int(v) or v < 0:
                problems.append(f"{name} must be an integer >= 0, got {v!r}"[:200])
        for name in ("max_relative_positions", "position_buckets", "pad_token_id"):
            if not is_int(getattr(self, name)):
                problems.append(f"{name} must be an integer, got {getattr(self, name)!r}"[:200])
        for name in ("embedding_size", "attention_head_size", "pooler_hidden_size"):
            v = getattr(self, name)
            if v is not None and (not is_int(v) or v < 1):
                problems.append(f"{name} must be a positive integer or absent, got {v!r}"[:200])
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "pooler_dropout", "cls_dropout"):
            v = getattr(self, name)
            if v is None and name == "cls_dropout":
                continue
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v < 1:
                problems.append(f"{name} must be a probability in [0, 1), got {v!r}"[:200])
        eps = self.layer_norm_eps
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0 or not math.isfinite(eps):
            problems.append(f"layer_norm_eps must be a positive number, got {eps!r}"[:200])
        init = self.initializer_range
        if not isinstance(init, (int, float)) or isinstance(init, bool) or not math.isfinite(init) or init < 0:
            problems.append(f"initializer_range must be a finite number >= 0, got {init!r}"[:200])
        for name in ("hidden_act", "conv_act", "pooler_hidden_act"):
            v = getattr(self, name)
            if not isinstance(v, str) or v not in ACTIVATIONS:
                problems.append(f"{name} {str(v)[:50]!r} is not supported (one of {', '.join(ACTIVATIONS)})")
        for name in ("relative_attention", "position_biased_input", "share_att_key", "legacy", *_COMMON_FLAGS):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be true or false, got {getattr(self, name)!r}"[:200])
        pos = _parse_pos_att_type(self.pos_att_type)
        if pos is not None and not (isinstance(pos, (list, tuple)) and all(isinstance(x, str) for x in pos)):
            problems.append(f"pos_att_type must be a string like 'p2c|c2p' or a list of strings, got {str(pos)[:50]}")
        else:
            unknown = [t for t in self.pos_att_types if t not in POS_ATT_TYPES]
            if unknown:
                problems.append(f"pos_att_type has unknown entries {unknown} (allowed: 'c2p', 'p2c', 'none'; the "
                                "reference would ignore them silently)")
        if not isinstance(self.norm_rel_ebd, str):
            problems.append(f"norm_rel_ebd must be a string, got {str(self.norm_rel_ebd)[:50]}")
        else:
            unknown = [t for t in self.norm_rel_ebd_list if t not in ("none", "layer_norm")]
            if unknown:
                problems.append(f"norm_rel_ebd has unknown entries {unknown} (allowed: 'none', 'layer_norm')")
        arch = self.architectures
        if arch is not None and not (isinstance(arch, list) and all(isinstance(a, str) for a in arch)):
            problems.append(f"architectures must be a list of class names (strings), got {str(arch)[:50]}")

        heads, hidden = self.num_attention_heads, self.hidden_size
        if is_int(heads) and is_int(hidden) and heads > 0:
            if hidden % heads:
                problems.append(f"hidden_size ({hidden}) is not a multiple of num_attention_heads ({heads})")
            elif is_int(self.head_size) and heads * self.head_size != hidden:
                problems.append(
                    f"num_attention_heads * attention_head_size ({heads} * {self.head_size}) must equal hidden_size "
                    f"({hidden}): the attention output projection is hidden_size x hidden_size")
        if self.pooler_hidden_size is not None and self.pooler_hidden_size != hidden:
            problems.append(f"pooler_hidden_size ({self.pooler_hidden_size}) must equal hidden_size ({hidden}): "
                            "the pooler reads the hidden state of the first token")
        if is_int(self.conv_kernel_size) and self.conv_kernel_size > 0:
            if self.conv_kernel_size % 2 == 0:
                problems.append(f"conv_kernel_size ({self.conv_kernel_size}) must be odd: the conv keeps the length "
                                "with padding (k - 1) // 2")
            if not is_int(self.conv_groups) or self.conv_groups < 1 or (is_int(hidden) and hidden % self.conv_groups):
                problems.append(f"conv_groups ({self.conv_groups!r}) must be a positive divisor of hidden_size "
                                f"({hidden})"[:200])
        if is_int(self.pad_token_id) and is_int(self.vocab_size) and not 0 <= self.pad_token_id < self.vocab_size:
            problems.append(f"pad_token_id ({self.pad_token_id}) must be in [0, vocab_size={self.vocab_size})")
        if not isinstance(self.id2label, dict) or self.num_labels < 1:
            problems.append(f"num_labels must be a positive integer (id2label holds the labels), got "
                            f"{self.num_labels if isinstance(self.id2label, dict) else self.id2label!r}"[:200])
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            problems.append(f"problem_type {self.problem_type!r} is not one of {', '.join(PROBLEM_TYPES)}"[:200])
        if not problems:
            E, H, I, L = self.embedding_dim, hidden, self.intermediate_size, self.num_hidden_layers
            estimate = self.vocab_size * E + L * (4 * H * H + 2 * H * I) + self.max_position_embeddings * H
            if estimate > MAX_PARAMETERS:
                problems.append(f"this config needs about {estimate:.3g} parameters (vocab_size {self.vocab_size}, "
                                f"hidden_size {H}, intermediate_size {I}, {L} layers); at most {MAX_PARAMETERS:.3g} "
                                f"are supported")
        if problems:
            raise _invalid(problems, self.__dict__.get("_source_file"))
        return self

    # ----------------------------------------------------------------------------------------------------------
    # Serialisation
    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> "DebertaV2Config":
        """The config of ``config_dict``, then ``kwargs`` set on it as attributes, as the reference does (so
        ``num_labels=3`` makes new label maps when the dict's id2label has another count)."""
        model_type = config_dict.get("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise _invalid([f"model_type is {model_type!r}, expected {MODEL_TYPE!r}"])
        if "num_labels" in kwargs and "id2label" in kwargs and len(kwargs["id2label"] or ()) != kwargs["num_labels"]:
            raise ConfigError(f"num_labels={kwargs['num_labels']} and an id2label of {len(kwargs['id2label'] or ())} "
                              "labels were both given: remove one of them")
        data = dict(config_dict)
        if "attn_implementation" in kwargs:
            data["attn_implementation"] = kwargs.pop("attn_implementation")
        config = cls(**data)
        for name, value in kwargs.items():
            setattr(config, name, value)
        return config

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "DebertaV2Config":
        path = os.fspath(path)
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_CONFIG_BYTES + 1)
        except FileNotFoundError:
            raise ConfigNotFoundError(f"{path}: config file not found") from None
        except IsADirectoryError:
            raise ConfigNotFoundError(f"{path}: is a directory, not a config file") from None
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: config file larger than {MAX_CONFIG_BYTES} bytes")
        try:
            data = json.loads(raw.decode("utf-8"), parse_int=_parse_int)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: not valid JSON ({err})") from None
        except RecursionError:
            raise ConfigError(f"{path}: not valid JSON (nested too deeply)") from None
        except ValueError as err:  # an integer of more than 4300 digits
            raise ConfigError(f"{path}: not valid JSON ({str(err)[:200]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
        try:
            config = cls.from_dict(data)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
        config._source_file = path  # named by validate()'s error
        return config

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, subfolder: str = "", **kwargs: Any) -> "DebertaV2Config":
        """Read ``config.json`` from a checkpoint directory (or a JSON file path); ``kwargs`` are set on it as
        :meth:`from_dict` sets them. A path that does not exist, or a directory without ``config.json``, raises
        :class:`ConfigNotFoundError` (an ``OSError``, as the reference raises)."""
        path = os.path.join(os.fspath(path), subfolder) if subfolder else os.fspath(path)
        if os.path.isdir(path):
            file = os.path.join(path, CONFIG_NAME)
            if not os.path.isfile(file):
                raise ConfigNotFoundError(f"{path}: no {CONFIG_NAME} in this directory")
        elif not os.path.exists(path):
            raise ConfigNotFoundError(f"{path}: no such checkpoint directory or config file")
        else:
            file = path
        config = cls.from_json_file(file)
        if kwargs:
            config = cls.from_dict(config.to_dict(), **kwargs)
            config._source_file = file
        return config

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model_type": MODEL_TYPE}
        for name in _DEFAULTS:
            value = getattr(self, name)
            if value is None and name in _OMIT_WHEN_NONE:
                continue
            out[name] = copy.deepcopy(value)
        out["id2label"] = copy.deepcopy(self.id2label)
        out["label2id"] = copy.deepcopy(self.label2id)
        out["num_labels"] = self.num_labels  # derived; what older tools read
        for name, value in self._extra.items():
            out.setdefault(name, copy.deepcopy(value))
        if self._dtype[0] is not None:  # written only when given, as the reference's config.json
            out["dtype"] = _dtype_name(self._dtype[0])
        return dict(sorted(out.items()))

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: str | os.PathLike) -> None:
        from deberta_xf.fileio import atomic_write_text

        atomic_write_text(path, self.to_json_string())

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        os.makedirs(save_directory, exist_ok=True)
        self.to_json_file(os.path.join(save_directory, CONFIG_NAME))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DebertaV2Config) and self.to_dict() == other.to_dict()

    def __getattr__(self, name: str) -> Any:  # only called for missing attributes: unknown and common keys
        extra = self.__dict__.get("_extra", {})
        if name in extra:
            return extra[name]
        if name in _COMMON_DEFAULTS:
            return copy.copy(_COMMON_DEFAULTS[name])
        raise AttributeError(f"DebertaV2Config has no field {name!r}")

    def __repr__(self) -> str:
        return f"DebertaV2Config {self.to_json_string()}"
