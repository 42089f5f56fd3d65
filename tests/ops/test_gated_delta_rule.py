"""gated_delta_rule: the chunk (WY/UT) form against the lax.scan oracle, and the oracle against
the recurrence written out in numpy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layers.ops import gated_delta_rule
from layers.ops.gated_delta_rule import xla
from tests import harness

B, H, K, V = 2, 2, 8, 6
LENGTHS = (1, 63, 64, 65, 200)
INIT_GATE = (0.6, 2.5)  # -g per step: about -100 summed over a 64-token chunk


def _op(impl, chunk_size=64):
  def fn(xs, h0, segment_ids):
    return gated_delta_rule(*xs, initial_state=h0, segment_ids=segment_ids, impl=impl,
                            chunk_size=chunk_size)
  return fn


def _inputs(T, seed=0, gate=(0.0, 0.2), dtype=jnp.float64):
  """(q, k, v, beta, g) and h0: L2-normalised q and k, beta in (0, 1), -g uniform in `gate`."""
  normalise = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
  q = normalise(harness.rand(seed, (B, T, H, K))).astype(dtype)
  k = normalise(harness.rand(seed + 1, (B, T, H, K))).astype(dtype)
  v = harness.rand(seed + 2, (B, T, H, V), dtype)
  beta = harness.rand(seed + 3, (B, T, H), dtype, 0.05, 0.95)
  g = -harness.rand(seed + 4, (B, T, H), dtype, *gate)
  h0 = harness.rand(seed + 5, (B, H, K, V), dtype)
  return (q, k, v, beta, g), h0


def test_reference_is_the_recurrence():
  (q, k, v, beta, g), h0 = _inputs(7)
  segment_ids = jnp.array([[1, 1, 2, 2, 2, 1, 1], [3, 3, 3, 3, 3, 3, 3]])
  o, final = gated_delta_rule(q, k, v, beta, g, scale=0.7, initial_state=h0,
                              segment_ids=segment_ids, impl="reference")
  q_, k_, v_, beta_, g_, ids = map(np.asarray, (q, k, v, beta, g, segment_ids))
  want = np.zeros(o.shape)
  for b in range(B):
    for h in range(H):
      state = np.asarray(h0)[b, h]
      for t in range(7):
        decay = 0.0 if t and ids[b, t] != ids[b, t - 1] else np.exp(g_[b, t, h])
        state = decay * state
        u = beta_[b, t, h] * (v_[b, t, h] - state.T @ k_[b, t, h])
        state = state + np.outer(k_[b, t, h], u)
        want[b, t, h] = state.T @ (0.7 * q_[b, t, h])
      np.testing.assert_allclose(final[b, h], state, rtol=1e-12)
  np.testing.assert_allclose(o, want, rtol=1e-12)


@pytest.mark.parametrize("T", LENGTHS)
def test_chunk_matches_reference(T):
  xs, h0 = _inputs(T)
  segment_ids = harness.packed_segment_ids(B, T) if T > 3 else None
  harness.assert_form_matches_reference(_op("chunk"), _op("reference"), xs, h0, segment_ids,
                                        what=f"chunk T={T}")


@pytest.mark.parametrize("chunk_size", [16, 32, 48, 64])
def test_chunk_sizes(chunk_size):
  T = 200
  xs, h0 = _inputs(T, seed=1)
  harness.assert_form_matches_reference(
      _op("chunk", chunk_size), _op("reference"), xs, h0,
      harness.packed_segment_ids(B, T, seed=1, num_segments=5),
      what=f"chunk C={chunk_size}")


@pytest.mark.parametrize("size", [1, 5, 16, 24, 48, 64])
def test_unit_lower_inverse(size):
  """(I + L)^{-1} by blocked substitution, and its custom gradient, against jnp.linalg.inv."""
  lower = jnp.tril(harness.rand(size, (3, size, size), low=-1.0, high=1.0), -1)
  eye = jnp.broadcast_to(jnp.eye(size), lower.shape)
  harness.assert_close(xla.unit_lower_inverse(lower), jnp.linalg.inv(eye + lower), 1e-10,
                       f"inverse C={size}")
  weights = harness.rand(size + 1, (3, size, size))
  grad = lambda inverse: jax.grad(lambda x: jnp.sum(weights * inverse(x)))(lower)
  harness.assert_close(jnp.tril(grad(xla.unit_lower_inverse), -1),
                       jnp.tril(grad(lambda x: jnp.linalg.inv(eye + x)), -1), 1e-10,
                       f"inverse gradient C={size}")


def test_deltanet_without_gate():
  """g=None is DeltaNet."""
  (q, k, v, beta, _), h0 = _inputs(65)
  harness.assert_form_matches_reference(_op("chunk"), _op("reference"), (q, k, v, beta), h0,
                                        harness.packed_segment_ids(B, 65), what="DeltaNet")


@pytest.mark.parametrize("impl", ["reference", "chunk"])
def test_packed_equals_alone(impl):
  xs, h0 = _inputs(100, seed=2)
  segment_ids = harness.packed_segment_ids(B, 100, seed=3)
  segment_ids = segment_ids.at[0, :10].set(0)  # id 0: padding, zeroed (as run alone)
  harness.assert_packed_equals_alone(_op(impl), xs, h0, segment_ids)


@pytest.mark.parametrize("impl", ["reference", "chunk"])
def test_carried_state_equals_one_pass(impl):
  xs, h0 = _inputs(150, seed=4)
  harness.assert_carry_equals_one_pass(_op(impl), xs, h0, split=70)


def test_float32_with_initialisation_scale_gates():
  """Gates summing to about -100 per 64-token chunk stay finite and accurate in float32."""
  T = 200
  xs, h0 = _inputs(T, seed=5, gate=INIT_GATE)
  assert -110 < float(xs[4][:, :64].sum(1).mean()) < -90
  segment_ids = harness.packed_segment_ids(B, T, seed=5)
  f32 = lambda tree: jax.tree.map(lambda x: x.astype(jnp.float32), tree)
  out, grads = harness.value_and_grads(_op("chunk"), f32(xs), f32(h0), segment_ids)
  out_ref, grads_ref = harness.value_and_grads(_op("reference"), xs, h0, segment_ids)
  assert out[0].dtype == jnp.float32 and out[1].dtype == jnp.float32
  harness.assert_close(out, out_ref, 1e-5, "float32 outputs")
  harness.assert_close(grads, grads_ref, 1e-4, "float32 gradients")


def test_chunk_float32_at_16384():
  T = 16384
  xs, h0 = _inputs(T, seed=6, gate=INIT_GATE, dtype=jnp.float32)
  segment_ids = harness.packed_segment_ids(B, T, seed=6, num_segments=8)
  run = lambda impl: jax.jit(_op(impl))
  o, final = run("chunk")(xs, h0, segment_ids)
  assert bool(jnp.all(jnp.isfinite(o))) and bool(jnp.all(jnp.isfinite(final)))
  f64 = lambda tree: jax.tree.map(lambda x: x.astype(jnp.float64), tree)
  o_ref, final_ref = run("reference")(f64(xs), f64(h0), segment_ids)
  harness.assert_close(o, o_ref, 1e-5, "float32 chunk at T=16384")
  harness.assert_close(final, final_ref, 1e-5, "final state at T=16384")


def test_dtypes_and_auto():
  (q, k, v, beta, g), h0 = _inputs(100)
  want = gated_delta_rule(q, k, v, beta, g, initial_state=h0, impl="reference")
  got = jax.jit(lambda *x: gated_delta_rule(*x[:5], initial_state=x[5]))(q, k, v, beta, g, h0)
  harness.assert_close(got, want, 1e-10, "auto")
  bf16 = lambda x: x.astype(jnp.bfloat16)
  o, final = jax.jit(gated_delta_rule)(bf16(q), bf16(k), bf16(v), bf16(beta), bf16(g))
  assert o.dtype == jnp.bfloat16 and final.dtype == jnp.float32


def _call(q=(2, 5, 3, 4), v=(2, 5, 3, 6), beta=(2, 5, 3), g=None, initial_state=None,
          **kwargs):
  ones = lambda shape: None if shape is None else jnp.ones(shape)
  return lambda: gated_delta_rule(ones(q), ones(q), ones(v), ones(beta), ones(g),
                                  initial_state=ones(initial_state), **kwargs)


@pytest.mark.parametrize("call, message", [
    (_call(q=(2, 5, 4)), r"q must have shape \[B, T, H, K\] \(rank 4\)"),
    (_call(v=(2, 5, 4, 6)), r"v must have shape \[B, T, H, V\] = \(2, 5, 3, 6\)"),
    (_call(beta=(2, 5, 3, 1)), r"beta must have shape \[B, T, H\] = \(2, 5, 3\)"),
    (_call(g=(2, 5, 1)), r"g must have shape \[B, T, H\] = \(2, 5, 3\)"),
    (_call(initial_state=(2, 3, 4)),
     r"initial_state must have shape \[B, H, K, V\] = \(2, 3, 4, 6\)"),
    (_call(segment_ids=jnp.ones((3, 5), jnp.int32)), r"segment_ids must have shape \[B, T\]"),
    (_call(impl="parallel"), r"unknown impl='parallel'; expected one of 'reference', 'chunk'"),
    (_call(chunk_size=16.0), r"chunk_size must be a positive int"),
])
def test_bad_inputs_raise(call, message):
  with pytest.raises(ValueError, match=message):
    call()
