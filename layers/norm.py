"""RMSNorm and the gated RMSNorm of Mamba2 and Gated DeltaNet."""
from __future__ import annotations

import einops
import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

from layers import axes
from layers.ops import common as ops_common


def rms_normalize(x: jax.Array, eps: float, group_size: int | None = None) -> jax.Array:
  """x / sqrt(mean(x^2) + eps) over the last axis, or over each group of `group_size`
  consecutive channels of it; computed in float32 (or wider), returned in that dtype."""
  D = jnp.shape(x)[-1]
  if group_size is not None and (group_size < 1 or D % group_size):
    raise ValueError(f"rms_normalize: group_size={group_size} must divide the width D={D}")
  x = x.astype(ops_common.accumulation_dtype(x))
  groups = einops.rearrange(x, "... (g c) -> ... g c", c=group_size or D)
  groups = groups * lax.rsqrt(jnp.mean(groups ** 2, axis=-1, keepdims=True) + eps)
  return einops.rearrange(groups, "... g c -> ... (g c)")


class RMSNorm(nn.Module):
  """y = x / sqrt(mean(x^2) + eps) * scale over the last axis D; scale: [D], init 1, whose
  logical axis is `axis_name` (layers/axes.py)."""
  eps: float = 1e-6
  axis_name: str = axes.EMBED
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", axes.param(nn.initializers.ones, self.axis_name,
                                           group=axes.NO_DECAY),
                       (jnp.shape(x)[-1],), self.param_dtype)
    return jnp.einsum("...d,d->...d", rms_normalize(x, self.eps), scale).astype(self.dtype)


class GatedRMSNorm(nn.Module):
  """RMSNorm with a SiLU gate z, normalised per group of `group_size` channels (None: all D).

  norm_before_gate=True (Gated DeltaNet): y = RMSNorm(x) * silu(z).
  norm_before_gate=False (Mamba2):        y = RMSNorm(x * silu(z)).
  x, z: [..., D]; scale: [D], init 1, whose logical axis is `axis_name` (layers/axes.py).
  """
  norm_before_gate: bool = True
  group_size: int | None = None
  eps: float = 1e-6
  axis_name: str = axes.MLP
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, z: jax.Array) -> jax.Array:
    if jnp.shape(z) != jnp.shape(x):
      raise ValueError(f"GatedRMSNorm: gate z must have the shape of x {tuple(jnp.shape(x))}; "
                       f"got {tuple(jnp.shape(z))}")
    scale = self.param("scale", axes.param(nn.initializers.ones, self.axis_name,
                                           group=axes.NO_DECAY),
                       (jnp.shape(x)[-1],), self.param_dtype)
    gate = jax.nn.silu(z.astype(ops_common.accumulation_dtype(z)))
    if self.norm_before_gate:
      y = rms_normalize(x, self.eps, self.group_size) * gate
    else:
      y = rms_normalize(x * gate, self.eps, self.group_size)
    return jnp.einsum("...d,d->...d", y, scale).astype(self.dtype)
