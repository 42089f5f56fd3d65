"""Start-up: a one-screen model summary with the parameters per optimizer group, and a
tokens/s that leaves the compilation of the first step out."""
import os
import sys
import time

import jax.numpy as jnp
import ml_collections
import pytest

from train import optim
from train.loop import Progress, build
from train.metrics import read_metrics
from train.summary import model_summary
from train.tasks import build_task

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_summary_names_every_block_and_counts_every_group():
  sys.path.insert(0, ROOT)
  from configs.synthetic import mqar  # noqa: PLC0415
  config = mqar.get_config("model=s4d_attention")
  config.model.update(d_model=16, n_layers=3)
  task = build_task(config.task)
  setup = build(config, task, jnp.zeros((2, 8), jnp.int32))
  text = model_summary(config.model, setup.boxed)
  lines = text.splitlines()
  assert len(lines) <= 25 and max(map(len, lines)) <= 100  # one screen
  assert "backbone/blocks_0 (s4d)" in text and "backbone/blocks_2 (attention)" in text
  sizes = optim.group_sizes(setup.boxed)
  assert lines[-1] == f"parameters: {sum(sizes.values()):,} (" + ", ".join(
      f"{g} {n:,}" for g, n in sizes.items()) + ")"
  assert sizes["ssm"] > 0
  rows = [int(line.split()[-1].replace(",", "")) for line in lines[1:-1]]
  assert sum(rows) == sum(sizes.values())


def test_first_tokens_per_second_excludes_compilation(tmp_path):
  run = ml_collections.ConfigDict(dict(steps=4, log_every=2, progress=False))
  progress = Progress(str(tmp_path), run, 0, tokens_per_step=1000, enabled=True)
  time.sleep(1.0)  # the first step compiles
  for step in range(1, 5):
    progress.train(step, {"loss": 1.0, "accuracy": 0.5})
    time.sleep(0.01)
  progress.close()
  records = read_metrics(str(tmp_path))
  assert [r["step"] for r in records] == [2, 4]
  # 1 step in ~0.01 s: ~1e5 tokens/s; with the compilation counted it would be < 2e3
  assert records[0]["tokens_per_s"] > 2e4
  assert records[1]["tokens_per_s"] == pytest.approx(1e5, rel=0.7)
