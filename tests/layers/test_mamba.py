"""Mamba and Mamba2 beyond the shared mixer checks (tests/layers/test_mixers.py): the papers'
initialisations, Mamba2 against its per-step SSD recurrence written out in numpy, bad
configurations, and (slow) a small Mamba learning selective copying."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layers import Mamba, Mamba2, ShortConv
from tests import harness

F64 = dict(dtype=jnp.float64, param_dtype=jnp.float64)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _params(module, width=32, length=4):
  return harness.init_variables(module, jax.random.key(0), jnp.ones((1, length, width)))["params"]


def _check_dt(dt_bias, dt_min=1e-3, dt_max=1e-1):
  """softplus(dt_bias) spans [dt_min, dt_max] log-uniformly."""
  log_dt = np.log(np.log1p(np.exp(np.asarray(dt_bias, np.float64))))
  assert log_dt.min() >= np.log(dt_min) - 1e-6 and log_dt.max() <= np.log(dt_max) + 1e-6
  span = np.log(dt_max) - np.log(dt_min)
  assert abs(log_dt.mean() - np.log(dt_min * dt_max) / 2) < 0.1 * span
  assert log_dt.std() > 0.2 * span  # uniform: std = span / sqrt(12) = 0.29 span


def test_mamba_init():
  D, N = 32, 16
  p = _params(Mamba(D, d_state=N))
  E, R = 2 * D, 2  # expand 2, dt_rank = ceil(D / 16)
  assert p["in_proj"]["kernel"].shape == (D, 2 * E)
  assert p["conv"]["kernel"].shape == (4, E)
  assert p["x_proj"]["kernel"].shape == (E, R + 2 * N)
  assert p["dt_proj"]["kernel"].shape == (R, E)
  assert p["out_proj"]["kernel"].shape == (E, D)
  np.testing.assert_allclose(-np.exp(p["A_log"]), -np.tile(np.arange(1, N + 1), (E, 1)),
                             rtol=1e-6)  # S4D-Real
  np.testing.assert_array_equal(p["D"], np.ones(E))
  assert float(jnp.abs(p["dt_proj"]["kernel"]).max()) <= R ** -0.5
  _check_dt(p["dt_bias"])


def test_mamba2_init():
  D, N, P = 64, 8, 4
  module = Mamba2(D, d_state=N, value_dim=P)
  p = _params(module, D)
  E = 2 * D
  H = E // P
  assert p["in_proj"]["kernel"].shape == (D, 2 * E + 2 * N + H)
  assert p["conv"]["kernel"].shape == (4, E + 2 * N)
  assert p["norm"]["scale"].shape == (E,)
  A = np.exp(np.asarray(p["A_log"]))
  assert A.shape == (H,) and A.min() >= 1 and A.max() <= 16 and A.std() > 2  # U[1, 16]
  np.testing.assert_array_equal(p["D"], np.ones(H))
  _check_dt(p["dt_bias"])
  state = module.apply({"params": p}, 3, 10, method="init_state")
  assert jax.tree.map(jnp.shape, state) == {"conv": (3, 3, E + 2 * N), "ssm": (3, H, N, P)}


def test_mamba2_equals_the_ssd_recurrence():
  """The whole block recomputed from its parameters, the SSD core as a per-step loop:
  S_t = exp(dt_t A_h) S_{t-1} + B_t (dt_t x_t)^T, y_t = S_t^T C_t + D_h x_t."""
  B, T, D, N, P, G = 2, 9, 8, 4, 4, 2
  E, H = 2 * D, 2 * D // P
  module = Mamba2(D, d_state=N, value_dim=P, n_groups=G, chunk_size=4, **F64)
  x = harness.rand(0, (B, T, D))
  variables = harness.init_variables(module, jax.random.key(1), x)
  p = jax.tree.map(np.asarray, variables["params"])
  out, state = jax.jit(module.apply)(variables, x)

  proj = np.asarray(x) @ p["in_proj"]["kernel"]
  z, xBC, dt = np.split(proj, [E, 2 * E + 2 * G * N], axis=-1)
  xBC, _ = ShortConv(E + 2 * G * N, activation="silu", **F64).apply(
      {"params": variables["params"]["conv"]}, jnp.asarray(xBC))
  xs, Bs, Cs = np.split(np.asarray(xBC), [E, E + G * N], axis=-1)
  xs, Bs, Cs = xs.reshape(B, T, H, P), Bs.reshape(B, T, G, N), Cs.reshape(B, T, G, N)
  dt = np.log1p(np.exp(dt + p["dt_bias"]))
  A = -np.exp(p["A_log"])
  y = np.zeros((B, T, H, P))
  S = np.zeros((B, H, N, P))
  for b in range(B):
    for h in range(H):
      g = h // (H // G)
      for t in range(T):
        S[b, h] = (np.exp(dt[b, t, h] * A[h]) * S[b, h]
                   + np.outer(Bs[b, t, g], dt[b, t, h] * xs[b, t, h]))
        y[b, t, h] = S[b, h].T @ Cs[b, t, g] + p["D"][h] * xs[b, t, h]
  gated = y.reshape(B, T, G, E // G) * (z / (1 + np.exp(-z))).reshape(B, T, G, E // G)
  normed = gated / np.sqrt((gated ** 2).mean(-1, keepdims=True) + 1e-5)
  want = (normed.reshape(B, T, E) * p["norm"]["scale"]) @ p["out_proj"]["kernel"]
  harness.assert_close(out, want, 1e-10, "Mamba2 output")
  harness.assert_close(state["ssm"], S, 1e-10, "Mamba2 SSM state [B, H, N, P]")


@pytest.mark.parametrize("make, message", [
    (lambda: Mamba2(8, value_dim=6), r"Mamba2: value_dim=6 must divide expand \* d_model=16"),
    (lambda: Mamba2(8, value_dim=4, n_groups=3), r"number of heads divisible by n_groups=3"),
    (lambda: Mamba(8, impl="fast"), r"selective_scan: unknown impl='fast'"),
])
def test_bad_configs_raise(make, message):
  with pytest.raises(ValueError, match=message):
    _params(make(), 8)


@pytest.mark.slow
def test_small_mamba_learns_selective_copying(tmp_path):
  sys.path.insert(0, ROOT)
  from configs.synthetic import selective_copying  # noqa: PLC0415 (configs is not a package)
  from train.loop import train_and_evaluate  # noqa: PLC0415
  config = selective_copying.get_config("model=mamba")
  config.task.update(seq_len=32, num_tokens=4)
  steps = 800  # accuracy reaches 1.0 by step 500 (measured)
  config.run.update(steps=steps, progress=False, eval_every=steps, checkpoint_every=steps)
  config.opt.lr = 3e-3
  metrics = train_and_evaluate(config, str(tmp_path))
  assert metrics["eval_accuracy"] > 0.9, metrics  # chance: 1/8
