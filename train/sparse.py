"""Sparse updates of memory value tables (`model.memory.sparse_updates=True`): a train step
whose cost does not depend on the number of rows N.

The step never differentiates a table [N, V] as a whole. Each lookup reads the U = B*T*H*k
slots' distinct rows (`layers.memory.touched_rows`: ids padded with N to the static size
U) through a zero perturbation (`layers.memory.MemoryValues`), so one backward pass gives
the row gradients [U, V] with duplicates summed (`grads`). Those travel through the optax
chain as `SparseRows(ids, rows)` leaves, and `lazy(tx)` applies tx to the touched rows only,
reading and writing the rows of every per-parameter state leaf (Adam's moments) by gather
and scatter: with optax.adamw that is lazy Adam (torch's SparseAdam, LazyAdam):

  m[ids] = b1 m[ids] + (1 - b1) g,   v[ids] = b2 v[ids] + (1 - b2) g**2
  p[ids] -= lr_t (m[ids] / (1 - b1**t) / (sqrt(v[ids] / (1 - b2**t)) + eps) + wd p[ids])

with t the global step (Adam's count), the moments of untouched rows left as they are (no
decay), decoupled weight decay on the touched rows only, and a group's global-norm clipping
computed from the row gradients (which equals the dense gradient's norm). `apply_updates`
scatters the row updates into the (donated) table. Dense parameters pass through unchanged.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from layers import axes
from layers.memory import ROW_IDS, ROWS, touched_rows


class SparseRows(NamedTuple):
  """The gradient (or update) of a table [N, V] at its rows `ids` [U] (distinct; N marks
  padding, dropped by scatters): rows [U, V]."""
  ids: jax.Array
  rows: jax.Array


def is_sparse(x) -> bool:
  """Whether `x` is a SparseRows (a pytree node, not a leaf: test it before mapping)."""
  return isinstance(x, SparseRows)


_DENSE = object()  # the "ids" of a dense leaf


def coalesce(ids: jax.Array, rows: jax.Array, n_rows: int) -> SparseRows:
  """SparseRows of possibly repeated `ids` [U] and `rows` [U, V]: repeated rows summed."""
  unique, inverse = touched_rows(ids, n_rows)
  return SparseRows(unique, jax.ops.segment_sum(rows, inverse, num_segments=unique.size))


def _take(x, ids):
  return jnp.take(x, ids, axis=0, mode="fill", fill_value=0)


def lazy(inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """`inner` applied to the touched rows of SparseRows updates (and to dense updates as they
  are): the parameters and every per-parameter leaf of inner's state are gathered at the
  rows, updated by inner, and the state rows scattered back; untouched rows keep their
  state. Its state is inner's (a checkpoint of the dense optimizer restores into it).
  `inner` must be elementwise over rows, but for norms (clipping) and counts."""

  def init(params):
    return inner.init(params)

  def update(updates, state, params):
    ids = jax.tree.map(lambda p, u: u.ids if is_sparse(u) else _DENSE, params, updates)
    dense = jax.tree.map(lambda p, u: u.rows if is_sparse(u) else u, params, updates)
    rows = jax.tree.map(lambda p, i: p if i is _DENSE else _take(p, i), params, ids)
    masked = lambda x: isinstance(x, optax.MaskedNode)
    state_ids = optax.tree_map_params(inner, lambda s, i: s if masked(s) else i, state, ids,
                                      transform_non_params=lambda _: _DENSE, is_leaf=masked)
    gathered = jax.tree.map(lambda s, i: s if i is _DENSE else _take(s, i), state, state_ids)
    new_rows, new_gathered = inner.update(dense, gathered, rows)
    new_state = jax.tree.map(
        lambda s, n, i: n if i is _DENSE else s.at[i].set(n, mode="drop"),
        state, new_gathered, state_ids)
    new_updates = jax.tree.map(lambda i, u: u if i is _DENSE else SparseRows(i, u), ids,
                               new_rows)
    return new_updates, new_state

  return optax.GradientTransformation(init, update)


def apply_updates(params, updates):
  """params + updates, SparseRows updates scattered into their rows (in place when the
  params are donated)."""
  return jax.tree.map(
      lambda p, u: (p.at[u.ids].add(u.rows.astype(p.dtype), mode="drop") if is_sparse(u)
                    else (p + u).astype(p.dtype)), params, updates)


def global_norm(params, grads) -> jax.Array:
  """The global norm of `grads` (SparseRows count their rows)."""
  return optax.tree.norm(jax.tree.map(lambda p, g: g.rows if is_sparse(g) else g, params,
                                      grads))


def split_tables(params, labels):
  """(tables {flat path: table}, the other parameters (a nested dict), with_tables(others) ->
  the whole parameter tree): the memory-group parameters apart, so that a gradient can be
  taken of the others with the tables held as constants."""
  flat = traverse_util.flatten_dict(params)
  flat_labels = traverse_util.flatten_dict(labels)
  tables = {k: v for k, v in flat.items() if flat_labels[k] == axes.MEMORY}
  others = traverse_util.unflatten_dict({k: v for k, v in flat.items() if k not in tables})

  def with_tables(others):
    return traverse_util.unflatten_dict({**traverse_util.flatten_dict(others), **tables})
  return tables, others, with_tables


def grads(loss_fn, params, labels):
  """(grads, aux) of loss_fn(variables, mutable) -> (loss, (aux, mutated collections)),
  called as model.apply(variables, ..., mutable=mutable) would be. The memory-group
  parameters (value tables; `labels`: the group of every parameter) get SparseRows of their
  touched rows, the others dense gradients."""
  tables, others, with_tables = split_tables(params, labels)
  shapes = jax.eval_shape(lambda p: loss_fn({"params": p}, [ROWS, ROW_IDS]), params)
  zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes[1][1].get(ROWS, {}))

  def loss(others, perturbations):
    value, (aux, mutated) = loss_fn({"params": with_tables(others), ROWS: perturbations},
                                    [ROW_IDS])
    return value, (aux, mutated.get(ROW_IDS, {}))

  (d_others, d_rows), (aux, row_ids) = jax.grad(loss, argnums=(0, 1), has_aux=True)(
      others, zeros)
  d_rows = traverse_util.flatten_dict(d_rows)
  row_ids = traverse_util.flatten_dict(row_ids)
  sparse = {}
  for key, table in tables.items():
    module = key[:-1]  # a MemoryValues' parameter "table"; its calls' rows<i> and ids
    if key[-1] != "table" or module + ("ids",) not in row_ids:
      raise ValueError(f"sparse updates: the memory-group parameter {'/'.join(key)} is not "
                       "a MemoryValues table read by the model")
    ids = row_ids[module + ("ids",)]
    rows = [d_rows[module + (f"rows{i}",)] for i in range(len(ids))]
    sparse[key] = (SparseRows(ids[0], rows[0]) if len(ids) == 1 else
                   coalesce(jnp.concatenate(ids), jnp.concatenate(rows), table.shape[0]))
  out = traverse_util.unflatten_dict({**traverse_util.flatten_dict(d_others), **sparse})
  return out, aux
