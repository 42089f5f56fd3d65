"""Evaluates a checkpoint of a training workdir without training:

  python -m train.eval --workdir runs/mqar [--step N] [--split test] [--all]

Rebuilds the task and model from `workdir/config.json`, restores the parameters of step N
(default: the latest checkpoint) onto the run's mesh and prints the mean metrics over the
split's first run.eval_batches batches (the loop's periodic eval on split "eval"), or with
--all over every example of the split.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import ml_collections
import orbax.checkpoint as ocp

from train import checkpoint
from train.loop import build, evaluate, make_steps, place
from train.tasks import build_task
from train.tasks.base import ENDLESS


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a training run wrote to `workdir/config.json`."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"no config.json in {workdir!r}: not a training workdir")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def restore_state(workdir: str, abstract_state, step: int | None = None):
  """(train state of checkpoint `step` (None: the latest) restored into `abstract_state`
  (shapes with shardings, `checkpoint.abstract`), its step)."""
  ckpt = checkpoint.Checkpointer(workdir, every_steps=1, keep=None)  # None: deletes nothing
  try:
    steps = ckpt.manager.all_steps()
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {workdir!r}/checkpoints")
    step = max(steps) if step is None else step
    if step not in steps:
      raise FileNotFoundError(f"no checkpoint of step {step} in {workdir!r}/checkpoints; "
                              f"kept: {', '.join(map(str, sorted(steps)))}")
    restored = ckpt.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))
  finally:
    ckpt.close()
  return restored["state"], step


MAX_BATCH_TOKENS = 2**17  # whole-split evaluation: the most input values in one batch


def whole_split_batch(num_examples: int, example_size: int) -> int:
  """The largest divisor b of `num_examples` with b * example_size <= MAX_BATCH_TOKENS (at
  least 1): equal batches that cover the split exactly, so the mean of batch means is the
  split's mean."""
  cap = max(1, MAX_BATCH_TOKENS // example_size)
  return max(b for b in range(1, min(cap, num_examples) + 1) if num_examples % b == 0)


def evaluate_checkpoint(workdir: str, step: int | None = None, split: str = "eval",
                        whole: bool = False) -> tuple[int, dict]:
  """(step, {<split>_<metric>: mean}) of checkpoint `step` of `workdir` on `split`, with the
  loop's own building blocks (build, place, make_steps, evaluate): over the first
  run.eval_batches batches, or with `whole` over every example of the split (batches of
  `whole_split_batch`; the metrics then add <split>_examples)."""
  config = load_config(workdir)
  run = config.run
  task = build_task(config.task)
  if whole:
    if split not in task.SPLITS or split == "train":
      raise ValueError(f"--all: expected a finite split of {type(task).__name__}: "
                       f"{', '.join(s for s in task.SPLITS if s != 'train')}")
    count = len(task.examples(split))
    if count >= ENDLESS:
      raise ValueError(f"--all: the {split} split of {type(task).__name__} is endless "
                       "(generated examples); drop --all")
    batch_size = whole_split_batch(count, task.examples(split)[0]["inputs"].size)
    data = task.dataset(split, batch_size, count)
  else:
    data = task.dataset(split, run.batch_size, run.eval_batches * run.batch_size)
  setup = build(config, task, data[0]["inputs"])
  placement = place(config, setup)
  state, step = restore_state(workdir, checkpoint.abstract(setup.abstract_state,
                                                           placement.state), step)
  _, eval_step = make_steps(task, setup, placement)
  metrics = evaluate(eval_step, state.params, data, placement)
  if whole:
    metrics["eval_examples"] = count
  return step, {f"{split}_{name.removeprefix('eval_')}": v for name, v in metrics.items()}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--step", type=int, default=None, help="default: the latest checkpoint")
  parser.add_argument("--split", default="eval", help="a split of the task: eval, test (LRA)")
  parser.add_argument("--all", action="store_true",
                      help="every example of the split (default: run.eval_batches batches)")
  args = parser.parse_args(argv)
  try:
    step, metrics = evaluate_checkpoint(args.workdir, args.step, args.split, args.all)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  print(f"step {step} {args.split}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))


if __name__ == "__main__":
  main()
