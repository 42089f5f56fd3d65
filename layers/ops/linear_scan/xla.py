"""Parallel forms: `lax.associative_scan` over time (O(log T) depth)."""
import jax.numpy as jnp
from jax import lax


def _linear_combine(left, right):
  a1, b1 = left
  a2, b2 = right
  return a1 * a2, a2 * b1 + b2


def linear_scan(a, b, h0, resets, reverse=False):
  """Associative form of `reference.linear_scan` (same arguments and results).

  A reset zeroes the coefficient that multiplies the past, which cuts every carry across it.
  The initial state enters as b_first' = a_first h0 + b_first.
  """
  a = jnp.where(resets, 0, a)
  first, last = (-1, 0) if reverse else (0, -1)
  b = b.at[:, first].add(a[:, first] * h0)
  _, h = lax.associative_scan(_linear_combine, (a, b), reverse=reverse, axis=1)
  return h, h[:, last]


def _log_combine(left, right):
  a1, b1, r1 = left
  a2, b2, r2 = right
  a = jnp.where(r2, a2, a1 + a2)
  b = jnp.where(r2, b2, jnp.logaddexp(b1 + a2, b2))
  return a, b, r1 | r2


def log_linear_scan(log_a, log_b, log_h0, resets):
  """Associative form of `reference.log_linear_scan` on (log_a, log_b, reset flag).

  Combine: (a1, b1) then (a2, b2) -> (a1 + a2, logaddexp(b1 + a2, b2)); a reset on the right
  discards the left, so no -inf ever enters the computation.
  """
  resets = jnp.broadcast_to(resets, log_b.shape)
  first = jnp.where(resets[:, 0], log_b[:, 0],
                    jnp.logaddexp(log_a[:, 0] + log_h0, log_b[:, 0]))
  log_b = log_b.at[:, 0].set(first)
  resets = resets.at[:, 0].set(True)
  _, log_h, _ = lax.associative_scan(_log_combine, (log_a, log_b, resets), axis=1)
  return log_h, log_h[:, -1]
