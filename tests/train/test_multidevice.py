"""Sharded training equals single-device training; checkpoints move between meshes; a
memory layer's value table is split by columns and never gathered whole; two processes
(multi-host over gloo) equal one."""
import json
import math
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.train.multidevice_runs import MESHES, memory_config, memory_run, small_config
from train.loop import train_and_evaluate
from train.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _losses(workdir):
  return np.array([r["loss"] for r in read_metrics(workdir) if "loss" in r])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Single-device reference here, and the 8-device meshes in one subprocess."""
  out = tmp_path_factory.mktemp("multidevice")
  subprocess.run([sys.executable, "-m", "tests.train.multidevice_runs", str(out)], cwd=ROOT,
                 check=True, capture_output=True)
  single = train_and_evaluate(small_config(), str(out / "single"))
  return out, single


@pytest.mark.parametrize("mesh", list(MESHES))
def test_sharded_losses_equal_single_device(runs, mesh):
  out, _ = runs
  reference = _losses(out / "single")
  assert len(reference) == 20
  np.testing.assert_allclose(_losses(out / mesh), reference, rtol=1e-5)


def test_checkpoint_written_on_8_devices_restores_on_1(runs):
  """Resuming the finished fsdp run here (1 device) restores its final state: the eval of the
  restored parameters equals the eval the 8-device run logged."""
  out, _ = runs
  logged = [r for r in read_metrics(out / "fsdp") if "eval_loss" in r][-1]
  restored = train_and_evaluate(small_config(), str(out / "fsdp"))
  np.testing.assert_allclose(restored["eval_loss"], logged["eval_loss"], rtol=1e-5)
  np.testing.assert_allclose(restored["eval_accuracy"], logged["eval_accuracy"])


@pytest.fixture(scope="module")
def memory(runs):
  """(the memory model trained on the 8-device MEMORY_MESH, the same on one device)."""
  out, _ = runs
  return json.loads((out / "memory.json").read_text()), memory_run(memory_config())


def test_sharded_memory_layer_with_sparse_updates_equals_single_device(memory):
  sharded, single = memory
  assert len(single["losses"]) == 8
  np.testing.assert_allclose(sharded["losses"], single["losses"], rtol=1e-5)


def test_value_table_is_split_by_columns_and_never_gathered_whole(memory):
  """N * V / |fsdp x model| bytes of the table per device; no all-gather in the compiled
  step (sparse updates or dense AdamW) yields the table (a result with N rows and N * V
  elements or more)."""
  sharded, single = memory
  N, V = sharded["table_shape"]
  assert sharded["axis_size"] == 4
  assert sharded["device_bytes"] == N * V * sharded["itemsize"] // 4
  assert single["device_bytes"] == N * V * sharded["itemsize"]
  for step, shapes in sharded["all_gathers"].items():
    assert shapes, f"{step}: no all-gather found in the compiled step (the HLO parse broke?)"
    whole = [s for s in shapes if N in s and math.prod(s) >= N * V]
    assert not whole, f"{step} step all-gathers the value table: {whole}"


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_of_four_devices_equal_one_process(tmp_path):
  """`python -m train` launched as 2 processes x 4 CPU devices (gloo) logs the losses of the
  single-process run."""
  command = [sys.executable, "-m", "train",
             f"--config={ROOT}/configs/synthetic/mqar.py:model=attention",
             "--config.run.steps=30", "--config.run.progress=False", "--config.run.log_every=1",
             "--config.model.d_model=32", "--config.run.batch_size=16"]
  single = tmp_path / "single"
  subprocess.run([*command, f"--workdir={single}"], cwd=ROOT, check=True, capture_output=True)
  port = _free_port()
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  procs = [subprocess.Popen([*command, f"--workdir={tmp_path / 'multi'}",
                             f"--coordinator_address=localhost:{port}", "--num_processes=2",
                             f"--process_id={i}"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
           for i in range(2)]
  for p in procs:
    assert p.wait(timeout=600) == 0, p.stderr.read().decode()[-2000:]
  np.testing.assert_allclose(_losses(tmp_path / "multi"), _losses(single), rtol=1e-5)
