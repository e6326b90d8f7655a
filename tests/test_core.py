"""Framework-free core: config, schema, relative positions, factory errors, file formats."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import deberta_xf
from deberta_xf.formats import TensorInfo, detect_format, open_weights, write_arrays
from deberta_xf import schema
from deberta_xf.tasks import TASKS
from deberta_xf.configuration import DebertaV2Config
from deberta_xf.errors import CheckpointError, ConfigError
from deberta_xf.relative_position import build_relative_position, make_log_bucket_position
from reference_cases import FIXTURES, REFERENCE, load_case

PUBLISHED = os.path.join(FIXTURES, "published-configs")  # copied from shared/reference/configs
# Backbone parameter counts (no pooler) of the published checkpoints, from shared/reference/configs/README.md.
PUBLISHED_PARAMS = {
    "deberta-v2-xlarge": 884_593_152, "deberta-v2-xxlarge": 1_564_549_632, "deberta-v3-xsmall": 70_682_112,
    "deberta-v3-small": 141_304_320, "deberta-v3-base": 183_831_552, "deberta-v3-large": 434_012_160,
    "mdeberta-v3-base": 278_218_752,
}


# ----------------------------------------------------------------------------------------------------------------
# Config
def test_code_defaults_are_the_references():
    c = DebertaV2Config()
    assert (c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == (
        128100, 1536, 24, 24, 6144)
    assert c.relative_attention is False and c.position_biased_input is True and c.pos_att_type is None
    assert c.layer_norm_eps == 1e-7 and c.max_relative_positions == -1 and c.type_vocab_size == 0
    assert c.position_buckets == -1 and c.norm_rel_ebd == "none" and c.share_att_key is False
    assert c.conv_kernel_size == 0 and c.conv_groups == 1 and c.conv_act == "tanh"
    assert c.embedding_dim == 1536 and c.head_size == 64 and c.pooler_size == 1536
    assert c.num_labels == 2 and c.id2label == {0: "LABEL_0", 1: "LABEL_1"} and c.legacy is True
    assert c.scale_factor == 1 and c.att_span == 512 and c.classifier_dropout == 0.1


def test_pos_att_type_string_or_list():
    assert DebertaV2Config(pos_att_type="P2C| c2p").pos_att_type == ["p2c", "c2p"]
    assert DebertaV2Config(pos_att_type=["c2p"]).pos_att_type == ["c2p"]
    # the scale counts the relative terms even when relative attention is off (as the reference)
    assert DebertaV2Config(pos_att_type="p2c|c2p", relative_attention=False).scale_factor == 3


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_published_configs_load_with_reference_parameter_counts(name):
    config = DebertaV2Config.from_json_file(os.path.join(PUBLISHED, f"{name}.json"))
    assert config.relative_attention and config.position_buckets == 256 and config.att_span == 256
    assert schema.num_parameters(config, "base") == PUBLISHED_PARAMS[name]
    shapes = schema.expected_shapes(config, "masked-lm")
    assert shapes["deberta.encoder.rel_embeddings.weight"] == (512, config.hidden_size)
    if "v2" in name:
        assert shapes["deberta.encoder.conv.conv.weight"] == (1536, 1536, 3)


def test_json_round_trip_keeps_unknown_keys(tmp_path):
    source = os.path.join(REFERENCE, "abs-noshare", "sequence-classification", "config.json")
    with open(source) as f:
        original = json.load(f)
    config = DebertaV2Config.from_json_file(source)
    assert config.architectures == ["DebertaV2ForSequenceClassification"]  # unknown keys stay reachable
    config.save_pretrained(tmp_path)
    with open(tmp_path / "config.json") as f:
        written = json.load(f)
    for key, value in original.items():
        if key == "pos_att_type":
            assert written[key] == ["c2p", "p2c"]
        else:
            assert written[key] == value, key
    assert DebertaV2Config.from_pretrained(tmp_path) == config
    # derived defaults are not written as null (the reference would read null as a value)
    assert "embedding_size" not in written and "attention_head_size" not in written


def test_invalid_config_lists_every_problem_at_validate_and_model_build():
    # construction accepts it, as the reference does; validate() (called by every model build) lists every problem
    config = DebertaV2Config(hidden_size=30, num_attention_heads=4, hidden_dropout_prob=1.5, pos_att_type="c2p|p2p",
                             hidden_act="gelu_magic", conv_kernel_size=2, layer_norm_eps=0, num_labels=0)
    with pytest.raises(ConfigError) as err:
        config.validate()
    message = str(err.value)
    for fragment in ("hidden_size (30) is not a multiple of num_attention_heads (4)", "hidden_dropout_prob",
                     "pos_att_type has unknown entries ['p2p']", "hidden_act 'gelu_magic'",
                     "conv_kernel_size (2) must be odd", "layer_norm_eps", "num_labels"):
        assert fragment in message
    assert message.count("\n  - ") == 7
    with pytest.raises(ConfigError) as built:
        deberta_xf.create_model("torch", config=config)
    assert str(built.value) == message
    assert DebertaV2Config(hidden_size=32, num_attention_heads=4).validate().head_size == 8  # returns the config


def test_validate_names_the_config_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "deberta-v2", "hidden_size": 37, "num_attention_heads": 24}))
    config = DebertaV2Config.from_json_file(path)  # accepted, as the reference accepts it
    assert config.hidden_size == 37
    with pytest.raises(ConfigError, match=f"{path}: invalid DebertaV2Config:\n  - hidden_size \\(37\\) is not a"):
        config.validate()


def test_config_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.json: config file not found"):
        DebertaV2Config.from_json_file(tmp_path / "nope.json")
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="config.json: not valid JSON"):
        DebertaV2Config.from_json_file(bad)
    bad.write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConfigError, match="model_type is 'bert'"):
        DebertaV2Config.from_json_file(bad)


@pytest.mark.parametrize("where", ["missing-dir", "empty-dir", "missing.json"])
def test_a_missing_config_is_an_oserror_and_a_config_error(tmp_path, where):
    from deberta_xf.errors import ConfigNotFoundError, EXIT_BAD_INPUT, exit_code_for

    (tmp_path / "empty-dir").mkdir()
    with pytest.raises(OSError) as err:  # what callers of the reference catch
        DebertaV2Config.from_pretrained(tmp_path / where)
    assert isinstance(err.value, ConfigNotFoundError) and isinstance(err.value, ConfigError)
    assert str(tmp_path / where) in str(err.value) and exit_code_for(err.value) == EXIT_BAD_INPUT


def test_num_labels_is_a_property_over_the_label_maps():
    c = DebertaV2Config(id2label={"0": "neg", "1": "neu", "2": "pos"})
    assert c.num_labels == 3 and c.id2label == {0: "neg", 1: "neu", 2: "pos"}
    assert c.label2id is None  # kept as given (here: not given), as the reference keeps it
    d = DebertaV2Config.from_dict(c.to_dict(), num_labels=1)  # kwargs are set: a new count makes new maps
    assert d.num_labels == 1 and d.id2label == {0: "LABEL_0"} and d.label2id == {"LABEL_0": 0}
    e = DebertaV2Config.from_dict({**c.to_dict(), "num_labels": 1})  # in the dict, id2label wins
    assert e.num_labels == 3 and e.id2label == c.id2label
    f = DebertaV2Config(num_labels=5)
    f.num_labels = 3
    assert f.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"} and len(f.label2id) == 3
    g = DebertaV2Config(id2label={0: "a", 1: "b"}, label2id={"a": 0, "b": 1})
    g.num_labels = 2  # the same count keeps the names
    assert g.id2label == {0: "a", 1: "b"} and g.label2id == {"a": 0, "b": 1}
    assert DebertaV2Config(label2id={"label": "0"}, id2label={"0": "label"}).label2id == {"label": "0"}
    with pytest.raises(ConfigError, match="num_labels must be an integer"):
        f.num_labels = "3"
    with pytest.raises(ConfigError, match="num_labels=3 and an id2label of 2"):
        DebertaV2Config.from_dict({}, num_labels=3, id2label={0: "a", 1: "b"})


def test_output_flags_and_common_fields():
    c = DebertaV2Config()
    assert (c.output_attentions, c.output_hidden_states, c.return_dict, c.use_return_dict) == (False, False, True, True)
    assert c.tie_word_embeddings is True and c.torchscript is False and c.get_text_config() is c
    assert "output_attentions" not in c.to_dict()  # written only when given or set
    c.output_hidden_states = True
    c.torchscript = True
    assert c.use_return_dict is False and c.to_dict()["output_hidden_states"] is True
    assert DebertaV2Config.from_dict(c.to_dict()) == c
    c.return_dict = "yes"
    with pytest.raises(ConfigError, match="return_dict must be true or false"):
        c.validate()


def test_log_buckets_match_the_reference_for_every_distance():
    table = np.load(os.path.join(REFERENCE, "log_buckets.npz"))
    rel = table["rel"]
    checked = 0
    for key in table.files:
        if key == "rel":
            continue
        bucket, max_pos = (int(x[1:]) for x in key.split("_"))
        np.testing.assert_array_equal(make_log_bucket_position(rel, bucket, max_pos), table[key], err_msg=key)
        checked += 1
    assert checked == 7
    # v3's setting: exact to +-128, 255 at distance 511
    got = make_log_bucket_position(np.array([128, 129, 511, -511]), 256, 512)
    assert got.tolist() == table["b256_m512"][np.searchsorted(rel, [128, 129, 511, -511])].tolist()


def test_relative_position_matrix():
    rel = build_relative_position(4, 4)
    assert rel.tolist() == [[0, -1, -2, -3], [1, 0, -1, -2], [2, 1, 0, -1], [3, 2, 1, 0]]
    with pytest.raises(ValueError):
        rel[0, 0] = 5  # cached and read-only


# ----------------------------------------------------------------------------------------------------------------
# Schema
def test_schema_names_are_the_reference_state_dict_names():
    for variant in ("v3", "v2-conv", "abs-noshare", "emb-proj", "no-rel"):
        for task in TASKS:
            case = load_case(variant, task)
            config = DebertaV2Config.from_pretrained(case.directory)
            with open_weights(os.path.join(case.directory, "model.safetensors")) as reader:
                shapes = reader.shapes()
            expected = schema.expected_shapes(config, task)
            mapping, report = schema.match_checkpoint(config, task, shapes)
            assert report.ok and not report.unexpected, (variant, task, report.summary())
            assert {n: shapes[mapping[n]] for n in expected} == expected


def test_layout_table_round_trips():
    rng = np.random.default_rng(0)
    cases = {"deberta.encoder.layer.0.attention.self.query_proj.weight": (6, 4),
             "deberta.encoder.conv.conv.weight": (8, 4, 3), "deberta.embeddings.LayerNorm.weight": (4,),
             "deberta.embeddings.word_embeddings.weight": (10, 4), "cls.predictions.bias": (10,)}
    expected_leaf = {"tf": ["kernel", "kernel", "gamma", "embeddings", "bias"],
                     "flax": ["kernel", "kernel", "scale", "embedding", "bias"]}
    for framework in ("tf", "flax"):
        for (name, shape), leaf in zip(cases.items(), expected_leaf[framework]):
            array = rng.normal(size=shape).astype(np.float32)
            converted = schema.to_framework(name, array, framework)
            assert converted.shape == schema.framework_shape(name, shape, framework)
            assert schema.framework_leaf(name, framework) == leaf
            np.testing.assert_array_equal(schema.from_framework(name, converted, framework), array)
    conv = rng.normal(size=(8, 4, 3))
    assert schema.to_framework("encoder.conv.conv.weight", conv, "tf")[2, 1, 0] == conv[0, 1, 2]
    assert schema.framework_name("deberta.encoder.layer.0.attention.output.LayerNorm.bias", "flax", "/") == \
        "deberta/encoder/layer/0/attention/output/LayerNorm/bias"


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64", "int8", "bfloat16"])
def test_contiguous_copies_transposed_kernels_exactly(dtype, monkeypatch):
    """schema.contiguous: the blocked (and, from 8 MiB, threaded) copy of a transposed view equals NumPy's, for
    shapes that are not multiples of the block or of the thread split; other arrays are copied or passed through."""
    from deberta_xf.formats import BFLOAT16

    rng = np.random.default_rng(0)
    want = BFLOAT16 if dtype == "bfloat16" else np.dtype(dtype)
    for shape in [(1, 1), (7, 5), (17, 300), (300, 17), (1537, 771), (3001, 1400)]:  # the last is > 8 MiB in float64
        source = (rng.normal(size=shape) * 50).astype(np.float32).astype(want)
        for threads in (1, 3):
            monkeypatch.setattr(schema, "_copy_threads", lambda n=threads: n)
            monkeypatch.setattr(schema, "_PARALLEL_BYTES", 1 if threads > 1 else 8 << 20)
            out = schema.contiguous(source.T)
            assert out.flags.c_contiguous and out.dtype == want and out.shape == shape[::-1]
            assert out.tobytes() == np.ascontiguousarray(source.T).tobytes(), (shape, threads)
    contiguous = rng.normal(size=(4, 3))
    assert schema.contiguous(contiguous) is contiguous  # already C order: no copy
    strided = rng.normal(size=(4, 6))[:, ::2]  # neither C nor a transposed C array
    assert schema.contiguous(strided).flags.c_contiguous and (schema.contiguous(strided) == strided).all()
    conv = rng.normal(size=(8, 4, 3)).transpose(2, 1, 0)
    assert schema.contiguous(conv).flags.c_contiguous and (schema.contiguous(conv) == conv).all()


def test_load_report_lists_missing_unexpected_mismatched():
    config = DebertaV2Config.from_pretrained(load_case("v3", "masked-lm").directory)
    shapes = dict(schema.expected_shapes(config, "masked-lm"))
    del shapes["deberta.encoder.layer.0.output.dense.bias"]
    shapes["deberta.encoder.rel_embeddings.weight"] = (64, 32)
    shapes["some.other.weight"] = (3,)
    shapes["mask_predictions.dense.weight"] = (32, 32)
    _, report = schema.match_checkpoint(config, "masked-lm", shapes)
    assert report.missing == ["deberta.encoder.layer.0.output.dense.bias"]
    assert report.unexpected == ["some.other.weight"]
    assert report.ignored == ["mask_predictions.dense.weight"]
    assert report.mismatched == [("deberta.encoder.rel_embeddings.weight", (64, 32), (32, 32))]
    with pytest.raises(CheckpointError, match="position_buckets=16"):
        schema.check_report(report, config, "masked-lm", "x.safetensors")


# ----------------------------------------------------------------------------------------------------------------
# Formats
def test_safetensors_reader_is_compatible_with_the_library(tmp_path):
    from safetensors.numpy import load_file, save_file

    import ml_dtypes

    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.arange(5, dtype=np.int64),
              "c": np.ones((2, 2), dtype=np.float16)}
    save_file(arrays, str(tmp_path / "lib.safetensors"))
    with open_weights(str(tmp_path / "lib.safetensors")) as reader:
        for k, v in arrays.items():
            np.testing.assert_array_equal(reader.read(k), v)
    arrays["d"] = np.array([1.5, -2.0], dtype=ml_dtypes.bfloat16)
    write_arrays(str(tmp_path / "ours.safetensors"), arrays)
    loaded = load_file(str(tmp_path / "ours.safetensors"))
    for k in ("a", "b", "c"):
        np.testing.assert_array_equal(loaded[k], arrays[k])
    with open_weights(str(tmp_path / "ours.safetensors")) as reader:
        assert reader.infos()["d"] == TensorInfo((2,), np.dtype(ml_dtypes.bfloat16))
        assert reader.read("d").astype(np.float32).tolist() == [1.5, -2.0]
        assert reader.metadata() == {"format": "pt"}


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="unknown weights format"):
        detect_format("weights.onnx")
    with pytest.raises(CheckpointError, match="weights file not found"):
        open_weights(str(tmp_path / "model.safetensors"))


def test_failed_write_leaves_no_file(tmp_path):
    from deberta_xf.formats.safetensors_io import write

    target = tmp_path / "model.safetensors"

    def explode(name):
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write(str(target), {"a": TensorInfo((2,), np.dtype(np.float32))}, explode)
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------------------------------------------
# Public namespace and factory
def test_import_deberta_xf_imports_no_framework():
    import subprocess
    import sys

    code = ("import sys, deberta_xf; deberta_xf.DebertaV2Config; deberta_xf.create_model; "
            "print(sorted(m for m in ('torch', 'tensorflow', 'jax', 'flax', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_factory_errors():
    with pytest.raises(ValueError, match="unknown framework 'mxnet'"):
        deberta_xf.create_model("mxnet", "base", config=DebertaV2Config())
    with pytest.raises(ValueError, match="unknown task 'summarization'"):
        deberta_xf.create_model("torch", "summarization", config=DebertaV2Config())
    with pytest.raises(ValueError, match="needs a checkpoint or a config"):
        deberta_xf.create_model("torch", "base")
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        deberta_xf.Nope  # noqa: B018


def test_factory_names_the_extra_for_a_missing_framework():
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None\n"
            "import deberta_xf\n"
            "try:\n    deberta_xf.create_model('torch', 'base', config={'hidden_size': 8, 'num_attention_heads': 2})\n"
            "except ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'deberta-xf[torch]'" in out.stdout


# ----------------------------------------------------------------------------------------------------------------
# Task inference
def _case_shapes_and_config(variant: str, task: str) -> tuple[dict, dict]:
    directory = load_case(variant, task).directory
    with open_weights(os.path.join(directory, "model.safetensors")) as reader:
        shapes = reader.shapes()
    with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
        return shapes, json.load(f)


def test_infer_task_without_architectures_tells_multiple_choice_from_the_one_row_classifier():
    from deberta_xf.tasks import infer_task

    shapes, config = _case_shapes_and_config("v3", "multiple-choice")
    assert shapes["classifier.weight"] == (1, 32)
    del config["architectures"]
    cfg = DebertaV2Config.from_dict(config)
    assert cfg.num_labels == 2
    task, reason = infer_task(shapes, cfg)
    assert task == "multiple-choice", reason
    assert "one-row classifier" in reason and "num_labels=2" in reason
    # the same answer from the config.json dict itself (num_labels given, or derived from id2label)
    assert infer_task(shapes, config)[0] == "multiple-choice"
    labels_only = {k: v for k, v in config.items() if k != "num_labels"}
    assert infer_task(shapes, {**labels_only, "id2label": {"0": "a", "1": "b", "2": "c"}})[0] == "multiple-choice"
    assert infer_task(shapes, {**labels_only, "id2label": {"0": "score"}})[0] == "sequence-classification"
    # the same head with num_labels=1 is a one-label (regression) sequence classifier
    assert infer_task(shapes, DebertaV2Config.from_dict({**config, "num_labels": 1}))[0] == "sequence-classification"
    seq_shapes, seq_config = _case_shapes_and_config("v3", "sequence-classification")
    del seq_config["architectures"]
    assert infer_task(seq_shapes, DebertaV2Config.from_dict(seq_config))[0] == "sequence-classification"


def test_infer_task_follows_architectures():
    from deberta_xf.tasks import infer_task

    shapes, config = _case_shapes_and_config("v3", "multiple-choice")
    cfg = DebertaV2Config.from_dict(config)
    assert cfg.architectures == ["DebertaV2ForMultipleChoice"]
    task, reason = infer_task(shapes, cfg)
    assert task == "multiple-choice" and "architectures" in reason
    # within the pooled family "architectures" decides, whatever the classifier's row count; any framework's prefix
    assert infer_task(shapes, {**config, "architectures": ["DebertaV2ForSequenceClassification"]})[0] == \
        "sequence-classification"
    assert infer_task(shapes, {**config, "architectures": ["TFDebertaV2ForMultipleChoice"]})[0] == "multiple-choice"
    for task in TASKS:
        shapes, config = _case_shapes_and_config("v2-conv", task)
        assert infer_task(shapes, DebertaV2Config.from_dict(config))[0] == task


def test_infer_task_refuses_architectures_that_contradict_the_weights():
    from deberta_xf.errors import DebertaXfError
    from deberta_xf.tasks import infer_task

    shapes, config = _case_shapes_and_config("v3", "question-answering")
    assert "qa_outputs.weight" in shapes
    config["architectures"] = ["DebertaV2ForMaskedLM"]
    with pytest.raises(DebertaXfError, match=r"DebertaV2ForMaskedLM \(masked-lm\).*question-answering"):
        infer_task(shapes, DebertaV2Config.from_dict(config))
    with pytest.raises(DebertaXfError, match="DebertaV2ForMaskedLM"):
        infer_task(shapes, config)


# ----------------------------------------------------------------------------------------------------------------
# Atomic writes
@pytest.fixture
def umask():
    """Set the process umask for a test; the original one is restored afterwards."""
    original = os.umask(0o022)
    os.umask(original)
    yield os.umask
    os.umask(original)


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_atomic_writes_get_the_mode_of_a_new_file(tmp_path, umask, mask):
    from deberta_xf.fileio import atomic_path, atomic_write_text

    umask(mask)
    atomic_write_text(tmp_path / "new.txt", "text")
    with atomic_path(tmp_path / "sub" / "via_path.bin") as tmp:
        with open(tmp, "wb") as f:
            f.write(b"\x00\x01")
    (tmp_path / "existing.txt").write_text("old")
    os.chmod(tmp_path / "existing.txt", 0o600)
    atomic_write_text(tmp_path / "existing.txt", "new")  # a replaced file gets a new file's mode too
    for path in (tmp_path / "new.txt", tmp_path / "sub" / "via_path.bin", tmp_path / "existing.txt"):
        assert os.stat(path).st_mode & 0o777 == 0o666 & ~mask, path
    assert (tmp_path / "new.txt").read_text() == "text" and (tmp_path / "existing.txt").read_text() == "new"
    assert (tmp_path / "sub" / "via_path.bin").read_bytes() == b"\x00\x01"
    assert sorted(os.listdir(tmp_path)) == ["existing.txt", "new.txt", "sub"]
    assert os.listdir(tmp_path / "sub") == ["via_path.bin"]


def test_atomic_path_failure_leaves_no_temporary_and_the_target_untouched(tmp_path):
    from deberta_xf.fileio import atomic_path

    target = tmp_path / "model.safetensors"
    target.write_bytes(b"original")
    before = os.stat(target)
    seen = []
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            seen.append(tmp)
            with open(tmp, "wb") as f:
                f.write(b"partial")
            raise RuntimeError("boom")
    assert os.path.dirname(seen[0]) == str(tmp_path) and not os.path.exists(seen[0])
    assert os.listdir(tmp_path) == ["model.safetensors"]
    assert target.read_bytes() == b"original"
    after = os.stat(target)
    assert (after.st_ino, after.st_mtime_ns, after.st_mode) == (before.st_ino, before.st_mtime_ns, before.st_mode)
    # a new target: nothing at all is left
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "new.json") as tmp:
            open(tmp, "w").write("{")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == ["model.safetensors"]
