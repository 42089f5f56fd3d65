"""Product-key memory layers (Lample et al. 2019) and Memory+ (Berges et al. 2024): a channel
mixer that reads a few rows of a large value table chosen by an exact top-k over product keys.

Shapes: x [B, T, D] (or a decoding step's [B, D]); H memory heads, each with two sub-key
tables [n, Kh] (Kh = k_dim / 2) whose n**2 sums are the product keys; the value table [N, V]
with N = n**2, shared by every memory layer of a backbone (or one per layer).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import linen as nn

from layers import axes
from layers.ops import memory_lookup, product_key_topk

QUERY_NORMS = ("layernorm", None)
# Sparse updates (train/sparse.py): when ROW_IDS is a mutable collection, each call of a
# MemoryValues reads its touched rows through a zero perturbation in ROWS (the gradient of
# `rows<i>` [U, V] is that of the i-th call's touched rows) and sows their ids in ROW_IDS.
ROWS = "memory_rows"
ROW_IDS = "memory_row_ids"


class MemoryValues(nn.Module):
  """The value table [n_rows, v_dim], values ~ N(0, std v_dim**-0.5), in the optimizer group
  `axes.MEMORY`, its columns on the logical axis `axes.MEMORY_VALUES`. Called with (indices,
  weights) [B, T, H, k] it returns their bag [B, T, V] (`layers.ops.memory_lookup`); when the
  "intermediates" collection is mutable (eval), it also sums, over every call, the hits of
  each row ("row_hits") and the weight each row received ("row_weights"), [n_rows] each: the
  usage measures of Lample et al. (4.3).

  When the collection ROW_IDS is mutable (a sparse-update train step), the i-th call reads
  the bag from its touched rows only: (ids, inverse) = `touched_rows(indices)`, rows =
  table[ids] + perturbation ROWS/rows<i> (zeros [U, V]), bag = memory_lookup(rows, inverse,
  weights), the same numbers; ids are sown in ROW_IDS/ids, so d loss / d rows<i> is the
  gradient of the touched rows with duplicates summed, and the table itself is never
  differentiated."""
  n_rows: int
  v_dim: int
  param_dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.table = self.param(
        "table", axes.param(nn.initializers.normal(stddev=self.v_dim ** -0.5), None,
                            axes.MEMORY_VALUES, group=axes.MEMORY),
        (self.n_rows, self.v_dim), self.param_dtype)

  def __call__(self, indices: jax.Array, weights: jax.Array) -> jax.Array:
    if self.is_mutable_collection("intermediates"):
      rows = indices.ravel()
      add = lambda a, b: a + b
      self.sow("intermediates", "row_hits", jnp.zeros(self.n_rows).at[rows].add(1.0),
               init_fn=lambda: 0.0, reduce_fn=add)
      self.sow("intermediates", "row_weights",
               jnp.zeros(self.n_rows).at[rows].add(weights.ravel().astype(jnp.float32)),
               init_fn=lambda: 0.0, reduce_fn=add)
    if self.is_mutable_collection(ROW_IDS):
      call = len(self.get_variable(ROW_IDS, "ids", ()))
      ids, inverse = touched_rows(indices, self.n_rows)
      rows = jnp.take(self.table, ids, axis=0, mode="fill", fill_value=0)
      rows = self.perturb(f"rows{call}", rows, collection=ROWS)
      self.sow(ROW_IDS, "ids", ids)
      return memory_lookup(rows, inverse, weights)
    return memory_lookup(self.table, indices, weights)


def touched_rows(indices: jax.Array, n_rows: int) -> tuple[jax.Array, jax.Array]:
  """(ids [U], inverse) of int `indices` (any shape, U = indices.size, a static size): the
  distinct rows in ascending order, padded with n_rows (out of range: gathers read zeros,
  scatters drop it), and inverse (the shape of indices) with ids[inverse] == indices."""
  ids, inverse = jnp.unique(jnp.ravel(indices), size=jnp.size(indices), fill_value=n_rows,
                            return_inverse=True)
  return ids, inverse.reshape(jnp.shape(indices))


class ProductKeyMemory(nn.Module):
  """A product-key memory channel mixer; no sequence state, so it decodes token by token.

    q = LayerNorm(W_q x) per half, [B, T, H, 2, Kh]     (W_q: D -> H * 2 * Kh, bias 0)
    (s, I) = top-k over the n**2 product keys           (`layers.ops.product_key_topk`)
    m(x) = sum_h sum_k softmax(s)_k values[I_k]          (softmax in float32 or wider)
    out = W_o(m(x) * silu(W_s x))   (memory_plus: W_s: D -> V, W_o: V -> D, biases 0)
    out = m(x)                      (not memory_plus: V = D, the 2019 layer)

  Sub-keys ~ U(+-1/sqrt(Kh)). `values`: a `MemoryValues` shared with other layers (the
  backbone owns it); None gives the layer its own table.
  """
  d_model: int
  n_keys: int = 32           # n sub-keys per half: N = n**2 value rows
  heads: int = 4             # H memory heads
  topk: int = 32             # k rows read per head
  k_dim: int = 64            # width of a product key; each half has Kh = k_dim / 2
  v_dim: int | None = None   # V, the value width (None: d_model)
  memory_plus: bool = True
  query_norm: str | None = "layernorm"
  values: nn.Module | None = None
  impl: str = "auto"         # form of product_key_topk
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def setup(self):
    check_options(self.d_model, {f: getattr(self, f) for f in OPTIONS})
    Kh, V = self.k_dim // 2, self.value_dim
    modules = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.query = nn.Dense(self.heads * 2 * Kh, kernel_init=axes.kernel(axes.EMBED, None),
                          bias_init=axes.bias(None), **modules)
    if self.query_norm == "layernorm":
      self.norm = nn.LayerNorm(
          scale_init=axes.param(nn.initializers.ones_init(), None, group=axes.NO_DECAY),
          bias_init=axes.param(nn.initializers.zeros_init(), None, group=axes.NO_DECAY),
          **modules)
    bound = Kh ** -0.5
    self.keys = self.param(
        "keys", axes.param(lambda key, shape, dtype: jax.random.uniform(
            key, shape, dtype, -bound, bound), None, None, None, None),
        (self.heads, 2, self.n_keys, Kh), self.param_dtype)
    self.table = (MemoryValues(self.n_keys ** 2, V, self.param_dtype)
                  if self.values is None else self.values)
    if self.memory_plus:
      self.gate_proj = nn.Dense(V, kernel_init=axes.kernel(axes.EMBED, axes.MLP),
                                bias_init=axes.bias(axes.MLP), **modules)
      self.out_proj = nn.Dense(self.d_model, kernel_init=axes.kernel(axes.MLP, axes.EMBED),
                               bias_init=axes.bias(axes.EMBED), **modules)

  @property
  def value_dim(self) -> int:
    return self.v_dim or self.d_model

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T, D] or [B, D] -> the same shape."""
    if jnp.ndim(x) not in (2, 3) or jnp.shape(x)[-1] != self.d_model:
      raise ValueError(f"ProductKeyMemory: x must have shape [B, T, D={self.d_model}] or "
                       f"[B, D]; got {tuple(jnp.shape(x))}")
    step = jnp.ndim(x) == 2
    h = x[:, None] if step else x
    q = rearrange(self.query(h), "b t (h c k) -> b t h c k", h=self.heads, c=2)
    if self.query_norm == "layernorm":
      q = self.norm(q)
    scores, indices = product_key_topk(q, self.keys, topk=self.topk, impl=self.impl)
    weights = jax.nn.softmax(scores.astype(jnp.promote_types(scores.dtype, jnp.float32)), -1)
    out = self.table(indices, weights).astype(self.dtype)
    if self.memory_plus:
      out = self.out_proj(out * jax.nn.silu(self.gate_proj(h)))
    out = out.astype(x.dtype)
    return out[:, 0] if step else out


# the options a config sets (`model.memory`), all but d_model, values and dtypes
OPTIONS = ("n_keys", "heads", "topk", "k_dim", "v_dim", "memory_plus", "query_norm", "impl")


def check_options(d_model: int, options: Mapping) -> None:
  """Raises a ValueError naming the first bad ProductKeyMemory option of `options` (unknown
  key, sizes, topk <= n_keys, odd k_dim, query_norm, V = D without memory_plus)."""
  unknown = sorted(set(options) - set(OPTIONS))
  if unknown:
    raise ValueError(f"ProductKeyMemory: unknown option(s) {', '.join(unknown)}; known: "
                     f"{', '.join(OPTIONS)}")
  o = {**defaults(), **options}
  for name in ("n_keys", "heads", "topk", "k_dim"):
    if not isinstance(o[name], int) or o[name] < 1:
      raise ValueError(f"ProductKeyMemory: {name}={o[name]!r}: expected a positive int")
  if o["topk"] > o["n_keys"]:
    raise ValueError(f"ProductKeyMemory: topk={o['topk']} must be <= n_keys={o['n_keys']}")
  if o["k_dim"] % 2:
    raise ValueError(f"ProductKeyMemory: k_dim={o['k_dim']} must be even (two halves)")
  if o["query_norm"] not in QUERY_NORMS:
    raise ValueError(f"ProductKeyMemory: query_norm={o['query_norm']!r}: expected one of "
                     f"{QUERY_NORMS}")
  if not o["memory_plus"] and o["v_dim"] not in (None, d_model):
    raise ValueError(f"ProductKeyMemory: v_dim={o['v_dim']} must be d_model={d_model} (or "
                     "None) without memory_plus: the bag is the output")


def check_layers(layers, n_layers: int, name: str = "memory_layers") -> None:
  """Raises a ValueError unless `layers` are distinct block indices in [0, n_layers)."""
  layers = tuple(layers)
  if any(not isinstance(i, int) or not 0 <= i < n_layers for i in layers) or (
      len(set(layers)) != len(layers)):
    raise ValueError(f"{name}={layers} must be distinct block indices in "
                     f"[0, n_layers={n_layers})")


def defaults() -> dict:
  """The default of every option in OPTIONS."""
  fields = {f.name: f.default for f in dataclasses.fields(ProductKeyMemory)}
  return {name: fields[name] for name in OPTIONS}


def table_shape(d_model: int, options: Mapping) -> tuple[int, int]:
  """(N, V) of the value table of ProductKeyMemory(d_model, **options)."""
  o = {**defaults(), **options}
  return o["n_keys"] ** 2, o["v_dim"] or d_model


def flops_per_token(d_model: int, options: Mapping) -> int:
  """Multiply-adds per token of ProductKeyMemory(d_model, **options), counted analytically:
  query D*H*2Kh, sub-key scores 2*H*n*Kh, candidate sums H*k**2, the bag H*k*V, and
  W_s, W_o 2*D*V with memory_plus."""
  o = {**defaults(), **options}
  D, H, n, k, Kh = d_model, o["heads"], o["n_keys"], o["topk"], o["k_dim"] // 2
  V = o["v_dim"] or d_model
  return (D * H * 2 * Kh + 2 * H * n * Kh + H * k * k + H * k * V
          + (2 * D * V if o["memory_plus"] else 0))
