"""The gated channel mixer of the blocks (SwiGLU, Shazeer 2020)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from layers import axes

ACTIVATIONS = {"silu": jax.nn.silu, "gelu": jax.nn.gelu}


class MLP(nn.Module):
  """Gated MLP: y = W_out (act(x W_gate) * (x W_up)), x: [..., D], hidden width expand * D.

  act = silu gives SwiGLU, gelu GeGLU; no biases. The default expand 8/3 matches the
  parameter count of a 4x ungated MLP.
  """
  expand: float = 8 / 3
  activation: str = "silu"
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"MLP: unknown activation={self.activation!r}; "
                       f"expected one of {tuple(ACTIVATIONS)}")
    D = jnp.shape(x)[-1]
    hidden = int(self.expand * D)
    dense = lambda features, names, name: nn.Dense(
        features, use_bias=False, kernel_init=axes.kernel(*names), dtype=self.dtype,
        param_dtype=self.param_dtype, name=name)
    gate, up = jnp.split(dense(2 * hidden, (axes.EMBED, axes.MLP), "in_proj")(x), 2, axis=-1)
    return dense(D, (axes.MLP, axes.EMBED), "out_proj")(ACTIVATIONS[self.activation](gate) * up)
