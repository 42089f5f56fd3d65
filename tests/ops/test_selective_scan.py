"""selective_scan: the chunk and checkpointed forms against the lax.scan oracle (outputs, final state and the
gradients of every input), and the oracle against the S6 recurrence written out in numpy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layers.ops import selective_scan
from tests import harness

B, DM, N = 2, 4, 3
# (T, groups of B and C): odd and chunk-edge lengths, grouped and ungrouped
CASES = ((1, None), (63, 2), (64, None), (65, 2), (200, 2))


def _params(seed=0, dtype=jnp.float64):
  """(A, D, delta_bias): A [Dm, N] negative, D and delta_bias [Dm]."""
  A = -harness.rand(seed, (DM, N), dtype, 0.5, 2.0)
  return A, harness.rand(seed + 1, (DM,), dtype), harness.rand(seed + 2, (DM,), dtype)


def _inputs(T, groups=None, seed=0, dtype=jnp.float64):
  """(u, delta, B, C, z) and h0; B and C are [B, T, N], or [B, T, G, N] with G = groups."""
  bc = (B, T, N) if groups is None else (B, T, groups, N)
  u, delta, z = (harness.rand(seed + i, (B, T, DM), dtype) for i in range(3))
  Bm, Cm = harness.rand(seed + 3, bc, dtype), harness.rand(seed + 4, bc, dtype)
  return (u, delta, Bm, Cm, z), harness.rand(seed + 5, (B, DM, N), dtype)


def _op(impl, params, chunk_size=64):
  """The op as the harness calls it: time arguments (u, delta, B, C, z), A, D, delta_bias
  closed over, softplus on."""
  A, D, delta_bias = params
  def fn(xs, h0, segment_ids):
    u, delta, Bm, Cm, z = xs
    return selective_scan(u, delta, A, Bm, Cm, D, z, delta_bias, True, h0, segment_ids,
                          impl=impl, chunk_size=chunk_size)
  return fn


def test_reference_is_the_recurrence():
  T, G = 7, 2
  (u, delta, Bm, Cm, z), h0 = _inputs(T, groups=G)
  A, D, delta_bias = _params()
  segment_ids = jnp.array([[1, 1, 2, 2, 2, 1, 1], [3, 3, 3, 3, 3, 3, 3]])
  y, final = selective_scan(u, delta, A, Bm, Cm, D, z, delta_bias, True, h0, segment_ids,
                            impl="reference")
  u_, delta_, A_, B_, C_, D_, z_, bias_, ids = map(
      np.asarray, (u, delta, A, Bm, Cm, D, z, delta_bias, segment_ids))
  want = np.zeros(y.shape)
  for b in range(B):
    for d in range(DM):
      g, h = d // (DM // G), np.asarray(h0)[b, d]
      for t in range(T):
        dt = np.log1p(np.exp(delta_[b, t, d] + bias_[d]))
        if t and ids[b, t] != ids[b, t - 1]:
          h = np.zeros_like(h)
        h = np.exp(dt * A_[d]) * h + dt * B_[b, t, g] * u_[b, t, d]
        silu = z_[b, t, d] / (1 + np.exp(-z_[b, t, d]))
        want[b, t, d] = (C_[b, t, g] @ h + D_[d] * u_[b, t, d]) * silu
      np.testing.assert_allclose(final[b, d], h, rtol=1e-12)
  np.testing.assert_allclose(y, want, rtol=1e-12)


@pytest.mark.parametrize("impl, T, groups", [("chunk", *case) for case in CASES]
                         + [("checkpointed", *CASES[i]) for i in (0, 3, 4)])
def test_chunked_forms_match_reference(impl, T, groups):
  xs, h0 = _inputs(T, groups)
  params = _params()
  segment_ids = harness.packed_segment_ids(B, T) if T > 3 else None
  harness.assert_form_matches_reference(_op(impl, params), _op("reference", params), xs, h0,
                                        segment_ids, what=f"{impl} T={T} G={groups}")


def test_gradients_of_A_D_and_delta_bias():
  T = 65
  xs, h0 = _inputs(T, groups=2, seed=1)
  segment_ids = harness.packed_segment_ids(B, T, seed=1)
  cotangent = (harness.rand(7, (B, T, DM)), harness.rand(8, (B, DM, N)))

  def grads(impl):
    def loss(params):
      y, final = _op(impl, params)(xs, h0, segment_ids)
      return (y * cotangent[0]).sum() + (final * cotangent[1]).sum()
    return jax.jit(jax.grad(loss))(_params(seed=1))

  for impl in ("chunk", "checkpointed"):
    harness.assert_close(grads(impl), grads("reference"), harness.GRAD_TOL,
                         f"{impl}: gradients of (A, D, delta_bias)")


@pytest.mark.parametrize("impl, chunk_size", [("chunk", 8), ("chunk", 32), ("checkpointed", 8)])
def test_chunk_sizes(impl, chunk_size):
  T = 100
  xs, h0 = _inputs(T, groups=2, seed=2)
  params = _params(seed=2)
  harness.assert_form_matches_reference(
      _op(impl, params, chunk_size), _op("reference", params), xs, h0,
      harness.packed_segment_ids(B, T, seed=2, num_segments=5), what=f"{impl} C={chunk_size}")


def test_without_optional_inputs():
  """D, z, delta_bias None and no softplus: y_t = C_t . h_t from dt = delta."""
  (u, delta, Bm, Cm, _), _ = _inputs(65, seed=3)
  A, _, _ = _params(seed=3)
  delta = jnp.abs(delta)
  run = jax.jit(lambda impl: selective_scan(u, delta, A, Bm, Cm, impl=impl),
                static_argnums=0)
  (y, final), (y_ref, final_ref) = run("chunk"), run("reference")
  harness.assert_close((y, final), (y_ref, final_ref), harness.OUT_TOL, "chunk, no options")
  state = jnp.zeros((B, DM, N), jnp.float64)
  for t in range(3):
    state = (jnp.exp(jnp.einsum("bd,dn->bdn", delta[:, t], A)) * state
             + jnp.einsum("bd,bn->bdn", delta[:, t] * u[:, t], Bm[:, t]))
    harness.assert_close(y[:, t], jnp.einsum("bdn,bn->bd", state, Cm[:, t]), 1e-12,
                         f"step {t}")


@pytest.mark.parametrize("impl", ["reference", "chunk", "checkpointed"])
def test_packed_equals_alone(impl):
  T = 40
  xs, h0 = _inputs(T, groups=2, seed=4)
  segment_ids = harness.packed_segment_ids(B, T, seed=3)
  segment_ids = segment_ids.at[0, :10].set(0)  # id 0: padding, zeroed (as run alone)
  harness.assert_packed_equals_alone(_op(impl, _params(seed=4), chunk_size=16), xs, h0,
                                     segment_ids)


@pytest.mark.parametrize("impl", ["reference", "chunk", "checkpointed"])
def test_carried_state_equals_one_pass(impl):
  xs, h0 = _inputs(100, seed=5)
  harness.assert_carry_equals_one_pass(_op(impl, _params(seed=5), chunk_size=32), xs, h0,
                                       split=45)


def test_float32_at_mamba_initialisation():
  """A = -(1..N), dt in [1e-3, 1e-1]: float32 chunk close to the float64 reference."""
  T = 200
  (u, delta, Bm, Cm, z), h0 = _inputs(T, seed=6)
  A = -jnp.broadcast_to(jnp.arange(1.0, N + 1), (DM, N))
  dt = harness.rand(6, (B, T, DM), low=1e-3, high=1e-1)
  call = lambda impl, *x: selective_scan(x[0], x[1], x[2], x[3], x[4], z=x[5],
                                         initial_state=x[6], impl=impl)
  args = (u, dt, A, Bm, Cm, z, h0)
  want = call("reference", *args)
  got = jax.jit(lambda *x: call("chunk", *x))(*(x.astype(jnp.float32) for x in args))
  assert got[0].dtype == jnp.float32 and got[1].dtype == jnp.float32
  harness.assert_close(got, want, 1e-5, "float32 chunk")


def test_dtypes_and_auto():
  (u, delta, Bm, Cm, z), h0 = _inputs(100, seed=7)
  A, D, bias = _params(seed=7)
  want = selective_scan(u, delta, A, Bm, Cm, D, z, bias, True, h0, impl="reference")
  got = jax.jit(lambda *x: selective_scan(*x, True, h0))(u, delta, A, Bm, Cm, D, z, bias)
  harness.assert_close(got, want, 1e-12, "auto")
  bf16 = lambda x: x.astype(jnp.bfloat16)
  y, final = jax.jit(selective_scan)(bf16(u), bf16(jnp.abs(delta)), A, bf16(Bm), bf16(Cm))
  assert y.dtype == jnp.bfloat16 and final.dtype == jnp.float64  # A is float64
  y, final = jax.jit(selective_scan)(*(bf16(x) for x in (u, jnp.abs(delta), A, Bm, Cm)))
  assert y.dtype == jnp.bfloat16 and final.dtype == jnp.float32


def _call(u=(2, 5, 4), delta=None, A=(4, 3), Bm=(2, 5, 3), Cm=None, D=None, z=None,
          delta_bias=None, initial_state=None, segment_ids=None, **kwargs):
  ones = lambda shape, dtype=jnp.float32: None if shape is None else jnp.ones(shape, dtype)
  return lambda: selective_scan(
      ones(u), ones(u if delta is None else delta), ones(A), ones(Bm),
      ones(Bm if Cm is None else Cm), ones(D), ones(z), ones(delta_bias),
      initial_state=ones(initial_state),
      segment_ids=None if segment_ids is None else ones(*segment_ids), **kwargs)


@pytest.mark.parametrize("call, message", [
    (_call(u=(2, 5)), r"u must have shape \[B, T, Dm\] \(rank 3\)"),
    (_call(delta=(2, 5, 3)), r"delta must have shape \[B, T, Dm\] like u = \(2, 5, 4\)"),
    (_call(z=(2, 4, 4)), r"z must have shape \[B, T, Dm\] like u"),
    (_call(A=(3, 3)), r"A must have shape \[Dm, N\] = \(4, 3\)"),
    (_call(A=(4,)), r"A must have shape \[Dm, N\] \(rank 2\)"),
    (_call(Bm=(2, 5)), r"B must have shape \[B, T, N\] or \[B, T, G, N\]"),
    (_call(Bm=(2, 5, 4)), r"B must have shape \[B, T, N\] = \(2, 5, 3\)"),
    (_call(Bm=(2, 5, 3, 3)), r"groups G=3 of B and C must divide Dm=4"),
    (_call(Bm=(2, 5, 2, 3), Cm=(2, 5, 3)),
     r"C must have shape \[B, T, G, N\] like B = \(2, 5, 2, 3\)"),
    (_call(D=(3,)), r"D must have shape \[Dm\] = \(4,\)"),
    (_call(delta_bias=(4, 1)), r"delta_bias must have shape \[Dm\]"),
    (_call(initial_state=(2, 3, 4)), r"initial_state must have shape \[B, Dm, N\] = \(2, 4, 3\)"),
    (_call(segment_ids=((2, 4), jnp.int32)), r"segment_ids must have shape \[B, T\]"),
    (_call(segment_ids=((2, 5),)), r"segment_ids must be an integer"),
    (_call(impl="associative"), r"unknown impl='associative'; expected one of 'reference', "
                                r"'chunk', 'checkpointed', 'pallas', 'auto'"),
    (_call(chunk_size=0), r"chunk_size must be a positive int"),
])
def test_bad_inputs_raise(call, message):
  with pytest.raises(ValueError, match=message):
    call()
