"""What a Hugging Face PyTorch user relies on in a model, beyond tests/test_model_api.py and tests/test_torch_model.py
(issue 11): every head saved and loaded bit-exactly (safetensors, ``pytorch_model.bin`` in both zip layouts),
deterministic eval, the reference's ``forward`` argument order, hidden-state / attention counts and shapes, the
``inputs_embeds`` path, a training step reaching every parameter (with and without gradient checkpointing, and the old
``config.gradient_checkpointing`` flag), rows of a batch equal to the rows run alone, ``resize_token_embeddings``
rounding and errors, embedding getters/setters, the three ``problem_type`` losses, the class attributes the reference's
Trainer and tests read, ``enable_input_require_grads``, and eager against sdpa on arbitrary padding masks.
"""

from __future__ import annotations

import inspect
import json
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from deberta_xf import DebertaV2Config  # noqa: E402
from deberta_xf.tasks import TASKS  # noqa: E402
from deberta_xf.torch.modeling_deberta_v2 import MODEL_CLASSES  # noqa: E402

SMALL = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24,
             max_position_embeddings=64, relative_attention=True, pos_att_type="p2c|c2p", position_buckets=4,
             max_relative_positions=16, share_att_key=True, norm_rel_ebd="layer_norm", position_biased_input=False,
             type_vocab_size=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2)
# the absolute-position layout (no relative attention, token types over 16 ids) that the reference's own tests use
ABSOLUTE = dict(SMALL, relative_attention=False, pos_att_type="None", position_biased_input=True, type_vocab_size=16)
HEAD_TASKS = [t for t in TASKS if t != "base"]
CHOICES = 3
FIRST_OUTPUT = {"base": "last_hidden_state", "question-answering": "start_logits"}
CALL_ORDER = ["input_ids", "attention_mask", "token_type_ids", "position_ids", "inputs_embeds", "output_attentions",
              "output_hidden_states", "return_dict"]  # the reference's forward order; label arguments after embeds
LABEL_ARGUMENTS = {"base": [], "question-answering": ["start_positions", "end_positions"]}


def small_config(layout: dict = SMALL, **overrides) -> DebertaV2Config:
    return DebertaV2Config(**{**layout, **overrides})


def build(task: str, layout: dict = SMALL, **overrides):
    return MODEL_CLASSES[task].from_config(small_config(layout, **overrides), seed=0)


def features(task: str, batch: int = 4, seq: int = 7, seed: int = 0, type_vocab: int = 2) -> dict:
    """Random ids, a mask with padding in the first row, token types; [batch, CHOICES, seq] for multiple choice."""
    rng = np.random.default_rng(seed)
    shape = (batch, CHOICES, seq) if task == "multiple-choice" else (batch, seq)
    mask = np.ones(shape, np.int64)
    mask[0, ..., -2:] = 0
    return {"input_ids": torch.from_numpy(rng.integers(1, SMALL["vocab_size"], shape)),
            "attention_mask": torch.from_numpy(mask),
            "token_type_ids": torch.from_numpy(rng.integers(0, type_vocab, shape))}


def labels_for(task: str, batch: int = 4, seq: int = 7, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    made = {"masked-lm": lambda: {"labels": rng.integers(0, SMALL["vocab_size"], (batch, seq))},
            "token-classification": lambda: {"labels": rng.integers(0, SMALL["num_labels"], (batch, seq))},
            "sequence-classification": lambda: {"labels": rng.integers(0, SMALL["num_labels"], batch)},
            "multiple-choice": lambda: {"labels": rng.integers(0, CHOICES, batch)},
            "question-answering": lambda: {"start_positions": rng.integers(0, seq, batch),
                                           "end_positions": rng.integers(0, seq, batch)}}[task]()
    return {k: torch.from_numpy(v) for k, v in made.items()}


def first_output(task: str, out) -> torch.Tensor:
    return out[FIRST_OUTPUT.get(task, "logits")]


# ----------------------------------------------------------------------------------------------------------------
# Saving and loading
@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
@pytest.mark.parametrize("task", list(TASKS))
def test_save_load_round_trip_is_bit_exact(task, safe, tmp_path):
    model = build(task, ABSOLUTE)
    inputs = features(task, type_vocab=16)
    model.save_pretrained(tmp_path, safe_serialization=safe)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json",
                                                          "model.safetensors" if safe else "pytorch_model.bin"]
    assert not model.can_generate()  # hence no generation_config.json beside them
    loaded = MODEL_CLASSES[task].from_pretrained(tmp_path)
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    with torch.no_grad():
        assert torch.equal(first_output(task, loaded(**inputs)), first_output(task, model(**inputs)))


@pytest.mark.parametrize("legacy_zip", [False, True], ids=["zip", "legacy-pickle"])
def test_a_torch_save_state_dict_loads(legacy_zip, tmp_path):
    """``torch.save(model.state_dict(), "pytorch_model.bin")`` beside a config, in either serialization."""
    model = build("sequence-classification")
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=not legacy_zip)
    loaded = MODEL_CLASSES["sequence-classification"].from_pretrained(tmp_path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


@pytest.mark.parametrize("task", HEAD_TASKS)
def test_base_and_head_checkpoints_exchange_the_encoder(task, tmp_path):
    head = build(task)
    head.save_pretrained(tmp_path / "head")
    base = MODEL_CLASSES["base"].from_pretrained(tmp_path / "head")
    for name, tensor in base.state_dict().items():
        assert torch.equal(tensor, head.state_dict()[f"deberta.{name}"]), name
    base.save_pretrained(tmp_path / "base")
    again = MODEL_CLASSES[task].from_pretrained(tmp_path / "base")  # the head is new, the encoder the file's
    for name, tensor in base.state_dict().items():
        assert torch.equal(again.state_dict()[f"deberta.{name}"], tensor), name


# ----------------------------------------------------------------------------------------------------------------
# Forward: determinism, signature, optional outputs, inputs_embeds, batching
@pytest.mark.parametrize("task", list(TASKS))
def test_eval_forward_is_deterministic(task):
    model = build(task, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)  # dropout off in eval
    inputs = features(task)
    with torch.no_grad():
        assert torch.equal(first_output(task, model(**inputs)), first_output(task, model(**inputs)))


@pytest.mark.parametrize("task", list(TASKS))
def test_main_input_name_and_forward_order(task):
    model_class = MODEL_CLASSES[task]
    names = list(inspect.signature(model_class.forward).parameters)[1:]
    labels = LABEL_ARGUMENTS.get(task, ["labels"])
    assert names == CALL_ORDER[:5] + labels + CALL_ORDER[5:]
    assert model_class.main_input_name == names[0] == "input_ids"


@pytest.mark.reference
@pytest.mark.parametrize("task", list(TASKS))
def test_forward_order_is_the_references(task):
    transformers = pytest.importorskip("transformers")
    ours = MODEL_CLASSES[task]
    reference = getattr(transformers, ours.__name__)
    assert list(inspect.signature(ours.forward).parameters) == list(inspect.signature(reference.forward).parameters)


@pytest.mark.parametrize("how", ["argument", "config"])
@pytest.mark.parametrize("task", list(TASKS))
def test_hidden_states_and_attentions(task, how):
    config = small_config()
    flags = {"output_hidden_states": True, "output_attentions": True}
    if how == "config":
        for key, value in flags.items():
            setattr(config, key, value)
    model = MODEL_CLASSES[task].from_config(config, seed=0)
    inputs = features(task)
    with torch.no_grad():
        plain = model(**inputs, **({"output_hidden_states": False, "output_attentions": False}
                                   if how == "config" else {}))
        out = model(**inputs, **(flags if how == "argument" else {}))
    rows = 4 * CHOICES if task == "multiple-choice" else 4
    assert len(out.hidden_states) == SMALL["num_hidden_layers"] + 1
    assert all(h.shape == (rows, 7, SMALL["hidden_size"]) for h in out.hidden_states)
    assert len(out.attentions) == SMALL["num_hidden_layers"]
    assert all(a.shape == (rows, SMALL["num_attention_heads"], 7, 7) for a in out.attentions)
    assert len(out) == len(plain) + 2 and list(out.keys())[-2:] == ["hidden_states", "attentions"]
    flat = {k: v.reshape(rows, 7) for k, v in inputs.items()}
    with torch.no_grad():
        encoded = model.base_model(**flat).last_hidden_state
    torch.testing.assert_close(out.hidden_states[-1], encoded, rtol=0, atol=0)


def test_hidden_states_and_attentions_keep_their_gradients():
    model = build("base").train()
    out = model(**features("base"), output_hidden_states=True, output_attentions=True)
    first_hidden, first_attention = out.hidden_states[0], out.attentions[0]
    first_hidden.retain_grad()
    first_attention.retain_grad()
    out.last_hidden_state[0, 1, 0].backward()  # one value: a LayerNorm row's sum has no gradient
    assert first_hidden.grad is not None and first_hidden.grad.abs().sum() > 0
    assert first_attention.grad is not None and first_attention.grad.abs().sum() > 0


@pytest.mark.parametrize("task", list(TASKS))
def test_inputs_embeds_equal_the_input_ids_path(task):
    model = build(task)
    inputs = features(task)
    ids = inputs.pop("input_ids")
    with torch.no_grad():
        by_ids = first_output(task, model(input_ids=ids, **inputs))
        by_embeds = first_output(task, model(inputs_embeds=model.get_input_embeddings()(ids), **inputs))
    torch.testing.assert_close(by_embeds, by_ids, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="both input_ids and inputs_embeds"):
        model(input_ids=ids, inputs_embeds=model.get_input_embeddings()(ids))


@pytest.mark.parametrize("layout", [SMALL, ABSOLUTE], ids=["relative", "absolute"])
@pytest.mark.parametrize("task", list(TASKS))
def test_each_row_of_a_batch_equals_the_row_alone(task, layout):
    model = build(task, layout)
    inputs = features(task, batch=5, type_vocab=layout["type_vocab_size"])
    per_row = CHOICES if task == "multiple-choice" else 1  # hidden states hold one sequence per choice
    with torch.no_grad():
        batched = model(**inputs, output_hidden_states=True)
        for row in (0, 3):  # the padded row and a full one
            alone = model(**{k: v[row:row + 1] for k, v in inputs.items()}, output_hidden_states=True)
            for key in alone.keys():
                if key == "hidden_states":
                    got = torch.stack(batched[key])[:, row * per_row:(row + 1) * per_row]
                    want = torch.stack(alone[key])
                else:
                    got, want = batched[key][row:row + 1], alone[key]
                torch.testing.assert_close(got, want, rtol=0, atol=1e-5, msg=f"{key}, row {row}")


def test_feed_forward_chunking_changes_nothing():
    config = small_config()
    plain = MODEL_CLASSES["base"].from_config(config, seed=0)
    config.chunk_size_feed_forward = 1
    chunked = MODEL_CLASSES["base"].from_config(config, seed=0)
    with torch.no_grad():
        torch.testing.assert_close(chunked(**features("base")).last_hidden_state,
                                   plain(**features("base")).last_hidden_state, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Training: every parameter gets a gradient; gradient checkpointing
@pytest.mark.parametrize("checkpointing", [None, {"use_reentrant": True}, {"use_reentrant": False}],
                         ids=["plain", "checkpointed-reentrant", "checkpointed"])
@pytest.mark.parametrize("task", HEAD_TASKS)
def test_a_training_step_reaches_every_parameter(task, checkpointing):
    model = build(task, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1).train()
    if checkpointing is not None:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = model(**features(task), **labels_for(task)).loss
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []
    optimizer.step()
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert "deberta.encoder.layer.0.attention.self.query_proj.weight" in moved
    assert "deberta.embeddings.word_embeddings.weight" in moved


@pytest.mark.parametrize("task", list(TASKS))
def test_gradient_checkpointing_switches_every_encoder(task):
    model = build(task)
    encoders = [m for m in model.modules() if hasattr(m, "gradient_checkpointing")]
    assert encoders and model.supports_gradient_checkpointing and not model.is_gradient_checkpointing
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing and all(m.gradient_checkpointing for m in encoders)
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing and not any(m.gradient_checkpointing for m in encoders)


@pytest.mark.parametrize("task", ["base", "masked-lm"])
def test_the_old_gradient_checkpointing_config_flag_is_consumed(task, tmp_path):
    config = small_config()
    config.gradient_checkpointing = True
    model = MODEL_CLASSES[task](config)
    assert model.is_gradient_checkpointing
    assert "gradient_checkpointing" not in model.config.to_dict()
    model.save_pretrained(tmp_path)
    assert "gradient_checkpointing" not in json.loads((tmp_path / "config.json").read_text())
    assert not MODEL_CLASSES[task].from_pretrained(tmp_path).is_gradient_checkpointing


def test_input_require_grads_lets_a_frozen_model_backpropagate():
    model = build("sequence-classification").train()
    model.requires_grad_(False)
    model.gradient_checkpointing_enable()
    assert not model(**features("sequence-classification")).logits.requires_grad
    model.enable_input_require_grads()
    assert model(**features("sequence-classification")).logits.requires_grad
    model.disable_input_require_grads()
    assert not model(**features("sequence-classification")).logits.requires_grad


# ----------------------------------------------------------------------------------------------------------------
# Embeddings: getters, setters, resizing
@pytest.mark.parametrize("task", list(TASKS))
def test_set_input_embeddings_is_what_forward_reads(task):
    model = build(task)
    assert isinstance(model.get_input_embeddings(), torch.nn.Embedding)
    assert (model.get_output_embeddings() is not None) == (task == "masked-lm")
    replacement = torch.nn.Embedding(SMALL["vocab_size"], SMALL["hidden_size"])
    model.set_input_embeddings(replacement)
    assert model.get_input_embeddings() is replacement
    inputs = features(task)
    ids = inputs.pop("input_ids")
    with torch.no_grad():
        torch.testing.assert_close(first_output(task, model(input_ids=ids, **inputs)),
                                   first_output(task, model(inputs_embeds=replacement(ids), **inputs)),
                                   rtol=0, atol=1e-6)


@pytest.mark.parametrize("new_size, multiple, rows", [(53, 64, 64), (128, 64, 128), (45, 1, 45), (None, 16, 48)])
def test_pad_to_multiple_of_rounds_up(new_size, multiple, rows):
    model = build("masked-lm")
    embeddings = model.resize_token_embeddings(new_size, pad_to_multiple_of=multiple)
    assert embeddings.weight.shape == (rows, SMALL["hidden_size"]) and model.config.vocab_size == rows
    assert model.get_output_embeddings().weight is embeddings.weight
    assert model(torch.tensor([[1, rows - 1]])).logits.shape == (1, 2, rows)


@pytest.mark.parametrize("multiple", [1.3, "8"])
def test_pad_to_multiple_of_must_be_an_int(multiple):
    model = build("base")
    with pytest.raises(ValueError, match=f"multiple of `{multiple}`, which is not and integer"):
        model.resize_token_embeddings(50, pad_to_multiple_of=multiple)
    assert model.config.vocab_size == SMALL["vocab_size"]  # refused before anything changed


@pytest.mark.parametrize("vocab_size", [SMALL["vocab_size"], 4], ids=["wide", "narrower-than-hidden"])
@pytest.mark.parametrize("task", list(TASKS))
def test_resizing_keeps_old_rows_and_draws_new_ones_around_their_mean(task, vocab_size):
    model = build(task, vocab_size=vocab_size, pad_token_id=min(vocab_size - 1, 0))
    old = model.get_input_embeddings().weight.detach().clone()
    grown = model.resize_token_embeddings(vocab_size + 10).weight.detach()
    assert grown.shape == (vocab_size + 10, SMALL["hidden_size"]) and torch.isfinite(grown).all()
    assert torch.equal(grown[:vocab_size], old)
    torch.testing.assert_close(grown[vocab_size:].mean(0), old.mean(0), rtol=0, atol=1e-3)
    shrunk = model.resize_token_embeddings(vocab_size - 2).weight
    assert torch.equal(shrunk.detach(), old[:vocab_size - 2]) and model.config.vocab_size == vocab_size - 2
    inputs = features(task)
    inputs["input_ids"] = inputs["input_ids"].clamp(max=vocab_size - 3)
    with torch.no_grad():
        assert torch.isfinite(first_output(task, model(**inputs))).all()


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_resizing_the_masked_lm_keeps_the_decoder_in_step(tie):
    model = build("masked-lm", tie_word_embeddings=tie)
    count = len(list(model.parameters()))
    model.resize_token_embeddings(SMALL["vocab_size"] + 10)
    model.tie_weights()  # the reference's call after changing embeddings: keeps what is tied tied, unties nothing
    decoder = model.get_output_embeddings()
    assert len(list(model.parameters())) == count
    assert (decoder.weight is model.get_input_embeddings().weight) == tie
    assert decoder.weight.shape == (SMALL["vocab_size"] + 10, SMALL["hidden_size"])
    assert model(torch.tensor([[1, SMALL["vocab_size"] + 9]])).logits.shape == (1, 2, SMALL["vocab_size"] + 10)


# ----------------------------------------------------------------------------------------------------------------
# Sequence classification losses
@pytest.mark.parametrize("problem_type, num_labels", [("regression", 1), ("single_label_classification", 3),
                                                      ("multi_label_classification", 3), (None, 1)])
def test_problem_type_picks_the_loss(problem_type, num_labels):
    model = build("sequence-classification", num_labels=num_labels, problem_type=problem_type)
    generator = torch.Generator().manual_seed(0)
    if problem_type == "single_label_classification":
        labels = torch.tensor([2, 0, 1, 2])  # three classes
    elif problem_type == "multi_label_classification":
        labels = torch.randint(0, 2, (4, num_labels), generator=generator).float()
    else:
        labels = torch.randn(4, generator=generator)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "target size that is different to the input size" broadcasting
        out = model(**features("sequence-classification"), labels=labels)
    logits = out.logits.detach()
    assert logits.shape == (4, num_labels)
    expected = {"single_label_classification": lambda: torch.nn.functional.cross_entropy(logits, labels),
                "multi_label_classification": lambda: torch.nn.functional.binary_cross_entropy_with_logits(
                    logits, labels)}.get(problem_type, lambda: torch.nn.functional.mse_loss(logits[:, 0], labels))()
    torch.testing.assert_close(out.loss.detach(), expected, rtol=1e-6, atol=0)
    out.loss.backward()
    assert model.classifier.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------------------------
# What the reference's Trainer and tests read off a model
@pytest.mark.parametrize("task", list(TASKS))
def test_reference_model_attributes(task):
    model = build(task)
    assert model.base_model is (model if task == "base" else model.deberta)
    assert model.base_model_prefix == "deberta"
    assert model.can_generate() is False
    assert model._keys_to_ignore_on_save is None and model._tied_weights_keys is None
    assert model._supports_sdpa is True
    storages = [t.untyped_storage().data_ptr() for t in model.state_dict().values()]
    assert len(storages) == len(set(storages))  # no two saved names share a tensor: nothing for _tied_weights_keys
    small = sum(p.numel() for p in model.parameters())
    assert small == model.num_parameters() < 100_000  # the tiny configuration stays tiny


def test_initializer_range_is_the_only_scale():
    """With initializer_range ~ 0 every weight is 0 except LayerNorm scales (1): nothing else draws random values."""
    for task in TASKS:
        model = build(task, initializer_range=1e-10)
        for name, param in model.named_parameters():
            mean = round(param.detach().mean().item(), 9)
            assert mean in (0.0, 1.0), f"{task}: {name} mean {mean}"


# ----------------------------------------------------------------------------------------------------------------
# eager and sdpa attention
@pytest.mark.parametrize("layout", [SMALL, ABSOLUTE], ids=["relative", "absolute"])
@pytest.mark.parametrize("task", list(TASKS))
def test_eager_and_sdpa_agree_on_any_padding(task, layout, tmp_path):
    build(task, layout).save_pretrained(tmp_path)
    eager = MODEL_CLASSES[task].from_pretrained(tmp_path, attn_implementation="eager")
    sdpa = MODEL_CLASSES[task].from_pretrained(tmp_path, attn_implementation="sdpa")
    assert (eager.config._attn_implementation, sdpa.config._attn_implementation) == ("eager", "sdpa")
    inputs = features(task, batch=5, type_vocab=layout["type_vocab_size"])
    generator = torch.Generator().manual_seed(3)
    inputs["attention_mask"] = torch.randint(0, 2, inputs["input_ids"].shape, generator=generator)
    inputs["attention_mask"][1] = 0  # a row with nothing to attend to
    for mask in (inputs["attention_mask"], None):
        with torch.no_grad():
            a = eager(**{**inputs, "attention_mask": mask}, output_hidden_states=True)
            b = sdpa(**{**inputs, "attention_mask": mask}, output_hidden_states=True)
        for x, y in zip(a.hidden_states, b.hidden_states):
            torch.testing.assert_close(y, x, rtol=0, atol=1e-5)
        torch.testing.assert_close(first_output(task, b), first_output(task, a), rtol=0, atol=1e-5)


def test_sdpa_with_output_attentions_returns_the_eager_maps(tmp_path):
    build("base").save_pretrained(tmp_path)
    eager = MODEL_CLASSES["base"].from_pretrained(tmp_path)
    sdpa = MODEL_CLASSES["base"].from_pretrained(tmp_path, attn_implementation="sdpa")
    with torch.no_grad():
        got = sdpa(**features("base"), output_attentions=True).attentions
        want = eager(**features("base"), output_attentions=True).attentions
    assert len(got) == SMALL["num_hidden_layers"]
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
