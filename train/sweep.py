"""A grid of training runs, each an ordinary resumable run in its own workdir:

  python -m train.sweep configs/synthetic/mqar_frontier.py --root runs/frontier [--workers 2]
      [--only NAME,...] [--list]

A sweep file defines CONFIG (a config file path) and get_sweep() -> [{"name": str, "arg":
the config file's arg (e.g. "model=s4d"), "overrides": {dotted key: value}}]. Each run is
`python -m train --config CONFIG:arg --workdir ROOT/name --config.KEY=VALUE ...` in its own
process (log: ROOT/name.log); a run whose workdir already holds its final eval is skipped, a
killed one resumes where it stopped (the loop's own resume), so running the same command again
picks a killed sweep up. `--workers N` runs N at a time. After the runs, ROOT/results.csv holds
one row per run (CSV_COLUMNS): its model, width, recurrent state bytes at the task's length,
parameters, steps and final eval metrics.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import csv
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from layers import state_bytes
from seqmodels.models import build_model
from train import config_lib
from train.metrics import read_metrics
from train.tasks import build_task

CSV_COLUMNS = ("name", "model", "d_model", "n_layers", "state_bytes", "params", "steps",
               "eval_accuracy", "eval_loss", "status", "command")


def load_sweep(path: str) -> tuple[str, list[dict]]:
  """(CONFIG, runs) of a sweep file; a ValueError naming what is wrong with it."""
  module = config_lib.load_python_file(path, "sweep file",
                                       "configs/synthetic/mqar_frontier.py")
  if not hasattr(module, "CONFIG") or not hasattr(module, "get_sweep"):
    raise ValueError(f"{path}: a sweep file defines CONFIG and get_sweep()")
  runs = list(module.get_sweep())
  for run in runs:
    if set(run) != {"name", "arg", "overrides"}:
      raise ValueError(f"{path}: each run is a dict with keys name, arg, overrides; got "
                       f"{sorted(run)}")
  names = [run["name"] for run in runs]
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    raise ValueError(f"{path}: run names must be unique; repeated: {', '.join(repeated)}")
  return module.CONFIG, runs


def command(config: str, run: dict, workdir: str) -> list[str]:
  """The `python -m train` command line of one run."""
  spec = f"{config}:{run['arg']}" if run["arg"] else config
  return [sys.executable, "-m", "train", "--config", spec, "--workdir", workdir,
          *(f"--config.{key}={value}" for key, value in run["overrides"].items())]


def _config(workdir: str) -> ml_collections.ConfigDict | None:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def final_eval(workdir: str) -> dict | None:
  """The eval metrics logged at the run's last step (config.json's run.steps), or None while
  the run has not got there."""
  config = _config(workdir)
  if config is None or not os.path.exists(os.path.join(workdir, "metrics.jsonl")):
    return None
  for record in reversed(read_metrics(workdir)):
    if record.get("step") == config.run.steps and any(k.startswith("eval_") for k in record):
      return record
  return None


def model_size(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(parameters, recurrent state bytes of one sequence at the task's length) of a run's
  model, from shapes alone."""
  task = build_task(config.task)
  facts = task.model_facts()
  model = build_model(config.model, facts)
  inputs = jnp.zeros((1, 2, 8) if facts.two_tower else (1, 8), jnp.int32)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), inputs))["params"]
  length = config.task.get("seq_len", config.task.get("max_length", 1))
  return (int(sum(np.prod(p.shape) for p in jax.tree.leaves(params))),
          state_bytes(model, 1, length))


def result_row(name: str, workdir: str, cmd: list[str], status: str) -> dict:
  """One CSV row (CSV_COLUMNS) of a run."""
  row = dict.fromkeys(CSV_COLUMNS, "")
  row.update(name=name, status=status, command=" ".join(cmd[1:]))
  config = _config(workdir)
  if config is not None:
    params, state = model_size(config)
    row.update(model=config.model.get("mixer", config.model.architecture),
               d_model=config.model.get("d_model", ""), n_layers=config.model.get("n_layers", ""),
               params=params, state_bytes=state, steps=config.run.steps)
  final = final_eval(workdir) or {}
  row.update(eval_accuracy=final.get("eval_accuracy", ""), eval_loss=final.get("eval_loss", ""))
  return row


def run_one(config: str, run: dict, root: str) -> str:
  """Runs (or resumes) one run unless it has finished; its status: done | skipped | failed."""
  workdir = os.path.join(root, run["name"])
  if final_eval(workdir) is not None:
    return "skipped"
  with open(os.path.join(root, run["name"] + ".log"), "a") as log:
    done = subprocess.run(command(config, run, workdir), stdout=log, stderr=subprocess.STDOUT)
  return "done" if done.returncode == 0 and final_eval(workdir) is not None else "failed"


def write_csv(path: str, rows: list[dict]) -> None:
  """rows as CSV (CSV_COLUMNS), replacing the file at once."""
  with open(path + ".tmp", "w", newline="") as f:
    writer = csv.DictWriter(f, CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
  os.replace(path + ".tmp", path)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("sweep", help="a sweep file (CONFIG and get_sweep())")
  parser.add_argument("--root", required=True, help="folder of the runs' workdirs")
  parser.add_argument("--workers", type=int, default=1, help="runs at a time")
  parser.add_argument("--only", type=lambda s: s.split(","), default=None,
                      help="comma-separated run names")
  parser.add_argument("--list", action="store_true", help="print the runs' commands only")
  args = parser.parse_args(argv)
  try:
    config, runs = load_sweep(args.sweep)
  except ValueError as e:
    parser.error(str(e))
  if args.only:
    unknown = sorted(set(args.only) - {run["name"] for run in runs})
    if unknown:
      parser.error(f"unknown run(s) {', '.join(unknown)}")
    runs = [run for run in runs if run["name"] in args.only]
  if args.workers < 1:
    parser.error(f"--workers={args.workers}: expected at least 1")
  os.makedirs(args.root, exist_ok=True)
  commands = {run["name"]: command(config, run, os.path.join(args.root, run["name"]))
              for run in runs}
  if args.list:
    for cmd in commands.values():
      print(" ".join(cmd))
    return 0
  with concurrent.futures.ThreadPoolExecutor(args.workers) as pool:
    futures = {run["name"]: pool.submit(run_one, config, run, args.root) for run in runs}
    for name, future in futures.items():
      print(f"{name}: {future.result()}", flush=True)
  rows = [result_row(name, os.path.join(args.root, name), commands[name],
                     futures[name].result()) for name in futures]
  write_csv(os.path.join(args.root, "results.csv"), rows)
  print(f"wrote {os.path.join(args.root, 'results.csv')}")
  return 0 if all(row["status"] != "failed" for row in rows) else 1


if __name__ == "__main__":
  sys.exit(main())
