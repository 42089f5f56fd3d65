"""Softmax attention: full, sliding window and bidirectional against a numpy softmax with a
band mask, packing, cached decoding against the whole-sequence forward, and prefill into the
cache against decoding token by token."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layers.ops import attention, attention_prefill, attention_step, init_cache
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


def _decode(q, k, v, cache):
  """The oracle of prefill: attention_step token by token, (o [B, T, H, V], cache)."""
  def step(cache, xs):
    o_t, cache = attention_step(*xs, cache)
    return cache, o_t
  cache, o = jax.lax.scan(step, cache, tuple(jnp.moveaxis(x, 1, 0) for x in (q, k, v)))
  return jnp.moveaxis(o, 0, 1), cache


@pytest.mark.parametrize("capacity, split", [(T + 3, 5), (4, 6), (4, 2), (T, 0)])
def test_prefill_equals_decoding_token_by_token(capacity, split):
  """Decode `split` tokens, then prefill the rest in one call: outputs and the cache (slots in
  ring-buffer order, pos) equal decoding every token; a fresh prefill (cache=None) equals it
  too."""
  q, k, v = _qkv()

  @jax.jit
  def both(q, k, v):
    empty = init_cache(B, capacity, H, K, V, jnp.float64)
    o_steps, cache_steps = _decode(q, k, v, empty)
    _, cache = _decode(q[:, :split], k[:, :split], v[:, :split], empty)
    o_rest, cache = attention_prefill(q[:, split:], k[:, split:], v[:, split:], cache)
    o_fresh, cache_fresh = attention_prefill(q, k, v, capacity=capacity)
    return o_steps, cache_steps, o_rest, cache, o_fresh, cache_fresh

  o_steps, cache_steps, o_rest, cache, o_fresh, cache_fresh = both(q, k, v)
  harness.assert_close(o_rest, o_steps[:, split:], 1e-12, "prefill after decoding: outputs")
  harness.assert_close(o_fresh, o_steps, 1e-12, "fresh prefill: outputs")
  for name, got in (("after decoding", cache), ("fresh", cache_fresh)):
    for key in ("k", "v"):
      harness.assert_close(got[key], cache_steps[key], 1e-12, f"prefill {name}: cache {key}")
    np.testing.assert_array_equal(got["pos"], cache_steps["pos"])


def test_prefill_packed_rows_continue_the_cache_in_their_first_segment_only():
  q, k, v = _qkv()
  capacity, split = 6, 4
  segment_ids = jnp.asarray([[1] * 3 + [2] * 6, [1] * 5 + [4] * 4])
  empty = init_cache(B, capacity, H, K, V, jnp.float64)
  _, cache = _decode(q[:, :split], k[:, :split], v[:, :split], empty)
  rest = tuple(x[:, split:] for x in (q, k, v))
  o, new_cache = jax.jit(attention_prefill)(*rest, cache, segment_ids=segment_ids)
  for b in range(B):
    (s0, e0), (s1, e1) = harness.segment_bounds(segment_ids[b])
    row = lambda x, start, end: x[b:b + 1, start:end]
    first, _ = _decode(*(row(x, s0, e0) for x in rest), jax.tree.map(lambda c: c[b:b + 1],
                                                                      cache))
    alone, alone_cache = _decode(*(row(x, s1, e1) for x in rest),
                                 jax.tree.map(lambda c: c[b:b + 1], empty))
    harness.assert_close(row(o, s0, e0), first, 1e-12, f"row {b}: first segment")
    harness.assert_close(row(o, s1, e1), alone, 1e-12, f"row {b}: second segment")
    for key in ("k", "v"):
      harness.assert_close(new_cache[key][b:b + 1], alone_cache[key], 1e-12, f"row {b} {key}")
    assert int(new_cache["pos"][b]) == e1 - s1


def test_bidirectional_attends_to_the_whole_segment():
  q, k, v = _qkv()
  segment_ids = jnp.asarray([[1] * 6 + [2] * 7, [3] * 13])
  o = attention(q, k, v, segment_ids=segment_ids, causal=False)
  for b in range(B):
    for start, end in harness.segment_bounds(segment_ids[b]):
      x = [np.asarray(a[b:b + 1, start:end]) for a in (q, k, v)]
      scores = np.einsum("bthk,bshk->bhts", x[0] * K ** -0.5, x[1])
      w = np.exp(scores - scores.max(-1, keepdims=True))
      want = np.einsum("bhts,bshv->bthv", w / w.sum(-1, keepdims=True), x[2])
      np.testing.assert_allclose(o[b:b + 1, start:end], want, rtol=1e-12, atol=1e-12)


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
    (lambda: attention(*_qkv(), window=3, causal=False), r"None when causal=False"),
    (lambda: attention_prefill(*_qkv(), init_cache(B, 4, H, K, V), capacity=4),
     r"attention_prefill: capacity is the given cache's"),
    (lambda: attention_prefill(*_qkv(), capacity=0), r"capacity must be a positive int"),
    (lambda: attention_prefill(*_qkv(), init_cache(B, 4, H, K, V + 1)),
     r"attention_prefill: cache\['v'\] must have shape"),
])
def test_bad_inputs_raise(call, message):
  with pytest.raises(ValueError, match=message):
    call()


TB = 37  # not a multiple of the block sizes below


@pytest.mark.parametrize("window, causal, chunk_size", [(None, True, 4), (5, True, 4),
                                                        (5, True, 16), (None, False, 8)])
def test_blockwise_equals_the_dense_softmax(window, causal, chunk_size):
  """Outputs and the gradients of q, k, v (one vjp), packed rows, T not a multiple of the
  block; a window of 5 with blocks of 4 makes the blockwise form skip blocks."""
  q, k, v = _qkv(TB, seed=3)
  segment_ids = harness.packed_segment_ids(B, TB, seed=4)
  run = lambda impl: jax.vjp(lambda *x: attention(*x, window=window, segment_ids=segment_ids,
                                                  causal=causal, impl=impl,
                                                  chunk_size=chunk_size), q, k, v)
  (o_ref, vjp_ref), (o, vjp) = run("reference"), run("blockwise")
  harness.assert_close(o, o_ref, 1e-12, "outputs")
  d_o = harness.rand(9, o.shape)
  for name, got, want in zip("qkv", vjp(d_o), vjp_ref(d_o)):
    harness.assert_close(got, want, 1e-12, f"d{name}")


@pytest.mark.parametrize("capacity, split", [(4, 6), (T + 3, 5)])
def test_blockwise_prefill_equals_the_dense_prefill(capacity, split):
  """Into a cache filled by decoding (keys = C cached + T new, blocks of 4) and fresh."""
  q, k, v = _qkv()
  segment_ids = jnp.asarray([[1] * 3 + [2] * (T - split - 3), [1] * (T - split)])

  @jax.jit
  def both(q, k, v):
    _, cache = _decode(q[:, :split], k[:, :split], v[:, :split],
                       init_cache(B, capacity, H, K, V, jnp.float64))
    rest = tuple(x[:, split:] for x in (q, k, v))
    return [(attention_prefill(*rest, cache, segment_ids=segment_ids, impl=impl, chunk_size=4),
             attention_prefill(q, k, v, capacity=capacity, impl=impl, chunk_size=4))
            for impl in ("reference", "blockwise")]

  want, got = both(q, k, v)
  for (o, cache), (o_ref, cache_ref), what in zip(got, want, ("continued", "fresh")):
    harness.assert_close(o, o_ref, 1e-12, f"{what}: outputs")
    for key in ("k", "v", "pos"):
      np.testing.assert_array_equal(cache[key], cache_ref[key])


def test_blockwise_memory_grows_with_T_times_the_block_not_T_squared():
  T_long, block = 2048, 128
  x = jnp.zeros((1, T_long, 1, 8), jnp.float32)
  loss = lambda impl: lambda q: jnp.sum(attention(q, q, q, impl=impl, chunk_size=block))
  temp = {impl: jax.jit(jax.grad(loss(impl))).lower(x).compile().memory_analysis()
          .temp_size_in_bytes for impl in ("reference", "blockwise")}
  scores = T_long * T_long * 4
  assert temp["reference"] >= scores, temp
  assert temp["blockwise"] < scores / 16, temp
