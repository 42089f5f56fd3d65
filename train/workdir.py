"""The run's workdir: one run at a time (a lock held by process 0 for the run), and the
config a resumed run may change (RESUMABLE), checked against the workdir's config.json before
anything is written; accepted changes are recorded in config_history.jsonl."""
from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import json
import os
import socket

import jax

from train import checkpoint

CONFIG, HISTORY, LOCK = "config.json", "config_history.jsonl", ".lock"
# What a resumed run may change: run length, learning rates and schedule, intervals, logging,
# the device mesh (a checkpoint restores onto any mesh), and dense or sparse updates of the
# memory tables (one optimizer-state layout).
RESUMABLE = ("run.steps", "run.log_every", "run.eval_every", "run.eval_batches",
             "run.checkpoint_every", "run.keep_checkpoints", "run.progress", "opt.lr",
             "opt.ssm_lr", "opt.groups.*.lr", "opt.warmup_steps", "opt.final_lr_ratio",
             "model.memory.sparse_updates", "mesh.*")
ABSENT = "<absent>"


class WorkdirError(ValueError):
  """The workdir cannot hold this run (a file, in use, or another config)."""


def _flatten(tree: dict, prefix: str = "") -> dict:
  """{dotted key: leaf} of a nested dict."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def changed_keys(old: dict, new: dict) -> dict[str, tuple]:
  """{dotted key: (old value, new value)} of the leaves that differ between two nested dicts
  (a key on one side only reads as ABSENT on the other)."""
  old, new = _flatten(old), _flatten(new)
  changes = {key: (old.get(key, ABSENT), new.get(key, ABSENT)) for key in old.keys() | new.keys()}
  return {key: change for key, change in sorted(changes.items()) if change[0] != change[1]}


def _as_json(config) -> dict:
  return json.loads(config.to_json_best_effort())


def check_resume(config, workdir: str) -> dict[str, tuple]:
  """The changes of `config` from the config of the run whose checkpoints `workdir` holds ({}
  for a new run); a WorkdirError naming every key that a resumed run may not change (all but
  RESUMABLE). Writes nothing."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f"--workdir {workdir!r} is a file, not a directory")
  path = os.path.join(workdir, CONFIG)
  if not (os.path.exists(path) and checkpoint.has_checkpoints(workdir)):
    return {}
  with open(path) as f:
    changes = changed_keys(json.load(f), _as_json(config))
  refused = [f"{key} ({old!r} -> {new!r})" for key, (old, new) in changes.items()
             if not any(fnmatch.fnmatchcase(key, pattern) for pattern in RESUMABLE)]
  if refused:
    raise WorkdirError(f"{workdir!r} holds checkpoints of a run with another config: "
                       f"{', '.join(refused)}; a resumed run may change only "
                       f"{', '.join(RESUMABLE)} (or use a new --workdir)")
  return changes


def record_config(config, workdir: str, changes: dict[str, tuple], step: int) -> None:
  """Writes config.json (on process 0) and appends a resumed run's `changes` to
  config_history.jsonl as {step: the step they apply after, changes: {key: [old, new]}}."""
  if jax.process_index() != 0:
    return
  with open(os.path.join(workdir, CONFIG), "w") as f:
    f.write(config.to_json_best_effort(indent=1))
  if changes:
    with open(os.path.join(workdir, HISTORY), "a") as f:
      f.write(json.dumps({"step": step, "changes": changes}) + "\n")


@contextlib.contextmanager
def lock(workdir: str):
  """Holds an exclusive flock on workdir/.lock on process 0 for the `with` block (the other
  processes of a multi-process run share the workdir). The file names its holder; a second
  run gets a WorkdirError naming it. The OS releases the lock of a killed run, so a lock is
  never stale."""
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() != 0:
    yield
    return
  path = os.path.join(workdir, LOCK)
  with open(path, "a+") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or "another process"
      raise WorkdirError(f"workdir {workdir!r} is in use by {holder} (it holds {path}); "
                         "wait for that run to end or use another --workdir") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    f.flush()
    yield
