"""Parameter initialisers shared by several layers (flax signature `init(key, shape, dtype)`),
so no mixer imports another mixer for one."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn


def uniform(low: float, high: float):
  """U[low, high)."""
  return lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, low, high)


def log_uniform(low: float, high: float):
  """log a with a ~ U[low, high): the A_log of Mamba2 and Gated DeltaNet (A = exp(A_log))."""
  return lambda key, shape, dtype: jnp.log(uniform(low, high)(key, shape, dtype))


def constant(value: np.ndarray):
  """`value` broadcast to the parameter's shape (its trailing axes)."""
  return lambda key, shape, dtype: jnp.broadcast_to(jnp.asarray(value, dtype), shape)


def dt_bias(dt_min: float, dt_max: float, floor: float):
  """The inverse-softplus bias b with softplus(b) = dt, dt = max(floor,
  exp(U[log dt_min, log dt_max])) (Mamba, Mamba2, Gated DeltaNet)."""
  def init(key, shape, dtype):
    dt = jnp.exp(uniform(np.log(dt_min), np.log(dt_max))(key, shape, dtype))
    dt = jnp.maximum(dt, floor)
    return dt + jnp.log(-jnp.expm1(-dt))
  return init


S4D_A_INITS = ("lin", "inv", "real")


def s4d_A(init: str, d_state: int) -> tuple[np.ndarray, np.ndarray]:
  """(A_re, A_im): [N/2] of the S4D paper's initialisations, n = 0 .. N/2 - 1.

  lin: A_n = -1/2 + i pi n;  inv: A_n = -1/2 + i N/pi (N/(2n+1) - 1);  real: A_n = -(n+1).
  """
  n = np.arange(d_state // 2)
  if init == "lin":
    return np.full(n.shape, -0.5), np.pi * n
  if init == "inv":
    return np.full(n.shape, -0.5), d_state / np.pi * (d_state / (2 * n + 1) - 1)
  return -(n + 1.0), np.zeros(n.shape)


def xavier_uniform(gain: float):
  """Glorot-uniform scaled by `gain` (torch's xavier_uniform_(gain=...))."""
  return nn.initializers.variance_scaling(gain ** 2, "fan_avg", "uniform")
