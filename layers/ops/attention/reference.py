"""Softmax attention written out: the masked score matrix, and the KV cache of fixed capacity C
(a ring buffer: slot = position % C) that decoding writes and prefill fills."""
import jax
import jax.numpy as jnp

from layers.ops import common


def masked_attention(q, k, v, mask, scale):
  """o_i = sum_j softmax_j(scale q_i.k_j over mask[i]) v_j.

  q: [B, Tq, H, K]; k: [B, Tk, H, K]; v: [B, Tk, H, V]; mask: [B, Tq, Tk] bool.
  Returns [B, Tq, H, V] in the accumulation dtype.
  """
  dtype = common.accumulation_dtype(q, k, v)
  scores = jnp.einsum("bthk,bshk->bhts", q.astype(dtype) * scale, k.astype(dtype))
  weights = jax.nn.softmax(jnp.where(mask[:, None], scores, -jnp.inf), axis=-1)
  o = common.masked_matmul(weights, mask[:, None], jnp.swapaxes(v.astype(dtype), 1, 2))
  return jnp.swapaxes(o, 1, 2)


def causal_mask(query_pos, key_pos, query_index, key_index, window, causal=True):
  """[B, Tq, Tk]: key s is visible from query t when both are in the same segment (index),
  and, if causal, pos_s <= pos_t and pos_t - pos_s < window (None: no limit)."""
  mask = query_index[:, :, None] == key_index[:, None, :]
  if causal:
    diff = query_pos[:, :, None] - key_pos[:, None, :]
    mask &= diff >= 0
    if window is not None:
      mask &= diff < window
  return mask


def attend(q, k, v, q_pos, k_pos, q_index, k_index, window, scale, causal=True, offset=0):
  """masked_attention under causal_mask(q_pos, k_pos, q_index, k_index, window, causal): the
  signature the blockwise form shares (`offset`, where query t sits among the keys, is what
  lets it skip blocks; the dense mask does not need it)."""
  del offset
  return masked_attention(q, k, v, causal_mask(q_pos, k_pos, q_index, k_index, window, causal),
                          scale)


def attention(q, k, v, window, segment_ids, scale, causal=True):
  """Softmax attention over [B, T, ...]: causal (with an optional window) or bidirectional,
  within segments."""
  B, T = q.shape[:2]
  index, _ = common.segment_positions(segment_ids, B, T)
  t = jnp.broadcast_to(jnp.arange(T), (B, T))
  return attend(q, k, v, t, t, index, index, window, scale, causal)


def attention_step(q_t, k_t, v_t, cache, scale):
  """Writes (k_t, v_t) at slot pos % C, then attends over the filled slots."""
  C = cache["k"].shape[1]
  pos = cache["pos"]
  slot = pos % C
  write = jax.vmap(lambda buf, x, i: buf.at[i].set(x.astype(buf.dtype)))
  k_cache, v_cache = write(cache["k"], k_t, slot), write(cache["v"], v_t, slot)
  filled = jnp.arange(C)[None, None, :] <= pos[:, None, None]  # [B, 1, C]
  o_t = masked_attention(q_t[:, None], k_cache, v_cache, filled, scale)[:, 0]
  return o_t, {"k": k_cache, "v": v_cache, "pos": pos + 1}


def write_cache(cache, k, v, index, positions):
  """The cache after the sequence k, v: [B, S, H, ...] (segment `index`, absolute `positions`:
  [B, S]): the last segment's last C tokens at slots position % C, zeros elsewhere,
  pos = the last position + 1."""
  C, S = cache["k"].shape[1], k.shape[1]
  keep = (index == index[:, -1:]) & (jnp.arange(S)[None] >= S - C)
  slots = jnp.where(keep, positions % C, C)  # slot C is out of range: dropped
  scatter = jax.vmap(lambda buf, i, x: jnp.zeros_like(buf).at[i].set(x.astype(buf.dtype),
                                                                    mode="drop"))
  return {"k": scatter(cache["k"], slots, k), "v": scatter(cache["v"], slots, v),
          "pos": (positions[:, -1] + 1).astype(cache["pos"].dtype)}


def attention_prefill(q, k, v, cache, segment_ids, scale, empty=False, attend=attend):
  """T tokens into a cache of capacity C: each row's first segment continues the cache (its
  positions start at pos), later segments start empty; a token at position p sees positions
  p - C + 1 .. p of its segment. `empty` (static): the cache holds nothing, so only the T new
  keys are scored. `attend`: how the masked softmax is computed (dense here, blockwise in
  xla.py). Returns (o: [B, T, H, V], the cache after the last token)."""
  B, T = q.shape[:2]
  C = cache["k"].shape[1]
  index, positions = common.segment_positions(segment_ids, B, T)
  if empty:
    o = attend(q, k, v, positions, positions, index, index, C, scale)
    return o, write_cache(cache, k, v, index, positions)
  positions = positions + jnp.where(index == 0, cache["pos"][:, None], 0)
  # The cache in position order: entry j holds position pos - C + j (none if negative).
  cache_positions = cache["pos"][:, None] + jnp.arange(C)[None] - C
  order = (cache_positions % C)[:, :, None, None]
  old_k, old_v = (jnp.take_along_axis(cache[name], order, axis=1) for name in ("k", "v"))
  key_index = jnp.concatenate([jnp.where(cache_positions >= 0, 0, -1), index], axis=1)
  key_positions = jnp.concatenate([cache_positions, positions], axis=1)
  k, v = jnp.concatenate([old_k, k], axis=1), jnp.concatenate([old_v, v], axis=1)
  o = attend(q, k, v, positions, key_positions, index, key_index, C, scale, offset=C)
  return o, write_cache(cache, k, v, key_index, key_positions)
