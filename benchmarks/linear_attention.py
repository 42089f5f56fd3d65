"""Time and memory of every XLA form of `linear_attention` and `gated_delta_rule`.

Forward and forward+backward (gradients of every input), jitted, min over repetitions after a
warm-up, the forms of one (op, T) timed in turn run by run; memory is XLA's compiled temp
allocation (`memory_analysis().temp_size_in_bytes`).

  python -m benchmarks [--full] --only linear_attention

On a shared CPU compare the speedup columns (reference and chunk timed in the same run), not
milliseconds across runs.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from layers.ops import gated_delta_rule, linear_attention

B, H, K, V = 2, 4, 64, 64
LENGTHS, SMALL_LENGTHS = (512, 2048, 4096, 8192), (128, 512)
REPS = 5  # at least this many timed runs
REFERENCE_BUDGET_S = 10.0  # the reference gets 2 runs once T * REPS exceeds 1000x this
FORMS = {"linear_attention": ("reference", "parallel", "chunk"),
         "gated_delta_rule": ("reference", "chunk")}
MIN_TOTAL_S = 1.0  # short runs repeat until this much time passed: the min drops CPU noise
MAX_TEMP_BYTES = 8 << 30  # forms needing more (the quadratic one at long T) are skipped


def _inputs(T, seed=0):
  """float32 inputs at initialisation scale: unit q, k; beta in (0, 1); g ~ -1.5 per step."""
  rng = np.random.default_rng(seed)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  return dict(q=f32(unit(rng.standard_normal((B, T, H, K)))),
              k=f32(unit(rng.standard_normal((B, T, H, K)))),
              v=f32(rng.standard_normal((B, T, H, V))),
              beta=f32(rng.uniform(0.05, 0.95, (B, T, H))),
              g=f32(-rng.uniform(0.6, 2.5, (B, T, H))),
              initial_state=f32(rng.standard_normal((B, H, K, V))))


def _functions(op, impl, chunk_size=None):
  """(forward, forward+backward) taking the dict of inputs."""
  extra = {} if chunk_size is None or impl != "chunk" else dict(chunk_size=chunk_size)

  def forward(x):
    if op == "linear_attention":
      return linear_attention(x["q"], x["k"], x["v"], x["g"], impl=impl,
                              initial_state=x["initial_state"], **extra)
    return gated_delta_rule(x["q"], x["k"], x["v"], x["beta"], x["g"], impl=impl,
                            initial_state=x["initial_state"], **extra)

  def loss(x):
    o, final = forward(x)
    return jnp.sum(o * o) + jnp.sum(final)

  return forward, jax.grad(loss)


def _measure(fns, x, reps):
  """{name: (min seconds or None, temp bytes)} for jitted fns, each compiled once; forms whose
  temp exceeds MAX_TEMP_BYTES are not run, the others are timed interleaved run by run
  (`common.time_fns`). reps: {name: at least this many timed runs}."""
  compiled, temps = {}, {}
  for name, fn in fns.items():
    executable = jax.jit(fn).lower(x).compile()
    temps[name] = executable.memory_analysis().temp_size_in_bytes
    if temps[name] <= MAX_TEMP_BYTES:
      compiled[name] = executable
  seconds = common.time_fns(compiled, x, repeats={name: reps[name] for name in compiled},
                            min_seconds=MIN_TOTAL_S, max_runs=50)
  return {name: (seconds.get(name), temp) for name, temp in temps.items()}


def run(full: bool = False, chunk_size: int | None = None) -> common.Result:
  """Every form of both ops at T = 128, 512 (full: 512 .. 8192)."""
  lengths = LENGTHS if full else SMALL_LENGTHS
  reps, reference_budget_s = REPS, REFERENCE_BUDGET_S
  rows = []
  for op, forms in FORMS.items():
    for T in lengths:
      x = _inputs(T)
      rows_t = {impl: dict(op=op, impl=impl, T=T) for impl in forms}
      for i, name in enumerate(("fwd", "fwd_bwd")):
        fns = {impl: _functions(op, impl, chunk_size)[i] for impl in forms}
        # the sequential reference gets fewer repetitions once one run is long
        n = {impl: reps if impl != "reference" or T * reps <= reference_budget_s * 1000 else 2
             for impl in forms}
        for impl, (seconds, temp) in _measure(fns, x, n).items():
          rows_t[impl][f"{name}_ms"] = None if seconds is None else seconds * 1e3
          rows_t[impl][f"{name}_temp_mib"] = temp / 2**20
      for row in rows_t.values():
        rows.append(row)
        print(_format(row), flush=True)
  for row in rows:
    ref = next(r for r in rows if r["op"] == row["op"] and r["T"] == row["T"]
               and r["impl"] == "reference")
    for name in ("fwd", "fwd_bwd"):
      row[f"{name}_speedup"] = (None if row[f"{name}_ms"] is None
                                else ref[f"{name}_ms"] / row[f"{name}_ms"])
  return common.Result(
      rows, ["op", "impl", "T", "fwd_ms", "fwd_bwd_ms", "fwd_speedup", "fwd_bwd_speedup",
             "fwd_temp_mib", "fwd_bwd_temp_mib"],
      note=f"B={B}, H={H}, K={K}, V={V}, float32; speedup = reference time / this form's "
           "(timed in turn, run by run); temp = XLA's compiled temp allocation; forms over "
           f"{MAX_TEMP_BYTES >> 30} GiB are skipped (empty cells).",
      settings={"lengths": lengths, "B": B, "H": H, "K": K, "V": V,
                "chunk_size": chunk_size or "default"})


def _format(row):
  cell = lambda v, fmt, unit: f"{'skipped':>12}" if v is None else format(v, fmt) + unit
  text = (f"{row['op']:<17} {row['impl']:<9} T={row['T']:<5} "
          f"fwd {cell(row['fwd_ms'], '9.2f', ' ms')} ({row['fwd_temp_mib']:8.1f} MiB)  "
          f"fwd+bwd {cell(row['fwd_bwd_ms'], '9.2f', ' ms')} ({row['fwd_bwd_temp_mib']:8.1f} MiB)")
  if "fwd_speedup" in row:
    text += (f"  speedup vs reference: fwd {cell(row['fwd_speedup'], '6.1f', 'x')}"
             f"  fwd+bwd {cell(row['fwd_bwd_speedup'], '6.1f', 'x')}")
  return text
