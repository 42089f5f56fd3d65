"""The S4D convolution ("On the Parameterization and Initialization of Diagonal State Space
Models", Gu et al. 2022): `s4d_conv`, the stateful diagonal SSM over a sequence (initial state,
final state, packed segments), and its parts `s4d_discretize`, `s4d_kernel`, `causal_conv`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from layers.ops import common
from layers.ops.s4d import reference, xla

DISCRETIZATIONS = ("zoh", "bilinear")
common.register("s4d_conv", {"reference": reference.s4d_conv, "fft": xla.s4d_conv})


def _check_modes(op, log_dt, A_re, A_im, discretization):
  common.check_rank(op, "log_dt", log_dt, 1, "[H]")
  H = jnp.shape(log_dt)[0]
  common.check_rank(op, "A_re", A_re, 2, "[H, N/2]")
  common.check_shape(op, "A_re", A_re, (H, jnp.shape(A_re)[1]), "[H, N/2]")
  common.check_shape(op, "A_im", A_im, jnp.shape(A_re), "[H, N/2] like A_re")
  if discretization not in DISCRETIZATIONS:
    raise ValueError(f"{op}: unknown discretization={discretization!r}; "
                     f"expected one of {DISCRETIZATIONS}")
  return H, jnp.shape(A_re)[1]


def s4d_discretize(log_dt: jax.Array, A_re: jax.Array, A_im: jax.Array,
                   discretization: str = "zoh") -> tuple[jax.Array, jax.Array]:
  """Discrete diagonal SSM (A_bar, B_bar), both complex [H, N/2], with B = 1 folded into C.

  ZOH: A_bar = exp(dt A), B_bar = (exp(dt A) - 1) / A.
  bilinear: A_bar = (1 + dt A / 2) / (1 - dt A / 2), B_bar = dt / (1 - dt A / 2).
  x_t = A_bar x_{t-1} + B_bar u_t and y_t = 2 Re(sum_n C_n x_t,n) is the recurrent S4D.
  """
  log_dt, A_re, A_im = common.as_float(log_dt, A_re, A_im)
  _check_modes("s4d_discretize", log_dt, A_re, A_im, discretization)
  return reference.discretize(log_dt, A_re, A_im, discretization)


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
  log_dt, A_re, A_im, C = common.as_float(log_dt, A_re, A_im, C)
  H, half_n = _check_modes(op, log_dt, A_re, A_im, discretization)
  common.check_shape(op, "C", C, (H, half_n), "[H, N/2]")
  A_bar, B_bar = reference.discretize(log_dt, A_re, A_im, discretization)
  return xla.kernel(C * B_bar, xla.powers(A_bar, L))


def causal_conv(u: jax.Array, kernel: jax.Array, *,
                segment_ids: jax.Array | None = None) -> jax.Array:
  """Causal long convolution y_t = sum_{s<=t} K_{t-s} u_s by FFT zero-padded to 2T.

  Args:
    u: [B, T, H] real.
    kernel: [H, L] real; taps beyond T are unused, missing taps are zero.
    segment_ids: not supported: a plain convolution cannot restart per segment; `s4d_conv`
      runs the S4D convolution over packed rows.
  Returns:
    y: [B, T, H] in the dtype of u.
  """
  op = "causal_conv"
  if segment_ids is not None:
    raise ValueError(f"{op}: segment_ids are not supported by a plain FFT convolution (it "
                     "cannot restart per segment); use s4d_conv, which convolves each segment "
                     "of packed rows (or runs the recurrence)")
  u, kernel = common.as_float(u, kernel)
  common.check_rank(op, "u", u, 3, "[B, T, H]")
  H = jnp.shape(u)[2]
  common.check_rank(op, "kernel", kernel, 2, "[H, L]")
  common.check_shape(op, "kernel", kernel, (H, jnp.shape(kernel)[1]), "[H, L]")
  dtype = common.accumulation_dtype(u, kernel)
  if u.shape[1] == 0:
    return u
  return xla.fft_conv(u.astype(dtype), kernel.astype(dtype)).astype(u.dtype)


def s4d_conv(u: jax.Array, log_dt: jax.Array, A_re: jax.Array, A_im: jax.Array, C: jax.Array,
             *, discretization: str = "zoh", initial_state: jax.Array | None = None,
             segment_ids: jax.Array | None = None,
             impl: str = "auto") -> tuple[jax.Array, jax.Array]:
  """The S4D convolution with its state, per channel h and mode n:

    x_t = A_bar x_{t-1} + B_bar u_t,   y_t = 2 Re(sum_n C_n x_t,n),

  (A_bar, B_bar) = s4d_discretize(log_dt, A_re, A_im, discretization), discretised once.

  Args:
    u: [B, T, H] real (array-likes; integers become floats).
    log_dt: [H]; A_re, A_im: [H, N/2] (A_re < 0); C: [H, N/2] complex (B folded in).
    initial_state: x_{-1}, complex [B, H, N/2] (zeros when None); it feeds the first segment
      of each row, later segments start from zero.
    segment_ids: [B, T] int; the state restarts from zero wherever the id changes.
    impl: "reference" (the recurrence through `linear_scan`) | "fft" (y = K * u plus the
      initial state's response 2 Re(C A_bar^(t+1) x_{-1}), one convolution per segment for
      rows of up to 2 segments, e.g. text + padding; batches with a row of more segments run
      the recurrence, chosen at run time) | "auto" (common.AUTO_FORMS: fft).
  Non-finite inputs: padding (segment id 0) is zeroed first; the FFT form mixes every
  position, so a batch with a non-finite u runs the recurrence instead (a NaN at step s then
  reaches only outputs from s on).

  Returns:
    y: [B, T, H] in u's dtype, and the final state x_T: complex [B, H, N/2] (complex64 or
    wider); at T = 0, an empty y and the initial state.
  """
  op = "s4d_conv"
  u, log_dt, A_re, A_im, C, initial_state = common.as_float(u, log_dt, A_re, A_im, C,
                                                            initial_state)
  common.check_rank(op, "u", u, 3, "[B, T, H]")
  batch, length, H = jnp.shape(u)
  common.check_shape(op, "log_dt", log_dt, (H,), "[H]")
  _, half_n = _check_modes(op, log_dt, A_re, A_im, discretization)
  common.check_shape(op, "C", C, (H, half_n), "[H, N/2]")
  if initial_state is not None:
    common.check_shape(op, "initial_state", initial_state, (batch, H, half_n), "[B, H, N/2]")
  segment_ids = common.as_segment_ids(op, segment_ids, batch, length)
  form = common.dispatch(op, impl)
  dtype = common.accumulation_dtype(u, log_dt, A_re, A_im)
  state_dtype = common.accumulation_dtype(dtype, C, initial_state, jnp.complex64)
  x0 = (jnp.zeros((batch, H, half_n), state_dtype) if initial_state is None
        else initial_state.astype(state_dtype))
  if length == 0:
    return u, x0
  A_bar, B_bar = reference.discretize(log_dt.astype(dtype), A_re.astype(dtype),
                                      A_im.astype(dtype), discretization)
  u = common.zero_padding(segment_ids, u)[0]
  y, x_T = form(u.astype(dtype), A_bar, B_bar, C.astype(state_dtype), x0, segment_ids)
  return y.astype(u.dtype), x_T.astype(state_dtype)


__all__ = ["causal_conv", "s4d_conv", "s4d_discretize", "s4d_kernel"]
