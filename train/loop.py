"""The one training loop: `train_and_evaluate(config, workdir)` trains any registered model on
any task, resumes exactly from the latest checkpoint in `workdir`, evaluates periodically and
logs metrics (JSONL + TensorBoard) with a tqdm progress bar.

Start-up (`build`, `place`, `restore_or_init`) traces `model.init` once for shapes: the boxed
abstract parameters give the logical axis names (sharding), the optimizer groups and the
abstract train state. The loop calls the model, `model(inputs, segment_ids) -> logits`; the
task turns logits into loss and metrics.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from jax.sharding import NamedSharding
from tqdm.auto import tqdm

from layers import axes
from seqmodels import build_model
from train import checkpoint, config_lib, optim, sharding, sparse, workdir as workdir_lib
from train.metrics import MetricsWriter, memory_rows, memory_usage
from train.summary import model_summary
from train.tasks import Task, build_task


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict
  opt_state: optax.OptState
  rng: jax.Array  # raw key data (uint32), so checkpoints hold plain arrays


class NonFiniteError(FloatingPointError):
  """The loss or the gradients became NaN/inf."""


@dataclasses.dataclass(frozen=True)
class Setup:
  """A run's model and optimizer, and its train state from shapes alone.

  boxed: the parameters as `jax.eval_shape(model.init)` gives them, boxed with their logical
  axis names and optimizer groups (layers/axes.py). init: rng -> the initial TrainState.
  sparse: memory value tables take sparse updates (model.memory.sparse_updates,
  train/sparse.py).
  """
  model: nn.Module
  tx: optax.GradientTransformation
  lr_schedule: optax.Schedule
  boxed: Any
  abstract_state: TrainState
  init: Callable[[jax.Array], TrainState]
  sparse: bool = False


def _new_state(params, tx, rng) -> TrainState:
  """Step 0 of `params`: fresh optimizer state, `rng` for what follows."""
  return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), jax.random.key_data(rng))


def build(config, task: Task, inputs) -> Setup:
  """The Setup of a validated config for `task`; `inputs` (an array or ShapeDtypeStruct)
  gives the shape and dtype of a batch of model inputs ([B, T] tokens, [B, 2, T] two-tower)."""
  model = build_model(config.model, task.model_facts())

  def init_params(rng):
    return model.init(rng, jnp.zeros(inputs.shape, inputs.dtype))["params"]

  boxed = jax.eval_shape(init_params, jax.random.key(0))
  sparse_updates = bool(config.model.get("memory", {}).get("sparse_updates", False))
  tx, lr_schedule = optim.make_optimizer(config.opt, config.run.steps, axes.groups(boxed),
                                         sparse=sparse_updates)

  def init(rng):
    params_rng, rng = jax.random.split(rng)
    return _new_state(nn.unbox(init_params(params_rng)), tx, rng)

  abstract_state = jax.eval_shape(lambda params, rng: _new_state(params, tx, rng),
                                  nn.unbox(boxed), jax.random.key(0))
  return Setup(model, tx, lr_schedule, boxed, abstract_state, init, sparse_updates)


@dataclasses.dataclass(frozen=True)
class Placement:
  """Where the train state and the batches live on the device mesh."""
  state: TrainState  # of NamedShardings
  batch: NamedSharding
  replicated: NamedSharding

  def put(self, batch: dict) -> dict:
    """A host batch (numpy, whole on every process) as global arrays."""
    return sharding.global_batch(batch, self.batch)


def place(config, setup: Setup) -> Placement:
  """Shardings on the mesh of config.mesh: parameters by their logical names and the rules,
  optimizer moments as their parameter, the batch over the batch axes."""
  mesh, rules = sharding.make_mesh(config.mesh), config.mesh.rules
  batch = sharding.batch_sharding(mesh, rules)
  shards = sharding.mesh_size(mesh, batch.spec[0])
  if config.run.batch_size % shards:
    raise ValueError(f"run.batch_size={config.run.batch_size} must be divisible by the "
                     f"{shards} devices of the batch axes {batch.spec[0]}")
  state = sharding.state_shardings(setup.abstract_state, nn.get_partition_spec(setup.boxed),
                                   mesh, rules)
  return Placement(state, batch, sharding.replicated(mesh))


def restore_or_init(setup: Setup, placement: Placement, ckpt: checkpoint.Checkpointer,
                    data_iter, seed: int) -> TrainState:
  """The latest checkpoint's state (and data position, set on `data_iter`), or a fresh one
  initialised in place on the mesh."""
  restored = ckpt.restore(checkpoint.abstract(setup.abstract_state, placement.state))
  if restored is None:
    return jax.jit(setup.init, out_shardings=placement.state)(jax.random.key(seed))
  state, data_state = restored
  data_iter.set_state(data_state)
  return state


def make_steps(task: Task, setup: Setup, placement: Placement):
  """(train_step(state, batch) -> (state, metrics), eval_step(params, batch) -> (metrics,
  memory rows: the usage counts of memory layers, `metrics.memory_rows`)), jitted with the
  state's shardings; train_step donates the state. With setup.sparse the memory tables'
  gradients are SparseRows of their touched rows (train/sparse.py)."""
  model, tx, labels = setup.model, setup.tx, axes.groups(setup.boxed)

  def loss_fn(variables, batch, mutable=()):
    """(loss, (metrics, the mutated collections))."""
    logits, mutated = model.apply(variables, batch["inputs"], batch.get("segment_ids"),
                                  mutable=list(mutable))
    loss, metrics = task.loss_and_metrics(logits, batch)
    return loss, (metrics, mutated)

  def train_step(state, batch):
    rng, _ = jax.random.split(jax.random.wrap_key_data(state.rng))
    if setup.sparse:
      grads, metrics = sparse.grads(lambda v, mutable: loss_fn(v, batch, mutable),
                                    state.params, labels)
    else:
      grads, (metrics, _) = jax.grad(lambda p: loss_fn({"params": p}, batch), has_aux=True)(
          state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = sparse.apply_updates(state.params, updates)
    metrics = {**metrics, "grad_norm": sparse.global_norm(state.params, grads),
               "lr": setup.lr_schedule(state.step)}
    return TrainState(state.step + 1, params, opt_state, jax.random.key_data(rng)), metrics

  train_step = jax.jit(train_step, in_shardings=(placement.state, placement.batch),
                       out_shardings=(placement.state, placement.replicated), donate_argnums=0)
  def eval_step(params, batch):
    logits, intermediates = model.apply({"params": params}, batch["inputs"],
                                        batch.get("segment_ids"), mutable=["intermediates"])
    return task.loss_and_metrics(logits, batch)[1], memory_rows(intermediates)

  eval_step = jax.jit(eval_step, in_shardings=(placement.state.params, placement.batch),
                      out_shardings=placement.replicated)
  return train_step, eval_step


def evaluate(eval_step, params, eval_data, placement: Placement) -> dict:
  """Mean of eval_step's metrics over the batches of `eval_data`, as eval_<name>, and the
  memory-layer usage over the whole of `eval_data` (`metrics.memory_usage`) when the model
  has memory layers."""
  totals = None
  for j in range(len(eval_data)):
    m = eval_step(params, placement.put(eval_data[j]))
    totals = m if totals is None else jax.tree.map(jnp.add, totals, m)
  means, rows = sharding.to_host(totals)
  usage = memory_usage(**rows) if rows else {}
  return {f"eval_{k}": float(v) / len(eval_data) for k, v in means.items()} | {
      f"eval_{k}": v for k, v in usage.items()}


class Progress:
  """Metrics to the writer and the tqdm bar (on the chief process), with tokens per second
  over each logging interval. The clock starts when the first step's metrics are back, so
  compilation never counts (a first log at that very step has no tokens_per_s)."""

  def __init__(self, workdir: str, run, start: int, tokens_per_step: int, enabled: bool):
    self.run, self.tokens_per_step = run, tokens_per_step
    self.writer = MetricsWriter(workdir, start, enabled=enabled)
    self.bar = tqdm(total=run.steps, initial=start, disable=not (run.progress and enabled),
                    desc="train", dynamic_ncols=True)
    self.enabled, self.timed_from = enabled, None  # (step, time) the clock runs from

  def note(self, text: str) -> None:
    if self.enabled:
      self.bar.write(text)

  def train(self, step: int, metrics: dict) -> None:
    """Logs a step's host metrics at every run.log_every steps and the last."""
    self.bar.update(1)
    now = time.perf_counter()
    if self.timed_from is None:  # the first step, compiled and run: start the clock
      self.timed_from = (step, now)
    if step % self.run.log_every and step != self.run.steps:
      return
    from_step, from_time = self.timed_from
    if step > from_step:
      metrics["tokens_per_s"] = self.tokens_per_step * (step - from_step) / (now - from_time)
    self.timed_from = (step, now)
    self.writer.write(step, metrics)
    self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", acc=f"{metrics['accuracy']:.3f}",
                         tok_s=f"{metrics.get('tokens_per_s', 0):.0f}")

  def eval(self, step: int, metrics: dict) -> None:
    self.writer.write(step, metrics)
    self.note(f"step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))

  def close(self) -> None:
    self.bar.close()
    self.writer.close()


def _last_good(ckpt: checkpoint.Checkpointer) -> str:
  step = ckpt.latest_saved()
  return "no checkpoint was saved" if step is None else f"the last good checkpoint is step {step}"


def read_back(step: int, metrics: dict, ckpt: checkpoint.Checkpointer) -> dict:
  """A dispatched step's metrics on the host; NonFiniteError on NaN/inf loss or gradients."""
  metrics = sharding.to_host(metrics)
  if not all(map(jnp.isfinite, (metrics["loss"], metrics["grad_norm"]))):
    raise NonFiniteError(f"non-finite loss or gradients at step {step} "
                         f"(loss={metrics['loss']}, grad_norm={metrics['grad_norm']}); "
                         f"{_last_good(ckpt)}")
  return metrics


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
                              if jnp.issubdtype(x.dtype, jnp.inexact)]))


def check_finite(step: int, state: TrainState, ckpt: checkpoint.Checkpointer) -> None:
  """NonFiniteError unless the parameters and optimizer state after `step` are finite (a
  finite loss and gradient can still make them inf/NaN: only finite states are saved)."""
  if not sharding.to_host(_all_finite((state.params, state.opt_state))):
    raise NonFiniteError(f"non-finite parameters or optimizer state after step {step}; "
                         f"{_last_good(ckpt)}")


def run_loop(run, state: TrainState, *, train_step, data_iter, put, evaluate_params,
             ckpt: checkpoint.Checkpointer, progress: Progress) -> dict:
  """Steps from state.step to run.steps on the host batches of `data_iter` (put on the mesh
  by `put`): checkpoints (with the data position) at run.checkpoint_every, evaluates at
  run.eval_every and at the end; step n-1's metrics are read while step n runs, and every
  step's loss and gradients, and the state itself, are checked finite before a save. Returns
  the last eval metrics."""
  pending, eval_metrics = None, {}
  for step in range(int(state.step) + 1, run.steps + 1):
    state, metrics = train_step(state, put(next(data_iter)))
    if pending is not None:
      progress.train(pending[0], read_back(*pending, ckpt))
    pending = (step, metrics)
    if step % run.checkpoint_every and step % run.eval_every and step != run.steps:
      continue
    progress.train(step, read_back(*pending, ckpt))
    pending = None
    check_finite(step, state, ckpt)
    ckpt.save(step, state, data_iter.get_state(), force=step == run.steps)
    if step % run.eval_every == 0 or step == run.steps:
      eval_metrics = evaluate_params(state.params)
      progress.eval(step, eval_metrics)
  return eval_metrics or evaluate_params(state.params)  # resumed at the end: evaluate


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains for config.run.steps steps (resuming from `workdir` if it holds a checkpoint) and
  returns the final eval metrics. Writes config.json (and config_history.jsonl when a resumed
  run changes what it may: workdir.RESUMABLE), metrics.jsonl, tb/, checkpoints/. The config
  is checked (values, and against the workdir's run) before anything is written, and the
  workdir is locked for the run."""
  config_lib.validate(config)
  changes = workdir_lib.check_resume(config, workdir)
  with workdir_lib.lock(workdir):
    return _train(config, workdir, changes)


def _train(config, workdir: str, changes: dict) -> dict:
  run = config.run
  task = build_task(config.task)
  train_data = task.dataset("train", run.batch_size)
  eval_data = task.dataset("eval", run.batch_size, run.eval_batches * run.batch_size)
  example = eval_data[0]["inputs"]
  setup = build(config, task, example)
  placement = place(config, setup)
  ckpt = checkpoint.Checkpointer(workdir, run.checkpoint_every, run.keep_checkpoints)
  data_iter = iter(train_data.to_iter_dataset())
  state = restore_or_init(setup, placement, ckpt, data_iter, run.seed)
  workdir_lib.record_config(config, workdir, changes, int(state.step))
  train_step, eval_step = make_steps(task, setup, placement)
  progress = Progress(workdir, run, int(state.step), example.size,
                      enabled=jax.process_index() == 0)
  progress.note(model_summary(config.model, setup.boxed))
  try:
    return run_loop(run, state, train_step=train_step, data_iter=data_iter, put=placement.put,
                    evaluate_params=lambda p: evaluate(eval_step, p, eval_data, placement),
                    ckpt=ckpt, progress=progress)
  finally:
    progress.close()
    ckpt.close()
