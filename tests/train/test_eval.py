"""`python -m train.eval`: the metrics of a checkpoint, without training."""
import os
import re
import subprocess
import sys

import pytest

from train.loop import train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A tiny MQAR minGRU run of 4 steps, checkpoints at 2 and 4; (workdir, final metrics)."""
  sys.path.insert(0, ROOT)
  from configs.synthetic import mqar  # noqa: PLC0415
  config = mqar.get_config("model=mingru")
  config.task.update(seq_len=32, num_pairs=2)
  config.model.update(d_model=16, n_layers=1)
  config.run.update(steps=4, batch_size=4, eval_batches=2, eval_every=4, checkpoint_every=2,
                    keep_checkpoints=3, progress=False)
  path = str(tmp_path_factory.mktemp("eval"))
  return path, train_and_evaluate(config, path)


def _eval(*args):
  return subprocess.run([sys.executable, "-m", "train.eval", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


def _metrics(stdout):
  return {k: float(v) for k, v in re.findall(r"(\w+)=([-\d.naninf]+)", stdout)}


def test_eval_prints_the_metrics_of_the_latest_and_of_a_given_step(workdir):
  path, final = workdir
  latest = _eval(f"--workdir={path}")
  assert latest.returncode == 0, latest.stderr
  assert latest.stdout.startswith("step 4 eval: ")
  metrics = _metrics(latest.stdout)
  assert metrics["eval_loss"] == pytest.approx(final["eval_loss"], abs=1e-4)
  assert metrics["eval_accuracy"] == pytest.approx(final["eval_accuracy"], abs=1e-4)
  earlier = _eval(f"--workdir={path}", "--step", "2")
  assert earlier.returncode == 0, earlier.stderr
  assert earlier.stdout.startswith("step 2 eval: ")
  assert _metrics(earlier.stdout)["eval_loss"] != metrics["eval_loss"]


@pytest.mark.parametrize("args, message", [
    (["--step", "3"], r"error: no checkpoint of step 3 in .*; kept: 2, 4"),
    (["--split", "test"], r"error: MQAR: unknown split 'test'; known: train, eval"),
])
def test_eval_errors_are_one_line(workdir, args, message):
  result = _eval(f"--workdir={workdir[0]}", *args)
  assert result.returncode == 1
  assert re.search(message, result.stderr.strip().splitlines()[-1]), result.stderr
