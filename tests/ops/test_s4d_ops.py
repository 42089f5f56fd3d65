"""S4D ops: the kernel is the paper's formula, the FFT convolution is the convolution, and the
stateful `s4d_conv`'s FFT form equals its reference (the recurrence through linear_scan):
outputs, final state and gradients (inputs, initial state, parameters), packed rows, odd T."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layers.ops import causal_conv, linear_scan, s4d_conv, s4d_discretize, s4d_kernel
from layers.ops.s4d import reference, xla
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


def _s4d(impl, modes, discretization="zoh"):
  log_dt, A_re, A_im, C = modes
  def fn(xs, x0, segment_ids):
    return s4d_conv(xs[0], log_dt, A_re, A_im, C, discretization=discretization,
                    initial_state=x0, segment_ids=segment_ids, impl=impl)
  return fn


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
@pytest.mark.parametrize("T, segments", [(1, None), (65, None), (65, "two"), (30, "three")])
def test_s4d_conv_fft_matches_reference(discretization, T, segments):
  """Two segments per row (text + padding, or two documents) stay on the FFT branch; a row of
  three sends the batch to the recurrence; both equal the reference with a nonzero initial
  state."""
  modes = _modes(seed=3)
  u = harness.rand(5, (2, T, H))
  x0 = harness.rand(6, (2, H, HALF_N), jnp.complex128)
  segment_ids = {None: lambda: None,
                 "two": lambda: jnp.asarray([[1] * 40 + [0] * 25, [3] * 10 + [5] * 55]),
                 "three": lambda: harness.packed_segment_ids(2, T, seed=1)}[segments]()
  harness.assert_form_matches_reference(
      _s4d("fft", modes, discretization), _s4d("reference", modes, discretization), (u,), x0,
      segment_ids, what=f"s4d_conv fft ({discretization}, T={T}, {segments} segments)")
  if segments:
    harness.assert_packed_equals_alone(_s4d("fft", modes), (u,), x0, segment_ids)


def test_s4d_conv_fft_branches_at_run_time():
  modes = _modes()
  u, x0 = harness.rand(0, (2, 12, H)), harness.rand(1, (2, H, HALF_N), jnp.complex128)
  jaxpr = str(jax.make_jaxpr(_s4d("fft", modes))((u,), x0, jnp.ones((2, 12), jnp.int32)))
  assert "cond" in jaxpr and "fft" in jaxpr


def test_s4d_conv_parameter_gradients_match_reference():
  modes = _modes(seed=8)
  u, x0 = harness.rand(0, (2, 33, H)), harness.rand(1, (2, H, HALF_N), jnp.complex128)
  segment_ids = jnp.asarray([[1] * 20 + [0] * 13, [1] * 33])

  def loss(impl):
    def f(log_dt, A_re, A_im, C):
      y, x_T = s4d_conv(u, log_dt, A_re, A_im, C, initial_state=x0, segment_ids=segment_ids,
                        impl=impl)
      return jnp.sum(y ** 2) + jnp.sum(jnp.abs(x_T) ** 2)
    return jax.jit(jax.grad(f, argnums=(0, 1, 2, 3)))(*modes)

  harness.assert_close(loss("fft"), loss("reference"), harness.GRAD_TOL,
                       "gradients of log_dt, A_re, A_im, C")


def test_chunked_recurrence_matches_reference():
  """The fft form's fallback, run over several chunks (7 steps, T = 30) on rows with leading
  padding, three segments and trailing padding: outputs, final state and the gradients of u,
  x0 and the discrete modes equal the reference recurrence's."""
  A_bar, B_bar = s4d_discretize(*_modes(seed=9)[:3])
  C = _modes(seed=9)[3]
  u, x0 = harness.rand(0, (3, 30, H)), harness.rand(1, (3, H, HALF_N), jnp.complex128)
  segment_ids = jnp.asarray([[0] * 5 + [1] * 25, [1] * 9 + [2] * 12 + [3] * 9,
                             [4] * 20 + [0] * 10])

  def loss(form):
    def f(u, x0, A_bar, B_bar, C):
      y, x_T = form(u, A_bar, B_bar, C, x0, segment_ids)
      return jnp.sum(jnp.sin(y)), (y, x_T)
    return jax.jit(jax.grad(f, argnums=(0, 1, 2, 3, 4), has_aux=True))(u, x0, A_bar, B_bar, C)

  grads, (y, x_T) = loss(lambda *a: xla.chunked_recurrence(*a, chunk_size=7))
  grads_ref, (y_ref, x_T_ref) = loss(reference.s4d_conv)
  harness.assert_close(y, y_ref, harness.OUT_TOL, "outputs")
  harness.assert_close(x_T, x_T_ref, harness.OUT_TOL, "final state")
  harness.assert_close(grads, grads_ref, harness.GRAD_TOL, "gradients of u, x0, A_bar, B_bar, C")


def test_s4d_conv_fft_gradient_keeps_no_per_step_states():
  """Under jit both branches of the fft form's `lax.cond` are compiled, so the recurrence
  fallback must not keep per-step states: the gradient's temporaries stay below 2.5 sequences
  of states [B, T, H, N/2] complex64 (about 1.4 with the chunked recurrence; the
  `linear_scan` fallback's inputs, states and residuals took 9.3, 7x the ListOps step)."""
  B, T, width, half_n = 4, 512, 16, 32
  seg = jnp.ones((B, T), jnp.int32)
  A_re, A_im = -jnp.ones((width, half_n), jnp.float32), jnp.ones((width, half_n), jnp.float32)

  def loss(u, log_dt, C):
    return jnp.sum(s4d_conv(u, log_dt, A_re, A_im, C, segment_ids=seg, impl="fft")[0] ** 2)

  compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(
      jax.ShapeDtypeStruct((B, T, width), jnp.float32), jnp.zeros(width, jnp.float32),
      jnp.ones((width, half_n), jnp.complex64)).compile()
  states = B * T * width * half_n * 8
  assert compiled.memory_analysis().temp_size_in_bytes < 2.5 * states


def test_s4d_conv_carry_equals_one_pass():
  modes = _modes(seed=2)
  u, x0 = harness.rand(0, (2, 40, H)), harness.rand(1, (2, H, HALF_N), jnp.complex128)
  harness.assert_carry_equals_one_pass(_s4d("fft", modes), (u,), x0, split=17)


def test_conv_rejects_segment_ids_with_pointer():
  with pytest.raises(ValueError, match="segment_ids .* use s4d_conv"):
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
    (lambda: s4d_conv(jnp.ones((1, 4, H + 1)), *_modes()), r"s4d_conv: log_dt must have shape"),
    (lambda: s4d_conv(jnp.ones((1, 4, H)), *_modes(),
                      initial_state=jnp.ones((1, H, HALF_N + 1), jnp.complex64)),
     r"s4d_conv: initial_state must have shape \[B, H, N/2\]"),
    (lambda: s4d_conv(jnp.ones((1, 4, H)), *_modes(), segment_ids=jnp.ones((1, 4))),
     r"s4d_conv: segment_ids must be an integer array"),
    (lambda: s4d_conv(jnp.ones((1, 4, H)), *_modes(), impl="chunk"),
     r"s4d_conv: unknown impl='chunk'; expected one of 'reference', 'fft', 'auto'"),
])
def test_bad_inputs_raise(call, message):
  with pytest.raises(ValueError, match=message):
    call()
