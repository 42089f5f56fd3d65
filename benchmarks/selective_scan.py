"""selective_scan: the sequential reference (lax.scan) vs the chunk form (associative scan
within chunks, rematerialised) and the checkpointed form (the sequential scan within
rematerialised chunks), as Mamba calls it (delta_bias, softplus, D, z, initial state).

  python -m benchmarks [--full] --only selective_scan

Forward and forward+backward (gradients of every input) times, min of N, and the peak
temporary memory XLA plans for each compiled function, jitted on this machine.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from benchmarks import common
from layers.ops import selective_scan

DM, N = 512, 16
FORMS = ("reference", "chunk", "checkpointed")


def _inputs(batch, T):
  key = jax.random.split(jax.random.key(0), 7)
  u, delta, z = (jax.random.normal(k, (batch, T, DM)) for k in key[:3])
  A = -jnp.broadcast_to(jnp.arange(1, N + 1, dtype=jnp.float32), (DM, N))
  B, C = (jax.random.normal(k, (batch, T, N)) for k in key[3:5])
  D = jnp.ones((DM,))
  delta_bias = jnp.log(jnp.expm1(jax.random.uniform(key[5], (DM,), minval=1e-3, maxval=0.1)))
  h0 = jax.random.normal(key[6], (batch, DM, N))
  return u, delta, A, B, C, D, z, delta_bias, h0


def _forward(impl):
  def fn(u, delta, A, B, C, D, z, delta_bias, h0):
    y, final = selective_scan(u, delta, A, B, C, D, z, delta_bias, True, h0, impl=impl)
    return y.sum() + final.sum()
  return fn


def run(full: bool = False) -> common.Result:
  """Both forms at T = 256, 1024 (full: 1024, 4096, 16384)."""
  lengths = (1024, 4096, 16384) if full else (256, 1024)
  rows = []
  for T in lengths:
    batch = 1 if T >= 16384 else 2
    inputs = _inputs(batch, T)
    for impl in FORMS:
      fwd = jax.jit(_forward(impl))
      bwd = jax.jit(jax.grad(_forward(impl), argnums=tuple(range(len(inputs)))))
      row = {"form": impl, "B": batch, "T": T,
             "fwd_ms": 1e3 * common.time_fn(fwd, *inputs, repeats=3),
             "fwd_bwd_ms": 1e3 * common.time_fn(bwd, *inputs, repeats=3),
             "fwd_temp_MiB": common.temp_bytes(fwd, *inputs) / 2**20,
             "fwd_bwd_temp_MiB": common.temp_bytes(bwd, *inputs) / 2**20}
      rows.append(row)
      print(f"  {impl:10s} B={batch} T={T:6d} fwd {row['fwd_ms']:.1f} ms, "
            f"fwd+bwd {row['fwd_bwd_ms']:.1f} ms", flush=True)
  return common.Result(
      rows, ["form", "B", "T", "fwd_ms", "fwd_bwd_ms", "fwd_temp_MiB", "fwd_bwd_temp_MiB"],
      note=f"Dm={DM}, N={N}, float32; temp = compiled peak temporary memory.",
      settings={"lengths": lengths, "d_inner": DM, "N": N})
