"""DeBERTa-v2/v3 in Flax NNX, numerically matching transformers 4.57.6.

Mirrors ``deberta_xf.torch.modeling_deberta_v2`` class for class: embeddings -> relative positions -> disentangled
attention -> layer -> encoder (with the nGiE convolution of v2) -> task heads. The NNX attribute tree is the
canonical weight path (``model.deberta.encoder.layer[0].attention.self.query_proj.kernel`` is
``deberta.encoder.layer.0.attention.self.query_proj.weight``); only leaf names and layouts differ, and those come
from the schema's layout table, so state <-> canonical names is mechanical.

Parity choices: exact (erf) GELU for "gelu", the explicit tanh formula for "gelu_new", LayerNorm with the two-pass
variance and ``layer_norm_eps``, ``masked_fill(finfo.min)`` + softmax, and every matmul at
``Precision.HIGHEST`` in float32 (full fp32 on every backend, no TF32). ``dtype`` is the parameter dtype, as in
every framework (DESIGN §1; ``"auto"``: the checkpoint's), and by default the compute dtype too;
``compute_dtype`` computes in another one (Flax's own names: ``param_dtype`` / ``dtype``). Half-precision matmuls
use the backend's default precision.

The forward is jit-compilable: relative positions and gather indices are NumPy constants computed at trace time
from static shapes (``deberta_xf.relative_position``), and flags that change the output structure are Python bools.
``model.jit_call(**inputs)`` runs it through ``jax.jit`` over ``nnx.split(model)`` (``nnx.jit`` works as well).
"""

from __future__ import annotations

import copy
import functools
import math
import os
import secrets
from typing import Any, Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from deberta_xf import schema
from deberta_xf.configuration import DebertaV2Config
from deberta_xf.errors import CheckpointError
from deberta_xf.flax.fused_attention import fused_attention, position_tables
from deberta_xf.limits import check_memory
from deberta_xf.loading import (dtype_name, loading_info, open_checkpoint, resized_rows, resolve_config,
                                save_sharded)
from deberta_xf.outputs import ModelOutput, finish, output_flags
from deberta_xf.relative_position import attention_distance_window

FRAMEWORK = "flax"
HIGHEST = jax.lax.Precision.HIGHEST


def matmul_precision(dtype) -> Optional[jax.lax.Precision]:
    """Full fp32 for float32 compute (``dtype`` None); the backend's default for half-precision compute."""
    return HIGHEST if dtype is None or jnp.dtype(dtype) == jnp.float32 else None


def gelu_new(x: jax.Array) -> jax.Array:
    """The tanh approximation written out, as the reference's NewGELUActivation."""
    return 0.5 * x * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


ACT2FN = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),  # exact erf GELU (jax.nn.gelu defaults to tanh)
    "gelu_new": gelu_new,
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "linear": lambda x: x,
}


# ModelOutput is a dict subclass; as a pytree node, jax.jit / nnx.jit can return it from a traced forward.
def _flatten_output(out: ModelOutput):
    return tuple(out.values()), tuple(out.keys())


def _unflatten_output(keys, values) -> ModelOutput:
    out = ModelOutput()
    dict.update(out, zip(keys, values))  # keep every key, even if JAX passes placeholder leaves
    return out


try:
    jax.tree_util.register_pytree_node(ModelOutput, _flatten_output, _unflatten_output)
except ValueError:  # already registered (module reloaded)
    pass


class Static:
    """Holds a Python object as NNX static data. The graph definition (part of every nnx.jit cache key) must be
    hashable; a config or load report is not, so it is held here and hashed by identity. The modules read the
    config when they are built: editing ``model.config`` afterwards does not change a built model."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value

    def __repr__(self) -> str:
        return f"Static({type(self.value).__name__})"


# Parameter initialisers of the reference: normal(0, initializer_range) weights, zero biases, LayerNorm ones/zeros,
# the padding row of the word embeddings zeroed.
def _normal(config: DebertaV2Config):
    return nnx.initializers.normal(stddev=config.initializer_range)


def _embedding_init(config: DebertaV2Config, padding_idx: Optional[int] = None):
    normal = _normal(config)
    if padding_idx is None:
        return normal

    def init(key, shape, dtype=jnp.float32):
        return normal(key, shape, dtype).at[padding_idx].set(0)

    return init


def linear(config: DebertaV2Config, n_in: int, n_out: int, dtype, rngs: nnx.Rngs, use_bias: bool = True):
    return nnx.Linear(n_in, n_out, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                      precision=matmul_precision(dtype),
                      kernel_init=_normal(config), bias_init=nnx.initializers.zeros_init(), rngs=rngs)


def layer_norm(config: DebertaV2Config, n: int, dtype, rngs: nnx.Rngs):
    # two-pass variance (E[(x - mean)^2]) as torch; the default E[x^2] - mean^2 loses digits
    return nnx.LayerNorm(n, epsilon=config.layer_norm_eps, dtype=dtype, param_dtype=jnp.float32,
                         use_fast_variance=False, rngs=rngs)


def embedding(config: DebertaV2Config, n: int, features: int, dtype, rngs: nnx.Rngs, padding_idx=None):
    return nnx.Embed(n, features, dtype=dtype, param_dtype=jnp.float32,
                     embedding_init=_embedding_init(config, padding_idx), rngs=rngs)


def dropout(rate: float, rngs: nnx.Rngs):
    return nnx.Dropout(rate, deterministic=True, rngs=rngs)  # built in inference mode; model.train() enables it


# =============================================================================================================
# Embeddings
class FlaxDebertaV2Embeddings(nnx.Module):
    """Word (+ absolute position) (+ token type) embeddings -> [embed_proj] -> LayerNorm -> x mask -> dropout."""

    def __init__(self, config: DebertaV2Config, *, dtype=None, rngs: nnx.Rngs):
        E, H = config.embedding_dim, config.hidden_size
        self.word_embeddings = embedding(config, config.vocab_size, E, dtype, rngs, padding_idx=config.pad_token_id)
        self.position_embeddings = (embedding(config, config.max_position_embeddings, E, dtype, rngs)
                                    if config.position_biased_input else None)
        self.token_type_embeddings = (embedding(config, config.type_vocab_size, E, dtype, rngs)
                                      if config.type_vocab_size > 0 else None)
        self.embed_proj = linear(config, E, H, dtype, rngs, use_bias=False) if E != H else None
        self.LayerNorm = layer_norm(config, H, dtype, rngs)
        self.dropout = dropout(config.hidden_dropout_prob, rngs)

    def __call__(self, input_ids=None, token_type_ids=None, position_ids=None, input_mask=None, inputs_embeds=None):
        embeddings = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds  # [B, L, E]
        seq_length = embeddings.shape[1]
        if self.position_embeddings is not None:
            if position_ids is None:
                position_ids = jnp.arange(seq_length)[None, :]
            embeddings = embeddings + self.position_embeddings(position_ids)
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = jnp.zeros(embeddings.shape[:2], dtype=jnp.int32)
            embeddings = embeddings + self.token_type_embeddings(token_type_ids)
        if self.embed_proj is not None:
            embeddings = self.embed_proj(embeddings)
        embeddings = self.LayerNorm(embeddings)
        if input_mask is not None:  # padding rows become exactly 0
            embeddings = embeddings * input_mask[..., None].astype(embeddings.dtype)
        return self.dropout(embeddings)


# =============================================================================================================
# Relative positions: the (bucketed) i - j matrix and the c2p / p2c columns come from deberta_xf.relative_position
# (NumPy), computed from the static sequence length while tracing. Both column matrices are functions of i - j
# alone, so instead of gathering L * L scores one by one (as the reference does) the attention gathers the 2L
# projected position rows by distance (relative_position.by_distance), multiplies them with the queries or keys
# ([B, h, L, 2L]) and moves each row into place with one reshape (relative_shift): the same dot products, as dense
# copies, which XLA runs far faster than an elementwise gather. For long sequences, whose window has far fewer
# rows R than the 2L distances (log buckets), the R rows are scored first and the columns gathered by distance
# (relative_scores). Only the window of relative-embedding rows that this length reads is projected.
def relative_position_window(config: DebertaV2Config, seq_length: int) -> tuple[slice, dict[str, jax.Array]]:
    window = attention_distance_window(config, seq_length)
    return slice(window.start, window.stop), {k: jnp.asarray(v, dtype=jnp.int32) for k, v in window.index.items()}


def relative_scores(states: jax.Array, pos: jax.Array, by_distance: jax.Array) -> jax.Array:
    """[B, h, L, d] states . [h, R, d] position rows -> [B, h, L, L]: out[..., a, b] = states[a] . pos[row(a - b)],
    ``by_distance`` [2L] giving the row of each distance L - 1 .. -(L - 1).

    The rows are gathered by distance and then scored ([B, h, L, 2L]), or, when 2L is well above R (long sequences,
    where many distances share a log bucket), scored first ([B, h, L, R]) and the columns gathered by distance:
    the same dot products with fewer multiplications (deberta-v3-base at 1 x 512 on 2 CPU cores: the forward
    ~9% faster, bit-identical). Either way one reshape shifts each row into place."""
    length, rows = states.shape[-2], pos.shape[-2]
    if 2 * length <= 1.5 * rows:
        return relative_shift(_matmul(states, jnp.swapaxes(jnp.take(pos, by_distance, axis=-2), -1, -2)))
    return relative_shift(jnp.take(_matmul(states, jnp.swapaxes(pos, -1, -2)), by_distance, axis=-1))


def relative_shift(x: jax.Array) -> jax.Array:
    """[..., L, 2L] -> [..., L, L] with out[..., a, b] = x[..., a, L - 1 - a + b] (distance a - b).

    Re-reading the rows flattened with stride 2L - 1 from offset L - 1 shifts row a left by a."""
    *lead, length, width = x.shape
    flat = x.reshape(*lead, length * width)[..., length - 1: length - 1 + length * (2 * length - 1)]
    return flat.reshape(*lead, length, 2 * length - 1)[..., :length]


# =============================================================================================================
# Disentangled self-attention
def _matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.matmul(a, b, precision=HIGHEST if a.dtype == jnp.float32 else None)


class FlaxDisentangledSelfAttention(nnx.Module):
    """softmax((c2c + c2p + p2c) / sqrt(d * scale_factor)) V, heads as [B, heads, L, d].

    ``config._attn_implementation`` picks how: "eager" (the scores as [B, h, L, L], as the reference), "sdpa"
    (c2p + p2c and the mask as one additive bias to ``jax.nn.dot_product_attention``) or "fused" (the Pallas
    kernel of ``fused_attention``: tiles, no [L, L] tensor). sdpa and fused run eager for ``output_attentions``
    (they have no probabilities to return) and while attention dropout is active (they have no dropout)."""

    def __init__(self, config: DebertaV2Config, *, dtype=None, rngs: nnx.Rngs):
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.head_size
        all_head_size = config.num_attention_heads * config.head_size
        H = config.hidden_size
        self.query_proj = linear(config, H, all_head_size, dtype, rngs)
        self.key_proj = linear(config, H, all_head_size, dtype, rngs)
        self.value_proj = linear(config, H, all_head_size, dtype, rngs)
        self.pos_att_type = config.pos_att_types
        self.relative_attention = config.relative_attention
        self.share_att_key = config.share_att_key
        self.scale_factor = config.scale_factor
        self.attn_implementation = config._attn_implementation
        if self.relative_attention:
            self.pos_dropout = dropout(config.hidden_dropout_prob, rngs)
            if not self.share_att_key:
                if "c2p" in self.pos_att_type:
                    self.pos_key_proj = linear(config, H, all_head_size, dtype, rngs)
                if "p2c" in self.pos_att_type:
                    self.pos_query_proj = linear(config, H, all_head_size, dtype, rngs)
        self.dropout = dropout(config.attention_probs_dropout_prob, rngs)

    def split_heads(self, x: jax.Array) -> jax.Array:
        """[..., L, heads * d] -> [..., heads, L, d]"""
        x = x.reshape(*x.shape[:-1], self.num_attention_heads, self.attention_head_size)
        return jnp.swapaxes(x, -2, -3)

    def __call__(self, hidden_states, attention_mask, rel_embeddings=None, position_index=None,
                 output_attentions=False):
        query = self.split_heads(self.query_proj(hidden_states))  # [B, h, L, d]
        key = self.split_heads(self.key_proj(hidden_states))
        value = self.split_heads(self.value_proj(hidden_states))

        scale = math.sqrt(self.attention_head_size * self.scale_factor)
        if self.relative_attention:
            rel_embeddings = self.pos_dropout(rel_embeddings)
        implementation = self.implementation(output_attentions)
        probs = None
        if implementation in ("sdpa", "fused"):
            attend = self.sdpa_attention if implementation == "sdpa" else self.fused_kernel_attention
            context = attend(query, key, value, attention_mask, rel_embeddings, position_index, scale)
        else:
            scores = _matmul(query, jnp.swapaxes(key, -1, -2) / scale)  # c2c, K scaled first as the reference
            if self.relative_attention:
                scores = scores + self.disentangled_attention_bias(query, key, rel_embeddings, position_index,
                                                                   scale)
            # masked_fill(finfo.min) + softmax; in float32 when computing in a half-precision dtype
            scores = scores.astype(jnp.promote_types(scores.dtype, jnp.float32))
            scores = jnp.where(attention_mask, scores, jnp.finfo(scores.dtype).min)
            probs = self.dropout(jax.nn.softmax(scores, axis=-1).astype(value.dtype))
            context = _matmul(probs, value)  # [B, h, L, d]
        context = jnp.swapaxes(context, 1, 2).reshape(context.shape[0], context.shape[2], -1)
        return context, (probs if output_attentions else None)

    def implementation(self, output_attentions: bool) -> str:
        """What this call runs: the configured implementation, or eager for ``output_attentions`` and while
        attention dropout is active (the model asks too, to hand "fused" a token mask instead of the [L, L] one)."""
        if output_attentions or (not self.dropout.deterministic and self.dropout.rate > 0):
            return "eager"
        return self.attn_implementation

    def sdpa_attention(self, query, key, value, attention_mask, rel_embeddings, position_index, scale):
        """``jax.nn.dot_product_attention`` with c2p + p2c (the eager path's, same scale) and the mask folded into
        one additive bias [B, h, L, L]: ``finfo.min`` where masked, as eager fills the scores (a fully masked row
        is uniform, as eager's)."""
        bias_dtype = jnp.promote_types(query.dtype, jnp.float32)
        bias = jnp.zeros((), bias_dtype)
        if self.relative_attention:
            bias = self.disentangled_attention_bias(query, key, rel_embeddings, position_index, scale)
            bias = bias.astype(bias_dtype)
        bias = jnp.where(attention_mask, bias, jnp.finfo(bias_dtype).min)  # [B, h or 1, L, L]
        with jax.default_matmul_precision("highest" if query.dtype == jnp.float32 else "default"):
            context = jax.nn.dot_product_attention(jnp.swapaxes(query, 1, 2), jnp.swapaxes(key, 1, 2),
                                                   jnp.swapaxes(value, 1, 2), bias=bias, scale=1.0 / scale)
        return jnp.swapaxes(context, 1, 2)  # [B, h, L, d]

    def fused_kernel_attention(self, query, key, value, attention_mask, rel_embeddings, position_index, scale):
        """The Pallas kernel: the position projections q @ K_posᵀ and k @ Q_posᵀ over the relative rows once
        ([B, h, L, rows], float32), gathered per tile by distance through ``position_index``'s tables."""
        c2p = p2c = c2p_table = p2c_table = None
        if self.relative_attention:
            pos_query, pos_key = self.position_projections(rel_embeddings)
            precision = HIGHEST if query.dtype == jnp.float32 else None
            if "c2p" in self.pos_att_type:
                c2p = jnp.matmul(query, jnp.swapaxes(pos_key, -1, -2), precision=precision,
                                 preferred_element_type=jnp.float32) / scale
                c2p_table = position_index["c2p_table"]
            if "p2c" in self.pos_att_type:
                p2c = jnp.matmul(key, jnp.swapaxes(pos_query, -1, -2), precision=precision,
                                 preferred_element_type=jnp.float32) / scale
                p2c_table = position_index["p2c_table"]
        return fused_attention(query, key / scale, value, attention_mask, c2p, c2p_table, p2c, p2c_table)

    def position_projections(self, rel_embeddings):
        """(pos_query, pos_key) [h, rows, d]: the relative rows through the query / key projections (shared) or
        their own ones; None for a term that is off."""
        if self.share_att_key:
            return (self.split_heads(self.query_proj(rel_embeddings)),
                    self.split_heads(self.key_proj(rel_embeddings)))
        pos_key = self.split_heads(self.pos_key_proj(rel_embeddings)) if "c2p" in self.pos_att_type else None
        pos_query = self.split_heads(self.pos_query_proj(rel_embeddings)) if "p2c" in self.pos_att_type else None
        return pos_query, pos_key

    def disentangled_attention_bias(self, query, key, rel_embeddings, position_index, scale):
        """c2p(i, j) = q_i . k^r_{c2p(i,j)}   and   p2c(i, j) = k_j . q^r_{p2c(j,i)}, both divided by ``scale``.

        ``rel_embeddings`` holds the rows of the relative-embedding table this length reads (at most 2 span);
        ``position_index`` gives, per term, the row of each distance L - 1 .. -(L - 1) (see relative_shift)."""
        pos_query, pos_key = self.position_projections(rel_embeddings)  # [h, rows, d]
        score = 0
        if "c2p" in self.pos_att_type:
            c2p = relative_scores(query, pos_key, position_index["c2p"])  # [B, h, L, L]
            score = score + c2p / scale
        if "p2c" in self.pos_att_type:
            p2c = relative_scores(key, pos_query, position_index["p2c"])  # [B, h, Lk, Lq]
            score = score + jnp.swapaxes(p2c, -1, -2) / scale
        return score


class FlaxDebertaV2SelfOutput(nnx.Module):
    def __init__(self, config: DebertaV2Config, *, dtype=None, rngs: nnx.Rngs):
        self.dense = linear(config, config.hidden_size, config.hidden_size, dtype, rngs)
        self.LayerNorm = layer_norm(config, config.hidden_size, dtype, rngs)
        self.dropout = dropout(config.hidden_dropout_prob, rngs)

    def __call__(self, hidden_states, input_tensor):
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class FlaxDebertaV2Attention(nnx.Module):
    def __init__(self, config: DebertaV2Config, *, dtype=None, rngs: nnx.Rngs):
        self.self = FlaxDisentangledSelfAttention(config, dtype=dtype, rngs=rngs)
        self.output = FlaxDebertaV2SelfOutput(config, dtype=dtype, rngs=rngs)

    def __call__(self, hidden_states, attention_mask, rel_embeddings=None, position_index=None,
                 output_attentions=False):
        context, probs = self.self(hidden_states, attention_mask, rel_embeddings, position_index, output_attentions)
        return self.output(context, hidden_states), probs


# =============================================================================================================
# Layer (post-LayerNorm transformer block)
class FlaxDebertaV2Intermediate(nnx.Module):
    def __init__(self, config: DebertaV2Config, *, dtype=None, rngs: nnx.Rngs):
        self.dense = linear(config, config.hidden_size, config.intermediate_size, dtype, rngs)
        self.act = ACT2FN[config.hidden_act]

    def __call__(self, hidden_states):
        return self.act(self.dense(hidden_states))


class FlaxDebertaV2Output(nnx.Module):
    def __init__(self, config: DebertaV2Config, *, dtype=None, rngs: nnx.Rngs):
        self.dense = linear(config, config.intermediate_size, config.hidden_size, dtype, rngs)
        self.LayerNorm = layer_norm(config, config.hidden_size, dtype, rngs)
        self.dropout = dropout(config.hidden_dropout_prob, rngs)

    def __call__(self, hidden_states, input_tensor):
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class FlaxDebertaV2Layer(nnx.Module):
    def __init__(self, config: DebertaV2Config, *, dtype=None, rngs: nnx.Rngs):
        self.attention = FlaxDebertaV2Attention(config, dtype=dtype, rngs=rngs)
        self.intermediate = FlaxDebertaV2Intermediate(config, dtype=dtype, rngs=rngs)
        self.output = FlaxDebertaV2Output(config, dtype=dtype, rngs=rngs)

    def __call__(self, hidden_states, attention_mask, rel_embeddings=None, position_index=None,
                 output_attentions=False):
        attention_output, probs = self.attention(hidden_states, attention_mask, rel_embeddings, position_index,
                                                 output_attentions)
        return self.output(self.intermediate(attention_output), attention_output), probs


# =============================================================================================================
# Encoder, with the nGiE convolution of v2 (applied once, beside layer 0)
class FlaxConvLayer(nnx.Module):
    """LayerNorm(layer0_output + act(dropout(conv(embedding_output)))) on non-padding positions."""

    def __init__(self, config: DebertaV2Config, *, dtype=None, rngs: nnx.Rngs):
        k, H = config.conv_kernel_size, config.hidden_size
        pad = (k - 1) // 2
        # channels-last Conv1d; kernel [k, H / groups, H] (the schema's flax conv layout)
        self.conv = nnx.Conv(H, H, kernel_size=(k,), padding=[(pad, pad)], feature_group_count=config.conv_groups,
                             dtype=dtype, param_dtype=jnp.float32, precision=matmul_precision(dtype),
                             kernel_init=_normal(config),
                             bias_init=nnx.initializers.zeros_init(), rngs=rngs)
        self.LayerNorm = layer_norm(config, H, dtype, rngs)
        self.dropout = dropout(config.hidden_dropout_prob, rngs)
        self.act = ACT2FN[config.conv_act]

    def __call__(self, hidden_states, residual_states, input_mask):
        out = self.conv(hidden_states)  # [B, L, H]
        keep = input_mask[..., None].astype(out.dtype)
        out = jnp.where(keep == 0, jnp.zeros((), out.dtype), out)
        out = self.act(self.dropout(out))
        return self.LayerNorm(residual_states + out) * keep


def _layer(layer, hidden_states, attention_mask, rel_embeddings, position_index, output_attentions):
    return layer(hidden_states, attention_mask, rel_embeddings, position_index, output_attentions)


# The same call under nnx.remat (gradient checkpointing): activations are recomputed in the backward pass.
_remat_layer = nnx.remat(_layer, static_argnums=(5,))


class FlaxDebertaV2Encoder(nnx.Module):
    def __init__(self, config: DebertaV2Config, *, dtype=None, rngs: nnx.Rngs):
        self._config = Static(config)
        self.layer = nnx.List([FlaxDebertaV2Layer(config, dtype=dtype, rngs=rngs)
                               for _ in range(config.num_hidden_layers)])
        self.relative_attention = config.relative_attention
        self.attn_implementation = config._attn_implementation
        self.rel_embeddings_layer_norm = config.rel_embeddings_layer_norm
        if config.relative_attention:
            self.rel_embeddings = embedding(config, 2 * config.att_span, config.hidden_size, dtype, rngs)
        if config.rel_embeddings_layer_norm:
            self.LayerNorm = layer_norm(config, config.hidden_size, dtype, rngs)
        self.conv = FlaxConvLayer(config, dtype=dtype, rngs=rngs) if config.conv_kernel_size > 0 else None
        self.gradient_checkpointing = False  # nnx.remat around each layer: recomputed in the backward pass

    def get_rel_embedding(self) -> Optional[jax.Array]:
        if not self.relative_attention:
            return None
        rel_embeddings = self.rel_embeddings.embedding[...]
        if self.rel_embeddings_layer_norm:
            rel_embeddings = self.LayerNorm(rel_embeddings)
        return rel_embeddings

    def __call__(self, hidden_states, attention_mask, input_mask, output_hidden_states=False,
                 output_attentions=False):
        """``attention_mask``: bool [B, 1, L, L]; ``input_mask``: [B, L] (1 = token, 0 = padding)."""
        rel_embeddings = position_index = None
        if self.relative_attention:
            rows, position_index = relative_position_window(self._config.value, hidden_states.shape[1])
            if self.attn_implementation == "fused":  # the kernel's tables distance -> row, over the same rows
                table_rows, tables = position_tables(self._config.value, hidden_states.shape[1])
                assert table_rows == rows, (table_rows, rows)
                position_index = {**position_index, **{f"{term}_table": t for term, t in tables.items()}}
            rel_embeddings = self.get_rel_embedding()[rows]
        all_hidden_states = [hidden_states] if output_hidden_states else None
        all_attentions = [] if output_attentions else None
        embedding_output = hidden_states
        for i, layer in enumerate(self.layer):
            call = _remat_layer if self.gradient_checkpointing else _layer
            hidden_states, probs = call(layer, hidden_states, attention_mask, rel_embeddings, position_index,
                                        output_attentions)
            if i == 0 and self.conv is not None:
                hidden_states = self.conv(embedding_output, hidden_states, input_mask)
            if output_hidden_states:
                all_hidden_states.append(hidden_states)
            if output_attentions:
                all_attentions.append(probs)
        return ModelOutput(last_hidden_state=hidden_states,
                           hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
                           attentions=tuple(all_attentions) if output_attentions else None)


def attention_masks(attention_mask: jax.Array, tokens_only: bool = False) -> tuple[jax.Array, jax.Array]:
    """2-D [B, L] or 3-D [B, Lq, Lk] mask -> (bool [B, 1, L, L] pair mask, [B, L] token mask).

    A 2-D mask becomes the outer product (padding query rows are masked too). A token of a 3-D mask counts as
    present when any query attends to it, as the reference's ConvLayer reads it. ``tokens_only`` (the fused
    kernel): a 2-D mask stays a bool [B, 1, 1, L] token mask that stands for that outer product (no [L, L] tensor).
    """
    if attention_mask.ndim == 2 and tokens_only:
        return attention_mask[:, None, None, :] != 0, attention_mask
    if attention_mask.ndim == 2:
        input_mask = attention_mask
        pair = attention_mask[:, None, :, None] * attention_mask[:, None, None, :]
    elif attention_mask.ndim == 3:
        input_mask = (attention_mask.sum(-2) > 0).astype(attention_mask.dtype)
        pair = attention_mask[:, None]
    else:
        raise ValueError(f"attention_mask must be 2-D [batch, seq] or 3-D [batch, seq, seq], got shape "
                         f"{list(attention_mask.shape)}")
    return pair != 0, input_mask


# =============================================================================================================
# Pre-trained model base: init, loading, saving, jit
_DTYPES = {"float32": jnp.float32, "fp32": jnp.float32, "bfloat16": jnp.bfloat16, "bf16": jnp.bfloat16,
           "float16": jnp.float16, "fp16": jnp.float16}


def parameter_dtype(dtype: Any) -> np.dtype:
    """None / "float32" / "bfloat16" / "float16" / a numpy, JAX, torch or TF dtype -> the parameters' dtype (None:
    float32; "auto" is resolved by from_pretrained)."""
    name = dtype_name(dtype)  # strings, numpy / JAX / torch / TF dtype objects
    return jnp.dtype(jnp.float32 if name is None or name == "auto" else _DTYPES[name])


def resolve_compute_dtype(dtype: Any, param_dtype: Any = jnp.float32):
    """The layers' compute dtype for ``compute_dtype=dtype`` (None: the parameters' dtype): None for float32 over
    float32 parameters (full fp32 matmuls), else the dtype itself."""
    dtype = parameter_dtype(param_dtype if dtype is None else dtype)
    return None if dtype == jnp.float32 and jnp.dtype(param_dtype) == jnp.float32 else dtype


def with_attn_implementation(config: DebertaV2Config, attn_implementation: Optional[str]) -> DebertaV2Config:
    """``config`` with ``_attn_implementation`` set (a copy when that changes it; None keeps the config's)."""
    if attn_implementation is None or attn_implementation == config._attn_implementation:
        return config
    config = copy.deepcopy(config)
    config._attn_implementation = attn_implementation  # raises ConfigError for an unknown name
    return config


def _as_array(x, dtype=None):
    """numpy / JAX / nested-list input -> a JAX array (ids as int32); None stays None."""
    return None if x is None else jnp.asarray(x, dtype=dtype)


def flax_names(config: DebertaV2Config, task: str) -> dict[str, str]:
    """Flax parameter path (``deberta.encoder.layer.0.attention.self.query_proj.kernel``) -> canonical name."""
    return {schema.framework_name(name, FRAMEWORK): name for name in schema.expected_shapes(config, task)}


def _path_key(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def _initial_value(name: str, shape: tuple[int, ...], config: DebertaV2Config, key: jax.Array) -> jax.Array:
    """A fresh parameter (flax layout) for a head missing from a checkpoint, initialised as the reference does."""
    kind = schema.param_kind(name)
    if kind in ("linear", "conv", "embedding"):
        return config.initializer_range * jax.random.normal(key, shape, jnp.float32)
    if kind == "layer_norm_scale":
        return jnp.ones(shape, jnp.float32)
    return jnp.zeros(shape, jnp.float32)


class _GraphKey:
    """A model's ``GraphDef`` as a ``jax.jit`` static argument: compared by equality and hashed coarsely (a GraphDef
    can hold lists, e.g. a convolution's padding, so it has no hash of its own)."""

    __slots__ = ("graphdef",)

    def __init__(self, graphdef):
        self.graphdef = graphdef

    def __eq__(self, other) -> bool:
        return isinstance(other, _GraphKey) and self.graphdef == other.graphdef

    def __hash__(self) -> int:
        return hash((type(self.graphdef).__name__, getattr(self.graphdef, "num_leaves", None)))


@functools.partial(jax.jit, static_argnames=("graph", "output_hidden_states", "output_attentions"))
def _jit_forward(graph: _GraphKey, params, rest, inputs: dict, output_hidden_states: bool, output_attentions: bool):
    """The forward of ``nnx.merge(graph.graphdef, params, rest)``; returns the outputs and the model's state other than
    its parameters (the dropout streams' counters, which a training call advances). The parameters are inputs
    only: ``nnx.jit`` would also return them, copying every weight (the 393 MB word embeddings of deberta-v3-base
    included) into a new buffer on every call, ~130 ms of a 900 ms 1 x 512 forward on 2 CPU cores."""
    model = nnx.merge(graph.graphdef, params, rest)
    outputs = model(**inputs, output_hidden_states=output_hidden_states, output_attentions=output_attentions)
    return outputs, nnx.state(model, nnx.Not(nnx.Param))


def default_rngs(rngs: Optional[nnx.Rngs]) -> nnx.Rngs:
    """A model's random streams: those given, else seed 0 for parameters and dropout (the reference's Flax models
    take ``seed=0`` by default, so ``FlaxDebertaV2Model(config)`` builds the same model every time)."""
    return nnx.Rngs(params=0, dropout=0) if rngs is None else rngs


class FlaxDebertaV2PreTrainedModel(nnx.Module):
    """Base of every Flax DeBERTa-v2 model: init, ``from_pretrained``, ``save_pretrained``, ``jit_call``."""

    task = "base"
    base_model_prefix = "deberta"
    main_input_name = "input_ids"

    def __init__(self, config: DebertaV2Config, *, dtype=None, compute_dtype=None):
        """``dtype``: the parameters' dtype (None: float32); ``compute_dtype``: the layers' (None: ``dtype``)."""
        self._config = Static(config.validate())  # the one aggregated ConfigError, before any layer is built
        check_memory(config, self.task, None, FRAMEWORK)  # float32 parameters: refused before allocating
        self._param_dtype = Static(parameter_dtype(dtype))
        self._compute_dtype = Static(resolve_compute_dtype(compute_dtype, self._param_dtype.value))
        self._loaded_from = Static(None)  # (LoadReport, weights path) after from_pretrained

    def _cast_parameters(self) -> None:
        """Every parameter in the parameter dtype (the layers initialise float32, as ``model.to(dtype)`` in
        PyTorch casts after init); the last step of every model's ``__init__``."""
        dtype = self._param_dtype.value
        if dtype != jnp.float32:
            nnx.update(self, jax.tree.map(lambda x: x.astype(dtype), nnx.state(self, nnx.Param)))

    @property
    def dtype(self) -> np.dtype:
        """The parameters' dtype (``jnp.float32``, ``jnp.bfloat16``, ``jnp.float16``), as ``model.dtype`` in
        PyTorch; the compute dtype is :attr:`compute_dtype`."""
        return self._param_dtype.value

    @property
    def compute_dtype(self) -> np.dtype:
        """The dtype the layers compute in (by default the parameters')."""
        return self._compute_dtype.value or jnp.dtype(jnp.float32)

    @property
    def config(self) -> DebertaV2Config:
        return self._config.value

    @property
    def loading_report(self) -> Optional[schema.LoadReport]:
        return self._loaded_from.value[0] if self._loaded_from.value else None

    @property
    def weights_path(self) -> Optional[str]:
        return self._loaded_from.value[1] if self._loaded_from.value else None

    # ---------------------------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: DebertaV2Config, dtype: Any = None, seed: int | None = None,
                    attn_implementation: Optional[str] = None, compute_dtype: Any = None):
        """A randomly initialised model (normal(0, initializer_range) weights, as the reference), in eval mode.

        ``dtype``: the parameters' dtype (None: float32); ``compute_dtype``: the layers' (None: ``dtype``).
        ``seed`` seeds the parameters and the dropout stream; None draws a fresh seed. ``attn_implementation``:
        "eager" | "sdpa" | "fused" (None: the config's ``_attn_implementation``, eager by default).
        """
        config = with_attn_implementation(config, attn_implementation)
        seed = secrets.randbits(31) if seed is None else int(seed)
        return cls(config, dtype=dtype, compute_dtype=compute_dtype, rngs=nnx.Rngs(params=seed, dropout=seed))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, config: Any = None,
                        dtype: Any = None, seed: int = 0, ignore_mismatched_sizes: bool = False,
                        attn_implementation: Optional[str] = None, compute_dtype: Any = None,
                        output_loading_info: bool = False, **config_overrides: Any):
        """Load a checkpoint directory (``config.json`` + any supported weights file, ``flax_model.msgpack``
        first) or a weights file (then ``config`` is required).

        The model is built abstractly (``nnx.eval_shape``, no parameter is initialised) and filled from the
        checkpoint; a head missing from it is freshly initialised (with a warning). ``dtype`` is the parameters'
        dtype (None: float32, ``"auto"``: the checkpoint's stored floating dtype); ``compute_dtype`` the layers'
        (None: ``dtype``).
        ``ignore_mismatched_sizes=True`` re-initialises tensors of another shape. ``attn_implementation``:
        "eager" | "sdpa" | "fused" (None: the config's ``_attn_implementation``, eager by default). Returned in
        eval mode; with ``output_loading_info=True``, as ``(model, {"missing_keys", "unexpected_keys",
        "mismatched_keys", "error_msgs"})``.
        """
        cfg = resolve_config(pretrained_model_name_or_path, config)
        attn_implementation = attn_implementation or cfg._attn_implementation
        if config_overrides:
            cfg = DebertaV2Config.from_dict(cfg.to_dict(), **config_overrides)
        cfg = with_attn_implementation(cfg, attn_implementation)
        with open_checkpoint(pretrained_model_name_or_path, cls.task, FRAMEWORK, config=cfg,
                             ignore_mismatched_sizes=ignore_mismatched_sizes) as checkpoint:
            if dtype_name(dtype) == "auto":
                dtype = checkpoint.stored_dtype
            model = nnx.eval_shape(lambda: cls(cfg, dtype=dtype, compute_dtype=compute_dtype,
                                               rngs=nnx.Rngs(params=seed, dropout=seed)))
            # every parameter becomes concrete, each tensor converted as it is read
            model._assign(checkpoint.arrays(stacklevel=4), init_seed=seed)
        nnx.reseed(model, dropout=seed)  # and so do the dropout streams' keys and counts
        model._loaded_from = Static((checkpoint.report, checkpoint.weights_path))
        return (model, loading_info(checkpoint.report)) if output_loading_info else model

    def load_canonical(self, arrays: dict[str, np.ndarray]) -> None:
        """Copy canonical arrays (PyTorch names and layouts) into the parameters of the same names, in place."""
        self._assign(arrays.items())

    def _assign(self, arrays: Iterable[tuple[str, np.ndarray]], init_seed: int | None = None) -> None:
        """Set parameters from (canonical name, canonical array) pairs through the schema's layout table, each
        array converted as it comes (a stream of them is never all in memory). With ``init_seed``, parameters
        missing from ``arrays`` (a head absent from the checkpoint) are freshly initialised as the reference
        does; without it they keep their values."""
        names = flax_names(self.config, self.task)
        params = {names[_path_key(path)]: (path, variable)
                  for path, variable in nnx.to_flat_state(nnx.state(self, nnx.Param))}
        values = {}
        for name, array in arrays:
            if name not in params:
                continue
            path, variable = params[name]
            value = jnp.asarray(schema.to_framework(name, np.asarray(array), FRAMEWORK), self.dtype)
            if tuple(value.shape) != tuple(variable.shape):
                raise CheckpointError(f"tensor {name!r} of shape {list(np.shape(array))} does not fit the "
                                      f"parameter {_path_key(path)} of shape {list(variable.shape)} (flax layout)")
            values[name] = value
        key = None if init_seed is None else jax.random.key(init_seed)
        updates = []
        for name, (path, variable) in params.items():
            if name in values:
                value = values.pop(name)
            elif key is not None:
                key, subkey = jax.random.split(key)
                value = _initial_value(name, tuple(variable.shape), self.config, subkey).astype(self.dtype)
            else:
                continue
            updates.append((path, variable.replace(value)))
        nnx.update(self, nnx.from_flat_state(updates))

    def canonical_state(self) -> dict[str, np.ndarray]:
        """Canonical name -> numpy array in canonical (PyTorch) layout."""
        names = flax_names(self.config, self.task)
        out = {}
        for path, variable in nnx.to_flat_state(nnx.state(self, nnx.Param)):
            name = names[_path_key(path)]
            out[name] = np.array(schema.contiguous(schema.from_framework(name, np.asarray(variable[...]), FRAMEWORK)))
        return out

    def save_pretrained(self, save_directory: str | os.PathLike, max_shard_size: int | str = "10GB",
                        safe_serialization: bool = False, format: Optional[str] = None) -> None:
        """Write ``config.json`` and ``flax_model.msgpack`` (canonical ``model.safetensors`` with
        ``safe_serialization=True`` or format="safetensors"). Past ``max_shard_size`` (bytes, or "10GB", the
        reference's Flax default, "500MiB") safetensors is written as ``model-00001-of-0000N.safetensors`` shards and
        ``model.safetensors.index.json``; msgpack has no index here: a model larger than one shard is refused,
        naming the formats that shard."""
        format = format or ("safetensors" if safe_serialization else "msgpack")
        save_sharded(save_directory, self.config, self.task, FRAMEWORK, self.canonical_state(), format,
                     max_shard_size)

    @property
    def base_model(self) -> nnx.Module:
        """The encoder model (``self.deberta``), or the model itself for FlaxDebertaV2Model."""
        return getattr(self, self.base_model_prefix, self)

    @classmethod
    def can_generate(cls) -> bool:
        return False  # an encoder: no ``generate``, no generation_config.json

    # ---------------------------------------------------------------------------------------------------------
    # The reference's model methods: embeddings, parameter counts, gradient checkpointing
    def get_input_embeddings(self) -> nnx.Embed:
        return getattr(self, self.base_model_prefix, self).embeddings.word_embeddings

    def set_input_embeddings(self, value: nnx.Embed) -> None:
        getattr(self, self.base_model_prefix, self).embeddings.word_embeddings = value

    def get_output_embeddings(self):
        """The masked-LM decoder: the untied legacy head's own ``decoder``, else the word embeddings it is tied to;
        None for the other models."""
        if self.task != "masked-lm":
            return None
        if self.config.legacy and self.cls.predictions.decoder is not None:
            return self.cls.predictions.decoder
        return self.get_input_embeddings()

    def resize_token_embeddings(self, new_num_tokens: Optional[int] = None, pad_to_multiple_of: Optional[int] = None,
                                mean_resizing: bool = True, seed: int = 0) -> nnx.Embed:
        """Resize the word embeddings (and the masked-LM bias, and an untied decoder) to ``new_num_tokens`` rows and
        set ``config.vocab_size``, as the PyTorch model and the reference: the first rows are kept; new rows are drawn
        around the old rows' mean (``mean_resizing``) or normal(0, initializer_range), from ``seed``."""
        old = self.get_input_embeddings()
        if new_num_tokens is None and pad_to_multiple_of is None:
            return old
        if pad_to_multiple_of is not None and not isinstance(pad_to_multiple_of, int):
            raise ValueError(f"Asking to pad the embedding matrix to a multiple of `{pad_to_multiple_of}`, which is "
                             "not and integer. Please make sure to pass an integer")  # the reference's words
        table = np.asarray(old.embedding[...], np.float32)
        new_num_tokens = table.shape[0] if new_num_tokens is None else int(new_num_tokens)
        if pad_to_multiple_of is not None:
            new_num_tokens = -(-new_num_tokens // pad_to_multiple_of) * pad_to_multiple_of
        rng = np.random.default_rng(seed)
        std = self.config.initializer_range
        new = nnx.eval_shape(lambda: embedding(self.config, new_num_tokens, table.shape[1], self._compute_dtype.value,
                                               nnx.Rngs(0)))
        new.embedding = nnx.Param(jnp.asarray(resized_rows(table, new_num_tokens, std, mean_resizing, rng), self.dtype))
        self.set_input_embeddings(new)
        if self.task == "masked-lm":
            head = self.cls.predictions if self.config.legacy else self.lm_predictions.lm_head
            head.bias = nnx.Param(jnp.asarray(resized_rows(np.asarray(head.bias[...], np.float32), new_num_tokens,
                                                            0.0, mean_resizing, rng), self.dtype))
            decoder = head.decoder if self.config.legacy else None
            if decoder is not None:  # kernel [E, V] (flax layout): rows of the canonical [V, E]
                kernel = resized_rows(np.asarray(decoder.kernel[...], np.float32).T, new_num_tokens, std,
                                      mean_resizing, rng)
                decoder.kernel = nnx.Param(jnp.asarray(kernel.T, self.dtype))
                decoder.out_features = new_num_tokens
        self.config.vocab_size = new_num_tokens
        return new

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Number of parameters (every nnx.Param is trainable); ``exclude_embeddings`` leaves out the embedding
        tables, as the reference."""
        names = flax_names(self.config, self.task)
        return int(sum(np.prod(variable.shape) for path, variable in nnx.to_flat_state(nnx.state(self, nnx.Param))
                       if not (exclude_embeddings and schema.param_kind(names[_path_key(path)]) == "embedding")))

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: Optional[dict] = None) -> None:
        """Recompute each encoder layer in the backward pass (``nnx.remat``): the same gradients, less memory."""
        getattr(self, self.base_model_prefix, self).encoder.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        getattr(self, self.base_model_prefix, self).encoder.gradient_checkpointing = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        return getattr(self, self.base_model_prefix, self).encoder.gradient_checkpointing

    # ---------------------------------------------------------------------------------------------------------
    def jit_call(self, output_hidden_states: bool = False, output_attentions: bool = False, **inputs: Any):
        """The same call as ``model(**inputs)``, compiled (``jax.jit`` over ``nnx.split(self)``): one compile per
        model structure (and train/eval mode), input shapes and dtypes, set of given inputs and output flags."""
        graphdef, params, rest = nnx.split(self, nnx.Param, ...)  # the graph (static), weights, everything else
        outputs, rest = _jit_forward(_GraphKey(graphdef), params, rest, inputs,
                                     output_hidden_states=bool(output_hidden_states),
                                     output_attentions=bool(output_attentions))
        nnx.update(self, rest)
        return outputs

    def _prepare(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds):
        if input_ids is not None and inputs_embeds is not None:
            raise ValueError("You cannot specify both input_ids and inputs_embeds at the same time")
        if input_ids is None and inputs_embeds is None:
            raise ValueError("You have to specify either input_ids or inputs_embeds")
        input_ids = _as_array(input_ids, jnp.int32)
        inputs_embeds = _as_array(inputs_embeds)
        shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:-1]
        attention_mask = jnp.ones(shape, jnp.int32) if attention_mask is None else _as_array(attention_mask)
        return (input_ids, attention_mask, _as_array(token_type_ids, jnp.int32), _as_array(position_ids, jnp.int32),
                inputs_embeds)


# =============================================================================================================
# The encoder model
class FlaxDebertaV2Model(FlaxDebertaV2PreTrainedModel):
    def __init__(self, config: DebertaV2Config, *, dtype=None, compute_dtype=None, rngs: Optional[nnx.Rngs] = None):
        super().__init__(config, dtype=dtype, compute_dtype=compute_dtype)
        rngs = default_rngs(rngs)
        self.embeddings = FlaxDebertaV2Embeddings(config, dtype=self._compute_dtype.value, rngs=rngs)
        self.encoder = FlaxDebertaV2Encoder(config, dtype=self._compute_dtype.value, rngs=rngs)
        self._cast_parameters()

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, output_attentions=None, output_hidden_states=None, return_dict=None):
        output_attentions, output_hidden_states, return_dict = output_flags(
            self.config, output_attentions, output_hidden_states, return_dict)
        input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds = self._prepare(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds)
        layers = self.encoder.layer
        fused = len(layers) > 0 and layers[0].attention.self.implementation(output_attentions) == "fused"
        pair_mask, input_mask = attention_masks(attention_mask, tokens_only=fused)
        embedding_output = self.embeddings(input_ids, token_type_ids, position_ids, input_mask, inputs_embeds)
        return finish(self.encoder(embedding_output, pair_mask, input_mask, output_hidden_states, output_attentions),
                      return_dict)


# =============================================================================================================
# Heads
def _tied_decoder(hidden_states, word_embeddings, bias):
    """hidden @ W_emb^T + bias, in the dtype of ``hidden_states``."""
    dtype = hidden_states.dtype
    return _matmul(hidden_states, word_embeddings.astype(dtype).T) + bias.astype(dtype)


class FlaxLegacyDebertaV2PredictionHeadTransform(nnx.Module):
    def __init__(self, config: DebertaV2Config, *, dtype=None, rngs: nnx.Rngs):
        self.dense = linear(config, config.hidden_size, config.embedding_dim, dtype, rngs)
        self.act = ACT2FN[config.hidden_act]
        self.LayerNorm = layer_norm(config, config.embedding_dim, dtype, rngs)

    def __call__(self, hidden_states):
        return self.LayerNorm(self.act(self.dense(hidden_states)))


class FlaxLegacyDebertaV2LMPredictionHead(nnx.Module):
    """``cls.predictions``: transform (H -> E) then the decoder, tied to the word embeddings unless the config says
    ``tie_word_embeddings: false`` (then its own ``decoder``), plus ``bias``."""

    def __init__(self, config: DebertaV2Config, *, dtype=None, rngs: nnx.Rngs):
        self.transform = FlaxLegacyDebertaV2PredictionHeadTransform(config, dtype=dtype, rngs=rngs)
        self.decoder = None if schema.ties_decoder(config) else linear(
            config, config.embedding_dim, config.vocab_size, dtype, rngs, use_bias=False)
        self.bias = nnx.Param(jnp.zeros((config.vocab_size,), jnp.float32))

    def __call__(self, hidden_states, word_embeddings: jax.Array):
        hidden_states = self.transform(hidden_states)
        if self.decoder is not None:
            return self.decoder(hidden_states) + self.bias[...].astype(hidden_states.dtype)
        return _tied_decoder(hidden_states, word_embeddings, self.bias[...])


class FlaxLegacyDebertaV2OnlyMLMHead(nnx.Module):
    def __init__(self, config: DebertaV2Config, *, dtype=None, rngs: nnx.Rngs):
        self.predictions = FlaxLegacyDebertaV2LMPredictionHead(config, dtype=dtype, rngs=rngs)

    def __call__(self, sequence_output, word_embeddings):
        return self.predictions(sequence_output, word_embeddings)


class FlaxDebertaV2LMPredictionHead(nnx.Module):
    """``lm_predictions.lm_head`` (the published checkpoints' layout): LN(act(dense(h))) @ W_emb^T + bias."""

    def __init__(self, config: DebertaV2Config, *, dtype=None, rngs: nnx.Rngs):
        self.dense = linear(config, config.hidden_size, config.hidden_size, dtype, rngs)
        self.act = ACT2FN[config.hidden_act]
        self.LayerNorm = layer_norm(config, config.hidden_size, dtype, rngs)
        self.bias = nnx.Param(jnp.zeros((config.vocab_size,), jnp.float32))

    def __call__(self, hidden_states, word_embeddings: jax.Array):
        hidden_states = self.LayerNorm(self.act(self.dense(hidden_states)))
        return _tied_decoder(hidden_states, word_embeddings, self.bias[...])


class FlaxDebertaV2OnlyMLMHead(nnx.Module):
    def __init__(self, config: DebertaV2Config, *, dtype=None, rngs: nnx.Rngs):
        self.lm_head = FlaxDebertaV2LMPredictionHead(config, dtype=dtype, rngs=rngs)

    def __call__(self, sequence_output, word_embeddings):
        return self.lm_head(sequence_output, word_embeddings)


class FlaxContextPooler(nnx.Module):
    """The first token's hidden state -> dropout -> dense -> activation."""

    def __init__(self, config: DebertaV2Config, *, dtype=None, rngs: nnx.Rngs):
        self.dense = linear(config, config.pooler_size, config.pooler_size, dtype, rngs)
        self.dropout = dropout(config.pooler_dropout, rngs)
        self.act = ACT2FN[config.pooler_hidden_act]

    def __call__(self, hidden_states):
        return self.act(self.dense(self.dropout(hidden_states[:, 0])))


def _with_encoder_outputs(outputs: ModelOutput, **fields) -> ModelOutput:
    return ModelOutput(**fields, hidden_states=outputs.hidden_states, attentions=outputs.attentions)


# Losses, with torch.nn.functional's semantics (mean over non-ignored rows; float32)
def _nll(logits: jax.Array, labels: jax.Array, ignore_index: int) -> tuple[jax.Array, jax.Array]:
    """Summed negative log-likelihood over rows whose label is not ``ignore_index``, and their count."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    labels = labels.astype(jnp.int32)
    valid = labels != ignore_index
    picked = jnp.take_along_axis(log_probs, jnp.where(valid, labels, 0)[:, None], axis=-1)[:, 0]
    return -jnp.sum(jnp.where(valid, picked, 0.0)), jnp.sum(valid)


def cross_entropy(logits: jax.Array, labels: jax.Array, ignore_index: int = -100) -> jax.Array:
    """F.cross_entropy(logits [N, C], labels [N], ignore_index): the mean over rows whose label is not ignored
    (NaN when every row is ignored, as torch)."""
    total, count = _nll(logits, labels, ignore_index)
    return total / count


def mse_loss(input: jax.Array, target: jax.Array) -> jax.Array:
    return jnp.mean((input.astype(jnp.float32) - target.astype(jnp.float32)) ** 2)


def binary_cross_entropy_with_logits(logits: jax.Array, labels: jax.Array) -> jax.Array:
    x, y = logits.astype(jnp.float32), labels.astype(jnp.float32)
    return jnp.mean((1 - y) * x + jnp.log1p(jnp.exp(-jnp.abs(x))) + jnp.maximum(-x, 0))


def sequence_classification_loss(num_labels: int, problem_type: Optional[str], logits: jax.Array,
                                  labels: jax.Array) -> jax.Array:
    """The reference's loss rules for sequence classification (incl. regression for num_labels == 1)."""
    if problem_type is None:
        if num_labels == 1:
            return mse_loss(logits.reshape(-1), labels.reshape(-1))
        if labels.ndim == 1 or labels.shape[-1] == 1:
            labels = labels.reshape(-1).astype(jnp.int32)
            # rows with a negative label are ignored; none left gives 0
            total, count = _nll(logits.reshape(-1, num_labels), jnp.where(labels >= 0, labels, -1), ignore_index=-1)
            return jnp.where(count > 0, total / jnp.maximum(count, 1), 0.0)
        return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits.astype(jnp.float32), -1) * labels, -1))  # soft labels
    if problem_type == "regression":
        if num_labels == 1:
            return mse_loss(jnp.squeeze(logits), jnp.squeeze(labels))
        return mse_loss(logits, labels)
    if problem_type == "single_label_classification":
        return cross_entropy(logits.reshape(-1, num_labels), labels.reshape(-1))
    return binary_cross_entropy_with_logits(logits, labels)  # multi_label_classification


class FlaxDebertaV2ForMaskedLM(FlaxDebertaV2PreTrainedModel):
    task = "masked-lm"

    def __init__(self, config: DebertaV2Config, *, dtype=None, compute_dtype=None, rngs: Optional[nnx.Rngs] = None):
        super().__init__(config, dtype=dtype, compute_dtype=compute_dtype)
        rngs = default_rngs(rngs)
        self.deberta = FlaxDebertaV2Model(config, dtype=dtype, compute_dtype=compute_dtype, rngs=rngs)
        if config.legacy:
            self.cls = FlaxLegacyDebertaV2OnlyMLMHead(config, dtype=self._compute_dtype.value, rngs=rngs)
        else:
            schema.expected_shapes(config, self.task)  # raises for embedding_size != hidden_size
            self.lm_predictions = FlaxDebertaV2OnlyMLMHead(config, dtype=self._compute_dtype.value, rngs=rngs)
        self._cast_parameters()

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                 return_dict=None):
        output_attentions, output_hidden_states, return_dict = output_flags(
            self.config, output_attentions, output_hidden_states, return_dict)
        outputs = self.deberta(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                               output_attentions, output_hidden_states, return_dict=True)
        word_embeddings = self.deberta.embeddings.word_embeddings.embedding[...]
        head = self.cls if self.config.legacy else self.lm_predictions
        logits = head(outputs.last_hidden_state, word_embeddings)
        loss = None
        if labels is not None:
            loss = cross_entropy(logits.reshape(-1, self.config.vocab_size), _as_array(labels).reshape(-1))
        return finish(_with_encoder_outputs(outputs, loss=loss, logits=logits), return_dict)


class FlaxDebertaV2ForSequenceClassification(FlaxDebertaV2PreTrainedModel):
    task = "sequence-classification"

    def __init__(self, config: DebertaV2Config, *, dtype=None, compute_dtype=None, rngs: Optional[nnx.Rngs] = None):
        super().__init__(config, dtype=dtype, compute_dtype=compute_dtype)
        rngs = default_rngs(rngs)
        self.num_labels = config.num_labels
        self.problem_type = config.problem_type
        self.deberta = FlaxDebertaV2Model(config, dtype=dtype, compute_dtype=compute_dtype, rngs=rngs)
        self.pooler = FlaxContextPooler(config, dtype=self._compute_dtype.value, rngs=rngs)
        self.classifier = linear(config, config.hidden_size, config.num_labels, self._compute_dtype.value, rngs)
        self.dropout = dropout(config.classifier_dropout, rngs)
        self._cast_parameters()

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                 return_dict=None):
        output_attentions, output_hidden_states, return_dict = output_flags(
            self.config, output_attentions, output_hidden_states, return_dict)
        outputs = self.deberta(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                               output_attentions, output_hidden_states, return_dict=True)
        logits = self.classifier(self.dropout(self.pooler(outputs.last_hidden_state)))
        loss = None
        if labels is not None:
            loss = sequence_classification_loss(self.num_labels, self.problem_type, logits, _as_array(labels))
        return finish(_with_encoder_outputs(outputs, loss=loss, logits=logits), return_dict)


class FlaxDebertaV2ForTokenClassification(FlaxDebertaV2PreTrainedModel):
    task = "token-classification"

    def __init__(self, config: DebertaV2Config, *, dtype=None, compute_dtype=None, rngs: Optional[nnx.Rngs] = None):
        super().__init__(config, dtype=dtype, compute_dtype=compute_dtype)
        rngs = default_rngs(rngs)
        self.num_labels = config.num_labels
        self.deberta = FlaxDebertaV2Model(config, dtype=dtype, compute_dtype=compute_dtype, rngs=rngs)
        self.dropout = dropout(config.hidden_dropout_prob, rngs)
        self.classifier = linear(config, config.hidden_size, config.num_labels, self._compute_dtype.value, rngs)
        self._cast_parameters()

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                 return_dict=None):
        output_attentions, output_hidden_states, return_dict = output_flags(
            self.config, output_attentions, output_hidden_states, return_dict)
        outputs = self.deberta(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                               output_attentions, output_hidden_states, return_dict=True)
        logits = self.classifier(self.dropout(outputs.last_hidden_state))
        loss = None
        if labels is not None:
            loss = cross_entropy(logits.reshape(-1, self.num_labels), _as_array(labels).reshape(-1))
        return finish(_with_encoder_outputs(outputs, loss=loss, logits=logits), return_dict)


class FlaxDebertaV2ForQuestionAnswering(FlaxDebertaV2PreTrainedModel):
    task = "question-answering"

    def __init__(self, config: DebertaV2Config, *, dtype=None, compute_dtype=None, rngs: Optional[nnx.Rngs] = None):
        super().__init__(config, dtype=dtype, compute_dtype=compute_dtype)
        rngs = default_rngs(rngs)
        self.num_labels = config.num_labels
        self.deberta = FlaxDebertaV2Model(config, dtype=dtype, compute_dtype=compute_dtype, rngs=rngs)
        self.qa_outputs = linear(config, config.hidden_size, config.num_labels, self._compute_dtype.value, rngs)
        self._cast_parameters()

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, start_positions=None, end_positions=None, output_attentions=None,
                 output_hidden_states=None, return_dict=None):
        output_attentions, output_hidden_states, return_dict = output_flags(
            self.config, output_attentions, output_hidden_states, return_dict)
        outputs = self.deberta(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                               output_attentions, output_hidden_states, return_dict=True)
        logits = self.qa_outputs(outputs.last_hidden_state)
        start_logits, end_logits = logits[..., 0], logits[..., 1]
        loss = None
        if start_positions is not None and end_positions is not None:
            ignored_index = start_logits.shape[1]  # positions outside the sequence are clamped here and ignored
            start = jnp.clip(_as_array(start_positions).reshape(-1), 0, ignored_index)
            end = jnp.clip(_as_array(end_positions).reshape(-1), 0, ignored_index)
            loss = (cross_entropy(start_logits, start, ignore_index=ignored_index)
                    + cross_entropy(end_logits, end, ignore_index=ignored_index)) / 2
        return finish(_with_encoder_outputs(outputs, loss=loss, start_logits=start_logits,
                                            end_logits=end_logits), return_dict)


class FlaxDebertaV2ForMultipleChoice(FlaxDebertaV2PreTrainedModel):
    task = "multiple-choice"

    def __init__(self, config: DebertaV2Config, *, dtype=None, compute_dtype=None, rngs: Optional[nnx.Rngs] = None):
        super().__init__(config, dtype=dtype, compute_dtype=compute_dtype)
        rngs = default_rngs(rngs)
        self.deberta = FlaxDebertaV2Model(config, dtype=dtype, compute_dtype=compute_dtype, rngs=rngs)
        self.pooler = FlaxContextPooler(config, dtype=self._compute_dtype.value, rngs=rngs)
        self.classifier = linear(config, config.hidden_size, 1, self._compute_dtype.value, rngs)
        self.dropout = dropout(config.classifier_dropout, rngs)
        self._cast_parameters()

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                 return_dict=None):
        """Inputs are [batch, num_choices, seq] ([batch, num_choices, seq, E] for inputs_embeds)."""
        output_attentions, output_hidden_states, return_dict = output_flags(
            self.config, output_attentions, output_hidden_states, return_dict)
        ref = input_ids if input_ids is not None else inputs_embeds
        num_choices = ref.shape[1]

        def flat(x, tail: int = 1):
            return None if x is None else _as_array(x).reshape(-1, *np.shape(x)[-tail:])

        mask_tail = 2 if attention_mask is not None and np.ndim(attention_mask) == 4 else 1
        outputs = self.deberta(flat(input_ids), flat(attention_mask, mask_tail), flat(token_type_ids),
                               flat(position_ids), flat(inputs_embeds, 2), output_attentions,
                               output_hidden_states, return_dict=True)
        logits = self.classifier(self.dropout(self.pooler(outputs.last_hidden_state)))
        reshaped_logits = logits.reshape(-1, num_choices)
        loss = None
        if labels is not None:
            loss = cross_entropy(reshaped_logits, _as_array(labels).reshape(-1))
        return finish(_with_encoder_outputs(outputs, loss=loss, logits=reshaped_logits), return_dict)


MODEL_CLASSES = {cls.task: cls for cls in (
    FlaxDebertaV2Model, FlaxDebertaV2ForMaskedLM, FlaxDebertaV2ForSequenceClassification,
    FlaxDebertaV2ForTokenClassification, FlaxDebertaV2ForQuestionAnswering, FlaxDebertaV2ForMultipleChoice)}
