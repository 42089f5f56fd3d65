"""BASED ("Simple linear attention language models balance the recall-throughput tradeoff",
Arora et al. 2024): Taylor-feature linear attention and the gated convolution block BaseConv;
the registry's `based` pattern mixes them with sliding-window attention as the paper does.

Shape legend: B batch, T time, D model width, H heads, K = F feature dim of q and k,
P = 1 + F + F (F + 1) / 2 Taylor features, V value head dim, E inner width, W conv width.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from layers import axes, common
from layers.conv import ShortConv
from layers.ops import common as ops_common
from layers.ops import linear_attention


def taylor_feature_map(x: jax.Array, scale: float | None = None) -> jax.Array:
  """The packed 2nd-order Taylor map of exp, [..., d] -> [..., 1 + d + d (d + 1) / 2]:

    phi(x) = [1, x'_i, x'_i^2 / sqrt(2), x'_i x'_j for i < j (row-major)],  x' = x scale^(1/2),

  so that phi(q).phi(k) = 1 + s + s^2 / 2 with s = scale q.k (default scale = d^(-1/2)).
  """
  d = jnp.shape(x)[-1]
  scale = d ** -0.5 if scale is None else scale
  x = x * scale ** 0.5
  i, j = np.triu_indices(d, k=1)
  return jnp.concatenate([jnp.ones_like(x[..., :1]), x, x ** 2 * 0.5 ** 0.5,
                          x[..., i] * x[..., j]], axis=-1)


class Based(nn.Module):
  """Linear attention with the Taylor feature map phi and a running normaliser, per head:

    y_t = sum_{s<=t} phi(q_t).phi(k_s) v_s / (sum_{s<=t} phi(q_t).phi(k_s) + eps),

  q, k: [B, T, H, K] (K = head_dim, the feature dim d of the Taylor map, default 16),
  v: [B, T, H, V] (V = value_dim, default d_model / H); y = W_o concat_h y_t.
  Numerator and denominator come from one `linear_attention(phi(q), phi(k), [v | 1],
  scale=1)`. No biases. State: [B, H, P, V + 1] (float32 or wider), its last column the
  normaliser sum_s phi(k_s).
  """
  d_model: int
  num_heads: int
  head_dim: int = 16  # K: q, k width per head (the Taylor map's feature dim d)
  value_dim: int | None = None  # V; default d_model // num_heads
  eps: float = 1e-6
  impl: str = "auto"
  chunk_size: int = 32  # the op default: fastest on CPU (benchmarks/linear_attention.py)
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def setup(self):
    if self.num_heads < 1 or (self.value_dim is None and self.d_model % self.num_heads):
      raise ValueError(f"Based: num_heads={self.num_heads} must divide d_model={self.d_model} "
                       f"(or set value_dim)")
    H, F = self.num_heads, self.head_dim
    dense = lambda features, names, **kw: nn.DenseGeneral(
        features, use_bias=False, kernel_init=axes.kernel(*names), dtype=self.dtype,
        param_dtype=self.param_dtype, **kw)
    heads_in = (axes.EMBED, axes.HEADS, axes.HEAD_DIM)
    self.q_proj, self.k_proj = dense((H, F), heads_in), dense((H, F), heads_in)
    self.v_proj = dense((H, self._V), heads_in)
    self.out_proj = dense(self.d_model, (axes.HEADS, axes.HEAD_DIM, axes.EMBED), axis=(-2, -1))

  @property
  def _V(self) -> int:
    return self.value_dim or self.d_model // self.num_heads

  @property
  def _state_dtype(self):
    return ops_common.accumulation_dtype(self.dtype, self.param_dtype)

  def _attend(self, x, state, segment_ids, impl):
    """x: [B, T, D] -> (y: [B, T, D], state [B, H, P, V + 1])."""
    x = x.astype(self.dtype)
    v = self.v_proj(x)
    v_ones = jnp.concatenate([v, jnp.ones_like(v[..., :1])], axis=-1)
    o, state = linear_attention(taylor_feature_map(self.q_proj(x)),
                                taylor_feature_map(self.k_proj(x)), v_ones, scale=1.0,
                                initial_state=state, segment_ids=segment_ids, impl=impl,
                                chunk_size=self.chunk_size)
    y = o[..., :-1] / (o[..., -1:] + self.eps)
    return self.out_proj(y.astype(self.dtype)), state.astype(self._state_dtype)

  def __call__(self, x: jax.Array, state: jax.Array | None = None,
               segment_ids: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """x: [B, T, D] -> (y: [B, T, D], state after the last token)."""
    common.check_input("Based", x, self.d_model)
    return self._attend(x, state, segment_ids, self.impl)

  def init_state(self, batch_size: int, max_len: int) -> jax.Array:
    """Zeros [B, H, P, V + 1] (`max_len` unused: the state is fixed-size)."""
    del max_len
    F = self.head_dim
    P = 1 + F + F * (F + 1) // 2
    return jnp.zeros((batch_size, self.num_heads, P, self._V + 1), self._state_dtype)

  def step(self, x_t: jax.Array, state: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x_t: [B, D] -> (y_t: [B, D], state + phi(k_t) [v_t | 1]^T)."""
    common.check_input("Based", x_t, self.d_model, step=True)
    y, state = self._attend(x_t[:, None], state, None, "reference")
    return y[:, 0], state


class BaseConv(nn.Module):
  """BASED's gated convolution block (as released, short filters):

    [u1 | u2] = x W_in + b_in,   y = (silu(conv(u1)) * u2) W_out + b_out,

  conv a causal depthwise filter of `conv_width` taps without bias (`ShortConv`), on the inner
  width E = expand * D. A long explicit filter is `conv_width = l_max` (O(T W) memory). State: the
  conv window [B, W - 1, E].
  """
  d_model: int
  expand: int = 2
  conv_width: int = 3
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def setup(self):
    E = self.expand * self.d_model
    dense = lambda features, names: nn.Dense(
        features, kernel_init=axes.kernel(*names), bias_init=axes.bias(names[-1]),
        dtype=self.dtype, param_dtype=self.param_dtype)
    self.in_proj = dense(2 * E, (axes.EMBED, axes.MLP))
    self.out_proj = dense(self.d_model, (axes.MLP, axes.EMBED))
    self.conv = ShortConv(E, self.conv_width, activation="silu", use_bias=False,
                          dtype=self.dtype, param_dtype=self.param_dtype)

  def __call__(self, x: jax.Array, state: jax.Array | None = None,
               segment_ids: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """x: [B, T, D] -> (y: [B, T, D], conv window after the last token)."""
    common.check_input("BaseConv", x, self.d_model)
    u1, u2 = jnp.split(self.in_proj(x.astype(self.dtype)), 2, axis=-1)
    u1, state = self.conv(u1, state, segment_ids)
    return self.out_proj(u1 * u2), state

  def init_state(self, batch_size: int, max_len: int) -> jax.Array:
    """Zeros [B, W - 1, E]."""
    return self.conv.init_state(batch_size, max_len)

  def step(self, x_t: jax.Array, state: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x_t: [B, D] -> (y_t: [B, D], the conv window shifted by one)."""
    common.check_input("BaseConv", x_t, self.d_model, step=True)
    u1, u2 = jnp.split(self.in_proj(x_t.astype(self.dtype)), 2, axis=-1)
    u1, state = self.conv.step(u1, state)
    return self.out_proj(u1 * u2), state
