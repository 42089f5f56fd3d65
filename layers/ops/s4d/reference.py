"""Sequential oracle of the S4D convolution: the diagonal recurrence through `linear_scan`."""
import jax
import jax.numpy as jnp

from layers.ops.linear_scan import linear_scan


def discretize(log_dt, A_re, A_im, discretization):
  """(A_bar, B_bar): complex [H, N/2] of A = A_re + i A_im with step exp(log_dt) [H].

  ZOH: A_bar = exp(dt A), B_bar = (exp(dt A) - 1) / A.
  bilinear: A_bar = (1 + dt A / 2) / (1 - dt A / 2), B_bar = dt / (1 - dt A / 2).
  """
  A = jax.lax.complex(A_re, A_im)
  dt = jnp.exp(log_dt)[:, None]
  dtA = dt * A
  if discretization == "zoh":
    A_bar = jnp.exp(dtA)
    return A_bar, (A_bar - 1) / A
  denom = 1 - dtA / 2
  return (1 + dtA / 2) / denom, dt / denom


def s4d_conv(u, A_bar, B_bar, C, x0, segment_ids, scan_impl="reference"):
  """x_t = A_bar x_{t-1} + B_bar u_t, y_t = 2 Re(C . x_t), restarting from zero at segment
  starts, by `linear_scan(impl=scan_impl)`.

  u: [B, T, H] real; A_bar, B_bar, C: complex [H, N/2]; x0: complex [B, H, N/2];
  segment_ids: [B, T] int or None. Returns y: [B, T, H] real and x_T: [B, H, N/2].
  """
  batch, length, _ = u.shape
  x, x_T = linear_scan(jnp.broadcast_to(A_bar, (batch, length) + A_bar.shape),
                       jnp.einsum("hn,bth->bthn", B_bar, u), x0, impl=scan_impl,
                       segment_ids=segment_ids)
  return 2 * jnp.einsum("hn,bthn->bth", C, x).real, x_T
