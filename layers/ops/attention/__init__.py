"""Causal softmax attention: the baseline every sequence paper compares against.

`attention` runs a whole sequence (full causal or sliding window); `attention_step` decodes
one token against a fixed-capacity KV cache `{k: [B, C, H, K], v: [B, C, H, V], pos: [B]}`.
The cache is a ring buffer: with C = max_len it is full attention, with C = window it is
sliding-window attention, and the same step serves both.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from layers.ops import _common


def _check_qkv(op, q, k, v, extra_rank=0):
  layout_qk = "[B, H, K]" if extra_rank else "[B, T, H, K]"
  layout_v = "[B, H, V]" if extra_rank else "[B, T, H, V]"
  rank = 3 if extra_rank else 4
  _common.check_rank(op, "q", q, rank, layout_qk)
  _common.check_shape(op, "k", k, jnp.shape(q), f"{layout_qk} like q")
  _common.check_rank(op, "v", v, rank, layout_v)
  _common.check_shape(op, "v", v, jnp.shape(q)[:-1] + jnp.shape(v)[-1:], layout_v)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, window: int | None = None,
              segment_ids: jax.Array | None = None,
              scale: float | None = None) -> jax.Array:
  """Causal softmax attention o_t = sum_{s in M(t)} softmax_s(scale q_t.k_s) v_s.

  M(t) = {s <= t, t - s < window (when given), segment_ids[s] == segment_ids[t]}.

  Args:
    q, k: [B, T, H, K]; v: [B, T, H, V].
    window: sliding-window size (the token itself counts), None for full attention.
    segment_ids: [B, T] int; tokens attend only within their own segment.
    scale: multiplies q; default K**-0.5.
  Returns:
    o: [B, T, H, V] in the dtype of v (softmax in float32 or wider).
  """
  op = "attention"
  _check_qkv(op, q, k, v)
  B, T, H, K = jnp.shape(q)
  _common.check_segment_ids(op, segment_ids, B, T)
  if window is not None and window < 1:
    raise ValueError(f"{op}: window must be a positive int or None; got {window}")
  scale = K ** -0.5 if scale is None else scale
  dtype = _common.accumulation_dtype(q, k, v)
  t = jnp.arange(T)
  mask = t[:, None] >= t[None, :]
  if window is not None:
    mask &= t[:, None] - t[None, :] < window
  mask = jnp.broadcast_to(mask, (B, 1, T, T))
  if segment_ids is not None:
    mask &= (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]
  scores = jnp.einsum("bthk,bshk->bhts", q.astype(dtype) * scale, k.astype(dtype))
  weights = jax.nn.softmax(jnp.where(mask, scores, -jnp.inf), axis=-1)
  return jnp.einsum("bhts,bshv->bthv", weights, v.astype(dtype)).astype(v.dtype)


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
  _check_qkv(op, q_t, k_t, v_t, extra_rank=1)
  B, H, K = jnp.shape(q_t)
  V = jnp.shape(v_t)[-1]
  if not isinstance(cache, dict) or set(cache) != {"k", "v", "pos"}:
    raise ValueError(f"{op}: cache must be a dict with keys k, v, pos (see init_cache)")
  C = jnp.shape(cache["k"])[1]
  _common.check_shape(op, "cache['k']", cache["k"], (B, C, H, K), "[B, C, H, K]")
  _common.check_shape(op, "cache['v']", cache["v"], (B, C, H, V), "[B, C, H, V]")
  _common.check_shape(op, "cache['pos']", cache["pos"], (B,), "[B]")
  scale = K ** -0.5 if scale is None else scale
  pos = cache["pos"]
  slot = pos % C
  write = jax.vmap(lambda buf, x, i: buf.at[i].set(x.astype(buf.dtype)))
  k_cache = write(cache["k"], k_t, slot)
  v_cache = write(cache["v"], v_t, slot)
  dtype = _common.accumulation_dtype(q_t, k_cache, v_cache)
  scores = jnp.einsum("bhk,bchk->bhc", q_t.astype(dtype) * scale, k_cache.astype(dtype))
  filled = jnp.arange(C)[None, :] <= pos[:, None]
  weights = jax.nn.softmax(jnp.where(filled[:, None, :], scores, -jnp.inf), axis=-1)
  o_t = jnp.einsum("bhc,bchv->bhv", weights, v_cache.astype(dtype)).astype(v_t.dtype)
  return o_t, {"k": k_cache, "v": v_cache, "pos": pos + 1}


__all__ = ["attention", "attention_step", "init_cache"]
