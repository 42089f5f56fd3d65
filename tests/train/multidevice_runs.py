"""Runs the same small MQAR training on several device meshes, for the multi-device tests.

  python -m tests.train.multidevice_runs OUT_DIR   # in a process with 8 virtual CPU devices

Writes OUT_DIR/<mesh name>/ workdirs (metrics.jsonl, checkpoints). `small_config` is the one
config every run (and the single-device reference in the tests) uses. Then a memory-layer
model (`memory_config`: sparse updates, the value table split by columns) trained on
MEMORY_MESH: its losses, table bytes per device and the all-gathers of its compiled steps in
OUT_DIR/memory.json (`memory_run`).
"""
import json
import math
import os
import re
import sys

MESHES = {"data_parallel": {"data": 8}, "fsdp": {"data": 2, "fsdp": 4},
          "tensor_parallel": {"data": 2, "fsdp": 2, "model": 2}}


def small_config(mesh=None):
  """A 20-step tiny attention LM on MQAR (batch 16, T 32; 2 heads and MLP width 64, so that
  the model axis shards them)."""
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
  from configs.synthetic import mqar  # noqa: PLC0415 (configs is not an installed package)
  config = mqar.get_config("model=attention")
  config.model.update(d_model=32, n_layers=2, mlp_expand=2.0)
  config.model.mixer_kwargs = {"attention": {"num_heads": 2, "head_dim": 16}}
  config.task.update(seq_len=32)
  config.run.update(steps=20, batch_size=16, log_every=1, eval_every=20, checkpoint_every=20,
                    eval_batches=2, progress=False)
  config.mesh.update(**{"data": 1, "fsdp": 1, "model": 1, **(mesh or {})})
  return config


MEMORY_MESH = {"data": 2, "fsdp": 2, "model": 2}  # the table's columns over fsdp x model


def memory_config(mesh=None):
  """small_config without sequence mixing (the memory is under test) and with a Memory+ layer
  in block 1: 1024 value rows of V = 32, sparse updates."""
  config = small_config(mesh)
  config.model.mixer = "none"
  config.model.mixer_kwargs = {}
  config.model.memory.update(layers=(1,), n_keys=32, heads=2, topk=4, k_dim=16, v_dim=32,
                             sparse_updates=True)
  return config


def memory_run(config, steps: int = 8, hlo: bool = False) -> dict:
  """Trains `config` (memory_config) for `steps` steps with the loop's train step on its mesh.
  Returns {losses, table_shape, itemsize, axis_size (devices the table's columns are split
  over), device_bytes (of the table on one device), all_gathers (with `hlo`: {sparse, dense:
  the result shapes of every all-gather in the compiled train step with sparse updates and
  with dense AdamW})}."""
  import jax  # noqa: PLC0415
  from train import checkpoint, loop  # noqa: PLC0415
  from train.tasks import build_task  # noqa: PLC0415
  task = build_task(config.task)
  data = task.dataset("train", config.run.batch_size)
  compiled = {}
  for name in ("dense", "sparse") if hlo else ("sparse",):  # the last one's setup trains
    config.model.memory.sparse_updates = name == "sparse"
    setup = loop.build(config, task, data[0]["inputs"])
    placement = loop.place(config, setup)
    train_step, _ = loop.make_steps(task, setup, placement)
    abstract = checkpoint.abstract(setup.abstract_state, placement.state)
    compiled[name] = train_step.lower(abstract, placement.put(data[0])).compile()
  state = jax.jit(setup.init, out_shardings=placement.state)(jax.random.key(config.run.seed))
  table = state.params["backbone"]["memory_values"]["table"]
  facts = dict(table_shape=list(table.shape), itemsize=table.dtype.itemsize,
               axis_size=math.prod(placement.state.params["backbone"]["memory_values"][
                   "table"].mesh.shape[a] for a in ("fsdp", "model")),
               device_bytes=table.addressable_shards[0].data.nbytes, losses=[])
  for i in range(steps):
    state, metrics = compiled["sparse"](state, placement.put(data[i]))
    facts["losses"].append(float(metrics["loss"]))
  if hlo:
    facts["all_gathers"] = {name: [
        [int(d) for d in dims.split(",") if d]
        for result in re.findall(r"= (\S+(?: \S+)*?) all-gather(?:-start)?\(", c.as_text())
        for dims in re.findall(r"\[([\d,]*)\]", result)] for name, c in compiled.items()}
  return facts


def main(out_dir):
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  import jax  # noqa: PLC0415 (after XLA_FLAGS)
  jax.config.update("jax_enable_x64", True)  # as tests/conftest.py
  from train.loop import train_and_evaluate  # noqa: PLC0415
  assert jax.device_count() == 8, jax.devices()
  for name, mesh in MESHES.items():
    train_and_evaluate(small_config(mesh), os.path.join(out_dir, name))
  with open(os.path.join(out_dir, "memory.json"), "w") as f:
    json.dump(memory_run(memory_config(MEMORY_MESH), hlo=True), f)


if __name__ == "__main__":
  main(sys.argv[1])
