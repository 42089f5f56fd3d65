"""Causal softmax attention: full and sliding window against a numpy softmax with a band
mask, packing, and cached decoding against the whole-sequence forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layers.ops import attention, attention_step, init_cache
from tests import harness

B, T, H, K, V = 2, 13, 2, 4, 3


def _qkv(T=T, seed=0):
  return (harness.rand(seed, (B, T, H, K)), harness.rand(seed + 1, (B, T, H, K)),
          harness.rand(seed + 2, (B, T, H, V)))


def _numpy_attention(q, k, v, window=None, scale=K ** -0.5):
  q, k, v = (np.asarray(x) for x in (q, k, v))
  t = np.arange(q.shape[1])
  mask = t[:, None] >= t[None, :]
  if window is not None:
    mask &= (t[:, None] - t[None, :]) < window
  scores = np.einsum("bthk,bshk->bhts", q * scale, k)
  scores = np.where(mask, scores, -np.inf)
  w = np.exp(scores - scores.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  return np.einsum("bhts,bshv->bthv", w, v)


@pytest.mark.parametrize("window", [None, 1, 4, T + 5])
def test_matches_masked_softmax(window):
  q, k, v = _qkv()
  np.testing.assert_allclose(attention(q, k, v, window=window), _numpy_attention(q, k, v, window),
                             rtol=1e-12, atol=1e-12)


def test_scale_multiplies_q():
  q, k, v = _qkv()
  np.testing.assert_allclose(attention(q, k, v, scale=0.3), _numpy_attention(q, k, v, scale=0.3),
                             rtol=1e-12)


@pytest.mark.parametrize("window", [None, 4])
def test_packed_equals_alone(window):
  q, k, v = _qkv()
  segment_ids = harness.packed_segment_ids(B, T, seed=2)
  out = attention(q, k, v, window=window, segment_ids=segment_ids)
  for b in range(B):
    for start, end in harness.segment_bounds(segment_ids[b]):
      alone = attention(*(x[b:b + 1, start:end] for x in (q, k, v)), window=window)
      harness.assert_close(out[b:b + 1, start:end], alone, 1e-12, f"row {b} [{start}:{end}]")


@pytest.mark.parametrize("capacity, window", [(T, None), (T + 3, None), (4, 4)])
def test_cached_steps_equal_full_forward(capacity, window):
  """Decoding token by token into a cache of `capacity` slots (a ring buffer when
  capacity == window) reproduces the whole-sequence forward."""
  q, k, v = _qkv()

  @jax.jit
  def decode(q, k, v):
    def step(cache, xs):
      o_t, cache = attention_step(*xs, cache)
      return cache, o_t
    cache = init_cache(B, capacity, H, K, V, jnp.float64)
    xs = tuple(jnp.moveaxis(x, 1, 0) for x in (q, k, v))
    cache, o = jax.lax.scan(step, cache, xs)
    return jnp.moveaxis(o, 0, 1), cache

  o, cache = decode(q, k, v)
  harness.assert_close(o, attention(q, k, v, window=window), 1e-12, "decoded vs full")
  np.testing.assert_array_equal(cache["pos"], np.full(B, T))


def test_gradients_are_finite_with_segments():
  q, k, v = _qkv()
  segment_ids = harness.packed_segment_ids(B, T, seed=5)
  grads = jax.grad(lambda q, k, v: attention(q, k, v, window=3, segment_ids=segment_ids).sum(),
                   argnums=(0, 1, 2))(q, k, v)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)


@pytest.mark.parametrize("call, message", [
    (lambda: attention(jnp.ones((B, T, K)), jnp.ones((B, T, K)), jnp.ones((B, T, V))),
     r"q must have shape \[B, T, H, K\]"),
    (lambda: attention(jnp.ones((B, T, H, K)), jnp.ones((B, T, H, K + 1)),
                       jnp.ones((B, T, H, V))), r"k must have shape"),
    (lambda: attention(jnp.ones((B, T, H, K)), jnp.ones((B, T, H, K)),
                       jnp.ones((B, T - 1, H, V))), r"v must have shape \[B, T, H, V\]"),
    (lambda: attention(*_qkv(), window=0), r"window must be a positive int"),
    (lambda: attention_step(jnp.ones((B, H, K)), jnp.ones((B, H, K)), jnp.ones((B, H, V)),
                            init_cache(B, 4, H, K + 1, V)), r"cache\['k'\] must have shape"),
    (lambda: attention_step(jnp.ones((B, H, K)), jnp.ones((B, H, K)), jnp.ones((B, H, V)),
                            {"k": 1}), r"cache must be a dict with keys k, v, pos"),
])
def test_bad_inputs_raise(call, message):
  with pytest.raises(ValueError, match=message):
    call()
