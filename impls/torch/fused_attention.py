"""DeBERTa's disentangled attention as one Triton kernel (``attn_implementation="fused"``).

softmax((c2c + c2p + p2c) / scale) V is computed flash-style: each program takes a tile of queries, walks the keys
tile by tile with an online softmax (fp32 accumulate) and never holds an [L, L] tensor. The relative terms come from
two per-layer projections made beforehand with a matmul, O(L x rows) per head:

    c2p_proj[b, h, i, r] = q_i . k^pos_r      (queries against the position keys)
    p2c_proj[b, h, j, r] = k_j . q^pos_r      (keys against the position queries)

and each (query, key) pair reads its column from them by distance: ``d = i - j``, clamped to the table's reach,
looked up in the small distance -> row table of :class:`deberta_xf.relative_position.DistanceTable` (log buckets
and the ``max_relative_positions`` clamp are already in that table):

    c2p(i, j) = c2p_proj[i, c2p_table[clamp(i - j)]]      p2c(i, j) = p2c_proj[j, p2c_table[clamp(j - i)]]

Masks keep the eager semantics: a masked (query, key) pair scores ``finfo(float32).min``, so a fully masked query
row attends uniformly to every key, as eager's ``masked_fill`` + softmax does. A 2-D token mask is read as two
[L] vectors (pair = token_i & token_j), a 3-D mask as given.

Forward only: the backward pass (:class:`FusedDisentangledAttention`) recomputes the attention through the eager
math (it materialises [L, L] scores); a backward kernel is NOT written.

Triton is imported when the kernel is first used (``pip install 'deberta-xf[triton]'``); the kernel runs on CUDA
tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (Triton's interpreter: slow, for tests).
"""

from __future__ import annotations  # the kernel's tl.constexpr annotations stay unevaluated until Triton reads them

import functools
import math
import os

import torch

MASKED = float(torch.finfo(torch.float32).min)  # the score of a masked pair (eager: finfo(dtype).min)
MASK_NONE, MASK_TOKENS, MASK_PAIRS = 0, 1, 2
INTERPRETER_BLOCK = 32  # tile size under TRITON_INTERPRET (the interpreter's cost is per tile op, not per element)

tl = None  # triton.language, bound by _kernel() on first use (the kernel body below reads it as a global)


def _attention_forward(Q, K, V, C2P, P2C, C2P_TABLE, P2C_TABLE, TOKEN_MASK, PAIR_MASK, Out,
                       stride_qb, stride_qh, stride_ql, stride_kb, stride_kh, stride_kl,
                       stride_vb, stride_vh, stride_vl, stride_ob, stride_oh, stride_ol,
                       stride_cb, stride_ch, stride_cl, stride_cr, stride_pb, stride_ph, stride_pl, stride_pr,
                       stride_tb, stride_mb, stride_mq, stride_mk,
                       heads, length, reach, sm_scale,
                       HAS_C2P: tl.constexpr, HAS_P2C: tl.constexpr, MASK: tl.constexpr,
                       HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_D: tl.constexpr, PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr):
    """One program: BLOCK_M queries of one (batch, head) against every key, online softmax."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // heads
    h = pid_bh % heads
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < length
    d_ok = offs_d < HEAD_D
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_ql + offs_d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if DOT_IN_FP32:
        q = q.to(tl.float32)
    if MASK == 1:
        query_token = tl.load(TOKEN_MASK + b * stride_tb + offs_m, mask=row_ok, other=0) != 0

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running max of each row
    l_i = tl.zeros([BLOCK_M], tl.float32)                # running sum of exp(score - max)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, length, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        col_ok = offs_n < length
        pair_ok = row_ok[:, None] & col_ok[None, :]
        k = tl.load(K + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kl + offs_d[None, :],
                    mask=col_ok[:, None] & d_ok[None, :], other=0.0)
        if DOT_IN_FP32:
            k = k.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION)  # c2c, fp32
        if HAS_C2P or HAS_P2C:
            # d = i - j clamped to the table's reach, as an index into the tables (0 .. 2 reach)
            distance = tl.minimum(tl.maximum(offs_m[:, None] - offs_n[None, :], -reach), reach) + reach
        if HAS_C2P:
            row = tl.load(C2P_TABLE + distance)
            s += tl.load(C2P + b * stride_cb + h * stride_ch + offs_m[:, None] * stride_cl + row * stride_cr,
                         mask=pair_ok, other=0.0).to(tl.float32)
        if HAS_P2C:
            row = tl.load(P2C_TABLE + 2 * reach - distance)  # the table at j - i
            s += tl.load(P2C + b * stride_pb + h * stride_ph + offs_n[None, :] * stride_pl + row * stride_pr,
                         mask=pair_ok, other=0.0).to(tl.float32)
        s = s * sm_scale
        if MASK == 1:
            key_token = tl.load(TOKEN_MASK + b * stride_tb + offs_n, mask=col_ok, other=0) != 0
            s = tl.where(query_token[:, None] & key_token[None, :], s, -3.4028234663852886e38)
        if MASK == 2:
            keep = tl.load(PAIR_MASK + b * stride_mb + offs_m[:, None] * stride_mq + offs_n[None, :] * stride_mk,
                           mask=pair_ok, other=0) != 0
            s = tl.where(keep, s, -3.4028234663852886e38)
        s = tl.where(col_ok[None, :], s, float("-inf"))  # keys past the end take no weight at all

        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vl + offs_d[None, :],
                    mask=col_ok[:, None] & d_ok[None, :], other=0.0)
        if DOT_IN_FP32:
            v = v.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    acc = acc / l_i[:, None]
    tl.store(Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ol + offs_d[None, :],
             acc.to(Out.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


@functools.lru_cache(maxsize=2)
def _kernel(interpret: bool):
    """The jitted kernel (one per interpreter setting: Triton reads TRITON_INTERPRET when it decorates)."""
    global tl
    try:
        import triton
        import triton.language
    except ImportError as err:
        raise ImportError("attn_implementation='fused' needs Triton (not installed): "
                          "pip install 'deberta-xf[triton]'") from err
    tl = triton.language
    return triton.jit(_attention_forward)


def _check_device(tensor: torch.Tensor) -> None:
    if tensor.device.type == "cpu" and not interpreting():
        raise RuntimeError("attn_implementation='fused' runs a Triton kernel: it needs the model on a GPU "
                           "(or TRITON_INTERPRET=1 for Triton's CPU interpreter); use 'eager' or 'sdpa' on CPU")


def attention_forward(query, key, value, c2p_proj, p2c_proj, tables, attention_mask, scale: float,
                      block_m: int | None = None, block_n: int | None = None) -> torch.Tensor:
    """The fused kernel on [B, heads, L, d] query/key/value -> context [B, heads, L, d] (a view of [B, L, heads, d]).

    ``c2p_proj`` / ``p2c_proj``: [B, heads, L, rows] or None (term off); ``tables``: {"c2p"/"p2c": int [2 reach + 1]}
    rows into them by clamped distance; ``attention_mask``: None, bool [B, 1, 1, L] (token mask: the pair (i, j) is
    kept when both are tokens) or bool [B, 1, L, L] (pair mask)."""
    _check_device(query)
    kernel = _kernel(interpreting())
    batch, heads, length, head_d = query.shape
    query, key, value = (t if t.stride(-1) == 1 else t.contiguous() for t in (query, key, value))
    out = torch.empty(batch, length, heads, head_d, dtype=query.dtype, device=query.device).transpose(1, 2)
    first = next(iter(tables.values())) if tables else None
    reach = (first.numel() - 1) // 2 if first is not None else 0
    dummy = query  # stands in for an absent pointer argument (never read: its constexpr flag is off)
    c2p = c2p_proj if c2p_proj is not None else dummy.new_zeros(1, 1, 1, 1)
    p2c = p2c_proj if p2c_proj is not None else dummy.new_zeros(1, 1, 1, 1)
    c2p_table = tables["c2p"].to(torch.int32) if "c2p" in tables else torch.zeros(1, dtype=torch.int32,
                                                                                  device=query.device)
    p2c_table = tables["p2c"].to(torch.int32) if "p2c" in tables else torch.zeros(1, dtype=torch.int32,
                                                                                  device=query.device)
    token_mask = pair_mask = torch.zeros(1, 1, 1, dtype=torch.int8, device=query.device)
    if attention_mask is None:
        mask_kind = MASK_NONE
    elif attention_mask.shape[-2] == 1:  # [B, 1, 1, L]: a token mask
        mask_kind, token_mask = MASK_TOKENS, attention_mask.reshape(attention_mask.shape[0], -1).to(torch.int8)
        token_mask = token_mask.expand(batch, length)
    else:  # [B, 1, Lq, Lk] (or [B, Lq, Lk])
        mask_kind = MASK_PAIRS
        pair_mask = attention_mask.reshape(-1, length, length).to(torch.int8).expand(batch, length, length)
    block_m = block_m or (INTERPRETER_BLOCK if interpreting() else 64)
    block_n = block_n or (INTERPRETER_BLOCK if interpreting() else 64)
    block_d = max(16, next_power_of_2(head_d))
    precision = "ieee" if query.dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest" \
        else "tf32"
    # Triton's interpreter (3.9) multiplies bf16 / fp16 dot operands wrongly: under it the dots take fp32 operands
    dot_in_fp32 = interpreting()
    if dot_in_fp32:
        precision = "ieee"
    grid = (math.ceil(length / block_m), batch * heads)
    kernel[grid](
        query, key, value, c2p, p2c, c2p_table, p2c_table, token_mask, pair_mask, out,
        *query.stride()[:3], *key.stride()[:3], *value.stride()[:3], *out.stride()[:3],
        *c2p.stride(), *p2c.stride(), token_mask.stride(0), *pair_mask.stride(),
        heads, length, reach, 1.0 / scale,
        HAS_C2P=c2p_proj is not None, HAS_P2C=p2c_proj is not None, MASK=mask_kind, HEAD_D=head_d,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, PRECISION=precision,
        DOT_IN_FP32=dot_in_fp32)
    return out


def next_power_of_2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


# =============================================================================================================
# The same attention through the eager math (materialises [L, L]): the backward pass recomputes through it.
def attention_reference(query, key, value, c2p_proj, p2c_proj, tables, attention_mask, scale: float):
    """softmax((q k^T + c2p + p2c) / scale, masked as eager) v from the same inputs as :func:`attention_forward`."""
    length = query.shape[-2]
    scores = torch.matmul(query, key.transpose(-1, -2) / scale)
    if tables:
        positions = torch.arange(length, device=query.device)
        first = next(iter(tables.values()))
        reach = (first.numel() - 1) // 2
        distance = (positions[:, None] - positions[None, :]).clamp(-reach, reach) + reach  # [i, j] -> i - j
        if c2p_proj is not None:
            index = tables["c2p"].long()[distance].expand(*query.shape[:3], -1)
            scores = scores + torch.gather(c2p_proj, -1, index) / scale
        if p2c_proj is not None:
            index = tables["p2c"].long()[distance].expand(*key.shape[:3], -1)  # [j, i] -> the table at j - i
            scores = scores + torch.gather(p2c_proj, -1, index).transpose(-1, -2) / scale
    if attention_mask is not None:
        if attention_mask.shape[-2] == 1 and length > 1:  # token mask -> pair mask
            attention_mask = attention_mask & attention_mask.transpose(-1, -2)
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    return torch.matmul(torch.softmax(scores, dim=-1), value)


class FusedDisentangledAttention(torch.autograd.Function):
    """Forward: the Triton kernel. Backward: recomputed through :func:`attention_reference` (backward kernel NOT
    done; the backward pass materialises [L, L] as eager does)."""

    @staticmethod
    def forward(ctx, query, key, value, c2p_proj, p2c_proj, tables, attention_mask, scale):
        ctx.save_for_backward(query, key, value, c2p_proj, p2c_proj)
        ctx.tables, ctx.attention_mask, ctx.scale = tables, attention_mask, scale
        return attention_forward(query, key, value, c2p_proj, p2c_proj, tables, attention_mask, scale)

    @staticmethod
    def backward(ctx, grad_out):
        saved = ctx.saved_tensors
        inputs = [t.detach().requires_grad_(t.requires_grad) if t is not None else None for t in saved]
        wanted = [t for t in inputs if t is not None and t.requires_grad]
        with torch.enable_grad():
            out = attention_reference(*inputs, ctx.tables, ctx.attention_mask, ctx.scale)
            grads = iter(torch.autograd.grad(out, wanted, grad_out) if wanted else ())
        return (*(next(grads) if t is not None and t.requires_grad else None for t in inputs), None, None, None)


def fused_attention(query, key, value, c2p_proj, p2c_proj, tables, attention_mask, scale: float) -> torch.Tensor:
    """The fused attention, differentiable (the backward pass goes through the eager math)."""
    return FusedDisentangledAttention.apply(query, key, value, c2p_proj, p2c_proj, tables, attention_mask, scale)
