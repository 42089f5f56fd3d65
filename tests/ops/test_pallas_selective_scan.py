"""The fused Pallas selective_scan: interpret mode on CPU against the float64 lax.scan oracle
(outputs, final state and the gradients of u, delta, B, C, z, A, D, delta_bias and the initial
state; odd T over several time tiles, groups, packed segment_ids with padding), one
race-detecting run of the forward and backward kernels, and lowering for TPU; the Mosaic GPU
kernels lowered for cuda and run in Mosaic GPU's interpreter against the same oracle."""
import functools

import jax
import jax.numpy as jnp
import pytest

from layers.ops import _pallas, common, selective_scan
from layers.ops.selective_scan import pallas
from tests import harness, kernels

B, T, DM, N = 2, 37, 4, 3
BLOCK_T = 16


@pytest.fixture(autouse=True)
def small_time_tiles(monkeypatch):
  monkeypatch.setitem(common.FORMS["selective_scan"], "pallas",
                      functools.partial(pallas.selective_scan, block_t=BLOCK_T))


def _op(impl):
  """The op as the harness calls it: every input but the initial state is a differentiated
  argument (the harness slices none of them here), softplus on."""
  def fn(xs, h0, segment_ids):
    u, delta, Bm, Cm, z, A, D, delta_bias = xs
    return selective_scan(u, delta, A, Bm, Cm, D, z, delta_bias, True, h0, segment_ids,
                          impl=impl)
  return fn


def _inputs(groups, seed=0, batch=B, length=T):
  bc = (batch, length, N) if groups is None else (batch, length, groups, N)
  u, delta, z = (harness.rand(seed + i, (batch, length, DM)) for i in range(3))
  A = -harness.rand(seed + 3, (DM, N), low=0.5, high=2.0)
  params = (A, harness.rand(seed + 4, (DM,)), harness.rand(seed + 5, (DM,)))
  xs = (u, delta, harness.rand(seed + 6, bc), harness.rand(seed + 7, bc), z, *params)
  return xs, harness.rand(seed + 8, (batch, DM, N))


def _check(dtype, groups, tol, batch=B, length=T):
  xs, h0 = _inputs(groups, batch=batch, length=length)
  padding = min(5, length // 4)  # leading padding in the last row, real segments after it
  segment_ids = harness.packed_segment_ids(batch, length).at[-1, :padding].set(0)
  harness.assert_form_matches_reference(
      kernels.cast_inputs(_op("pallas"), dtype), _op("reference"), xs, h0, segment_ids,
      *tol, what=f"pallas {jnp.dtype(dtype).name} G={groups}")


CHECKS = {
    "float32 grouped": functools.partial(_check, jnp.float32, 2, (1e-5, 1e-4)),
    "float32": functools.partial(_check, jnp.float32, None, (1e-5, 1e-4)),
    "bfloat16 grouped": functools.partial(_check, jnp.bfloat16, 2, (2e-2, 2e-2)),
}
DEFAULT_TIER = ("float32 grouped",)


test_interpret_matches_reference, test_compiled_on_tpu_matches_reference = (
    kernels.check_tests(CHECKS, DEFAULT_TIER))


def test_gpu_kernel_interpreted_matches_reference(monkeypatch):
  """The Mosaic GPU kernels' own bodies (forward and backward) in Mosaic GPU's interpreter,
  which is slow: one batch row and program, two time tiles of 4 steps (the last padded),
  float32; groups and longer tiles in the slow tier."""
  monkeypatch.setattr(_pallas, "CPU_INTERPRETS", "gpu")
  monkeypatch.setattr(pallas, "GPU_BLOCK_T", 4)
  _check(jnp.float32, None, (1e-5, 1e-4), batch=1, length=7)


test_gpu_kernel_interpreted_matches_reference_wide, test_compiled_on_gpu_matches_reference = (
    kernels.gpu_check_tests(CHECKS, _pallas))


def _race_inputs():
  """Kernel inputs with two batch rows (for the two cores) and two time tiles of 8."""
  shape = (2, 2 * 8, 1, 128)
  u, dt, z = (harness.rand(i, shape, jnp.float32) for i in range(3))
  A = -harness.rand(3, (1, 128, 2), jnp.float32, 0.5, 2.0)
  Bm, Cm = (harness.rand(i, (2, 16, 1, 2), jnp.float32) for i in (4, 5))
  D, h0 = harness.rand(6, (1, 128), jnp.float32), harness.rand(7, (2, 1, 128, 2), jnp.float32)
  resets = jnp.zeros((2, 16), bool).at[0, 5].set(True)
  args = (u, jnp.abs(dt) * 0.1, z, A, Bm, Cm, D, h0, resets)
  lay = pallas._Layout(u, Bm, 8, 128)
  return args, lay, pallas._kernel_inputs(lay, *args)


@pytest.mark.slow
def test_no_races_forward():
  """Under race detection, uninitialised memory NaN, the forward kernel equals the oracle."""
  (u, dt, z, A, Bm, Cm, D, h0, resets), lay, inputs = _race_inputs()
  with kernels.race_detection() as params:
    y, final, _ = pallas._forward_call(*inputs, lay=lay, interpret=params)
  flat = lambda x: x.reshape(2, 16, 128)
  want = selective_scan(flat(u), flat(dt), A[0], Bm[:, :, 0], Cm[:, :, 0], D[0], flat(z),
                        initial_state=h0[:, 0], segment_ids=1 + jnp.cumsum(resets, axis=1),
                        impl="reference")
  harness.assert_close((flat(lay.unchannels(y)), lay.unstates(final)[:, 0]), want, 1e-5,
                       "forward kernel under race detection")


@pytest.mark.slow
def test_no_races_backward():
  """The backward kernel under race detection (about 50 s): finite (it would carry any NaN
  of uninitialised memory it read) and equal to the plain interpret run."""
  _, lay, inputs = _race_inputs()
  y, final, entries = pallas._forward_call(*inputs, lay=lay, interpret=True)
  backward = (*inputs[:7], inputs[8], entries, y, final)
  with kernels.race_detection() as params:
    raced = pallas._backward_call(*backward, lay=lay, interpret=params)
  harness.assert_close(raced, pallas._backward_call(*backward, lay=lay, interpret=True), 1e-6,
                       "backward kernel under race detection")


def _export_args(dtype, groups=1, batch=kernels.EXPORT_B, length=kernels.EXPORT_T,
                 width=kernels.EXPORT_D, state=kernels.EXPORT_N):
  """Abstract grouped form inputs (u, dt, z, A, B, C, D, h0, resets); u, dt, z, B, C in dtype."""
  s = lambda *shape, d=dtype: jax.ShapeDtypeStruct(shape, d)
  c = width // groups
  return (s(batch, length, groups, c), s(batch, length, groups, c), s(batch, length, groups, c),
          s(groups, c, state, d=jnp.float32), s(batch, length, groups, state),
          s(batch, length, groups, state), s(groups, c, d=jnp.float32),
          s(batch, groups, c, state, d=jnp.float32), s(batch, length, d=bool))


def _form(u, dt, z, A, Bm, Cm, D, h0, resets):
  return pallas.selective_scan(u, dt, A, Bm, Cm, h0, resets, D=D, z=z)


def test_lowers_for_tpu():
  """Through the op (float32; it takes every Mamba input) and the form in bfloat16."""
  s = lambda *shape, d=jnp.float32: jax.ShapeDtypeStruct(shape, d)
  b, t, d, n = kernels.EXPORT_B, kernels.EXPORT_T, kernels.EXPORT_D, kernels.EXPORT_N
  kernels.assert_lowers_for_tpu(
      lambda u, delta, A, Bm, Cm, D, z, bias, h0, ids: selective_scan(
          u, delta, A, Bm, Cm, D, z, bias, True, h0, ids, impl="pallas"),
      s(b, t, d), s(b, t, d), s(d, n), s(b, t, n), s(b, t, n), s(d), s(b, t, d), s(d),
      s(b, d, n), s(b, t, d=jnp.int32), kernels=1)
  kernels.assert_lowers_for_tpu(_form, *_export_args(jnp.bfloat16), kernels=1)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("groups, length, width, state", [
    (1, 1, 16, 16), (1, 100, 200, 4), (2, 4096, 1024, 16), (8, 16384, 1024, 16),
    (1, 2048, 2560, 64)])
def test_lowers_for_tpu_wide_grid(dtype, groups, length, width, state):
  kernels.assert_lowers_for_tpu(
      _form, *_export_args(dtype, groups, 2, length, width, state), kernels=1)


def _op_shapes(b, t, d, n, dtype):
  """Abstract inputs of the op as `_through_op` takes them: u, delta, z and B, C in dtype."""
  s = lambda *shape, d=dtype: jax.ShapeDtypeStruct(shape, d)
  f32 = jnp.float32
  return (s(b, t, d), s(b, t, d), s(d, n, d=f32), s(b, t, n), s(b, t, n), s(d, d=f32),
          s(b, t, d), s(d, d=f32), s(b, d, n, d=f32), s(b, t, d=jnp.int32))


def _through_op(u, delta, A, Bm, Cm, D, z, bias, h0, ids):
  return selective_scan(u, delta, A, Bm, Cm, D, z, bias, True, h0, ids, impl="pallas")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_lowers_for_cuda(dtype):
  """The forward and backward Mosaic GPU kernels (plgpu.kernel, no Triton) through the op."""
  kernels.assert_lowers_for_cuda(_through_op, *_op_shapes(
      kernels.EXPORT_B, kernels.EXPORT_T, kernels.EXPORT_D, kernels.EXPORT_N, dtype), kernels=2)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("groups, length, width, state", [
    (1, 1, 16, 16), (1, 100, 200, 4), (2, 4096, 1024, 16), (8, 16384, 1024, 16)])
def test_lowers_for_cuda_wide_grid(dtype, groups, length, width, state):
  kernels.assert_lowers_for_cuda(
      _form, *_export_args(dtype, groups, 2, length, width, state), kernels=2)


def test_gpu_kernel_refuses_a_large_state():
  """N > 16 would overflow SMEM in the backward: a clear error, not a failed compile."""
  args = [jnp.zeros(x.shape, x.dtype) for x in _export_args(jnp.float32, 1, 1, 8, 128, 32)]
  with pytest.raises(ValueError, match="Mosaic GPU kernel takes N <= 16"):
    kernels.export_text(_form, *args, platform="cuda")


def test_complex_initial_state_raises():
  xs, h0 = _inputs(None)
  with pytest.raises(ValueError, match="impl='pallas' takes real inputs"):
    _op("pallas")(xs, h0.astype(jnp.complex64), None)
