"""NaN safety in time, for every causal op and form: a non-finite input at position 40 never
reaches the outputs before it, and non-finite inputs at padding positions (segment id 0) never
reach real tokens. (Chunk forms run with chunk_size 8, so position 40 starts a chunk: within a
chunk a non-finite value may spread through 0 * NaN, as the op docstrings say.)"""
import jax.numpy as jnp
import numpy as np
import pytest

from layers.ops import (attention, gated_delta_rule, linear_attention, linear_scan,
                        s4d_conv, selective_scan)
from tests import harness

B, T, H, K, V, D, N = 2, 64, 2, 4, 3, 3, 4
BAD = 40


def _inputs(seed):
  """Named time inputs [B, T, ...] of every op (gates <= 0, beta in (0, 1), a in (0, 1))."""
  return {
      "q": harness.rand(seed, (B, T, H, K)), "k": harness.rand(seed + 1, (B, T, H, K)) / 2,
      "v": harness.rand(seed + 2, (B, T, H, V)),
      "g": -harness.rand(seed + 3, (B, T, H), low=0.01, high=0.5),
      "beta": harness.rand(seed + 4, (B, T, H), low=0.1, high=0.9),
      "u": harness.rand(seed + 5, (B, T, D)),
      "a": harness.rand(seed + 6, (B, T, D), low=0.5, high=0.99),
      "delta": harness.rand(seed + 7, (B, T, D), low=0.01, high=0.5),
      "Bs": harness.rand(seed + 8, (B, T, N)), "Cs": harness.rand(seed + 9, (B, T, N)),
  }


_A = -harness.rand(20, (D, N), low=0.5, high=1.5)
_S4D = (jnp.log(harness.rand(21, (D,), low=1e-3, high=1e-1)),
        -harness.rand(22, (D, N // 2), low=0.3, high=0.7),
        jnp.pi * jnp.broadcast_to(jnp.arange(N // 2, dtype=jnp.float64), (D, N // 2)),
        harness.rand(23, (D, N // 2), jnp.complex128))

OPS = {
    "attention": lambda x, s, impl: attention(x["q"], x["k"], x["v"], segment_ids=s, impl=impl,
                                              chunk_size=8),
    "linear_attention": lambda x, s, impl: linear_attention(
        x["q"], x["k"], x["v"], x["g"], segment_ids=s, impl=impl, chunk_size=8)[0],
    "gated_delta_rule": lambda x, s, impl: gated_delta_rule(
        x["q"], x["k"], x["v"], x["beta"], x["g"], segment_ids=s, impl=impl, chunk_size=8)[0],
    "linear_scan": lambda x, s, impl: linear_scan(x["a"], x["u"], segment_ids=s, impl=impl)[0],
    "selective_scan": lambda x, s, impl: selective_scan(
        x["u"], x["delta"], _A, x["Bs"], x["Cs"], segment_ids=s, impl=impl, chunk_size=8)[0],
    "s4d_conv": lambda x, s, impl: s4d_conv(x["u"], *_S4D, segment_ids=s, impl=impl)[0],
}
FORMS = [("attention", "reference"), ("attention", "blockwise"),
         ("linear_attention", "reference"), ("linear_attention", "parallel"),
         ("linear_attention", "chunk"),
         ("gated_delta_rule", "reference"), ("gated_delta_rule", "chunk"),
         ("linear_scan", "reference"), ("linear_scan", "associative"),
         ("selective_scan", "reference"), ("selective_scan", "chunk"),
         ("selective_scan", "checkpointed"),
         ("s4d_conv", "reference"), ("s4d_conv", "fft")]


def _poison(x, where):
  """Every input with NaN at the time positions `where` ([B, T] bool)."""
  return {name: jnp.where(where.reshape(where.shape + (1,) * (a.ndim - 2)), jnp.nan, a)
          for name, a in x.items()}


@pytest.mark.parametrize("op, impl", FORMS)
def test_a_nan_later_never_reaches_earlier_outputs(op, impl):
  x = _inputs(0)
  clean = OPS[op](x, None, impl)
  bad = jnp.broadcast_to(jnp.arange(T) == BAD, (B, T))
  out = np.asarray(OPS[op](_poison(x, bad), None, impl))
  assert np.isfinite(out[:, :BAD]).all(), f"{op} {impl}: NaN before position {BAD}"
  harness.assert_close(out[:, :BAD], clean[:, :BAD], 1e-12, f"{op} {impl} before {BAD}")
  assert not np.isfinite(out[:, BAD]).all(), f"{op} {impl}: the NaN vanished"


@pytest.mark.parametrize("op, impl", FORMS)
def test_nan_in_padding_never_reaches_real_tokens(op, impl):
  x = _inputs(1)
  t = np.arange(T)
  # row 0 left-padded (as generate pads), row 1 right-padded (as the data loaders pad)
  segment_ids = jnp.asarray(np.stack([t >= 20, t < 44]).astype(np.int32))
  pad = segment_ids == 0
  clean = OPS[op](x, segment_ids, impl)
  out = np.asarray(OPS[op](_poison(x, pad), segment_ids, impl))
  real = np.asarray(~pad)
  assert np.isfinite(out[real]).all(), f"{op} {impl}: NaN from padding at real tokens"
  harness.assert_close(out[real], np.asarray(clean)[real], 1e-12, f"{op} {impl} real tokens")
