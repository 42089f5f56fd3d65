"""What every Pallas kernel test reuses: inputs cast to the kernel's dtype, lowering for a
platform by `jax.export` (no device needed), an interpret run with race detection, and the
skip rule of the hardware-marked tests."""
from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import pytest
from jax._src.pallas.mosaic.interpret import interpret_pallas_call
from jax.experimental.pallas import tpu as pltpu

# The one realistic shape every kernel is lowered at in the default tier (issue 19).
EXPORT_B, EXPORT_T, EXPORT_D, EXPORT_N = 2, 2048, 256, 16


def cast_inputs(fn, dtype):
  """`fn(xs, h0, segment_ids)` with floating `xs` and `h0` cast to `dtype` first (the harness
  feeds float64 arrays; the kernels are checked at float32 and bfloat16)."""
  def cast(x):
    if x is None or not jnp.issubdtype(x.dtype, jnp.floating):
      return x
    return x.astype(dtype)

  def wrapped(xs, h0, segment_ids):
    return fn(tuple(cast(x) for x in xs), cast(h0), segment_ids)
  return wrapped


def export_text(fn, *shapes, platform: str = "tpu") -> str:
  """The StableHLO text of `jax.jit(fn)` exported for `platform` at these abstract shapes."""
  exported = jax.export.export(jax.jit(fn), platforms=[platform])(*shapes)
  return exported.mlir_module()


def value_and_vjp(fn):
  """`fn(*args)` and its VJP with the outputs as cotangents, in one function (to export)."""
  def both(*args):
    out, pullback = jax.vjp(fn, *args)
    return out, pullback(out)
  return both


def assert_lowers_for_tpu(fn, *shapes, kernels: int) -> None:
  """`fn` and its VJP export for TPU with `kernels` / more Mosaic calls (the real kernels)."""
  forward = export_text(fn, *shapes).count("tpu_custom_call")
  assert forward == kernels, f"forward: {forward} Mosaic calls, expected {kernels}"
  both = export_text(value_and_vjp(fn), *shapes).count("tpu_custom_call")
  assert both > forward, f"forward + VJP: {both} Mosaic calls, expected more than {forward}"


def assert_lowers_for_cuda(fn, *shapes, kernels: int) -> None:
  """`fn` and its VJP, exported together for cuda, hold `kernels` Mosaic GPU calls
  (`plgpu.kernel`: forward and backward kernels together) and no Triton call."""
  text = export_text(value_and_vjp(fn), *shapes, platform="cuda")
  found = text.count("mosaic_gpu_v2")
  assert found == kernels, f"forward + VJP: {found} Mosaic GPU calls, expected {kernels}"
  assert "triton" not in text, "a Triton call: the GPU kernels are Mosaic GPU kernels"


@contextlib.contextmanager
def race_detection():
  """Yields `pltpu.InterpretParams` that detect races between two simulated cores and fill
  uninitialised memory with NaN; asserts on exit that no race was found."""
  pltpu.reset_tpu_interpret_mode_state()
  yield pltpu.InterpretParams(detect_races=True, uninitialized_memory="nan",
                              num_cores_or_threads=2)
  races = interpret_pallas_call.races
  assert races is not None, "the kernel did not run in TPU interpret mode"
  assert not races.races_found, "race detected"


def on_platform(platform: str):
  """Marks a test that compiles kernels on `platform` ("tpu" or "gpu") with that pytest
  marker, skipped elsewhere. Passing there is what `_pallas.VERIFIED` records."""
  def decorate(test):
    skip = pytest.mark.skipif(jax.default_backend() != platform,
                              reason=f"needs a {platform.upper()}")
    return skip(getattr(pytest.mark, platform)(test))
  return decorate


def check_tests(checks: dict, default_tier=None):
  """The two tests every kernel file runs over its `checks` (name -> a zero-argument check of
  the kernel against the reference): in interpret mode on CPU (the checks outside
  `default_tier` under -m slow; None: all in the default tier) and compiled on a TPU."""
  slow = lambda c: default_tier is not None and c not in default_tier

  @pytest.mark.parametrize("check", [
      pytest.param(c, marks=pytest.mark.slow) if slow(c) else c for c in checks])
  def test_interpret_matches_reference(check):
    checks[check]()

  @on_platform("tpu")
  @pytest.mark.parametrize("check", checks)
  def test_compiled_on_tpu_matches_reference(check):
    checks[check]()
  return test_interpret_matches_reference, test_compiled_on_tpu_matches_reference


def gpu_check_tests(checks: dict, pallas_module):
  """The same checks on the Mosaic GPU kernels: in Mosaic GPU's interpreter on CPU (slow:
  `pallas_module` is `layers.ops._pallas`, switched to it) and compiled on a GPU."""

  @pytest.mark.slow
  @pytest.mark.parametrize("check", checks)
  def test_gpu_kernel_interpreted_matches_reference_wide(monkeypatch, check):
    monkeypatch.setattr(pallas_module, "CPU_INTERPRETS", "gpu")
    checks[check]()

  @on_platform("gpu")
  @pytest.mark.parametrize("check", checks)
  def test_compiled_on_gpu_matches_reference(check):
    checks[check]()
  return test_gpu_kernel_interpreted_matches_reference_wide, test_compiled_on_gpu_matches_reference
