"""minGRU and minLSTM ("Were RNNs All We Needed?", Feng et al. 2024): gates that depend on
x_t only, so training is one log-space scan (`log_linear_scan`)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from layers import axes, common
from layers.ops import common as ops_common
from layers.ops import linear_scan, log_linear_scan


def g(x: jax.Array) -> jax.Array:
  """The positive activation g(x) = x + 1/2 for x >= 0, sigmoid(x) otherwise."""
  return jnp.where(x >= 0, x + 0.5, jax.nn.sigmoid(x))


def log_g(x: jax.Array) -> jax.Array:
  """log g(x) = log(x + 1/2) for x >= 0, -softplus(-x) otherwise."""
  return jnp.where(x >= 0, jnp.log(jax.nn.relu(x) + 0.5), -jax.nn.softplus(-x))


def min_gru_log_coefficients(hidden: jax.Array, k: jax.Array) -> tuple[jax.Array, jax.Array]:
  """minGRU: z = sigmoid(k), h_t = (1 - z) h_{t-1} + z g(h~), in log space:

  log a = log(1 - z) = -softplus(k),  log b = log z + log g(h~) = -softplus(-k) + log g(h~).
  """
  return -jax.nn.softplus(k), -jax.nn.softplus(-k) + log_g(hidden)


def min_lstm_log_coefficients(hidden: jax.Array, f: jax.Array,
                              i: jax.Array) -> tuple[jax.Array, jax.Array]:
  """minLSTM: f' = sigmoid(f) / (sigmoid(f) + sigmoid(i)), i' = 1 - f',
  h_t = f' h_{t-1} + i' g(h~), normalised in log space:

  log f' = -softplus(-f) - logaddexp(-softplus(-f), -softplus(-i)),  log b = log i' + log g(h~).
  """
  log_f, log_i = -jax.nn.softplus(-f), -jax.nn.softplus(-i)
  log_total = jnp.logaddexp(log_f, log_i)
  return log_f - log_total, log_i - log_total + log_g(hidden)


class _MinRNN(nn.Module):
  """h_t = a_t h_{t-1} + b_t with (log a_t, log b_t) from one bias-free projection of x_t.

  The state is h itself, [B, D_inner] with D_inner = expand * D, in float32 (or
  wider). h_{-1} is used as is in both forms and must be positive (the scan takes its log),
  or 0: `init_state` gives zeros, the empty history, which both forms treat exactly like
  state=None (log 0 = -inf drops out of the first logaddexp; only a gradient with respect to a
  zero state itself is undefined). A caller holding an arbitrary real previous hidden p (some
  PyTorch ports) passes g(p). With expand != 1 a bias-free projection maps D_inner
  back to D.
  """
  d_model: int
  expand: float = 1.0
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  # Set by the subclass: the blocks of the input projection and the map from them to
  # (log a, log b).
  num_inputs = 0
  log_coefficients = None

  def setup(self):
    self.d_inner = int(self.expand * self.d_model)
    dense = lambda features, *names: nn.Dense(features, use_bias=False,
                                              kernel_init=axes.kernel(*names), dtype=self.dtype,
                                              param_dtype=self.param_dtype)
    self.in_proj = dense(self.num_inputs * self.d_inner, axes.EMBED, axes.MLP)
    self.out_proj = (dense(self.d_model, axes.MLP, axes.EMBED) if self.expand != 1
                     else None)

  def _log_coefficients(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x: [..., D] -> (log a, log b): [..., D_inner] each, float32 or wider."""
    proj = self.in_proj(x.astype(self.dtype)).astype(self._state_dtype)
    return type(self).log_coefficients(*jnp.split(proj, self.num_inputs, axis=-1))

  def _output(self, h: jax.Array) -> jax.Array:
    h = h.astype(self.dtype)
    return h if self.out_proj is None else self.out_proj(h)

  @property
  def _state_dtype(self):
    return ops_common.accumulation_dtype(self.dtype)

  def __call__(self, x: jax.Array, state: jax.Array | None = None,
               segment_ids: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """x: [B, T, D] -> (y: [B, T, D], h_T: [B, D_inner]) by the log-space scan."""
    common.check_input(type(self).__name__, x, self.d_model)
    log_a, log_b = self._log_coefficients(x)
    h, state = log_linear_scan(log_a, log_b, state, segment_ids=segment_ids)
    return self._output(h), state.astype(self._state_dtype)

  def init_state(self, batch_size: int, max_len: int) -> jax.Array:
    """h_{-1} = 0: [B, D_inner] (`max_len` unused)."""
    del max_len
    return jnp.zeros((batch_size, self.d_inner), self._state_dtype)

  def step(self, x_t: jax.Array, state: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x_t: [B, D] -> (y_t, h_t = exp(log a_t) h_{t-1} + exp(log b_t))."""
    common.check_input(type(self).__name__, x_t, self.d_model, step=True)
    log_a, log_b = self._log_coefficients(x_t)
    _, h = linear_scan(jnp.exp(log_a)[:, None], jnp.exp(log_b)[:, None], state,
                       impl="reference")
    return self._output(h), h.astype(self._state_dtype)


class MinGRU(_MinRNN):
  """minGRU: [h~ | k] = x W (no bias), h_t = (1 - z_t) h_{t-1} + z_t g(h~_t), z = sigmoid(k)."""
  num_inputs = 2
  log_coefficients = staticmethod(min_gru_log_coefficients)


class MinLSTM(_MinRNN):
  """minLSTM: [h~ | f | i] = x W (no bias), h_t = f'_t h_{t-1} + i'_t g(h~_t) with the
  normalised gates f' = sigmoid(f) / (sigmoid(f) + sigmoid(i)), i' = 1 - f'."""
  num_inputs = 3
  log_coefficients = staticmethod(min_lstm_log_coefficients)
