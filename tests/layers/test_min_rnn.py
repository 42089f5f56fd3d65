"""minGRU and minLSTM: gates and activations are the paper's, the layer is the recurrence
written out, with a given positive initial state used as is."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layers import MinGRU, MinLSTM
from layers.min_rnn import g, log_g, min_gru_log_coefficients, min_lstm_log_coefficients
from tests import harness

B, T, D = 2, 12, 8
F64 = dict(dtype=jnp.float64, param_dtype=jnp.float64)


def test_g_and_log_g():
  x = jnp.linspace(-30.0, 30.0, 601)
  want = np.where(np.asarray(x) >= 0, np.asarray(x) + 0.5, 1 / (1 + np.exp(-np.asarray(x))))
  np.testing.assert_allclose(g(x), want, rtol=1e-12)
  np.testing.assert_allclose(log_g(x), np.log(want), rtol=1e-12, atol=1e-14)
  assert float(g(jnp.array(0.0))) == 0.5 == float(jax.nn.sigmoid(0.0))  # continuous at 0
  assert bool(jnp.all(jnp.isfinite(jax.grad(lambda x: log_g(x).sum())(x))))


def test_gate_values():
  hidden, k, f, i = (harness.rand(s, (64,)) * 4 for s in range(4))
  log_a, log_b = min_gru_log_coefficients(hidden, k)
  z = jax.nn.sigmoid(k)
  harness.assert_close(jnp.exp(log_a), 1 - z, 1e-12, "minGRU: a = 1 - z")
  harness.assert_close(jnp.exp(log_b), z * g(hidden), 1e-12, "minGRU: b = z g(h~)")
  log_a, log_b = min_lstm_log_coefficients(hidden, f, i)
  f_gate, i_gate = jax.nn.sigmoid(f), jax.nn.sigmoid(i)
  harness.assert_close(jnp.exp(log_a), f_gate / (f_gate + i_gate), 1e-12, "minLSTM: f'")
  harness.assert_close(jnp.exp(log_b), i_gate / (f_gate + i_gate) * g(hidden), 1e-12,
                       "minLSTM: i' g(h~)")


def test_min_gru_gates_at_init():
  """With x ~ N(0, 1) the LeCun-normal projection gives k ~ N(0, 1): z centred on 1/2."""
  module = MinGRU(256)
  x = harness.rand(0, (4, 16, 256), jnp.float32)
  variables = harness.init_variables(module, jax.random.key(0), x)
  kernel = variables["params"]["in_proj"]["kernel"]
  assert kernel.shape == (256, 2 * 256) and "out_proj" not in variables["params"]
  z = jax.nn.sigmoid(jnp.einsum("btd,de->bte", x, kernel[:, 256:]))
  assert abs(float(z.mean()) - 0.5) < 0.02
  assert 0.15 < float(z.std()) < 0.25  # sd of sigmoid(N(0, 1)) is about 0.21


@pytest.mark.parametrize("cls, blocks", [(MinGRU, 2), (MinLSTM, 3)])
def test_parameter_shapes(cls, blocks):
  module = cls(D, expand=1.5)
  variables = harness.init_variables(module, jax.random.key(0), jnp.zeros((1, 4, D)))
  assert jax.tree.map(jnp.shape, variables["params"]) == {
      "in_proj": {"kernel": (D, blocks * 12)}, "out_proj": {"kernel": (12, D)}}
  assert module.apply(variables, 3, 9, method="init_state").shape == (3, 12)


@pytest.mark.parametrize("cls", [MinGRU, MinLSTM])
def test_layer_is_the_recurrence(cls):
  """y_t = h_t with h_t = a_t h_{t-1} + b_t from a given positive h_{-1}, written in numpy."""
  module = cls(D, **F64)
  x = harness.rand(0, (B, T, D))
  h0 = harness.rand(1, (B, D), low=0.1, high=2.0)
  variables = harness.init_variables(module, jax.random.key(0), x)
  y, h_T = jax.jit(module.apply)(variables, x, h0)
  blocks = np.split(np.asarray(x) @ np.asarray(variables["params"]["in_proj"]["kernel"]),
                    3 if cls is MinLSTM else 2, axis=-1)
  sigmoid = lambda v: 1 / (1 + np.exp(-v))
  if cls is MinGRU:
    hidden, k = blocks
    a, b = 1 - sigmoid(k), sigmoid(k) * np.asarray(g(hidden))
  else:
    hidden, f, i = blocks
    a = sigmoid(f) / (sigmoid(f) + sigmoid(i))
    b = (1 - a) * np.asarray(g(hidden))
  h, want = np.asarray(h0), []
  for t in range(T):
    h = a[:, t] * h + b[:, t]
    want.append(h)
  np.testing.assert_allclose(y, np.stack(want, axis=1), rtol=1e-10)
  np.testing.assert_allclose(h_T, h, rtol=1e-10)


def test_float32_long_sequence_stable():
  module = MinLSTM(D)
  x = harness.rand(0, (1, 4096, D), jnp.float32)
  variables = harness.init_variables(module, jax.random.key(0), x)
  y, h_T = jax.jit(module.apply)(variables, x)
  assert y.dtype == jnp.float32 and h_T.dtype == jnp.float32
  y64, _ = jax.jit(module.clone(**F64).apply)(
      jax.tree.map(lambda p: p.astype(jnp.float64), variables), x.astype(jnp.float64))
  harness.assert_close(y, y64, 1e-5, "float32 at T=4096")
