"""Memory layers against the table size: dense AdamW against sparse (lazy AdamW) updates of
the value table, at N rows growing 16x, beside the SwiGLU MLP the layer replaces at equal
FLOPs per token.

  python -m benchmarks [--full] --only memory

Model (full, the issue's): d_model 256, 4 attention layers, block 2's MLP a Memory+ layer
(heads 4, k_dim 256, topk 32, V 256), 8192 tokens per step (B 8 x T 1024), N = 64K, 256K, 1M
rows. Small (default): d_model 64, 2 layers, block 1 Memory+ (heads 2, k_dim 64, topk 8,
V 64), 512 tokens (B 4 x T 128), N = 4K, 16K, 64K.

Per row: fwd (the loss), fwd_bwd (the gradients the step takes: the dense table gradient
[N, V], or the touched rows' [U, V] with sparse updates), step (the loop's whole train step:
gradients, optimizer, update of the donated state), each min-of-repeats wall time; rest_ms,
the gradient of every parameter but the table (the table held constant: the part no update
rule changes), so that value_opt_ms = step - rest is the value gradient plus the optimizer;
keys_ms, the product-key scoring alone (forward and backward of `product_key_topk` with its
query), which grows with n_keys = sqrt(N) whatever the updates; temp_MiB, XLA's compiled
temporary memory of the step, and state_MiB, the parameters and optimizer state.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from benchmarks import common
from configs.synthetic.facts import dense_expand
from layers import axes
from layers.ops import product_key_topk
from train import checkpoint, config_lib, loop, sparse
from train.tasks import build_task

SMALL = dict(d_model=64, n_layers=2, layer=1, memory=dict(heads=2, k_dim=64, topk=8, v_dim=64),
             batch=4, length=128, n_keys=(64, 128, 256))
FULL = dict(d_model=256, n_layers=4, layer=2, memory=dict(heads=4, k_dim=256, topk=32,
                                                           v_dim=256),
            batch=8, length=1024, n_keys=(256, 512, 1024))


def make_config(s: dict, n_keys: int | None, sparse_updates: bool = False):
  """The LM of settings `s` on MQAR batches; n_keys None: the SwiGLU MLP of the FLOPs per token
  of the memory at the smallest N in place of the memory (`configs/synthetic/facts.py`)."""
  config = config_lib.base_config("attention", "base")
  config.model.update(d_model=s["d_model"], n_layers=s["n_layers"])
  options = dict(n_keys=n_keys or s["n_keys"][0], **s["memory"])
  if n_keys is None:
    config.model.mlp_expand = dense_expand(s["d_model"], options)
  else:
    config.model.memory.update(layers=(s["layer"],), sparse_updates=sparse_updates, **options)
  config.task = {"name": "mqar", "vocab_size": 256, "num_pairs": 8, "seq_len": s["length"]}
  config.run.batch_size = s["batch"]
  config_lib.validate(config)
  return config


def _nbytes(tree) -> int:
  """Bytes of the arrays of a pytree."""
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def measure(config) -> dict:
  """The row of one config (times in ms, memory in MiB)."""
  task = build_task(config.task)
  batch = jax.tree.map(jnp.asarray, task.dataset("train", config.run.batch_size)[0])
  setup = loop.build(config, task, batch["inputs"])
  placement = loop.place(config, setup)
  train_step, _ = loop.make_steps(task, setup, placement)
  labels = axes.groups(setup.boxed)
  model = setup.model

  def loss_fn(variables, batch, mutable=()):
    logits, mutated = model.apply(variables, batch["inputs"], mutable=list(mutable))
    return task.loss_and_metrics(logits, batch)[0], (None, mutated)

  def fwd(params, batch):
    return loss_fn({"params": params}, batch)[0]

  def fwd_bwd(params, batch):
    if setup.sparse:
      return sparse.grads(lambda v, m: loss_fn(v, batch, m), params, labels)[0]
    return jax.grad(fwd)(params, batch)

  def rest(params, batch):
    _, others, with_tables = sparse.split_tables(params, labels)
    return jax.grad(lambda others: fwd(with_tables(others), batch))(others)

  state = jax.jit(setup.init, out_shardings=placement.state)(jax.random.key(0))
  abstract = checkpoint.abstract(setup.abstract_state, placement.state)
  step = train_step.lower(abstract, batch).compile()
  holder = [state]

  def run_step(batch):
    holder[0], metrics = step(holder[0], batch)
    return metrics["loss"]

  fns = {"fwd": jax.jit(fwd), "fwd_bwd": jax.jit(fwd_bwd), "rest": jax.jit(rest)}
  times = common.time_fns({k: (lambda f: lambda b: f(holder[0].params, b))(f)
                           for k, f in fns.items()} | {"step": run_step}, batch, repeats=3)
  row = {f"{k}_ms": 1e3 * v for k, v in times.items()}
  row["value_opt_ms"] = row["step_ms"] - row["rest_ms"]
  row["temp_MiB"] = step.memory_analysis().temp_size_in_bytes / 2**20
  row["state_MiB"] = _nbytes(holder[0]) / 2**20
  return row


def key_scoring_ms(s: dict, n_keys: int) -> float:
  """Forward + backward of `product_key_topk` (and its bag weights) alone at these shapes."""
  m = s["memory"]
  H, Kh, k = m["heads"], m["k_dim"] // 2, m["topk"]
  q = jax.random.normal(jax.random.key(0), (s["batch"], s["length"], H, 2, Kh))
  keys = jax.random.normal(jax.random.key(1), (H, 2, n_keys, Kh))

  def f(q, keys):
    scores, _ = product_key_topk(q, keys, topk=k)
    return jnp.sum(jax.nn.softmax(scores, -1) * scores)
  return 1e3 * common.time_fn(jax.jit(jax.grad(f, argnums=(0, 1))), q, keys, repeats=3)


COLUMNS = ["model", "N", "updates", "fwd_ms", "fwd_bwd_ms", "step_ms", "rest_ms", "value_opt_ms",
           "keys_ms", "temp_MiB", "state_MiB"]


def run(full: bool = False) -> common.Result:
  s = FULL if full else SMALL
  rows = []
  mlp = measure(make_config(s, None))
  rows.append({"model": "SwiGLU MLP", "N": "", "updates": "dense", **mlp})
  print(f"  mlp: step {mlp['step_ms']:.1f} ms", flush=True)
  for n in s["n_keys"]:
    keys = key_scoring_ms(s, n)
    for sparse_updates in (False, True):
      row = measure(make_config(s, n, sparse_updates))
      rows.append({"model": "Memory+", "N": n * n, "updates": "sparse" if sparse_updates
                   else "dense", "keys_ms": keys, **row})
      print(f"  N={n * n} {rows[-1]['updates']}: step {row['step_ms']:.1f} ms, temp "
            f"{row['temp_MiB']:.1f} MiB", flush=True)
  by = {(r["N"], r["updates"]): r for r in rows if r["model"] == "Memory+"}
  first, last = s["n_keys"][0] ** 2, s["n_keys"][-1] ** 2

  def ratio(key, updates):
    """x(last / first) of a column; a difference (value_opt) at or below zero is noise."""
    a, b = by[(first, updates)][key], by[(last, updates)][key]
    return f"x{b / a:.2f}" if a > 0 and b > 0 else "n/a (step - rest within timing noise)"

  tokens = s["batch"] * s["length"]
  m = s["memory"]
  note = (f"d_model {s['d_model']}, {s['n_layers']} attention layers, block {s['layer']} "
          f"Memory+ (heads {m['heads']}, k_dim {m['k_dim']}, topk {m['topk']}, V {m['v_dim']}) "
          f"or the SwiGLU MLP of equal FLOPs per token; {tokens} tokens a step (U = "
          f"{tokens * m['heads'] * m['topk']} slots). From N = {first} to {last} rows: sparse "
          f"step {ratio('step_ms', 'sparse')} (dense {ratio('step_ms', 'dense')}), "
          f"sparse value gradient + optimizer {ratio('value_opt_ms', 'sparse')} (dense "
          f"{ratio('value_opt_ms', 'dense')}), key scoring x"
          f"{by[(last, 'sparse')]['keys_ms'] / by[(first, 'sparse')]['keys_ms']:.2f}; sparse "
          f"step temporaries {ratio('temp_MiB', 'sparse')} (dense "
          f"{ratio('temp_MiB', 'dense')}). value_opt = step - rest (the gradient of all "
          "but the table); keys = product-key scoring forward + backward alone.")
  return common.Result(rows, COLUMNS, note=note,
                       settings={k: v for k, v in s.items()})
