"""Command line of the training loop: parses flags, calls `train_and_evaluate`.

  seqmodels-train --config configs/synthetic/mqar.py:model=s4d --workdir runs/mqar
      [--config.opt.lr=3e-4 ...] [--config.model.mixer_kwargs.s4d.d_state=32 ...]
      [--coordinator_address=HOST:PORT --num_processes=N --process_id=I]

(`python -m train` is the same command.) `--config.KEY=VALUE` overrides a key of the config;
`--config.model.mixer_kwargs.MIXER.OPTION=VALUE` sets an option of one mixer of the model
(VALUE a Python literal, else a string; OPTION among the mixer's fields). A bad config
(unknown key or option, unknown model, invalid value) stops the run before any compilation
with one line naming the key and what it accepts.
"""
from __future__ import annotations

import ast
import os
import shlex
import sys

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from seqmodels import registry
from seqmodels.models import model_mixers, model_patterns
from train import config_lib
from train.checkpoint import CheckpointError
from train.loop import NonFiniteError, train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Run config: path/to/config.py[:arg], e.g. "
    "configs/synthetic/mqar.py:model=s4d,size=small; override keys with --config.KEY=VALUE.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, metrics.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for a multi-process run.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "This process's index in [0, num_processes).")


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """`path/to/config.py[:arg]` -> its get_config(arg)."""
  path, _, arg = spec.partition(":")
  try:
    module = config_lib.load_python_file(path, "config file",
                                         "configs/synthetic/mqar.py:model=attention")
  except ValueError as e:
    raise ValueError(f"--config: {e}") from None
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


# What stops a run in one line: a bad config or workdir (ValueError), missing data, no
# readable checkpoint, a non-finite loss or state.
RUN_ERRORS = (ValueError, FileNotFoundError, CheckpointError, NonFiniteError)
MIXER_OPTION = "--config.model.mixer_kwargs."
HELP = ("-h", "-?", "--help", "--helpshort")


def split_mixer_options(argv: list[str]) -> tuple[list[str], list[tuple[str, str, str]]]:
  """(argv without them, [(mixer, option, value)]) of the --config.model.mixer_kwargs.*
  arguments: ml_collections refuses keys the config lacks, so these are set after parsing."""
  rest, options = [], []
  for arg in argv:
    if not arg.startswith(MIXER_OPTION):
      rest.append(arg)
      continue
    key, sep, value = arg[len(MIXER_OPTION):].partition("=")
    mixer, dot, option = key.partition(".")
    if not (sep and dot and option and "." not in option):
      raise ValueError(f"{arg!r}: expected {MIXER_OPTION}MIXER.OPTION=VALUE")
    options.append((mixer, option, value))
  return rest, options


def _literal(value: str):
  """A Python literal (32, 1e-3, True, (1.0, 16.0)) or else the string itself."""
  try:
    return ast.literal_eval(value)
  except (ValueError, SyntaxError):
    return value


def set_mixer_options(config: ml_collections.ConfigDict,
                      options: list[tuple[str, str, str]]) -> None:
  """config.model.mixer_kwargs[mixer][option] = value for each (mixer, option, value), each
  checked against the mixers of the model's pattern and that mixer's options."""
  used = model_mixers(config.model) if options else ()
  for mixer, option, value in options:
    where = f"{MIXER_OPTION}{mixer}.{option}"
    if mixer not in used:
      patterns = " + ".join(map(repr, model_patterns(config.model).values()))
      raise ValueError(f"{where}: the model {patterns} uses only "
                       f"{', '.join(dict.fromkeys(used))}")
    try:
      registry.check_mixer_options(mixer, {option: _literal(value)})
      with config.unlocked():
        kwargs = config.model.mixer_kwargs
        kwargs[mixer] = {**kwargs.get(mixer, {}), option: _literal(value)}
    except (ValueError, TypeError) as e:
      raise ValueError(f"{where}: {e}") from None


def usage() -> str:
  """The --help text: this module's docstring and its flags."""
  return f"{__doc__}\n{flags.FLAGS.module_help(sys.modules[__name__])}"


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
  """absl's parse, plus: --help prints `usage()` and exits 0 (absl's exits 1), mixer options
  are set after the config is loaded, and every error is one line."""
  if any(arg in HELP for arg in argv[1:]):
    print(usage())
    sys.exit(0)
  try:
    argv, mixer_options = split_mixer_options(argv)
    sys.argv = argv  # config_flags reads its --config.* overrides from sys.argv
    spec = _config_spec(argv)
    if spec is not None:
      check_overrides(load_config_file(spec), argv)
    rest = flags.FLAGS(argv)
    set_mixer_options(_CONFIG.value, mixer_options)
  except (ValueError, flags.Error) as e:
    sys.exit(f"error: {e}")
  return rest


def _main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  if _NUM_PROCESSES.value > 1:
    initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  try:
    metrics = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except RUN_ERRORS as e:  # one line, no traceback
    sys.exit(f"error: {e}")
  if jax.process_index() == 0:  # the command that completed the run (train.report shows it)
    with open(os.path.join(_WORKDIR.value, COMMAND_FILE), "w") as f:
      f.write(shlex.join(["python", "-m", "train", *_ARGV]) + "\n")
  print("final eval: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
  print(f"outputs in {os.path.abspath(_WORKDIR.value)} (config.json, metrics.jsonl, tb/, "
        "checkpoints/)")


COMMAND_FILE = "command.txt"
_ARGV: list[str] = []


def run():
  """Console-script entry point (`seqmodels-train`)."""
  _ARGV[:] = sys.argv[1:]
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(_main, flags_parser=_parse_flags)
