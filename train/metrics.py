"""Metrics to a JSONL file and TensorBoard event files (tensorboardX); on resume both are cut
back to the restored step so the logs read as one uninterrupted run. And the usage measures
of memory layers."""
from __future__ import annotations

import json
import os

import jax
import numpy as np
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


def memory_rows(intermediates) -> dict:
  """{"row_hits", "row_weights": [tables, N]} from what `layers.MemoryValues` sows in the
  "intermediates" collection (every value table of the model, stacked); {} when the model
  has no memory layer."""
  rows = {"row_hits": [], "row_weights": []}
  for path, leaf in jax.tree_util.tree_leaves_with_path(intermediates):
    name = getattr(path[-1], "key", None)
    if name in rows:
      rows[name].append(leaf)
  return {name: jax.numpy.stack(leaves) for name, leaves in rows.items() if leaves}


def memory_usage(row_hits, row_weights) -> dict[str, float]:
  """The usage measures of Lample et al. (2019, 4.3) of value tables [tables, N], averaged
  over the tables: `memory_rows_hit`, the fraction of rows read at least once, and
  `memory_usage_kl`, KL(p || uniform) = log N + sum_i p_i log p_i of the distribution p of
  the softmax weight the rows received (0: perfectly even use)."""
  row_hits, row_weights = np.asarray(row_hits, np.float64), np.asarray(row_weights, np.float64)
  p = row_weights / np.maximum(row_weights.sum(-1, keepdims=True), 1e-30)
  kl = np.log(p.shape[-1]) + (p * np.log(np.where(p > 0, p, 1.0))).sum(-1)
  return {"memory_rows_hit": float((row_hits > 0).mean()), "memory_usage_kl": float(kl.mean())}
