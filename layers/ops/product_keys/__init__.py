"""Product-key memory (Lample et al. 2019; Berges et al. 2024): the exact top-k over product
keys and the weighted bag of value rows."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from layers.ops import common
from layers.ops.product_keys import reference, xla

common.register("product_key_topk", {"reference": reference.product_key_topk,
                                     "product": xla.product})
common.register("memory_lookup", {"reference": reference.memory_lookup, "chunk": xla.chunk})


def product_key_topk(q: jax.Array, keys: jax.Array, *, topk: int,
                     impl: str = "auto") -> tuple[jax.Array, jax.Array]:
  """The `topk` best product keys per (b, t, h), descending.

  score(i, j) = q[..., 0, :] . keys[h, 0, i] + q[..., 1, :] . keys[h, 1, j] (no 1/sqrt(d)),
  index = i * n_keys + j, over all n_keys**2 pairs (i, j).

  Args:
    q: [B, T, H, 2, Kh] two half-queries per head (array-likes; integers become floats).
    keys: [H, 2, n_keys, Kh] two sub-key tables per head.
    topk: k, 1 <= k <= n_keys.
    impl: "reference" (scores all n_keys**2 keys, then top_k: the oracle) | "product" (top-k
      of each half, the k**2 candidate sums, a second top-k: exact) | "auto".
  Returns:
    scores: [B, T, H, k] in the dtype of q and keys; indices: [B, T, H, k] int32.
  """
  op = "product_key_topk"
  q, keys = common.as_float(q, keys)
  common.check_rank(op, "q", q, 5, "[B, T, H, 2, Kh]")
  common.check_rank(op, "keys", keys, 4, "[H, 2, n_keys, Kh]")
  B, T, H, two, Kh = q.shape
  if two != 2:
    raise ValueError(f"{op}: q must have shape [B, T, H, 2, Kh] (two half-queries); got "
                     f"{q.shape}")
  n_keys = keys.shape[2]
  common.check_shape(op, "keys", keys, (H, 2, n_keys, Kh), "[H, 2, n_keys, Kh]")
  if not isinstance(topk, int) or not 1 <= topk <= n_keys:
    raise ValueError(f"{op}: topk must be an int in [1, n_keys={n_keys}]; got {topk!r}")
  dtype = jnp.result_type(q, keys)
  form = common.dispatch(op, impl)
  scores, indices = form(q.astype(dtype), keys.astype(dtype), topk)
  return scores, indices.astype(jnp.int32)


def memory_lookup(values: jax.Array, indices: jax.Array, weights: jax.Array, *,
                  impl: str = "auto", chunk_size: int = 64) -> jax.Array:
  """The weighted bag of value rows, heads summed (as in both papers):

    out[b, t] = sum_h sum_k weights[b, t, h, k] values[indices[b, t, h, k]].

  Args:
    values: [N, V] the value table.
    indices: [B, T, H, k] int rows of `values` (from `product_key_topk`).
    weights: [B, T, H, k] (the softmax over the top-k scores).
    impl: "reference" (a plain gather: materialises [B, T, H, k, V]) | "chunk" (C tokens at
      a time, forward and backward: a custom_vjp whose value gradient is a scatter-add into
      the touched rows) | "auto".
    chunk_size: C of "chunk".
  Returns:
    out: [B, T, V] in the promoted dtype of values and weights.
  """
  op = "memory_lookup"
  indices = jnp.asarray(indices)
  values, weights = common.as_float(values, weights)
  common.check_rank(op, "values", values, 2, "[N, V]")
  common.check_rank(op, "indices", indices, 4, "[B, T, H, k]")
  if not jnp.issubdtype(indices.dtype, jnp.integer):
    raise ValueError(f"{op}: indices must be an integer array [B, T, H, k]; got dtype "
                     f"{indices.dtype}")
  common.check_shape(op, "weights", weights, indices.shape, "[B, T, H, k] (as indices)")
  dtype = jnp.result_type(values, weights)
  form = common.dispatch(op, impl, chunk_size=chunk_size)
  if indices.size == 0:
    return jnp.zeros((*indices.shape[:2], values.shape[1]), dtype)
  return form(values.astype(dtype), indices, weights.astype(dtype))


__all__ = ["memory_lookup", "product_key_topk"]
