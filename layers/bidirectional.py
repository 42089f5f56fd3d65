"""A bidirectional form for any causal mixer: one mixer over x, a second one (its own
parameters) over x reversed within each segment, outputs summed (the LRA classifiers)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from layers.ops import common as ops_common


def reverse_segments(segment_ids: jax.Array | None, batch: int, length: int) -> jax.Array:
  """Indices [B, T] that reverse every segment in place (segments are contiguous runs, so
  padding at the end of a row stays there): token t of a segment spanning s .. e goes to
  s + e - t. The permutation is its own inverse."""
  t = jnp.broadcast_to(jnp.arange(length), (batch, length))
  if segment_ids is None:
    return t[:, ::-1]
  _, from_start = ops_common.segment_positions(segment_ids, batch, length)
  _, to_end = ops_common.segment_positions(segment_ids[:, ::-1], batch, length)
  return t - from_start + to_end[:, ::-1]


class Bidirectional(nn.Module):
  """y_t = forward(x)_t + R(backward(R x))_t, R reversing each segment (`reverse_segments`).

  `forward` and `backward` are two instances of one causal mixer (separate parameters); the
  output at t sees the whole of t's segment. It takes no state, returns None for it and has no
  step, like the native bidirectional forms (causal=False).
  """
  forward: nn.Module
  backward: nn.Module

  def __call__(self, x: jax.Array, state=None, segment_ids: jax.Array | None = None):
    """x: [B, T, D] -> (y: [B, T, D], None)."""
    if state is not None:
      raise ValueError("Bidirectional: the bidirectional form takes no state")
    B, T = x.shape[:2]
    order = reverse_segments(segment_ids, B, T)
    flip = lambda a: jnp.take_along_axis(a, order.reshape(order.shape + (1,) * (a.ndim - 2)),
                                         axis=1)
    y, _ = self.forward(x, None, segment_ids)
    y_back, _ = self.backward(flip(x), None, segment_ids)
    return y + flip(y_back), None

  def init_state(self, batch_size: int, max_len: int):
    raise ValueError("Bidirectional: the bidirectional form has no state or step")

  def step(self, x_t, state):
    raise ValueError("Bidirectional: the bidirectional form has no state or step")
