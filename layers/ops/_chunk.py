"""Shared by the matrix-state ops `linear_attention` and `gated_delta_rule` (and the chunk form
of `selective_scan`): input checks and the chunkwise machinery: a loop over chunks of C steps
whose body computes one chunk from the state entering it (recomputed in the backward pass),
with gate decays masked at segment boundaries.

T is zero-padded to N * C steps; padding (k = v = g = beta = 0) leaves the state unchanged.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from layers.ops import common


def prepare(op, q, k, v, gates, scale, initial_state, segment_ids, keep_narrow=False):
  """Applies the ops' input rule (common.as_float), checks shapes, casts to the accumulation
  dtype and resolves the q scale. With `keep_narrow` (the Pallas kernels, which read 16-bit
  inputs as they are and accumulate in float32 themselves), 16-bit q, k, v keep their dtype.

  gates: {name: [B, T, H] or None}; a None gate `g` becomes zeros (no decay), others stay None.
  Returns (q, k, v, {name: gate}, h0 [B, H, K, V], resets [B, T], scale, output dtype), arrays
  in the accumulation dtype (v and h0 complex when the initial state is; resets bool). The forms
  multiply q by `scale` themselves (the chunk forms per chunk, which spares a sequence-sized
  temporary).
  """
  q, k, v, initial_state = common.as_float(q, k, v, initial_state)
  gates = dict(zip(gates, common.as_float(*gates.values())))
  common.check_rank(op, "q", q, 4, "[B, T, H, K]")
  common.check_shape(op, "k", k, jnp.shape(q), "[B, T, H, K] like q")
  common.check_rank(op, "v", v, 4, "[B, T, H, V]")
  B, T, H, K = jnp.shape(q)
  V = jnp.shape(v)[-1]
  common.check_shape(op, "v", v, (B, T, H, V), "[B, T, H, V]")
  for name, x in gates.items():
    if x is not None:
      common.check_shape(op, name, x, (B, T, H), "[B, T, H]")
  if initial_state is not None:
    common.check_shape(op, "initial_state", initial_state, (B, H, K, V), "[B, H, K, V]")
  segment_ids = common.as_segment_ids(op, segment_ids, B, T)
  dtype = common.accumulation_dtype(q, k, v, *gates.values())
  state_dtype = common.accumulation_dtype(dtype, initial_state)  # complex with a complex state
  out_dtype = common.output_dtype(v, initial_state)
  scale = K ** -0.5 if scale is None else scale
  gates = {name: None if x is None else x.astype(dtype) for name, x in gates.items()}
  if "g" in gates and gates["g"] is None:
    gates["g"] = jnp.zeros((B, T, H), dtype)
  h0 = (jnp.zeros((B, H, K, V), dtype) if initial_state is None
        else initial_state.astype(state_dtype))
  resets = common.segment_starts(segment_ids, B, T)
  q, k, v = common.zero_padding(segment_ids, q, k, v)
  gates = dict(zip(gates, common.zero_padding(segment_ids, *gates.values())))
  cast = lambda x, to: x if keep_narrow and x.dtype.itemsize < 4 else x.astype(to)
  return (cast(q, dtype), cast(k, dtype), cast(v, state_dtype), gates, h0, resets, scale,
          out_dtype)


def scan_chunks(body, h0, xs, chunk_size):
  """Runs `body(state, chunk) -> (state, o)` over chunks of C = min(chunk_size, T) steps.

  xs: [B, T, H, ...] arrays, seen by the body as [B, H, C, ...]; o: [B, H, C, V].
  Returns o: [B, T, H, V] and the final state.

  A `fori_loop` over the N = ceil(T / C) chunks reads chunk n of the [B, N, C, H, ...] view of
  each input (a free reshape) and writes its output in place into [B, N, C, H, V]: no
  whole-sequence transposes or stacked scan outputs, so temporaries stay O(one chunk) (on CPU,
  fresh sequence-sized buffers cost more than the chunk matmuls). The backward pass (a
  custom_vjp) keeps only the N states entering the chunks and runs the loop in reverse,
  recomputing each chunk, carrying dS and writing each chunk's input gradients in place.
  """
  batch, length = xs[0].shape[:2]
  size = min(chunk_size, length)
  num = -(-length // size)
  pad = num * size - length
  xs = [jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)) if pad else x for x in xs]
  xs = [x.reshape(batch, num, size, *x.shape[2:]) for x in xs]
  # closed-over arrays (e.g. selective_scan's A) become explicit, differentiable arguments
  body, consts = jax.closure_convert(body, h0, _chunk_at(xs, 0))
  final, out = _chunk_loop(body, h0, xs, consts)
  out = out.reshape(batch, num * size, *out.shape[3:])
  return (out[:, :length] if pad else out), final


def _chunk_at(xs, n):
  """Chunk n of [B, N, C, H, ...] arrays, as [B, H, C, ...]."""
  return [jnp.swapaxes(lax.dynamic_index_in_dim(x, n, 1, keepdims=False), 1, 2) for x in xs]


def _put_chunk(buffer, x, n):
  """Writes x [B, H, C, ...] as chunk n of `buffer` [B, N, C, H, ...]."""
  x = jnp.swapaxes(x, 1, 2).astype(buffer.dtype)
  return lax.dynamic_update_index_in_dim(buffer, x, n, 1)


def _run_chunks(body, h0, xs, consts, keep_states):
  """The forward loop: (final state, out [B, N, C, H, V]) and, if asked, the N entry states."""
  num = xs[0].shape[1]
  o = jax.eval_shape(lambda s, c: body(s, c, *consts)[1], h0, _chunk_at(xs, 0))
  out = jnp.zeros((o.shape[0], num, o.shape[2], o.shape[1], *o.shape[3:]), o.dtype)
  states = jnp.zeros((num, *h0.shape), h0.dtype) if keep_states else None

  def step(n, carry):
    state, out, states = carry
    if keep_states:
      states = lax.dynamic_update_index_in_dim(states, state, n, 0)
    state, o = body(state, _chunk_at(xs, n), *consts)
    return state, _put_chunk(out, o, n), states

  final, out, states = lax.fori_loop(0, num, step, (h0, out, states))
  return (final, out), states


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _chunk_loop(body, h0, xs, consts):
  return _run_chunks(body, h0, xs, consts, keep_states=False)[0]


def _chunk_loop_fwd(body, h0, xs, consts):
  results, states = _run_chunks(body, h0, xs, consts, keep_states=True)
  return results, (states, xs, consts)


def _chunk_loop_bwd(body, residuals, cotangents):
  """Chunks in reverse: recompute chunk n from its entry state, pull back (dS, do_n)."""
  states, xs, consts = residuals
  d_final, d_out = cotangents
  differentiable = [jnp.issubdtype(x.dtype, jnp.inexact) for x in xs]
  d_xs = [jnp.zeros_like(x) if d else None for x, d in zip(xs, differentiable)]

  def step(i, carry):
    n = xs[0].shape[1] - 1 - i
    d_state, d_xs, d_consts = carry
    chunk = _chunk_at(xs, n)
    _, vjp = jax.vjp(lambda s, c, *k: body(s, c, *k), states[n], chunk, *consts)
    d_state, d_chunk, *d_consts_n = vjp((d_state, _chunk_at([d_out], n)[0]))
    d_xs = [None if d is None else _put_chunk(d, dc, n) for d, dc in zip(d_xs, d_chunk)]
    return d_state, d_xs, [a + b for a, b in zip(d_consts, d_consts_n)]

  d_h0, d_xs, d_consts = lax.fori_loop(
      0, xs[0].shape[1], step, (d_final, d_xs, [jnp.zeros_like(c) for c in consts]))
  return d_h0, d_xs, d_consts


_chunk_loop.defvjp(_chunk_loop_fwd, _chunk_loop_bwd)


class ChunkDecay(NamedTuple):
  """Gate decays within one chunk, zero wherever a segment boundary cuts the path.

  mask: [B, H, C, C] bool, j <= i in the same segment.
  within: [B, H, C, C] exp(G_i - G_j) where mask, else 0.
  entry: [B, H, C] exp(G_i) where token i's segment continues from the previous chunk.
  exit: [B, H, C] exp(G_last - G_j) where token j is in the chunk's last segment.
  carry: [B, H] exp(G_last) where no segment starts inside the chunk.
  G is the cumulative log gate within the chunk; every exp sees a masked exponent <= 0.
  """
  mask: jax.Array
  within: jax.Array
  entry: jax.Array
  exit: jax.Array
  carry: jax.Array


def _masked_exp(mask, x):
  return jnp.exp(jnp.where(mask, x, -jnp.inf))


def _cumsum(x):
  """Cumulative sum over the last axis as a matmul with a triangle of ones.

  (XLA on CPU fuses a cumsum into its consumers and recomputes it for every element.)
  A non-finite x_j reaches the sums from j on only (`common.masked_matmul`).
  """
  size = x.shape[-1]
  upper = jnp.triu(jnp.ones((size, size), x.dtype))
  bad = ~jnp.isfinite(x)
  sums = jnp.matmul(jnp.where(bad, 0, x), upper, precision=lax.Precision.HIGHEST)
  return jnp.where(jnp.matmul(bad.astype(x.dtype), upper) > 0, jnp.nan, sums)


def chunk_decay(g, resets) -> ChunkDecay:
  """g: [B, H, C] log gates; resets: [B, 1, C] segment-start flags."""
  G = _cumsum(g)
  seg = _cumsum(resets.astype(g.dtype))  # segment index within the chunk, 0 = continues
  same = jnp.tril(seg[..., :, None] == seg[..., None, :])  # j <= i in the same segment
  first, last = seg == 0, seg == seg[..., -1:]
  return ChunkDecay(
      mask=same,
      within=_masked_exp(same, G[..., :, None] - G[..., None, :]),
      entry=_masked_exp(first, G),
      exit=_masked_exp(last, G[..., -1:] - G),
      carry=_masked_exp(first[..., -1], G[..., -1]))


def chunk_output(q, k, u, decay: ChunkDecay, state):
  """o_i = sum_{j <= i} within_ij (q_i . k_j) u_j + entry_i S_in^T q_i.

  q, k: [B, H, C, K]; u: [B, H, C, V]; state: S_in [B, H, K, V], the state entering the chunk.
  Returns [B, H, C, V]. Scores are masked (`where`) before they meet u, and u_j reaches o_i
  only where j <= i (`common.masked_matmul`), so non-finite values never flow back in time.
  """
  scores = jnp.where(decay.mask, jnp.einsum("bhik,bhjk->bhij", q, k), 0) * decay.within
  return (common.masked_matmul(scores, decay.mask, u)
          + jnp.einsum("bhik,bhkv->bhiv", q * decay.entry[..., None], state))


def state_update(state, k, u, decay: ChunkDecay):
  """S_out = carry S_in + sum_j exit_j k_j u_j^T (shapes as in `chunk_output`)."""
  k_exit = jnp.swapaxes(k, -1, -2) * decay.exit[..., None, :]  # [B, H, K, C]: a plain matmul
  return decay.carry[..., None, None] * state + jnp.einsum("bhkc,bhcv->bhkv", k_exit, u)
