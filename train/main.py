"""Command line of the training loop: parses flags, calls `train_and_evaluate`.

  python -m train --config configs/synthetic/mqar.py:model=attention --workdir runs/mqar \
      [--config.opt.lr=3e-4 ...]

A bad config (unknown override key, unknown model, invalid value) stops the run before any
compilation with one line naming the key and what it accepts.
"""
from __future__ import annotations

import importlib.util
import os
import sys

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from train.loop import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config file (configs/...).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, metrics.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for a multi-process run.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "This process's index in [0, num_processes).")


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """`path/to/config.py[:arg]` -> its get_config(arg)."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ValueError(f"--config: no config file at {path!r} (expected e.g. "
                     "configs/synthetic/mqar.py:model=attention)")
  module_spec = importlib.util.spec_from_file_location("run_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def check_overrides(config: ml_collections.ConfigDict, argv: list[str]) -> None:
  """Raises a ValueError for the first `--config.a.b=...` whose key the config lacks."""
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    key = arg[len("--config."):].partition("=")[0]
    node = config
    for depth, part in enumerate(key.split(".")):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        where = ".".join(key.split(".")[:depth]) or "config"
        known = (", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict)
                 else "nothing: it is a value")
        raise ValueError(f"unknown config key {key!r}; {where} has {known}")
      node = node[part]


def initialize_distributed(coordinator_address: str, num_processes: int,
                           process_id: int) -> None:
  """Joins a multi-process run (one process per host); on CPU the collectives go through
  gloo. Must run before any other JAX call."""
  if jax.config.jax_platforms in (None, "", "cpu") and not _has_accelerator():
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes, process_id)


def _has_accelerator() -> bool:
  return any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/accel0"))


def _config_spec(argv: list[str]) -> str | None:
  """The value of --config (as `--config=X` or `--config X`)."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.partition("=")[2]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _parse_flags(argv: list[str]) -> list[str]:
  spec = _config_spec(argv)
  if spec is not None:
    try:
      check_overrides(load_config_file(spec), argv)
    except ValueError as e:
      sys.exit(f"error: {e}")
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"error: {e}")


def _main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  if _NUM_PROCESSES.value > 1:
    initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  try:
    metrics = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except ValueError as e:  # config errors found by validation: one line, no traceback
    sys.exit(f"error: {e}")
  print("final eval: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
  print(f"outputs in {os.path.abspath(_WORKDIR.value)} (config.json, metrics.jsonl, tb/, "
        "checkpoints/)")


def run():
  """Console-script entry point (`seqmodels-train`)."""
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(_main, flags_parser=_parse_flags)
