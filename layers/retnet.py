"""RetNet's multi-scale retention ("Retentive Network: A Successor to Transformer for Large
Language Models", Sun et al. 2023).

Shape legend: B batch, T time, D model width, H heads, K key head dim (D / H),
V = expand_v * K value head dim.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from layers import axes, common, initializers
from layers.ops import common as ops_common
from layers.ops import linear_attention
from layers.rotary import apply_rotary


def retention_log_decay(num_heads: int) -> np.ndarray:
  """log gamma_h with gamma_h = 1 - 2^(-5-h), h = 0 .. H-1: [H]."""
  return np.log1p(-2.0 ** (-5.0 - np.arange(num_heads)))


class RetNet(nn.Module):
  """Multi-scale retention: per head h, with rotary on q and k at in-segment positions,

    S_t = gamma_h S_{t-1} + k_t v_t^T,   o_t = S_t^T q_t / sqrt(K),
    y = W_o (swish(x W_g) * GroupNorm_h(o)),

  the unnormalised retention op `linear_attention(q, k, v, g=log gamma)` followed by a
  per-head GroupNorm (no affine, as torchscale). [q | k | v | g] projections have no biases;
  init xavier_uniform with gain 2^-2.5 (q, k, v, g) and 2^-1 (W_o), as torchscale.

  impl ("parallel" | "chunk" | "reference" | "auto") picks the op's form; they give the same
  output. State: {"S": [B, H, K, V] (float32 or wider), "pos": [B] the next rotary position}.
  """
  d_model: int
  num_heads: int
  expand_v: int = 2
  rotary_base: float = 10000.0
  norm_eps: float = 1e-6
  impl: str = "auto"
  chunk_size: int = 32  # the op default: fastest on CPU (benchmarks/linear_attention.py)
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def setup(self):
    if self.num_heads < 1 or self.d_model % self.num_heads or (self.d_model // self.num_heads) % 2:
      raise ValueError(f"RetNet: num_heads={self.num_heads} must divide d_model="
                       f"{self.d_model} into an even head dim (rotary)")
    H, K = self.num_heads, self.d_model // self.num_heads
    V = self.expand_v * K
    dense = lambda features, gain, names, **kw: nn.DenseGeneral(
        features, use_bias=False,
        kernel_init=axes.kernel(*names, init=initializers.xavier_uniform(gain)),
        dtype=self.dtype, param_dtype=self.param_dtype, **kw)
    heads_in = (axes.EMBED, axes.HEADS, axes.HEAD_DIM)
    self.q_proj, self.k_proj = (dense((H, K), 2 ** -2.5, heads_in) for _ in range(2))
    self.v_proj, self.g_proj = (dense((H, V), 2 ** -2.5, heads_in) for _ in range(2))
    self.out_proj = dense(self.d_model, 2 ** -1, (axes.HEADS, axes.HEAD_DIM, axes.EMBED),
                          axis=(-2, -1))
    self.group_norm = nn.LayerNorm(self.norm_eps, use_bias=False, use_scale=False,
                                   dtype=self.dtype)

  @property
  def _state_dtype(self):
    return ops_common.accumulation_dtype(self.dtype, self.param_dtype)

  def _retention(self, x, state, positions, segment_ids, impl):
    """x: [B, T, D], positions: [B, T] -> (y: [B, T, D], S_T: [B, H, K, V])."""
    x = x.astype(self.dtype)
    q, k = (apply_rotary(proj(x), positions, self.rotary_base)
            for proj in (self.q_proj, self.k_proj))
    B, T, H, _ = q.shape
    log_gamma = jnp.asarray(retention_log_decay(H), self._state_dtype)
    o, S = linear_attention(q, k, self.v_proj(x), jnp.broadcast_to(log_gamma, (B, T, H)),
                            initial_state=state, segment_ids=segment_ids, impl=impl,
                            chunk_size=self.chunk_size)
    y = jax.nn.silu(self.g_proj(x)) * self.group_norm(o)
    return self.out_proj(y), S.astype(self._state_dtype)

  def __call__(self, x: jax.Array, state: dict | None = None,
               segment_ids: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """x: [B, T, D] -> (y: [B, T, D], state after the last token); a given state is continued
    by each row's first segment (rotary positions too), later segments start from zero."""
    common.check_input("RetNet", x, self.d_model)
    B, T, _ = x.shape
    if state is None:
      state = self.init_state(B, T)
    index, positions = ops_common.segment_positions(segment_ids, B, T)
    positions = positions + jnp.where(index == 0, state["pos"][:, None], 0)
    y, S = self._retention(x, state["S"], positions, segment_ids, self.impl)
    return y, {"S": S, "pos": (positions[:, -1] + 1).astype(state["pos"].dtype)}

  def init_state(self, batch_size: int, max_len: int) -> dict:
    """S = 0: [B, H, K, V], pos = 0: [B] (`max_len` unused: the state is fixed-size)."""
    del max_len
    H, K = self.num_heads, self.d_model // self.num_heads
    return {"S": jnp.zeros((batch_size, H, K, self.expand_v * K), self._state_dtype),
            "pos": jnp.zeros((batch_size,), jnp.int32)}

  def step(self, x_t: jax.Array, state: dict) -> tuple[jax.Array, dict]:
    """x_t: [B, D] -> (y_t: [B, D], state): the recurrent form at position pos."""
    common.check_input("RetNet", x_t, self.d_model, step=True)
    y, S = self._retention(x_t[:, None], state["S"], state["pos"][:, None], None, "reference")
    return y[:, 0], {"S": S, "pos": state["pos"] + 1}
