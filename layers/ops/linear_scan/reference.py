"""Sequential oracles: one `lax.scan` over time that reads like the recurrence."""
import jax
import jax.numpy as jnp
from jax import lax


def linear_scan(a, b, h0, resets, reverse=False):
  """h_t = a_t * h_{t-1} + b_t, with h_{t-1} := 0 where `resets[:, t]`.

  a, b: [B, T, ...]; h0: [B, ...]; resets: [B, T, ...] (broadcastable bools).
  Returns h: [B, T, ...] and the final state h_T (h_0 when `reverse`).
  """
  def step(h, xs):
    a_t, b_t, r_t = xs
    h = jnp.where(r_t, 0, a_t * h) + b_t
    return h, h

  xs = jax.tree.map(lambda x: jnp.moveaxis(x, 1, 0), (a, b, resets))
  h_last, h = lax.scan(step, h0, xs, reverse=reverse)
  return jnp.moveaxis(h, 0, 1), h_last


def log_linear_scan(log_a, log_b, log_h0, resets):
  """log h_t = logaddexp(log_a_t + log h_{t-1}, log_b_t); log h_t = log_b_t where `resets`.

  All arguments are log-space; returns (log h: [B, T, ...], log h_T).
  """
  def step(log_h, xs):
    log_a_t, log_b_t, r_t = xs
    log_h = jnp.where(r_t, log_b_t, jnp.logaddexp(log_a_t + log_h, log_b_t))
    return log_h, log_h

  xs = jax.tree.map(lambda x: jnp.moveaxis(x, 1, 0), (log_a, log_b, resets))
  log_h_last, log_h = lax.scan(step, log_h0, xs)
  return jnp.moveaxis(log_h, 0, 1), log_h_last
