"""Gated DeltaNet ("Gated Delta Networks: Improving Mamba2 with Delta Rule", Yang, Kautz,
Hatamizadeh 2024) and DeltaNet ("Parallelizing Linear Transformers with the Delta Rule over
Sequence Length", Yang et al. 2024): the same block with and without the decay.

Shape legend: B batch, T time, D model width, H heads, K key head dim, V = expand_v * K value
head dim, W conv width.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import linen as nn
from jax import lax

from layers import axes, common, initializers
from layers.conv import ShortConv
from layers.norm import GatedRMSNorm
from layers.ops import common as ops_common
from layers.ops import gated_delta_rule


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """x / sqrt(sum(x^2) + eps) over the last axis."""
  return x * lax.rsqrt(jnp.sum(x ** 2, axis=-1, keepdims=True) + eps)


class DeltaNet(nn.Module):
  """DeltaNet block, per head:

    [q | k | v] = silu(conv(x W_qkv)),  q, k L2-normalised,  beta = sigmoid(x W_b),
    S_t = S_{t-1} + k_t beta_t (v_t - S_{t-1}^T k_t)^T,   o_t = S_t^T q_t / sqrt(K),
    y = W_o concat_h (RMSNorm(o_t) * silu(x W_g)),

  `gated_delta_rule(q, k, v, beta, g=None)`; the output norm is per head with a scale [V]
  shared by the heads. allow_neg_eigval doubles beta (in (0, 2)). No biases; the conv (one
  `ShortConv` over [q | k | v], no bias) restarts per segment.
  State: {"conv": [B, W - 1, 2 H K + H V], "S": [B, H, K, V] (float32 or wider)}.
  """
  d_model: int
  num_heads: int
  head_dim: int  # K
  expand_v: float = 2.0
  conv_width: int = 4
  allow_neg_eigval: bool = False
  norm_eps: float = 1e-5
  impl: str = "auto"  # gated_delta_rule form
  chunk_size: int = 32  # the op default: fastest on CPU (benchmarks/linear_attention.py)
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def setup(self):
    H, K, V = self.num_heads, self.head_dim, self._V
    if H < 1 or K < 1 or V < 1:
      raise ValueError(f"{type(self).__name__}: num_heads, head_dim and expand_v * head_dim "
                       f"must be positive; got {H}, {K}, {V}")
    self.qkv_proj = self._dense(H * (2 * K + V), (axes.EMBED, axes.MLP))
    self.conv = ShortConv(H * (2 * K + V), self.conv_width, activation="silu", use_bias=False,
                          dtype=self.dtype, param_dtype=self.param_dtype)
    self.b_proj = self._dense(H, (axes.EMBED, axes.HEADS))
    self.g_proj = self._dense((H, V), (axes.EMBED, axes.HEADS, axes.HEAD_DIM))
    self.norm = GatedRMSNorm(norm_before_gate=True, eps=self.norm_eps, axis_name=axes.HEAD_DIM,
                             dtype=self.dtype, param_dtype=self.param_dtype)
    self.out_proj = self._dense(self.d_model, (axes.HEADS, axes.HEAD_DIM, axes.EMBED),
                                axis=(-2, -1))

  def _dense(self, features, names, **kw) -> nn.DenseGeneral:
    return nn.DenseGeneral(features, use_bias=False, kernel_init=axes.kernel(*names),
                           dtype=self.dtype, param_dtype=self.param_dtype, **kw)

  @property
  def _V(self) -> int:
    return int(self.expand_v * self.head_dim)

  @property
  def _state_dtype(self):
    return ops_common.accumulation_dtype(self.dtype, self.param_dtype)

  def log_decay(self, x: jax.Array) -> jax.Array | None:
    """g: [B, T, H] log decay; None (no decay) for DeltaNet."""
    del x
    return None

  def _delta_rule(self, x, qkv, S, segment_ids, impl):
    """x: [B, T, D], qkv: conv output [B, T, H (2K + V)] -> (y: [B, T, D], S_T)."""
    K, dtype = self.head_dim, self._state_dtype
    q, k, v = jnp.split(rearrange(qkv.astype(dtype), "b t (h c) -> b t h c", h=self.num_heads),
                        [K, 2 * K], axis=-1)
    beta = jax.nn.sigmoid(self.b_proj(x).astype(dtype))
    if self.allow_neg_eigval:
      beta = 2 * beta
    o, S = gated_delta_rule(l2_normalize(q), l2_normalize(k), v, beta, self.log_decay(x),
                            initial_state=S, segment_ids=segment_ids, impl=impl,
                            chunk_size=self.chunk_size)
    return self.out_proj(self.norm(o, self.g_proj(x))), S.astype(dtype)

  def __call__(self, x: jax.Array, state: dict | None = None,
               segment_ids: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """x: [B, T, D] -> (y: [B, T, D], state after the last token)."""
    common.check_input(type(self).__name__, x, self.d_model)
    if state is None:
      state = self.init_state(x.shape[0], x.shape[1])
    x = x.astype(self.dtype)
    qkv, conv = self.conv(self.qkv_proj(x), state["conv"], segment_ids)
    y, S = self._delta_rule(x, qkv, state["S"], segment_ids, self.impl)
    return y, {"conv": conv, "S": S}

  def init_state(self, batch_size: int, max_len: int) -> dict:
    """Zero conv window and S (`max_len` unused: both are fixed-size)."""
    return {"conv": self.conv.init_state(batch_size, max_len),
            "S": jnp.zeros((batch_size, self.num_heads, self.head_dim, self._V),
                           self._state_dtype)}

  def step(self, x_t: jax.Array, state: dict) -> tuple[jax.Array, dict]:
    """x_t: [B, D] -> (y_t: [B, D], state): one conv step, one delta-rule step."""
    common.check_input(type(self).__name__, x_t, self.d_model, step=True)
    x_t = x_t.astype(self.dtype)
    qkv, conv = self.conv.step(self.qkv_proj(x_t), state["conv"])
    y, S = self._delta_rule(x_t[:, None], qkv[:, None], state["S"], None, "reference")
    return y[:, 0], {"conv": conv, "S": S}


class GatedDeltaNet(DeltaNet):
  """DeltaNet with a Mamba2-style decay per head before each update:

    S_t = exp(g_t) S_{t-1} + k_t beta_t (v_t - exp(g_t) S_{t-1}^T k_t)^T,
    g_t = -exp(A_log) softplus(x W_a + dt_bias),

  A = exp(A_log) ~ U[A_init_range] per head, softplus(dt_bias) = dt log-uniform in
  [dt_min, dt_max] (floor dt_init_floor), as the paper's code.
  """
  A_init_range: tuple[float, float] = (0.0, 16.0)
  dt_min: float = 1e-3
  dt_max: float = 1e-1
  dt_init_floor: float = 1e-4

  def setup(self):
    super().setup()
    H, low, high = self.num_heads, *self.A_init_range
    self.a_proj = self._dense(H, (axes.EMBED, axes.HEADS))
    self.A_log = self.param(
        "A_log", axes.param(initializers.log_uniform(low, high), axes.HEADS, group=axes.SSM),
        (H,), self.param_dtype)
    self.dt_bias = self.param(
        "dt_bias", axes.param(initializers.dt_bias(self.dt_min, self.dt_max, self.dt_init_floor),
                              axes.HEADS, group=axes.SSM), (H,), self.param_dtype)

  def log_decay(self, x: jax.Array) -> jax.Array:
    dtype = self._state_dtype
    dt = jax.nn.softplus(self.a_proj(x).astype(dtype) + self.dt_bias.astype(dtype)[None, None])
    return -jnp.exp(self.A_log.astype(dtype))[None, None] * dt
