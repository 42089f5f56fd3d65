"""S4D: the diagonal state space layer ("On the Parameterization and Initialization of
Diagonal State Space Models", Gu, Gupta, Goel, Re 2022)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax

from layers import _common, axes
from layers.ops import _common as ops_common
from layers.ops import causal_conv, linear_scan, s4d_discretize, s4d_kernel

INITS = ("lin", "inv", "real")
FORMS = ("fft", "scan")
FFT_SEGMENTS = 2  # packed rows of up to this many segments (e.g. text + padding) stay on FFT


def s4d_A_init(init: str, d_state: int) -> tuple[np.ndarray, np.ndarray]:
  """(A_re, A_im): [N/2] of the paper's initialisations, n = 0 .. N/2 - 1.

  lin: A_n = -1/2 + i pi n;  inv: A_n = -1/2 + i N/pi (N/(2n+1) - 1);  real: A_n = -(n+1).
  """
  n = np.arange(d_state // 2)
  if init == "lin":
    return np.full(n.shape, -0.5), np.pi * n
  if init == "inv":
    return np.full(n.shape, -0.5), d_state / np.pi * (d_state / (2 * n + 1) - 1)
  return -(n + 1.0), np.zeros(n.shape)


def _constant(value: np.ndarray):
  """An initializer that broadcasts `value` ([N/2]) to the parameter's shape ([H, N/2])."""
  return lambda key, shape, dtype: jnp.broadcast_to(jnp.asarray(value, dtype), shape)


class S4D(nn.Module):
  """Diagonal SSM per channel h, then GELU and a GLU output projection:

    x_t = A_bar x_{t-1} + B_bar u_t,   y_t = 2 Re(C x_t) + D u_t,
    out_t = GLU(W gelu(y_t) + b)       (W: H -> 2H, GLU(a | g) = a * sigmoid(g)),

  with N/2 complex modes per channel (d_state = N counts the real state), A = -exp(log_A_real)
  + i A_imag, B = 1 folded into C ~ CN(0, 1), dt log-uniform in [dt_min, dt_max], D ~ N(0, 1).

  Forms: "fft" (training default): y = K * u with the kernel K_l = 2 Re(C B_bar A_bar^l),
  plus 2 Re(C A_bar^(t+1) x_{-1}) from the state, one convolution per segment for packed
  rows of up to FFT_SEGMENTS segments (padded classification inputs); "scan": the recurrence
  through `linear_scan`, which the layer switches to by itself for rows of more segments.
  State: x, complex [B, H, N/2]. causal=False is the bidirectional form (LRA): a second C
  runs the same SSM backwards in time and the two outputs add; it takes no state and has no
  step.
  """
  d_model: int
  d_state: int = 64
  A_init: str = "lin"  # "lin" | "inv" | "real" (`init` would shadow Module.init)
  dt_min: float = 1e-3
  dt_max: float = 1e-1
  discretization: str = "zoh"
  causal: bool = True
  form: str = "fft"
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def setup(self):
    if self.d_state < 2 or self.d_state % 2:
      raise ValueError(f"S4D: d_state must be a positive even number (N/2 complex modes); "
                       f"got {self.d_state}")
    for field, value, known in (("A_init", self.A_init, INITS), ("form", self.form, FORMS)):
      if value not in known:
        raise ValueError(f"S4D: unknown {field}={value!r}; expected one of {known}")
    H, half = self.d_model, self.d_state // 2
    pd = self.param_dtype
    log_dt_min, log_dt_max = np.log(self.dt_min), np.log(self.dt_max)
    self.log_dt = self.param(
        "log_dt", axes.param(lambda key, shape, dtype: jax.random.uniform(
            key, shape, dtype, log_dt_min, log_dt_max), axes.EMBED, group=axes.SSM), (H,), pd)
    A_re, A_im = s4d_A_init(self.A_init, self.d_state)
    modes = lambda init, group=axes.DEFAULT: axes.param(init, axes.EMBED, axes.STATE, group=group)
    self.log_A_real = self.param("log_A_real", modes(_constant(np.log(-A_re)), axes.SSM),
                                 (H, half), pd)
    self.A_imag = self.param("A_imag", modes(_constant(A_im), axes.SSM), (H, half), pd)
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

  def _discretize(self) -> tuple[jax.Array, jax.Array]:
    return s4d_discretize(self.log_dt, -jnp.exp(self.log_A_real), self.A_imag,
                          self.discretization)

  def _ssm(self, u: jax.Array, C: jax.Array, x0: jax.Array,
           segment_ids: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """y_t = 2 Re(C x_t) for u: [B, T, H] from x_{-1} = x0 ([B, H, N/2]); returns (y, x_T).

    The FFT form covers packed rows of at most FFT_SEGMENTS segments (padding is one); a
    batch with a row of more segments runs the scan (the choice is made at run time)."""
    B, T, _ = u.shape
    if self.form == "scan":
      return self._ssm_scan(u, C, x0, segment_ids)
    if segment_ids is None:
      return self._ssm_fft(u, C, x0, jnp.zeros((B, T), jnp.int32), 1)
    index, _ = _common.segment_positions(segment_ids, B, T)
    return lax.cond(jnp.all(index[:, -1] < FFT_SEGMENTS),
                    lambda: self._ssm_fft(u, C, x0, index, FFT_SEGMENTS),
                    lambda: self._ssm_scan(u, C, x0, segment_ids))

  def _ssm_scan(self, u, C, x0, segment_ids):
    """The recurrence through `linear_scan` (resets at segment starts)."""
    B, T, _ = u.shape
    A_bar, B_bar = self._discretize()
    x, x_T = linear_scan(jnp.broadcast_to(A_bar, (B, T) + A_bar.shape),
                         jnp.einsum("hn,bth->bthn", B_bar, u), x0, segment_ids=segment_ids)
    return 2 * jnp.einsum("hn,bthn->bth", C, x).real, x_T

  def _ssm_fft(self, u, C, x0, index, num_segments):
    """The FFT convolution per segment k < num_segments (index: [B, T] segment of each token):
    y_t = (K * u [index = k])_t for t in segment k, plus 2 Re(C A_bar^(t+1) x0) in segment 0;
    x_T = sum_s A_bar^(T-1-s) B_bar u_s over the last segment (+ A_bar^T x0 if it is the
    first)."""
    B, T, H = u.shape
    A_bar, B_bar = self._discretize()
    kernel = s4d_kernel(self.log_dt, -jnp.exp(self.log_A_real), self.A_imag, C, T,
                        self.discretization)
    # powers[..., l] = A_bar^l, l = 0 .. T
    lags = jnp.arange(T + 1, dtype=A_bar.real.dtype)
    powers = jnp.exp(jnp.einsum("hn,l->hnl", jnp.log(A_bar), lags))
    masks = (jnp.arange(num_segments)[:, None, None] == index[None]).astype(u.dtype)
    y = causal_conv(jnp.einsum("kbt,bth->kbth", masks, u).reshape(-1, T, H), kernel)
    y = jnp.einsum("kbt,kbth->bth", masks, y.reshape(num_segments, B, T, H))
    first = (index == 0).astype(u.dtype)
    y = y + first[..., None] * 2 * jnp.einsum("hn,hnt,bhn->bth", C, powers[..., 1:], x0).real
    last = index[:, -1]
    u_last = jnp.einsum("bt,bth->bth", (index == last[:, None]).astype(u.dtype), u)
    x_T = (jnp.einsum("b,hn,bhn->bhn", (last == 0).astype(u.dtype), powers[..., T], x0)
           + jnp.einsum("hn,hns,bsh->bhn", B_bar, powers[..., T - 1::-1], u_last))
    return y, x_T

  def _output(self, u: jax.Array, y: jax.Array) -> jax.Array:
    """GLU(W gelu(y + D u) + b) over the last axis H."""
    y = jax.nn.gelu(y + jnp.einsum("...h,h->...h", u, self.D), approximate=False)
    return jax.nn.glu(self.out_proj(y.astype(self.dtype)), axis=-1)

  def __call__(self, x: jax.Array, state: jax.Array | None = None,
               segment_ids: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
    """x: [B, T, H] -> (out: [B, T, H], x_T: complex [B, H, N/2]; None when bidirectional)."""
    _common.check_input("S4D", x, self.d_model)
    B = x.shape[0]
    u = x.astype(self.dtype)
    if not self.causal:
      if state is not None:
        raise ValueError("S4D: the bidirectional form (causal=False) takes no state")
      x0 = self.init_state(B, x.shape[1])
      y, _ = self._ssm(u, self.C[0], x0, segment_ids)
      flip = lambda a: None if a is None else jnp.flip(a, axis=1)
      y_bwd, _ = self._ssm(flip(u), self.C[1], x0, flip(segment_ids))
      return self._output(u, y + flip(y_bwd)), None
    if state is None:
      state = self.init_state(B, x.shape[1])
    ops_common.check_shape("S4D", "state", state, (B, self.d_model, self.d_state // 2),
                           "[B, H, N/2]")
    y, state = self._ssm(u, self.C[0], state.astype(self._state_dtype), segment_ids)
    return self._output(u, y), state.astype(self._state_dtype)

  def init_state(self, batch_size: int, max_len: int) -> jax.Array:
    """x_{-1} = 0: complex [B, H, N/2] (`max_len` unused)."""
    del max_len
    return jnp.zeros((batch_size, self.d_model, self.d_state // 2), self._state_dtype)

  def step(self, x_t: jax.Array, state: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x_t: [B, H] (the input u_t) -> (out_t, the state A_bar state + B_bar u_t)."""
    _common.check_input("S4D", x_t, self.d_model, step=True)
    if not self.causal:
      raise ValueError("S4D: the bidirectional form (causal=False) has no step")
    u = x_t.astype(self.dtype)
    A_bar, B_bar = self._discretize()
    state = (jnp.einsum("hn,bhn->bhn", A_bar, state)
             + jnp.einsum("hn,bh->bhn", B_bar, u)).astype(self._state_dtype)
    return self._output(u, 2 * jnp.einsum("hn,bhn->bh", self.C[0], state).real), state
