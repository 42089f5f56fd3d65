"""Metrics to a JSONL file and TensorBoard event files (tensorboardX); on resume both are cut
back to the restored step so the logs read as one uninterrupted run."""
from __future__ import annotations

import json
import os

from tensorboardX import SummaryWriter


class MetricsWriter:
  """Writes {step, name: value} records to `workdir/metrics.jsonl` and `workdir/tb/` (on the
  chief process; elsewhere `enabled=False` makes it write nothing)."""

  def __init__(self, workdir: str, start_step: int, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    self.path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(self.path):
      with open(self.path) as f:
        kept = [line for line in f if line.strip() and json.loads(line)["step"] <= start_step]
      with open(self.path, "w") as f:
        f.writelines(kept)
    self.file = open(self.path, "a")
    self.tb = SummaryWriter(os.path.join(workdir, "tb"), purge_step=start_step + 1)

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
    self.file.write(json.dumps(record) + "\n")
    self.file.flush()
    for name, value in record.items():
      if name != "step":
        self.tb.add_scalar(name, value, step)

  def close(self) -> None:
    if not self.enabled:
      return
    self.file.close()
    self.tb.close()


def read_metrics(workdir: str) -> list[dict]:
  """The records of `workdir/metrics.jsonl`, in order."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]
