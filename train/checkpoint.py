"""Checkpoints with orbax: periodic and final saves, keep-N, atomic (an interrupted save is
discarded on restart), and resume of the train state together with the data position. A
checkpoint that cannot be read is set aside and the run resumes from the newest readable one."""
from __future__ import annotations

import os
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

CHECKPOINTS = "checkpoints"


class CheckpointError(RuntimeError):
  """No checkpoint of the workdir can be restored."""


def has_checkpoints(workdir: str) -> bool:
  """Whether `workdir` holds a finished checkpoint (a step folder, as orbax names them)."""
  directory = os.path.join(workdir, CHECKPOINTS)
  return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def _on_every_process(ok: bool) -> bool:
  """Whether `ok` holds on all processes, so that they all take the same branch."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


def _first_line(error: Exception | None) -> str:
  """An error's first line, for a one-line message (None: it failed on another process)."""
  if error is None:
    return "failed on another process"
  lines = str(error).strip().splitlines()
  return lines[0][:200] if lines else type(error).__name__


class Checkpointer:
  """Saves {state: pytree, data: the grain iterator state} under `workdir/checkpoints`."""

  def __init__(self, workdir: str, every_steps: int, keep: int):
    self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINTS)
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=every_steps, create=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def latest_saved(self) -> int | None:
    """The newest step whose save has completed (waits for a pending save)."""
    self.manager.wait_until_finished()
    return self.manager.latest_step()

  def _restore(self, step: int, abstract_state) -> tuple[dict | None, Exception | None]:
    """(restored, None) or (None, the error) of one step."""
    try:
      return self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore())), None
    except Exception as e:  # noqa: BLE001 (orbax/tensorstore raise bare Exceptions on bad files)
      return None, e

  def restore(self, abstract_state, set_aside: bool = True):
    """(state, data_state) of the newest checkpoint that restores, or None when there is none.

    Newer steps that fail while an older one restores are unreadable: each is named in one
    line and (with `set_aside`) moved to checkpoints/corrupt-<step>-<time>, never deleted.
    All processes try the same steps in the same order and agree on each outcome. When no
    step restores (a run of another structure), CheckpointError names the newest's error
    and nothing is moved."""
    failed = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      restored, error = self._restore(step, abstract_state)
      if _on_every_process(error is None):
        self._set_aside(failed, step, set_aside)
        return restored["state"], restored["data"]
      failed.append((step, error))
    if failed:
      step, error = failed[0]
      raise CheckpointError(f"no checkpoint in {self.directory} can be restored; step {step}: "
                            f"{_first_line(error)}")
    return None

  def _set_aside(self, failed: list, good: int, move: bool) -> None:
    """Names each unreadable step of `failed` [(step, error)] in one line and, with `move`,
    moves it to checkpoints/corrupt-<step>-<time> (process 0; the others wait for it)."""
    if jax.process_index() == 0:
      for step, error in failed:
        note = f"checkpoint step {step} is unreadable ({_first_line(error)})"
        if move:
          target = os.path.join(self.directory,
                                f"corrupt-{step}-{time.strftime('%Y%m%d-%H%M%S')}")
          os.rename(os.path.join(self.directory, str(step)), target)
          note += f"; moved to {target}"
        print(f"{note}; resuming from step {good}", flush=True)
    if failed and move:
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices("checkpoint: set aside")
      self.manager.reload()

  def save(self, step: int, state, data_state: dict, force: bool = False) -> bool:
    """Saves when `step` is due (or `force`); asynchronous, returns whether it saved."""
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=force)

  def close(self) -> None:
    """Waits for pending saves."""
    self.manager.wait_until_finished()
    self.manager.close()


def abstract(shapes, shardings):
  """What `restore` needs: the shapes and dtypes of the state with the shardings to restore
  into (a checkpoint written on any mesh restores onto these)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      shapes, shardings)
