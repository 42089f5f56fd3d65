"""Shared plumbing of the layers: input checks and state sizes (the ops' helpers they use, such
as `segment_positions` and `accumulation_dtype`, live in the public `layers.ops.common`).

Shape legend: B batch, T time, D model width, H heads (or SSM channels), K head dim,
N state size, W convolution width, C cache capacity.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def check_input(module: str, x, width: int, step: bool = False) -> None:
  """Raises a ValueError unless `x` is [B, T, D=width] (or [B, D=width] for a step)."""
  layout = f"[B, D={width}]" if step else f"[B, T, D={width}]"
  if jnp.ndim(x) != (2 if step else 3) or jnp.shape(x)[-1] != width:
    raise ValueError(f"{module}: x must have shape {layout}; got {tuple(jnp.shape(x))}")


def state_bytes(module, batch_size: int = 1, max_len: int = 1) -> int:
  """Bytes of the recurrent state `module.init_state(batch_size, max_len)` of any mixer (or
  backbone), from shapes alone: nothing is allocated or computed."""
  state = jax.eval_shape(lambda: module.init_with_output(
      jax.random.key(0), batch_size, max_len, method="init_state")[0])
  return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(state))
