"""Relative positions of DeBERTa-v2, written once in NumPy for all three implementations.

The relative position of query i to key j is ``i - j``. With ``position_buckets > 0`` distances beyond half the
bucket count are log-bucketed (``make_log_bucket_position``). Every quantity here depends only on the sequence
lengths and the config, so each framework computes it at trace time from static shapes and embeds it as a
constant: no framework re-implements the bucket arithmetic.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np


def make_log_bucket_position(relative_pos: np.ndarray, bucket_size: int, max_position: int) -> np.ndarray:
    """Log-bucket relative positions: exact for ``|rel| <= bucket_size // 2``, logarithmic beyond.

    Follows the reference's float32 arithmetic (``torch.log`` / ``torch.ceil`` on float32 tensors), so the
    integer buckets agree with it at every distance.
    """
    rel = np.asarray(relative_pos, dtype=np.int64)
    sign = np.sign(rel)
    mid = bucket_size // 2
    abs_pos = np.where((rel < mid) & (rel > -mid), mid - 1, np.abs(rel)).astype(np.float32)
    log_ratio = np.log(abs_pos / np.float32(mid), dtype=np.float32)
    log_max = np.log(np.float32((max_position - 1) / mid), dtype=np.float32)
    log_pos = np.ceil(log_ratio / log_max * np.float32(mid - 1)).astype(np.float32) + np.float32(mid)
    bucket_pos = np.where(abs_pos <= mid, rel.astype(np.float32), log_pos * sign)
    return bucket_pos.astype(np.int64)


@functools.lru_cache(maxsize=64)
def _relative_position_cached(query_size: int, key_size: int, bucket_size: int, max_position: int) -> np.ndarray:
    q_ids = np.arange(query_size, dtype=np.int64)
    k_ids = np.arange(key_size, dtype=np.int64)
    rel = q_ids[:, None] - k_ids[None, :]
    if bucket_size > 0 and max_position > 0:
        rel = make_log_bucket_position(rel, bucket_size, max_position)
    rel.setflags(write=False)
    return rel


def build_relative_position(query_size: int, key_size: int, bucket_size: int = -1,
                            max_position: int = -1) -> np.ndarray:
    """``[query_size, key_size]`` int64 matrix of (bucketed) ``i - j``; read-only and cached."""
    return _relative_position_cached(int(query_size), int(key_size), int(bucket_size), int(max_position))


def c2p_index(relative_pos: np.ndarray, att_span: int) -> np.ndarray:
    """Column of the content->position score for each (query, key): ``clamp(rel + span, 0, 2 span - 1)``."""
    return np.clip(relative_pos + att_span, 0, 2 * att_span - 1)


def p2c_index(relative_pos: np.ndarray, att_span: int) -> np.ndarray:
    """Column of the position->content score for each (key, query) before the transpose:
    ``clamp(-rel + span, 0, 2 span - 1)``."""
    return np.clip(-relative_pos + att_span, 0, 2 * att_span - 1)


def attention_position_indices(config, query_size: int, key_size: int | None = None) -> dict[str, np.ndarray]:
    """The gather indices the disentangled attention needs for one sequence length.

    Returns ``{"c2p": [Lq, Lk], "p2c": [Lk, Lk]}`` (only the terms in ``config.pos_att_type``). For p2c the
    reference rebuilds the relative positions from the key length when it differs from the query length.
    """
    key_size = query_size if key_size is None else key_size
    buckets, max_rel = config.position_buckets, config.max_relative_positions_resolved
    span = config.att_span
    out: dict[str, np.ndarray] = {}
    if "c2p" in config.pos_att_types:
        out["c2p"] = c2p_index(build_relative_position(query_size, key_size, buckets, max_rel), span)
    if "p2c" in config.pos_att_types:
        out["p2c"] = p2c_index(build_relative_position(key_size, key_size, buckets, max_rel), span)
    return out


@dataclasses.dataclass(frozen=True)
class PositionWindow:
    """The rows ``[start, stop)`` of the relative-embedding table that a sequence length actually reads, and the
    c2p / p2c gather indices relative to ``start``."""

    start: int
    stop: int
    index: dict[str, np.ndarray]


def attention_position_window(config, query_size: int, trim: bool = True) -> PositionWindow:
    """:func:`attention_position_indices` restricted to the embedding rows they use.

    A sequence of length L reads at most rows ``span - (L - 1) .. span + (L - 1)`` of the ``2 span`` rows, so for
    L < span (most inputs: span is 256 in the published checkpoints) projecting and scoring only that window does
    the same dot products with less work. ``trim=False`` keeps all ``2 span`` rows.
    """
    index = attention_position_indices(config, query_size)
    if not index:
        return PositionWindow(0, 2 * config.att_span, index)
    start = min(int(v.min()) for v in index.values()) if trim else 0
    stop = max(int(v.max()) for v in index.values()) + 1 if trim else 2 * config.att_span
    return PositionWindow(start, stop, {k: v - start for k, v in index.items()})


@dataclasses.dataclass(frozen=True)
class DistanceTable:
    """Each term's gather column as a function of the distance ``d = i - j`` alone: ``index[term][d + reach]`` for
    ``|d| <= reach``; farther distances read the value at ``±reach`` (buckets and the ``[0, 2 span)`` clamp
    saturate there). One small table serves every sequence length, so an implementation can build the ``[L, L]``
    indices of any length from it with tensor ops (an arange, a clamp, a lookup) inside a compiled graph."""

    reach: int
    index: dict[str, np.ndarray]  # term -> int64 [2 reach + 1]
    span: int

    def lookup(self, distance: np.ndarray) -> dict[str, np.ndarray]:
        d = np.clip(distance, -self.reach, self.reach) + self.reach
        return {term: table[d] for term, table in self.index.items()}

    def window(self, length: int) -> tuple[int, int]:
        """The rows ``[start, stop)`` of the ``2 span`` relative embeddings that a sequence of ``length`` reads."""
        if not self.index:
            return 0, 2 * self.span
        near = min(length - 1, self.reach)
        used = [table[self.reach - near:self.reach + near + 1] for table in self.index.values()]
        return min(int(u.min()) for u in used), max(int(u.max()) for u in used) + 1


def distance_table(config) -> DistanceTable:
    """:class:`DistanceTable` of a config (cached per bucket count, maximum distance, span and terms)."""
    return _distance_table(config.position_buckets, config.max_relative_positions_resolved, config.att_span,
                           tuple(t for t in ("c2p", "p2c") if t in config.pos_att_types))


@functools.lru_cache(maxsize=16)
def _distance_table(buckets: int, max_rel: int, span: int, terms: tuple[str, ...]) -> DistanceTable:
    far = 2 * max(span, max_rel, 1) + 2  # beyond every bucket boundary and clamp

    def columns(distance: np.ndarray) -> dict[str, np.ndarray]:
        rel = make_log_bucket_position(distance, buckets, max_rel) if buckets > 0 and max_rel > 0 else distance
        out = {}
        if "c2p" in terms:
            out["c2p"] = c2p_index(rel, span)
        if "p2c" in terms:
            out["p2c"] = p2c_index(rel, span)
        return out

    full = columns(np.arange(-far, far + 1, dtype=np.int64))
    farther = columns(np.array([-4 * far, 4 * far], dtype=np.int64))
    reach = 0
    for term, table in full.items():
        if table[0] != farther[term][0] or table[-1] != farther[term][1]:
            raise AssertionError(f"{term} positions do not saturate within distance {far}")
        moving = np.flatnonzero((table != table[0]) & (table != table[-1]))  # d + far where it still changes
        if moving.size:
            reach = max(reach, far - int(moving[0]) + 1, int(moving[-1]) - far + 1)
    index = {term: table[far - reach:far + reach + 1].copy() for term, table in full.items()}
    for table in index.values():
        table.setflags(write=False)
    return DistanceTable(reach, index, span)


def by_distance(matrix: np.ndarray) -> np.ndarray:
    """A ``[L, L]`` matrix ``m[a, b] = h(a - b)`` -> the vector ``h(L - 1), h(L - 2), ..., h(-(L - 1))`` plus
    ``h(-(L - 1))`` once more as a pad to length 2L (checked to depend on ``a - b`` only).

    The c2p and p2c column matrices are functions of the distance alone, so an implementation can gather the
    2L projected position rows once and move each row of ``q @ rowsᵀ`` into place with a reshape ("relative
    shift": ``out[a, b] = x[a, L - 1 - a + b]``) instead of gathering L² scores one by one: the same dot
    products, as dense copies.
    """
    length = matrix.shape[0]
    vector = np.concatenate([matrix[length - 1, :], matrix[0, 1:], matrix[0, -1:]])
    a, b = np.indices(matrix.shape)
    if not np.array_equal(vector[length - 1 - a + b], matrix):
        raise AssertionError("relative-position columns are not a function of i - j")
    return vector


def attention_distance_window(config, query_size: int) -> PositionWindow:
    """:func:`attention_position_window` with each ``[L, L]`` index replaced by its :func:`by_distance` vector."""
    window = attention_position_window(config, query_size)
    return PositionWindow(window.start, window.stop, {k: by_distance(v) for k, v in window.index.items()})
