"""DeBERTa-v2/v3 in TensorFlow (Keras 3, TF backend), numerically matching transformers 4.57.6 (PyTorch rules).

Mirrors ``deberta_xf.torch.modeling_deberta_v2`` class by class: embeddings -> relative positions -> disentangled
attention -> layer -> encoder (with the nGiE convolution of v2) -> task heads. Every layer is named after its
attribute (list items by their index), so a variable's Keras path is its canonical name in Keras spelling,
``deberta_xf.schema.framework_name(name, "tf", "/")`` under the model's name::

    tf_deberta_v2_for_masked_lm/deberta/encoder/layer/0/attention/self/query_proj/kernel
      == deberta.encoder.layer.0.attention.self.query_proj.weight (transposed, see deberta_xf.schema.LAYOUT)

The base model's names have no ``deberta.`` prefix, as in PyTorch.

Behaviour:
- called as ``model(input_ids=..., attention_mask=..., ...)`` or ``model.call(..., training=False)``; inputs may
  be numpy arrays or tf tensors; dropout only with ``training=True``;
- runs eagerly, inside ``tf.function`` and with ``jit_compile=True`` (XLA). With a static sequence length the
  relative-position gather indices are NumPy constants from ``deberta_xf.relative_position``; with a dynamic one (a
  ``tf.function`` traced with ``input_signature=[None, None]``) they are looked up, in the graph, in a NumPy table
  of the same functions over ``i - j``;
- ``dtype``: ``None``/``"float32"`` (default), ``"bfloat16"`` or ``"float16"``: every variable is created in that
  dtype and the model computes in it (a Keras dtype policy of that name, like ``model.to(dtype)`` in PyTorch);
  LayerNorm and the losses are computed in float32 and cast back;
- ``loss`` is shaped as the reference TF returns it: one per example ([batch]) for sequence classification, question
  answering and multiple choice, the masked mean as (1,) for masked LM and token classification. Its mean (what
  ``fit`` minimises, what parity compares) is the reference PyTorch loss (see the losses section);
- the reference TF's model methods: ``get_input_embeddings`` / ``set_input_embeddings`` /
  ``get_output_embeddings`` / ``set_output_embeddings`` / ``get_lm_head`` / ``get_bias`` / ``set_bias``, and
  gradient checkpointing as in PyTorch (``gradient_checkpointing_enable()``: ``tf.recompute_grad`` per layer).
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import functools
import inspect
import math
import os
from collections.abc import Mapping
from typing import Any, Iterable, Optional

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from deberta_xf import schema  # noqa: E402
from deberta_xf.configuration import DebertaV2Config  # noqa: E402
from deberta_xf.fileio import atomic_directory  # noqa: E402
from deberta_xf.formats import TensorInfo  # noqa: E402
from deberta_xf.limits import check_memory
from deberta_xf.loading import dtype_name, loading_info, open_checkpoint, resized_rows, resolve_config, \
    save_checkpoint  # noqa: E402
from deberta_xf.outputs import ModelOutput, finish, output_flags  # noqa: E402
from deberta_xf.relative_position import attention_distance_window, c2p_index, make_log_bucket_position, \
    p2c_index  # noqa: E402

if keras.backend.backend() != "tensorflow":  # pragma: no cover - depends on the environment
    raise ImportError(f"the TF DeBERTa-v2 implementation needs the Keras TensorFlow backend, but Keras runs on "
                      f"{keras.backend.backend()!r} (set KERAS_BACKEND=tensorflow before importing keras)")


def _register_model_output_with_keras_tree() -> None:
    """Keras rebuilds a layer's outputs with ``keras.tree`` (optree, namespace "keras") when the layer is called on
    ``keras.Input`` tensors (functional models); a dict subclass is a leaf there unless registered, so a
    ModelOutput is registered as a node, its fields in order."""
    import optree

    optree.register_pytree_node(ModelOutput, lambda out: (tuple(out.values()), tuple(out), tuple(out)),
                                lambda keys, values: ModelOutput(zip(keys, values)), namespace="keras")


_register_model_output_with_keras_tree()


# =============================================================================================================
# Activations and dropout
def gelu_new(x: tf.Tensor) -> tf.Tensor:
    """The tanh approximation written out, as the reference's NewGELUActivation."""
    return 0.5 * x * (1.0 + tf.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * tf.pow(x, 3.0))))


ACT2FN = {
    "gelu": lambda x: tf.nn.gelu(x, approximate=False),  # exact (erf) GELU, as the reference's ACT2FN["gelu"]
    "gelu_new": gelu_new,
    "gelu_pytorch_tanh": lambda x: tf.nn.gelu(x, approximate=True),
    "relu": tf.nn.relu,
    "tanh": tf.tanh,
    "sigmoid": tf.sigmoid,
    "silu": tf.nn.silu,
    "swish": tf.nn.silu,
    "linear": lambda x: x,
}


_LAYER_SEEDS: list = []  # [seed, dropouts so far] of the encoder layer being run (see seeded_dropout)


@contextlib.contextmanager
def seeded_dropout(seed: Optional[tf.Tensor]):
    """Within: each dropout mask is drawn statelessly from ``seed`` and its order in the block (``seed`` None: no
    change). Each encoder layer runs inside it while training, so ``tf.recompute_grad`` recomputing the layer draws
    the same masks."""
    if seed is None:
        yield
        return
    _LAYER_SEEDS.append([seed, 0])
    try:
        yield
    finally:
        _LAYER_SEEDS.pop()


def dropout(x: tf.Tensor, rate: float, training: bool) -> tf.Tensor:
    """nn.Dropout: identity unless training (no Keras Dropout layer, so no seed-generator variables)."""
    if not (training and rate > 0):
        return x
    if _LAYER_SEEDS:
        state = _LAYER_SEEDS[-1]
        state[1] += 1
        return tf.nn.experimental.stateless_dropout(x, rate=rate, seed=state[0] + tf.constant([0, state[1]]))
    return tf.nn.dropout(x, rate=rate)


_SKIP_RANDOM_INIT = [False]  # True while from_pretrained builds a model whose every weight the checkpoint holds


# Tensors larger than this are assigned to their variable in blocks of rows (from_pretrained's peak memory).
_ASSIGN_BLOCK_BYTES = 1 << 25


@contextlib.contextmanager
def _weights_from_checkpoint(complete: bool):
    """While the model is built by from_pretrained with every weight in the checkpoint, its normal(0, std) variables
    start as zeros: they are all assigned right after, and drawing them costs seconds for a base-size model."""
    _SKIP_RANDOM_INIT[0] = complete
    try:
        yield
    finally:
        _SKIP_RANDOM_INIT[0] = False


def _normal(std: float, zero_row: Optional[int] = None):
    """normal(0, std) initializer, as the reference's _init_weights (with the padding row zeroed)."""

    def init(shape, dtype=None):
        if _SKIP_RANDOM_INIT[0]:
            return tf.zeros(shape, dtype or "float32")
        values = keras.random.normal(shape, stddev=std, dtype="float32")
        if zero_row is not None:
            values = tf.tensor_scatter_nd_update(values, [[zero_row]], tf.zeros([1, shape[1]]))
        return tf.cast(values, dtype or "float32")

    return init


# =============================================================================================================
# Leaf layers. Variables are created in __init__, in a fixed order (kernel then bias, gamma then beta): their
# Keras paths and the order of the Keras-3 `.weights.h5` entries depend only on the canonical names.
class Dense(keras.layers.Layer):
    """nn.Linear: ``x @ kernel + bias`` with ``kernel`` stored [in, out] (the canonical weight transposed)."""

    def __init__(self, n_in: int, n_out: int, use_bias: bool = True, std: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        self.kernel = self.add_weight(name="kernel", shape=(n_in, n_out), initializer=_normal(std))
        self.bias = self.add_weight(name="bias", shape=(n_out,), initializer="zeros") if use_bias else None
        self.built = True

    def call(self, x):
        shape = tf.shape(x)
        y = tf.matmul(tf.reshape(x, [-1, shape[-1]]), self.kernel)
        if self.bias is not None:
            y = tf.nn.bias_add(y, self.bias)
        return tf.reshape(y, tf.concat([shape[:-1], tf.shape(self.kernel)[-1:]], 0))


class LayerNorm(keras.layers.Layer):
    """nn.LayerNorm over the last axis, computed in float32 as PyTorch does for half precision."""

    def __init__(self, size: int, eps: float, **kwargs):
        super().__init__(**kwargs)
        self.eps = eps
        self.gamma = self.add_weight(name="gamma", shape=(size,), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(size,), initializer="zeros")
        self.built = True

    def call(self, x):
        x32 = tf.cast(x, tf.float32)
        mean, variance = tf.nn.moments(x32, axes=[-1], keepdims=True)
        y = (x32 - mean) * tf.math.rsqrt(variance + self.eps)
        y = y * tf.cast(self.gamma, tf.float32) + tf.cast(self.beta, tf.float32)
        return tf.cast(y, x.dtype)


class Embedding(keras.layers.Layer):
    """nn.Embedding: a [num, dim] table ``embeddings``."""

    def __init__(self, num: int, dim: int, std: float = 0.02, padding_idx: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        self.embeddings = self.add_weight(name="embeddings", shape=(num, dim), initializer=_normal(std, padding_idx))
        self.built = True

    @property
    def weight(self) -> tf.Variable:
        """The table under the reference TF's name for it (``get_input_embeddings().weight``), as the reference
        gives it: a ``tf.Variable`` (the storage of the Keras variable ``embeddings``: ``.value()``, ``assign``)."""
        return self.embeddings.value

    def call(self, ids):
        return tf.gather(self.embeddings, ids)


class Conv1D(keras.layers.Layer):
    """nn.Conv1d(C, C, k, padding=(k - 1) // 2, groups) on [B, L, C]; ``kernel`` stored [k, C / groups, C]."""

    def __init__(self, channels: int, kernel_size: int, groups: int = 1, std: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        self.kernel_size, self.groups = kernel_size, groups
        self.kernel = self.add_weight(name="kernel", shape=(kernel_size, channels // groups, channels),
                                      initializer=_normal(std))
        self.bias = self.add_weight(name="bias", shape=(channels,), initializer="zeros")
        self.built = True

    def call(self, x):
        k, g = self.kernel_size, self.groups
        pad = (k - 1) // 2
        length = tf.shape(x)[1]
        padded = tf.pad(x, [[0, 0], [pad, pad], [0, 0]])
        taps = tf.stack([padded[:, s:s + length] for s in range(k)], axis=2)  # [B, L, k, C]: x[t + s - pad]
        c_in, c_out = self.kernel.shape[1], self.kernel.shape[2]
        taps = tf.reshape(taps, tf.concat([tf.shape(taps)[:3], [g, c_in]], 0))  # [B, L, k, g, C/g]
        kernel = tf.reshape(self.kernel, [k, c_in, g, c_out // g])  # output channel o = group * C/g + j
        out = tf.einsum("blkgc,kcgo->blgo", taps, kernel)
        out = tf.reshape(out, tf.concat([tf.shape(out)[:2], [c_out]], 0))
        return tf.nn.bias_add(out, self.bias)


# =============================================================================================================
# Embeddings
class TFDebertaV2Embeddings(keras.layers.Layer):
    """Word (+ absolute position) (+ token type) embeddings -> [embed_proj] -> LayerNorm -> x mask -> dropout."""

    def __init__(self, config: DebertaV2Config, **kwargs):
        super().__init__(**kwargs)
        E, H, std, dt = config.embedding_dim, config.hidden_size, config.initializer_range, self.dtype_policy
        with keras.name_scope(self.name):
            self.word_embeddings = Embedding(config.vocab_size, E, std, padding_idx=config.pad_token_id,
                                             name="word_embeddings", dtype=dt)
            self.position_embeddings = (Embedding(config.max_position_embeddings, E, std, name="position_embeddings",
                                                  dtype=dt) if config.position_biased_input else None)
            self.token_type_embeddings = (Embedding(config.type_vocab_size, E, std, name="token_type_embeddings",
                                                    dtype=dt) if config.type_vocab_size > 0 else None)
            self.embed_proj = Dense(E, H, use_bias=False, std=std, name="embed_proj", dtype=dt) if E != H else None
            self.LayerNorm = LayerNorm(H, config.layer_norm_eps, name="LayerNorm", dtype=dt)
        self.dropout_rate = config.hidden_dropout_prob
        self.built = True

    def call(self, input_ids=None, token_type_ids=None, position_ids=None, input_mask=None, inputs_embeds=None,
             training=False):
        embeddings = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds  # [B, L, E]
        if self.position_embeddings is not None:
            if position_ids is None:
                position_ids = tf.range(tf.shape(embeddings)[1])[None, :]
            embeddings = embeddings + self.position_embeddings(position_ids)
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = tf.zeros(tf.shape(embeddings)[:2], dtype=tf.int32)
            embeddings = embeddings + self.token_type_embeddings(token_type_ids)
        if self.embed_proj is not None:
            embeddings = self.embed_proj(embeddings)
        embeddings = self.LayerNorm(embeddings)
        if input_mask is not None:  # padding rows become exactly 0
            embeddings = embeddings * tf.cast(input_mask, embeddings.dtype)[:, :, None]
        return dropout(embeddings, self.dropout_rate, training)


# =============================================================================================================
# Relative positions: the (bucketed) i - j matrix and the c2p / p2c columns come from deberta_xf.relative_position
# (NumPy). Both column matrices are functions of i - j alone (c2p[i, j] = f(i - j), p2c[j, i] = g(j - i)), so
# instead of gathering L * L scores one by one (as the reference does), the attention gathers the projected
# position rows f(L - 1), f(L - 2), ..., f(-(L - 1)) plus one pad row, multiplies them with the queries
# ([B, h, L, 2L]) and moves each row into place with one reshape (:func:`relative_shift`): the same dot products,
# as dense memory copies. Only the rows ``rows[0]:rows[1]`` of the relative embeddings that an index touches are
# projected.
@dataclasses.dataclass(frozen=True)
class PositionIndex:
    """For one sequence length L: the relative-embedding rows used, and for c2p / p2c the row (offset by
    ``rows[0]``) that holds relative distance ``L - 1 - k`` at position k, k = 0 .. 2L - 2, and once more the row
    of -(L - 1) at k = 2L - 1 (it only pads the scores to width 2L and is never read)."""

    rows: tuple[int, int]
    c2p: Optional[tf.Tensor] = None
    p2c: Optional[tf.Tensor] = None


@functools.lru_cache(maxsize=64)
def _static_position_index(position_buckets: int, max_relative_positions: int, att_span: int,
                           pos_att_types: tuple[str, ...], length: int) -> dict[str, Any]:
    config = DebertaV2Config(relative_attention=True, position_buckets=position_buckets,
                             max_relative_positions=max_relative_positions, pos_att_type=list(pos_att_types))
    assert config.att_span == att_span
    window = attention_distance_window(config, length)  # c2p / p2c rows by distance, offset by window.start
    return {"rows": (window.start, window.stop), **{k: v.astype(np.int32) for k, v in window.index.items()}}


@functools.lru_cache(maxsize=64)
def _difference_tables(position_buckets: int, max_relative_positions: int, att_span: int):
    """c2p and p2c columns as functions of ``d = i - j`` for ``d`` in ``[-T, T]``, and whether they saturate there.

    The same functions as :func:`deberta_xf.relative_position.build_relative_position` (log buckets when both
    ``position_buckets`` and the max distance are > 0) and :func:`c2p_index` / :func:`p2c_index`. Bucketing is
    monotonic in ``d`` when the max distance exceeds half the buckets (every published config), and the columns
    are clamped: at +-T they have reached the clamp bounds, so beyond T they are the values at +-T. With a max
    distance below half the buckets (e.g. keras-hub's test config: ``max_position_embeddings`` 5, 256 buckets) the
    log buckets turn back beyond ``mid``: not saturated.
    """
    T = max(att_span, max_relative_positions) + 1
    d = np.arange(-T, T + 1, dtype=np.int64)
    rel = make_log_bucket_position(d, position_buckets, max_relative_positions) if (
        position_buckets > 0 and max_relative_positions > 0) else d
    c2p, p2c = c2p_index(rel, att_span), p2c_index(rel, att_span)
    last = 2 * att_span - 1
    saturated = (c2p[0], c2p[-1], p2c[0], p2c[-1]) == (0, last, last, 0)
    return T, c2p.astype(np.int32), p2c.astype(np.int32), saturated


def _log_bucket_position(distance: tf.Tensor, bucket_size: int, max_position: int) -> tf.Tensor:
    """:func:`deberta_xf.relative_position.make_log_bucket_position` in graph ops, in the same float32 arithmetic
    (for the distances beyond the tables of a config whose buckets do not saturate)."""
    mid = bucket_size // 2
    abs_pos = tf.cast(tf.where((distance < mid) & (distance > -mid), mid - 1, tf.abs(distance)), tf.float32)
    log_max = np.log(np.float32((max_position - 1) / mid), dtype=np.float32)
    log_pos = tf.math.ceil(tf.math.log(abs_pos / np.float32(mid)) / log_max * np.float32(mid - 1)) + np.float32(mid)
    signed = log_pos * tf.cast(tf.sign(distance), tf.float32)
    return tf.cast(tf.where(abs_pos <= mid, tf.cast(distance, tf.float32), signed), tf.int32)


def relative_position_indices(config: DebertaV2Config, seq_length) -> PositionIndex:
    """The :class:`PositionIndex` of one sequence length.

    ``seq_length``: a Python int (static shape: NumPy constants) or a scalar tensor (dynamic shape inside
    ``tf.function``: a lookup in the NumPy tables of :func:`_difference_tables`, and for a config whose buckets do
    not saturate, the bucket formula in graph ops beyond them).
    """
    if isinstance(seq_length, (int, np.integer)):
        static = _static_position_index(config.position_buckets, config.max_relative_positions_resolved,
                                        config.att_span, config.pos_att_types, int(seq_length))
        return PositionIndex(**{k: (v if k == "rows" else tf.constant(v)) for k, v in static.items()})
    buckets, max_distance, span = config.position_buckets, config.max_relative_positions_resolved, config.att_span
    T, c2p_table, p2c_table, saturated = _difference_tables(buckets, max_distance, span)
    distance = tf.maximum(tf.range(seq_length - 1, -seq_length - 1, -1), 1 - seq_length)  # L-1 .. -(L-1), -(L-1)
    inside = tf.clip_by_value(distance, -T, T) + T
    beyond = None if saturated else _log_bucket_position(distance, buckets, max_distance)
    out: dict[str, Any] = {"rows": (0, 2 * span)}
    for kind, table, sign in (("c2p", c2p_table, 1), ("p2c", p2c_table, -1)):
        if kind in config.pos_att_types:
            columns = tf.gather(table, inside)
            if beyond is not None:  # c2p_index / p2c_index of the buckets beyond +-T
                columns = tf.where(tf.abs(distance) <= T, columns,
                                   tf.clip_by_value(sign * beyond + span, 0, 2 * span - 1))
            out[kind] = columns
    return PositionIndex(**out)


def relative_shift(x: tf.Tensor) -> tf.Tensor:
    """[..., L, 2L] -> [..., L, L] with out[..., a, b] = x[..., a, L - 1 - a + b].

    Row a of ``x`` holds distances L - 1 ... -(L - 1) (+ pad); out[a, b] picks distance a - b. Re-reading the rows
    flattened, with stride 2L - 1 from offset L - 1, shifts row a left by a.
    """
    shape = tf.shape(x)
    lead, length = shape[:-2], shape[-2]
    flat = tf.reshape(x, tf.concat([lead, [-1]], 0))  # [..., 2L^2]
    flat = flat[..., length - 1: length - 1 + length * (2 * length - 1)]
    return tf.reshape(flat, tf.concat([lead, [length, 2 * length - 1]], 0))[..., :length]


# =============================================================================================================
# Disentangled self-attention
class TFDisentangledSelfAttention(keras.layers.Layer):
    """softmax((c2c + c2p + p2c) / sqrt(d * scale_factor)) V, heads as [B, heads, L, d]."""

    def __init__(self, config: DebertaV2Config, **kwargs):
        super().__init__(**kwargs)
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.head_size
        all_head_size = config.num_attention_heads * config.head_size
        H, std, dt = config.hidden_size, config.initializer_range, self.dtype_policy
        self.pos_att_type = config.pos_att_types
        self.relative_attention = config.relative_attention
        self.share_att_key = config.share_att_key
        self.scale_factor = config.scale_factor
        with keras.name_scope(self.name):
            self.query_proj = Dense(H, all_head_size, std=std, name="query_proj", dtype=dt)
            self.key_proj = Dense(H, all_head_size, std=std, name="key_proj", dtype=dt)
            self.value_proj = Dense(H, all_head_size, std=std, name="value_proj", dtype=dt)
            self.pos_key_proj = self.pos_query_proj = None
            if self.relative_attention and not self.share_att_key:
                if "c2p" in self.pos_att_type:
                    self.pos_key_proj = Dense(H, all_head_size, std=std, name="pos_key_proj", dtype=dt)
                if "p2c" in self.pos_att_type:
                    self.pos_query_proj = Dense(H, all_head_size, std=std, name="pos_query_proj", dtype=dt)
        self.pos_dropout_rate = config.hidden_dropout_prob
        self.dropout_rate = config.attention_probs_dropout_prob
        self.built = True

    def split_heads(self, x):
        """[..., L, heads * d] -> [..., heads, L, d]"""
        x = tf.reshape(x, tf.concat([tf.shape(x)[:-1], [self.num_attention_heads, self.attention_head_size]], 0))
        rank = x.shape.rank
        return tf.transpose(x, list(range(rank - 3)) + [rank - 2, rank - 3, rank - 1])

    def call(self, hidden_states, attention_mask, rel_embeddings=None, position_index=None,
             output_attentions=False, training=False):
        query = self.split_heads(self.query_proj(hidden_states))  # [B, h, L, d]
        key = self.split_heads(self.key_proj(hidden_states))
        value = self.split_heads(self.value_proj(hidden_states))

        scale = math.sqrt(self.attention_head_size * self.scale_factor)
        scores = tf.matmul(query, key / tf.cast(scale, key.dtype), transpose_b=True)  # c2c, K scaled first
        if self.relative_attention:
            rel_embeddings = dropout(rel_embeddings, self.pos_dropout_rate, training)
            scores = scores + self.disentangled_attention_bias(query, key, rel_embeddings, position_index, scale)

        scores = tf.where(attention_mask, scores, tf.constant(scores.dtype.min, scores.dtype))
        probs = dropout(tf.nn.softmax(scores, axis=-1), self.dropout_rate, training)
        context = tf.transpose(tf.matmul(probs, value), [0, 2, 1, 3])  # [B, L, h, d]
        context = tf.reshape(context, tf.concat([tf.shape(context)[:2], [-1]], 0))
        return context, (probs if output_attentions else None)

    def disentangled_attention_bias(self, query, key, rel_embeddings, position_index, scale):
        """c2p(i, j) = q_i . k^r_{c2p(i,j)}   and   p2c(i, j) = k_j . q^r_{p2c(j,i)}, both divided by ``scale``."""
        lo, hi = position_index.rows
        rel_embeddings = rel_embeddings[lo:hi]  # [width, H]: the rows some index touches
        if self.share_att_key:
            pos_query_proj, pos_key_proj = self.query_proj, self.key_proj
        else:
            pos_query_proj, pos_key_proj = self.pos_query_proj, self.pos_key_proj
        score = 0
        if "c2p" in self.pos_att_type:
            # position keys for distances i - j = L - 1 ... -(L - 1) (+ a pad row): [h, 2L, d]
            pos_key = self.split_heads(tf.gather(pos_key_proj(rel_embeddings), position_index.c2p))
            c2p = relative_shift(tf.matmul(query, pos_key, transpose_b=True))  # [B, h, L, L]
            score = score + c2p / tf.cast(scale, c2p.dtype)
        if "p2c" in self.pos_att_type:
            # position queries for distances j - i = L - 1 ... -(L - 1), against the keys; shifted: [B, h, Lk, Lq]
            pos_query = self.split_heads(tf.gather(pos_query_proj(rel_embeddings), position_index.p2c))
            p2c = relative_shift(tf.matmul(key, pos_query, transpose_b=True))
            score = score + tf.linalg.matrix_transpose(p2c) / tf.cast(scale, p2c.dtype)
        return score


class TFDebertaV2SelfOutput(keras.layers.Layer):
    def __init__(self, config: DebertaV2Config, **kwargs):
        super().__init__(**kwargs)
        H, dt = config.hidden_size, self.dtype_policy
        with keras.name_scope(self.name):
            self.dense = Dense(H, H, std=config.initializer_range, name="dense", dtype=dt)
            self.LayerNorm = LayerNorm(H, config.layer_norm_eps, name="LayerNorm", dtype=dt)
        self.dropout_rate = config.hidden_dropout_prob
        self.built = True

    def call(self, hidden_states, input_tensor, training=False):
        return self.LayerNorm(dropout(self.dense(hidden_states), self.dropout_rate, training) + input_tensor)


class TFDebertaV2Attention(keras.layers.Layer):
    # `output` is a reserved keras.Layer property (and Keras saving skips attributes of that name), so the
    # canonical `output` sublayers are held as `output_`; their layer name, hence their variable paths, is "output".
    def __init__(self, config: DebertaV2Config, **kwargs):
        super().__init__(**kwargs)
        with keras.name_scope(self.name):
            self.self = TFDisentangledSelfAttention(config, name="self", dtype=self.dtype_policy)
            self.output_ = TFDebertaV2SelfOutput(config, name="output", dtype=self.dtype_policy)
        self.built = True

    def call(self, hidden_states, attention_mask, rel_embeddings=None, position_index=None,
             output_attentions=False, training=False):
        context, probs = self.self(hidden_states, attention_mask, rel_embeddings=rel_embeddings,
                                   position_index=position_index, output_attentions=output_attentions,
                                   training=training)
        return self.output_(context, hidden_states, training=training), probs


# =============================================================================================================
# Layer (post-LayerNorm transformer block)
class TFDebertaV2Intermediate(keras.layers.Layer):
    def __init__(self, config: DebertaV2Config, **kwargs):
        super().__init__(**kwargs)
        with keras.name_scope(self.name):
            self.dense = Dense(config.hidden_size, config.intermediate_size, std=config.initializer_range,
                               name="dense", dtype=self.dtype_policy)
        self.act = ACT2FN[config.hidden_act]
        self.built = True

    def call(self, hidden_states):
        return self.act(self.dense(hidden_states))


class TFDebertaV2Output(keras.layers.Layer):
    def __init__(self, config: DebertaV2Config, **kwargs):
        super().__init__(**kwargs)
        H, dt = config.hidden_size, self.dtype_policy
        with keras.name_scope(self.name):
            self.dense = Dense(config.intermediate_size, H, std=config.initializer_range, name="dense", dtype=dt)
            self.LayerNorm = LayerNorm(H, config.layer_norm_eps, name="LayerNorm", dtype=dt)
        self.dropout_rate = config.hidden_dropout_prob
        self.built = True

    def call(self, hidden_states, input_tensor, training=False):
        return self.LayerNorm(dropout(self.dense(hidden_states), self.dropout_rate, training) + input_tensor)


class TFDebertaV2Layer(keras.layers.Layer):
    def __init__(self, config: DebertaV2Config, **kwargs):
        super().__init__(**kwargs)
        dt = self.dtype_policy
        with keras.name_scope(self.name):
            self.attention = TFDebertaV2Attention(config, name="attention", dtype=dt)
            self.intermediate = TFDebertaV2Intermediate(config, name="intermediate", dtype=dt)
            self.output_ = TFDebertaV2Output(config, name="output", dtype=dt)  # see TFDebertaV2Attention
        self.built = True

    def call(self, hidden_states, attention_mask, rel_embeddings=None, position_index=None,
             output_attentions=False, training=False):
        attention_output, probs = self.attention(hidden_states, attention_mask, rel_embeddings=rel_embeddings,
                                                 position_index=position_index,
                                                 output_attentions=output_attentions, training=training)
        return self.output_(self.intermediate(attention_output), attention_output, training=training), probs


# =============================================================================================================
# Encoder, with the nGiE convolution of v2 (applied once, beside layer 0)
class TFConvLayer(keras.layers.Layer):
    """LayerNorm(layer0_output + act(dropout(conv(embedding_output)))) on non-padding positions."""

    def __init__(self, config: DebertaV2Config, **kwargs):
        super().__init__(**kwargs)
        H, dt = config.hidden_size, self.dtype_policy
        with keras.name_scope(self.name):
            self.conv = Conv1D(H, config.conv_kernel_size, config.conv_groups, std=config.initializer_range,
                               name="conv", dtype=dt)
            self.LayerNorm = LayerNorm(H, config.layer_norm_eps, name="LayerNorm", dtype=dt)
        self.dropout_rate = config.hidden_dropout_prob
        self.act = ACT2FN[config.conv_act]
        self.built = True

    def call(self, hidden_states, residual_states, input_mask, training=False):
        out = self.conv(hidden_states)  # [B, L, H]
        keep = tf.cast(input_mask, out.dtype)[:, :, None]
        out = tf.where(keep == 0, tf.zeros_like(out), out)
        out = self.act(dropout(out, self.dropout_rate, training))
        return self.LayerNorm(residual_states + out) * keep


class TFDebertaV2Encoder(keras.layers.Layer):
    def __init__(self, config: DebertaV2Config, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        H, dt = config.hidden_size, self.dtype_policy
        with keras.name_scope(self.name):
            with keras.name_scope("layer"):  # variable paths .../encoder/layer/{i}/...
                self.layer = [TFDebertaV2Layer(config, name=str(i), dtype=dt) for i in range(config.num_hidden_layers)]
            self.rel_embeddings = (Embedding(2 * config.att_span, H, config.initializer_range, name="rel_embeddings",
                                             dtype=dt) if config.relative_attention else None)
            self.LayerNorm = (LayerNorm(H, config.layer_norm_eps, name="LayerNorm", dtype=dt)
                              if config.rel_embeddings_layer_norm else None)
            self.conv = TFConvLayer(config, name="conv", dtype=dt) if config.conv_kernel_size > 0 else None
        self.gradient_checkpointing = False  # model.gradient_checkpointing_enable(): tf.recompute_grad per layer
        self.built = True

    def get_rel_embedding(self):
        if not self.config.relative_attention:
            return None
        rel_embeddings = tf.convert_to_tensor(self.rel_embeddings.embeddings)
        if self.LayerNorm is not None:
            rel_embeddings = self.LayerNorm(rel_embeddings)
        return rel_embeddings

    def call(self, hidden_states, attention_mask, input_mask, output_hidden_states=False, output_attentions=False,
             training=False):
        """``attention_mask``: bool [B, 1, L, L]; ``input_mask``: [B, L] (1 = token, 0 = padding)."""
        rel_embeddings = self.get_rel_embedding()
        seq_length = hidden_states.shape[1]
        if seq_length is None:
            seq_length = tf.shape(hidden_states)[1]
        position_index = relative_position_indices(self.config, seq_length) if self.config.relative_attention \
            else None
        all_hidden_states = [hidden_states] if output_hidden_states else None
        all_attentions = [] if output_attentions else None
        embedding_output = hidden_states
        for i, layer in enumerate(self.layer):
            # training: the layer's dropout masks come from one seed (the same again when recomputed)
            seed = tf.random.uniform([2], maxval=tf.int32.max, dtype=tf.int32) if training else None
            if self.gradient_checkpointing:
                hidden_states, probs = self.recomputed(layer, hidden_states, attention_mask, rel_embeddings,
                                                       position_index, output_attentions, training, seed)
            else:
                with seeded_dropout(seed):
                    hidden_states, probs = layer(hidden_states, attention_mask, rel_embeddings=rel_embeddings,
                                                 position_index=position_index, output_attentions=output_attentions,
                                                 training=training)
            if i == 0 and self.conv is not None:
                hidden_states = self.conv(embedding_output, hidden_states, input_mask, training=training)
            if output_hidden_states:
                all_hidden_states.append(hidden_states)
            if output_attentions:
                all_attentions.append(probs)
        return ModelOutput(last_hidden_state=hidden_states,
                           hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
                           attentions=tuple(all_attentions) if output_attentions else None)


    @staticmethod
    def recomputed(layer, hidden_states, attention_mask, rel_embeddings, position_index, output_attentions,
                   training, seed):
        """``layer(...)`` under ``tf.recompute_grad``: its activations are not kept but recomputed in the backward
        pass (the same gradients, less memory). The tensors gradients flow to (hidden states, relative embeddings)
        are its arguments; the masks, indices and dropout ``seed`` are closed over (the recomputation draws the
        same dropout masks)."""

        def run(hidden, *rel):
            with seeded_dropout(seed):
                out, probs = layer(hidden, attention_mask, rel_embeddings=rel[0] if rel else None,
                                   position_index=position_index, output_attentions=output_attentions,
                                   training=training)
            return (out, probs) if output_attentions else out

        out = tf.recompute_grad(run)(hidden_states, *([] if rel_embeddings is None else [rel_embeddings]))
        return out if output_attentions else (out, None)


def attention_masks(attention_mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """2-D [B, L] or 3-D [B, Lq, Lk] mask -> (bool [B, 1, L, L] pair mask, [B, L] token mask).

    A 2-D mask becomes the outer product (padding query rows are masked too). A token of a 3-D mask counts as
    present when any query attends to it, as the reference's ConvLayer reads it.
    """
    rank = attention_mask.shape.rank
    if rank == 2:
        input_mask = attention_mask
        pair = attention_mask[:, None, :, None] * attention_mask[:, None, None, :]
    elif rank == 3:
        input_mask = tf.cast(tf.reduce_sum(attention_mask, axis=-2) > 0, attention_mask.dtype)
        pair = attention_mask[:, None]
    else:
        raise ValueError(f"attention_mask must be 2-D [batch, seq] or 3-D [batch, seq, seq], got shape "
                         f"{attention_mask.shape}")
    return tf.cast(pair, tf.bool), input_mask


# =============================================================================================================
# Pre-trained model base: init, loading, saving
_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16", "half": "float16",
           "bfloat16": "bfloat16", "bf16": "bfloat16"}
# Keras leaf name -> canonical leaf name (the inverse of schema.LAYOUT's "tf" column)
_CANONICAL_LEAF = {"kernel": "weight", "embeddings": "weight", "gamma": "weight", "beta": "bias", "bias": "bias"}


_MIXED_POLICIES = ("mixed_float16", "mixed_bfloat16")


def dtype_policy(dtype: Any) -> str:
    """A Keras dtype policy name: None -> Keras' global policy (``keras.config.set_dtype_policy`` /
    ``keras.mixed_precision.set_global_policy``, "float32" unless set); a Keras ``DTypePolicy`` -> its name;
    ``"mixed_float16"`` / ``"mixed_bfloat16"`` (float32 variables, half-precision compute) as they are; a string or a
    numpy, TF, torch or JAX dtype -> ``"float32"``, ``"float16"`` or ``"bfloat16"``."""
    if dtype is None:
        dtype = keras.config.dtype_policy()
    if isinstance(dtype, keras.DTypePolicy):
        dtype = dtype.name
    if isinstance(dtype, str) and dtype in _MIXED_POLICIES:
        return dtype
    return dtype_name(dtype)


def _is_nested_numbers(x) -> bool:
    """A (nested) Python list of numbers: token ids, not a list of inputs."""
    while isinstance(x, (list, tuple)) and x:
        x = x[0]
    return isinstance(x, (int, float, np.integer, np.floating))


def unpack_inputs(model, call, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The reference TF's calling conventions: the inputs as keywords, or as a dict, or as a list/tuple in the
    signature's (the reference's) order given as the first argument (how Keras ``fit``/``predict`` pass them).
    Returns the positional and keyword arguments for ``call``."""
    if not args or not isinstance(args[0], (Mapping, list, tuple)) or _is_nested_numbers(args[0]):
        return args, kwargs
    names = [n for n in inspect.signature(call).parameters if n != "self"]
    first, rest = args[0], args[1:]
    if isinstance(first, Mapping):
        given = dict(first)
    else:
        if len(first) > len(names):
            raise ValueError(f"{type(model).__name__} takes at most {len(names)} inputs, got {len(first)}")
        given = dict(zip(names, first))
    given.update(zip(names[1:], rest))  # further positional arguments follow the signature
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ValueError(f"{type(model).__name__} got unexpected inputs {unknown}; expected some of {names}")
    both = sorted(set(given) & set(kwargs))
    if both:
        raise ValueError(f"{type(model).__name__} got {both} both in the inputs and as keywords")
    return (), {**given, **kwargs}


def _as_tensor(x, dtype=None):
    if x is None:
        return None
    if isinstance(x, np.ndarray) and dtype is None and x.dtype == np.float64:
        dtype = tf.float32
    return tf.convert_to_tensor(x, dtype=dtype) if not tf.is_tensor(x) else (x if dtype is None else tf.cast(x, dtype))


def _as_float32(variable) -> np.ndarray:
    return np.asarray(tf.cast(tf.convert_to_tensor(variable), tf.float32).numpy())


def _replace_variable(layer: keras.layers.Layer, attribute: str, values: np.ndarray) -> None:
    """Give ``layer.<attribute>`` a variable of another shape, at the same Keras path and in the same place of the
    layer's variables (Keras variables cannot change shape)."""
    old = getattr(layer, attribute)
    with contextlib.ExitStack() as scopes:
        for part in old.path.split("/")[:-1]:
            scopes.enter_context(keras.name_scope(part))
        new = keras.Variable(values.astype(np.float32), name=old.name, dtype=old.dtype, trainable=old.trainable)
    variables = layer._trainable_variables if old.trainable else layer._non_trainable_variables
    index = next(i for i, v in enumerate(variables) if v is old)
    setattr(layer, attribute, new)  # Keras tracks the new variable (appended) ...
    del variables[next(i for i, v in enumerate(variables) if v is new)]  # (by identity: == is elementwise)
    variables[index] = new  # ... which takes the old one's place


_SAVED_MODEL_ENTRIES = {"saved_model.pb", "saved_model.pbtxt", "fingerprint.pb", "keras_metadata.pb", "variables",
                        "assets"}


def _replaceable_saved_model(path: str) -> None:
    """An earlier SavedModel (a directory of SavedModel entries only) may be replaced by a new one; anything else
    at its path is not ours to delete."""
    entries = set(os.listdir(path)) if os.path.isdir(path) and not os.path.islink(path) else set()
    if not entries & {"saved_model.pb", "saved_model.pbtxt"} or entries - _SAVED_MODEL_ENTRIES:
        raise FileExistsError(f"{path} exists and is not a SavedModel: refusing to replace it")


_LABEL_OUTPUTS = {"labels": "logits", "start_positions": "start_logits", "end_positions": "end_logits"}


def _snake_case(name: str) -> str:
    return keras.src.utils.naming.to_snake_case(name)


class TFDebertaV2PreTrainedModel(keras.Model):
    """Base of every TF DeBERTa-v2 model: ``from_pretrained``, ``from_config``, ``save_pretrained``."""

    task = "base"
    base_model_prefix = "deberta"
    main_input_name = "input_ids"

    def __init__(self, config: DebertaV2Config, dtype: Any = None, name: Optional[str] = None, **kwargs):
        super().__init__(name=name or _snake_case(type(self).__name__), dtype=dtype_policy(dtype), **kwargs)
        self.config = config.validate()  # the one aggregated ConfigError, before any layer is built
        check_memory(self.config, self.task, self.variable_dtype, "tf")  # refused before any variable is allocated
        self._allow_non_tensor_positional_args = True  # a list of inputs may hold None and flags (reference order)

    def __call__(self, *args, **kwargs):
        """Keras' call, after unpacking a dict or list/tuple of inputs (:func:`unpack_inputs`)."""
        args, kwargs = unpack_inputs(self, self.call, args, kwargs)
        return super().__call__(*args, **kwargs)

    # ---------------------------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: DebertaV2Config | dict, dtype: Any = None, seed: Optional[int] = None):
        """A randomly initialised model (normal(0, initializer_range) weights, as the reference). ``config`` may be
        a DebertaV2Config, its dict, or what :meth:`get_config` returned (the Keras convention)."""
        name = None
        if isinstance(config, dict) and "deberta_config" in config:  # from get_config (Keras serialization)
            dtype = config.get("dtype") if dtype is None else dtype
            dtype = dtype.get("config", {}).get("name") if isinstance(dtype, dict) else dtype
            name, config = config.get("name"), config["deberta_config"]
        if isinstance(config, dict):
            config = DebertaV2Config.from_dict(config)
        if seed is not None:
            keras.utils.set_random_seed(seed)
        return cls(config, dtype=dtype, name=name)

    def get_config(self) -> dict:
        """Keras serialization (``.keras`` files, ``keras.models.clone_model``): the DeBERTa config, the dtype policy
        and the name; :meth:`from_config` rebuilds the model from it."""
        return {"name": self.name, "dtype": self.dtype_policy.name, "trainable": self.trainable,
                "deberta_config": self.config.to_dict()}

    # ---------------------------------------------------------------------------------------------------------
    # Keras training: compile(optimizer) without a loss trains on the model's own loss, labels given in the input
    # dict or as ``y`` (a dict of label names, or the one label array), as the reference TF models do.
    def _label_names(self) -> list[str]:
        names = inspect.signature(self.call).parameters
        return [n for n in ("labels", "start_positions", "end_positions") if n in names]

    def _uses_own_loss(self) -> bool:
        return getattr(self, "_compile_loss", None) is None

    def _labels_into_inputs(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if self._uses_own_loss() and y is not None and isinstance(x, Mapping):
            names = self._label_names()
            if isinstance(y, Mapping):
                x, y = {**x, **{k: v for k, v in y.items() if k in names}}, None
            elif len(names) == 1:
                x, y = {**x, names[0]: y}, None
        return keras.utils.pack_x_y_sample_weight(x, y, sample_weight)

    def train_step(self, data):
        return super().train_step(self._labels_into_inputs(data))

    def test_step(self, data):
        return super().test_step(self._labels_into_inputs(data))

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """With the model's own loss the labels are in ``x``: compiled metrics compare each label with its output,
        as the reference TF does (``labels`` -> ``logits``; question answering: ``start_positions`` ->
        ``start_logits`` and ``end_positions`` -> ``end_logits``, both into the same metrics)."""
        if not (self._uses_own_loss() and isinstance(x, Mapping) and isinstance(y_pred, Mapping)):
            return super().compute_metrics(x, y, y_pred, sample_weight)
        if self._compile_metrics is not None:
            for name in self._label_names():
                if x.get(name) is not None:
                    self._compile_metrics.update_state(x[name], y_pred[_LABEL_OUTPUTS[name]], sample_weight)
        return self.get_metrics_result()

    def predict_step(self, data):
        out = super().predict_step(data)
        return dict(out) if isinstance(out, ModelOutput) else out  # a plain dict: Keras concatenates the batches

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if self._uses_own_loss() and isinstance(y_pred, Mapping) and y_pred.get("loss") is not None:
            loss = tf.reduce_mean(tf.cast(y_pred["loss"], tf.float32))
            for extra in self.losses:
                loss = loss + tf.cast(extra, tf.float32)
            return loss
        return super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, config: Any = None,
                        dtype: Any = None, ignore_mismatched_sizes: bool = False, output_loading_info: bool = False,
                        **config_overrides: Any):
        """Load a checkpoint directory (``config.json`` + weights: ``tf_model.h5`` first, then any other supported
        file) or a weights file (then ``config`` is required). ``dtype`` is the variables' dtype (``"auto"``: the
        checkpoint's); ``ignore_mismatched_sizes=True`` re-initialises tensors of another shape;
        ``output_loading_info=True`` returns ``(model, {"missing_keys", "unexpected_keys", "mismatched_keys",
        "error_msgs"})`` as the reference."""
        cfg = resolve_config(pretrained_model_name_or_path, config)
        if config_overrides:
            cfg = DebertaV2Config.from_dict(cfg.to_dict(), **config_overrides)
        with open_checkpoint(pretrained_model_name_or_path, cls.task, "tf", config=cfg,
                             ignore_mismatched_sizes=ignore_mismatched_sizes) as checkpoint:
            dtype = dtype_name(dtype)
            if dtype == "auto":
                dtype = checkpoint.stored_dtype
            with _weights_from_checkpoint(set(checkpoint.mapping) >= set(schema.expected_shapes(cfg, cls.task))):
                model = cls(cfg, dtype=dtype)
            model._assign_arrays(checkpoint.arrays(stacklevel=4))  # each tensor as it is read
        model.loading_report = checkpoint.report
        model.weights_path = checkpoint.weights_path
        return (model, loading_info(checkpoint.report)) if output_loading_info else model

    # ---------------------------------------------------------------------------------------------------------
    # The reference's model methods: embeddings, parameter counts, gradient checkpointing (``.dtype`` is Keras'
    # own: the variables')
    def get_input_embeddings(self) -> Embedding:
        """The word-embedding layer (its table: ``.embeddings``, or ``.weight`` as the reference TF names it)."""
        return getattr(self, self.base_model_prefix, self).embeddings.word_embeddings

    def set_input_embeddings(self, value) -> None:
        """Replace the word-embedding table by ``value`` ([vocab, E]: a variable, tensor or array as in the
        reference TF, or an embedding layer) and set ``config.vocab_size``; the variable keeps its Keras path. A
        tied masked-LM decoder reads this table, so it stays tied."""
        table = value.embeddings if isinstance(value, Embedding) else value
        layer = self.get_input_embeddings()
        if len(table.shape) != 2 or table.shape[1] != layer.embeddings.shape[1]:
            raise ValueError(f"set_input_embeddings: expected a [vocab, {layer.embeddings.shape[1]}] table, got shape "
                             f"{list(table.shape)}")
        _replace_variable(layer, "embeddings", _as_float32(table))
        self.config.vocab_size = int(table.shape[0])

    def get_lm_head(self) -> Optional[keras.layers.Layer]:
        """The masked-LM prediction head (the layer holding the output ``bias``); None for the other models."""
        if self.task != "masked-lm":
            return None
        return self.cls.predictions if self.config.legacy else self.lm_predictions.lm_head

    def get_output_embeddings(self):
        """The masked-LM decoder: the untied legacy head's own ``decoder``, else the word embeddings it is tied to;
        None for the other models."""
        if self.task != "masked-lm":
            return None
        if self.config.legacy and self.cls.predictions.decoder is not None:
            return self.cls.predictions.decoder
        return self.get_input_embeddings()

    def set_output_embeddings(self, value) -> None:
        """Replace the masked-LM decoder's [vocab, E] weights: the word embeddings when the decoder is tied to them
        (as the reference TF), else the untied decoder's own (a [vocab, E] table or a Dense layer)."""
        decoder = self.get_output_embeddings()
        if decoder is None or isinstance(decoder, Embedding):
            if decoder is not None:
                self.set_input_embeddings(value)
            return
        kernel = value.kernel if isinstance(value, Dense) else tf.transpose(_as_tensor(value))  # [E, vocab]
        if kernel.shape[0] != decoder.kernel.shape[0]:
            raise ValueError(f"set_output_embeddings: expected a [vocab, {decoder.kernel.shape[0]}] table, got shape "
                             f"{list(reversed(kernel.shape))}")
        _replace_variable(decoder, "kernel", _as_float32(kernel))

    def get_bias(self) -> Optional[dict[str, Any]]:
        """``{"bias": the masked-LM output bias}`` as a ``tf.Variable`` (the storage of the Keras variable ``bias``:
        assigning it sets the model's), as the reference TF; None for the other models."""
        head = self.get_lm_head()
        return None if head is None else {"bias": head.bias.value}

    def set_bias(self, value: Mapping[str, Any]) -> None:
        """Replace the masked-LM output bias by ``value["bias"]`` ([vocab])."""
        head = self.get_lm_head()
        if head is not None:
            _replace_variable(head, "bias", _as_float32(value["bias"]))

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: Optional[dict] = None) -> None:
        """Recompute each encoder layer in the backward pass (``tf.recompute_grad``): the same gradients, less
        memory, as the PyTorch and Flax models' method of this name."""
        getattr(self, self.base_model_prefix, self).encoder.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        getattr(self, self.base_model_prefix, self).encoder.gradient_checkpointing = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        return getattr(self, self.base_model_prefix, self).encoder.gradient_checkpointing

    def resize_token_embeddings(self, new_num_tokens: Optional[int] = None, pad_to_multiple_of: Optional[int] = None,
                                mean_resizing: bool = True, seed: int = 0) -> Embedding:
        """Resize the word embeddings (and the masked-LM bias, and an untied decoder) to ``new_num_tokens`` rows and
        set ``config.vocab_size``, as the PyTorch model and the reference: the first rows are kept; new rows are drawn
        around the old rows' mean (``mean_resizing``) or normal(0, initializer_range), from ``seed``. The resized
        variables keep their paths (so saving and ``canonical_variables`` follow)."""
        layer = self.get_input_embeddings()
        if new_num_tokens is None and pad_to_multiple_of is None:
            return layer
        table = _as_float32(layer.embeddings)
        new_num_tokens = table.shape[0] if new_num_tokens is None else int(new_num_tokens)
        if pad_to_multiple_of is not None:
            new_num_tokens = -(-new_num_tokens // pad_to_multiple_of) * pad_to_multiple_of
        rng, std = np.random.default_rng(seed), self.config.initializer_range
        _replace_variable(layer, "embeddings", resized_rows(table, new_num_tokens, std, mean_resizing, rng))
        if self.task == "masked-lm":
            head = self.cls.predictions if self.config.legacy else self.lm_predictions.lm_head
            _replace_variable(head, "bias", resized_rows(_as_float32(head.bias), new_num_tokens, 0.0, mean_resizing,
                                                         rng))
            decoder = head.decoder if self.config.legacy else None
            if decoder is not None:  # kernel [E, V]: rows of the canonical [V, E]
                kernel = resized_rows(_as_float32(decoder.kernel).T, new_num_tokens, std, mean_resizing, rng)
                _replace_variable(decoder, "kernel", np.ascontiguousarray(kernel.T))
        self.config.vocab_size = new_num_tokens
        return layer

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Number of parameters; ``exclude_embeddings`` leaves out the embedding tables, as the reference."""
        return int(sum(np.prod(v.shape) for name, v in self.canonical_variables().items()
                       if not (exclude_embeddings and schema.param_kind(name) == "embedding")
                       and (v.trainable or not only_trainable)))

    # ---------------------------------------------------------------------------------------------------------
    def canonical_variables(self) -> dict[str, Any]:
        """Canonical name -> Keras variable, from the variables' paths (the model name dropped)."""
        out = {}
        for variable in self.weights:
            module, _, leaf = variable.path.split("/", 1)[1].rpartition("/")
            name = f"{module.replace('/', '.')}.{_CANONICAL_LEAF[leaf]}"
            out[name] = variable
        return out

    def check_variables(self) -> None:
        """The variables are exactly the schema's names and shapes (a guard against drift)."""
        expected = schema.expected_shapes(self.config, self.task)
        variables = self.canonical_variables()
        drift = set(variables) ^ set(expected)
        wrong = [n for n in set(variables) & set(expected)
                 if tuple(variables[n].shape) != schema.framework_shape(n, expected[n], "tf")]
        if drift or wrong:
            raise RuntimeError(f"variables differ from the schema: names {sorted(drift)}, shapes {sorted(wrong)}")

    def load_canonical(self, arrays: dict[str, np.ndarray]) -> None:
        """Assign canonical (PyTorch-layout) arrays to the variables of the same names."""
        self._assign_arrays(arrays.items())

    def _assign_arrays(self, arrays: Iterable[tuple[str, np.ndarray]]) -> None:
        variables = self.canonical_variables()
        for name, array in arrays:
            variable = variables[name]
            value = np.asarray(schema.to_framework(name, array, "tf")).astype(variable.dtype, copy=False)
            rows = max(1, _ASSIGN_BLOCK_BYTES // max(1, value[0].nbytes)) if value.ndim else 0
            if value.ndim == 0 or value.shape[0] <= rows:
                variable.assign(value)
            else:  # in blocks of rows: TensorFlow's copies of the value are one block each, not the whole tensor
                for start in range(0, value.shape[0], rows):
                    block = value[start:start + rows]
                    # the raw op returns nothing: no read of the variable that would make the next block copy it
                    tf.raw_ops.ResourceStridedSliceAssign(
                        ref=variable.value.handle, begin=[start] + [0] * (value.ndim - 1),
                        end=[start + len(block), *value.shape[1:]], strides=[1] * value.ndim, value=block)

    def canonical_state(self) -> dict[str, np.ndarray]:
        """Canonical name -> numpy array in canonical layout (float32 copies of bf16 variables)."""
        out = {}
        for name, variable in self.canonical_variables().items():
            value = np.asarray(variable.numpy())
            if value.dtype.name == "bfloat16":
                value = value.astype(np.float32)
            out[name] = schema.contiguous(schema.from_framework(name, value, "tf"))
        return out

    def save_pretrained(self, save_directory: str | os.PathLike, saved_model: bool = False, version: int = 1,
                        signatures: Any = None, format: str = "tf_h5") -> None:
        """Write ``config.json`` and ``tf_model.h5`` (the reference's layout), or ``model.weights.h5`` (Keras 3)
        with ``format="keras_h5"``. Tensors are streamed one at a time. ``saved_model=True`` also writes a
        TensorFlow SavedModel into ``<save_directory>/saved_model/<version>`` with the reference's signatures
        (:meth:`save_saved_model`; ``signatures`` replaces them)."""
        self.check_variables()
        variables = self.canonical_variables()
        expected = schema.expected_shapes(self.config, self.task)
        infos = {n: TensorInfo(expected[n], np.dtype(variables[n].dtype)) for n in expected}

        def get(name: str) -> np.ndarray:
            return schema.from_framework(name, np.asarray(variables[name].numpy()), "tf")

        if saved_model:
            self.save_saved_model(os.path.join(os.fspath(save_directory), "saved_model", str(version)), signatures)
        save_checkpoint(save_directory, self.config, self.task, "tf", infos, get, format)

    # ---------------------------------------------------------------------------------------------------------
    # Serving (the reference TF's input_signature / serving / serving_output, saved by save_pretrained's
    # saved_model=True)
    @property
    def input_signature(self) -> dict[str, tf.TensorSpec]:
        """The serving inputs, as the reference: ``input_ids``, ``attention_mask``, ``token_type_ids``, int32
        [batch, seq] ([batch, choices, seq] for multiple choice), every size dynamic."""
        rank = 3 if self.task == "multiple-choice" else 2
        return {name: tf.TensorSpec([None] * rank, tf.int32, name=name)
                for name in ("input_ids", "attention_mask", "token_type_ids")}

    def serving_output(self, output: ModelOutput) -> dict[str, tf.Tensor]:
        """The reference's serving output: the fields of ``output``, with ``hidden_states`` / ``attentions`` only
        when the config asks for them, each stacked into one tensor ([layers + 1, ...] / [layers, ...])."""
        out = {}
        for key, value in output.items():
            if key in ("hidden_states", "attentions"):
                if not getattr(self.config, f"output_{key}", False):
                    continue
                value = tf.stack(value)
            out[key] = value
        return out

    def serving(self, inputs: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """The model on a dict of serving inputs (:attr:`input_signature`), in inference mode."""
        return self.serving_output(self(**inputs, return_dict=True, training=False))

    def save_saved_model(self, directory: str | os.PathLike, signatures: Any = None) -> str:
        """Write a TensorFlow SavedModel of the model into ``directory``, loadable without deberta_xf
        (``tf.saved_model.load(directory).signatures["serving_default"](input_ids=..., ...)``). Its signatures are
        the reference's: ``serving_default`` on :attr:`input_signature` (int32) and ``int64_serving`` on the same
        inputs as int64, each returning :meth:`serving_output`'s dict; ``signatures`` (a dict of concrete
        functions, or one) replaces them. Returns the directory."""
        directory = os.fspath(directory)
        module = tf.Module()
        module.model = self  # tracks the variables
        module.serving = tf.function(self.serving)
        if signatures is None:
            int64_spec = {k: tf.TensorSpec(s.shape, tf.int64, name=s.name) for k, s in self.input_signature.items()}
            signatures = {"serving_default": module.serving.get_concrete_function(self.input_signature),
                          "int64_serving": module.serving.get_concrete_function(int64_spec)}
        # written beside ``directory`` and renamed onto it when complete: a failure leaves no partial SavedModel and
        # an earlier SavedModel there as it was; anything else at that path is refused, never replaced
        with atomic_directory(directory, force=True, replaceable=_replaceable_saved_model) as tmp:
            tf.saved_model.save(module, tmp, signatures=signatures)
        return directory

    # ---------------------------------------------------------------------------------------------------------
    def _prepare(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds):
        if input_ids is not None and inputs_embeds is not None:
            raise ValueError("You cannot specify both input_ids and inputs_embeds at the same time")
        if input_ids is None and inputs_embeds is None:
            raise ValueError("You have to specify either input_ids or inputs_embeds")
        input_ids = _as_tensor(input_ids)
        inputs_embeds = _as_tensor(inputs_embeds, self.compute_dtype) if inputs_embeds is not None else None
        if attention_mask is None:
            shape = tf.shape(input_ids) if input_ids is not None else tf.shape(inputs_embeds)[:-1]
            attention_mask = tf.ones(shape, dtype=tf.int32)
        return input_ids, _as_tensor(attention_mask), _as_tensor(token_type_ids), _as_tensor(position_ids), \
            inputs_embeds


# =============================================================================================================
# The encoder model
class TFDebertaV2Model(TFDebertaV2PreTrainedModel):
    def __init__(self, config: DebertaV2Config, dtype: Any = None, name: Optional[str] = None, **kwargs):
        super().__init__(config, dtype=dtype, name=name, **kwargs)
        with keras.name_scope(self.name):
            self.embeddings = TFDebertaV2Embeddings(config, name="embeddings", dtype=self.dtype_policy)
            self.encoder = TFDebertaV2Encoder(config, name="encoder", dtype=self.dtype_policy)
        self.built = True

    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
             output_attentions=None, output_hidden_states=None, return_dict=None, training=None):
        output_attentions, output_hidden_states, return_dict = output_flags(
            self.config, output_attentions, output_hidden_states, return_dict)
        training = bool(training)
        input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds = self._prepare(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds)
        pair_mask, input_mask = attention_masks(attention_mask)
        embedding_output = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids,
                                           position_ids=position_ids, input_mask=input_mask,
                                           inputs_embeds=inputs_embeds, training=training)
        return finish(self.encoder(embedding_output, pair_mask, input_mask, output_hidden_states=output_hidden_states,
                                   output_attentions=output_attentions, training=training), return_dict)


class _TaskModel(TFDebertaV2PreTrainedModel, abc.ABC):
    """A task model: the encoder under ``deberta`` plus a head created by ``build_head``."""

    def __init__(self, config: DebertaV2Config, dtype: Any = None, name: Optional[str] = None, **kwargs):
        super().__init__(config, dtype=dtype, name=name, **kwargs)
        with keras.name_scope(self.name):
            self.deberta = TFDebertaV2Model(config, dtype=self.dtype_policy, name="deberta")
            self.build_head(config, self.dtype_policy)
        self.built = True

    @abc.abstractmethod
    def build_head(self, config: DebertaV2Config, dt) -> None:
        """Create the head's layers (each task class defines its own)."""

    def _encode(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, output_attentions,
                output_hidden_states, training):
        return self.deberta(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                            position_ids=position_ids, inputs_embeds=inputs_embeds,
                            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                            return_dict=True, training=training)


# =============================================================================================================
# Heads
class TFLegacyDebertaV2PredictionHeadTransform(keras.layers.Layer):
    def __init__(self, config: DebertaV2Config, **kwargs):
        super().__init__(**kwargs)
        E, dt = config.embedding_dim, self.dtype_policy
        with keras.name_scope(self.name):
            self.dense = Dense(config.hidden_size, E, std=config.initializer_range, name="dense", dtype=dt)
            self.LayerNorm = LayerNorm(E, config.layer_norm_eps, name="LayerNorm", dtype=dt)
        self.act = ACT2FN[config.hidden_act]
        self.built = True

    def call(self, hidden_states):
        return self.LayerNorm(self.act(self.dense(hidden_states)))


def _tied_decoder(hidden_states, word_embeddings, bias):
    """hidden [..., E] @ word_embeddings[V, E]^T + bias"""
    shape = tf.shape(hidden_states)
    logits = tf.matmul(tf.reshape(hidden_states, [-1, shape[-1]]), word_embeddings, transpose_b=True)
    logits = tf.nn.bias_add(logits, bias)
    return tf.reshape(logits, tf.concat([shape[:-1], [-1]], 0))


class TFLegacyDebertaV2LMPredictionHead(keras.layers.Layer):
    """``cls.predictions``: transform (H -> E) then the decoder, tied to the word embeddings unless the config says
    ``tie_word_embeddings: false`` (then its own ``decoder``), plus ``bias``."""

    def __init__(self, config: DebertaV2Config, **kwargs):
        super().__init__(**kwargs)
        self.bias = self.add_weight(name="bias", shape=(config.vocab_size,), initializer="zeros")
        with keras.name_scope(self.name):
            self.transform = TFLegacyDebertaV2PredictionHeadTransform(config, name="transform",
                                                                      dtype=self.dtype_policy)
            self.decoder = None if schema.ties_decoder(config) else Dense(
                config.embedding_dim, config.vocab_size, use_bias=False, std=config.initializer_range, name="decoder",
                dtype=self.dtype_policy)
        self.built = True

    def call(self, hidden_states, word_embeddings):
        if self.decoder is not None:
            return tf.nn.bias_add(self.decoder(self.transform(hidden_states)), self.bias)
        return _tied_decoder(self.transform(hidden_states), word_embeddings, self.bias)


class TFLegacyDebertaV2OnlyMLMHead(keras.layers.Layer):
    def __init__(self, config: DebertaV2Config, **kwargs):
        super().__init__(**kwargs)
        with keras.name_scope(self.name):
            self.predictions = TFLegacyDebertaV2LMPredictionHead(config, name="predictions", dtype=self.dtype_policy)
        self.built = True

    def call(self, sequence_output, word_embeddings):
        return self.predictions(sequence_output, word_embeddings)


class TFDebertaV2LMPredictionHead(keras.layers.Layer):
    """``lm_predictions.lm_head`` (the published checkpoints' layout): LN(act(dense(h))) @ W_emb^T + bias."""

    def __init__(self, config: DebertaV2Config, **kwargs):
        super().__init__(**kwargs)
        H, dt = config.hidden_size, self.dtype_policy
        self.bias = self.add_weight(name="bias", shape=(config.vocab_size,), initializer="zeros")
        with keras.name_scope(self.name):
            self.dense = Dense(H, H, std=config.initializer_range, name="dense", dtype=dt)
            self.LayerNorm = LayerNorm(H, config.layer_norm_eps, name="LayerNorm", dtype=dt)
        self.act = ACT2FN[config.hidden_act]
        self.built = True

    def call(self, hidden_states, word_embeddings):
        hidden_states = self.LayerNorm(self.act(self.dense(hidden_states)))
        return _tied_decoder(hidden_states, word_embeddings, self.bias)


class TFDebertaV2OnlyMLMHead(keras.layers.Layer):
    def __init__(self, config: DebertaV2Config, **kwargs):
        super().__init__(**kwargs)
        with keras.name_scope(self.name):
            self.lm_head = TFDebertaV2LMPredictionHead(config, name="lm_head", dtype=self.dtype_policy)
        self.built = True

    def call(self, sequence_output, word_embeddings):
        return self.lm_head(sequence_output, word_embeddings)


class TFContextPooler(keras.layers.Layer):
    """The first token's hidden state -> dropout -> dense -> activation."""

    def __init__(self, config: DebertaV2Config, **kwargs):
        super().__init__(**kwargs)
        with keras.name_scope(self.name):
            self.dense = Dense(config.pooler_size, config.pooler_size, std=config.initializer_range, name="dense",
                               dtype=self.dtype_policy)
        self.dropout_rate = config.pooler_dropout
        self.act = ACT2FN[config.pooler_hidden_act]
        self.built = True

    def call(self, hidden_states, training=False):
        return self.act(self.dense(dropout(hidden_states[:, 0], self.dropout_rate, training)))


def _with_encoder_outputs(outputs: ModelOutput, **fields) -> ModelOutput:
    return ModelOutput(**fields, hidden_states=outputs.hidden_states, attentions=outputs.attentions)


# Losses, shaped as the reference TF returns them (its hf_compute_loss; computed in float32): one loss per example
# [B] for sequence classification, question answering and multiple choice, the masked mean reshaped to (1,) for
# masked LM and token classification. Keras reduces them to their mean (compute_loss below), and that mean is the
# reference PyTorch loss: where the reference TF would fail (a label out of range, which PyTorch ignores), the
# ignored rows are 0 and the kept ones are scaled by rows / kept, so the mean is still PyTorch's mean over the kept
# rows. Parity and deberta_xf.compare compare that mean with the other frameworks' scalar.
def _per_example(losses, keep, none_kept: float = float("nan")):
    """[N] losses, ``keep`` [N] bool: kept rows scaled by N / kept, ignored rows 0 (all ``none_kept`` if none is
    kept: nan as PyTorch's cross entropy, 0 for sequence classification's negative labels)."""
    keep = tf.cast(keep, tf.float32)
    count = tf.reduce_sum(keep)
    rows = tf.cast(tf.size(keep), tf.float32)
    scaled = tf.where(keep > 0, losses * rows / tf.maximum(count, 1.0), 0.0)
    return tf.where(count > 0, scaled, tf.fill(tf.shape(scaled), none_kept))


def _sparse_cross_entropy(logits, labels):
    """Per-row cross entropy of logits [N, C] and integer labels [N] (any label; rows with a label outside [0, C)
    give 0: the caller masks them)."""
    labels = tf.cast(labels, tf.int32)
    inside = (labels >= 0) & (labels < tf.shape(logits)[-1])
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.where(inside, labels, 0),
                                                            logits=tf.cast(logits, tf.float32))
    return tf.where(inside, losses, 0.0)


def masked_mean_cross_entropy(logits, labels, keep):
    """The reference TF's masked-LM / token-classification loss: the mean over the kept labels, shape (1,)."""
    logits = tf.reshape(logits, tf.concat([[-1], tf.shape(logits)[-1:]], 0))
    labels, keep = tf.reshape(labels, [-1]), tf.cast(tf.reshape(keep, [-1]), tf.float32)
    loss = tf.reduce_sum(_sparse_cross_entropy(logits, labels) * keep) / tf.reduce_sum(keep)
    return tf.reshape(loss, (1,))


def cross_entropy_per_example(logits, labels, ignore_index: int = -100):
    """[B] cross entropy of logits [B, C] and labels [B]; rows labelled ``ignore_index`` are ignored (see
    :func:`_per_example`)."""
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    return _per_example(_sparse_cross_entropy(logits, labels), tf.not_equal(labels, ignore_index))


def sequence_classification_loss(config: DebertaV2Config, logits, labels):
    """One loss per example [B], as the reference TF (mean squared error for ``num_labels == 1``, else cross
    entropy), under the reference PyTorch's rules (``problem_type``, soft labels, negative labels ignored)."""
    num_labels = config.num_labels
    logits32 = tf.cast(logits, tf.float32)
    batch = tf.shape(logits32)[0]
    problem_type = config.problem_type
    if problem_type is None and num_labels == 1:
        problem_type = "regression"
    if problem_type == "regression":
        labels = tf.reshape(tf.cast(labels, tf.float32), [batch, -1])
        return tf.reduce_mean(tf.square(tf.reshape(logits32, [batch, -1]) - labels), axis=-1)
    if problem_type == "multi_label_classification":
        labels = tf.cast(labels, tf.float32)
        return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits32), axis=-1)
    if problem_type is None and labels.shape.rank == 2 and labels.shape[-1] != 1:  # soft labels
        return -tf.reduce_sum(tf.nn.log_softmax(logits32, axis=-1) * tf.cast(labels, tf.float32), axis=-1)
    if problem_type is None:  # rows with a negative label are ignored, 0 when none is left
        labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
        return _per_example(_sparse_cross_entropy(logits32, labels), labels >= 0, none_kept=0.0)
    return cross_entropy_per_example(logits32, labels)  # single_label_classification


def _loss_dtype(loss, logits):
    return tf.cast(loss, logits.dtype)


class TFDebertaV2ForMaskedLM(_TaskModel):
    task = "masked-lm"

    def build_head(self, config: DebertaV2Config, dt) -> None:
        if config.legacy:
            self.cls = TFLegacyDebertaV2OnlyMLMHead(config, name="cls", dtype=dt)
        else:
            schema.expected_shapes(config, self.task)  # raises for embedding_size != hidden_size
            self.lm_predictions = TFDebertaV2OnlyMLMHead(config, name="lm_predictions", dtype=dt)

    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
             output_attentions=None, output_hidden_states=None, return_dict=None, labels=None, training=None):
        output_attentions, output_hidden_states, return_dict = output_flags(
            self.config, output_attentions, output_hidden_states, return_dict)
        outputs = self._encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                               output_attentions, output_hidden_states, training)
        word_embeddings = tf.convert_to_tensor(self.deberta.embeddings.word_embeddings.embeddings)
        head = self.cls if self.config.legacy else self.lm_predictions
        logits = head(outputs.last_hidden_state, word_embeddings)
        loss = None
        if labels is not None:
            labels = _as_tensor(labels)  # the reference TF: labels != -100 count, other negatives as label 0
            loss = _loss_dtype(masked_mean_cross_entropy(logits, tf.nn.relu(labels), labels != -100), logits)
        return finish(_with_encoder_outputs(outputs, loss=loss, logits=logits), return_dict)


class TFDebertaV2ForSequenceClassification(_TaskModel):
    task = "sequence-classification"

    def build_head(self, config: DebertaV2Config, dt) -> None:
        self.pooler = TFContextPooler(config, name="pooler", dtype=dt)
        self.classifier = Dense(config.hidden_size, config.num_labels, std=config.initializer_range,
                                name="classifier", dtype=dt)
        self.dropout_rate = config.classifier_dropout

    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
             output_attentions=None, output_hidden_states=None, return_dict=None, labels=None, training=None):
        output_attentions, output_hidden_states, return_dict = output_flags(
            self.config, output_attentions, output_hidden_states, return_dict)
        training = bool(training)
        outputs = self._encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                               output_attentions, output_hidden_states, training)
        pooled = self.pooler(outputs.last_hidden_state, training=training)
        logits = self.classifier(dropout(pooled, self.dropout_rate, training))
        loss = None
        if labels is not None:
            loss = _loss_dtype(sequence_classification_loss(self.config, logits, _as_tensor(labels)), logits)
        return finish(_with_encoder_outputs(outputs, loss=loss, logits=logits), return_dict)


class TFDebertaV2ForTokenClassification(_TaskModel):
    task = "token-classification"

    def build_head(self, config: DebertaV2Config, dt) -> None:
        self.classifier = Dense(config.hidden_size, config.num_labels, std=config.initializer_range,
                                name="classifier", dtype=dt)
        self.dropout_rate = config.hidden_dropout_prob

    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
             output_attentions=None, output_hidden_states=None, return_dict=None, labels=None, training=None):
        output_attentions, output_hidden_states, return_dict = output_flags(
            self.config, output_attentions, output_hidden_states, return_dict)
        training = bool(training)
        outputs = self._encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                               output_attentions, output_hidden_states, training)
        logits = self.classifier(dropout(outputs.last_hidden_state, self.dropout_rate, training))
        loss = None
        if labels is not None:
            labels = _as_tensor(labels)  # the reference TF: labels >= 0 count (-100 and -1 are ignored)
            loss = _loss_dtype(masked_mean_cross_entropy(logits, labels, labels >= 0), logits)
        return finish(_with_encoder_outputs(outputs, loss=loss, logits=logits), return_dict)


class TFDebertaV2ForQuestionAnswering(_TaskModel):
    task = "question-answering"

    def build_head(self, config: DebertaV2Config, dt) -> None:
        self.qa_outputs = Dense(config.hidden_size, config.num_labels, std=config.initializer_range,
                                name="qa_outputs", dtype=dt)

    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
             output_attentions=None, output_hidden_states=None, return_dict=None, start_positions=None,
             end_positions=None, training=None):
        output_attentions, output_hidden_states, return_dict = output_flags(
            self.config, output_attentions, output_hidden_states, return_dict)
        outputs = self._encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                               output_attentions, output_hidden_states, training)
        logits = self.qa_outputs(outputs.last_hidden_state)
        start_logits, end_logits = tf.unstack(logits, num=self.config.num_labels, axis=-1)
        loss = None
        if start_positions is not None and end_positions is not None:
            ignored_index = tf.shape(start_logits)[1]  # positions outside the sequence are clamped here and ignored

            def span_loss(span_logits, positions):
                positions = tf.clip_by_value(tf.reshape(tf.cast(_as_tensor(positions), tf.int32), [-1]), 0,
                                             ignored_index)
                return cross_entropy_per_example(span_logits, positions, ignore_index=ignored_index)

            loss = _loss_dtype((span_loss(start_logits, start_positions) + span_loss(end_logits, end_positions)) / 2,
                               logits)
        return finish(_with_encoder_outputs(outputs, loss=loss, start_logits=start_logits,
                                            end_logits=end_logits), return_dict)


class TFDebertaV2ForMultipleChoice(_TaskModel):
    task = "multiple-choice"

    def build_head(self, config: DebertaV2Config, dt) -> None:
        self.pooler = TFContextPooler(config, name="pooler", dtype=dt)
        self.classifier = Dense(config.hidden_size, 1, std=config.initializer_range, name="classifier", dtype=dt)
        self.dropout_rate = config.classifier_dropout

    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
             output_attentions=None, output_hidden_states=None, return_dict=None, labels=None, training=None):
        output_attentions, output_hidden_states, return_dict = output_flags(
            self.config, output_attentions, output_hidden_states, return_dict)
        """Inputs are [batch, num_choices, seq] ([batch, num_choices, seq, E] for inputs_embeds)."""
        training = bool(training)
        input_ids, inputs_embeds = _as_tensor(input_ids), _as_tensor(inputs_embeds, self.compute_dtype) \
            if inputs_embeds is not None else None
        ref = input_ids if input_ids is not None else inputs_embeds
        num_choices = ref.shape[1] if ref.shape[1] is not None else tf.shape(ref)[1]

        def flat(x, tail: int = 1):
            if x is None:
                return None
            x = _as_tensor(x)
            return tf.reshape(x, tf.concat([[-1], tf.shape(x)[x.shape.rank - tail:]], 0))

        mask_tail = 2 if attention_mask is not None and _as_tensor(attention_mask).shape.rank == 4 else 1
        outputs = self._encode(flat(input_ids), flat(attention_mask, mask_tail), flat(token_type_ids),
                               flat(position_ids), flat(inputs_embeds, 2), output_attentions, output_hidden_states,
                               training)
        pooled = self.pooler(outputs.last_hidden_state, training=training)
        logits = self.classifier(dropout(pooled, self.dropout_rate, training))
        reshaped_logits = tf.reshape(logits, tf.stack([-1, num_choices]))
        loss = None
        if labels is not None:
            loss = _loss_dtype(cross_entropy_per_example(reshaped_logits, _as_tensor(labels)), logits)
        return finish(_with_encoder_outputs(outputs, loss=loss, logits=reshaped_logits), return_dict)


for _cls in (TFDebertaV2Model, TFDebertaV2ForMaskedLM, TFDebertaV2ForSequenceClassification,
             TFDebertaV2ForTokenClassification, TFDebertaV2ForQuestionAnswering, TFDebertaV2ForMultipleChoice):
    keras.saving.register_keras_serializable(package="deberta_xf")(_cls)  # .keras files name them

MODEL_CLASSES = {cls.task: cls for cls in (
    TFDebertaV2Model, TFDebertaV2ForMaskedLM, TFDebertaV2ForSequenceClassification,
    TFDebertaV2ForTokenClassification, TFDebertaV2ForQuestionAnswering, TFDebertaV2ForMultipleChoice)}
