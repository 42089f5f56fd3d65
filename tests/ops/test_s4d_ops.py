"""S4D kernel and FFT convolution: the kernel is the paper's formula, and the convolution of
the layer equals its recurrence through linear_scan."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layers.ops import causal_conv, linear_scan, s4d_discretize, s4d_kernel
from tests import harness

H, HALF_N = 3, 4


def _modes(seed=0):
  log_dt = jnp.log(harness.rand(seed, (H,), low=1e-3, high=1e-1))
  A_re = -harness.rand(seed + 1, (H, HALF_N), low=0.3, high=0.7)
  A_im = jnp.pi * jnp.broadcast_to(jnp.arange(HALF_N, dtype=jnp.float64), (H, HALF_N))
  C = harness.rand(seed + 2, (H, HALF_N), jnp.complex128)
  return log_dt, A_re, A_im, C


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_kernel_is_the_formula(discretization):
  log_dt, A_re, A_im, C = _modes()
  L = 20
  K = s4d_kernel(log_dt, A_re, A_im, C, L, discretization)
  dt = np.exp(np.asarray(log_dt))[:, None, None]
  A = (np.asarray(A_re) + 1j * np.asarray(A_im))[..., None]
  C_, l = np.asarray(C)[..., None], np.arange(L)
  if discretization == "zoh":
    terms = C_ * (np.exp(dt * A) - 1) / A * np.exp(dt * A * l)
  else:
    terms = C_ * dt / (1 - dt * A / 2) * ((1 + dt * A / 2) / (1 - dt * A / 2)) ** l
  np.testing.assert_allclose(K, 2 * terms.sum(1).real, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("T, L", [(1, 1), (17, 17), (17, 5), (17, 40)])
def test_causal_conv_is_the_convolution(T, L):
  u = harness.rand(0, (2, T, H))
  K = harness.rand(1, (H, L))
  y = causal_conv(u, K)
  K_full = np.zeros((H, T))
  K_full[:, :min(L, T)] = np.asarray(K)[:, :T]
  want = np.zeros((2, T, H))
  for t in range(T):
    for s in range(t + 1):
      want[:, t] += K_full[:, t - s] * np.asarray(u)[:, s]
  np.testing.assert_allclose(y, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_fft_convolution_equals_recurrence(discretization):
  """y = K * u (FFT) equals x_t = A_bar x_{t-1} + B_bar u_t, y_t = 2 Re(C . x_t)."""
  log_dt, A_re, A_im, C = _modes(seed=4)
  B, T = 2, 65
  u = harness.rand(7, (B, T, H))

  @jax.jit
  def both(u):
    y_fft = causal_conv(u, s4d_kernel(log_dt, A_re, A_im, C, T, discretization))
    A_bar, B_bar = s4d_discretize(log_dt, A_re, A_im, discretization)
    x, _ = linear_scan(jnp.broadcast_to(A_bar, (B, T, H, HALF_N)),
                       jnp.einsum("hn,bth->bthn", B_bar, u.astype(A_bar.dtype)))
    return y_fft, 2 * jnp.einsum("hn,bthn->bth", C, x).real

  y_fft, y_rec = both(u)
  harness.assert_close(y_fft, y_rec, 1e-10, f"FFT vs recurrence ({discretization})")


def test_conv_rejects_segment_ids_with_pointer():
  with pytest.raises(ValueError, match="segment_ids .* use the recurrent form, linear_scan"):
    causal_conv(jnp.ones((1, 4, H)), jnp.ones((H, 4)), segment_ids=jnp.ones((1, 4), jnp.int32))


@pytest.mark.parametrize("call, message", [
    (lambda: causal_conv(jnp.ones((4, H)), jnp.ones((H, 4))), r"u must have shape \[B, T, H\]"),
    (lambda: causal_conv(jnp.ones((1, 4, H)), jnp.ones((H + 1, 4))),
     r"kernel must have shape \[H, L\]"),
    (lambda: s4d_kernel(jnp.zeros(H), -jnp.ones((H, 2)), jnp.ones((H, 3)),
                        jnp.ones((H, 2), jnp.complex64), 8), r"A_im must have shape"),
    (lambda: s4d_kernel(jnp.zeros(H), -jnp.ones((H, 2)), jnp.ones((H, 2)),
                        jnp.ones((H, 3), jnp.complex64), 8), r"C must have shape \[H, N/2\]"),
    (lambda: s4d_kernel(jnp.zeros(H), -jnp.ones((H, 2)), jnp.ones((H, 2)),
                        jnp.ones((H, 2), jnp.complex64), 8, "euler"),
     r"unknown discretization='euler'"),
])
def test_bad_inputs_raise(call, message):
  with pytest.raises(ValueError, match=message):
    call()
