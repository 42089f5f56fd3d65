"""Pallas kernels against the best XLA form and the lax.scan reference, per op: forward and
forward+backward time and the bandwidth they achieve against the device's peak.

The channel scans run on [B, T, D] shapes against their reference; the matrix-state ops
(linear_attention, gated_delta_rule) on FLA's benchmark grid (B, T, H, D = K = V) against the
chunk form (their reference's backward would keep T states [B, H, K, V]: 50 GB at FLA's
(1, 8192, 96, 128)).

  python -m benchmarks [--full] --only kernels

Runs on whatever backend is present. On a TPU or a Hopper GPU the kernels compile; on a CPU
they run in interpret
mode (slow, and no measure of the kernels: a smoke test of the script) at a small shape.
`benchmarks/gpu_kernels.py` is the GPU check: the gpu-marked tests, then this on the scans. Bandwidth counts the compulsory HBM traffic only: every input read once and every
output written once (forward: inputs + outputs; forward+backward: inputs + output cotangents +
gradients); peak_frac is that over the device's peak bandwidth (PEAK_GBPS, when known).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from benchmarks import common
from layers.ops import common as ops_common
from layers.ops import (gated_delta_rule, linear_attention, linear_scan, log_linear_scan,
                        selective_scan)

# Peak HBM bandwidth in GB/s by device kind (vendor figures).
PEAK_GBPS = {"TPU v4": 1228, "TPU v5 lite": 819, "TPU v5e": 819, "TPU v5p": 2765,
             "TPU v5": 2765, "TPU v6 lite": 1640, "TPU v6e": 1640,
             "NVIDIA H100 80GB HBM3": 3350, "NVIDIA H200": 4800}
N = 16  # selective scan state size
# FLA's benchmark grid (B, T, H, D): chunk_gated_delta_rule / chunk_simple_gla's own shapes
FLA_GRID = [(1, 8192, 96, 128), (2, 16384, 16, 128), (4, 2048, 16, 128), (4, 4096, 64, 128),
            (8, 1024, 8, 64)]


def _cases(B, T, D, dtype):
  """(op, fn(impl, *inputs) -> outputs, inputs) for each op, inputs in `dtype`."""
  key = jax.random.split(jax.random.key(0), 6)
  a = jax.random.uniform(key[0], (B, T, D), minval=0.5, maxval=0.999).astype(dtype)
  b = jax.random.normal(key[1], (B, T, D), dtype)
  h0 = jnp.ones((B, D))
  yield "linear_scan", lambda impl, a, b, h0: linear_scan(a, b, h0, impl=impl), (a, b, h0)
  yield ("log_linear_scan", lambda impl, a, b, h0: log_linear_scan(a, b, h0, impl=impl),
         (jnp.log(a.astype(jnp.float32)).astype(dtype), b, h0))
  u, delta, z = (jax.random.normal(k, (B, T, D), dtype) for k in key[2:5])
  Bm, Cm = (jax.random.normal(k, (B, T, N), dtype) for k in jax.random.split(key[5]))
  A = -jnp.broadcast_to(jnp.arange(1.0, N + 1), (D, N))
  yield ("selective_scan",
         lambda impl, u, delta, Bm, Cm, z: selective_scan(
             u, delta, A, Bm, Cm, jnp.ones(D), z, jnp.zeros(D), True, impl=impl),
         (u, delta, Bm, Cm, z))


def _matrix_cases(B, T, H, D, dtype):
  """(op, fn, inputs) for the matrix-state ops: L2-normalised q, k, beta in (0, 1), log
  decays in [-0.1, -0.01] (the shape of GDN / Mamba2 gates)."""
  key = jax.random.split(jax.random.key(1), 5)
  unit = lambda x: (x / jnp.linalg.norm(x, axis=-1, keepdims=True)).astype(dtype)
  q, k = (unit(jax.random.normal(kk, (B, T, H, D))) for kk in key[:2])
  v = jax.random.normal(key[2], (B, T, H, D), dtype)
  beta = jax.random.uniform(key[3], (B, T, H), minval=0.05, maxval=0.95).astype(dtype)
  g = -jax.random.uniform(key[4], (B, T, H), minval=0.01, maxval=0.1).astype(dtype)
  yield ("linear_attention", lambda impl, q, k, v, g: linear_attention(q, k, v, g, impl=impl),
         (q, k, v, g))
  yield ("gated_delta_rule",
         lambda impl, q, k, v, beta, g: gated_delta_rule(q, k, v, beta, g, impl=impl),
         (q, k, v, beta, g))


def _bytes(*trees) -> int:
  return sum(math.prod(x.shape) * x.dtype.itemsize
             for tree in trees for x in jax.tree.leaves(tree))


def _forms(op, matrix=False):
  """reference (scans only), the XLA form "auto" picks on accelerators, and the kernel."""
  return dict.fromkeys(("reference",) * (not matrix)
                       + (ops_common.AUTO_FORMS[op]["accelerator"],) + ("pallas",))


def run(full: bool = False, ops=None, shapes=None) -> common.Result:
  """Each op's reference, accelerator XLA form and kernel: one shape per op kind (full: three
  scan shapes and FLA's grid on an accelerator; on a CPU always one small shape each, in
  interpret mode). ops: the ops to run (default: all); shapes: the scans' (B, T, D)."""
  on_cpu = jax.default_backend() == "cpu"
  if on_cpu:  # interpret mode: a smoke test
    default_shapes, matrix_shapes = [(2, 256, 256)], [(1, 256, 2, 64)]
  else:
    default_shapes = ([(2, 2048, 256), (8, 4096, 1024), (4, 16384, 2048)] if full
                      else [(2, 2048, 256)])
    matrix_shapes = FLA_GRID if full else [(4, 2048, 16, 128)]
  shapes = shapes or default_shapes
  peak = PEAK_GBPS.get(jax.devices()[0].device_kind)
  cases = [((B, T, None, D), dtype, False, case)
           for B, T, D in shapes for dtype in (jnp.float32, jnp.bfloat16)
           for case in _cases(B, T, D, dtype)]
  cases += [((B, T, H, D), dtype, True, case)
            for B, T, H, D in matrix_shapes for dtype in (jnp.float32, jnp.bfloat16)
            for case in _matrix_cases(B, T, H, D, dtype)]
  cases = [case for case in cases if ops is None or case[3][0] in ops]
  rows = []
  for (B, T, H, D), dtype, matrix, (op, fn, inputs) in cases:
    baseline = None
    for form in _forms(op, matrix):
      fwd = jax.jit(lambda *x, fn=fn, form=form: fn(form, *x))
      out = jax.eval_shape(fwd, *inputs)

      def loss(*x, fn=fn, form=form):
        y, final = fn(form, *x)
        return y.astype(jnp.float32).sum() + final.sum()
      grad = jax.jit(jax.grad(loss, argnums=tuple(range(len(inputs)))))
      row = {"op": op, "form": form, "B": B, "T": T, "H": H, "D": D,
             "dtype": jnp.dtype(dtype).name,
             "fwd_ms": 1e3 * common.time_fn(fwd, *inputs, repeats=3),
             "fwd_bwd_ms": 1e3 * common.time_fn(grad, *inputs, repeats=3)}
      traffic = {"fwd": _bytes(inputs, out), "fwd_bwd": _bytes(inputs, out, inputs)}
      for what, nbytes in traffic.items():
        row[f"{what}_GBps"] = nbytes / (row[f"{what}_ms"] / 1e3) / 1e9
        row[f"{what}_peak_frac"] = row[f"{what}_GBps"] / peak if peak else None
      baseline = baseline or row
      row["fwd_speedup"] = baseline["fwd_ms"] / row["fwd_ms"]
      row["fwd_bwd_speedup"] = baseline["fwd_bwd_ms"] / row["fwd_bwd_ms"]
      rows.append(row)
      print(f"  {op:16s} {form:12s} {row['dtype']:8s} B={B} T={T} H={H} D={D} "
            f"fwd {row['fwd_ms']:.3f} ms  fwd+bwd {row['fwd_bwd_ms']:.3f} ms", flush=True)
  note = (f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}), peak "
          f"{peak or 'unknown'} GB/s; speedup = the first form's time / this form's time "
          "(reference for the scans, chunk for linear_attention and gated_delta_rule; D = K = V "
          "for those)"
          + ("; CPU: kernels in interpret mode (a smoke test, not a measure)" if on_cpu else ""))
  return common.Result(
      rows, ["op", "form", "dtype", "B", "T", "H", "D", "fwd_ms", "fwd_bwd_ms", "fwd_GBps",
             "fwd_bwd_GBps", "fwd_peak_frac", "fwd_bwd_peak_frac", "fwd_speedup",
             "fwd_bwd_speedup"], note=note,
      settings={"shapes": shapes, "matrix_shapes": matrix_shapes, "N": N})
