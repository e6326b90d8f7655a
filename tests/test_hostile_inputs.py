"""Hostile inputs (issue 12): each case the campaign found, as a regression test.

A reader either returns exactly the stored numbers or refuses with a DebertaXfError naming the file and the
tensor or key; configs and recordings likewise. (The fuzzing is in test_fuzz_readers.py.)
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import zipfile

import numpy as np
import pytest

from deberta_xf.errors import CheckpointError, ConfigError, DebertaXfError
from deberta_xf.formats import open_weights, write_arrays

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "reference", "v3", "base")
WEIGHT = "encoder.layer.0.attention.self.query_proj.weight"


@pytest.fixture(scope="module")
def arrays():
    with open_weights(os.path.join(FIXTURE, "model.safetensors")) as reader:
        return reader.read_all()


def read_all(path) -> dict[str, np.ndarray]:
    with open_weights(str(path)) as reader:
        return {name: reader.read(name) for name in reader.keys()}


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert np.array_equal(got[name], want[name]), name


def refused(path, *fragments: str) -> str:
    with pytest.raises(DebertaXfError) as info:
        read_all(path)
    message = str(info.value)
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ---------------------------------------------------------------------------------------------------------------
# safetensors
def write_safetensors(path, header: dict | bytes, data: bytes, length: int | None = None) -> None:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw) if length is None else length) + raw + data)


def small_header(**overrides) -> tuple[dict, bytes]:
    a = np.arange(6, dtype=np.float32)
    header = {"a.weight": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
              "b.weight": {"dtype": "F32", "shape": [2], "data_offsets": [24, 32]}}
    for key, value in overrides.items():
        header[key] = value
    return header, a.tobytes() + np.ones(2, np.float32).tobytes()


def test_small_safetensors_reads(tmp_path):
    header, data = small_header()
    write_safetensors(tmp_path / "m.safetensors", header, data)
    got = read_all(tmp_path / "m.safetensors")
    assert np.array_equal(got["a.weight"], np.arange(6, dtype=np.float32).reshape(2, 3))


def test_safetensors_duplicate_key_refused(tmp_path):
    raw = (b'{"a.weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
           b'"a.weight": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}')
    write_safetensors(tmp_path / "m.safetensors", raw, bytes(16))
    refused(tmp_path / "m.safetensors", "'a.weight'", "twice")


@pytest.mark.parametrize(("entry", "fragment"), [
    ({"dtype": "F32", "shape": [2], "data_offsets": [16, 24]}, "overlaps"),           # overlaps a.weight
    ({"dtype": "F32", "shape": [2], "data_offsets": [26, 34]}, "multiple"),          # misaligned
    ({"dtype": "F32", "shape": [2], "data_offsets": [24.0, 32]}, "data_offsets"),   # float offsets
    ({"dtype": "F32", "shape": [2], "data_offsets": [24]}, "data_offsets"),
    ({"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}, "data_offsets"),
    ({"dtype": "F32", "shape": [2.0], "data_offsets": [24, 32]}, "shape"),          # float dim
    ({"dtype": "F32", "shape": [1.5], "data_offsets": [24, 32]}, "shape"),          # fractional dim
    ({"dtype": "F32", "shape": [-2], "data_offsets": [24, 32]}, "shape"),
    ({"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [24, 32]}, "elements"),  # overflows int64
    ({"dtype": "F32", "shape": [4], "data_offsets": [24, 40]}, "truncated"),       # out of the file
    ({"dtype": "F32", "shape": [2], "data_offsets": [24, 32], "extra": 1}, "expected"),
    ({"dtype": "X9", "shape": [2], "data_offsets": [24, 32]}, "unknown safetensors dtype"),
    ({"dtype": "I32", "shape": [2], "data_offsets": [24, 32]}, "int32"),            # wrong dtype, named
    ({"dtype": "BOOL", "shape": [8], "data_offsets": [24, 32]}, "bool"),
], ids=["overlap", "misaligned", "float-offsets", "one-offset", "negative-offset", "float-dim", "fractional-dim",
        "negative-dim", "overflow", "out-of-file", "extra-field", "unknown-dtype", "int32", "bool"])
def test_safetensors_bad_entry_refused(tmp_path, entry, fragment):
    header, data = small_header(**{"b.weight": entry})
    write_safetensors(tmp_path / "m.safetensors", header, data)
    message = refused(tmp_path / "m.safetensors", fragment)
    if fragment in ("int32", "bool", "overlaps", "multiple", "shape", "elements"):
        assert "b.weight" in message


@pytest.mark.parametrize("delta", [-1, 1, -8, 8, 4096])
def test_safetensors_wrong_header_length_refused(tmp_path, delta):
    header, data = small_header()
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    write_safetensors(tmp_path / "m.safetensors", raw, data, length=len(raw) + delta)
    refused(tmp_path / "m.safetensors")


def test_safetensors_stray_bytes_after_the_data_refused(tmp_path):
    header, data = small_header()
    write_safetensors(tmp_path / "m.safetensors", header, data + b"\0" * 8)
    refused(tmp_path / "m.safetensors", "cover")


@pytest.mark.parametrize("raw", [b"[" * 100000 + b"]" * 100000, b'{"a": ' * 50000 + b"1" + b"}" * 50000,
                                 b'{"a.weight": NaN}', b'{"a.weight": 1' + b"0" * 5000 + b"}", b"\xff\xfe{}"])
def test_safetensors_hostile_json_refused(tmp_path, raw):
    write_safetensors(tmp_path / "m.safetensors", raw, b"")
    refused(tmp_path / "m.safetensors", "safetensors header")


def test_safetensors_int32_weights_refused_with_the_name(tmp_path, arrays):
    bad = dict(arrays)
    bad[WEIGHT] = bad[WEIGHT].astype(np.int32)
    write_arrays(str(tmp_path / "model.safetensors"), bad, format="safetensors")
    refused(tmp_path / "model.safetensors", WEIGHT, "int32")


def test_load_checkpoint_refuses_wrong_dtype_weights(tmp_path, arrays):
    from deberta_xf.loading import load_checkpoint

    bad = dict(arrays)
    bad[WEIGHT] = bad[WEIGHT].astype(np.complex64)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    shutil.copy(os.path.join(FIXTURE, "config.json"), ckpt / "config.json")
    torch = pytest.importorskip("torch")  # our writer refuses complex tensors; torch.save stores them
    torch.save({k: torch.from_numpy(v) for k, v in bad.items()}, ckpt / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=WEIGHT.replace(".", r"\.") + ".*complex64"):
        load_checkpoint(str(ckpt), "base", "torch")


# ---------------------------------------------------------------------------------------------------------------
# sharded index
def make_sharded(tmp_path, arrays, weight_map) -> str:
    write_arrays(str(tmp_path / "model-00001-of-00001.safetensors"), arrays, format="safetensors")
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}) if not isinstance(weight_map, bytes)
                     else weight_map.decode())
    return str(index)


def test_sharded_index_reads(tmp_path, arrays):
    index = make_sharded(tmp_path, arrays, {k: "model-00001-of-00001.safetensors" for k in arrays})
    assert_same(read_all(index), arrays)


@pytest.mark.parametrize(("weight_map", "fragment"), [
    (["a", "b"], "weight_map"),
    ({WEIGHT: 5}, "weight_map"),
    ({WEIGHT: "../model-00001-of-00001.safetensors"}, "not a plain file name"),
    ({WEIGHT: "/etc/passwd"}, "not a plain file name"),
    ({WEIGHT: "sub/model.safetensors"}, "not a plain file name"),
    ({WEIGHT: ".."}, "not a plain file name"),
    ({WEIGHT: "missing.safetensors"}, "not found"),
    (b'{"weight_map": ' + b"[" * 100000 + b"]" * 100000 + b"}", "nested too deeply"),
    (b'{"weight_map": {}, "weight_map": {}}', "twice"),
], ids=["list", "int-shard", "dotdot", "absolute", "separator", "parent", "missing", "deep", "duplicate"])
def test_sharded_index_bad_refused(tmp_path, arrays, weight_map, fragment):
    index = make_sharded(tmp_path, arrays, weight_map)
    refused(index, fragment)


# ---------------------------------------------------------------------------------------------------------------
# flax_model.msgpack
def _rewrite_msgpack(src: str, dst: str, transform) -> None:
    """Re-pack a flax msgpack file, passing every array leaf (path, array) through ``transform`` -> (dtype name,
    raw bytes, shape)."""
    msgpack = pytest.importorskip("msgpack")

    def decode(code, payload):
        shape, name, raw = msgpack.unpackb(payload)
        return ("array", np.frombuffer(raw, dtype=name).reshape(shape))

    tree = msgpack.unpackb(open(src, "rb").read(), ext_hook=decode, strict_map_key=False)

    def encode(node, path=""):
        if isinstance(node, dict):
            return {k: encode(v, f"{path}.{k}" if path else k) for k, v in node.items()}
        name, raw, shape = transform(path, node[1])
        return msgpack.ExtType(1, msgpack.packb([list(shape), name, raw]))

    with open(dst, "wb") as f:
        f.write(msgpack.packb(encode(tree)))


@pytest.fixture
def msgpack_file(tmp_path, arrays):
    pytest.importorskip("msgpack")
    path = str(tmp_path / "orig" / "flax_model.msgpack")
    os.makedirs(os.path.dirname(path))
    write_arrays(path, arrays, format="msgpack")
    return path


def test_msgpack_big_endian_arrays_read_as_stored(tmp_path, arrays, msgpack_file):
    out = str(tmp_path / "flax_model.msgpack")
    _rewrite_msgpack(msgpack_file, out, lambda p, a: (">f4", a.astype(">f4").tobytes(), a.shape))
    got = read_all(out)
    assert_same(got, arrays)  # the same numbers, as little-endian float32
    flax = pytest.importorskip("flax.serialization")
    restored = flax.msgpack_restore(open(out, "rb").read())
    assert restored["embeddings"]["LayerNorm"]["scale"].dtype == np.dtype(">f4")


@pytest.mark.parametrize("dtype", ["datetime64", "<M8", "datetime64[ns]", "O", "V4", "<U1", "S4", "c8", "complex64",
                                   "float32,float32", "(2,)f4"])
def test_msgpack_unsupported_dtype_refused(tmp_path, msgpack_file, dtype):
    out = str(tmp_path / "flax_model.msgpack")
    target = "embeddings.LayerNorm.scale"

    def transform(path, a):
        if path == target:
            return dtype, a.tobytes(), a.shape
        return a.dtype.name, a.tobytes(), a.shape

    _rewrite_msgpack(msgpack_file, out, transform)
    refused(out)


@pytest.mark.parametrize("dtype", ["int32", "bool", "uint8"])
def test_msgpack_wrong_dtype_refused_with_the_name(tmp_path, msgpack_file, dtype):
    out = str(tmp_path / "flax_model.msgpack")

    def transform(path, a):
        if path == "embeddings.LayerNorm.scale":
            b = a.astype(dtype)
            return b.dtype.name, b.tobytes(), b.shape
        return a.dtype.name, a.tobytes(), a.shape

    _rewrite_msgpack(msgpack_file, out, transform)
    refused(out, "embeddings.LayerNorm.weight", dtype)


# ---------------------------------------------------------------------------------------------------------------
# pytorch_model.bin
def test_deflated_pytorch_model_bin_reads_correctly(tmp_path, arrays):
    torch = pytest.importorskip("torch")
    src = os.path.join(FIXTURE, "pytorch_model.bin")
    dst = str(tmp_path / "pytorch_model.bin")
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename), compress_type=zipfile.ZIP_DEFLATED)
    reference = torch.load(dst, weights_only=True)  # plain torch.load reads it correctly
    expected = read_all(src)
    assert all(np.array_equal(reference[k].numpy(), expected[k]) for k in expected)
    assert_same(read_all(dst), expected)


@pytest.mark.parametrize("make", ["complex64", "int32", "bool", "complex32", "int-key", "not-tensor"])
def test_pytorch_model_bin_bad_entries_refused(tmp_path, make):
    torch = pytest.importorskip("torch")
    good = torch.ones(2, 3)
    state = {"a.weight": good}
    if make == "int-key":
        state = {5: good}
    elif make == "not-tensor":
        state = {"a.weight": [1, 2]}
    elif make == "complex32":
        state = {"a.weight": torch.ones(2, dtype=torch.complex32)}
    else:
        state = {"a.weight": good.to(getattr(torch, make))}
    path = tmp_path / "pytorch_model.bin"
    torch.save(state, path)
    message = refused(path)
    if make not in ("int-key", "not-tensor"):
        assert "a.weight" in message and make in message


# ---------------------------------------------------------------------------------------------------------------
# tf_model.h5 and model.weights.h5
H5_KERAS_DATASET = "embeddings/LayerNorm/vars/0"


@pytest.fixture
def keras_file(tmp_path, arrays):
    pytest.importorskip("h5py")
    path = str(tmp_path / "model.weights.h5")
    write_arrays(path, arrays, format="keras_h5")
    return path


@pytest.fixture
def tf_file(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = str(tmp_path / "tf_model.h5")
    shutil.copy(os.path.join(FIXTURE, "tf_model.h5"), path)
    with h5py.File(path, "r") as f:
        found = []
        f.visititems(lambda n, o: found.append(n) if isinstance(o, h5py.Dataset) and "LayerNorm/gamma" in n and
                     "embeddings" in n else None)
    return path, found[0]


def _replace(path: str, location: str, make) -> None:
    import h5py

    with h5py.File(path, "r+") as f:
        old = f[location][()]
        del f[location]
        make(f, location, old)


@pytest.mark.parametrize("which", ["keras", "tf"])
@pytest.mark.parametrize(("make", "fragment"), [
    (lambda f, loc, old: f.create_dataset(loc, data=np.array([b"1.5"] * old.size)), "data"),
    (lambda f, loc, old: f.create_dataset(loc, data=np.array(["1.5"] * old.size, dtype=object),
                                          dtype=__import__("h5py").string_dtype()), "data"),
    (lambda f, loc, old: f.create_dataset(loc, data=np.zeros(old.shape, dtype=[("a", "<f4"), ("b", "<i4")])),
     "data"),
    (lambda f, loc, old: f.create_dataset(loc, data=old.astype(np.int32)), "int32"),
    (lambda f, loc, old: f.create_dataset(loc, data=old.astype(bool)), "bool"),
    (lambda f, loc, old: f.create_dataset(loc, data=old.astype(np.complex64)), "complex"),
    (lambda f, loc, old: f.create_dataset(loc, data=old).attrs.__setitem__("dtype", "bfloat16"), "bfloat16"),
    (lambda f, loc, old: f.create_dataset(loc, data=old).attrs.__setitem__("dtype", "int8"), "dtype attribute"),
    (lambda f, loc, old: f.__setitem__(loc, __import__("h5py").SoftLink("/" + loc.split("/")[0])), "soft link"),
    (lambda f, loc, old: f.__setitem__(loc, __import__("h5py").SoftLink("/nowhere")), "dangling"),
    (lambda f, loc, old: f.__setitem__(loc, __import__("h5py").SoftLink("/" + loc)), "cyclic"),
    (lambda f, loc, old: f.__setitem__(loc, __import__("h5py").ExternalLink("missing.h5", "/x")), "external link"),
], ids=["bytes", "strings", "compound", "int32", "bool", "complex", "bf16-attr-on-f32", "odd-dtype-attr", "soft-to-group",
        "dangling", "cyclic", "external-missing"])
def test_h5_hostile_datasets_refused(which, make, fragment, keras_file, tf_file):
    path, location = (keras_file, H5_KERAS_DATASET) if which == "keras" else tf_file
    _replace(path, location, make)
    refused(path, fragment)


@pytest.mark.parametrize("which", ["keras", "tf"])
def test_h5_external_link_to_a_real_file_refused_not_followed(tmp_path, which, keras_file, tf_file, arrays):
    import h5py

    path, location = (keras_file, H5_KERAS_DATASET) if which == "keras" else tf_file
    other = str(tmp_path / "elsewhere.h5")
    with h5py.File(path, "r") as f, h5py.File(other, "w") as g:
        g.create_dataset("secret", data=f[location][()] + 1)  # a valid dataset of the right shape and dtype
    _replace(path, location, lambda f, loc, old: f.__setitem__(loc, h5py.ExternalLink(other, "/secret")))
    message = refused(path, "external link")
    assert "elsewhere.h5" in message


def test_h5_soft_link_to_a_dataset_reads(keras_file, arrays):
    import h5py

    with h5py.File(keras_file, "r+") as f:
        data = f[H5_KERAS_DATASET][()]
        del f[H5_KERAS_DATASET]
        f.create_dataset("stash/x", data=data)
        f[H5_KERAS_DATASET] = h5py.SoftLink("/stash/x")
    got = read_all(keras_file)
    assert np.array_equal(got["embeddings.LayerNorm.weight"], arrays["embeddings.LayerNorm.weight"])


def test_h5_big_endian_dataset_reads_as_stored(keras_file, arrays):
    _replace(keras_file, H5_KERAS_DATASET, lambda f, loc, old: f.create_dataset(loc, data=old.astype(">f4")))
    got = read_all(keras_file)
    assert got["embeddings.LayerNorm.weight"].dtype == np.float32
    assert np.array_equal(got["embeddings.LayerNorm.weight"], arrays["embeddings.LayerNorm.weight"])


def test_h5_flipped_bytes_are_our_error(tmp_path, tf_file):
    path, _ = tf_file
    data = bytearray(open(path, "rb").read())
    for pos in range(0, 4096, 97):
        bad = bytearray(data)
        bad[pos] ^= 0xFF
        open(path, "wb").write(bytes(bad))
        try:
            read_all(path)
        except DebertaXfError as err:
            assert path in str(err)


# ---------------------------------------------------------------------------------------------------------------
# config.json
def write_config(tmp_path, text: str) -> str:
    path = tmp_path / "config.json"
    path.write_text(text)
    return str(path)


def base_config() -> dict:
    with open(os.path.join(FIXTURE, "config.json")) as f:
        return json.load(f)


@pytest.mark.parametrize(("field", "value", "fragment"), [
    ("id2label", 5, "id2label"), ("id2label", ["a", "b"], "id2label"), ("id2label", {"x": "a"}, "id2label"),
    ("label2id", 5, "label2id"), ("architectures", 5, "architectures"), ("architectures", [1], "architectures"),
    ("initializer_range", "NaN", "initializer_range"), ("initializer_range", "Infinity", "initializer_range"),
    ("layer_norm_eps", "NaN", "layer_norm_eps"), ("hidden_dropout_prob", "NaN", "hidden_dropout_prob"),
    ("vocab_size", "1" + "0" * 5000, "vocab_size"), ("vocab_size", 10**12, "vocab_size"),
    ("num_hidden_layers", 1000000, "num_hidden_layers"), ("num_labels", 10**12, "num_labels"),
    ("pos_att_type", 5, "pos_att_type"), ("hidden_act", 5, "hidden_act"), ("norm_rel_ebd", 5, "norm_rel_ebd"),
    ("hidden_size", "768", "hidden_size"), ("torch_dtype", 5, "torch_dtype"),
    ("intermediate_size", 2**30, "parameters"),
])
def test_config_bad_field_is_a_config_error_naming_it(tmp_path, field, value, fragment):
    config = base_config()
    config[field] = "@@VALUE@@"
    text = json.dumps(config).replace('"@@VALUE@@"', value if isinstance(value, str) and field != "hidden_size"
                                      else json.dumps(value))
    path = write_config(tmp_path, text)
    from deberta_xf.configuration import DebertaV2Config

    with pytest.raises(ConfigError) as info:  # at reading (what the reference refuses at construction, values
        # that cannot be held) or at validate(), which every model build, convert and parity call up front
        DebertaV2Config.from_json_file(path).validate()
    assert path in str(info.value) and fragment in str(info.value)


@pytest.mark.parametrize("text", ["[" * 100000 + "]" * 100000, '{"a": ' * 100000 + "1" + "}" * 100000, "\xff",
                                  '{"vocab_size": 1' + "0" * 5000 + "}", "", "[]"])
def test_config_hostile_json_is_a_config_error(tmp_path, text):
    from deberta_xf.configuration import DebertaV2Config

    path = tmp_path / "config.json"
    path.write_bytes(text.encode("latin-1") if text == "\xff" else text.encode())
    with pytest.raises(ConfigError, match=str(path)):
        DebertaV2Config.from_json_file(str(path))


@pytest.mark.parametrize("kwargs", [dict(id2label={"0": "neg", "1": "pos"}), dict(label2id={"neg": "0", "pos": "1"}),
                                    dict(id2label={"0": "a"}, num_labels=1), dict(architectures=["DebertaV2Model"])])
def test_config_accepts_what_the_reference_accepts(kwargs):
    from deberta_xf.configuration import DebertaV2Config

    config = DebertaV2Config(**{**base_config(), **kwargs})
    assert DebertaV2Config.from_dict(config.to_dict()) == config


# ---------------------------------------------------------------------------------------------------------------
# parity recordings (--compare-to)
def good_recording(path: str, **meta_overrides) -> None:
    from deberta_xf.parity.recording import save_recording

    meta = {"task": "base", "dtype": "float32", "config": {"hidden_size": 32},
            "frameworks": {"torch": {"device": "cpu", "device_name": "cpu", "versions": {"torch": "2"},
                                     "weights_file": "model.safetensors"}}}
    meta.update(meta_overrides)
    save_recording(path, meta, {"input_ids": np.ones((1, 4), np.int64), "attention_mask": np.ones((1, 4), np.int64)},
                   {"torch": {"last_hidden_state": np.zeros((1, 4, 8), np.float32)}})


def load(path):
    from deberta_xf.parity.recording import load_recording

    return load_recording(path)


def test_recording_round_trip(tmp_path):
    path = str(tmp_path / "rec.npz")
    good_recording(path)
    rec = load(path)
    assert rec.task == "base" and rec.frameworks[0].outputs["last_hidden_state"].shape == (1, 4, 8)


def _npz(path, members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> None:
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in members.items():
            z.writestr(name, data)


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


@pytest.mark.parametrize(("change", "fragment"), [
    (dict(frameworks=[]), "frameworks"), (dict(frameworks={"torch": 5}), "frameworks.torch"),
    (dict(task=5), "task"), (dict(config=[1]), "config"), (dict(inputs=[1]), "inputs"),
    (dict(frameworks={"torch": {"device": "cpu", "device_name": "cpu", "versions": "x", "weights_file": "w"}}),
     "versions"),
    (dict(frameworks={}), "empty"),
])
def test_recording_bad_metadata_refused(tmp_path, change, fragment):
    path = str(tmp_path / "rec.npz")
    good_recording(path, **change)
    with pytest.raises(DebertaXfError) as info:
        load(path)
    assert path in str(info.value) and fragment in str(info.value)


@pytest.mark.parametrize("members", [
    {},
    {"metadata.npy": _npy(np.asarray("[" * 100000 + "]" * 100000))},
    {"metadata.npy": _npy(np.array([1, 2]))},
    {"metadata.npy": _npy(np.array([{"a": 1}], dtype=object))},        # a pickle: never loaded
    {"metadata.npy": b"not an npy file"},
    {"notnpy.txt": b"x"},
], ids=["empty", "deep", "list-metadata", "pickle", "garbage", "not-npy"])
def test_recording_hostile_members_refused(tmp_path, members):
    path = str(tmp_path / "rec.npz")
    _npz(path, members)
    with pytest.raises(DebertaXfError, match="rec.npz"):
        load(path)


def test_recording_unknown_dtype_refused(tmp_path):
    path = str(tmp_path / "rec.npz")
    good_recording(path)
    with zipfile.ZipFile(path) as z:
        members = {i.filename: z.read(i.filename) for i in z.infolist()}
    members["outputs.torch.last_hidden_state.npy"] = _npy(np.zeros(3, dtype="datetime64[ns]"))
    _npz(path, members)
    with pytest.raises(DebertaXfError, match="outputs.torch.last_hidden_state.*datetime64"):
        load(path)


def test_recording_zip_bomb_refused_without_inflating(tmp_path, monkeypatch):
    from deberta_xf.parity import recording

    monkeypatch.setattr(recording, "MAX_RECORDING_BYTES", 2**20)  # the same check as at 4 GiB, on a small file
    path = str(tmp_path / "rec.npz")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("outputs.torch.x.npy", bytes(8 * 2**20))  # 8 MiB of zeros, 8 KB on disk
    assert os.path.getsize(path) < 2**16
    with pytest.raises(DebertaXfError, match="inflate"):
        load(path)


def test_tf_h5_unlisted_dataset_is_reported_not_ignored(tf_file):
    import h5py

    path, _ = tf_file
    with h5py.File(path, "r+") as f:
        f.create_dataset("stray/extra", data=np.ones(3, np.float32))
    with open_weights(path) as reader:
        assert "stray/extra" in reader.keys()
    from deberta_xf import schema
    from deberta_xf.configuration import DebertaV2Config

    config = DebertaV2Config.from_json_file(os.path.join(FIXTURE, "config.json"))
    with open_weights(path) as reader:
        _, report = schema.match_checkpoint(config, "base", reader.shapes())
    assert "stray/extra" in report.unexpected


# ---------------------------------------------------------------------------------------------------------------
# Command-line paths: an empty one is a usage error naming the option, never a silent no-op
TINY = os.path.join(os.path.dirname(__file__), "..", "fixtures", "tiny-deberta-v3")


def run_cli(*argv: str) -> tuple[int, str]:
    import contextlib

    from deberta_xf.cli import main

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, err.getvalue()


@pytest.mark.parametrize("option", ["--json", "--markdown", "--junit", "--plot", "--save-outputs", "--compare-to",
                                    "--texts", "--labels"])
@pytest.mark.parametrize("empty", ["", " "])
def test_parity_empty_path_is_a_usage_error(tmp_path, monkeypatch, option, empty):
    monkeypatch.chdir(tmp_path)
    code, err = run_cli("parity", TINY, "--frameworks", "torch,flax", option, empty)
    assert code == 2 and f"error: {option} {empty!r}: empty file name" in err, err
    assert os.listdir(tmp_path) == []


def test_parity_empty_checkpoint_is_a_usage_error():
    code, err = run_cli("parity", "")
    assert code == 2 and "error: CHECKPOINT '': empty file name" in err, err


@pytest.mark.parametrize(("argv", "fragment"), [
    (("", "OUT", "--to", "torch"), "SRC '': empty path"),
    ((TINY, "", "--to", "torch"), "DST '': empty path"),
    ((TINY, "OUT", "--to", "torch", "--config", ""), "--config '': empty path"),
])
def test_convert_empty_path_is_a_usage_error(tmp_path, monkeypatch, argv, fragment):
    monkeypatch.chdir(tmp_path)
    code, err = run_cli("convert", *argv)
    assert code == 2 and fragment in err, err
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------------------------
# --texts: bounded (docs/limits.md)
def test_texts_from_a_device_is_refused_at_once():
    import time

    start = time.perf_counter()
    code, err = run_cli("parity", TINY, "--frameworks", "torch,flax", "--texts", "/dev/zero")
    assert code == 2 and "error: --texts /dev/zero: is a device, expected a text file" in err, err
    assert time.perf_counter() - start < 2.0


def test_texts_size_and_count_limits(tmp_path):
    from deberta_xf.parity.inputs import MAX_TEXTS, MAX_TEXTS_BYTES, read_texts

    assert (MAX_TEXTS_BYTES, MAX_TEXTS) == (4 * 2**20, 1024)  # the limits docs/limits.md states
    at_limit = tmp_path / "at_limit.txt"
    at_limit.write_text("\n".join(f"text {i}" for i in range(MAX_TEXTS)))
    assert len(read_texts(str(at_limit))) == MAX_TEXTS
    too_many = tmp_path / "too_many.txt"
    too_many.write_text("\n".join(f"text {i}" for i in range(MAX_TEXTS + 1)))
    with pytest.raises(DebertaXfError, match=f"{too_many}: {MAX_TEXTS + 1} texts; at most {MAX_TEXTS}"):
        read_texts(str(too_many))
    biggest = tmp_path / "biggest.txt"
    biggest.write_bytes(b"a" * (MAX_TEXTS_BYTES - 1) + b"\n")
    assert len(read_texts(str(biggest))) == 1
    too_big = tmp_path / "too_big.txt"
    too_big.write_bytes(b"a" * MAX_TEXTS_BYTES + b"\n")
    with pytest.raises(DebertaXfError, match=f"{too_big}: more than {MAX_TEXTS_BYTES} bytes"):
        read_texts(str(too_big))
    with pytest.raises(DebertaXfError, match="is a directory"):
        read_texts(str(tmp_path))


def test_texts_from_an_endless_pipe_reads_at_most_the_limit(tmp_path):
    """A FIFO (``--texts <(yes)``) is read with the cap: the writer never ends, the reader stops past the limit."""
    import threading

    from deberta_xf.parity.inputs import MAX_TEXTS_BYTES, read_texts

    fifo = tmp_path / "texts"
    os.mkfifo(fifo)
    written = []

    def endless() -> None:
        with open(fifo, "wb") as f:
            try:
                while True:
                    f.write(b"y\n" * 65536)
                    written.append(131072)
            except BrokenPipeError:  # the reader stopped and closed its end
                pass

    writer = threading.Thread(target=endless, daemon=True)
    writer.start()
    with pytest.raises(DebertaXfError, match=f"{fifo}: more than {MAX_TEXTS_BYTES} bytes"):
        read_texts(str(fifo))
    writer.join(timeout=10)
    assert not writer.is_alive() and sum(written) < MAX_TEXTS_BYTES + 2**20  # stopped near the limit
