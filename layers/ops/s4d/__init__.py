"""S4D convolution kernel and FFT causal convolution ("On the Parameterization and
Initialization of Diagonal State Space Models", Gu et al. 2022).

The recurrent form of the same layer is `linear_scan` over the discretised modes
(`s4d_discretize`); the tests check both give one output.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from layers.ops import _common

DISCRETIZATIONS = ("zoh", "bilinear")


def _check_modes(op, log_dt, A_re, A_im):
  _common.check_rank(op, "log_dt", log_dt, 1, "[H]")
  H = jnp.shape(log_dt)[0]
  _common.check_rank(op, "A_re", A_re, 2, "[H, N/2]")
  _common.check_shape(op, "A_re", A_re, (H, jnp.shape(A_re)[1]), "[H, N/2]")
  _common.check_shape(op, "A_im", A_im, jnp.shape(A_re), "[H, N/2] like A_re")
  return H, jnp.shape(A_re)[1]


def s4d_discretize(log_dt: jax.Array, A_re: jax.Array, A_im: jax.Array,
                   discretization: str = "zoh") -> tuple[jax.Array, jax.Array]:
  """Discrete diagonal SSM (A_bar, B_bar), both complex [H, N/2], with B = 1 folded into C.

  ZOH: A_bar = exp(dt A), B_bar = (exp(dt A) - 1) / A.
  bilinear: A_bar = (1 + dt A / 2) / (1 - dt A / 2), B_bar = dt / (1 - dt A / 2).
  x_t = A_bar x_{t-1} + B_bar u_t and y_t = 2 Re(sum_n C_n x_t,n) is the recurrent S4D.
  """
  op = "s4d_discretize"
  _check_modes(op, log_dt, A_re, A_im)
  if discretization not in DISCRETIZATIONS:
    raise ValueError(f"{op}: unknown discretization={discretization!r}; "
                     f"expected one of {DISCRETIZATIONS}")
  A = jax.lax.complex(A_re, A_im)
  dt = jnp.exp(log_dt)[:, None]
  dtA = dt * A
  if discretization == "zoh":
    A_bar = jnp.exp(dtA)
    return A_bar, (A_bar - 1) / A
  denom = 1 - dtA / 2
  return (1 + dtA / 2) / denom, dt / denom


def s4d_kernel(log_dt: jax.Array, A_re: jax.Array, A_im: jax.Array, C: jax.Array, L: int,
               discretization: str = "zoh") -> jax.Array:
  """The S4D convolution kernel K: [H, L], K_l = 2 Re sum_n C_n B_bar_n A_bar_n^l.

  Args:
    log_dt: [H] log step sizes.
    A_re, A_im: [H, N/2], A = A_re + i A_im with A_re < 0.
    C: [H, N/2] complex (B folded in).
    L: kernel length (static int).
    discretization: "zoh" (K_l = 2 Re sum C (exp(dt A) - 1)/A exp(dt A l)) or "bilinear".
  """
  op = "s4d_kernel"
  H, half_n = _check_modes(op, log_dt, A_re, A_im)
  _common.check_shape(op, "C", C, (H, half_n), "[H, N/2]")
  A_bar, B_bar = s4d_discretize(log_dt, A_re, A_im, discretization)
  # A_bar^l as exp(l log A_bar): the Vandermonde matrix [H, N/2, L] in one exp.
  powers = jnp.exp(jnp.einsum("hn,l->hnl", jnp.log(A_bar), jnp.arange(L, dtype=A_re.dtype)))
  return 2 * jnp.einsum("hn,hnl->hl", C * B_bar, powers).real


def causal_conv(u: jax.Array, kernel: jax.Array, *,
                segment_ids: jax.Array | None = None) -> jax.Array:
  """Causal long convolution y_t = sum_{s<=t} K_{t-s} u_s by FFT zero-padded to 2T.

  Args:
    u: [B, T, H] real.
    kernel: [H, L] real; taps beyond T are unused, missing taps are zero.
    segment_ids: not supported: a convolution cannot restart per segment. Packed inputs need
      the recurrent form (`linear_scan` over `s4d_discretize`'s modes), which the S4D layer
      switches to by itself.
  Returns:
    y: [B, T, H] in the dtype of u.
  """
  op = "causal_conv"
  if segment_ids is not None:
    raise ValueError(f"{op}: segment_ids are not supported by the FFT convolution (it cannot "
                     "restart per segment); use the recurrent form, linear_scan over "
                     "s4d_discretize's modes, for packed sequences")
  _common.check_rank(op, "u", u, 3, "[B, T, H]")
  _, T, H = jnp.shape(u)
  _common.check_rank(op, "kernel", kernel, 2, "[H, L]")
  _common.check_shape(op, "kernel", kernel, (H, jnp.shape(kernel)[1]), "[H, L]")
  dtype = _common.accumulation_dtype(u, kernel)
  n = 2 * T
  u_f = jnp.fft.rfft(u.astype(dtype), n=n, axis=1)
  k_f = jnp.fft.rfft(kernel[:, :T].astype(dtype), n=n, axis=-1)
  y = jnp.fft.irfft(u_f * k_f.T[None], n=n, axis=1)[:, :T]
  return y.astype(u.dtype)


__all__ = ["s4d_discretize", "s4d_kernel", "causal_conv"]
