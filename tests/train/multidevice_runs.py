"""Runs the same small MQAR training on several device meshes, for the multi-device tests.

  python -m tests.train.multidevice_runs OUT_DIR   # in a process with 8 virtual CPU devices

Writes OUT_DIR/<mesh name>/ workdirs (metrics.jsonl, checkpoints). `small_config` is the one
config every run (and the single-device reference in the tests) uses.
"""
import os
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


def main(out_dir):
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  import jax  # noqa: PLC0415 (after XLA_FLAGS)
  jax.config.update("jax_enable_x64", True)  # as tests/conftest.py
  from train.loop import train_and_evaluate  # noqa: PLC0415
  assert jax.device_count() == 8, jax.devices()
  for name, mesh in MESHES.items():
    train_and_evaluate(small_config(mesh), os.path.join(out_dir, name))


if __name__ == "__main__":
  main(sys.argv[1])
