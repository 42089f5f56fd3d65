"""Blockwise softmax attention in O(T * block) memory: an online softmax over key blocks (Rabe &
Staats 2021; the FlashAttention recurrence of Dao et al. 2022) and a backward that recomputes
each block's scores from the saved log-normaliser instead of storing [B, H, T, T].

Query block i visits only the key blocks its mask can reach (causal: up to its own; a window
of w: the last ceil(w / block) + 1 of them), so a sliding window costs O(T * w) time too.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from einops import rearrange

from layers.ops import common
from layers.ops.attention import reference

BLOCK = 256  # default block size (queries and keys); benchmarks/attention.py


def _pad_to(x, length, value=0):
  """x: [B, T, ...] padded along time to `length` with `value`."""
  return jnp.pad(x, [(0, 0), (0, length - x.shape[1])] + [(0, 0)] * (x.ndim - 2),
                 constant_values=value)


def _key_blocks(i, c, n_key_blocks, offset, window, causal):
  """The first and last key block visible from query block i (query t is key t + offset)."""
  if not causal:
    return 0, n_key_blocks - 1
  last = jnp.minimum((i * c + c - 1 + offset) // c, n_key_blocks - 1)
  first = 0 if window is None else jnp.maximum((i * c + offset - window + 1) // c, 0)
  return first, last


def _query_blocks(j, c, n_query_blocks, offset, window, causal):
  """The first and last query block that sees some key of key block j."""
  if not causal:
    return 0, n_query_blocks - 1
  first = jnp.maximum((j * c - offset) // c, 0)
  last = (n_query_blocks - 1 if window is None else
          jnp.minimum((j * c + c - 2 + window - offset) // c, n_query_blocks - 1))
  return first, last


def _block(x, i, c):
  return jax.lax.dynamic_slice_in_dim(x, i * c, c, axis=1)


def _scores(q_i, k_j, masks, i, j, c, scale, window, causal):
  """Block (i, j): scale q_i.k_j as [B, H, c, c] and its visibility mask [B, 1, c, c]."""
  q_pos, k_pos, q_index, k_index = masks
  mask = reference.causal_mask(_block(q_pos, i, c), _block(k_pos, j, c), _block(q_index, i, c),
                               _block(k_index, j, c), window, causal)[:, None]
  return jnp.einsum("bqhk,bshk->bhqs", q_i * scale, k_j), mask


def _forward(q, k, v, masks, scale, window, causal, offset, c):
  """Online softmax per query block: returns o [B, Tq, H, V] and L = log sum exp [B, H, Tq]."""
  B, Tq, H, _ = q.shape
  n_query, n_key = Tq // c, k.shape[1] // c
  low = jnp.finfo(q.dtype).min

  def query_block(i):
    q_i = _block(q, i, c)

    def visit(j, carry):
      m, l, acc = carry
      s, mask = _scores(q_i, _block(k, j, c), masks, i, j, c, scale, window, causal)
      s = jnp.where(mask, s, -jnp.inf)
      m_new = jnp.maximum(m, s.max(-1))
      p = jnp.where(mask, jnp.exp(s - m_new[..., None]), 0)
      correction = jnp.exp(m - m_new)
      v_j = rearrange(_block(v, j, c), "b s h v -> b h s v")
      acc = acc * correction[..., None] + common.masked_matmul(p, mask, v_j)
      return m_new, l * correction + p.sum(-1), acc

    first, last = _key_blocks(i, c, n_key, offset, window, causal)
    init = (jnp.full((B, H, c), low, q.dtype), jnp.zeros((B, H, c), q.dtype),
            jnp.zeros((B, H, c, v.shape[-1]), q.dtype))
    m, l, acc = jax.lax.fori_loop(first, last + 1, visit, init)
    l = jnp.where(l > 0, l, 1)  # rows that see nothing (padding) give 0, not 0 / 0
    return acc / l[..., None], m + jnp.log(l)

  o, lse = jax.lax.map(query_block, jnp.arange(n_query))
  return (rearrange(o, "n b h c v -> b (n c) h v"), rearrange(lse, "n b h c -> b h (n c)"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8))
def _attend(q, k, v, masks, scale, window, causal, offset, c):
  return _forward(q, k, v, masks, scale, window, causal, offset, c)[0]


def _attend_fwd(q, k, v, masks, scale, window, causal, offset, c):
  o, lse = _forward(q, k, v, masks, scale, window, causal, offset, c)
  return o, (q, k, v, masks, o, lse)


def _attend_bwd(scale, window, causal, offset, c, residuals, d_o):
  """Per key block j, over the query blocks that see it: P = exp(S - L),
  dV_j = sum_i P^T dO_i, dS = P * (dO_i V_j^T - rowsum(dO_i * O_i)), dQ_i += scale dS K_j,
  dK_j = scale sum_i dS^T Q_i."""
  q, k, v, masks, o, lse = residuals
  n_query, n_key = q.shape[1] // c, k.shape[1] // c
  delta = jnp.einsum("bthv,bthv->bht", d_o, o)

  def key_block(d_q, j):
    k_j, v_j = _block(k, j, c), _block(v, j, c)

    def visit(i, carry):
      d_q, d_k, d_v = carry
      q_i, d_o_i = _block(q, i, c), _block(d_o, i, c)
      s, mask = _scores(q_i, k_j, masks, i, j, c, scale, window, causal)
      p = jnp.where(mask, jnp.exp(s - _block_lse(lse, i, c)[..., None]), 0)
      d_v = d_v + jnp.einsum("bhqs,bqhv->bshv", p, d_o_i)
      d_s = p * (jnp.einsum("bqhv,bshv->bhqs", d_o_i, v_j) - _block_lse(delta, i, c)[..., None])
      d_q_i = _block(d_q, i, c) + scale * jnp.einsum("bhqs,bshk->bqhk", d_s, k_j)
      d_q = jax.lax.dynamic_update_slice_in_dim(d_q, d_q_i, i * c, axis=1)
      return d_q, d_k + scale * jnp.einsum("bhqs,bqhk->bshk", d_s, q_i), d_v

    first, last = _query_blocks(j, c, n_query, offset, window, causal)
    d_q, d_k, d_v = jax.lax.fori_loop(first, last + 1, visit,
                                      (d_q, jnp.zeros_like(k_j), jnp.zeros_like(v_j)))
    return d_q, (d_k, d_v)

  d_q, (d_k, d_v) = jax.lax.scan(key_block, jnp.zeros_like(q), jnp.arange(n_key))
  unblock = lambda x: rearrange(x, "n b c h d -> b (n c) h d")
  return d_q, unblock(d_k), unblock(d_v), None


def _block_lse(x, i, c):
  """Rows i*c .. i*c + c - 1 of a [B, H, T] array."""
  return jax.lax.dynamic_slice_in_dim(x, i * c, c, axis=2)


_attend.defvjp(_attend_fwd, _attend_bwd)


def attend(q, k, v, q_pos, k_pos, q_index, k_index, window, scale, causal=True, offset=0,
           chunk_size=BLOCK):
  """reference.attend (the masked softmax under causal_mask(q_pos, k_pos, q_index, k_index,
  window, causal)) computed block by block: o_t = sum_s softmax_s(scale q_t.k_s) v_s over the
  visible s, in O((Tq + Tk) * chunk_size) memory.

  q: [B, Tq, H, K]; k: [B, Tk, H, K]; v: [B, Tk, H, V]; positions and indices [B, Tq] / [B, Tk];
  `offset`: query t sits at key t + offset (keys are [offset cached, Tq new]), so the causal
  key range of a query block is known from its index. Returns [B, Tq, H, V] in the
  accumulation dtype.
  """
  dtype = common.accumulation_dtype(q, k, v)
  c = chunk_size
  Tq, Tk = q.shape[1], k.shape[1]
  n_query, n_key = -(-Tq // c), -(-Tk // c)
  pad_q = functools.partial(_pad_to, length=n_query * c)
  pad_k = functools.partial(_pad_to, length=n_key * c)
  masks = (pad_q(q_pos), pad_k(k_pos), pad_q(q_index, value=-2), pad_k(k_index, value=-3))
  o = _attend(pad_q(q.astype(dtype)), pad_k(k.astype(dtype)), pad_k(v.astype(dtype)), masks,
              scale, window, causal, offset, c)
  return o[:, :Tq]


def attention(q, k, v, window, segment_ids, scale, causal=True, chunk_size=BLOCK):
  """reference.attention, blockwise: the same mask, O(T * chunk_size) memory."""
  B, T = q.shape[:2]
  index, _ = common.segment_positions(segment_ids, B, T)
  t = jnp.broadcast_to(jnp.arange(T), (B, T))
  return attend(q, k, v, t, t, index, index, window, scale, causal, chunk_size=chunk_size)


def attention_prefill(q, k, v, cache, segment_ids, scale, empty=False, chunk_size=BLOCK):
  """reference.attention_prefill, blockwise: the scores against the C cached and T new keys
  are never materialised whole."""
  return reference.attention_prefill(q, k, v, cache, segment_ids, scale, empty,
                                     attend=functools.partial(attend, chunk_size=chunk_size))
