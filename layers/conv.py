"""Short causal depthwise convolution: the token mixer in front of Mamba, Gated DeltaNet and
BASED."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from layers import axes, common
from layers.ops import common as ops_common

ACTIVATIONS = {"none": lambda y: y, "silu": jax.nn.silu}


def _windows(a: jax.Array, width: int, length: int) -> jax.Array:
  """[B, W - 1 + T, ...] -> [B, T, W, ...]: the W inputs x_{t-W+1} .. x_t of every step t."""
  return jnp.stack([a[:, j:j + length] for j in range(width)], axis=2)


class ShortConv(nn.Module):
  """Causal depthwise convolution over time, per channel d:

    y_t = act(b + sum_{j<W} w_j x_{t-W+1+j}),   w: [W, D], b: [D],

  with taps that reach before the start of t's segment reading zero. The state is the last
  W - 1 inputs [B, W - 1, D] (oldest first; zeros before the first token). Initialisation as
  PyTorch's Conv1d: w, b ~ U(-1/sqrt(W), 1/sqrt(W)).
  """
  d_model: int
  width: int = 4
  activation: str = "none"
  use_bias: bool = True
  channel_axis: str = axes.MLP  # the logical name of the channels (layers/axes.py)
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def setup(self):
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"ShortConv: unknown activation={self.activation!r}; "
                       f"expected one of {tuple(ACTIVATIONS)}")
    if self.width < 1:
      raise ValueError(f"ShortConv: width must be >= 1; got {self.width}")
    bound = self.width ** -0.5
    init = lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)
    self.kernel = self.param("kernel", axes.param(init, axes.CONV, self.channel_axis),
                             (self.width, self.d_model), self.param_dtype)
    self.bias = (self.param("bias", axes.param(init, self.channel_axis, group=axes.NO_DECAY),
                            (self.d_model,), self.param_dtype)
                 if self.use_bias else jnp.zeros((self.d_model,), self.param_dtype))

  def _mix(self, windows: jax.Array) -> jax.Array:
    """[B, (T,) W, D] windows -> act(b + sum_j w_j window_j): [B, (T,) D]."""
    dtype = ops_common.accumulation_dtype(windows, self.kernel)
    y = jnp.einsum("...wd,wd->...d", windows.astype(dtype), self.kernel.astype(dtype))
    y = y + jnp.broadcast_to(self.bias.astype(dtype), y.shape)
    return ACTIVATIONS[self.activation](y).astype(self.dtype)

  def __call__(self, x: jax.Array, state: jax.Array | None = None,
               segment_ids: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """x: [B, T, D] -> (y: [B, T, D], state: the last W - 1 inputs of the last segment)."""
    common.check_input("ShortConv", x, self.d_model)
    B, T, D = x.shape
    if state is None:
      state = self.init_state(B, T)
    ops_common.check_shape("ShortConv", "state", state, (B, self.width - 1, D), "[B, W - 1, D]")
    index, _ = ops_common.segment_positions(segment_ids, B, T)
    x_pad = jnp.concatenate([state, x.astype(state.dtype)], axis=1)
    index_pad = jnp.concatenate([jnp.zeros((B, self.width - 1), index.dtype), index], axis=1)
    same_segment = _windows(index_pad, self.width, T) == index[:, :, None]
    y = self._mix(jnp.where(same_segment[..., None], _windows(x_pad, self.width, T), 0))
    in_last = (index_pad[:, T:] == index[:, -1:])[..., None]
    return y, jnp.where(in_last, x_pad[:, T:], 0)

  def init_state(self, batch_size: int, max_len: int) -> jax.Array:
    """Zeros [B, W - 1, D] (`max_len` unused: the window is fixed)."""
    del max_len
    return jnp.zeros((batch_size, self.width - 1, self.d_model), self.dtype)

  def step(self, x_t: jax.Array, state: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x_t: [B, D] -> (y_t: [B, D], the window shifted by one)."""
    common.check_input("ShortConv", x_t, self.d_model, step=True)
    windows = jnp.concatenate([state, x_t.astype(state.dtype)[:, None]], axis=1)
    return self._mix(windows), windows[:, 1:]
