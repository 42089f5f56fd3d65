"""S4D layer: its FFT and reference impls agree (parameter gradients included; the op's forms
are tested in tests/ops/test_s4d_ops.py), initialisation follows the paper, the bidirectional
form, and configuration errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layers import S4D
from tests import harness
from tests.layers import mixer_checks as checks

B, T, H, N = 2, 12, 8, 8
F64 = dict(dtype=jnp.float64, param_dtype=jnp.float64)


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_fft_form_equals_reference_form(discretization):
  """Outputs, final state and the gradients of input, initial state and parameters agree."""
  fft = S4D(H, N, discretization=discretization, impl="fft", **F64)
  scan = fft.clone(impl="reference")
  x = harness.rand(0, (B, T, H))
  variables = harness.init_variables(fft, jax.random.key(0), x)
  x0 = harness.rand(1, (B, H, N // 2), jnp.complex128)

  def fn(module):
    return lambda xs, h0, segment_ids: module.apply(variables, xs[0], h0)

  harness.assert_form_matches_reference(fn(fft), fn(scan), (x,), x0,
                                        what=f"FFT vs scan ({discretization})")
  param_grads = [jax.jit(jax.grad(lambda v: jnp.sum(m.apply(v, x, x0)[0] ** 2)))(variables)
                 for m in (fft, scan)]
  harness.assert_close(*param_grads, harness.GRAD_TOL, "parameter gradients")


@pytest.mark.parametrize("A_init", ["lin", "inv", "real"])
def test_A_init_is_the_paper(A_init):
  module = S4D(H, N, A_init=A_init)
  params = harness.init_variables(module, jax.random.key(0), jnp.zeros((1, 1, H)))["params"]
  A_re = -np.exp(np.asarray(params["log_A_real"]))
  A_im = np.asarray(params["A_imag"])
  n = np.arange(N // 2)
  want_re, want_im = {
      "lin": (-0.5 + 0 * n, np.pi * n),
      "inv": (-0.5 + 0 * n, N / np.pi * (N / (2 * n + 1) - 1)),
      "real": (-(n + 1.0), 0 * n),
  }[A_init]
  np.testing.assert_allclose(A_re, np.broadcast_to(want_re, (H, N // 2)), rtol=1e-6)
  np.testing.assert_allclose(A_im, np.broadcast_to(want_im, (H, N // 2)), rtol=1e-6)


def test_init_statistics_and_shapes():
  wide = 512
  module = S4D(wide, N, dt_min=1e-3, dt_max=1e-1)
  params = harness.init_variables(module, jax.random.key(0), jnp.zeros((1, 1, wide)))["params"]
  shapes = jax.tree.map(jnp.shape, params)
  assert shapes == {
      "log_dt": (wide,), "log_A_real": (wide, N // 2), "A_imag": (wide, N // 2),
      "C_re": (wide, N // 2), "C_im": (wide, N // 2), "D": (wide,),
      "out_proj": {"kernel": (wide, 2 * wide), "bias": (2 * wide,)},
  }, shapes
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
  dt = np.exp(np.asarray(params["log_dt"]))
  assert dt.min() >= 1e-3 and dt.max() <= 1e-1
  # log-uniform: log dt is uniform on [log 1e-3, log 1e-1] (mean log 1e-2, sd 2 ln 10 / sqrt 12)
  assert abs(np.log(dt).mean() - np.log(1e-2)) < 0.15
  assert abs(np.log(dt).std() - 2 * np.log(10) / np.sqrt(12)) < 0.15
  C = np.asarray(params["C_re"]) + 1j * np.asarray(params["C_im"])
  assert abs(np.mean(np.abs(C) ** 2) - 1) < 0.1  # CN(0, 1)
  assert abs(np.mean(C.real ** 2) - 0.5) < 0.05


def test_bidirectional_is_not_causal_and_respects_segments():
  module = S4D(H, N, causal=False, **F64)
  x = harness.rand(0, (B, T, H))
  variables = harness.init_variables(module, jax.random.key(0), x)
  assert set(variables["params"]) >= {"C_bwd_re", "C_bwd_im"}
  jac = np.asarray(checks.causal_jacobian(module, variables, x[:1, :6]))
  assert jac[0, 5] > 1e-6 and jac[5, 0] > 1e-6, "bidirectional: sees both directions"
  segment_ids = harness.packed_segment_ids(B, T, seed=2)
  run = checks.whole(module, variables)
  y, state = run(x, None, segment_ids)
  assert state is None
  for b in range(B):
    for start, end in harness.segment_bounds(segment_ids[b]):
      harness.assert_close(y[b:b + 1, start:end], run(x[b:b + 1, start:end])[0],
                           checks.TOL, f"bidirectional row {b} [{start}:{end}]")
  with pytest.raises(ValueError, match="bidirectional form .* has no step"):
    module.apply(variables, x[:, 0], jnp.zeros((B, H, N // 2)), method="step")
  with pytest.raises(ValueError, match="bidirectional form .* takes no state"):
    module.apply(variables, x, jnp.zeros((B, H, N // 2)))


def test_float32_close_to_float64():
  module = S4D(H, N)
  x = harness.rand(0, (B, 64, H))
  variables = harness.init_variables(module, jax.random.key(0), x.astype(jnp.float32))
  y32, state32 = jax.jit(module.apply)(variables, x.astype(jnp.float32))
  assert y32.dtype == jnp.float32 and state32.dtype == jnp.complex64
  wide = jax.tree.map(lambda p: p.astype(jnp.float64), variables)
  y64, state64 = jax.jit(module.clone(**F64).apply)(wide, x)
  harness.assert_close(y32, y64, 1e-5, "float32 outputs")
  harness.assert_close(state32, state64, 1e-5, "float32 state")


@pytest.mark.parametrize("kwargs, message", [
    (dict(d_state=7), r"S4D: d_state must be a positive even number"),
    (dict(A_init="diag"), r"S4D: unknown A_init='diag'; expected one of \('lin', 'inv', 'real'\)"),
    (dict(impl="chunk"), r"s4d_conv: unknown impl='chunk'; expected one of 'reference', 'fft'"),
    (dict(discretization="euler"), r"unknown discretization='euler'"),
])
def test_bad_config_raises(kwargs, message):
  with pytest.raises(ValueError, match=message):
    S4D(H, **{"d_state": N, **kwargs}).init(jax.random.key(0), jnp.zeros((1, 4, H)))


def test_bad_state_raises():
  module = S4D(H, N)
  variables = harness.init_variables(module, jax.random.key(0), jnp.zeros((1, 4, H)))
  with pytest.raises(ValueError, match=r"S4D: state must have shape \[B, H, N/2\]"):
    module.apply(variables, jnp.zeros((1, 4, H)), jnp.zeros((1, H, N), jnp.complex64))
