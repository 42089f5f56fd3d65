"""A run's bookkeeping never loses work: an unreadable checkpoint is set aside and the run
resumes from the newest readable one, one run per workdir, only safe config changes on
resume (recorded), only finite states saved, and one-line errors instead of tracebacks."""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from train import workdir as workdir_lib
from train.loop import NonFiniteError, train_and_evaluate
from train.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MQAR_CONFIG = os.path.join(ROOT, "configs", "synthetic", "mqar.py")


def _tiny_config(model="mingru", steps=20, **run):
  sys.path.insert(0, ROOT)
  from configs.synthetic import mqar  # noqa: PLC0415 (configs is not an installed package)
  config = mqar.get_config(f"model={model}")
  config.model.d_model = 32
  config.task.seq_len = 32
  config.run.update(**{"steps": steps, "progress": False, "eval_every": 1000, "batch_size": 8,
                       "eval_batches": 1, "checkpoint_every": 10, **run})
  return config


def _steps(workdir):
  return sorted(int(p) for p in os.listdir(os.path.join(workdir, "checkpoints")) if p.isdigit())


def _cli(*args, module="train", python=()):
  return subprocess.run([sys.executable, *python, "-m", module, *args], cwd=ROOT,
                        capture_output=True, text=True)


def _assert_one_line_error(result, *parts):
  assert result.returncode != 0, result.stdout
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  assert "Traceback" not in result.stderr
  for part in parts:
    assert part in lines[0], lines[0]


def test_an_unreadable_newest_checkpoint_is_set_aside_and_the_run_resumes(tmp_path, capsys):
  workdir = str(tmp_path)
  train_and_evaluate(_tiny_config(steps=20, log_every=5), workdir)
  assert _steps(workdir) == [10, 20]
  data = max(glob.glob(f"{workdir}/checkpoints/20/state/**/d/*", recursive=True),
             key=os.path.getsize)
  with open(data, "r+b") as f:
    f.truncate(os.path.getsize(data) // 2)
  capsys.readouterr()
  metrics = train_and_evaluate(_tiny_config(steps=30, log_every=5), workdir)
  assert np.isfinite(metrics["eval_loss"])
  notes = [line for line in capsys.readouterr().out.splitlines() if "unreadable" in line]
  assert len(notes) == 1 and notes[0].startswith("checkpoint step 20 is unreadable")
  assert "resuming from step 10" in notes[0]
  aside = [p for p in os.listdir(f"{workdir}/checkpoints") if p.startswith("corrupt-20-")]
  assert len(aside) == 1 and os.path.exists(f"{workdir}/checkpoints/{aside[0]}/state")
  assert _steps(workdir) == [20, 30]
  assert [r["step"] for r in read_metrics(workdir) if "loss" in r] == list(range(5, 31, 5))


def test_a_second_run_in_a_locked_workdir_stops_in_one_line(tmp_path):
  with workdir_lib.lock(str(tmp_path)):
    result = _cli(f"--config={MQAR_CONFIG}", f"--workdir={tmp_path}")
  _assert_one_line_error(result, "is in use by", f"pid {os.getpid()} on ")
  assert not (tmp_path / "checkpoints").exists()


def test_a_lock_left_by_a_killed_run_is_not_in_the_way(tmp_path):
  with open(tmp_path / workdir_lib.LOCK, "w") as f:
    f.write("pid 999999 on elsewhere\n")  # no process holds the flock
  with workdir_lib.lock(str(tmp_path)):
    with open(tmp_path / workdir_lib.LOCK) as f:
      assert f.read().startswith(f"pid {os.getpid()} on ")
    with pytest.raises(workdir_lib.WorkdirError, match=f"in use by pid {os.getpid()}"):
      with workdir_lib.lock(str(tmp_path)):
        pass
  with workdir_lib.lock(str(tmp_path)):  # released at the end of the run
    pass


def test_changed_keys_are_dotted_leaves():
  old = {"model": {"d_model": 64, "kw": {}}, "opt": {"lr": 1e-3}}
  new = {"model": {"d_model": 60, "kw": {"s4d": {"d_state": 8}}}, "opt": {"lr": 1e-3}}
  assert workdir_lib.changed_keys(old, new) == {
      "model.d_model": (64, 60), "model.kw.s4d.d_state": (workdir_lib.ABSENT, 8)}


@pytest.mark.parametrize("key, value", [("model.d_model", 48), ("model.mixer", "swa"),
                                        ("run.batch_size", 4), ("task.seed", 3)])
def test_a_resume_refuses_other_changes_before_writing(tmp_path, key, value):
  workdir = str(tmp_path)
  train_and_evaluate(_tiny_config("attention", steps=2, checkpoint_every=1), workdir)
  before = (tmp_path / "config.json").read_text()
  config = _tiny_config("attention", steps=4, checkpoint_every=1)
  section, name = key.split(".")
  config[section][name] = value
  with pytest.raises(workdir_lib.WorkdirError, match=f"another config: {key} "):
    train_and_evaluate(config, workdir)
  assert (tmp_path / "config.json").read_text() == before
  assert _steps(workdir) == [1, 2]


def test_a_resume_records_allowed_changes_and_only_finite_states_are_saved(tmp_path):
  """lr=1e39 makes step 4's update NaN while its loss and gradients are finite."""
  workdir = str(tmp_path)
  train_and_evaluate(_tiny_config(steps=3, checkpoint_every=1), workdir)
  config = _tiny_config(steps=6, checkpoint_every=1)
  lr, config.opt.lr = config.opt.lr, 1e39
  with pytest.raises(NonFiniteError, match=r"^non-finite parameters or optimizer state after "
                     r"step 4; the last good checkpoint is step 3$"):
    train_and_evaluate(config, workdir)
  assert _steps(workdir) == [2, 3]
  with open(tmp_path / workdir_lib.HISTORY) as f:
    records = [json.loads(line) for line in f]
  # the memory group's lr is a FieldReference to 10 * opt.lr: it changes with it
  memory_lr = config.opt.groups.memory.lr
  assert records == [{"step": 3, "changes": {"opt.groups.memory.lr": [10 * lr, memory_lr],
                                             "opt.lr": [lr, 1e39], "run.steps": [3, 6]}}]
  with open(tmp_path / "config.json") as f:
    assert json.load(f)["opt"]["lr"] == 1e39


def test_a_non_finite_first_update_stops_in_one_line_and_saves_nothing(tmp_path):
  """(numpy warns that 1e39 overflows float32 when the schedule is traced: not ours to hide
  from users, ignored here.)"""
  result = _cli(f"--config={MQAR_CONFIG}:model=mingru", f"--workdir={tmp_path}",
                "--config.opt.lr=1e39", "--config.run.checkpoint_every=1",
                "--config.run.steps=5", "--config.run.progress=False",
                "--config.model.d_model=32", "--config.task.seq_len=32",
                "--config.run.batch_size=8", "--config.run.eval_batches=1",
                python=("-W", "ignore::RuntimeWarning"))
  _assert_one_line_error(result, "after step 1; no checkpoint was saved")
  assert not any(p.isdigit() for p in os.listdir(tmp_path / "checkpoints"))


def test_a_workdir_that_is_a_file_stops_in_one_line(tmp_path):
  path = tmp_path / "file"
  path.write_text("")
  _assert_one_line_error(_cli(f"--config={MQAR_CONFIG}", f"--workdir={path}"), "is a file")


def test_missing_char_lm_data_stops_in_one_line(tmp_path):
  result = _cli(f"--config={os.path.join(ROOT, 'configs', 'lm', 'chars.py')}",
                f"--workdir={tmp_path / 'run'}", f"--config.task.data={tmp_path / 'none'}")
  _assert_one_line_error(result, "no text files match", "python -m train.data.moby_dick")


def test_sampling_a_classifier_workdir_stops_in_one_line(tmp_path):
  sys.path.insert(0, ROOT)
  from configs.lra import text  # noqa: PLC0415
  (tmp_path / "config.json").write_text(text.get_config(None).to_json_best_effort())
  result = _cli(f"--workdir={tmp_path}", module="train.sample")
  _assert_one_line_error(result, "model.architecture='classifier'", "language models")
