"""Shared by the matrix-state ops `linear_attention` and `gated_delta_rule`: input checks and
the chunkwise machinery (chunk layout, masked gate decays, state passing over chunks).

Chunk layout: [B, T, H, ...] is zero-padded to N * C steps and viewed as [B, N, H, C, ...];
gates [B, T, H] become [B, N, H, C]. Padding (k = v = g = beta = 0) leaves the state unchanged.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from einops import rearrange
from jax import lax

from layers.ops import _common


def prepare(op, q, k, v, gates, scale, initial_state, segment_ids, chunk_size):
  """Checks shapes, casts to the accumulation dtype and scales q.

  gates: {name: [B, T, H] or None}; a None gate `g` becomes zeros (no decay), others stay None.
  Returns (q * scale, k, v, {name: gate}, h0 [B, H, K, V], resets [B, T]), all in the
  accumulation dtype (resets bool).
  """
  _common.check_rank(op, "q", q, 4, "[B, T, H, K]")
  _common.check_shape(op, "k", k, jnp.shape(q), "[B, T, H, K] like q")
  _common.check_rank(op, "v", v, 4, "[B, T, H, V]")
  B, T, H, K = jnp.shape(q)
  V = jnp.shape(v)[-1]
  _common.check_shape(op, "v", v, (B, T, H, V), "[B, T, H, V]")
  for name, x in gates.items():
    if x is not None:
      _common.check_shape(op, name, x, (B, T, H), "[B, T, H]")
  if initial_state is not None:
    _common.check_shape(op, "initial_state", initial_state, (B, H, K, V), "[B, H, K, V]")
  _common.check_segment_ids(op, segment_ids, B, T)
  if not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f"{op}: chunk_size must be a positive int; got {chunk_size!r}")
  present = [x for x in gates.values() if x is not None]
  dtype = _common.accumulation_dtype(q, k, v, *present)
  scale = K ** -0.5 if scale is None else scale
  gates = {name: None if x is None else x.astype(dtype) for name, x in gates.items()}
  if "g" in gates and gates["g"] is None:
    gates["g"] = jnp.zeros((B, T, H), dtype)
  h0 = (jnp.zeros((B, H, K, V), dtype) if initial_state is None
        else initial_state.astype(dtype))
  resets = _common.segment_starts(segment_ids, B, T)
  return (q.astype(dtype) * scale, k.astype(dtype), v.astype(dtype), gates, h0, resets)


def to_chunks(x, size):
  """[B, T, H, ...] -> [B, N, H, C, ...], zero-padded to N = ceil(T / C) chunks."""
  pad = -x.shape[1] % size
  x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
  return rearrange(x, "b (n c) h ... -> b n h c ...", c=size)


def from_chunks(x, length):
  """[B, N, H, C, ...] -> [B, T, H, ...], dropping the padding."""
  return rearrange(x, "b n h c ... -> b (n c) h ...")[:, :length]


class ChunkDecay(NamedTuple):
  """Gate decays of each chunk, zero wherever a segment boundary cuts the path.

  within: [B, N, H, C, C] exp(G_i - G_j) for j <= i in the same segment, else 0.
  entry: [B, N, H, C] exp(G_i) where token i's segment continues from the previous chunk.
  exit: [B, N, H, C] exp(G_last - G_j) where token j is in the chunk's last segment.
  carry: [B, N, H] exp(G_last) where no segment starts inside the chunk.
  G is the cumulative log gate within the chunk; every exp sees a masked exponent <= 0.
  """
  within: jax.Array
  entry: jax.Array
  exit: jax.Array
  carry: jax.Array


def _masked_exp(mask, x):
  return jnp.exp(jnp.where(mask, x, -jnp.inf))


def chunk_decay(g, resets) -> ChunkDecay:
  """g: [B, N, H, C] log gates; resets: [B, N, 1, C] segment-start flags."""
  G = jnp.cumsum(g, axis=-1)
  seg = jnp.cumsum(resets, axis=-1)  # segment index within the chunk, 0 = continues
  size = g.shape[-1]
  causal = jnp.tril(jnp.ones((size, size), bool))
  same = (seg[..., :, None] == seg[..., None, :]) & causal
  first, last = seg == 0, seg == seg[..., -1:]
  return ChunkDecay(
      within=_masked_exp(same, G[..., :, None] - G[..., None, :]),
      entry=_masked_exp(first, G),
      exit=_masked_exp(last, G[..., -1:] - G),
      carry=_masked_exp(first[..., -1], G[..., -1]))


def chunk_inputs(q, k, v, g, resets, chunk_size, *per_head):
  """Chunks q, k, v, g, resets and extra [B, T, H] arrays with C = min(chunk_size, T).

  Returns (decay, q, k, v, *per_head) in chunk layout.
  """
  size = min(chunk_size, q.shape[1])
  decay = chunk_decay(to_chunks(g, size), to_chunks(resets[..., None], size))
  return (decay, *(to_chunks(x, size) for x in (q, k, v, *per_head)))


def state_update(state, k, u, exit, carry):
  """S_out = carry S_in + sum_j exit_j k_j u_j^T for one chunk.

  state: [B, H, K, V]; k: [B, H, C, K]; u: [B, H, C, V]; exit: [B, H, C]; carry: [B, H].
  """
  return (carry[..., None, None] * state
          + jnp.einsum("bhck,bhcv->bhkv", k * exit[..., None], u))


def scan_chunks(body, h0, xs):
  """lax.scan of `body(state, x_n) -> (state, y_n)` over the chunk axis 1 of `xs`.

  The body is rematerialised, so the backward pass keeps only the N carried states.
  Returns (final state, ys with the chunk axis at 1).
  """
  xs = jax.tree.map(lambda x: jnp.moveaxis(x, 1, 0), xs)
  final, ys = lax.scan(jax.checkpoint(body), h0, xs)
  return final, jax.tree.map(lambda y: jnp.moveaxis(y, 0, 1), ys)


def chunk_output(q, k, u, decay: ChunkDecay, states):
  """o_i = sum_{j <= i} within_ij (q_i . k_j) u_j + entry_i S_in^T q_i.

  q, k: [B, N, H, C, K]; u: [B, N, H, C, V]; states: [B, N, H, K, V] (state entering each
  chunk). Returns [B, N, H, C, V].
  """
  scores = jnp.einsum("bnhik,bnhjk->bnhij", q, k) * decay.within
  return (jnp.einsum("bnhij,bnhjv->bnhiv", scores, u)
          + jnp.einsum("bnhik,bnhkv->bnhiv", q * decay.entry[..., None], states))
