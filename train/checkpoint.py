"""Checkpoints with orbax: periodic and final saves, keep-N, atomic (an interrupted save is
discarded on restart), and resume of the train state together with the data position."""
from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves {state: pytree, data: the grain iterator state} under `workdir/checkpoints`."""

  def __init__(self, workdir: str, every_steps: int, keep: int):
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.manager = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=every_steps, create=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def restore(self, abstract_state):
    """(state, data_state) of the latest checkpoint, or None when there is none."""
    step = self.manager.latest_step()
    if step is None:
      return None
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored["state"], restored["data"]

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
