"""RMSNorm, GatedRMSNorm (both orders, per group) and the gated MLP against their formulas."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from layers import MLP, GatedRMSNorm, RMSNorm
from tests import harness

EPS = 1e-6


def _rms(x, group):
  xg = x.reshape(x.shape[:-1] + (-1, group))
  return (xg / np.sqrt((xg ** 2).mean(-1, keepdims=True) + EPS)).reshape(x.shape)


def _silu(z):
  return z / (1 + np.exp(-z))


def test_rms_norm():
  x = harness.rand(0, (2, 5, 8))
  y, variables = RMSNorm(dtype=jnp.float64).init_with_output(jax.random.key(0), x)
  variables = nn.unbox(variables)
  np.testing.assert_allclose(y, _rms(np.asarray(x), 8), rtol=1e-12)
  scale = harness.rand(1, (8,))
  y = RMSNorm(dtype=jnp.float64).apply({"params": {"scale": scale}}, x)
  np.testing.assert_allclose(y, _rms(np.asarray(x), 8) * np.asarray(scale), rtol=1e-12)


@pytest.mark.parametrize("norm_before_gate", [True, False])
@pytest.mark.parametrize("group_size", [None, 4])
def test_gated_rms_norm(norm_before_gate, group_size):
  x, z, scale = harness.rand(0, (2, 5, 8)), harness.rand(1, (2, 5, 8)), harness.rand(2, (8,))
  module = GatedRMSNorm(norm_before_gate=norm_before_gate, group_size=group_size,
                        dtype=jnp.float64)
  y = module.apply({"params": {"scale": scale}}, x, z)
  x, z, group = np.asarray(x), np.asarray(z), group_size or 8
  want = _rms(x, group) * _silu(z) if norm_before_gate else _rms(x * _silu(z), group)
  np.testing.assert_allclose(y, want * np.asarray(scale), rtol=1e-12)


def test_gated_rms_norm_errors():
  x = jnp.ones((2, 8))
  with pytest.raises(ValueError, match="group_size=3 must divide the width D=8"):
    GatedRMSNorm(group_size=3).init(jax.random.key(0), x, x)
  with pytest.raises(ValueError, match="GatedRMSNorm: gate z must have the shape of x"):
    GatedRMSNorm().init(jax.random.key(0), x, x[:, :4])


@pytest.mark.parametrize("activation", ["silu", "gelu"])
def test_mlp(activation):
  x = harness.rand(0, (2, 5, 6))
  module = MLP(expand=2.0, activation=activation, dtype=jnp.float64, param_dtype=jnp.float64)
  y, variables = module.init_with_output(jax.random.key(0), x)
  variables = nn.unbox(variables)
  params = variables["params"]
  assert jax.tree.map(jnp.shape, params) == {"in_proj": {"kernel": (6, 24)},
                                             "out_proj": {"kernel": (12, 6)}}
  gate, up = np.split(np.asarray(x) @ np.asarray(params["in_proj"]["kernel"]), 2, axis=-1)
  act = _silu(gate) if activation == "silu" else np.asarray(jax.nn.gelu(gate))
  np.testing.assert_allclose(y, (act * up) @ np.asarray(params["out_proj"]["kernel"]),
                             rtol=1e-12)
  with pytest.raises(ValueError, match="MLP: unknown activation='relu'"):
    MLP(activation="relu").init(jax.random.key(0), x)
