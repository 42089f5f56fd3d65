"""The README's results table from training runs:

  python -m train.report RUN_DIR... [--readme README.md]

For each run (a workdir of `python -m train` with a real-data task, train/tasks/real.py): the
latest checkpoint's accuracy on the whole test split (`train.eval.evaluate_checkpoint(...,
whole=True)`, cached in RUN_DIR/test_metrics.json), its parameter count and steps, and the
command that completed it (RUN_DIR/command.txt). Runs that differ only in their seed make
one row: the mean and the sample standard deviation over seeds. Each row also shows the
task's baselines (train.baselines: majority class, and 1-NN / linear / bag-of-bytes) on the
same split (cached in ~/.cache/seqmodels/baselines.json). The table replaces what lies
between `<!-- results -->` and `<!-- /results -->` in the README (and is printed).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

import jax
import numpy as np
from flax import linen as nn

from train import baselines as baselines_lib, checkpoint
from train.data import real
from train.eval import evaluate_checkpoint, load_config
from train.loop import build
from train.main import COMMAND_FILE
from train.tasks import build_task

BEGIN, END = "<!-- results -->", "<!-- /results -->"
TEST_FILE = "test_metrics.json"


def test_metrics(workdir: str) -> dict:
  """{step, test_accuracy, test_loss, test_examples} of the latest checkpoint on the whole
  test split, computed once per checkpoint step (cached in workdir/test_metrics.json)."""
  path = os.path.join(workdir, TEST_FILE)
  if os.path.exists(path):
    ckpt = checkpoint.Checkpointer(workdir, every_steps=1, keep=None)
    try:
      latest = ckpt.manager.latest_step()
    finally:
      ckpt.close()
    with open(path) as f:
      cached = json.load(f)
    if cached["step"] == latest:
      return cached
  step, metrics = evaluate_checkpoint(workdir, split="test", whole=True)
  record = {"step": step, **metrics}
  with open(path, "w") as f:
    json.dump(record, f)
  return record


def parameter_count(config) -> int:
  """Parameters of the model a run's config builds (from shapes alone)."""
  task = build_task(config.task)
  inputs = task.dataset("eval", 1, 1)[0]["inputs"]
  return sum(x.size for x in jax.tree.leaves(nn.unbox(build(config, task, inputs).boxed)))


def dataset_name(task_config) -> str:
  """ucr/<problem>, fashion_mnist (permuted), spam_assassin (4096 bytes), ..."""
  name = task_config["name"]
  if "problem" in task_config:
    name += f"/{task_config['problem']}"
  if task_config.get("permuted"):
    name += " (permuted)"
  if "max_length" in task_config:
    name += f" ({task_config['max_length']} bytes)"
  return name


def model_name(model_config) -> str:
  return model_config.get("mixer", model_config["architecture"])


def _group_key(config) -> str:
  """The config without its seeds: runs with equal keys are seeds of one experiment."""
  config = config.to_dict()
  config["task"].pop("seed", None)
  config["run"].pop("seed", None)
  config["run"].pop("progress", None)
  return json.dumps(config, sort_keys=True, default=str)


BASELINES_FILE = os.path.join(real.CACHE, "baselines.json")


def cached(key: str, compute) -> dict:
  """compute() once per task key, kept in ~/.cache/seqmodels/baselines.json (the linear
  Fashion-MNIST baseline takes minutes on a small CPU; delete the file to recompute)."""
  store = {}
  if os.path.exists(BASELINES_FILE):
    with open(BASELINES_FILE) as f:
      store = json.load(f)
  if key not in store:
    store[key] = compute()
    os.makedirs(os.path.dirname(BASELINES_FILE), exist_ok=True)
    with open(BASELINES_FILE, "w") as f:
      json.dump(store, f, indent=1)
  return store[key]


def rows(workdirs: list[str], baseline_fn=baselines_lib.baselines) -> list[dict]:
  """One row per experiment (runs grouped over seeds), in the order first seen."""
  groups: dict[str, dict] = {}
  scores: dict[str, dict] = {}  # task config -> its baselines, computed once
  for workdir in workdirs:
    config = load_config(workdir)
    command_path = os.path.join(workdir, COMMAND_FILE)
    command = (open(command_path).read().strip() if os.path.exists(command_path)
               else "(not recorded)")
    metrics = test_metrics(workdir)
    group = groups.setdefault(_group_key(config), dict(
        dataset=dataset_name(config.task), model=model_name(config.model),
        params=parameter_count(config), steps=metrics["step"], seeds=[], accuracies=[],
        commands=[], examples=metrics["test_examples"],
        baselines=None))
    task_key = json.dumps({k: v for k, v in config.task.items() if k != "seed"},
                          sort_keys=True)
    if task_key not in scores:
      scores[task_key] = cached(task_key, lambda: baseline_fn(build_task(config.task)))
    group["baselines"] = group["baselines"] or scores[task_key]
    group["seeds"].append(config.run.seed)
    group["accuracies"].append(metrics["test_accuracy"])
    group["commands"].append(command)
  return list(groups.values())


def _command(commands: list[str]) -> str:
  """The commands of a group's seeds as one, `seed=S` (and a workdir ending `_S`) standing
  for each seed."""
  if len(commands) == 1:
    return commands[0]
  generic = {re.sub(r"(?<=[:,])seed=\d+", "seed=S", re.sub(r"_\d+(?=( |$))", "_S", c))
             for c in commands}
  return generic.pop() if len(generic) == 1 else " ; ".join(commands)


def table(rows_: list[dict]) -> str:
  """The markdown table of `rows`."""
  lines = ["| dataset | model | params | steps | seeds | test accuracy | majority | baseline "
           "| command |", "|---|---|---|---|---|---|---|---|---|"]
  for r in rows_:
    acc = np.asarray(r["accuracies"])
    score = (f"{acc.mean():.3f} ± {acc.std(ddof=1):.3f}" if len(acc) > 1 else f"{acc[0]:.3f}")
    (name, value), = [(k, v) for k, v in r["baselines"].items() if k != "majority"]
    seeds = ", ".join(map(str, sorted(r["seeds"])))
    lines.append(f"| {r['dataset']} | {r['model']} | {r['params']:,} | {r['steps']} | {seeds} "
                 f"| {score} | {r['baselines']['majority']:.3f} | {name} {value:.3f} "
                 f"| `{_command(r['commands'])}` |")
  return "\n".join(lines)


def write_readme(path: str, text: str) -> None:
  """Replaces what lies between the BEGIN and END markers of `path` with `text`."""
  with open(path) as f:
    readme = f.read()
  if readme.count(BEGIN) != 1 or readme.count(END) != 1:
    raise ValueError(f"{path}: expected one {BEGIN} and one {END} marker")
  head, rest = readme.split(BEGIN)
  _, tail = rest.split(END)
  with open(path, "w") as f:
    f.write(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("workdirs", nargs="+", metavar="RUN_DIR")
  parser.add_argument("--readme", default="README.md", help="'' prints the table only")
  args = parser.parse_args(argv)
  try:
    text = table(rows(args.workdirs))
    if args.readme:
      write_readme(args.readme, text)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  print(text)


if __name__ == "__main__":
  main()
