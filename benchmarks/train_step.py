"""Train-step time of a 4-layer d=256 language model (T=1024 at --full) for each registered
mixer, against its roofline bound on this machine.

  python -m benchmarks [--full] --only train_step,train_step_dp

FLOPs and bytes per step are counted analytically from the step's jaxpr (`roofline.cost`:
loop bodies times their trip counts; XLA's cost analysis, shown beside it, counts each loop body
once) plus the AdamW update's state traffic; the bound is max(FLOPs / matmul FLOP/s,
bytes / memory bandwidth), both rates measured in the same run.
train_step_dp instead times the same global batch on 1 device and split over 8 (virtual CPU
devices here: it runs in a child process started with 8 host devices).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp

from benchmarks import common, roofline
from seqmodels import registry
from train import config_lib
from train.loop import build
from train.tasks import build_task


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


DP_MIXERS_SMALL = ("attention", "mingru")  # train_step_dp at the small settings


def _mixers(full: bool) -> list[str]:
  return [m for m in registry.MIXERS if m != "none"] if full else ["attention", "mingru",
                                                                   "gated_deltanet"]


def data_parallel_rows(mixers, length: int) -> list[dict]:
  """Step time of one global batch of 8 on 1 device vs split over 8 (needs 8 devices)."""
  rows = []
  for mixer in mixers:
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
  return rows


def run_data_parallel(full: bool = False) -> common.Result:
  """1 vs 8 virtual devices at the same global batch, in a child process with 8 devices."""
  length = 1024 if full else 256
  mixers = _mixers(full) if full else list(DP_MIXERS_SMALL)
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  child = subprocess.run([sys.executable, "-m", "benchmarks.train_step", str(length),
                          ",".join(mixers)], env=env, stdout=subprocess.PIPE, check=True)
  rows = json.loads(child.stdout.decode().splitlines()[-1])
  return common.Result(
      rows, ["mixer", "B", "T", "1_device_ms", "8_devices_ms", "speedup_8_vs_1"],
      note=f"{os.cpu_count()} CPU cores: the 8 virtual devices share them.",
      settings={"T": length, "B": 8, "mixers": mixers})


ADAMW_BYTES_PER_PARAM = 7 * 4  # read parameter, gradient, two moments; write three (float32)


def run(full: bool = False) -> common.Result:
  """Train step per mixer (small: 3 mixers at B=1, T=256; full: every mixer, B=2, T=1024)."""
  batch, length = (2, 1024) if full else (1, 256)
  peak, bandwidth = roofline.matmul_flops_per_s(), roofline.memory_bandwidth()
  print(f"float32 matmul 2048^2: {peak / 1e9:.1f} GFLOP/s; read bandwidth "
        f"{bandwidth / 1e9:.1f} GB/s", flush=True)
  rows = []
  for mixer in _mixers(full):
    step, params, opt_state, tokens = step_fn(mixer, batch, length)
    xla = step.lower(params, opt_state, tokens).compile().cost_analysis()
    xla_flops = float((xla[0] if isinstance(xla, list) else xla).get("flops", 0.0))
    cost = roofline.cost(step, params, opt_state, tokens)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    step_bytes = cost.bytes + ADAMW_BYTES_PER_PARAM * n_params
    bound = max(cost.flops / peak, step_bytes / bandwidth)
    state = [params, opt_state]

    def run(tokens):
      state[:] = step(*state, tokens)
      return state[0]

    seconds = common.time_fn(run, tokens, repeats=3)
    rows.append({"mixer": mixer, "B": batch, "T": length, "step_ms": 1e3 * seconds,
                 "tokens_per_s": batch * length / seconds, "gflop": cost.flops / 1e9,
                 "xla_gflop": xla_flops / 1e9, "mib": step_bytes / 2**20,
                 "bound_ms": 1e3 * bound, "step_over_bound": seconds / bound,
                 "loop_steps": int(cost.loop_steps),
                 "us_per_loop_step": (1e6 * max(seconds - bound, 0.0) / cost.loop_steps
                                      if cost.loop_steps else None)})
    print(f"  {mixer}: {1e3 * seconds:.1f} ms/step, bound {1e3 * bound:.1f} ms", flush=True)
  return common.Result(
      rows, ["mixer", "B", "T", "step_ms", "tokens_per_s", "gflop", "xla_gflop", "mib",
             "bound_ms", "step_over_bound", "loop_steps", "us_per_loop_step"],
      note=f"4-layer d=256 LM, AdamW. gflop / mib: analytic FLOPs and matmul + optimizer bytes "
           f"per step (`benchmarks/roofline.py`); xla_gflop: XLA's cost analysis, which counts a "
           f"loop body once. bound = max(gflop / {peak / 1e9:.1f} GFLOP/s float32 matmul, mib / "
           f"{bandwidth / 1e9:.1f} GB/s read bandwidth), both measured in the same run; "
           f"us_per_loop_step: (step - bound) / sequential loop iterations.",
      settings={"B": batch, "T": length, "matmul_gflop_per_s": peak / 1e9,
                "bandwidth_gb_per_s": bandwidth / 1e9})


if __name__ == "__main__":  # the child of run_data_parallel: argv = T, mixers; rows as JSON
  print(json.dumps(data_parallel_rows(sys.argv[2].split(","), int(sys.argv[1]))))
