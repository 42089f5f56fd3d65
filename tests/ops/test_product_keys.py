"""product_key_topk and memory_lookup: the fast forms against the dense oracles (float64),
the oracle against numpy, the memory plan of the chunked bag, and the input checks."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layers.ops import memory_lookup, product_key_topk
from tests import harness

B, T, H, KH, N_KEYS, TOPK = 2, 7, 3, 4, 16, 8


def _q_keys(seed=0, dtype=jnp.float64):
  return (harness.rand(seed, (B, T, H, 2, KH), dtype),
          harness.rand(seed + 1, (H, 2, N_KEYS, KH), dtype))


def test_reference_scores_every_product_key():
  q, keys = _q_keys()
  scores, indices = jax.jit(functools.partial(product_key_topk, topk=TOPK, impl="reference"))(
      q, keys)
  q_, k_ = np.asarray(q), np.asarray(keys)
  for b, t, h in np.ndindex(B, T, H):
    full = np.add.outer(k_[h, 0] @ q_[b, t, h, 0], k_[h, 1] @ q_[b, t, h, 1]).ravel()
    want = np.argsort(-full)[:TOPK]
    np.testing.assert_array_equal(indices[b, t, h], want)
    np.testing.assert_allclose(scores[b, t, h], full[want], rtol=1e-12)


def test_product_equals_reference_with_gradients():
  q, keys = _q_keys(1)
  cotangent = harness.rand(9, (B, T, H, TOPK))

  @jax.jit
  def run(q, keys):
    results = {}
    for impl in ("reference", "product"):
      scores, vjp, indices = jax.vjp(
          lambda q, keys: product_key_topk(q, keys, topk=TOPK, impl=impl), q, keys,
          has_aux=True)
      results[impl] = scores, indices, vjp(cotangent)
    return results
  results = run(q, keys)
  ref, prod = results["reference"], results["product"]
  np.testing.assert_array_equal(prod[1], ref[1])
  np.testing.assert_allclose(prod[0], ref[0], rtol=1e-12, atol=1e-12)
  harness.assert_close(prod[2], ref[2], 1e-12, "d scores / d (q, keys)")
  assert float(jnp.abs(prod[2][1]).max()) > 0, "d scores / d keys is zero"
  assert prod[1].dtype == jnp.int32


def _bag_inputs(seed=0, n_rows=10, value_dim=5, topk=3):
  values = harness.rand(seed, (n_rows, value_dim))
  indices = jnp.asarray(np.random.default_rng(seed).integers(0, n_rows, (B, T, H, topk)))
  weights = harness.rand(seed + 1, (B, T, H, topk))
  return values, indices, weights


def test_chunked_lookup_equals_the_gather_with_gradients():
  # 14 tokens in chunks of 4 (padding in the last); 10 rows for 126 lookups: repeated rows
  values, indices, weights = _bag_inputs()
  cotangent = harness.rand(7, (B, T, values.shape[1]))

  @jax.jit
  def run(values, weights):
    results = {}
    for impl in ("reference", "chunk"):
      out, vjp = jax.vjp(lambda v, w: memory_lookup(v, indices, w, impl=impl, chunk_size=4),
                         values, weights)
      results[impl] = out, vjp(cotangent)
    return results
  results = run(values, weights)
  want = np.einsum("bthk,bthkv->btv", weights, np.asarray(values)[np.asarray(indices)])
  np.testing.assert_allclose(results["reference"][0], want, rtol=1e-12)
  harness.assert_close(results["chunk"][0], results["reference"][0], 1e-12, "bag")
  harness.assert_close(results["chunk"][1], results["reference"][1], 1e-12, "d values, d w")


def test_chunked_lookup_memory_plan():
  """Forward and forward+backward temporaries at B*T = 8192, H*k = 128, V = 256 stay below
  twice the output plus one chunk's gathered rows (the full gather would be 1 GiB)."""
  b, t, h, k, v, n, c = 8, 1024, 4, 32, 256, 16384, 64
  shapes = (jax.ShapeDtypeStruct((n, v), jnp.float32),
            jax.ShapeDtypeStruct((b, t, h, k), jnp.int32),
            jax.ShapeDtypeStruct((b, t, h, k), jnp.float32))
  forward = lambda values, idx, w: memory_lookup(values, idx, w, chunk_size=c)
  backward = lambda values, idx, w: jax.vjp(lambda v_, w_: forward(v_, idx, w_), values, w)[1](
      jnp.ones((b, t, v), jnp.float32))
  bound = 2 * b * t * v * 4 + c * h * k * v * 4
  for name, fn in (("forward", forward), ("forward+backward", backward)):
    temp = jax.jit(fn).lower(*shapes).compile().memory_analysis().temp_size_in_bytes
    assert temp < bound, f"{name}: {temp / 2**20:.1f} MiB temporaries >= {bound / 2**20:.1f}"


def test_empty_inputs():
  q, keys = _q_keys()
  scores, indices = product_key_topk(q[:, :0], keys, topk=TOPK)
  assert scores.shape == indices.shape == (B, 0, H, TOPK)
  values, indices, weights = _bag_inputs()
  assert memory_lookup(values, indices[:, :0], weights[:, :0]).shape == (B, 0, 5)


@pytest.mark.parametrize("args, match", [
    (dict(q=np.zeros((B, T, H, KH))), r"q must have shape \[B, T, H, 2, Kh\]"),
    (dict(q=np.zeros((B, T, H, 3, KH))), r"two half-queries"),
    (dict(keys=np.zeros((H, 2, N_KEYS, KH + 1))), r"keys must have shape"),
    (dict(topk=N_KEYS + 1), r"topk must be an int in \[1, n_keys=16\]"),
    (dict(topk=0), r"topk must be an int"),
])
def test_topk_rejects_bad_inputs(args, match):
  q, keys = _q_keys()
  kwargs = {"q": q, "keys": keys, "topk": TOPK, **args}
  with pytest.raises(ValueError, match=match):
    product_key_topk(kwargs.pop("q"), kwargs.pop("keys"), **kwargs)


@pytest.mark.parametrize("which, bad, match", [
    ("indices", lambda x: x.astype(jnp.float64), r"indices must be an integer array"),
    ("indices", lambda x: x[..., 0], r"indices must have shape \[B, T, H, k\]"),
    ("weights", lambda x: x[..., :1], r"weights must have shape \[B, T, H, k\]"),
    ("values", lambda x: x[0], r"values must have shape \[N, V\]"),
])
def test_lookup_rejects_bad_inputs(which, bad, match):
  args = dict(zip(("values", "indices", "weights"), _bag_inputs()))
  args[which] = bad(args[which])
  with pytest.raises(ValueError, match=match):
    memory_lookup(**args)
