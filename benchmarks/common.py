"""Timing and reporting shared by the benchmarks: min-of-N wall time of jitted functions,
compiled peak temporary memory, the machine, and each benchmark's result (rows, a markdown
table, a note) that `python -m benchmarks` prints, writes as JSON and puts in the README."""
from __future__ import annotations

import dataclasses
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
      # the machine is shared: the 1, 5 and 15 minute load averages when the numbers were taken
      "load_average": [round(x, 2) for x in os.getloadavg()],
  }


@dataclasses.dataclass
class Result:
  """What one benchmark's `run(full)` returns: its rows (one dict each), the markdown table
  for the README (default: `markdown_table(rows, columns)`), a note printed under it, and the
  settings it ran at."""
  rows: list[dict]
  columns: list[str] = dataclasses.field(default_factory=list)
  markdown: str = ""
  note: str = ""
  settings: dict = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if not self.markdown:
      self.markdown = markdown_table(self.rows, self.columns)


def time_fns(fns: dict, *args, repeats=5, min_seconds: float = 0.0,
             max_runs: int | None = None, cpu: bool = False) -> dict:
  """{name: best wall time in seconds of the jitted fns[name](*args)} after one warm-up each
  (cpu=True: {name: (best wall time, best CPU time of this process)}; on a loaded machine the
  CPU time leaves out the time spent waiting for a core).

  The functions are timed in turn, run by run, so load from other processes hits them alike
  and their ratios stay comparable. Each runs at least `repeats` times (an int, or
  {name: int}), more while its total is under `min_seconds` (at most `max_runs` then)."""
  for fn in fns.values():
    jax.block_until_ready(fn(*args))
  least = repeats if isinstance(repeats, dict) else dict.fromkeys(fns, repeats)
  times = {name: [] for name in fns}
  cpu_times = {name: [] for name in fns}

  def more(name):
    t = times[name]
    return len(t) < least[name] or (sum(t) < min_seconds
                                    and (max_runs is None or len(t) < max_runs))

  while any(more(name) for name in fns):
    for name, fn in fns.items():
      if more(name):
        start, start_cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn(*args))
        times[name].append(time.perf_counter() - start)
        cpu_times[name].append(time.process_time() - start_cpu)
  if cpu:
    return {name: (min(times[name]), min(cpu_times[name])) for name in fns}
  return {name: min(t) for name, t in times.items()}


def time_fn(fn, *args, repeats: int = 5, min_seconds: float = 0.0) -> float:
  """Best wall time in seconds of the jitted `fn(*args)` over `repeats` runs after one warm-up
  (more runs while their total is under `min_seconds`)."""
  return time_fns({"fn": fn}, *args, repeats=repeats, min_seconds=min_seconds)["fn"]


def temp_bytes(fn, *args) -> int:
  """Peak temporary memory XLA plans for the compiled `fn(*args)` (bytes; 0 if unknown)."""
  analysis = jax.jit(fn).lower(*args).compile().memory_analysis()
  return int(getattr(analysis, "temp_size_in_bytes", 0) or 0)


def _cell(v) -> str:
  return f"{v:.4g}" if isinstance(v, float) else "" if v is None else str(v)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
  """`rows` as a markdown table over `columns` (floats to 4 significant digits)."""
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
  return "\n".join(lines)


def write_json(path, name: str, result: Result, full: bool) -> None:
  """Writes {benchmark, full, machine, settings, rows} to `path` (parents created)."""
  out = pathlib.Path(path)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({"benchmark": name, "full": full, "machine": machine(),
                             "settings": result.settings, "rows": result.rows}, indent=1,
                            default=str))
  print(f"wrote {out}")


def format_bytes(n: int) -> str:
  """n bytes as B, KiB, MiB or GiB (one decimal above B)."""
  for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if n >= size:
      return f"{n / size:.1f} {unit}"
  return f"{n} B"
