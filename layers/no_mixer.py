"""The ablation baseline: a sequence mixer that mixes nothing."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from layers import common


class NoMixer(nn.Module):
  """y_t = 0: a block with this mixer is its MLP alone, a per-token model with no access to
  context. Recall tasks use it as the floor a real mixer must clear. Stateless (state None)."""
  d_model: int
  causal: bool = True
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def __call__(self, x: jax.Array, state=None, segment_ids=None) -> tuple[jax.Array, None]:
    """x: [B, T, D] -> (zeros [B, T, D], None)."""
    common.check_input("NoMixer", x, self.d_model)
    return jnp.zeros_like(x, self.dtype), None

  def init_state(self, batch_size: int, max_len: int) -> None:
    return None

  def step(self, x_t: jax.Array, state=None) -> tuple[jax.Array, None]:
    """x_t: [B, D] -> (zeros [B, D], None)."""
    common.check_input("NoMixer", x_t, self.d_model, step=True)
    return jnp.zeros_like(x_t, self.dtype), None
