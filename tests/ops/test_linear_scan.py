"""linear_scan and log_linear_scan: every form against the lax.scan oracle, and the oracle
against the recurrence written out in numpy."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layers.ops import linear_scan, log_linear_scan
from layers.ops import common
from tests import harness

B, D = 2, 3
LENGTHS = (1, 63, 64, 65, 200)


def _linear(impl, reverse=False):
  def fn(xs, h0, segment_ids):
    return linear_scan(*xs, h0, impl=impl, reverse=reverse, segment_ids=segment_ids)
  return fn


def _log(impl):
  def fn(xs, h0, segment_ids):
    return log_linear_scan(*xs, h0, impl=impl, segment_ids=segment_ids)
  return fn


def _linear_inputs(T, dtype=jnp.float64, seed=0):
  a = harness.rand(seed, (B, T, D), jnp.float64, 0.5, 1.0).astype(dtype)
  b = harness.rand(seed + 1, (B, T, D), dtype)
  h0 = harness.rand(seed + 2, (B, D), dtype)
  return (a, b), h0


def _log_inputs(T, seed=0):
  log_a = jnp.log(harness.rand(seed, (B, T, D), low=0.05, high=0.999))
  log_b = harness.rand(seed + 1, (B, T, D))
  h0 = harness.rand(seed + 2, (B, D), low=0.1, high=2.0)
  return (log_a, log_b), h0


def test_linear_reference_is_the_recurrence():
  (a, b), h0 = _linear_inputs(7, jnp.complex128)
  segment_ids = jnp.array([[1, 1, 2, 2, 2, 3, 3], [1, 1, 1, 1, 1, 1, 1]])
  for reverse in (False, True):
    h, final = linear_scan(a, b, h0, impl="reference", reverse=reverse,
                           segment_ids=segment_ids)
    a_, b_, ids = np.asarray(a), np.asarray(b), np.asarray(segment_ids)
    want = np.zeros_like(b_)
    for row in range(B):
      order = range(6, -1, -1) if reverse else range(7)
      state, prev_id = np.asarray(h0)[row], ids[row, 6 if reverse else 0]
      for t in order:
        if ids[row, t] != prev_id:
          state = np.zeros_like(state)
        state = a_[row, t] * state + b_[row, t]
        want[row, t], prev_id = state, ids[row, t]
    np.testing.assert_allclose(h, want, rtol=1e-12)
    np.testing.assert_allclose(final, want[:, 0 if reverse else -1], rtol=1e-12)


def test_log_reference_is_the_recurrence():
  (log_a, log_b), h0 = _log_inputs(9)
  segment_ids = jnp.array([[1, 1, 1, 2, 2, 2, 2, 5, 5], [3, 3, 1, 1, 1, 1, 1, 1, 1]])
  h, final = log_linear_scan(log_a, log_b, h0, impl="reference", segment_ids=segment_ids)
  want, _ = linear_scan(jnp.exp(log_a), jnp.exp(log_b), h0, impl="reference",
                        segment_ids=segment_ids)
  harness.assert_close(h, want, 1e-12, "log scan == linear scan of exponentials")
  harness.assert_close(final, want[:, -1], 1e-12, "final state")


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("dtype", [jnp.float64, jnp.complex128])
@pytest.mark.parametrize("reverse", [False, True])
def test_linear_associative_matches_reference(T, dtype, reverse):
  xs, h0 = _linear_inputs(T, dtype)
  segment_ids = harness.packed_segment_ids(B, T) if T > 3 else None
  harness.assert_form_matches_reference(
      _linear("associative", reverse), _linear("reference", reverse), xs, h0, segment_ids,
      what=f"associative T={T} {jnp.dtype(dtype).name} reverse={reverse}")


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("impl", ["associative", "compensated"])
def test_log_forms_match_reference(T, impl):
  xs, h0 = _log_inputs(T)
  segment_ids = harness.packed_segment_ids(B, T) if T > 3 else None
  harness.assert_form_matches_reference(_log(impl), _log("reference"), xs, h0,
                                        segment_ids, what=f"{impl} T={T}")


def test_log_without_initial_state_starts_from_zero():
  (log_a, log_b), _ = _log_inputs(65)
  want, _ = linear_scan(jnp.exp(log_a), jnp.exp(log_b), impl="reference")
  for impl in ("reference", "associative", "compensated"):
    h, _ = jax.jit(lambda x, y: log_linear_scan(x, y, impl=impl))(log_a, log_b)
    harness.assert_close(h, want, 1e-12, impl)
    grads = jax.jit(jax.grad(lambda x: log_linear_scan(x, log_b, impl=impl)[0].sum()))(log_a)
    assert bool(jnp.all(jnp.isfinite(grads))), impl


@pytest.mark.parametrize("impl", ["reference", "associative", "compensated"])
def test_packed_equals_alone(impl):
  T = 65
  segment_ids = harness.packed_segment_ids(B, T, seed=3)
  if impl in common.FORMS["linear_scan"]:
    xs, h0 = _linear_inputs(T)
    harness.assert_packed_equals_alone(_linear(impl), xs, h0, segment_ids)
  xs, h0 = _log_inputs(T)
  harness.assert_packed_equals_alone(_log(impl), xs, h0, segment_ids)


@pytest.mark.parametrize("impl", ["reference", "associative", "compensated"])
def test_carried_state_equals_one_pass(impl):
  if impl in common.FORMS["linear_scan"]:
    xs, h0 = _linear_inputs(65, jnp.complex128)
    harness.assert_carry_equals_one_pass(_linear(impl), xs, h0, split=40)
  xs, h0 = _log_inputs(65)
  harness.assert_carry_equals_one_pass(_log(impl), xs, h0, split=40)


def test_float32_close_to_float64():
  (a, b), h0 = _linear_inputs(200)
  want, _ = linear_scan(a, b, h0, impl="reference")
  h, final = jax.jit(lambda *x: linear_scan(*x, impl="associative"))(
      a.astype(jnp.float32), b.astype(jnp.float32), h0.astype(jnp.float32))
  assert h.dtype == jnp.float32 and final.dtype == jnp.float32
  harness.assert_close(h, want, 1e-5, "float32 associative")
  h_bf16, final_bf16 = jax.jit(linear_scan)(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16))
  assert h_bf16.dtype == jnp.bfloat16 and final_bf16.dtype == jnp.float32


def test_log_scan_stable_at_65536():
  """float32, T = 65536: the log-space associative scan stays finite and accurate."""
  T = 65536
  log_a = jnp.log(harness.rand(0, (1, T, 2), low=0.9, high=0.9999))
  log_b = harness.rand(1, (1, T, 2)) - 3.0
  h0 = jnp.full((1, 2), 0.5)
  want, want_final = log_linear_scan(log_a, log_b, h0, impl="reference")
  f32 = functools.partial(jnp.asarray, dtype=jnp.float32)
  h, final = jax.jit(lambda *x: log_linear_scan(*x, impl="associative"))(
      f32(log_a), f32(log_b), f32(h0))
  assert bool(jnp.all(jnp.isfinite(h)))
  harness.assert_close(h, want, 1e-4, "float32 associative at T=65536")
  harness.assert_close(final, want_final, 1e-4, "final state at T=65536")


@pytest.mark.parametrize("call, message", [
    (lambda: linear_scan(jnp.ones((2, 5, 3)), jnp.ones((2, 4, 3))), r"b must have shape"),
    (lambda: linear_scan(jnp.ones((5,)), jnp.ones((5,))), r"a must have shape \[B, T, \.\.\.\]"),
    (lambda: linear_scan(jnp.ones((2, 5, 3)), jnp.ones((2, 5, 3)), jnp.ones((2, 4))),
     r"initial_state must have shape \[B, \.\.\.\] = \(2, 3\)"),
    (lambda: linear_scan(jnp.ones((2, 5, 3)), jnp.ones((2, 5, 3)), impl="chunk"),
     r"unknown impl='chunk'; expected one of 'reference', 'associative', 'pallas', "
     r"'auto'"),
    (lambda: linear_scan(jnp.ones((2, 5, 3)), jnp.ones((2, 5, 3)),
                         segment_ids=jnp.ones((2, 4), jnp.int32)), r"segment_ids must have shape"),
    (lambda: linear_scan(jnp.ones((2, 5, 3)), jnp.ones((2, 5, 3)),
                         segment_ids=jnp.ones((2, 5))), r"segment_ids must be an integer"),
    (lambda: log_linear_scan(jnp.ones((2, 5, 3)), jnp.ones((2, 5, 2))), r"log_b must have shape"),
    (lambda: log_linear_scan(jnp.ones((2, 5), jnp.complex64), jnp.ones((2, 5), jnp.complex64)),
     r"must be real"),
])
def test_bad_inputs_raise(call, message):
  with pytest.raises(ValueError, match=message):
    call()


def test_log_default_stays_accurate_in_float32_with_retention_near_one():
  """a = 1 - 1e-4, T = 16384: the plain sequential float32 step rounds each tiny log_a added
  to log h (6e-4 relative error); the CPU default ("auto") must stay within 1e-5 of float64,
  outputs and gradients."""
  T = 16384
  log_a = jnp.full((1, T, 4), jnp.log1p(-1e-4))
  log_b = harness.rand(2, (1, T, 4)) * 0.5
  run = lambda impl, *x: jax.vjp(lambda a, b: log_linear_scan(a, b, impl=impl)[0], *x)
  want, vjp_want = run("reference", log_a, log_b)
  got, vjp = jax.jit(lambda *x: run("auto", *x))(log_a.astype(jnp.float32),
                                                 log_b.astype(jnp.float32))
  harness.assert_close(got, want, 1e-5, "float32 auto at T=16384")
  d_h = harness.rand(3, want.shape)
  for name, g, w in zip(("d log_a", "d log_b"), vjp(d_h.astype(jnp.float32)), vjp_want(d_h)):
    harness.assert_close(g, w, 1e-4, name)
