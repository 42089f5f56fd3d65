"""Mamba ("Mamba: Linear-Time Sequence Modeling with Selective State Spaces", Gu & Dao 2023)
and Mamba2 ("Transformers are SSMs", Dao & Gu 2024): an input projection, a short causal
convolution with SiLU, a selective SSM, and an output projection.

Shape legend: B batch, T time, D model width, E = expand * D inner width, N state size,
H heads of P channels (E = H * P), G groups of B and C, R dt rank, W conv width.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange, repeat
from flax import linen as nn

from layers import axes, common, initializers
from layers.conv import ShortConv
from layers.norm import GatedRMSNorm
from layers.ops import common as ops_common
from layers.ops import linear_attention, selective_scan


class _ConvSSM(nn.Module):
  """The block both Mamba versions share:

    [x | rest] = in_proj(u),  x = silu(conv(x)),  y = core(x, rest),  out = out_proj(y).

  State: {"conv": the ShortConv window [B, W - 1, ...], "ssm": the SSM state} (float32 or
  wider). Subclasses define the fields, `setup`, `_split`, `_core` and `_ssm_shape`.
  """

  def _dense(self, features: int, *names: str | None) -> nn.Dense:
    return nn.Dense(features, use_bias=False, kernel_init=axes.kernel(*names), dtype=self.dtype,
                    param_dtype=self.param_dtype)

  @property
  def _state_dtype(self):
    return ops_common.accumulation_dtype(self.dtype, self.param_dtype)

  def __call__(self, x: jax.Array, state: dict | None = None,
               segment_ids: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """x: [B, T, D] -> (y: [B, T, D], state after the last token)."""
    common.check_input(type(self).__name__, x, self.d_model)
    if state is None:
      state = self.init_state(x.shape[0], x.shape[1])
    xc, rest = self._split(self.in_proj(x.astype(self.dtype)))
    xc, conv = self.conv(xc, state["conv"], segment_ids)
    y, ssm = self._core(xc, rest, state["ssm"], segment_ids)
    return self.out_proj(y), {"conv": conv, "ssm": ssm}

  def init_state(self, batch_size: int, max_len: int) -> dict:
    """Zero conv window and SSM state (`max_len` unused: both are fixed-size)."""
    return {"conv": self.conv.init_state(batch_size, max_len),
            "ssm": jnp.zeros((batch_size, *self._ssm_shape), self._state_dtype)}

  def step(self, x_t: jax.Array, state: dict) -> tuple[jax.Array, dict]:
    """x_t: [B, D] -> (y_t: [B, D], state): one conv step, one SSM step."""
    common.check_input(type(self).__name__, x_t, self.d_model, step=True)
    xc, rest = self._split(self.in_proj(x_t.astype(self.dtype)))
    xc, conv = self.conv.step(xc, state["conv"])
    y, ssm = self._core(xc[:, None], jax.tree.map(lambda a: a[:, None], rest), state["ssm"],
                        None)
    return self.out_proj(y[:, 0]), {"conv": conv, "ssm": ssm}


class Mamba(_ConvSSM):
  """Mamba-1 block: [x | z] = u W_in, x = silu(conv(x)), [dt_r | B | C] = x W_x,
  delta = dt_r W_dt, y = selective_scan(x, delta, A, B, C, D, z, dt_bias, softplus),
  out = y W_out (no biases but the conv's and dt_bias).

  Init: A = -exp(A_log) = -(1..N) per channel (S4D-Real), D = 1, softplus(dt_bias) = dt
  log-uniform in [dt_min, dt_max] (floor dt_init_floor), W_dt ~ U(-R^-1/2, R^-1/2);
  R = ceil(D / 16) by default. State: {"conv": [B, W - 1, E], "ssm": [B, E, N]}.
  """
  d_model: int
  d_state: int = 16
  conv_width: int = 4
  expand: int = 2
  dt_rank: int | None = None
  dt_min: float = 1e-3
  dt_max: float = 1e-1
  dt_init_floor: float = 1e-4
  impl: str = "auto"  # selective_scan form
  chunk_size: int = 64
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def setup(self):
    E, N, pd = self.expand * self.d_model, self.d_state, self.param_dtype
    self.rank = self.dt_rank or math.ceil(self.d_model / 16)
    self.in_proj = self._dense(2 * E, axes.EMBED, axes.MLP)
    self.conv = ShortConv(E, self.conv_width, activation="silu", dtype=self.dtype, param_dtype=pd)
    self.x_proj = self._dense(self.rank + 2 * N, axes.MLP, None)
    bound = self.rank ** -0.5
    self.dt_proj = nn.Dense(
        E, use_bias=False,
        kernel_init=axes.kernel(None, axes.MLP, init=initializers.uniform(-bound, bound)),
        dtype=self.dtype, param_dtype=pd)
    self.dt_bias = self.param(
        "dt_bias", axes.param(initializers.dt_bias(self.dt_min, self.dt_max, self.dt_init_floor),
                              axes.MLP, group=axes.SSM), (E,), pd)
    self.A_log = self.param(
        "A_log", axes.param(initializers.constant(np.log(np.arange(1, N + 1))), axes.MLP,
                            axes.STATE, group=axes.SSM), (E, N), pd)
    self.D = self.param("D", axes.param(nn.initializers.ones, axes.MLP, group=axes.NO_DECAY),
                        (E,), pd)
    self.out_proj = self._dense(self.d_model, axes.MLP, axes.EMBED)

  @property
  def _ssm_shape(self):
    return (self.expand * self.d_model, self.d_state)

  def _split(self, proj):
    return tuple(jnp.split(proj, 2, axis=-1))

  def _core(self, x, z, h0, segment_ids):
    """x, z: [B, T, E] -> (y: [B, T, E], h_T: [B, E, N])."""
    dt, B, C = jnp.split(self.x_proj(x), [self.rank, self.rank + self.d_state], axis=-1)
    return selective_scan(x, self.dt_proj(dt), -jnp.exp(self.A_log), B, C, self.D, z,
                          self.dt_bias, True, h0, segment_ids, impl=self.impl,
                          chunk_size=self.chunk_size)


class Mamba2(_ConvSSM):
  """Mamba2 (SSD) block: [z | xBC | dt] = u W_in, xBC = silu(conv(xBC)), [x | B | C] = xBC,
  dt = softplus(dt + dt_bias), and per head h with scalar A_h = -exp(A_log_h):

    S_t = exp(dt_t A) S_{t-1} + B_t (dt_t x_t)^T,   y_t = S_t^T C_t + D x_t,

  i.e. linear_attention(q=C, k=B, v=x dt, g=dt A, scale=1) with the G groups of B and C
  shared by H / G heads each; out = RMSNorm(y * silu(z)) W_out, normalised per group.

  Init: A ~ U[A_init_range] per head (A_log = log A), softplus(dt_bias) = dt log-uniform in
  [dt_min, dt_max] (floor dt_init_floor), D = 1 per head.
  State: {"conv": [B, W - 1, E + 2 G N], "ssm": [B, H, N, P]}.
  """
  d_model: int
  d_state: int = 128
  conv_width: int = 4
  expand: int = 2
  value_dim: int = 64  # P, the channels per head (`headdim` in the Mamba2 code)
  n_groups: int = 1
  A_init_range: tuple[float, float] = (1.0, 16.0)
  dt_min: float = 1e-3
  dt_max: float = 1e-1
  dt_init_floor: float = 1e-4
  norm_eps: float = 1e-5
  impl: str = "auto"  # linear_attention form
  chunk_size: int = 32  # the op default: fastest on CPU (benchmarks/linear_attention.py)
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def setup(self):
    E, N, G, pd = self.expand * self.d_model, self.d_state, self.n_groups, self.param_dtype
    if E % self.value_dim or (E // self.value_dim) % G:
      raise ValueError(f"Mamba2: value_dim={self.value_dim} must divide expand * d_model={E} "
                       f"into a number of heads divisible by n_groups={G}")
    H = E // self.value_dim
    self.in_proj = self._dense(2 * E + 2 * G * N + H, axes.EMBED, axes.MLP)
    self.conv = ShortConv(E + 2 * G * N, self.conv_width, activation="silu", dtype=self.dtype,
                          param_dtype=pd)
    heads = lambda init, group: axes.param(init, axes.HEADS, group=group)
    self.dt_bias = self.param(
        "dt_bias", heads(initializers.dt_bias(self.dt_min, self.dt_max, self.dt_init_floor),
                         axes.SSM), (H,), pd)
    self.A_log = self.param(
        "A_log", heads(initializers.log_uniform(*self.A_init_range), axes.SSM), (H,), pd)
    self.D = self.param("D", heads(nn.initializers.ones, axes.NO_DECAY), (H,), pd)
    self.norm = GatedRMSNorm(norm_before_gate=False, group_size=E // G, eps=self.norm_eps,
                             dtype=self.dtype, param_dtype=pd)
    self.out_proj = self._dense(self.d_model, axes.MLP, axes.EMBED)

  @property
  def _ssm_shape(self):
    E = self.expand * self.d_model
    return (E // self.value_dim, self.d_state, self.value_dim)

  def _split(self, proj):
    E, GN = self.expand * self.d_model, self.n_groups * self.d_state
    z, xBC, dt = jnp.split(proj, [E, 2 * E + 2 * GN], axis=-1)
    return xBC, (z, dt)

  def _core(self, xBC, z_dt, h0, segment_ids):
    """xBC: [B, T, E + 2 G N], z: [B, T, E], dt: [B, T, H] -> (y: [B, T, E], S_T)."""
    z, dt = z_dt
    E, GN, H = self.expand * self.d_model, self.n_groups * self.d_state, self._ssm_shape[0]
    dtype = self._state_dtype
    x, B, C = jnp.split(xBC.astype(dtype), [E, E + GN], axis=-1)
    x = rearrange(x, "b t (h p) -> b t h p", h=H)
    B, C = (repeat(a, "b t (g n) -> b t (g r) n", n=self.d_state, r=H // self.n_groups)
            for a in (B, C))
    dt = jax.nn.softplus(dt.astype(dtype) + self.dt_bias.astype(dtype)[None, None])
    y, state = linear_attention(
        C, B, jnp.einsum("bthp,bth->bthp", x, dt), -dt * jnp.exp(self.A_log)[None, None],
        scale=1.0, initial_state=h0, segment_ids=segment_ids, impl=self.impl,
        chunk_size=self.chunk_size)
    y = y + jnp.einsum("bthp,h->bthp", x, self.D.astype(dtype))
    return self.norm(rearrange(y, "b t h p -> b t (h p)"), z), state
