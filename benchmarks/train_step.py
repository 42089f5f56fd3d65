"""Train-step time and achieved FLOP/s of a 4-layer d=256 language model at T=1024 for each
registered mixer, beside this machine's jitted float32 matmul FLOP/s measured in the same run.

  python -m benchmarks.train_step [--quick] [--out benchmarks/results/train_step.json]
  python -m benchmarks.train_step --data_parallel [--quick]

FLOPs per step come from XLA's cost analysis of the compiled step (forward, backward, AdamW).
--data_parallel instead times the same global batch on 1 device and split over 8 (virtual CPU
devices here: the process restarts itself with 8 host devices).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

import jax
import jax.numpy as jnp

from benchmarks import common
from seqmodels import registry
from train import config_lib
from train.loop import build
from train.tasks import build_task


def matmul_flops_per_s(n: int = 2048) -> float:
  """Achieved FLOP/s of a jitted float32 n x n matmul."""
  a = jax.random.normal(jax.random.key(0), (n, n))
  return 2 * n ** 3 / common.time_fn(jax.jit(jnp.matmul), a, a, repeats=10)


def step_fn(mixer: str, batch: int, length: int):
  """(jitted train step, state, batch) for the LM of `mixer` on random tokens."""
  config = config_lib.base_config(mixer, "base")
  config.model.update(d_model=256, n_layers=4)
  config.task = {"name": "mqar", "vocab_size": 256, "num_pairs": 8, "seq_len": length}
  tokens = jax.random.randint(jax.random.key(1), (batch, length), 0, 256)
  setup = build(config, build_task(config.task), tokens)
  model, tx = setup.model, setup.tx
  state = jax.jit(setup.init)(jax.random.key(0))

  def train_step(params, opt_state, tokens):
    def loss(params):
      logits = model.apply({"params": params}, tokens[:, :-1])
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1))
    grads = jax.grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return jax.tree.map(jnp.add, params, updates), opt_state

  return jax.jit(train_step, donate_argnums=(0, 1)), state.params, state.opt_state, tokens


def data_parallel(args, length: int) -> None:
  """Step time of one global batch of 8 on 1 device vs split over 8 devices."""
  if jax.device_count() < 8:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    sys.exit(subprocess.run([sys.executable, "-m", "benchmarks.train_step", *sys.argv[1:]],
                            env=env).returncode)
  rows = []
  for mixer in args.mixers.split(","):
    step, params, opt_state, tokens = step_fn(mixer, 8, length)
    params, opt_state = jax.device_get((params, opt_state))  # host copies: steps donate
    row = {"mixer": mixer, "B": 8, "T": length}
    for devices, data in (("1_device", 1), ("8_devices", 8)):
      mesh = jax.make_mesh((data,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                           devices=jax.devices()[:data])
      place = lambda tree, spec: jax.device_put(tree, jax.sharding.NamedSharding(mesh, spec))
      state = [place(params, jax.P()), place(opt_state, jax.P())]
      batch = place(tokens, jax.P("data"))

      def run(batch):
        state[:] = step(*state, batch)
        return state[0]
      row[f"{devices}_ms"] = 1e3 * common.time_fn(run, batch, repeats=3)
    row["speedup_8_vs_1"] = row["1_device_ms"] / row["8_devices_ms"]
    rows.append(row)
    print(f"  {mixer}: 1 device {row['1_device_ms']:.1f} ms, 8 devices "
          f"{row['8_devices_ms']:.1f} ms", flush=True)
  print(f"\n{os.cpu_count()} CPU cores: the 8 virtual devices share them.")
  common.print_table(rows, ["mixer", "B", "T", "1_device_ms", "8_devices_ms", "speedup_8_vs_1"])
  common.write_json(args.out.replace(".json", "_data_parallel.json"), "train_step_dp", rows)


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--quick", action="store_true", help="T=256 and batch 1")
  parser.add_argument("--out", default="benchmarks/results/train_step.json")
  parser.add_argument("--mixers", default=",".join(m for m in registry.MIXERS if m != "none"))
  parser.add_argument("--data_parallel", action="store_true",
                      help="1 vs 8 devices at the same global batch")
  args = parser.parse_args()
  batch, length = (1, 256) if args.quick else (2, 1024)
  if args.data_parallel:
    return data_parallel(args, length)
  peak = matmul_flops_per_s()
  print(f"float32 matmul 2048^2: {peak / 1e9:.1f} GFLOP/s")
  rows = []
  for mixer in args.mixers.split(","):
    step, params, opt_state, tokens = step_fn(mixer, batch, length)
    cost = step.lower(params, opt_state, tokens).compile().cost_analysis()
    flops = float((cost[0] if isinstance(cost, list) else cost).get("flops", 0.0))
    state = [params, opt_state]

    def run(tokens):
      state[:] = step(*state, tokens)
      return state[0]

    seconds = common.time_fn(run, tokens, repeats=3)
    rows.append({"mixer": mixer, "B": batch, "T": length, "step_ms": 1e3 * seconds,
                 "tokens_per_s": batch * length / seconds, "gflop_per_step": flops / 1e9,
                 "gflop_per_s": flops / seconds / 1e9, "fraction_of_matmul": flops / seconds / peak})
    print(f"  {mixer}: {1e3 * seconds:.1f} ms/step", flush=True)
  common.print_table(rows, ["mixer", "B", "T", "step_ms", "tokens_per_s", "gflop_per_step",
                            "gflop_per_s", "fraction_of_matmul"])
  for row in rows:
    row["matmul_gflop_per_s"] = peak / 1e9
  common.write_json(args.out, "train_step", rows)


if __name__ == "__main__":
  main()
