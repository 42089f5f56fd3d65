"""Shared by the matrix-state ops `linear_attention` and `gated_delta_rule`: input checks and
the chunkwise machinery: a `lax.scan` over chunks of C steps whose (rematerialised) body
computes one chunk from the state entering it, with gate decays masked at segment boundaries.

T is zero-padded to N * C steps; padding (k = v = g = beta = 0) leaves the state unchanged.
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
  """[B, T, H, ...] -> [N, B, H, C, ...], zero-padded to N = ceil(T / C) chunks."""
  pad = -x.shape[1] % size
  x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
  return rearrange(x, "b (n c) h ... -> n b h c ...", c=size)


def from_chunks(x, length):
  """[N, B, H, C, ...] -> [B, T, H, ...], dropping the padding."""
  return rearrange(x, "n b h c ... -> b (n c) h ...")[:, :length]


def scan_chunks(body, h0, xs, chunk_size):
  """Runs `body(state, chunk) -> (state, o)` over chunks of C = min(chunk_size, T) steps.

  xs: [B, T, H, ...] arrays, seen by the body as [B, H, C, ...]; o: [B, H, C, V].
  The body is rematerialised, so the backward pass keeps only the N carried states.
  Returns o: [B, T, H, V] and the final state.
  """
  length = xs[0].shape[1]
  size = min(chunk_size, length)
  final, o = lax.scan(jax.checkpoint(body), h0, [to_chunks(x, size) for x in xs])
  return from_chunks(o, length), final


class ChunkDecay(NamedTuple):
  """Gate decays within one chunk, zero wherever a segment boundary cuts the path.

  within: [B, H, C, C] exp(G_i - G_j) for j <= i in the same segment, else 0.
  entry: [B, H, C] exp(G_i) where token i's segment continues from the previous chunk.
  exit: [B, H, C] exp(G_last - G_j) where token j is in the chunk's last segment.
  carry: [B, H] exp(G_last) where no segment starts inside the chunk.
  G is the cumulative log gate within the chunk; every exp sees a masked exponent <= 0.
  """
  within: jax.Array
  entry: jax.Array
  exit: jax.Array
  carry: jax.Array


def _masked_exp(mask, x):
  return jnp.exp(jnp.where(mask, x, -jnp.inf))


def _cumsum(x):
  """Cumulative sum over the last axis as a matmul with a triangle of ones.

  (XLA on CPU fuses a cumsum into its consumers and recomputes it for every element.)
  """
  size = x.shape[-1]
  return jnp.matmul(x, jnp.triu(jnp.ones((size, size), x.dtype)),
                    precision=lax.Precision.HIGHEST)


def chunk_decay(g, resets) -> ChunkDecay:
  """g: [B, H, C] log gates; resets: [B, 1, C] segment-start flags."""
  G = _cumsum(g)
  seg = _cumsum(resets.astype(g.dtype))  # segment index within the chunk, 0 = continues
  same = jnp.tril(seg[..., :, None] == seg[..., None, :])  # j <= i in the same segment
  first, last = seg == 0, seg == seg[..., -1:]
  return ChunkDecay(
      within=_masked_exp(same, G[..., :, None] - G[..., None, :]),
      entry=_masked_exp(first, G),
      exit=_masked_exp(last, G[..., -1:] - G),
      carry=_masked_exp(first[..., -1], G[..., -1]))


def chunk_output(q, k, u, decay: ChunkDecay, state):
  """o_i = sum_{j <= i} within_ij (q_i . k_j) u_j + entry_i S_in^T q_i.

  q, k: [B, H, C, K]; u: [B, H, C, V]; state: S_in [B, H, K, V], the state entering the chunk.
  Returns [B, H, C, V].
  """
  scores = jnp.einsum("bhik,bhjk->bhij", q, k) * decay.within
  return (jnp.einsum("bhij,bhjv->bhiv", scores, u)
          + jnp.einsum("bhik,bhkv->bhiv", q * decay.entry[..., None], state))


def state_update(state, k, u, decay: ChunkDecay):
  """S_out = carry S_in + sum_j exit_j k_j u_j^T (shapes as in `chunk_output`)."""
  return (decay.carry[..., None, None] * state
          + jnp.einsum("bhck,bhcv->bhkv", k * decay.exit[..., None], u))
