"""Every causal sequence mixer: step-by-step and prefill + step equal the whole sequence, two
calls with the carried state equal one, causality by gradients, packed == alone, and clear
errors on wrong input shapes."""
import jax.numpy as jnp
import pytest

from layers import S4D, Attention, Mamba, Mamba2, MinGRU, MinLSTM, ShortConv
from layers import BaseConv, Based, DeltaNet, GatedDeltaNet, RetNet
from tests import harness
from tests.layers import mixer_checks as checks

B, T, D = 2, 12, 8
F64 = dict(dtype=jnp.float64, param_dtype=jnp.float64)
MIXERS = {
    "s4d_zoh_fft": lambda: S4D(D, d_state=8, **F64),
    "s4d_bilinear_fft": lambda: S4D(D, d_state=8, discretization="bilinear", **F64),
    "s4d_zoh_scan": lambda: S4D(D, d_state=8, impl="reference", **F64),
    "min_gru": lambda: MinGRU(D, expand=2.0, **F64),
    "min_lstm": lambda: MinLSTM(D, **F64),
    "attention": lambda: Attention(D, num_heads=2, head_dim=4, **F64),
    "attention_window": lambda: Attention(D, num_heads=2, head_dim=4, window=5, **F64),
    "short_conv": lambda: ShortConv(D, activation="silu", **F64),
    "mamba": lambda: Mamba(D, d_state=4, impl="reference", **F64),
    "mamba_chunk": lambda: Mamba(D, d_state=4, impl="chunk", chunk_size=4, **F64),
    "mamba2_groups": lambda: Mamba2(D, d_state=4, value_dim=4, n_groups=2, chunk_size=4, **F64),
    "retnet": lambda: RetNet(D, num_heads=2, chunk_size=5, **F64),
    "based": lambda: Based(D, num_heads=2, head_dim=4, chunk_size=5, **F64),
    "base_conv": lambda: BaseConv(D, **F64),
    "gated_deltanet": lambda: GatedDeltaNet(D, num_heads=2, head_dim=4, chunk_size=5, **F64),
    "deltanet": lambda: DeltaNet(D, num_heads=2, head_dim=4, expand_v=1.0, chunk_size=5, **F64),
}
FFT = {"s4d_zoh_fft", "s4d_bilinear_fft"}  # the FFT is causal only up to rounding
# Packed S4D always runs the scan form: one S4D configuration covers it (its segments alone
# run the FFT form, a cross-check).
PACKED = [name for name in MIXERS if name not in ("s4d_bilinear_fft", "s4d_zoh_scan")]


def _setup(name):
  return checks.setup(MIXERS[name], B, T, D)


def _prefix_state(module, variables, max_len, seed=7):
  """A non-trivial state: the mixer run over a random 4-token prefix (cache of max_len)."""
  prefix = harness.rand(seed, (B, 4, D))
  empty = checks.init_state(module, variables, B, max_len)
  return checks.whole(module, variables)(prefix, empty)[1]


@pytest.mark.parametrize("name", MIXERS)
def test_step_equals_whole(name):
  checks.assert_step_equals_whole(*_setup(name))


@pytest.mark.parametrize("name", MIXERS)
def test_init_state_equals_none(name):
  module, variables, x = _setup(name)
  run = checks.whole(module, variables)
  harness.assert_close(run(x, checks.init_state(module, variables, B, T)), run(x),
                       checks.TOL, "state=init_state vs state=None")


@pytest.mark.parametrize("name", MIXERS)
@pytest.mark.parametrize("k", [1, 5])
def test_prefill_then_step(name, k):
  module, variables, x = _setup(name)
  checks.assert_prefill_then_step(module, variables, x, k,
                                  checks.init_state(module, variables, B, T))


@pytest.mark.parametrize("name", sorted(set(MIXERS) - {"attention"}))
def test_prefill_from_none_then_step(name):
  """Full attention is left out: its cache from state=None has capacity k (see test_attention)."""
  module, variables, x = _setup(name)
  checks.assert_prefill_then_step(module, variables, x, 5, None)


@pytest.mark.parametrize("name", MIXERS)
def test_two_calls_equal_one(name):
  module, variables, x = _setup(name)
  checks.assert_two_calls_equal_one(module, variables, x, 5,
                                    _prefix_state(module, variables, T + 4))


@pytest.mark.parametrize("name", MIXERS)
def test_left_padded_prefill_then_step(name):
  """generate's prefill: left padding with segment id 0, then steps continue the real tokens
  as if there were no padding."""
  module, variables, x = _setup(name)
  pad, k = 3, 5
  x_padded = jnp.concatenate([harness.rand(9, (B, pad, D)), x[:, :k]], axis=1)
  segment_ids = jnp.concatenate([jnp.zeros((B, pad), jnp.int32),
                                 jnp.ones((B, k), jnp.int32)], axis=1)
  y_pre, state = checks.whole(module, variables)(
      x_padded, checks.init_state(module, variables, B, pad + T), segment_ids)
  y_steps, _ = checks.steps(module, variables, x[:, k:], state)
  y, _ = checks.whole(module, variables)(x)
  harness.assert_close(jnp.concatenate([y_pre[:, pad:], y_steps], axis=1), y, checks.TOL,
                       "left-padded prefill + steps")


@pytest.mark.parametrize("name", MIXERS)
def test_causal_by_gradients(name):
  module, variables, _ = _setup(name)
  x = harness.rand(3, (1, 6, D))
  checks.assert_causal(module, variables, x, atol=1e-12 if name in FFT else 0.0)


@pytest.mark.parametrize("name", PACKED)
def test_packed_equals_alone(name):
  module, variables, x = _setup(name)
  max_len = T + 4
  checks.assert_packed_equals_alone(
      module, variables, x, harness.packed_segment_ids(B, T, seed=1),
      _prefix_state(module, variables, max_len),
      checks.init_state(module, variables, B, max_len))


@pytest.mark.parametrize("name", MIXERS)
def test_wrong_input_shapes_raise(name):
  module, variables, x = _setup(name)
  label = type(module).__name__
  whole_layout = rf"{label}: x must have shape \[B, T, D=8\]; got "
  with pytest.raises(ValueError, match=whole_layout + r"\(2, 12\)"):
    module.apply(variables, x[:, :, 0])
  with pytest.raises(ValueError, match=whole_layout + r"\(2, 12, 7\)"):
    module.apply(variables, x[..., :7])
  state = checks.init_state(module, variables, B, T)
  with pytest.raises(ValueError, match=rf"{label}: x must have shape \[B, D=8\]; got \(2, 12, 8\)"):
    module.apply(variables, x, state, method="step")
