"""The Pallas kernels of linear_scan and log_linear_scan: interpret mode on CPU against the
float64 lax.scan oracle (outputs, final state, every gradient, odd T, several time tiles,
nonzero initial states, packed segment_ids), one race-detecting run each, and lowering for TPU
and (the Mosaic GPU kernels) cuda at a realistic shape (the gate: interpret mode accepts blocks
the backend rejects). The GPU kernels run in Mosaic GPU's interpreter too (`interpret_gpu`)."""
import functools

import jax
import jax.numpy as jnp
import pytest

from layers.ops import _pallas, common, linear_scan, log_linear_scan
from layers.ops.linear_scan import pallas
from tests import harness, kernels
from tests.ops.test_linear_scan import _linear, _log

B, T, D = 2, 37, 3  # T: odd, three time tiles of 16 with padding
BLOCK_T = 16
BF16_TOL = 2e-2
# (what, dtype of the kernel inputs, output/gradient tolerances vs float64)
CASES = {"float32": (jnp.float32, 1e-5, 1e-4), "bfloat16": (jnp.bfloat16, BF16_TOL, BF16_TOL)}


@pytest.fixture(autouse=True)
def small_time_tiles(monkeypatch):
  """The kernels with BLOCK_T-step time tiles, so a tiny T crosses tiles."""
  for op, form in (("linear_scan", pallas.linear_scan),
                   ("log_linear_scan", pallas.log_linear_scan)):
    monkeypatch.setitem(common.FORMS[op], "pallas", functools.partial(form, block_t=BLOCK_T))


def _linear_inputs(dtype=jnp.float64, seed=0, shape=(B, T, D)):
  a = harness.rand(seed, shape, jnp.float64, 0.5, 1.0).astype(dtype)
  b = harness.rand(seed + 1, shape, dtype)
  return (a, b), harness.rand(seed + 2, shape[:1] + shape[2:], dtype)


def _log_inputs(seed=0, shape=(B, T, D)):
  log_a = jnp.log(harness.rand(seed, shape, low=0.05, high=0.999))
  log_b = harness.rand(seed + 1, shape)
  return (log_a, log_b), harness.rand(seed + 2, shape[:1] + shape[2:], low=0.1, high=2.0)


def _check_linear(case, reverse=False, shape=(B, T, D)):
  dtype, out_tol, grad_tol = CASES[case]
  xs, h0 = _linear_inputs(shape=shape)
  harness.assert_form_matches_reference(
      kernels.cast_inputs(_linear("pallas", reverse), dtype), _linear("reference", reverse),
      xs, h0, harness.packed_segment_ids(*shape[:2]), out_tol, grad_tol,
      what=f"linear_scan pallas {case} reverse={reverse}")


def _check_complex():
  xs, h0 = _linear_inputs(jnp.complex128, seed=3)
  harness.assert_form_matches_reference(
      kernels.cast_inputs(_linear("pallas"), jnp.complex64), _linear("reference"), xs, h0,
      harness.packed_segment_ids(B, T, seed=1), what="linear_scan pallas complex64")


def _check_log(case, shape=(B, T, D)):
  dtype, out_tol, grad_tol = CASES[case]
  xs, h0 = _log_inputs(shape=shape)
  harness.assert_form_matches_reference(
      kernels.cast_inputs(_log("pallas"), dtype), _log("reference"), xs, h0,
      harness.packed_segment_ids(*shape[:2], seed=2), out_tol, grad_tol,
      what=f"log_linear_scan pallas {case}")


CHECKS = {
    "linear float32": functools.partial(_check_linear, "float32"),
    "linear float32 reverse": functools.partial(_check_linear, "float32", reverse=True),
    "linear bfloat16": functools.partial(_check_linear, "bfloat16"),
    "linear complex64": _check_complex,
    "log float32": functools.partial(_check_log, "float32"),
    "log bfloat16": functools.partial(_check_log, "bfloat16"),
}


# in -m slow: the reverse scan (the backward runs the reverse kernel) and bfloat16 log scan
DEFAULT_TIER = tuple(c for c in CHECKS if c not in ("linear float32 reverse", "log bfloat16"))


test_interpret_matches_reference, test_compiled_on_tpu_matches_reference = (
    kernels.check_tests(CHECKS, DEFAULT_TIER))


@pytest.mark.slow
def test_log_kernel_without_initial_state():
  (log_a, log_b), _ = _log_inputs(seed=4)
  f32 = lambda x: x.astype(jnp.float32)
  want, _ = log_linear_scan(log_a, log_b, impl="reference")
  h, _ = jax.jit(lambda x, y: log_linear_scan(x, y, impl="pallas"))(f32(log_a), f32(log_b))
  harness.assert_close(h, want, 1e-5, "pallas from h_{-1} = 0")


@pytest.mark.parametrize("kind", ["linear", "log"])
def test_no_races(kind):
  """Two simulated cores share the parallel (batch, channel) axes; the time axis carries."""
  shape = (2, 16, _pallas.LANES)  # two time tiles of 8
  (x, y), h0 = _linear_inputs(jnp.float32, shape=shape) if kind == "linear" else (
      _log_inputs(shape=shape))
  with kernels.race_detection() as params:
    if kind == "linear":
      got = pallas._linear_call(x, y, h0, reverse=False, block_t=8,
                                block_d=_pallas.LANES, interpret=params)
      want = linear_scan(x, y, h0, impl="reference")
    else:
      x, y = x.astype(jnp.float32), y.astype(jnp.float32)
      flags = jnp.zeros(shape[:2] + (1,), jnp.float32)
      got = pallas._log_call(x, y, flags, jnp.log(h0).astype(jnp.float32), block_t=8,
                             block_d=_pallas.LANES, interpret=params)
      want = jax.tree.map(jnp.log, log_linear_scan(x, y, h0, impl="reference"))
  harness.assert_close(got, want, 1e-5, f"{kind} kernel under race detection")


@pytest.mark.slow
def test_race_detection_catches_a_carry_across_a_parallel_axis(monkeypatch):
  """The planted bug the race runs exist for: the time axis marked "parallel" (one batch row,
  so the two simulated cores split time) is reported as a race."""
  monkeypatch.setattr(_pallas, "tpu_params", lambda *axes: _pallas.pltpu.CompilerParams(
      dimension_semantics=("parallel",) * len(axes)))
  (a, b), h0 = _linear_inputs(jnp.float32, shape=(1, 16, _pallas.LANES))
  with pytest.raises(AssertionError, match="race detected"):
    with kernels.race_detection() as params:
      pallas._linear_call(a, b, h0, reverse=False, block_t=8, block_d=_pallas.LANES,
                          interpret=params)


def _export_shapes(dtype, state_dtype=jnp.float32):
  x = jax.ShapeDtypeStruct((kernels.EXPORT_B, kernels.EXPORT_T, kernels.EXPORT_D), dtype)
  h0 = jax.ShapeDtypeStruct((kernels.EXPORT_B, kernels.EXPORT_D), state_dtype)
  ids = jax.ShapeDtypeStruct((kernels.EXPORT_B, kernels.EXPORT_T), jnp.int32)
  return x, x, h0, ids


@pytest.mark.parametrize("op, dtype", [
    ("linear_scan", jnp.float32), ("linear_scan", jnp.bfloat16),
    ("linear_scan", jnp.complex64), ("log_linear_scan", jnp.float32),
    ("log_linear_scan", jnp.bfloat16)])
def test_lowers_for_tpu(monkeypatch, op, dtype):
  monkeypatch.setitem(common.FORMS[op], "pallas", getattr(pallas, op))  # default blocks
  fn = {"linear_scan": linear_scan, "log_linear_scan": log_linear_scan}[op]
  state_dtype = jnp.complex64 if dtype == jnp.complex64 else jnp.float32
  kernels.assert_lowers_for_tpu(
      lambda x, y, h0, ids: fn(x, y, h0, impl="pallas", segment_ids=ids),
      *_export_shapes(dtype, state_dtype), kernels=1)


@pytest.mark.slow
@pytest.mark.parametrize("T", [1, 100, 4096, 16384])
@pytest.mark.parametrize("D", [1, 200, 1024])
@pytest.mark.parametrize("op", ["linear_scan", "log_linear_scan"])
def test_lowers_for_tpu_wide_grid(monkeypatch, op, T, D):
  monkeypatch.setitem(common.FORMS[op], "pallas", getattr(pallas, op))
  fn = {"linear_scan": linear_scan, "log_linear_scan": log_linear_scan}[op]
  for dtype in (jnp.float32, jnp.bfloat16):
    x = jax.ShapeDtypeStruct((3, T, D), dtype)
    kernels.assert_lowers_for_tpu(lambda x, y, h0: fn(x, y, h0, impl="pallas"), x, x,
                                  jax.ShapeDtypeStruct((3, D), jnp.float32), kernels=1)


@pytest.mark.parametrize("check", [
    _check_linear, pytest.param(_check_log, marks=pytest.mark.slow)])  # one body: budget
def test_gpu_kernel_interpreted_matches_reference(monkeypatch, check):
  """The Mosaic GPU kernels' own bodies (forward and backward) in Mosaic GPU's interpreter,
  which is slow: one program, two time tiles of 8 steps, the last one padded."""
  monkeypatch.setattr(_pallas, "CPU_INTERPRETS", "gpu")
  monkeypatch.setattr(pallas, "GPU_BLOCK_T", 8)
  check("float32", shape=(1, 9, D))


# every check of the TPU kernels, on the Mosaic GPU kernels
test_gpu_kernel_interpreted_matches_reference_wide, test_compiled_on_gpu_matches_reference = (
    kernels.gpu_check_tests(CHECKS, _pallas))


@pytest.mark.parametrize("op, dtype", [
    ("linear_scan", jnp.float32), ("linear_scan", jnp.bfloat16),
    pytest.param("linear_scan", jnp.complex64, marks=pytest.mark.slow),
    ("log_linear_scan", jnp.float32),
    pytest.param("log_linear_scan", jnp.bfloat16, marks=pytest.mark.slow)])
def test_lowers_for_cuda(monkeypatch, op, dtype):
  """Forward and backward Mosaic GPU kernels (plgpu.kernel, no Triton) at the export shape."""
  monkeypatch.setitem(common.FORMS[op], "pallas", getattr(pallas, op))  # default blocks
  fn = {"linear_scan": linear_scan, "log_linear_scan": log_linear_scan}[op]
  state_dtype = jnp.complex64 if dtype == jnp.complex64 else jnp.float32
  kernels.assert_lowers_for_cuda(
      lambda x, y, h0, ids: fn(x, y, h0, impl="pallas", segment_ids=ids),
      *_export_shapes(dtype, state_dtype), kernels=2)


@pytest.mark.slow
@pytest.mark.parametrize("T", [1, 100, 16384])
@pytest.mark.parametrize("D", [1, 200, 1024])
@pytest.mark.parametrize("op", ["linear_scan", "log_linear_scan"])
def test_lowers_for_cuda_wide_grid(monkeypatch, op, T, D):
  monkeypatch.setitem(common.FORMS[op], "pallas", getattr(pallas, op))
  fn = {"linear_scan": linear_scan, "log_linear_scan": log_linear_scan}[op]
  for dtype in (jnp.float32, jnp.bfloat16):
    x = jax.ShapeDtypeStruct((3, T, D), dtype)
    kernels.assert_lowers_for_cuda(lambda x, y, h0: fn(x, y, h0, impl="pallas"), x, x,
                                   jax.ShapeDtypeStruct((3, D), jnp.float32), kernels=2)


class _Device:
  platform, device_kind, compute_capability = "gpu", "NVIDIA A100-SXM4-80GB", "8.0"


def test_gpu_kernel_refuses_a_gpu_before_hopper(monkeypatch):
  (a, b), h0 = _linear_inputs(jnp.float32)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  monkeypatch.setattr(jax, "devices", lambda *_: [_Device()])
  for fn in (linear_scan, log_linear_scan):
    with pytest.raises(ValueError, match=r"impl='pallas' has Mosaic GPU kernels for Hopper "
                       r"\(sm_90: H100, H200\) only; this is NVIDIA A100.*capability 8.0"):
      fn(a, b, jnp.abs(h0), impl="pallas")


def test_auto_picks_the_kernel_only_where_verified(monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  assert common.resolve_impl("linear_scan", "auto") == "associative"
  device = jax.devices()[0]
  monkeypatch.setattr(_pallas, "VERIFIED",
                      ((device.platform, device.device_kind, jax.__version__),))
  assert common.resolve_impl("linear_scan", "auto") == "pallas"
  assert common.resolve_impl("s4d_conv", "auto") == "fft"  # no kernel: the XLA form
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  assert common.resolve_impl("log_linear_scan", "auto") == common.AUTO_FORMS[
      "log_linear_scan"]["cpu"]
