"""Diagonal scans: reference (lax.scan) vs associative forms of linear_scan and
log_linear_scan, and the forms of s4d_conv (the FFT convolution vs the recurrence).

  python -m benchmarks [--full] --only scan

Forward and forward+backward (gradient of a sum) times, min of N, jitted on this machine; for
log_linear_scan also each form's float32 error against float64 at retention a = 1 - 1e-4.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from layers.ops import linear_scan, log_linear_scan, s4d_conv

B, D = 2, 256          # linear scans: [B, T, D]
H, HALF_N = 128, 16    # S4D: H channels, N = 32 real state (16 complex modes)


def _scan_cases(T):
  key = jax.random.split(jax.random.key(0), 3)
  a = jax.random.uniform(key[0], (B, T, D), minval=0.5, maxval=0.999)
  b = jax.random.normal(key[1], (B, T, D))
  h0 = jnp.ones((B, D))
  for impl in ("reference", "associative"):
    yield "linear_scan", impl, (lambda a, b, h0, impl=impl: linear_scan(a, b, h0, impl=impl)[0]), (a, b, h0)
  for impl in ("reference", "associative", "compensated"):
    yield ("log_linear_scan", impl,
           (lambda a, b, h0, impl=impl: log_linear_scan(a, b, h0, impl=impl)[0]),
           (jnp.log(a), b, h0))


def _log_error(T, impl, retention=1 - 1e-4):
  """Norm-relative error of float32 log_linear_scan against a float64 NumPy recurrence, with
  a = retention (near 1 the plain sequential step rounds away the decay)."""
  rng = np.random.default_rng(0)
  log_b = rng.standard_normal((B, T, D)) * 0.5
  log_a = np.full((B, T, D), np.log(retention))
  got = np.asarray(log_linear_scan(jnp.asarray(log_a, jnp.float32),
                                   jnp.asarray(log_b, jnp.float32), impl=impl)[0], np.float64)
  log_h, want = np.full((B, D), -np.inf), np.empty((B, T, D))
  for t in range(T):
    log_h = np.logaddexp(log_a[:, t] + log_h, log_b[:, t])
    want[:, t] = log_h
  want = np.exp(want)
  return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def _s4d_cases(T):
  key = jax.random.split(jax.random.key(1), 4)
  log_dt = jnp.log(jnp.full((H,), 0.01))
  A_re = -0.5 * jnp.ones((H, HALF_N))
  A_im = jnp.pi * jnp.broadcast_to(jnp.arange(HALF_N, dtype=jnp.float32), (H, HALF_N))
  C = jax.random.normal(key[0], (H, HALF_N)) + 1j * jax.random.normal(key[1], (H, HALF_N))
  u = jax.random.normal(key[2], (B, T, H))

  for impl in ("reference", "fft"):
    yield ("s4d_conv", impl,
           (lambda u, d, impl=impl: s4d_conv(u, d, A_re, A_im, C, impl=impl)[0]), (u, log_dt))


def run(full: bool = False) -> common.Result:
  """Every form at T = 256, 1024 (full: up to 16384)."""
  lengths = (256, 1024, 4096, 16384) if full else (256, 1024)
  rows = []
  for T in lengths:
    baseline = {}
    for cases in (_scan_cases(T), _s4d_cases(T)):
      for op, form, fn, inputs in cases:
        fwd = jax.jit(fn)
        bwd = jax.jit(jax.grad(lambda *x, fn=fn: fn(*x).sum(), argnums=(0, 1)))
        row = {"op": op, "form": form, "T": T,
               "fwd_ms": 1e3 * common.time_fn(fwd, *inputs),
               "fwd_bwd_ms": 1e3 * common.time_fn(bwd, *inputs)}
        row["tokens_per_s"] = B * T / (row["fwd_ms"] / 1e3)
        if op == "log_linear_scan":
          row["f32_error_a=1-1e-4"] = _log_error(T, form)
        ref = baseline.setdefault(op, row)
        row["fwd_speedup"] = ref["fwd_ms"] / row["fwd_ms"]
        row["fwd_bwd_speedup"] = ref["fwd_bwd_ms"] / row["fwd_bwd_ms"]
        rows.append(row)
        print(f"  {op:16s} {form:22s} T={T:6d} fwd {row['fwd_ms']:.3f} ms", flush=True)
  return common.Result(
      rows, ["op", "form", "T", "fwd_ms", "fwd_bwd_ms", "tokens_per_s", "fwd_speedup",
             "fwd_bwd_speedup", "f32_error_a=1-1e-4"],
      note=f"B={B}, D={D} (S4D: H={H}, N={2 * HALF_N}), float32; speedup = time of the op's "
           "reference (lax.scan) form / time of this form; f32_error: log_linear_scan in "
           "float32 against float64 at a = 1 - 1e-4.",
      settings={"lengths": lengths, "B": B, "D": D, "H": H, "N": 2 * HALF_N})
