"""Rotary position embedding (RoFormer, Su et al. 2021)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from layers.ops import common as ops_common


def apply_rotary(x: jax.Array, positions: jax.Array, base: float = 10000.0) -> jax.Array:
  """Rotates channel pairs (x_i, x_{i+K/2}) by the angle p * base^(-2i/K) (half-split form).

  (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), so q_t.k_s depends on t - s only.
  x: [..., H, K] with K even; positions: [...] int. Returns x's shape and dtype.
  """
  K = jnp.shape(x)[-1]
  if K % 2:
    raise ValueError(f"apply_rotary: the head dim K must be even; got K={K}")
  dtype = ops_common.accumulation_dtype(x)
  inv_freq = base ** (-2 * jnp.arange(K // 2, dtype=dtype) / K)
  angle = jnp.einsum("...,k->...k", positions.astype(dtype), inv_freq)[..., None, :]
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  x1, x2 = jnp.split(x.astype(dtype), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)
