"""The command line a new user meets: `seqmodels-train` (= `python -m train`) --help, mixer
options as dotted keys, and the package's distribution name."""
import importlib.metadata
import json
import os
import subprocess
import sys

import ml_collections
import pytest

from train import config_lib, main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MQAR_CONFIG = os.path.join(ROOT, "configs", "synthetic", "mqar.py")
SCRIPT = os.path.join(os.path.dirname(sys.executable), "seqmodels-train")


@pytest.mark.parametrize("command", [[SCRIPT], [sys.executable, "-m", "train"]])
def test_help_lists_the_flags_and_exits_0(command):
  result = subprocess.run([*command, "--help"], cwd=ROOT, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  for flag in ("--config", "--workdir", "--coordinator_address", "--num_processes",
               "--process_id", "--config.model.mixer_kwargs.MIXER.OPTION=VALUE"):
    assert flag in result.stdout, flag


def test_the_distribution_is_seqmodels_jax_with_the_seqmodels_train_command():
  dist = importlib.metadata.distribution("seqmodels-jax")
  scripts = {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}
  assert scripts == {"seqmodels-train": "train.main:run"}


def _locked_config(model):
  config = config_lib.base_config(model, "tiny")
  config.model.mixer_kwargs = {"mamba": {"d_state": 8}}
  config.lock()
  return config


def test_dotted_mixer_options_are_set_as_literals():
  argv, options = main.split_mixer_options(
      ["prog", "--config.opt.lr=1", "--config.model.mixer_kwargs.s4d.d_state=32",
       "--config.model.mixer_kwargs.s4d.A_init=inv", "--config.model.mixer_kwargs.mamba.expand=3"])
  assert argv == ["prog", "--config.opt.lr=1"]
  config = _locked_config("s4d_attention")
  with pytest.raises(ValueError, match=r"mixer_kwargs.mamba.expand: the model "
                     r"'s4d_attention' uses only s4d, attention$"):
    main.set_mixer_options(config, options)
  main.set_mixer_options(config, options[:2])
  assert config.model.mixer_kwargs.s4d.to_dict() == {"d_state": 32, "A_init": "inv"}
  config = _locked_config("mamba")
  main.set_mixer_options(config, options[2:])
  assert config.model.mixer_kwargs.mamba.to_dict() == {"d_state": 8, "expand": 3}


@pytest.mark.parametrize("arg, message", [
    ("--config.model.mixer_kwargs.s4d.d_stat=3",
     "error: --config.model.mixer_kwargs.s4d.d_stat: mixer 's4d': unknown option(s) d_stat; "
     "known: A_init, d_state"),
    ("--config.model.mixer_kwargs.s4d.d_state=big",
     "error: --config.model.mixer_kwargs.s4d.d_state: mixer 's4d': option d_state='big' must "
     "be like its default 64"),
    ("--config.model.mixer_kwargs.mamba.d_state=3",
     "error: --config.model.mixer_kwargs.mamba.d_state: the model 's4d' uses only s4d"),
    ("--config.model.mixer_kwargs.s4d=3",
     "error: '--config.model.mixer_kwargs.s4d=3': expected "
     "--config.model.mixer_kwargs.MIXER.OPTION=VALUE"),
])
def test_bad_mixer_options_fail_in_one_line(tmp_path, arg, message):
  result = subprocess.run([sys.executable, "-m", "train", f"--config={MQAR_CONFIG}:model=s4d",
                           f"--workdir={tmp_path}", arg], cwd=ROOT, capture_output=True,
                          text=True)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
  assert result.stderr.startswith(message), result.stderr


def test_a_dotted_mixer_option_reaches_the_run(tmp_path):
  subprocess.run([SCRIPT, f"--config={MQAR_CONFIG}:model=s4d", f"--workdir={tmp_path}",
                  "--config.model.mixer_kwargs.s4d.d_state=32", "--config.run.steps=1",
                  "--config.run.eval_batches=1", "--config.run.progress=False",
                  "--config.model.d_model=16", "--config.task.seq_len=16"],
                 cwd=ROOT, check=True, capture_output=True)
  with open(tmp_path / "config.json") as f:
    config = ml_collections.ConfigDict(json.load(f))
  assert config.model.mixer_kwargs.to_dict() == {"s4d": {"d_state": 32}}
