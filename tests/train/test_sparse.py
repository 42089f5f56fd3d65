"""Sparse updates of memory value tables (model.memory.sparse_updates, train/sparse.py): the
row gradients equal the dense gradient (SGD steps agree), lazy AdamW equals dense AdamW that
updates only the touched rows, checkpoints resume exactly, and the compiled step's
temporary memory does not grow with the number of rows."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from configs.synthetic import facts
from layers import axes
from layers.memory import touched_rows
from tests import harness
from train import checkpoint, config_lib, loop, optim, sparse
from train.loop import train_and_evaluate
from train.metrics import memory_rows, read_metrics
from train.tasks import build_task


def _config(n_keys=64, sparse_updates=True, v_dim=8, **run):
  """Two blocks without sequence mixing (the memory is under test) whose MLPs are Memory+
  layers sharing one table of n_keys**2 rows (V = 8); batches of 8 sequences of 12 tokens:
  2 * 768 slots a step, of which about 15% of the 4096 rows are touched."""
  config = facts.get_config("model=memory,facts=256,steps=4")
  config.task.facts_per_example = 4
  config.model.update(mixer="none", d_model=16, n_layers=2)
  config.model.memory.update(layers=(0, 1), n_keys=n_keys, heads=2, topk=4, k_dim=8, v_dim=v_dim,
                             sparse_updates=sparse_updates)
  config.opt.update(warmup_steps=0, weight_decay=0.1, clip_norm=0.5)
  config.opt.groups.memory.update(weight_decay=0.05, clip_norm=0.05)  # both clip at step 1
  config.run.update(batch_size=8, progress=False, **run)
  config_lib.validate(config)
  return config


def _setup(config):
  task = build_task(config.task)
  data = task.dataset("train", config.run.batch_size)
  batches = [jax.tree.map(jnp.asarray, data[i]) for i in range(3)]
  setup = loop.build(config, task, batches[0]["inputs"])
  return task, setup, batches


def _loss_fn(model, task):
  def loss_fn(variables, batch, mutable=()):
    logits, mutated = model.apply(variables, batch["inputs"], mutable=list(mutable))
    loss, metrics = task.loss_and_metrics(logits, batch)
    return loss, (metrics, mutated)
  return loss_fn


TABLE = ("backbone", "memory_values", "table")


def _table(params):
  return params["backbone"]["memory_values"]["table"]


def test_touched_rows_are_unique_and_padded():
  indices = jnp.array([[3, 1, 3], [7, 1, 0]])
  ids, inverse = touched_rows(indices, 10)
  np.testing.assert_array_equal(ids, [0, 1, 3, 7, 10, 10])
  np.testing.assert_array_equal(ids[inverse], indices)


def test_lazy_adamw_is_dense_adamw_restricted_to_the_touched_rows():
  """optax level, float64: lazy(clip + AdamW) on SparseRows against the dense chain whose
  table rows and moments are kept where a step did not touch them; three steps over partly
  overlapping rows (bias correction with the global step, untouched moments frozen), the
  global clip norm counting the rows and a dense parameter."""
  tx = optax.chain(optax.clip_by_global_norm(0.3), optax.adamw(0.1, weight_decay=0.5))
  lazy = sparse.lazy(tx)
  params = ref = {"w": harness.rand(0, (3,)), "table": harness.rand(1, (6, 2))}
  state, ref_state = lazy.init(params), tx.init(params)
  for step, ids in enumerate(([1, 4, 6, 6], [0, 1, 6, 6], [4, 5, 2, 6])):  # 6: padding
    ids = jnp.array(ids)
    rows = harness.rand(10 + step, (4, 2)) * (ids < 6)[:, None]
    w = harness.rand(20 + step, (3,))
    updates, state = lazy.update({"w": w, "table": sparse.SparseRows(ids, rows)}, state, params)
    params = sparse.apply_updates(params, updates)
    dense = {"w": w, "table": jnp.zeros((6, 2)).at[ids].add(rows, mode="drop")}
    updates, new_state = tx.update(dense, ref_state, ref)
    touched = jnp.zeros(6, bool).at[ids].set(True, mode="drop")[:, None]
    keep = lambda new, old: jnp.where(touched, new, old) if jnp.shape(new) == (6, 2) else new
    ref_state = jax.tree.map(keep, new_state, ref_state)
    ref = jax.tree.map(keep, optax.apply_updates(ref, updates), ref)
  for a, b in zip(jax.tree.leaves((params, state)), jax.tree.leaves((ref, ref_state)),
                  strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
  # row 3 was never touched: as initialised, with zero moments
  np.testing.assert_array_equal(params["table"][3], harness.rand(1, (6, 2))[3])
  assert not np.any(state[1][0].mu["table"][3]) and np.all(state[1][0].mu["table"][4])


def test_sgd_sparse_steps_equal_dense_steps():
  """Three SGD steps (no weight decay, no clipping): sparse row gradients scattered into the
  table equal the dense gradient, to 1e-6 relative in float32, for every parameter."""
  task, setup, batches = _setup(_config())
  loss_fn = _loss_fn(setup.model, task)
  labels = axes.groups(setup.boxed)
  tx = optax.sgd(1.0)

  @jax.jit
  def dense_step(params, batch):
    g, _ = jax.grad(lambda p: loss_fn({"params": p}, batch), has_aux=True)(params)
    return optax.apply_updates(params, tx.update(g, tx.init(params))[0])

  lazy = sparse.lazy(tx)

  @jax.jit
  def sparse_step(params, batch):
    g, _ = sparse.grads(lambda v, m: loss_fn(v, batch, m), params, labels)
    assert isinstance(g["backbone"]["memory_values"]["table"], sparse.SparseRows)
    return sparse.apply_updates(params, lazy.update(g, lazy.init(params), params)[0])

  params = dense = initial = jax.jit(setup.init)(jax.random.key(0)).params
  for batch in batches:
    dense, params = dense_step(dense, batch), sparse_step(params, batch)
  # the table's change itself agrees closely (it is small against the table)
  assert harness.rel_err(_table(params) - _table(initial), _table(dense) - _table(initial)) < 1e-4
  for path, a in jax.tree_util.tree_leaves_with_path(params):
    b = dense
    for k in path:
      b = b[k.key]
    assert harness.rel_err(a, b) <= 1e-6, jax.tree_util.keystr(path)


@pytest.mark.slow
def test_lazy_adamw_equals_dense_adamw_on_the_touched_rows():
  """The train step with sparse updates (clipping and weight decay on, three batches) against
  dense AdamW whose table rows, and their moments, are updated only where the step's lookups
  read (row hits of the eval collection); the rest of the model as dense AdamW."""
  config = _config()
  task, setup, batches = _setup(config)
  placement = loop.place(config, setup)
  train_step, _ = loop.make_steps(task, setup, placement)
  loss_fn = _loss_fn(setup.model, task)
  dense_tx, _ = optim.make_optimizer(config.opt, config.run.steps, axes.groups(setup.boxed))

  @jax.jit
  def reference_step(params, opt_state, batch):
    g, _ = jax.grad(lambda p: loss_fn({"params": p}, batch), has_aux=True)(params)
    _, (_, mutated) = loss_fn({"params": params}, batch, ["intermediates"])
    touched = memory_rows(mutated["intermediates"])["row_hits"][0] > 0
    updates, new_state = dense_tx.update(g, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    keep = lambda new, old: jnp.where(touched[:, None], new, old) if (
        new.shape == _table(params).shape) else new
    return jax.tree.map(keep, new_params, params), jax.tree.map(keep, new_state, opt_state), (
        touched.mean())

  state = jax.jit(setup.init)(jax.random.key(0))
  params, opt_state = jax.device_get((state.params, state.opt_state))
  for batch in batches:
    params, opt_state, fraction = reference_step(params, opt_state, batch)
    state, _ = train_step(state, batch)
    assert 0.05 < fraction < 0.9  # some rows touched, some not
  for want, got in ((params, state.params), (opt_state, state.opt_state)):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      if jnp.issubdtype(a.dtype, jnp.floating):
        assert harness.rel_err(a, b) <= 1e-5


def test_sparse_updates_need_no_accumulation_and_a_bool():
  config = _config()
  config.opt.grad_accum_steps = 2
  with pytest.raises(ValueError, match="sparse_updates=True takes opt.grad_accum_steps=1"):
    config_lib.validate(config)
  config = _config()
  config.model.memory.sparse_updates = None
  with pytest.raises(ValueError, match=r"model.memory.sparse_updates=None: expected True or "):
    config_lib.validate(config)


def _final_state(workdir):
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  restored = manager.restore(manager.latest_step(),
                             args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return manager.latest_step(), restored["state"]


@pytest.mark.slow
def test_sparse_run_resumes_exactly(tmp_path):
  """6 steps straight equal 3 steps, then a resumed run to 6 (a constant learning rate, so
  that the first run's length does not matter): the lazy moments, the table and the logged
  losses are identical."""
  config = _config(steps=6, checkpoint_every=3, eval_every=6, log_every=1, eval_batches=1)
  config.opt.final_lr_ratio = 1.0
  train_and_evaluate(config, str(tmp_path / "straight"))
  config.run.steps = 3
  train_and_evaluate(config, str(tmp_path / "resumed"))
  config.run.steps = 6
  train_and_evaluate(config, str(tmp_path / "resumed"))
  (step_a, a), (step_b, b) = (_final_state(tmp_path / name) for name in ("straight", "resumed"))
  assert step_a == step_b == 6
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)
  losses = [[r["loss"] for r in read_metrics(tmp_path / name) if "loss" in r]
            for name in ("straight", "resumed")]
  assert len(losses[0]) == 6 and losses[0] == losses[1]


def _temp_bytes(config):
  task, setup, batches = _setup(config)
  placement = loop.place(config, setup)
  train_step, _ = loop.make_steps(task, setup, placement)
  abstract = checkpoint.abstract(setup.abstract_state, placement.state)
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batches[0])
  analysis = train_step.lower(abstract, batch).compile().memory_analysis()
  return analysis.temp_size_in_bytes


@pytest.mark.slow
def test_step_temporary_memory_is_flat_in_the_rows():
  """The compiled sparse step's temporaries at N = 64K and 1M rows (V = 64) differ by less
  than 1/16 of a table of 1M rows (256 MiB; what grows is the sub-key scores [B, T, H, 2,
  n_keys], n_keys = sqrt(N)), while the dense step's grow by more than a table."""
  small, large = (_temp_bytes(_config(n_keys=n, v_dim=64)) for n in (256, 1024))
  dense_small, dense_large = (_temp_bytes(_config(n_keys=n, v_dim=64, sparse_updates=False))
                              for n in (256, 1024))
  table = 1024 ** 2 * 64 * 4
  assert dense_large - dense_small > table
  assert large - small < table / 16, (small, large)
