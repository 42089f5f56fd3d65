"""Timing and reporting shared by the benchmarks: min-of-N wall time of jitted functions,
compiled peak temporary memory, a printed table and a JSON record with the machine."""
from __future__ import annotations

import json
import os
import pathlib
import platform
import time

import jax


def machine() -> dict:
  """What the numbers were measured on."""
  return {
      "platform": jax.default_backend(),
      "devices": [d.device_kind for d in jax.devices()],
      "cpu_count": os.cpu_count(),
      "processor": platform.processor() or platform.machine(),
      "python": platform.python_version(),
      "jax": jax.__version__,
  }


def time_fn(fn, *args, repeats: int = 5, min_seconds: float = 0.0) -> float:
  """Best wall time in seconds of the jitted `fn(*args)` over `repeats` runs after one warm-up
  (more runs while their total is under `min_seconds`)."""
  jax.block_until_ready(fn(*args))
  best, total, n = float("inf"), 0.0, 0
  while n < repeats or total < min_seconds:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    elapsed = time.perf_counter() - start
    best, total, n = min(best, elapsed), total + elapsed, n + 1
  return best


def temp_bytes(fn, *args) -> int:
  """Peak temporary memory XLA plans for the compiled `fn(*args)` (bytes; 0 if unknown)."""
  analysis = jax.jit(fn).lower(*args).compile().memory_analysis()
  return int(getattr(analysis, "temp_size_in_bytes", 0) or 0)


def print_table(rows: list[dict], columns: list[str]) -> None:
  """Prints `rows` as an aligned text table over `columns`."""
  def fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)
  widths = [max(len(c), *(len(fmt(r.get(c, ""))) for r in rows)) for c in columns]
  print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
  for r in rows:
    print("  ".join(fmt(r.get(c, "")).rjust(w) for c, w in zip(columns, widths)))


def write_json(path: str, name: str, rows: list[dict]) -> None:
  """Writes {benchmark, machine, rows} to `path` (parents created)."""
  out = pathlib.Path(path)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({"benchmark": name, "machine": machine(), "rows": rows}, indent=1))
  print(f"wrote {out}")
