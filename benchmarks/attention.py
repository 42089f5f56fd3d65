"""Time and memory of the attention forms: the dense reference ([B, H, T, T] scores) against
the blockwise form (online softmax over key blocks), full causal and a sliding window.

Forward and forward+backward (gradients of q, k, v), jitted, min over runs after a warm-up,
the forms of one case timed in turn run by run; memory is XLA's compiled temp allocation.
Forms planning more than MAX_TEMP_BYTES are not run. What it measures sets
`layers.ops.common.LONG_FORMS["attention"]` (the length where "auto" turns blockwise).

  python -m benchmarks [--full] --only attention
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from layers.ops import attention

B, H, K = 1, 4, 64
FULL_LENGTHS, LENGTHS = (256, 512, 1024, 2048, 4096, 8192, 16384), (256, 1024)
FORMS = ("reference", "blockwise")
WINDOWS = (None, 256)
MAX_TEMP_BYTES = 8 << 30


def _functions(impl, window):
  """(forward, forward+backward) of attention on (q, k, v)."""
  forward = lambda q, k, v: attention(q, k, v, window=window, impl=impl)
  loss = lambda q, k, v: jnp.sum(forward(q, k, v) ** 2)
  return forward, jax.grad(loss, argnums=(0, 1, 2))


def run(full: bool = False, reps: int = 3) -> common.Result:
  """Both forms, full causal and a 256-token window, at T = 256, 1024 (full: to 16384)."""
  lengths = FULL_LENGTHS if full else LENGTHS
  rows = []
  for window in WINDOWS:
    for T in lengths:
      rng = np.random.default_rng(0)
      q, k, v = (jnp.asarray(rng.standard_normal((B, T, H, K)), jnp.float32) for _ in range(3))
      row_of = {impl: dict(window=window or "full", T=T, impl=impl) for impl in FORMS}
      for i, name in enumerate(("fwd", "fwd_bwd")):
        compiled = {}
        for impl in FORMS:
          executable = jax.jit(_functions(impl, window)[i]).lower(q, k, v).compile()
          temp = executable.memory_analysis().temp_size_in_bytes
          row_of[impl][f"{name}_temp_mib"] = temp / 2**20
          if temp <= MAX_TEMP_BYTES:
            compiled[impl] = executable
        seconds = common.time_fns(compiled, q, k, v, repeats=reps, min_seconds=0.5,
                                  max_runs=20)
        for impl in FORMS:
          row_of[impl][f"{name}_ms"] = (seconds[impl] * 1e3 if impl in seconds else "skipped")
      ref = row_of["reference"]
      for row in row_of.values():
        for name in ("fwd", "fwd_bwd"):
          ms, ref_ms = row[f"{name}_ms"], ref[f"{name}_ms"]
          row[f"{name}_vs_ref"] = (ref_ms / ms if isinstance(ms, float)
                                   and isinstance(ref_ms, float) else "-")
        rows.append(row)
        print("  " + "  ".join(f"{c}={row[c]}" for c in COLUMNS[:3]) + "  fwd+bwd "
              f"{row['fwd_bwd_ms']}", flush=True)
  return common.Result(
      rows, COLUMNS, note=f"B={B}, H={H}, K=V={K}, float32; vs_ref = reference ms / form ms; "
      "temp = XLA's compiled temporary memory; forms planning more than "
      f"{MAX_TEMP_BYTES >> 30} GiB are skipped.",
      settings={"lengths": lengths, "B": B, "H": H, "K": K, "windows": WINDOWS})


COLUMNS = ["window", "T", "impl", "fwd_ms", "fwd_vs_ref", "fwd_temp_mib", "fwd_bwd_ms",
           "fwd_bwd_vs_ref", "fwd_bwd_temp_mib"]

