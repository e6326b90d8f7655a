"""DeBERTa-v2/v3 in PyTorch, numerically identical to transformers 4.57.6.

Reads like the paper: embeddings -> relative positions -> disentangled attention -> layer -> encoder (with the
nGiE convolution of v2) -> task heads. Module attribute names are the canonical weight names
(``deberta.encoder.layer.0.attention.self.query_proj.weight``), so ``state_dict()`` *is* the schema.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
from typing import Any, Iterable, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from deberta_xf import schema
from deberta_xf.configuration import DebertaV2Config
from deberta_xf.limits import check_memory
from deberta_xf.loading import dtype_name, loading_info, open_checkpoint, resolve_config, save_sharded
from deberta_xf.outputs import ModelOutput, finish, output_flags
from deberta_xf.relative_position import DistanceTable, distance_table

logger = logging.getLogger("deberta_xf")

def gelu_new(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation written out, as the reference's NewGELUActivation (not F.gelu's fused kernel)."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


ACT2FN = {
    "gelu": F.gelu,  # exact (erf) GELU, as the reference's ACT2FN["gelu"]
    "gelu_new": gelu_new,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "silu": F.silu,
    "swish": F.silu,
    "linear": lambda x: x,
}


# =============================================================================================================
# Embeddings
class DebertaV2Embeddings(nn.Module):
    """Word (+ absolute position) (+ token type) embeddings -> [embed_proj] -> LayerNorm -> x mask -> dropout."""

    def __init__(self, config: DebertaV2Config):
        super().__init__()
        E, H = config.embedding_dim, config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, E, padding_idx=config.pad_token_id)
        self.position_embeddings = (nn.Embedding(config.max_position_embeddings, E)
                                    if config.position_biased_input else None)
        self.token_type_embeddings = (nn.Embedding(config.type_vocab_size, E)
                                      if config.type_vocab_size > 0 else None)
        self.embed_proj = nn.Linear(E, H, bias=False) if E != H else None
        self.LayerNorm = nn.LayerNorm(H, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None, input_mask=None, inputs_embeds=None):
        embeddings = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds  # [B, L, E]
        seq_length = embeddings.shape[1]
        if self.position_embeddings is not None:
            if position_ids is None:
                position_ids = torch.arange(seq_length, device=embeddings.device)[None, :]
            embeddings = embeddings + self.position_embeddings(position_ids.long())
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros(embeddings.shape[:2], dtype=torch.long, device=embeddings.device)
            embeddings = embeddings + self.token_type_embeddings(token_type_ids.long())
        if self.embed_proj is not None:
            embeddings = self.embed_proj(embeddings)
        embeddings = self.LayerNorm(embeddings)
        if input_mask is not None:  # padding rows become exactly 0
            embeddings = embeddings * input_mask.unsqueeze(-1).to(embeddings.dtype)
        return self.dropout(embeddings)


# =============================================================================================================
# Relative positions: the gather column of each term (c2p, p2c) as a function of the distance i - j comes from
# deberta_xf.relative_position (NumPy, shared by all frameworks: buckets and clamping) as one small table, a buffer
# of the encoder; for a sequence length it becomes the [L, L] gather indices with tensor ops (arange, clamp,
# lookup), so a compiled graph builds them for any length. Eagerly, only the window of relative-embedding rows
# that this length reads is projected and scored (the same dot products, less work); a compiled graph uses all
# 2 span rows, so that its shapes do not depend on the length through the bucket arithmetic.
def relative_position_index(table: DistanceTable, by_distance: dict[str, torch.Tensor],
                            seq_length) -> tuple[slice, dict[str, torch.Tensor]]:
    start, stop = (0, 2 * table.span) if torch.compiler.is_compiling() else table.window(seq_length)
    positions = torch.arange(seq_length, device=next(iter(by_distance.values())).device)
    distance = (positions[:, None] - positions[None, :]).clamp(-table.reach, table.reach) + table.reach
    return slice(start, stop), {term: column[distance] - start for term, column in by_distance.items()}


def relative_position_table(table: DistanceTable, by_distance: dict[str, torch.Tensor],
                            seq_length) -> tuple[slice, dict[str, torch.Tensor]]:
    """:func:`relative_position_index` without the [L, L] gather: each term's column by clamped distance
    (``[2 reach + 1]``, relative to the window's first row), for the fused kernel to look up per (query, key)."""
    start, stop = (0, 2 * table.span) if torch.compiler.is_compiling() else table.window(seq_length)
    return slice(start, stop), {term: column - start for term, column in by_distance.items()}


def attention_implementation(config: DebertaV2Config, output_attentions: bool, training: bool) -> str:
    """The implementation a forward pass runs: the config's ``_attn_implementation``, except eager when attention
    probabilities are returned (as the reference's sdpa paths do) and, for "fused", in training with attention
    dropout (the kernel has no dropout)."""
    implementation = config._attn_implementation
    if output_attentions:
        return "eager"
    if implementation == "fused" and training and config.attention_probs_dropout_prob > 0:
        return "eager"
    return implementation


# =============================================================================================================
# Disentangled self-attention
class DisentangledSelfAttention(nn.Module):
    """softmax((c2c + c2p + p2c) / sqrt(d * scale_factor)) V, heads as [B, heads, L, d].

    Three implementations of the same math (``config._attn_implementation``, read at each call): "eager" (the
    reference's ops: [B, heads, L, L] scores), "sdpa" (the relative terms and the mask as one additive bias per head
    into ``F.scaled_dot_product_attention``) and "fused" (one Triton kernel, no [L, L] tensor: fused_attention.py).
    """

    def __init__(self, config: DebertaV2Config):
        super().__init__()
        self.config = config
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.head_size
        all_head_size = config.num_attention_heads * config.head_size
        H = config.hidden_size
        self.query_proj = nn.Linear(H, all_head_size)
        self.key_proj = nn.Linear(H, all_head_size)
        self.value_proj = nn.Linear(H, all_head_size)
        self.pos_att_type = config.pos_att_types
        self.relative_attention = config.relative_attention
        self.share_att_key = config.share_att_key
        self.scale_factor = config.scale_factor
        if self.relative_attention:
            self.pos_dropout = nn.Dropout(config.hidden_dropout_prob)
            if not self.share_att_key:
                if "c2p" in self.pos_att_type:
                    self.pos_key_proj = nn.Linear(H, all_head_size)
                if "p2c" in self.pos_att_type:
                    self.pos_query_proj = nn.Linear(H, all_head_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[..., L, heads * d] -> [..., heads, L, d]"""
        x = x.view(*x.shape[:-1], self.num_attention_heads, self.attention_head_size)
        return x.transpose(-2, -3)

    def forward(self, hidden_states, attention_mask, rel_embeddings=None, position_index=None,
                output_attentions=False):
        query = self.split_heads(self.query_proj(hidden_states))  # [B, h, L, d]
        key = self.split_heads(self.key_proj(hidden_states))
        value = self.split_heads(self.value_proj(hidden_states))

        scale = math.sqrt(self.attention_head_size * self.scale_factor)
        implementation = attention_implementation(self.config, output_attentions, self.training)
        if implementation == "sdpa":
            return self.merge_heads(self.sdpa_attention(query, key, value, attention_mask, rel_embeddings,
                                                        position_index, scale)), None
        if implementation == "fused":
            return self.merge_heads(self.fused_attention(query, key, value, attention_mask, rel_embeddings,
                                                         position_index, scale)), None
        scores = torch.matmul(query, key.transpose(-1, -2) / scale)  # c2c, K scaled first as the reference
        if self.relative_attention:
            rel_embeddings = self.pos_dropout(rel_embeddings)
            scores = scores + self.disentangled_attention_bias(query, key, rel_embeddings, position_index, scale)

        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        probs = self.dropout(torch.softmax(scores, dim=-1))
        context = torch.matmul(probs, value)  # [B, h, L, d]
        return self.merge_heads(context), (probs if output_attentions else None)

    @staticmethod
    def merge_heads(context: torch.Tensor) -> torch.Tensor:
        """[B, heads, L, d] -> [B, L, heads * d]"""
        return context.transpose(1, 2).reshape(*context.shape[:1], context.shape[2], -1)

    def sdpa_attention(self, query, key, value, attention_mask, rel_embeddings, position_index, scale):
        """The relative terms (already divided by ``scale``) with the mask folded in as eager does (masked pairs at
        ``finfo.min``: a fully masked row comes out uniform) as one additive bias [B, heads, L, L] per head."""
        fill = torch.finfo(query.dtype).min
        bias = 0
        if self.relative_attention:
            bias = self.disentangled_attention_bias(query, key, self.pos_dropout(rel_embeddings), position_index,
                                                    scale)
        if not torch.is_tensor(bias):  # no relative terms: the mask alone
            bias = torch.zeros(attention_mask.shape, dtype=query.dtype, device=query.device)
        bias = bias.masked_fill(~attention_mask, fill)
        dropout = self.dropout.p if self.training else 0.0
        return F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=dropout, scale=1 / scale)

    def fused_attention(self, query, key, value, attention_mask, rel_embeddings, position_index, scale):
        """The Triton kernel: the position projections (q . k^pos and k . q^pos over the window's rows, O(L x rows)
        per head) are made here; the kernel reads them by distance (``position_index``: the per-distance tables)."""
        from deberta_xf.torch.fused_attention import fused_attention  # Triton only for this implementation

        c2p_proj = p2c_proj = None
        tables = {}
        if self.relative_attention:
            pos_query, pos_key = self.position_projections(self.pos_dropout(rel_embeddings))
            if "c2p" in self.pos_att_type:
                c2p_proj = torch.matmul(query, pos_key.transpose(-1, -2))  # [B, h, L, rows]
            if "p2c" in self.pos_att_type:
                p2c_proj = torch.matmul(key, pos_query.transpose(-1, -2))  # [B, h, L, rows]
            tables = position_index
        return fused_attention(query, key, value, c2p_proj, p2c_proj, tables, attention_mask, scale)

    def position_projections(self, rel_embeddings):
        """(position queries, position keys) [heads, rows, d] of the relative embeddings; None for a term that is
        off when the keys are not shared."""
        if self.share_att_key:
            pos_query = self.split_heads(self.query_proj(rel_embeddings))  # [h, rows, d]
            pos_key = self.split_heads(self.key_proj(rel_embeddings))
        else:
            pos_key = self.split_heads(self.pos_key_proj(rel_embeddings)) if "c2p" in self.pos_att_type else None
            pos_query = (self.split_heads(self.pos_query_proj(rel_embeddings))
                         if "p2c" in self.pos_att_type else None)
        return pos_query, pos_key

    def disentangled_attention_bias(self, query, key, rel_embeddings, position_index, scale):
        """c2p(i, j) = q_i . k^r_{c2p(i,j)}   and   p2c(i, j) = k_j . q^r_{p2c(j,i)}, both divided by ``scale``.

        ``rel_embeddings`` holds the rows of the relative-embedding table this length reads (at most 2 span);
        ``position_index`` indexes into them."""
        pos_query, pos_key = self.position_projections(rel_embeddings)
        batch_heads_len = query.shape[:3]
        score = 0
        if "c2p" in self.pos_att_type:
            c2p = torch.matmul(query, pos_key.transpose(-1, -2))  # [B, h, L, rows]
            index = position_index["c2p"].expand(*batch_heads_len, -1)
            score = score + torch.gather(c2p, -1, index) / scale
        if "p2c" in self.pos_att_type:
            p2c = torch.matmul(key, pos_query.transpose(-1, -2))  # [B, h, Lk, rows]
            index = position_index["p2c"].expand(*key.shape[:3], -1)
            score = score + torch.gather(p2c, -1, index).transpose(-1, -2) / scale
        return score


class DebertaV2SelfOutput(nn.Module):
    def __init__(self, config: DebertaV2Config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, input_tensor):
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class DebertaV2Attention(nn.Module):
    def __init__(self, config: DebertaV2Config):
        super().__init__()
        self.self = DisentangledSelfAttention(config)
        self.output = DebertaV2SelfOutput(config)

    def forward(self, hidden_states, attention_mask, rel_embeddings=None, position_index=None,
                output_attentions=False):
        context, probs = self.self(hidden_states, attention_mask, rel_embeddings, position_index, output_attentions)
        return self.output(context, hidden_states), probs


# =============================================================================================================
# Layer (post-LayerNorm transformer block)
class DebertaV2Intermediate(nn.Module):
    def __init__(self, config: DebertaV2Config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, hidden_states):
        return self.act(self.dense(hidden_states))


class DebertaV2Output(nn.Module):
    def __init__(self, config: DebertaV2Config):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, input_tensor):
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class DebertaV2Layer(nn.Module):
    def __init__(self, config: DebertaV2Config):
        super().__init__()
        self.attention = DebertaV2Attention(config)
        self.intermediate = DebertaV2Intermediate(config)
        self.output = DebertaV2Output(config)

    def forward(self, hidden_states, attention_mask, rel_embeddings=None, position_index=None,
                output_attentions=False):
        attention_output, probs = self.attention(hidden_states, attention_mask, rel_embeddings, position_index,
                                                 output_attentions)
        return self.output(self.intermediate(attention_output), attention_output), probs


# =============================================================================================================
# Encoder, with the nGiE convolution of v2 (applied once, beside layer 0)
class ConvLayer(nn.Module):
    """LayerNorm(layer0_output + act(dropout(conv(embedding_output)))) on non-padding positions."""

    def __init__(self, config: DebertaV2Config):
        super().__init__()
        k = config.conv_kernel_size
        self.conv = nn.Conv1d(config.hidden_size, config.hidden_size, k, padding=(k - 1) // 2,
                              groups=config.conv_groups)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.act = ACT2FN[config.conv_act]

    def forward(self, hidden_states, residual_states, input_mask):
        out = self.conv(hidden_states.transpose(1, 2)).transpose(1, 2)  # [B, L, H]
        keep = input_mask.unsqueeze(-1).to(out.dtype)
        out = out.masked_fill(keep == 0, 0)
        out = self.act(self.dropout(out))
        return self.LayerNorm(residual_states + out) * keep


class DebertaV2Encoder(nn.Module):
    def __init__(self, config: DebertaV2Config):
        super().__init__()
        self.config = config
        self.layer = nn.ModuleList(DebertaV2Layer(config) for _ in range(config.num_hidden_layers))
        if config.relative_attention:
            self.rel_embeddings = nn.Embedding(2 * config.att_span, config.hidden_size)
            self.position_table = distance_table(config)
            for term, column in self.position_table.index.items():  # buffers: they follow .to(device)
                self.register_buffer(f"{term}_by_distance", torch.from_numpy(column.copy()), persistent=False)
        if config.rel_embeddings_layer_norm:
            self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.conv = ConvLayer(config) if config.conv_kernel_size > 0 else None
        self.gradient_checkpointing = False  # recompute each layer in the backward pass (training mode only)

    def get_rel_embedding(self) -> Optional[torch.Tensor]:
        if not self.config.relative_attention:
            return None
        rel_embeddings = self.rel_embeddings.weight
        if self.config.rel_embeddings_layer_norm:
            rel_embeddings = self.LayerNorm(rel_embeddings)
        return rel_embeddings

    def forward(self, hidden_states, attention_mask, input_mask, output_hidden_states=False,
                output_attentions=False):
        """``attention_mask``: bool [B, 1, L, L] (or [B, 1, 1, L] token mask for "fused", see attention_masks);
        ``input_mask``: [B, L] (1 = token, 0 = padding)."""
        rel_embeddings = position_index = None
        if self.config.relative_attention:
            by_distance = {term: getattr(self, f"{term}_by_distance") for term in self.position_table.index}
            fused = attention_implementation(self.config, output_attentions, self.training) == "fused"
            positions = relative_position_table if fused else relative_position_index  # fused: no [L, L] index
            rows, position_index = positions(self.position_table, by_distance, hidden_states.shape[1])
            rel_embeddings = self.get_rel_embedding()[rows]
        all_hidden_states = [hidden_states] if output_hidden_states else None
        all_attentions = [] if output_attentions else None
        embedding_output = hidden_states
        for i, layer in enumerate(self.layer):
            if self.gradient_checkpointing and self.training:
                hidden_states, probs = torch.utils.checkpoint.checkpoint(
                    layer, hidden_states, attention_mask, rel_embeddings, position_index, output_attentions,
                    use_reentrant=False)
            else:
                hidden_states, probs = layer(hidden_states, attention_mask, rel_embeddings, position_index,
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


def attention_masks(attention_mask: torch.Tensor, tokens_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D [B, L] or 3-D [B, Lq, Lk] mask -> (bool [B, 1, L, L] pair mask, [B, L] token mask).

    A 2-D mask becomes the outer product (padding query rows are masked too). A token of a 3-D mask counts as
    present when any query attends to it, as the reference's ConvLayer reads it. ``tokens_only`` (the fused
    kernel): a 2-D mask stays a bool [B, 1, 1, L] token mask that stands for that outer product (no [L, L] tensor).
    """
    if attention_mask.dim() == 2 and tokens_only:
        return attention_mask.bool()[:, None, None, :], attention_mask
    if attention_mask.dim() == 2:
        input_mask = attention_mask
        pair = attention_mask[:, None, :, None] * attention_mask[:, None, None, :]
    elif attention_mask.dim() == 3:
        input_mask = (attention_mask.sum(-2) > 0).to(attention_mask.dtype)
        pair = attention_mask[:, None]
    else:
        raise ValueError(f"attention_mask must be 2-D [batch, seq] or 3-D [batch, seq, seq], got shape "
                         f"{list(attention_mask.shape)}")
    return pair.bool(), input_mask


# =============================================================================================================
# Pre-trained model base: init, loading, saving
def _as_tensor(x, dtype=None):
    if x is None or isinstance(x, torch.Tensor):
        return x
    return torch.as_tensor(np.asarray(x), dtype=dtype)


_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                 "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def as_torch_dtype(dtype: Any) -> Optional[torch.dtype]:
    """None / a string / a numpy, torch or other framework's dtype -> a torch dtype (``"auto"`` is resolved by
    ``from_pretrained`` before this)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    return _TORCH_DTYPES[dtype_name(dtype)]


def _resized_rows(old: torch.Tensor, new_rows: int, std: float, mean_resizing: bool) -> torch.Tensor:
    """``old`` ([rows, ...] or [rows]) with ``new_rows`` rows: the first ones kept, new ones drawn as the reference's
    ``resize_token_embeddings`` does (around the old mean, or normal(0, std); a bias: its mean, or 0)."""
    n = min(old.shape[0], new_rows)
    out = torch.empty((new_rows, *old.shape[1:]), dtype=old.dtype, device=old.device)
    out[:n] = old[:n]
    added = new_rows - n
    if added <= 0:
        return out
    source = old.float()
    if old.dim() == 1:
        out[n:] = source.mean() if mean_resizing else 0
        return out
    if not mean_resizing:
        out[n:] = torch.randn((added, *old.shape[1:]), device=old.device).mul(std).to(old.dtype)
        return out
    mean = source.mean(0)
    centered = source - mean
    covariance = centered.T @ centered / source.shape[0]
    try:
        sample = torch.distributions.MultivariateNormal(mean, covariance_matrix=1e-9 * covariance).sample((added,))
    except (ValueError, RuntimeError):  # covariance not positive definite: the mean, as the reference
        sample = mean.expand(added, -1)
    out[n:] = sample.to(old.dtype)
    return out


def with_attn_implementation(config: DebertaV2Config, attn_implementation: str | None) -> DebertaV2Config:
    """``config``, or a copy of it whose ``_attn_implementation`` is ``attn_implementation`` (checked there: a
    ConfigError names the accepted values)."""
    if attn_implementation is None:
        return config
    config = copy.deepcopy(config)
    config._attn_implementation = attn_implementation
    return config


# torch.nn.init's in-place initialisers: what the layers' own reset_parameters call
TORCH_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                        "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_",
                        "sparse_")
_init_weights_enabled = True  # False under no_init_weights(): post_init skips _init_weights


def _no_op_init(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return tensor


@contextlib.contextmanager
def no_init_weights() -> Iterator[None]:
    """Build models whose parameters are allocated but not initialised (as the reference's context of that name):
    torch.nn.init's initialisers do nothing and ``post_init`` skips ``_init_weights``, so no time and no random
    numbers are spent on weights that a checkpoint then overwrites. Buffers are computed as always. Everything is
    restored on exit, also on an exception."""
    global _init_weights_enabled
    saved = {name: getattr(nn.init, name) for name in TORCH_INIT_FUNCTIONS}
    enabled = _init_weights_enabled
    try:
        for name in TORCH_INIT_FUNCTIONS:
            setattr(nn.init, name, _no_op_init)
        _init_weights_enabled = False
        yield
    finally:
        for name, function in saved.items():
            setattr(nn.init, name, function)
        _init_weights_enabled = enabled


class DebertaV2PreTrainedModel(nn.Module):
    """Base of every PyTorch DeBERTa-v2 model: weight init, ``from_pretrained`` and ``save_pretrained``."""

    task = "base"
    base_model_prefix = "deberta"
    main_input_name = "input_ids"
    # The reference's class attributes that its tests and Trainer read: nothing is left out of a save or expected
    # missing on load, and the tied decoder is the word embeddings' own parameter (no second tensor to tie).
    _keys_to_ignore_on_save = None
    _keys_to_ignore_on_load_missing = None
    _tied_weights_keys = None
    _supports_sdpa = True

    def __init__(self, config: DebertaV2Config):
        super().__init__()
        self.config = config.validate()  # the one aggregated ConfigError, before any layer is built
        check_memory(self.config, self.task, None, "torch")  # built in float32: refused before allocating

    def post_init(self) -> None:
        if _init_weights_enabled:
            self.apply(self._init_weights)
        if getattr(self.config, "gradient_checkpointing", False):  # the reference's old config flag, consumed
            self.gradient_checkpointing_enable()
            self.config._extra.pop("gradient_checkpointing")
        self.eval()  # inference mode unless the user calls .train()

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()
        elif isinstance(module, (LegacyDebertaV2LMPredictionHead, DebertaV2LMPredictionHead)):
            module.bias.data.zero_()

    @classmethod
    def from_config(cls, config: DebertaV2Config, dtype: Any = None, seed: int | None = None,
                    attn_implementation: str | None = None):
        """A randomly initialised model (normal(0, initializer_range) weights, as the reference).
        ``attn_implementation``: "eager" (default) | "sdpa" | "fused", set on a copy of ``config``."""
        config = with_attn_implementation(config, attn_implementation)
        if seed is not None:
            torch.manual_seed(seed)
        model = cls(config)
        if dtype is not None:
            model.to(as_torch_dtype(dtype))
        return model.eval()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, config: Any = None,
                        dtype: Any = None, ignore_mismatched_sizes: bool = False,
                        attn_implementation: str | None = None, output_loading_info: bool = False,
                        torch_dtype: Any = None, **config_overrides: Any):
        """Load a checkpoint directory (``config.json`` + any supported weights file) or a weights file.

        The parameters are float32, or ``dtype`` (``"auto"``: the checkpoint's stored floating dtype; a string,
        numpy or torch dtype). ``ignore_mismatched_sizes=True`` re-initialises tensors whose shape differs
        from the checkpoint's (listed in ``model.loading_report.reinitialized``). ``attn_implementation``:
        "eager" (default) | "sdpa" | "fused" (docs/attention.md). Returned in eval mode; with
        ``output_loading_info=True``, as ``(model, {"missing_keys", "unexpected_keys", "mismatched_keys",
        "error_msgs"})``. ``torch_dtype``: the reference's older name of ``dtype``.
        """
        if torch_dtype is not None:
            if dtype is not None:
                raise ValueError("pass dtype or torch_dtype (its older name), not both")
            dtype = torch_dtype
        cfg = resolve_config(pretrained_model_name_or_path, config)
        if config_overrides:
            cfg = DebertaV2Config.from_dict(cfg.to_dict(), **config_overrides)
        cfg = with_attn_implementation(cfg, attn_implementation)
        with open_checkpoint(pretrained_model_name_or_path, cls.task, "torch", config=cfg,
                             ignore_mismatched_sizes=ignore_mismatched_sizes) as checkpoint:
            # A checkpoint with every parameter: nothing is drawn for weights it overwrites. Else built as
            # from_config builds it, so a seed gives the fresh (missing or re-initialised) tensors it always gave.
            complete = not (checkpoint.missing_head or checkpoint.report.reinitialized)
            with no_init_weights() if complete else contextlib.nullcontext():
                model = cls(cfg)
            written = model._copy_arrays(checkpoint.arrays(stacklevel=4))  # each tensor as read: one at a time
        if complete:
            unwritten = [name for name, _ in model.named_parameters() if name not in written]
            if unwritten:
                raise RuntimeError(f"internal error: {checkpoint.weights_path}: parameters built uninitialised but "
                                   f"not loaded from the checkpoint: {', '.join(unwritten)}")
        model.loading_report = checkpoint.report
        model.weights_path = checkpoint.weights_path
        dtype = dtype_name(dtype)
        if dtype == "auto":
            dtype = checkpoint.stored_dtype
        if dtype is not None:
            model.to(as_torch_dtype(dtype))
        model.eval()
        return (model, loading_info(checkpoint.report)) if output_loading_info else model

    def load_canonical(self, arrays: dict[str, np.ndarray]) -> None:
        """Copy canonical arrays (PyTorch layout already) into the parameters of the same names."""
        self._copy_arrays(arrays.items())

    def _copy_arrays(self, arrays: Iterable[tuple[str, np.ndarray]]) -> set[str]:
        """Copy each (name, array) into the parameter of that name; returns the names written."""
        params = dict(self.named_parameters())
        written = set()
        with torch.no_grad():
            for name, array in arrays:
                param = params[name]
                param.copy_(torch.from_numpy(schema.contiguous(array)).to(param.dtype))
                written.add(name)
        return written

    def canonical_state(self) -> dict[str, np.ndarray]:
        """Canonical name -> numpy array (float32 copies of bf16 parameters)."""
        out = {}
        for name, p in self.named_parameters():
            t = p.detach().cpu()
            out[name] = (t.float() if t.dtype == torch.bfloat16 else t).numpy().copy()
        return out

    def save_pretrained(self, save_directory: str | os.PathLike, max_shard_size: int | str = "5GB",
                        safe_serialization: bool = True, format: Optional[str] = None) -> None:
        """Write ``config.json`` and ``model.safetensors`` (``pytorch_model.bin`` with ``safe_serialization=False``
        or format="bin"), as the reference: past ``max_shard_size`` (bytes, or "5GB", "500MiB") the weights are
        ``model-00001-of-0000N.safetensors`` shards and ``model.safetensors.index.json``."""
        format = format or ("safetensors" if safe_serialization else "bin")
        save_sharded(save_directory, self.config, self.task, "torch", self.canonical_state(), format, max_shard_size)

    @property
    def base_model(self) -> nn.Module:
        """The encoder model (``self.deberta``), or the model itself for DebertaV2Model."""
        return getattr(self, self.base_model_prefix, self)

    @classmethod
    def can_generate(cls) -> bool:
        return False  # an encoder: no ``generate``, no generation_config.json

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The parameters' floating dtype."""
        return next(p.dtype for p in self.parameters() if p.is_floating_point())

    # ---------------------------------------------------------------------------------------------------------
    # The reference's model methods: embeddings, resizing, parameter counts, gradient checkpointing
    def get_input_embeddings(self) -> nn.Embedding:
        return getattr(self, self.base_model_prefix, self).embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        getattr(self, self.base_model_prefix, self).embeddings.word_embeddings = value

    def get_output_embeddings(self) -> Optional[nn.Module]:
        return None  # the masked-LM model overrides this

    def tie_weights(self) -> None:
        """The reference's call after changing embeddings; nothing to do here: a tied decoder reads the word
        embeddings' own parameter at every call."""

    def enable_input_require_grads(self) -> None:
        """Make the word embeddings' output require grad (as the reference, for adapters trained on a frozen model
        with gradient checkpointing)."""
        def make_inputs_require_grads(module, input, output):
            output.requires_grad_(True)

        self._require_grads_hook = self.get_input_embeddings().register_forward_hook(make_inputs_require_grads)

    def disable_input_require_grads(self) -> None:
        self._require_grads_hook.remove()

    def _resize_output(self, new_num_tokens: int, mean_resizing: bool) -> None:
        """Resize the head's vocabulary-sized tensors (the masked-LM model overrides this)."""

    def resize_token_embeddings(self, new_num_tokens: Optional[int] = None, pad_to_multiple_of: Optional[int] = None,
                                mean_resizing: bool = True) -> nn.Embedding:
        """Resize the word embeddings (and the masked-LM bias, and an untied decoder) to ``new_num_tokens`` rows and
        set ``config.vocab_size``, as the reference: the first rows are kept; new rows are drawn around the old
        rows' mean with their covariance scaled by 1e-9 (``mean_resizing``, the reference's default) or
        normal(0, initializer_range). Returns the new input embeddings."""
        old = self.get_input_embeddings()
        if new_num_tokens is None and pad_to_multiple_of is None:
            return old
        if pad_to_multiple_of is not None and not isinstance(pad_to_multiple_of, int):
            raise ValueError(f"Asking to pad the embedding matrix to a multiple of `{pad_to_multiple_of}`, which is "
                             "not and integer. Please make sure to pass an integer")  # the reference's words
        new_num_tokens = old.weight.shape[0] if new_num_tokens is None else int(new_num_tokens)
        if pad_to_multiple_of is not None:
            new_num_tokens = -(-new_num_tokens // pad_to_multiple_of) * pad_to_multiple_of
        padding_idx = old.padding_idx if old.padding_idx is not None and old.padding_idx < new_num_tokens else None
        new = nn.Embedding(new_num_tokens, old.weight.shape[1], padding_idx=padding_idx,
                           device=old.weight.device, dtype=old.weight.dtype)
        new.weight.data = _resized_rows(old.weight.data, new_num_tokens, self.config.initializer_range,
                                        mean_resizing)
        new.weight.requires_grad_(old.weight.requires_grad)
        self.set_input_embeddings(new)
        self._resize_output(new_num_tokens, mean_resizing)
        self.config.vocab_size = new_num_tokens
        return new

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Number of (distinct) parameters; ``exclude_embeddings`` leaves out every embedding table's, as the
        reference."""
        embeddings = {f"{name}.weight" for name, module in self.named_modules() if isinstance(module, nn.Embedding)}
        return sum(p.numel() for name, p in self.named_parameters()
                   if not (exclude_embeddings and name in embeddings) and (p.requires_grad or not only_trainable))

    supports_gradient_checkpointing = True

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: Optional[dict] = None) -> None:
        """Recompute each encoder layer in the backward pass (``torch.utils.checkpoint``, non-reentrant) when
        training: less activation memory, the same gradients."""
        for module in self.modules():
            if isinstance(module, DebertaV2Encoder):
                module.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        for module in self.modules():
            if isinstance(module, DebertaV2Encoder):
                module.gradient_checkpointing = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in self.modules() if isinstance(m, DebertaV2Encoder))

    def _prepare(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds):
        if input_ids is not None and inputs_embeds is not None:
            raise ValueError("You cannot specify both input_ids and inputs_embeds at the same time")
        if input_ids is None and inputs_embeds is None:
            raise ValueError("You have to specify either input_ids or inputs_embeds")
        device = self.device
        input_ids = _as_tensor(input_ids, torch.long)
        inputs_embeds = _as_tensor(inputs_embeds)
        shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:-1]
        if attention_mask is None:
            attention_mask = torch.ones(shape, dtype=torch.long, device=device)
        return (input_ids.to(device) if input_ids is not None else None,
                _as_tensor(attention_mask).to(device),
                _as_tensor(token_type_ids, torch.long).to(device) if token_type_ids is not None else None,
                _as_tensor(position_ids, torch.long).to(device) if position_ids is not None else None,
                inputs_embeds.to(device) if inputs_embeds is not None else None)


# =============================================================================================================
# The encoder model
class DebertaV2Model(DebertaV2PreTrainedModel):
    def __init__(self, config: DebertaV2Config):
        super().__init__(config)
        self.embeddings = DebertaV2Embeddings(config)
        self.encoder = DebertaV2Encoder(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, output_attentions=None, output_hidden_states=None, return_dict=None):
        output_attentions, output_hidden_states, return_dict = output_flags(
            self.config, output_attentions, output_hidden_states, return_dict)
        input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds = self._prepare(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds)
        fused = attention_implementation(self.config, output_attentions, self.training) == "fused"
        pair_mask, input_mask = attention_masks(attention_mask, tokens_only=fused)
        embedding_output = self.embeddings(input_ids, token_type_ids, position_ids, input_mask, inputs_embeds)
        return finish(self.encoder(embedding_output, pair_mask, input_mask, output_hidden_states, output_attentions),
                      return_dict)


# =============================================================================================================
# Heads
class LegacyDebertaV2PredictionHeadTransform(nn.Module):
    def __init__(self, config: DebertaV2Config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.embedding_dim)
        self.act = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.embedding_dim, eps=config.layer_norm_eps)

    def forward(self, hidden_states):
        return self.LayerNorm(self.act(self.dense(hidden_states)))


class LegacyDebertaV2LMPredictionHead(nn.Module):
    """``cls.predictions``: transform (H -> E) then the decoder, tied to the word embeddings unless the config says
    ``tie_word_embeddings: false`` (then its own ``decoder.weight``), plus ``bias``."""

    def __init__(self, config: DebertaV2Config):
        super().__init__()
        self.transform = LegacyDebertaV2PredictionHeadTransform(config)
        self.decoder = None if schema.ties_decoder(config) else nn.Linear(config.embedding_dim, config.vocab_size,
                                                                          bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden_states, word_embeddings: torch.Tensor):
        weight = word_embeddings if self.decoder is None else self.decoder.weight
        return F.linear(self.transform(hidden_states), weight, self.bias)


class LegacyDebertaV2OnlyMLMHead(nn.Module):
    def __init__(self, config: DebertaV2Config):
        super().__init__()
        self.predictions = LegacyDebertaV2LMPredictionHead(config)

    def forward(self, sequence_output, word_embeddings):
        return self.predictions(sequence_output, word_embeddings)


class DebertaV2LMPredictionHead(nn.Module):
    """``lm_predictions.lm_head`` (the published checkpoints' layout): LN(act(dense(h))) @ W_emb^T + bias."""

    def __init__(self, config: DebertaV2Config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden_states, word_embeddings: torch.Tensor):
        hidden_states = self.LayerNorm(self.act(self.dense(hidden_states)))
        return torch.matmul(hidden_states, word_embeddings.t()) + self.bias


class DebertaV2OnlyMLMHead(nn.Module):
    def __init__(self, config: DebertaV2Config):
        super().__init__()
        self.lm_head = DebertaV2LMPredictionHead(config)

    def forward(self, sequence_output, word_embeddings):
        return self.lm_head(sequence_output, word_embeddings)


class ContextPooler(nn.Module):
    """The first token's hidden state -> dropout -> dense -> activation."""

    def __init__(self, config: DebertaV2Config):
        super().__init__()
        self.dense = nn.Linear(config.pooler_size, config.pooler_size)
        self.dropout = nn.Dropout(config.pooler_dropout)
        self.act = ACT2FN[config.pooler_hidden_act]

    def forward(self, hidden_states):
        return self.act(self.dense(self.dropout(hidden_states[:, 0])))


def _with_encoder_outputs(outputs: ModelOutput, **fields) -> ModelOutput:
    return ModelOutput(**fields, hidden_states=outputs.hidden_states, attentions=outputs.attentions)


def sequence_classification_loss(config: DebertaV2Config, logits: torch.Tensor, labels: torch.Tensor):
    """The reference's loss rules for sequence classification (incl. regression for num_labels == 1)."""
    num_labels = config.num_labels
    if config.problem_type is None:
        if num_labels == 1:
            return F.mse_loss(logits.view(-1).to(labels.dtype), labels.view(-1))
        if labels.dim() == 1 or labels.size(-1) == 1:
            labels = labels.view(-1).long()
            keep = labels >= 0  # rows with a negative label are ignored; none left: loss 0 (the reference's rule)
            loss = F.cross_entropy(logits.view(-1, num_labels).float(), labels.masked_fill(~keep, -100),
                                   ignore_index=-100)  # no data-dependent shape or branch: compiles in one graph
            return torch.where(keep.any(), loss, torch.zeros_like(loss))
        return -(torch.log_softmax(logits, -1) * labels).sum(-1).mean()  # soft labels
    if config.problem_type == "regression":
        if num_labels == 1:
            return F.mse_loss(logits.squeeze(), labels.squeeze())
        return F.mse_loss(logits, labels)
    if config.problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, num_labels), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels)  # multi_label_classification


class DebertaV2ForMaskedLM(DebertaV2PreTrainedModel):
    task = "masked-lm"

    def __init__(self, config: DebertaV2Config):
        super().__init__(config)
        self.deberta = DebertaV2Model(config)
        if config.legacy:
            self.cls = LegacyDebertaV2OnlyMLMHead(config)
        else:
            schema.expected_shapes(config, self.task)  # raises for embedding_size != hidden_size
            self.lm_predictions = DebertaV2OnlyMLMHead(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        """As the reference: the legacy head's decoder (tied: a Linear whose weight *is* the word embeddings' and
        whose bias is ``cls.predictions.bias``), else ``lm_predictions.lm_head.dense``."""
        if not self.config.legacy:
            return self.lm_predictions.lm_head.dense
        predictions = self.cls.predictions
        if predictions.decoder is not None:
            return predictions.decoder
        weight = self.get_input_embeddings().weight
        decoder = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
        decoder.weight, decoder.bias = weight, predictions.bias
        return decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        """As the reference. Setting the word embeddings' own weight keeps the decoder tied; any other Linear
        unties it (``config.tie_word_embeddings = False``)."""
        if not self.config.legacy:
            self.lm_predictions.lm_head.dense = new_embeddings
            if new_embeddings.bias is not None and new_embeddings.bias.shape == self.lm_predictions.lm_head.bias.shape:
                self.lm_predictions.lm_head.bias = new_embeddings.bias
            return
        predictions = self.cls.predictions
        if new_embeddings.bias is not None:
            predictions.bias = new_embeddings.bias
        if new_embeddings.weight is self.get_input_embeddings().weight:
            predictions.decoder = None
            return
        new_embeddings.bias = None
        predictions.decoder = new_embeddings
        self.config.tie_word_embeddings = False

    def _resize_output(self, new_num_tokens: int, mean_resizing: bool) -> None:
        head = self.cls.predictions if self.config.legacy else self.lm_predictions.lm_head
        head.bias = nn.Parameter(_resized_rows(head.bias.data, new_num_tokens, 0.0, mean_resizing))
        decoder = head.decoder if self.config.legacy else None
        if decoder is not None:
            new = nn.Linear(decoder.in_features, new_num_tokens, bias=False, device=decoder.weight.device,
                            dtype=decoder.weight.dtype)
            new.weight.data = _resized_rows(decoder.weight.data, new_num_tokens, self.config.initializer_range,
                                            mean_resizing)
            head.decoder = new

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        output_attentions, output_hidden_states, return_dict = output_flags(
            self.config, output_attentions, output_hidden_states, return_dict)
        outputs = self.deberta(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                               output_attentions, output_hidden_states, return_dict=True)
        word_embeddings = self.deberta.embeddings.word_embeddings.weight
        head = self.cls if self.config.legacy else self.lm_predictions
        logits = head(outputs.last_hidden_state, word_embeddings)
        loss = None
        if labels is not None:
            labels = _as_tensor(labels, torch.long).to(logits.device)
            loss = F.cross_entropy(logits.view(-1, self.config.vocab_size), labels.view(-1))
        return finish(_with_encoder_outputs(outputs, loss=loss, logits=logits), return_dict)


class DebertaV2ForSequenceClassification(DebertaV2PreTrainedModel):
    task = "sequence-classification"

    def __init__(self, config: DebertaV2Config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.deberta = DebertaV2Model(config)
        self.pooler = ContextPooler(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        output_attentions, output_hidden_states, return_dict = output_flags(
            self.config, output_attentions, output_hidden_states, return_dict)
        outputs = self.deberta(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                               output_attentions, output_hidden_states, return_dict=True)
        logits = self.classifier(self.dropout(self.pooler(outputs.last_hidden_state)))
        loss = None
        if labels is not None:
            loss = sequence_classification_loss(self.config, logits, _as_tensor(labels).to(logits.device))
        return finish(_with_encoder_outputs(outputs, loss=loss, logits=logits), return_dict)


class DebertaV2ForTokenClassification(DebertaV2PreTrainedModel):
    task = "token-classification"

    def __init__(self, config: DebertaV2Config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.deberta = DebertaV2Model(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        output_attentions, output_hidden_states, return_dict = output_flags(
            self.config, output_attentions, output_hidden_states, return_dict)
        outputs = self.deberta(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                               output_attentions, output_hidden_states, return_dict=True)
        logits = self.classifier(self.dropout(outputs.last_hidden_state))
        loss = None
        if labels is not None:
            labels = _as_tensor(labels, torch.long).to(logits.device)
            loss = F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return finish(_with_encoder_outputs(outputs, loss=loss, logits=logits), return_dict)


class DebertaV2ForQuestionAnswering(DebertaV2PreTrainedModel):
    task = "question-answering"

    def __init__(self, config: DebertaV2Config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.deberta = DebertaV2Model(config)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, start_positions=None, end_positions=None, output_attentions=None,
                output_hidden_states=None, return_dict=None):
        output_attentions, output_hidden_states, return_dict = output_flags(
            self.config, output_attentions, output_hidden_states, return_dict)
        outputs = self.deberta(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                               output_attentions, output_hidden_states, return_dict=True)
        logits = self.qa_outputs(outputs.last_hidden_state)
        start_logits, end_logits = (t.squeeze(-1).contiguous() for t in logits.split(1, dim=-1))
        loss = None
        if start_positions is not None and end_positions is not None:
            ignored_index = start_logits.size(1)  # positions outside the sequence are clamped here and ignored
            start = _as_tensor(start_positions, torch.long).to(logits.device).view(-1).clamp(0, ignored_index)
            end = _as_tensor(end_positions, torch.long).to(logits.device).view(-1).clamp(0, ignored_index)
            loss = (F.cross_entropy(start_logits, start, ignore_index=ignored_index)
                    + F.cross_entropy(end_logits, end, ignore_index=ignored_index)) / 2
        return finish(_with_encoder_outputs(outputs, loss=loss, start_logits=start_logits, end_logits=end_logits),
                      return_dict)


class DebertaV2ForMultipleChoice(DebertaV2PreTrainedModel):
    task = "multiple-choice"

    def __init__(self, config: DebertaV2Config):
        super().__init__(config)
        self.deberta = DebertaV2Model(config)
        self.pooler = ContextPooler(config)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        """Inputs are [batch, num_choices, seq] ([batch, num_choices, seq, E] for inputs_embeds)."""
        output_attentions, output_hidden_states, return_dict = output_flags(
            self.config, output_attentions, output_hidden_states, return_dict)
        ref = input_ids if input_ids is not None else inputs_embeds
        num_choices = ref.shape[1]

        def flat(x, tail: int = 1):
            return None if x is None else _as_tensor(x).reshape(-1, *_as_tensor(x).shape[-tail:])

        mask_tail = 2 if attention_mask is not None and _as_tensor(attention_mask).dim() == 4 else 1
        outputs = self.deberta(flat(input_ids), flat(attention_mask, mask_tail), flat(token_type_ids),
                               flat(position_ids), flat(inputs_embeds, 2), output_attentions,
                               output_hidden_states, return_dict=True)
        logits = self.classifier(self.dropout(self.pooler(outputs.last_hidden_state)))
        reshaped_logits = logits.view(-1, num_choices)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(reshaped_logits, _as_tensor(labels, torch.long).to(logits.device).view(-1))
        return finish(_with_encoder_outputs(outputs, loss=loss, logits=reshaped_logits), return_dict)


MODEL_CLASSES = {cls.task: cls for cls in (
    DebertaV2Model, DebertaV2ForMaskedLM, DebertaV2ForSequenceClassification, DebertaV2ForTokenClassification,
    DebertaV2ForQuestionAnswering, DebertaV2ForMultipleChoice)}
