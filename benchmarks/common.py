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


def time_fns(fns: dict, *args, repeats=5, min_seconds: float = 0.0,
             max_runs: int | None = None) -> dict:
  """{name: best wall time in seconds of the jitted fns[name](*args)} after one warm-up each.

  The functions are timed in turn, run by run, so load from other processes on a shared
  machine hits them alike and their ratios stay comparable. Each runs at least `repeats`
  times (an int, or {name: int}), more while its total is under `min_seconds` (at most
  `max_runs` then)."""
  for fn in fns.values():
    jax.block_until_ready(fn(*args))
  least = repeats if isinstance(repeats, dict) else dict.fromkeys(fns, repeats)
  times = {name: [] for name in fns}

  def more(name):
    t = times[name]
    return len(t) < least[name] or (sum(t) < min_seconds
                                    and (max_runs is None or len(t) < max_runs))

  while any(more(name) for name in fns):
    for name, fn in fns.items():
      if more(name):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times[name].append(time.perf_counter() - start)
  return {name: min(t) for name, t in times.items()}


def time_fn(fn, *args, repeats: int = 5, min_seconds: float = 0.0) -> float:
  """Best wall time in seconds of the jitted `fn(*args)` over `repeats` runs after one warm-up
  (more runs while their total is under `min_seconds`)."""
  return time_fns({"fn": fn}, *args, repeats=repeats, min_seconds=min_seconds)["fn"]


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
