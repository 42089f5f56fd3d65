"""linear_attention: every form against the lax.scan oracle, and the oracle against the
recurrence written out in numpy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layers.ops import linear_attention
from tests import harness

B, H, K, V = 2, 2, 8, 6
LENGTHS = (1, 63, 64, 65, 200)
FORMS = ("parallel", "chunk")
INIT_GATE = (0.6, 2.5)  # -g per step: about -100 summed over a 64-token chunk


def _op(impl, chunk_size=64):
  def fn(xs, h0, segment_ids):
    return linear_attention(*xs, initial_state=h0, segment_ids=segment_ids, impl=impl,
                            chunk_size=chunk_size)
  return fn


def _inputs(T, seed=0, gate=(0.0, 0.2), dtype=jnp.float64):
  """(q, k, v, g) and h0; -g uniform in `gate`."""
  q = harness.rand(seed, (B, T, H, K), dtype)
  k = harness.rand(seed + 1, (B, T, H, K), dtype)
  v = harness.rand(seed + 2, (B, T, H, V), dtype)
  g = -harness.rand(seed + 3, (B, T, H), dtype, *gate)
  h0 = harness.rand(seed + 4, (B, H, K, V), dtype)
  return (q, k, v, g), h0


def test_reference_is_the_recurrence():
  (q, k, v, g), h0 = _inputs(7)
  segment_ids = jnp.array([[1, 1, 2, 2, 2, 1, 1], [3, 3, 3, 3, 3, 3, 3]])
  o, final = linear_attention(q, k, v, g, scale=0.7, initial_state=h0,
                              segment_ids=segment_ids, impl="reference")
  q_, k_, v_, g_, ids = map(np.asarray, (q, k, v, g, segment_ids))
  want = np.zeros(o.shape)
  for b in range(B):
    for h in range(H):
      state = np.asarray(h0)[b, h]
      for t in range(7):
        decay = 0.0 if t and ids[b, t] != ids[b, t - 1] else np.exp(g_[b, t, h])
        state = decay * state + np.outer(k_[b, t, h], v_[b, t, h])
        want[b, t, h] = state.T @ (0.7 * q_[b, t, h])
      np.testing.assert_allclose(final[b, h], state, rtol=1e-12)
  np.testing.assert_allclose(o, want, rtol=1e-12)


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("impl", FORMS)
def test_form_matches_reference(impl, T):
  xs, h0 = _inputs(T)
  segment_ids = harness.packed_segment_ids(B, T) if T > 3 else None
  harness.assert_form_matches_reference(_op(impl), _op("reference"), xs, h0, segment_ids,
                                        what=f"{impl} T={T}")


@pytest.mark.parametrize("chunk_size", [16, 32, 48, 64])
def test_chunk_sizes(chunk_size):
  T = 200
  xs, h0 = _inputs(T, seed=1)
  harness.assert_form_matches_reference(
      _op("chunk", chunk_size), _op("reference"), xs, h0,
      harness.packed_segment_ids(B, T, seed=1, num_segments=5),
      what=f"chunk C={chunk_size}")


@pytest.mark.parametrize("impl", FORMS)
def test_without_decay(impl):
  """g=None: plain (unnormalised) causal linear attention."""
  (q, k, v, _), h0 = _inputs(65)
  harness.assert_form_matches_reference(_op(impl), _op("reference"), (q, k, v), h0,
                                        harness.packed_segment_ids(B, 65), what=impl)
  o, _ = jax.jit(lambda *x: linear_attention(*x, impl=impl))(q, k, v)
  scores = jnp.tril(jnp.einsum("bthk,bshk->bhts", q * K ** -0.5, k))
  harness.assert_close(o, jnp.einsum("bhts,bshv->bthv", scores, v), 1e-10, "o = tril(QK^T) V")


@pytest.mark.parametrize("impl", ("reference", *FORMS))
def test_packed_equals_alone(impl):
  xs, h0 = _inputs(100, seed=2)
  segment_ids = harness.packed_segment_ids(B, 100, seed=3)
  segment_ids = segment_ids.at[0, :10].set(0)  # id 0: padding, zeroed (as run alone)
  harness.assert_packed_equals_alone(_op(impl), xs, h0, segment_ids)


@pytest.mark.parametrize("impl", ("reference", *FORMS))
def test_carried_state_equals_one_pass(impl):
  xs, h0 = _inputs(150, seed=4)
  harness.assert_carry_equals_one_pass(_op(impl), xs, h0, split=70)


@pytest.mark.parametrize("impl", FORMS)
def test_float32_with_initialisation_scale_gates(impl):
  """Gates summing to about -100 per 64-token chunk stay finite and accurate in float32."""
  T = 200
  xs, h0 = _inputs(T, seed=5, gate=INIT_GATE)
  assert -110 < float(xs[3][..., :64, :].sum(1).mean()) < -90
  segment_ids = harness.packed_segment_ids(B, T, seed=5)
  f32 = lambda tree: jax.tree.map(lambda x: x.astype(jnp.float32), tree)
  out, grads = harness.value_and_grads(_op(impl), f32(xs), f32(h0), segment_ids)
  out_ref, grads_ref = harness.value_and_grads(_op("reference"), xs, h0, segment_ids)
  assert out[0].dtype == jnp.float32 and out[1].dtype == jnp.float32
  harness.assert_close(out, out_ref, 1e-5, f"{impl} float32 outputs")
  harness.assert_close(grads, grads_ref, 1e-4, f"{impl} float32 gradients")


def test_chunk_float32_at_16384():
  T = 16384
  (q, k, v, g), h0 = _inputs(T, seed=6, gate=INIT_GATE, dtype=jnp.float32)
  segment_ids = harness.packed_segment_ids(B, T, seed=6, num_segments=8)
  o, final = jax.jit(lambda *x: linear_attention(*x[:4], initial_state=x[4],
                                                 segment_ids=x[5], impl="chunk"))(
      q, k, v, g, h0, segment_ids)
  assert bool(jnp.all(jnp.isfinite(o))) and bool(jnp.all(jnp.isfinite(final)))
  f64 = lambda x: x.astype(jnp.float64)
  o_ref, final_ref = jax.jit(lambda *x: linear_attention(*x[:4], initial_state=x[4],
                                                         segment_ids=x[5], impl="reference"))(
      f64(q), f64(k), f64(v), f64(g), f64(h0), segment_ids)
  harness.assert_close(o, o_ref, 1e-5, "float32 chunk at T=16384")
  harness.assert_close(final, final_ref, 1e-5, "final state at T=16384")


def test_dtypes_and_auto():
  (q, k, v, g), h0 = _inputs(100)
  want, want_final = linear_attention(q, k, v, g, initial_state=h0, impl="reference")
  o, final = jax.jit(lambda *x: linear_attention(*x[:4], initial_state=x[4]))(q, k, v, g, h0)
  harness.assert_close((o, final), (want, want_final), 1e-10, "auto")
  bf16 = lambda x: x.astype(jnp.bfloat16)
  o, final = jax.jit(linear_attention)(bf16(q), bf16(k), bf16(v), bf16(g))
  assert o.dtype == jnp.bfloat16 and final.dtype == jnp.float32


def _call(q=(2, 5, 3, 4), k=None, v=(2, 5, 3, 6), g=None, initial_state=None,
          segment_ids=None, **kwargs):
  ones = lambda shape, dtype=jnp.float32: None if shape is None else jnp.ones(shape, dtype)
  return lambda: linear_attention(
      ones(q), ones(q if k is None else k), ones(v), ones(g), initial_state=ones(initial_state),
      segment_ids=None if segment_ids is None else ones(*segment_ids), **kwargs)


@pytest.mark.parametrize("call, message", [
    (_call(q=(2, 5, 4)), r"q must have shape \[B, T, H, K\] \(rank 4\)"),
    (_call(k=(2, 5, 3, 5)), r"k must have shape \[B, T, H, K\] like q"),
    (_call(v=(2, 4, 3, 6)), r"v must have shape \[B, T, H, V\] = \(2, 5, 3, 6\)"),
    (_call(g=(2, 5)), r"g must have shape \[B, T, H\] = \(2, 5, 3\)"),
    (_call(initial_state=(2, 3, 6, 4)),
     r"initial_state must have shape \[B, H, K, V\] = \(2, 3, 4, 6\)"),
    (_call(segment_ids=((2, 4), jnp.int32)), r"segment_ids must have shape \[B, T\]"),
    (_call(segment_ids=((2, 5),)), r"segment_ids must be an integer"),
    (_call(impl="associative"),
     r"unknown impl='associative'; expected one of 'reference', 'parallel', 'chunk', "
     r"'pallas', 'auto'"),
    (_call(chunk_size=0), r"chunk_size must be a positive int"),
])
def test_bad_inputs_raise(call, message):
  with pytest.raises(ValueError, match=message):
    call()
