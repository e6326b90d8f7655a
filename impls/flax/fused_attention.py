"""DeBERTa's disentangled attention as one Pallas kernel: flash-style tiles, no [L, L] tensor (the "fused"
``attn_implementation`` of the Flax models).

The scores of query i and key j are ``c2c + c2p + p2c`` with (``scale`` = sqrt(d * scale_factor))::

    c2c(i, j) = q_i . k_j / scale
    c2p(i, j) = q_i . k^r_{c2p(i - j)} / scale        c2p(d): row of the relative table for distance d
    p2c(i, j) = k_j . q^r_{p2c(j - i)} / scale        p2c(d): the same for the p2c term

The model computes, once per layer, the position projections ``C = q @ K_posᵀ / scale`` and ``P = k @ Q_posᵀ /
scale`` over the R relative-embedding rows the sequence reads (``[B, h, L, R]``, O(L * R) per head), and
:func:`position_tables` gives the small lookup tables distance -> row (from ``deberta_xf.relative_position``'s
DistanceTable: log buckets and the ``max_relative_positions`` clamp included). Each grid program owns one tile of
``block`` queries and walks the keys a tile at a time (online softmax, float32 statistics and accumulator): it
computes ``d = i - j`` for the tile, clamps it, looks the row up in the table and gathers ``C[i, row]`` /
``P[j, row]`` (a gather on the tile's rows: O(block * R) memory), adds them to the tile's c2c scores, applies the
mask as the eager path does (``finfo.min`` fill; positions past the length count as absent) and folds the tile
into the running softmax. The largest intermediate is one ``block x block`` score tile.

Runs with ``interpret=True`` on CPU (automatically, :func:`_on_cpu`) and compiled elsewhere. The compiled path was
not run on a GPU here; Pallas' GPU lowering may reject the in-kernel gathers (see docs/attention.md).

Training: :func:`fused_attention` is a ``jax.custom_vjp`` whose backward recomputes the scores through the
materialising reference formulation (:func:`reference_attention`, [B, h, L, L]) and differentiates that. The
backward kernel is NOT done: memory in training is the eager path's.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

from deberta_xf.relative_position import attention_position_window, distance_table

DEFAULT_BLOCK = 64
TERMS = ("c2p", "p2c")


def position_tables(config, length: int) -> tuple[slice, dict[str, jax.Array]]:
    """The relative-embedding rows a sequence of ``length`` reads and, per term, the lookup table distance -> row
    (relative to the first of those rows): ``table[d + near]`` for ``|d| <= near = min(length - 1, reach)``,
    farther distances read ``table[0]`` / ``table[-1]`` (the kernel clamps ``d``)."""
    window = attention_position_window(config, length)
    table = distance_table(config)
    near = min(length - 1, table.reach)
    out = {}
    for term, column in table.index.items():
        rows = np.asarray(column[table.reach - near: table.reach + near + 1]) - window.start
        if rows.min() < 0 or rows.max() >= window.stop - window.start:
            raise AssertionError(f"{term} distance table reads outside rows [{window.start}, {window.stop})")
        out[term] = jnp.asarray(rows, dtype=jnp.int32)
    return slice(window.start, window.stop), out


def _block_size(length: int, block: Optional[int]) -> int:
    if block is not None:
        return int(block)
    return min(DEFAULT_BLOCK, max(16, 1 << (length - 1).bit_length()))


def _on_cpu() -> bool:
    """Whether this computation is placed on the CPU: ``jax.default_device`` when set (the parity harness sets it for
    ``--device cpu``), else JAX's default backend."""
    device = jax.config.jax_default_device
    if device is None:
        return jax.default_backend() == "cpu"
    return (device if isinstance(device, str) else device.platform) == "cpu"


def _pad(x: jax.Array, axes: tuple[int, ...], size: int) -> jax.Array:
    widths = [(0, size - x.shape[a]) if a in axes else (0, 0) for a in range(x.ndim)]
    return jnp.pad(x, widths)


def _lookup(table: jax.Array, distance: jax.Array) -> jax.Array:
    """Row of each distance: clamp to the table's reach, then index."""
    near = (table.shape[0] - 1) // 2
    return table[jnp.clip(distance, -near, near) + near]


def is_token_mask(mask: jax.Array, length: int) -> bool:
    """A [B, 1, 1, L] (or [B, L]) token mask standing for its outer product, rather than [B, (1,) L, L] pairs."""
    return mask.ndim == 2 or (mask.ndim == 4 and mask.shape[-2] == 1 and length > 1)


# =============================================================================================================
# The kernel: one (batch, head, query tile) per program
def _kernel(*refs, terms: tuple[str, ...], tokens: bool, length: int, block_k: int, num_k_blocks: int, precision):
    refs = list(refs)
    q_ref, k_ref, v_ref, mask_ref = refs[:4]
    position = 4
    if tokens:  # a token mask: this tile's queries (mask_ref) and every key (the next ref)
        key_tokens_ref = refs[position]
        position += 1
    term_refs = {}
    for term in terms:
        term_refs[term] = (refs[position], refs[position + 1])  # (projections, table)
        position += 2
    o_ref = refs[position]

    block_q = q_ref.shape[0]
    q = q_ref[...]  # [bq, d]
    query_ids = pl.program_id(2) * block_q + jax.lax.broadcasted_iota(jnp.int32, (block_q, block_k), 0)
    c2p_rows = term_refs["c2p"][0][...] if "c2p" in terms else None  # [bq, R], this tile's queries

    def tile(kb, carry):
        m, l, acc = carry
        start = kb * block_k
        k = k_ref[pl.ds(start, block_k), :]  # [bk, d], already divided by the scale
        v = v_ref[pl.ds(start, block_k), :]
        scores = jnp.dot(q, k.T, precision=precision, preferred_element_type=jnp.float32)  # c2c [bq, bk]
        key_ids = start + jax.lax.broadcasted_iota(jnp.int32, (block_q, block_k), 1)
        relative = None
        if "c2p" in terms:
            rows = _lookup(term_refs["c2p"][1][...], query_ids - key_ids)  # [bq, bk]
            relative = jnp.take_along_axis(c2p_rows, rows, axis=1)
        if "p2c" in terms:
            rows = _lookup(term_refs["p2c"][1][...], key_ids - query_ids)  # [bq, bk]: the row for key j
            key_rows = term_refs["p2c"][0][pl.ds(start, block_k), :]  # [bk, R], this tile's keys
            p2c = jnp.take_along_axis(key_rows, rows.T, axis=1).T
            relative = p2c if relative is None else relative + p2c
        if relative is not None:
            scores = scores + relative
        if tokens:  # pair (i, j) kept when both tokens are: the outer product, one tile at a time
            keep = (mask_ref[...][:, None] != 0) & (key_tokens_ref[pl.ds(start, block_k)][None, :] != 0)
        else:
            keep = mask_ref[:, pl.ds(start, block_k)] != 0
        scores = jnp.where(keep, scores, jnp.finfo(jnp.float32).min)  # masked as eager (a fully masked row
        scores = jnp.where(key_ids < length, scores, -jnp.inf)  # averages the real keys); padding keys absent
        m_new = jnp.maximum(m, scores.max(axis=1))
        correction = jnp.exp(m - m_new)
        p = jnp.exp(scores - m_new[:, None])
        l = correction * l + p.sum(axis=1)
        acc = correction[:, None] * acc + jnp.dot(p.astype(v.dtype), v, precision=precision,
                                                  preferred_element_type=jnp.float32)
        return m_new, l, acc

    init = (jnp.full((block_q,), -jnp.inf, jnp.float32), jnp.zeros((block_q,), jnp.float32),
            jnp.zeros((block_q, q_ref.shape[1]), jnp.float32))
    _, l, acc = jax.lax.fori_loop(0, num_k_blocks, tile, init)
    o_ref[...] = (acc / l[:, None]).astype(o_ref.dtype)


def _forward(options, query, key, value, mask, c2p, c2p_table, p2c, p2c_table):
    block, interpret = options
    batch, heads, length, head_size = query.shape
    block = _block_size(length, block)
    padded = -(-length // block) * block
    terms = tuple(t for t, x in zip(TERMS, (c2p, p2c)) if x is not None)
    tokens = is_token_mask(mask, length)
    q, k, v = (_pad(x, (2,), padded) for x in (query, key, value))

    def query_tile(width):  # [B, h, L, width] -> this program's block of queries
        return pl.BlockSpec((None, None, block, width), lambda b, h, i: (b, h, i, 0))

    def every_row(width):  # [B, h, L, width] -> all rows of this (batch, head)
        return pl.BlockSpec((None, None, padded, width), lambda b, h, i: (b, h, 0, 0))

    in_specs = [query_tile(head_size), every_row(head_size), every_row(head_size)]
    if tokens:  # [B, L]: the query tile's tokens, and every key's
        mask = _pad(mask.reshape(batch, length).astype(jnp.int8), (1,), padded)
        in_specs += [pl.BlockSpec((None, block), lambda b, h, i: (b, i)),
                     pl.BlockSpec((None, padded), lambda b, h, i: (b, 0))]
        args = [q, k, v, mask, mask]
    else:  # [B, L, L]: the mask rows of the query tile
        mask = _pad(mask.reshape(batch, length, length).astype(jnp.int8), (1, 2), padded)
        in_specs.append(pl.BlockSpec((None, block, padded), lambda b, h, i: (b, i, 0)))
        args = [q, k, v, mask]
    for term, projections, table in (("c2p", c2p, c2p_table), ("p2c", p2c, p2c_table)):
        if term not in terms:
            continue
        width = projections.shape[-1]
        in_specs.append(query_tile(width) if term == "c2p" else every_row(width))  # c2p by query, p2c by key
        in_specs.append(pl.BlockSpec(table.shape, lambda b, h, i: (0,)))
        args += [_pad(projections.astype(jnp.float32), (2,), padded), table]
    precision = jax.lax.Precision.HIGHEST if query.dtype == jnp.float32 else None
    kernel = functools.partial(_kernel, terms=terms, tokens=tokens, length=length, block_k=block,
                               num_k_blocks=padded // block, precision=precision)
    out = pl.pallas_call(
        kernel,
        grid=(batch, heads, padded // block),
        in_specs=in_specs,
        out_specs=query_tile(head_size),
        out_shape=jax.ShapeDtypeStruct((batch, heads, padded, head_size), query.dtype),
        interpret=_on_cpu() if interpret is None else interpret,
    )(*args)
    return out[:, :, :length]


# =============================================================================================================
# The same attention with [L, L] tensors: the backward pass differentiates this
def reference_attention(query, key, value, mask, c2p=None, c2p_table=None, p2c=None, p2c_table=None):
    """softmax(mask(q kᵀ + c2p + p2c)) v with every score materialised ([B, h, L, L]); the arguments of
    :func:`fused_attention`."""
    length = query.shape[-2]
    precision = jax.lax.Precision.HIGHEST if query.dtype == jnp.float32 else None
    scores = jnp.matmul(query, jnp.swapaxes(key, -1, -2), precision=precision,
                        preferred_element_type=jnp.float32)
    distance = jnp.arange(length)[:, None] - jnp.arange(length)[None, :]  # i - j
    relative = None
    if c2p is not None:
        rows = jnp.broadcast_to(_lookup(c2p_table, distance), scores.shape)
        relative = jnp.take_along_axis(c2p.astype(jnp.float32), rows, axis=-1)
    if p2c is not None:
        rows = jnp.broadcast_to(_lookup(p2c_table, -distance).T, scores.shape)  # [j, i]: row for distance j - i
        term = jnp.swapaxes(jnp.take_along_axis(p2c.astype(jnp.float32), rows, axis=-1), -1, -2)
        relative = term if relative is None else relative + term
    if relative is not None:
        scores = scores + relative
    if is_token_mask(mask, length):
        tokens = mask.reshape(mask.shape[0], length)
        mask = tokens[:, :, None] & tokens[:, None, :]
    scores = jnp.where(mask.reshape(mask.shape[0], 1, length, length), scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    return jnp.matmul(probs.astype(value.dtype), value, precision=precision,
                      preferred_element_type=jnp.float32).astype(query.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused(options, query, key, value, mask, c2p, c2p_table, p2c, p2c_table):
    return _forward(options, query, key, value, mask, c2p, c2p_table, p2c, p2c_table)


def _fused_fwd(options, query, key, value, mask, c2p, c2p_table, p2c, p2c_table):
    out = _forward(options, query, key, value, mask, c2p, c2p_table, p2c, p2c_table)
    return out, (query, key, value, mask, c2p, c2p_table, p2c, p2c_table)


def _fused_bwd(options, residuals, cotangent):
    """Backward through the materialising reference (backward kernel NOT done)."""
    query, key, value, mask, c2p, c2p_table, p2c, p2c_table = residuals

    def attend(query, key, value, c2p, p2c):
        return reference_attention(query, key, value, mask, c2p, c2p_table, p2c, p2c_table)

    _, vjp = jax.vjp(attend, query, key, value, c2p, p2c)
    d_query, d_key, d_value, d_c2p, d_p2c = vjp(cotangent)
    return d_query, d_key, d_value, None, d_c2p, None, d_p2c, None


_fused.defvjp(_fused_fwd, _fused_bwd)


@functools.partial(jax.jit, static_argnames=("block", "interpret"))  # compiled once per shape, also outside a jit
def fused_attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array,
                    c2p: Optional[jax.Array] = None, c2p_table: Optional[jax.Array] = None,
                    p2c: Optional[jax.Array] = None, p2c_table: Optional[jax.Array] = None,
                    block: Optional[int] = None, interpret: Optional[bool] = None) -> jax.Array:
    """Disentangled attention through the Pallas kernel.

    ``query``, ``value`` [B, h, L, d]; ``key`` [B, h, L, d] already divided by the scale (as the eager path
    does); ``mask`` bool [B, L, L] or [B, 1, L, L] (True = attend), or a [B, 1, 1, L] token mask that stands for
    its outer product (pair (i, j) kept when tokens i and j both are; no [L, L] mask is made); ``c2p`` = q @ K_posᵀ / scale and ``p2c`` =
    k @ Q_posᵀ / scale, [B, h, L, R] over the relative rows (None for an absent term), with their
    :func:`position_tables`. ``block``: the tile size (default: up to 64); ``interpret``: None = on CPU.
    Returns the context [B, h, L, d] in ``query``'s dtype.
    """
    return _fused((block, interpret), query, key, value, mask, c2p, c2p_table, p2c, p2c_table)
