"""ShortConv: the convolution written out, its initialisation and its configuration errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layers import ShortConv
from tests import harness

B, T, D, W = 2, 12, 8, 4


@pytest.mark.parametrize("activation", ["none", "silu"])
def test_layer_is_the_convolution(activation):
  """y_t = act(b + sum_j w_j x_{t-W+1+j}) with the state as x_{-W+1} .. x_{-1}."""
  module = ShortConv(D, activation=activation, dtype=jnp.float64, param_dtype=jnp.float64)
  x = harness.rand(0, (B, T, D))
  state = harness.rand(1, (B, W - 1, D))
  variables = harness.init_variables(module, jax.random.key(0), x)
  y, final = jax.jit(module.apply)(variables, x, state)
  w, b = (np.asarray(variables["params"][name]) for name in ("kernel", "bias"))
  x_pad = np.concatenate([np.asarray(state), np.asarray(x)], axis=1)
  want = np.stack([b + sum(w[j] * x_pad[:, t + j] for j in range(W)) for t in range(T)], 1)
  if activation == "silu":
    want = want / (1 + np.exp(-want))
  np.testing.assert_allclose(y, want, rtol=1e-12)
  np.testing.assert_allclose(final, x_pad[:, -(W - 1):], rtol=1e-15)


def test_init_and_shapes():
  module = ShortConv(512, width=W, use_bias=False)
  variables = harness.init_variables(module, jax.random.key(0), jnp.zeros((1, 2, 512)))
  kernel = variables["params"]["kernel"]
  assert jax.tree.map(jnp.shape, variables["params"]) == {"kernel": (W, 512)}
  bound = W ** -0.5
  assert float(jnp.abs(kernel).max()) <= bound and float(jnp.abs(kernel).max()) > 0.9 * bound
  assert module.apply(variables, 3, 100, method="init_state").shape == (3, W - 1, 512)


def test_bad_config_raises():
  with pytest.raises(ValueError, match=r"ShortConv: unknown activation='relu'"):
    ShortConv(D, activation="relu").init(jax.random.key(0), jnp.zeros((1, 4, D)))
  module = ShortConv(D)
  variables = harness.init_variables(module, jax.random.key(0), jnp.zeros((1, 4, D)))
  with pytest.raises(ValueError, match=r"ShortConv: state must have shape \[B, W - 1, D\]"):
    module.apply(variables, jnp.zeros((1, 4, D)), jnp.zeros((1, W, D)))
