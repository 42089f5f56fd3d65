"""Attention layer: the numbers are softmax attention with rotary positions restarting per
segment, the cache semantics of the whole-sequence call, rotary itself, the bidirectional
form."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layers import Attention, apply_rotary
from tests import harness
from tests.layers import mixer_checks as checks

B, T, D, H, K = 2, 12, 8, 2, 4
F64 = dict(dtype=jnp.float64, param_dtype=jnp.float64)


def _rotate(x, p, base=10000.0):
  """numpy rotary of x: [H, K] at position p, pairs (i, i + K/2)."""
  theta = p * base ** (-2 * np.arange(K // 2) / K)
  x1, x2 = x[:, :K // 2], x[:, K // 2:]
  return np.concatenate([x1 * np.cos(theta) - x2 * np.sin(theta),
                         x2 * np.cos(theta) + x1 * np.sin(theta)], axis=-1)


def _reference(params, x, segment_ids, window, causal):
  """Per row and query, written out: positions t - segment start, masked softmax."""
  w_qkv = np.asarray(params["qkv_proj"]["kernel"])  # [D, 3, H, K]
  w_o = np.asarray(params["out_proj"]["kernel"])  # [H, K, D]
  qkv = np.einsum("btd,dshk->sbthk", np.asarray(x), w_qkv)
  out = np.zeros(x.shape)
  for b in range(x.shape[0]):
    for start, end in harness.segment_bounds(segment_ids[b]):
      q = [_rotate(qkv[0, b, t], t - start) for t in range(start, end)]
      k = [_rotate(qkv[1, b, t], t - start) for t in range(start, end)]
      for i in range(end - start):
        visible = [j for j in range(end - start)
                   if not causal or (j <= i and (window is None or i - j < window))]
        scores = np.stack([np.einsum("hk,hk->h", q[i], k[j]) for j in visible]) / np.sqrt(K)
        weights = np.exp(scores - scores.max(0))
        weights /= weights.sum(0)
        o = np.einsum("jh,jhk->hk", weights, qkv[2, b, [start + j for j in visible]])
        out[b, start + i] = np.einsum("hk,hkd->d", o, w_o)
  return out


@pytest.mark.parametrize("window, causal", [(None, True), (3, True), (None, False)])
def test_layer_is_the_formula(window, causal):
  module = Attention(D, H, K, window=window, causal=causal, **F64)
  x = harness.rand(0, (B, T, D))
  variables = harness.init_variables(module, jax.random.key(0), x)
  segment_ids = harness.packed_segment_ids(B, T, seed=4)
  y, _ = checks.whole(module, variables)(x, None, segment_ids)
  want = _reference(variables["params"], x, segment_ids, window, causal)
  np.testing.assert_allclose(y, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("window", [None, 5, 20])
def test_cache_from_a_whole_sequence(window):
  """state=None returns a cache of capacity T (or window) with pos = T, keys after rotary."""
  module = Attention(D, H, K, window=window, **F64)
  x = harness.rand(0, (B, T, D))
  variables = harness.init_variables(module, jax.random.key(0), x)
  _, cache = checks.whole(module, variables)(x)
  C = window or T
  assert cache["k"].shape == (B, C, H, K) and cache["v"].shape == (B, C, H, K)
  np.testing.assert_array_equal(cache["pos"], [T, T])
  qkv = jnp.einsum("btd,dshk->sbthk", x, variables["params"]["qkv_proj"]["kernel"])
  keys = apply_rotary(qkv[1], jnp.broadcast_to(jnp.arange(T), (B, T)))
  for t in range(max(0, T - C), T):
    np.testing.assert_allclose(cache["k"][:, t % C], keys[:, t], rtol=1e-12)
    np.testing.assert_allclose(cache["v"][:, t % C], qkv[2][:, t], rtol=1e-12)
  if C > T:
    assert not np.any(np.asarray(cache["k"][:, T:]))


def test_rotary():
  x = harness.rand(0, (3, H, K))
  p = jnp.array([0, 5, 1000])
  np.testing.assert_allclose(apply_rotary(x, jnp.zeros(3, jnp.int32)), x, rtol=1e-15)
  np.testing.assert_allclose(jnp.linalg.norm(apply_rotary(x, p), axis=-1),
                             jnp.linalg.norm(x, axis=-1), rtol=1e-12)
  q, k = harness.rand(1, (H, K)), harness.rand(2, (H, K))
  score = lambda t, s: jnp.einsum("hk,hk->h", apply_rotary(q[None], jnp.array([t]))[0],
                                  apply_rotary(k[None], jnp.array([s]))[0])
  np.testing.assert_allclose(score(7, 3), score(104, 100), rtol=1e-10)  # relative only
  np.testing.assert_allclose(apply_rotary(x, p)[1], _rotate(np.asarray(x[1]), 5), rtol=1e-12)
  with pytest.raises(ValueError, match="head dim K must be even"):
    apply_rotary(jnp.ones((2, H, 3)), jnp.zeros(2, jnp.int32))


def test_bidirectional_is_not_causal():
  module = Attention(D, H, K, causal=False, **F64)
  x = harness.rand(0, (1, 6, D))
  variables = harness.init_variables(module, jax.random.key(0), x)
  jac = np.asarray(checks.causal_jacobian(module, variables, x))
  assert jac[0, 5] > 1e-6 and jac[5, 0] > 1e-6
  with pytest.raises(ValueError, match="bidirectional form .* has no step"):
    module.apply(variables, x[:, 0], module.apply(variables, 1, 6, method="init_state"),
                 method="step")


def test_bad_window_raises():
  with pytest.raises(ValueError, match=r"Attention: window must be a positive int or None"):
    Attention(D, H, K, window=0).init(jax.random.key(0), jnp.zeros((1, 4, D)))
