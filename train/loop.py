"""The one training loop: `train_and_evaluate(config, workdir)` trains any registered model on
any task, resumes exactly from the latest checkpoint in `workdir`, evaluates periodically and
logs metrics (JSONL + TensorBoard) with a tqdm progress bar."""
from __future__ import annotations

import os
import time

import flax
import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from tqdm.auto import tqdm

from seqmodels import Backbone, build_model
from train import checkpoint, config_lib, optim, sharding
from train.metrics import MetricsWriter
from train.tasks import build_task


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict
  opt_state: optax.OptState
  rng: jax.Array  # raw key data (uint32), so checkpoints hold plain arrays


def build(config):
  """(task, model, optimizer, lr schedule) from a validated config."""
  task = build_task(config.task)
  m = config.model
  backbone = Backbone(d_model=m.d_model, n_layers=m.n_layers, pattern=m.mixer,
                      vocab_size=task.vocab_size, mixer_kwargs=m.mixer_kwargs.to_dict(),
                      mlp_expand=m.mlp_expand, causal=task.causal, dtype=jnp.dtype(m.dtype))
  model_kwargs = {"tie_embeddings": m.tie_embeddings} if task.architecture == "lm" else {}
  model = build_model(task.architecture, backbone, **model_kwargs, **task.model_kwargs())
  tx, lr_schedule = optim.make_optimizer(config.opt, config.run.steps)
  return task, model, tx, lr_schedule


def make_init(model, tx, inputs):
  """rng -> the initial TrainState of `model` (parameters shaped by example `inputs`)."""
  def init(rng):
    params_rng, rng = jax.random.split(rng)
    params = nn.unbox(model.init(params_rng, inputs, None)["params"])
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params),
                      jax.random.key_data(rng))
  return init


class NonFiniteError(FloatingPointError):
  """The loss or the gradients became NaN/inf."""


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains for config.run.steps steps (resuming from `workdir` if it holds a checkpoint) and
  returns the final eval metrics. Writes config.json, metrics.jsonl, tb/, checkpoints/."""
  config_lib.validate(config)
  task, model, tx, lr_schedule = build(config)
  run = config.run
  is_chief = jax.process_index() == 0  # the process that writes logs
  os.makedirs(workdir, exist_ok=True)
  if is_chief:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=1))

  train_data = task.dataset("train", run.batch_size)
  eval_data = task.dataset("eval", run.batch_size, run.eval_batches * run.batch_size)
  example = jax.tree.map(jnp.asarray, eval_data[0])

  init = make_init(model, tx, example["inputs"])
  mesh, rules = sharding.make_mesh(config.mesh), config.mesh.rules
  batch_sharding = sharding.batch_sharding(mesh, rules)
  batch_shards = sharding.mesh_size(mesh, batch_sharding.spec[0])
  if run.batch_size % batch_shards:
    raise ValueError(f"run.batch_size={run.batch_size} must be divisible by the {batch_shards} "
                     f"devices of the batch axes {batch_sharding.spec[0]}")
  abstract_state = jax.eval_shape(init, jax.random.key(run.seed))
  state_shardings = sharding.state_shardings(
      abstract_state, sharding.param_names(model, example["inputs"]), mesh, rules)
  replicated = sharding.replicated(mesh)
  to_device = lambda batch: sharding.global_batch(batch, batch_sharding)

  ckpt = checkpoint.Checkpointer(workdir, run.checkpoint_every, run.keep_checkpoints)
  data_iter = iter(train_data.to_iter_dataset())
  restored = ckpt.restore(checkpoint.abstract(abstract_state, state_shardings))
  if restored is None:
    state = jax.jit(init, out_shardings=state_shardings)(jax.random.key(run.seed))
  else:
    state, data_state = restored
    data_iter.set_state(data_state)
  start = int(state.step)

  def loss_fn(params, batch, rng):
    return task.loss_and_metrics(task.logits(model, params, batch), batch)

  eval_step = jax.jit(lambda params, batch: loss_fn(params, batch, None)[1],
                      in_shardings=(state_shardings.params, batch_sharding),
                      out_shardings=replicated)

  def train_step(state, batch):
    rng, step_rng = jax.random.split(jax.random.wrap_key_data(state.rng))
    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, batch, step_rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {**metrics, "grad_norm": optax.tree.norm(grads), "lr": lr_schedule(state.step)}
    return TrainState(state.step + 1, params, opt_state, jax.random.key_data(rng)), metrics
  train_step = jax.jit(train_step, in_shardings=(state_shardings, batch_sharding),
                       out_shardings=(state_shardings, replicated), donate_argnums=0)

  def evaluate(params):
    totals = None
    for j in range(run.eval_batches):
      m = eval_step(params, to_device(eval_data[j]))
      totals = m if totals is None else jax.tree.map(jnp.add, totals, m)
    return {f"eval_{k}": float(v) / run.eval_batches
            for k, v in sharding.to_host(totals).items()}

  writer = MetricsWriter(workdir, start, enabled=is_chief)
  tokens_per_step = example["inputs"].size  # [B, T], or [B, 2, T] for two towers
  bar = tqdm(total=run.steps, initial=start, disable=not (run.progress and is_chief), desc="train",
             dynamic_ncols=True)
  pending, last_time, eval_metrics = None, time.perf_counter(), {}

  def finish(pending):
    """Reads back the metrics of a dispatched step, stops on NaN/inf, logs them."""
    nonlocal last_time
    step, metrics = pending
    metrics = sharding.to_host(metrics)
    if not all(map(jnp.isfinite, (metrics["loss"], metrics["grad_norm"]))):
      raise NonFiniteError(f"non-finite loss or gradients at step {step} "
                           f"(loss={metrics['loss']}, grad_norm={metrics['grad_norm']}); "
                           f"the last good checkpoint is step {ckpt.latest_step()}")
    if step % run.log_every == 0 or step == run.steps:
      now = time.perf_counter()
      metrics["tokens_per_s"] = tokens_per_step * min(run.log_every, step - start) / (
          now - last_time)
      last_time = now
      writer.write(step, metrics)
      bar.set_postfix(loss=f"{metrics['loss']:.4f}", acc=f"{metrics['accuracy']:.3f}",
                      tok_s=f"{metrics['tokens_per_s']:.0f}")

  try:
    for step in range(start + 1, run.steps + 1):
      batch = to_device(next(data_iter))
      state, metrics = train_step(state, batch)
      if pending is not None:
        finish(pending)  # step - 1's metrics, read while this step runs
      pending = (step, metrics)
      bar.update(1)
      if step % run.checkpoint_every == 0 or step % run.eval_every == 0 or step == run.steps:
        finish(pending)
        pending = None
        ckpt.save(step, state, data_iter.get_state(), force=step == run.steps)
        if step % run.eval_every == 0 or step == run.steps:
          eval_metrics = evaluate(state.params)
          writer.write(step, eval_metrics)
          if is_chief:
            bar.write(f"step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in
                                                   eval_metrics.items()))
  finally:
    bar.close()
    ckpt.close()
    writer.close()
  if not eval_metrics:  # resumed at the end: evaluate the restored state
    eval_metrics = evaluate(state.params)
  return eval_metrics
