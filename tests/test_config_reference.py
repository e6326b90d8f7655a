"""DebertaV2Config against the reference's, live (transformers 4.57.6): the string forms of ``pos_att_type``, the
``num_labels`` property and the label maps, what construction accepts and refuses, ``from_dict`` keyword
semantics, the output flags and the JSON round trip of each. Plus the deferred validation (construction accepts
what the reference accepts; validate() and every model build refuse it with one ConfigError) and the upstream
ConfigTester's calls, which need no reference."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

import deberta_xf
from deberta_xf.configuration import _DEFAULTS, DebertaV2Config
from deberta_xf.errors import ConfigError, ConfigNotFoundError
from deberta_xf.frameworks import FRAMEWORKS, REGISTRY

INSTALLED = [f for f in FRAMEWORKS if REGISTRY[f].available() is None]
TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64)

# Constructor inputs the reference accepts; each is compared field by field, and after a JSON round trip.
ACCEPTED = {
    "defaults": {},
    "pos-None": dict(pos_att_type="None"),  # the upstream model tester's value: ["none"], no relative term
    "pos-c2p|p2c": dict(pos_att_type="c2p|p2c"),
    "pos-spaced-upper": dict(pos_att_type="P2C| c2p"),
    "pos-empty-string": dict(pos_att_type=""),
    "pos-list": dict(pos_att_type=["p2c"]),
    "pos-list-upper": dict(pos_att_type=["P2C"]),  # kept as given (the reference does not lower-case lists)
    "pos-tuple": dict(pos_att_type=("c2p", "p2c")),
    "num_labels-5": dict(num_labels=5),
    "num_labels-1": dict(num_labels=1),
    "num_labels-0": dict(num_labels=0),
    "id2label-str-keys": dict(id2label={"0": "neg", "1": "pos"}),
    "id2label-wins-over-num_labels": dict(id2label={0: "a"}, num_labels=3),
    "label2id-alone-is-replaced": dict(label2id={"neg": 0, "pos": 1}),
    "label2id-string-ids": dict(id2label={0: "label"}, label2id={"label": "0"}),
    "id2label-non-string-names": dict(id2label={"0": 5, "1": 6}),
    "problem_type": dict(problem_type="regression"),
    "hidden-not-multiple-of-heads": dict(hidden_size=37),  # refused only when a model is built
    "bad-sizes": dict(hidden_size=0, vocab_size=-3, intermediate_size=0),
    "unknown-activation": dict(hidden_act="gelu_magic"),
    "output-flags": dict(output_attentions=True, output_hidden_states=True, return_dict=False, torchscript=True),
    "untied": dict(tie_word_embeddings=False),
    "common-kwargs": dict(is_decoder=True, architectures=["BertModel"], finetuning_task="mnli", bos_token_id=6),
}
COMPARED = [*_DEFAULTS, "num_labels", "id2label", "label2id", "output_attentions", "output_hidden_states",
            "return_dict", "use_return_dict", "torchscript", "tie_word_embeddings", "is_decoder", "architectures",
            "finetuning_task", "bos_token_id"]
# What the reference refuses at construction (ValueError or TypeError); ours is a ConfigError (a ValueError).
REFUSED = {
    "id2label-not-a-dict": dict(id2label=5),
    "id2label-list": dict(id2label=["a", "b"]),
    "id2label-key-not-an-int": dict(id2label={"x": "a"}),
    "label2id-not-a-dict": dict(label2id=5),
    "problem_type-unknown": dict(problem_type="foo"),
    "num_labels-a-string": dict(num_labels="3"),
}


def fields(config, names=COMPARED) -> dict:
    """The compared fields; attributes the reference leaves out (our getattr-read fields) are skipped for it, and
    our derived pooler_hidden_size (None: hidden_size) is compared as the value the reference stores."""
    out = {name: getattr(config, name) for name in names if hasattr(config, name)}
    if isinstance(config, DebertaV2Config):
        out["pooler_hidden_size"] = config.pooler_size
    return out


def reference_config():
    transformers = pytest.importorskip("transformers")
    return transformers.DebertaV2Config


@pytest.mark.reference
@pytest.mark.parametrize("kwargs", list(ACCEPTED.values()), ids=list(ACCEPTED))
def test_construction_matches_the_reference(kwargs):
    Reference = reference_config()
    ref = Reference(**copy.deepcopy(kwargs))
    ours = DebertaV2Config(**copy.deepcopy(kwargs))
    want = fields(ref)
    assert {k: v for k, v in fields(ours).items() if k in want} == want
    assert {"pos_att_type", "num_labels", "id2label", "label2id", "use_return_dict"} <= set(want)


@pytest.mark.reference
@pytest.mark.parametrize("kwargs", list(ACCEPTED.values()), ids=list(ACCEPTED))
def test_json_round_trip_matches_the_reference(kwargs, tmp_path):
    Reference = reference_config()
    ref = Reference(**copy.deepcopy(kwargs))
    ours = DebertaV2Config(**copy.deepcopy(kwargs))
    # to_dict -> from_dict
    ref_again = Reference.from_dict(ref.to_dict())
    ours_again = DebertaV2Config.from_dict(ours.to_dict())
    want = fields(ref_again)
    assert {k: v for k, v in fields(ours_again).items() if k in want} == want
    assert ours_again == ours
    # the JSON text: every key both write holds the same value (ids as strings, as JSON has them)
    ref_json = json.loads(ref.to_json_string(use_diff=False))
    ours_json = json.loads(ours.to_json_string())
    shared = set(ref_json) & set(ours_json)
    assert {"id2label", "label2id", "pos_att_type", "hidden_size", "vocab_size"} <= shared
    assert {k: ours_json[k] for k in shared} == {k: ref_json[k] for k in shared}
    # save_pretrained -> from_pretrained, each with its own class, read by the other
    ref.save_pretrained(tmp_path / "ref")
    ours.save_pretrained(tmp_path / "ours")
    want = fields(Reference.from_pretrained(str(tmp_path / "ref")))
    ours_read_by_ref = fields(Reference.from_pretrained(str(tmp_path / "ours")))
    ref_read_by_ours = fields(DebertaV2Config.from_pretrained(tmp_path / "ref"))
    assert {k: ours_read_by_ref[k] for k in want} == want
    assert {k: ref_read_by_ours[k] for k in want} == want


@pytest.mark.reference
@pytest.mark.parametrize("kwargs", list(REFUSED.values()), ids=list(REFUSED))
def test_construction_refuses_what_the_reference_refuses(kwargs):
    Reference = reference_config()
    with pytest.raises((ValueError, TypeError)):
        Reference(**kwargs)
    with pytest.raises(ConfigError) as err:
        DebertaV2Config(**kwargs)
    assert next(iter(kwargs)) in str(err.value)  # names the field


@pytest.mark.reference
def test_num_labels_changes_match_the_reference():
    Reference = reference_config()

    def steps(cls):
        seen = []
        c = cls(num_labels=5)
        for n in (3, 3, 1, 4):
            c.num_labels = n
            seen.append((c.num_labels, dict(c.id2label), dict(c.label2id)))
        named = cls(id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
        named.num_labels = 2  # the same count keeps the names
        seen.append((named.id2label, named.label2id))
        named.num_labels = 3
        seen.append((named.id2label, named.label2id))
        return seen

    assert steps(DebertaV2Config) == steps(Reference)


@pytest.mark.reference
@pytest.mark.parametrize("kwargs", [dict(num_labels=1), dict(num_labels=3, output_hidden_states=True),
                                    dict(id2label={0: "x"}), dict(vocab_size=64, pos_att_type="p2c")],
                         ids=["num_labels-1", "num_labels-3+flag", "id2label", "fields"])
def test_from_dict_keywords_are_set_as_the_reference_sets_them(kwargs):
    Reference = reference_config()
    base = dict(id2label={0: "neg", 1: "neu", 2: "pos"}, label2id={"neg": 0, "neu": 1, "pos": 2})
    ref = Reference.from_dict(Reference(**base).to_dict(), **copy.deepcopy(kwargs))
    ours = DebertaV2Config.from_dict(DebertaV2Config(**base).to_dict(), **copy.deepcopy(kwargs))
    want = fields(ref)
    assert {k: v for k, v in fields(ours).items() if k in want} == want


@pytest.mark.reference
def test_a_mismatched_num_labels_and_id2label_in_kwargs_is_refused_as_by_the_reference():
    Reference = reference_config()
    with pytest.raises(ValueError):
        Reference.from_dict({}, num_labels=3, id2label={0: "a"})
    with pytest.raises(ConfigError, match="num_labels=3 and an id2label of 1"):
        DebertaV2Config.from_dict({}, num_labels=3, id2label={0: "a"})


@pytest.mark.reference
@pytest.mark.parametrize("pos_att_type", ["None", "c2p|p2c", "p2c"])
def test_pos_att_type_forms_give_the_reference_outputs(pos_att_type):
    """The string forms mean to our models what they mean to the reference's: the same outputs from the same
    weights (``"None"``: no relative term, as in the upstream tests)."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    config = dict(TINY, relative_attention=pos_att_type != "None", pos_att_type=pos_att_type, type_vocab_size=16)
    torch.manual_seed(0)
    reference = transformers.DebertaV2Model(transformers.DebertaV2Config(**config)).eval()
    ids = torch.randint(0, 99, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = reference(ids).last_hidden_state.numpy()
    ours = deberta_xf.create_model("torch", config=config)
    ours.load_state_dict(reference.state_dict(), strict=False)
    with torch.no_grad():
        got = ours(input_ids=ids).last_hidden_state.numpy()
    np.testing.assert_allclose(got, want, atol=5e-5 * 0.5, rtol=0)


# ----------------------------------------------------------------------------------------------------------------
# Deferred validation: construction accepts, validate() and every framework's model build refuse with one error
@pytest.mark.parametrize("framework", INSTALLED)
def test_every_model_build_validates(framework):
    config = DebertaV2Config(**{**TINY, "hidden_size": 37, "hidden_act": "gelu_magic"})  # accepted
    with pytest.raises(ConfigError) as at_validate:
        config.validate()
    for fragment in ("hidden_size (37) is not a multiple of num_attention_heads (4)", "hidden_act 'gelu_magic'"):
        assert fragment in str(at_validate.value)
    model_class = REGISTRY[framework].model_class("sequence-classification")
    with pytest.raises(ConfigError) as at_build:
        model_class.from_config(config)
    assert str(at_build.value) == str(at_validate.value)


@pytest.mark.parametrize("command", ["convert", "parity"])
def test_the_cli_refuses_an_invalid_config_up_front(tmp_path, capsys, command):
    import shutil

    from deberta_xf import cli
    from reference_cases import REFERENCE

    src = tmp_path / "src"
    shutil.copytree(f"{REFERENCE}/v3/base", src)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "hidden_size": 37, "layer_norm_eps": -1}))
    argv = ["convert", str(src), str(tmp_path / "out"), "--to", "flax"] if command == "convert" else \
        ["parity", str(src), "--frameworks", "torch,flax"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"{src / 'config.json'}: invalid DebertaV2Config" in err and "hidden_size (37)" in err
    assert "layer_norm_eps" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------------------
# The calls of the upstream tests (tests/models/deberta_v2/test_modeling_deberta_v2.py and its ConfigTester)
def test_the_upstream_config_tester_calls(tmp_path):
    inputs = dict(hidden_size=37)
    config = DebertaV2Config(**inputs)
    for idx, name in enumerate(["hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size"]):
        setattr(config, name, idx)  # accepted: nothing is validated until a model is built
        assert getattr(config, name) == idx
        assert getattr(DebertaV2Config(**{name: idx}), name) == idx
    assert json.loads(DebertaV2Config(**inputs).to_json_string())["hidden_size"] == 37
    first = DebertaV2Config(**inputs)
    first.to_json_file(tmp_path / "config.json")
    assert DebertaV2Config.from_json_file(tmp_path / "config.json").to_dict() == first.to_dict()
    first.save_pretrained(tmp_path / "saved")
    assert DebertaV2Config.from_pretrained(tmp_path / "saved").to_dict() == first.to_dict()
    with pytest.raises(OSError):
        DebertaV2Config.from_pretrained(f".{tmp_path / 'saved'}")
    first.save_pretrained(tmp_path / "sub" / "test")
    assert DebertaV2Config.from_pretrained(tmp_path / "sub", subfolder="test").to_dict() == first.to_dict()
    assert DebertaV2Config.sub_configs == {} and DebertaV2Config.has_no_defaults_at_init is False
    labelled = DebertaV2Config(**inputs, num_labels=5)
    assert len(labelled.id2label) == 5 and len(labelled.label2id) == 5
    labelled.num_labels = 3
    assert len(labelled.id2label) == 3 and len(labelled.label2id) == 3
    common = dict(return_dict=False, output_hidden_states=True, output_attentions=True, tie_word_embeddings=False,
                  is_decoder=True, chunk_size_feed_forward=5, architectures=["BertModel"], id2label={0: "label"},
                  label2id={"label": "0"}, pad_token_id=7, bos_token_id=6, problem_type="regression",
                  exponential_decay_length_penalty=(5, 1.01), task_specific_params={"translation": "some_params"})
    made = DebertaV2Config(**copy.deepcopy(common))
    assert {k: getattr(made, k) for k in common} == common


@pytest.mark.parametrize("task", ["base", "masked-lm", "sequence-classification", "token-classification",
                                  "question-answering", "multiple-choice"])
def test_the_upstream_model_tester_config_builds_every_head(task):
    torch = pytest.importorskip("torch")
    config = DebertaV2Config(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=37, hidden_act="gelu", hidden_dropout_prob=0.1,
                             attention_probs_dropout_prob=0.1, max_position_embeddings=512, type_vocab_size=16,
                             initializer_range=0.02, relative_attention=False, position_biased_input=True,
                             pos_att_type="None")
    assert config.pos_att_type == ["none"] and config.scale_factor == 1
    if task in ("sequence-classification", "token-classification"):
        config.num_labels = 3  # as the upstream tests set it for these two
    model = REGISTRY["torch"].model_class(task)(config).eval()
    shape = (13, 4, 7) if task == "multiple-choice" else (13, 7)
    ids = torch.randint(0, 99, shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(input_ids=ids, token_type_ids=torch.zeros_like(ids))
    first = out[0]
    expected = {"base": (13, 7, 32), "masked-lm": (13, 7, 99), "sequence-classification": (13, 3),
                "token-classification": (13, 7, 3), "question-answering": (13, 7), "multiple-choice": (13, 4)}[task]
    assert tuple(first.shape) == expected


def test_missing_config_error_is_both_kinds():
    assert issubclass(ConfigNotFoundError, OSError) and issubclass(ConfigNotFoundError, ConfigError)


# === dtype (and its deprecated alias torch_dtype), as PretrainedConfig 4.57.6 keeps it ===

DTYPE_INPUTS = [dict(dtype="float16"), dict(torch_dtype="bfloat16"), dict(dtype="float32", torch_dtype="float16"), {}]


@pytest.mark.reference
@pytest.mark.parametrize("kwargs", DTYPE_INPUTS, ids=["dtype", "torch_dtype", "both", "none"])
def test_dtype_matches_the_reference(kwargs, tmp_path):
    """A name given at construction reads as the torch.dtype; to_dict / config.json hold the name under "dtype"
    (never "torch_dtype"), and nothing when none was given; the alias reads and writes the same value."""
    Reference = reference_config()
    torch = pytest.importorskip("torch")
    ref, ours = Reference(**kwargs), DebertaV2Config(**kwargs)
    assert ours.dtype == ref.dtype and (ours.dtype is None or isinstance(ours.dtype, torch.dtype))
    assert ours.torch_dtype == ref.torch_dtype
    ref.save_pretrained(tmp_path / "ref")
    ours.save_pretrained(tmp_path / "ours")
    saved = {name: json.loads((tmp_path / name / "config.json").read_text()) for name in ("ref", "ours")}
    for key in ("dtype", "torch_dtype"):
        assert saved["ours"].get(key) == saved["ref"].get(key), key
    assert ours.to_dict()["dtype"] == ref.to_dict()["dtype"] if kwargs else ours.to_dict().get("dtype") is None
    reloaded = DebertaV2Config.from_pretrained(tmp_path / "ours")
    assert reloaded.dtype == ref.dtype
    # set later (a name or a torch.dtype), the value is kept as set and written as its name
    for value, written in (("float16", "float16"), (torch.bfloat16, "bfloat16")):
        ref.dtype, ours.torch_dtype = value, value
        assert ours.dtype == ref.dtype and json.loads(ours.to_json_string())["dtype"] == written
        assert json.loads(ref.to_json_string())["dtype"] == written


def test_dtype_names_without_importing_torch(tmp_path):
    """Framework-free: importing deberta_xf and building a config never imports torch; the name round-trips
    through config.json under "dtype"; a value of the wrong type is refused naming the key."""
    import subprocess
    import sys

    code = (
        "import sys, json\n"
        "from deberta_xf.configuration import DebertaV2Config\n"
        "c = DebertaV2Config(torch_dtype='bfloat16')\n"
        "d = json.loads(c.to_json_string())\n"
        "assert d['dtype'] == 'bfloat16' and 'torch_dtype' not in d, d\n"
        "assert 'torch' not in sys.modules\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
    with pytest.raises(ConfigError, match="dtype must be a string"):
        DebertaV2Config(dtype=3)
    with pytest.raises(ConfigError, match="torch_dtype must be a string"):
        DebertaV2Config(torch_dtype=["float16"])
