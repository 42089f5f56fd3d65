"""Chunk form: an associative scan inside chunks, the state carried across them."""
import jax.numpy as jnp
from einops import rearrange

from layers.ops import _chunk
from layers.ops.linear_scan import xla as linear_scan_xla


def chunk(u, dt, A, B, C, h0, resets, chunk_size):
  """Chunkwise form of `reference.selective_scan` (same arguments and results).

  A `lax.scan` over chunks of C steps whose rematerialised body runs the elementwise
  associative scan h_i = a_i h_{i-1} + b_i, a = exp(dt A), b = dt B u, from the state
  entering the chunk; only the [B, C, Dm, N] states of one chunk ever exist, forward or
  backward. A segment start zeroes its a; padding (u = dt = 0) gives a = 1, b = 0.
  """
  def body(state, xs):
    u, dt, B, C, resets = xs  # [B, G, C, Dc], [B, G, C, Dc], [B, G, C, N] x 2, [B, 1, C]
    a = jnp.exp(jnp.einsum("bglc,gcn->blgcn", dt, A))
    b = jnp.einsum("bglc,bgln->blgcn", dt * u, B)
    resets = rearrange(resets, "b 1 l -> b l 1 1 1")
    h, final = linear_scan_xla.linear_scan(a, b, state, resets)
    return final, jnp.einsum("blgcn,bgln->bglc", h, C)

  return _chunk.scan_chunks(body, h0, (u, dt, B, C, resets[..., None]), chunk_size)
