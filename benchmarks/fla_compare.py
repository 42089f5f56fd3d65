"""Our chunked matrix-state kernels against flash-linear-attention (FLA, PyTorch + Triton) on a
GPU, on FLA's benchmark grid (B, T, H, D = K = V), bfloat16:

  linear_attention  pallas (Vb = 64, 32), chunk (XLA)  vs  FLA chunk_simple_gla (per-step log
                    decay g) and chunk_retention (fixed per-head decay: RetNet)
  gated_delta_rule  pallas (Vb = 64, 32), chunk (XLA)  vs  FLA chunk_gated_delta_rule

forward and forward+backward (gradients of every input), the median of REPEATS timed runs after
WARMUP runs (FLA's Triton autotuning happens in the warm-up), with the achieved matmul FLOP/s
against the H200's dense bfloat16 peak and the compulsory HBM bytes/s against its bandwidth.
Run through `benchmarks.gpu_kernels` (one call on a GPU machine). FLA comes from the wheel in
benchmarks/wheels/ (`pip download fla-core==0.6.0 --no-deps -d benchmarks/wheels`, git-ignored,
carried to the GPU machine), installed with --no-deps; without torch or FLA its rows are
skipped with a message.

FLOP model (the chunk algorithm at C = 64, per head and step; forward): 2C(K + V) for the
intra-chunk scores and their product with values, 4KV for the state read (q S) and update
(k^T v); the delta rule adds 2KV (w S) and 2CK + 2CV for the UT transform. Forward+backward
counts 3x the forward.

The grid runs in GRID_ORDER (the issue's target shape (2, 16384, 16, 128) first) until
`budget_s` seconds have passed; the shapes left are named in the note.
"""
from __future__ import annotations

import importlib.util
import pathlib
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.kernels import FLA_GRID, _matrix_cases
from layers.ops.linear_attention import pallas as kernel

ROOT = pathlib.Path(__file__).resolve().parent.parent
WHEELS = ROOT / "benchmarks" / "wheels"
PEAK_FLOPS = {"NVIDIA H200": 989e12, "NVIDIA H100 80GB HBM3": 989e12}  # dense bf16 (vendor)
PEAK_GBPS = {"NVIDIA H200": 4800, "NVIDIA H100 80GB HBM3": 3350}
WARMUP, REPEATS, C = 3, 10, 64
GRID_ORDER = [FLA_GRID[1], FLA_GRID[0], *FLA_GRID[2:]]


def _median_seconds(run, sync) -> float:
  for _ in range(WARMUP):
    run()
  sync()
  times = []
  for _ in range(REPEATS):
    start = time.perf_counter()
    run()
    sync()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def flops(op, B, T, H, D) -> float:
  """Forward matmul FLOPs of the chunk algorithm (module docstring), K = V = D."""
  per_step = 2 * C * 2 * D + 4 * D * D
  if op == "gated_delta_rule":
    per_step += 2 * D * D + 2 * C * 2 * D
  return B * T * H * per_step


def _jax_rows(op, fn, inputs):
  """The kernel at each value block width (Vb = 64, the default, and 32: twice the programs)
  and the XLA chunk form."""
  rows = []
  for form, block_v in (("pallas", 64), ("pallas", 32), ("chunk", None)):
    fwd = jax.jit(lambda *x, form=form: fn(form, *x))
    loss = lambda *x, form=form: sum(jnp.sum(y.astype(jnp.float32)) for y in fn(form, *x))
    grad = jax.jit(jax.grad(loss, argnums=tuple(range(len(inputs)))))
    row = {"op": op, "impl": form + (f" Vb={block_v}" if block_v else "")}
    default, kernel.GPU_BLOCK_V = kernel.GPU_BLOCK_V, block_v or kernel.GPU_BLOCK_V
    try:
      for what, f in (("fwd", fwd), ("fwd_bwd", grad)):
        row[f"{what}_ms"] = 1e3 * _median_seconds(lambda f=f: f(*inputs),
                                                  lambda f=f: jax.block_until_ready(f(*inputs)))
    except Exception as e:  # noqa: BLE001 - a failing form is a row, not the end of the run
      row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
    finally:
      kernel.GPU_BLOCK_V = default  # traced at the first call: restored after it
    rows.append(row)
  return rows


def _install_fla() -> str | None:
  """None once torch and fla are importable (installing the wheel if needed), else why not."""
  if importlib.util.find_spec("torch") is None:
    return "torch is not installed: FLA rows skipped"
  if importlib.util.find_spec("fla") is None:
    wheels = sorted(WHEELS.glob("fla_core-*.whl"))
    if not wheels:
      return f"no fla_core wheel in {WHEELS}: FLA rows skipped"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", str(wheels[-1])],
                   check=False)
    importlib.invalidate_caches()
  return None if importlib.util.find_spec("fla") else "fla did not install: FLA rows skipped"


def _fla_rows(op, inputs):
  import torch
  from fla.ops.gated_delta_rule import chunk_gated_delta_rule
  from fla.ops.retention import chunk_retention
  from fla.ops.simple_gla import chunk_simple_gla

  t = {name: torch.tensor(np.asarray(x.astype(jnp.float32))).to("cuda", torch.bfloat16)
       for name, x in inputs.items()}
  if op == "linear_attention":
    calls = {"fla chunk_simple_gla": lambda q, k, v, g: chunk_simple_gla(q, k, v, g=g.float()),
             "fla chunk_retention": lambda q, k, v, g: chunk_retention(q, k, v)}
  else:
    calls = {"fla chunk_gated_delta_rule": lambda q, k, v, beta, g: chunk_gated_delta_rule(
        q, k, v, g.float(), beta)}
  rows = []
  for name, call in calls.items():
    args = [t[n].clone().requires_grad_(True) for n in inputs]
    row = {"op": op, "impl": name}

    def fwd():
      with torch.no_grad():
        call(*args)

    def fwd_bwd():
      out = call(*args)[0]
      out.float().sum().backward()
    for what, f in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
      row[f"{what}_ms"] = 1e3 * _median_seconds(f, torch.cuda.synchronize)
    rows.append(row)
  return rows


def run(grid=GRID_ORDER, budget_s: float = 240.0) -> tuple[list[dict], str]:
  """The rows (op, impl, B, T, H, D, fwd_ms, fwd_bwd_ms, TFLOP/s, fractions of peak) and a
  note."""
  start, left = time.perf_counter(), []
  kind = jax.devices()[0].device_kind
  peak_flops, peak_gbps = PEAK_FLOPS.get(kind), PEAK_GBPS.get(kind)
  fla_missing = _install_fla()
  rows = []
  for B, T, H, D in grid:
    if time.perf_counter() - start > budget_s:
      left.append((B, T, H, D))
      continue
    for op, fn, inputs in _matrix_cases(B, T, H, D, jnp.bfloat16):
      names = ("q", "k", "v", "g") if op == "linear_attention" else ("q", "k", "v", "beta", "g")
      new = _jax_rows(op, fn, inputs)
      if fla_missing is None:
        new += _fla_rows(op, dict(zip(names, inputs)))
      nbytes = sum(x.size * x.dtype.itemsize for x in inputs) + B * T * H * D * 2
      for row in new:
        row.update(B=B, T=T, H=H, D=D)
        for what, scale in (("fwd", 1), ("fwd_bwd", 3)):
          ms = row.get(f"{what}_ms")
          if ms:
            row[f"{what}_TFLOPs"] = scale * flops(op, B, T, H, D) / (ms / 1e3) / 1e12
            row[f"{what}_flop_frac"] = (row[f"{what}_TFLOPs"] * 1e12 / peak_flops
                                        if peak_flops else None)
            row[f"{what}_bw_frac"] = (scale * nbytes / (ms / 1e3) / 1e9 / peak_gbps
                                      if peak_gbps else None)
        print("  " + " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                              for k, v in row.items()), flush=True)
      rows += new
  note = (f"{kind}: peak {peak_flops or 'unknown'} FLOP/s, {peak_gbps or 'unknown'} GB/s; "
          f"median of {REPEATS} runs after {WARMUP} warm-up runs, bfloat16"
          + (f"; {fla_missing}" if fla_missing else "")
          + (f"; not run (time budget {budget_s:.0f} s): {left}" if left else ""))
  return rows, note
