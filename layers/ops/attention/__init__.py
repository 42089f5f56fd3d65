"""Softmax attention: the baseline every sequence paper compares against.

`attention` runs a whole sequence (full causal, sliding window or bidirectional);
`attention_step` decodes one token against a fixed-capacity KV cache `{k: [B, C, H, K], v: [B, C, H, V], pos: [B]}`;
`attention_prefill` runs a sequence into such a cache. The cache is a ring buffer (slot =
position % C, laid out in `reference.py` alone): with C = max_len it is full attention, with
C = window it is sliding-window attention, and the same step serves both.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from layers.ops import common
from layers.ops.attention import reference, xla

common.register("attention", {"reference": reference.attention, "blockwise": xla.attention})
common.register("attention_prefill", {"reference": reference.attention_prefill,
                                      "blockwise": xla.attention_prefill})


def _inputs(op, q, k, v, step=False):
  """The input rule (common.as_float) and the q, k, v shape checks."""
  q, k, v = common.as_float(q, k, v)
  layout_qk, layout_v = ("[B, H, K]", "[B, H, V]") if step else ("[B, T, H, K]", "[B, T, H, V]")
  rank = 3 if step else 4
  common.check_rank(op, "q", q, rank, layout_qk)
  common.check_shape(op, "k", k, jnp.shape(q), f"{layout_qk} like q")
  common.check_rank(op, "v", v, rank, layout_v)
  common.check_shape(op, "v", v, jnp.shape(q)[:-1] + jnp.shape(v)[-1:], layout_v)
  return q, k, v


def _check_cache(op, cache, batch, heads, key_dim, value_dim):
  if not isinstance(cache, dict) or set(cache) != {"k", "v", "pos"}:
    raise ValueError(f"{op}: cache must be a dict with keys k, v, pos (see init_cache)")
  C = jnp.shape(cache["k"])[1] if jnp.ndim(cache["k"]) > 1 else 0
  common.check_shape(op, "cache['k']", cache["k"], (batch, C, heads, key_dim), "[B, C, H, K]")
  common.check_shape(op, "cache['v']", cache["v"], (batch, C, heads, value_dim),
                     "[B, C, H, V]")
  common.check_shape(op, "cache['pos']", cache["pos"], (batch,), "[B]")
  if C < 1:
    raise ValueError(f"{op}: the cache needs a capacity C >= 1; got {C}")


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, window: int | None = None,
              segment_ids: jax.Array | None = None, scale: float | None = None,
              causal: bool = True, impl: str = "auto",
              chunk_size: int | None = None) -> jax.Array:
  """Softmax attention o_t = sum_{s in M(t)} softmax_s(scale q_t.k_s) v_s.

  Causal: M(t) = {s <= t, t - s < window (when given), segment_ids[s] == segment_ids[t]};
  causal=False (bidirectional encoders): M(t) = {s : segment_ids[s] == segment_ids[t]}.

  Args:
    q, k: [B, T, H, K]; v: [B, T, H, V] (array-likes; integers become floats).
    window: sliding-window size (the token itself counts), None for full attention.
    segment_ids: [B, T] int; tokens attend only within their own segment.
    scale: multiplies q; default K**-0.5.
    causal: False attends to the whole segment (no window).
    impl: "reference" (the masked [B, H, T, T] score matrix) | "blockwise" (an online softmax
      over key blocks, O(T * chunk_size) memory; a window visits only the blocks it reaches)
      | "auto" (blockwise from T = LONG_FORMS["attention"] on).
    chunk_size: the blockwise form's block of queries and keys (default xla.BLOCK).
  Non-finite inputs: scores are masked with `where` before the softmax and values reach o_t
  only where visible (`common.masked_matmul`), so a NaN query, key or value after t, or in
  another segment (padding), never reaches o_t.

  Returns:
    o: [B, T, H, V] in the dtype of v (softmax in float32 or wider).
  """
  op = "attention"
  q, k, v = _inputs(op, q, k, v)
  B, T, H, K = jnp.shape(q)
  segment_ids = common.as_segment_ids(op, segment_ids, B, T)
  if window is not None and (window < 1 or not causal):
    raise ValueError(f"{op}: window must be a positive int or None, and None when "
                     f"causal=False; got window={window}, causal={causal}")
  form = common.dispatch(op, impl, chunk_size=chunk_size, length=T)
  if T == 0:
    return v
  scale = K ** -0.5 if scale is None else scale
  return form(q, k, v, window, segment_ids, scale, causal).astype(v.dtype)


def init_cache(batch_size: int, capacity: int, num_heads: int, key_dim: int,
               value_dim: int, dtype=jnp.float32) -> dict:
  """An empty KV cache: {k: [B, C, H, K], v: [B, C, H, V], pos: [B] int32 zeros}."""
  return {
      "k": jnp.zeros((batch_size, capacity, num_heads, key_dim), dtype),
      "v": jnp.zeros((batch_size, capacity, num_heads, value_dim), dtype),
      "pos": jnp.zeros((batch_size,), jnp.int32),
  }


def attention_step(q_t: jax.Array, k_t: jax.Array, v_t: jax.Array, cache: dict, *,
                   scale: float | None = None) -> tuple[jax.Array, dict]:
  """One decoding step: writes (k_t, v_t) at slot pos % C, attends over the filled slots.

  The token at absolute position `pos` sees positions max(0, pos - C + 1) .. pos: full causal
  attention while pos < C (C = max_len), a sliding window of size C otherwise (C = window).

  Args:
    q_t, k_t: [B, H, K]; v_t: [B, H, V].
    cache: {k: [B, C, H, K], v: [B, C, H, V], pos: [B] int} (see `init_cache`).
    scale: multiplies q; default K**-0.5.
  Returns:
    o_t: [B, H, V] in the dtype of v_t, and the updated cache (pos + 1).
  """
  op = "attention_step"
  q_t, k_t, v_t = _inputs(op, q_t, k_t, v_t, step=True)
  B, H, K = jnp.shape(q_t)
  _check_cache(op, cache, B, H, K, jnp.shape(v_t)[-1])
  scale = K ** -0.5 if scale is None else scale
  o_t, cache = reference.attention_step(q_t, k_t, v_t, cache, scale)
  return o_t.astype(v_t.dtype), cache


def attention_prefill(q: jax.Array, k: jax.Array, v: jax.Array, cache: dict | None = None, *,
                      capacity: int | None = None, segment_ids: jax.Array | None = None,
                      scale: float | None = None, impl: str = "auto",
                      chunk_size: int | None = None) -> tuple[jax.Array, dict]:
  """Runs T tokens into a KV cache of capacity C: the whole-sequence form of T
  `attention_step`s.

  Each row's first segment continues the cache (its tokens take positions pos, pos + 1, ..;
  callers apply rotary at those positions); later segments of a packed row start with an empty
  history. A token at position p sees positions max(0, p - C + 1) .. p of its segment.

  Args:
    q, k: [B, T, H, K]; v: [B, T, H, V] (array-likes; integers become floats).
    cache: {k: [B, C, H, K], v: [B, C, H, V], pos: [B] int} (see `init_cache`); None starts
      from an empty cache of `capacity` slots (default T) in k's dtype, scoring only the T new
      keys (the training path: attention with window = capacity).
    segment_ids: [B, T] int.
    scale: multiplies q; default K**-0.5.
    impl: "reference" (scores against the C cached and T new keys) | "blockwise" (the same
      mask block by block) | "auto" (blockwise once the keys scored reach
      LONG_FORMS["attention_prefill"]).
    chunk_size: the blockwise form's block (default xla.BLOCK).
  Returns:
    o: [B, T, H, V] in the dtype of v, and the cache after the last token: the last segment's
    last C tokens at slots position % C (as if that segment ran alone after the cache when it
    is the first), pos = its next position.
  """
  op = "attention_prefill"
  q, k, v = _inputs(op, q, k, v)
  B, T, H, K = jnp.shape(q)
  V = jnp.shape(v)[-1]
  empty = cache is None
  if empty:
    capacity = T if capacity is None else capacity
    if not isinstance(capacity, int) or capacity < 1:
      raise ValueError(f"{op}: capacity must be a positive int; got {capacity!r}")
    cache = init_cache(B, capacity, H, K, V, k.dtype)
  elif capacity is not None:
    raise ValueError(f"{op}: capacity is the given cache's; pass capacity only with cache=None")
  _check_cache(op, cache, B, H, K, V)
  segment_ids = common.as_segment_ids(op, segment_ids, B, T)
  keys = T if empty else T + jnp.shape(cache["k"])[1]
  form = common.dispatch(op, impl, chunk_size=chunk_size, length=keys)
  if T == 0:
    return v, cache
  scale = K ** -0.5 if scale is None else scale
  o, cache = form(q, k, v, cache, segment_ids, scale, empty)
  return o.astype(v.dtype), cache


__all__ = ["attention", "attention_prefill", "attention_step", "init_cache"]
