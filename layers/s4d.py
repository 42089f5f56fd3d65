"""S4D: the diagonal state space layer ("On the Parameterization and Initialization of
Diagonal State Space Models", Gu, Gupta, Goel, Re 2022)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax

from layers import axes, common, initializers
from layers.ops import common as ops_common
from layers.ops import s4d_conv


class S4D(nn.Module):
  """Diagonal SSM per channel h, then GELU and a GLU output projection:

    x_t = A_bar x_{t-1} + B_bar u_t,   y_t = 2 Re(C x_t) + D u_t,
    out_t = GLU(W gelu(y_t) + b)       (W: H -> 2H, GLU(a | g) = a * sigmoid(g)),

  with N/2 complex modes per channel (d_state = N counts the real state), A = -exp(log_A_real)
  + i A_imag, B = 1 folded into C ~ CN(0, 1), dt log-uniform in [dt_min, dt_max], D ~ N(0, 1).

  The SSM is the op `s4d_conv` (impl "fft", the training default through "auto", or
  "reference", the recurrence). State: x, complex [B, H, N/2]. causal=False is the
  bidirectional form (LRA): a second C runs the same SSM backwards in time and the two outputs
  add; it takes no state and has no step.
  """
  d_model: int
  d_state: int = 64
  A_init: str = "lin"  # "lin" | "inv" | "real" (`init` would shadow Module.init)
  dt_min: float = 1e-3
  dt_max: float = 1e-1
  discretization: str = "zoh"
  causal: bool = True
  impl: str = "auto"  # s4d_conv form
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def setup(self):
    if self.d_state < 2 or self.d_state % 2:
      raise ValueError(f"S4D: d_state must be a positive even number (N/2 complex modes); "
                       f"got {self.d_state}")
    if self.A_init not in initializers.S4D_A_INITS:
      raise ValueError(f"S4D: unknown A_init={self.A_init!r}; expected one of "
                       f"{initializers.S4D_A_INITS}")
    H, half = self.d_model, self.d_state // 2
    pd = self.param_dtype
    self.log_dt = self.param(
        "log_dt", axes.param(initializers.uniform(np.log(self.dt_min), np.log(self.dt_max)),
                             axes.EMBED, group=axes.SSM), (H,), pd)
    A_re, A_im = initializers.s4d_A(self.A_init, self.d_state)
    modes = lambda init, group=axes.DEFAULT: axes.param(init, axes.EMBED, axes.STATE,
                                                        group=group)
    self.log_A_real = self.param(
        "log_A_real", modes(initializers.constant(np.log(-A_re)), axes.SSM), (H, half), pd)
    self.A_imag = self.param("A_imag", modes(initializers.constant(A_im), axes.SSM), (H, half),
                             pd)
    c_init = modes(nn.initializers.normal(stddev=0.5 ** 0.5))  # CN(0, 1): Re, Im ~ N(0, 1/2)
    directions = ("",) if self.causal else ("", "_bwd")
    self.C = [lax.complex(self.param(f"C{d}_re", c_init, (H, half), pd),
                          self.param(f"C{d}_im", c_init, (H, half), pd)) for d in directions]
    self.D = self.param("D", axes.param(nn.initializers.normal(stddev=1.0), axes.EMBED,
                                        group=axes.NO_DECAY), (H,), pd)
    self.out_proj = nn.Dense(2 * H, kernel_init=axes.kernel(axes.EMBED, axes.MLP),
                             bias_init=axes.bias(axes.MLP), dtype=self.dtype, param_dtype=pd)

  @property
  def _state_dtype(self):
    return jnp.result_type(self.param_dtype, self.dtype, jnp.complex64)

  def _ssm(self, u: jax.Array, C: jax.Array, x0: jax.Array | None,
           segment_ids: jax.Array | None, impl: str) -> tuple[jax.Array, jax.Array]:
    """y_t = 2 Re(C x_t) for u: [B, T, H] from x_{-1} = x0; returns (y, x_T)."""
    return s4d_conv(u, self.log_dt, -jnp.exp(self.log_A_real), self.A_imag, C,
                    discretization=self.discretization, initial_state=x0,
                    segment_ids=segment_ids, impl=impl)

  def _output(self, u: jax.Array, y: jax.Array) -> jax.Array:
    """GLU(W gelu(y + D u) + b) over the last axis H."""
    y = jax.nn.gelu(y + jnp.einsum("...h,h->...h", u, self.D), approximate=False)
    return jax.nn.glu(self.out_proj(y.astype(self.dtype)), axis=-1)

  def __call__(self, x: jax.Array, state: jax.Array | None = None,
               segment_ids: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
    """x: [B, T, H] -> (out: [B, T, H], x_T: complex [B, H, N/2]; None when bidirectional)."""
    common.check_input("S4D", x, self.d_model)
    u = x.astype(self.dtype)
    if not self.causal:
      if state is not None:
        raise ValueError("S4D: the bidirectional form (causal=False) takes no state")
      y, _ = self._ssm(u, self.C[0], None, segment_ids, self.impl)
      flip = lambda a: None if a is None else jnp.flip(a, axis=1)
      y_bwd, _ = self._ssm(flip(u), self.C[1], None, flip(segment_ids), self.impl)
      return self._output(u, y + flip(y_bwd)), None
    if state is not None:
      ops_common.check_shape("S4D", "state", state,
                             (x.shape[0], self.d_model, self.d_state // 2), "[B, H, N/2]")
      state = state.astype(self._state_dtype)
    y, state = self._ssm(u, self.C[0], state, segment_ids, self.impl)
    return self._output(u, y), state.astype(self._state_dtype)

  def init_state(self, batch_size: int, max_len: int) -> jax.Array:
    """x_{-1} = 0: complex [B, H, N/2] (`max_len` unused)."""
    del max_len
    return jnp.zeros((batch_size, self.d_model, self.d_state // 2), self._state_dtype)

  def step(self, x_t: jax.Array, state: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x_t: [B, H] (the input u_t) -> (out_t, the state A_bar state + B_bar u_t): one step of
    the recurrence."""
    common.check_input("S4D", x_t, self.d_model, step=True)
    if not self.causal:
      raise ValueError("S4D: the bidirectional form (causal=False) has no step")
    u = x_t.astype(self.dtype)
    y, state = self._ssm(u[:, None], self.C[0], state, None, "reference")
    return self._output(u, y[:, 0]), state.astype(self._state_dtype)
