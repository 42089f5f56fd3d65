"""The input rule every public op applies, in every form: NumPy inputs behave like jax arrays,
integer inputs are promoted to the default float dtype, T = 0 returns empty outputs and the
initial state, and a complex initial state with real inputs makes the computation complex."""
import jax.numpy as jnp
import numpy as np
import pytest

from layers import ops
from layers.ops import common
from tests import harness

B, D, H, K, V, N = 2, 3, 2, 4, 3, 4


def _ints(shape, seed, low=-2, high=3):
  return np.random.default_rng(seed).integers(low, high, shape)


# op -> (inputs(T, ints) -> (positional args, initial state or None), initial-state shape,
#        call(args, initial_state, impl) -> (output, final state))
def _scan_inputs(T, ints):
  if ints:
    return (_ints((B, T, D), 0, 0, 2), _ints((B, T, D), 1)), _ints((B, D), 2, 1, 3)
  return ((harness.rand(0, (B, T, D), low=0.5, high=1.0), harness.rand(1, (B, T, D))),
          harness.rand(2, (B, D), low=0.5, high=2.0))


def _log_scan_inputs(T, ints):
  (a, b), h0 = _scan_inputs(T, ints)
  return (-np.abs(a) if ints else jnp.log(a), b), h0


def _selective_inputs(T, ints):
  rand = (lambda s, shape: _ints(shape, s)) if ints else harness.rand
  args = (rand(0, (B, T, D)), rand(1, (B, T, D)), -np.abs(rand(2, (D, N))) - 1,
          rand(3, (B, T, N)), rand(4, (B, T, N)), rand(5, (D,)), rand(6, (B, T, D)))
  return args, rand(7, (B, D, N))


def _attention_inputs(T, ints, delta=False):
  rand = (lambda s, shape: _ints(shape, s)) if ints else harness.rand
  q, k = rand(0, (B, T, H, K)), rand(1, (B, T, H, K))
  if not ints:
    q, k = q / jnp.linalg.norm(q, axis=-1, keepdims=True), k / jnp.linalg.norm(k, axis=-1,
                                                                                keepdims=True)
  v = rand(2, (B, T, H, V))
  g = -np.abs(rand(3, (B, T, H))) * 0.1
  args = (q, k, v, (np.abs(rand(4, (B, T, H))) % 2 * 0.5 if ints else
                    harness.rand(4, (B, T, H), low=0.1, high=0.9)), g) if delta else (q, k, v, g)
  return args, rand(5, (B, H, K, V))


def _s4d_inputs(T, ints):
  modes = (jnp.log(harness.rand(0, (D,), low=0.01, high=0.1)),
           -harness.rand(1, (D, N // 2), low=0.3, high=0.7),
           harness.rand(2, (D, N // 2)), harness.rand(3, (D, N // 2), jnp.complex128))
  u = _ints((B, T, D), 4) if ints else harness.rand(4, (B, T, D))
  return (u, *modes), harness.rand(5, (B, D, N // 2), jnp.complex128)


OPS = {
    "linear_scan": (_scan_inputs,
                    lambda a, h0, impl: ops.linear_scan(*a, h0, impl=impl)),
    "log_linear_scan": (_log_scan_inputs,
                        lambda a, h0, impl: ops.log_linear_scan(*a, h0, impl=impl)),
    "selective_scan": (_selective_inputs,
                       lambda a, h0, impl: ops.selective_scan(*a, initial_state=h0, impl=impl,
                                                              chunk_size=4)),
    "linear_attention": (_attention_inputs,
                         lambda a, h0, impl: ops.linear_attention(*a, initial_state=h0,
                                                                  impl=impl, chunk_size=4)),
    "gated_delta_rule": (lambda T, ints: _attention_inputs(T, ints, delta=True),
                         lambda a, h0, impl: ops.gated_delta_rule(*a, initial_state=h0,
                                                                  impl=impl, chunk_size=4)),
    "s4d_conv": (_s4d_inputs, lambda a, h0, impl: ops.s4d_conv(*a, initial_state=h0,
                                                                impl=impl)),
}
STATEFUL = [(op, form) for op in OPS for form in common.FORMS[op]]


def _attention_call(args, impl):
  return ops.attention(*args[:3], impl=impl, window=3), None


def _prefill_call(args, impl):
  return ops.attention_prefill(*args[:3], ops.init_cache(B, 5, H, K, V), impl=impl)


ATTENTION = {"attention": _attention_call, "attention_prefill": _prefill_call}
ALL = STATEFUL + [(op, "reference") for op in ATTENTION]
# The chunked matrix-state kernels run eagerly in interpret mode here (10-15 s per call on
# CPU): their runs of the input rule are in the slow tier.
SLOW = {("linear_attention", "pallas"), ("gated_delta_rule", "pallas")}
ALL_TIERED = [pytest.param(*pair, marks=pytest.mark.slow) if pair in SLOW else pair
              for pair in ALL]


def _call(op, form, args, h0):
  if op in ATTENTION:
    return ATTENTION[op](args, form)
  return OPS[op][1](args, h0, form)


def _inputs(op, T, ints=False):
  make = OPS[op][0] if op in OPS else lambda T, ints: _attention_inputs(T, ints)
  return make(T, ints)


@pytest.mark.parametrize("op, form", ALL_TIERED)
def test_numpy_inputs_equal_jax_inputs(op, form):
  args, h0 = _inputs(op, 7)
  out = _call(op, form, args, h0)
  out_np = _call(op, form, tuple(np.asarray(a) for a in args), np.asarray(h0))
  harness.assert_close(out_np, out, 0.0, f"{op} ({form}) on NumPy inputs")


@pytest.mark.parametrize("op, form", ALL_TIERED)
def test_integer_inputs_are_promoted_to_float(op, form):
  args, h0 = _inputs(op, 6, ints=True)
  (y, _) = _call(op, form, args, h0)
  assert jnp.issubdtype(y.dtype, jnp.inexact), f"{op}: {y.dtype}"
  to_float = lambda a: (np.asarray(a, np.float64)
                        if np.issubdtype(np.asarray(a).dtype, np.integer) else a)
  y_float, _ = _call(op, form, tuple(map(to_float, args)), to_float(h0))
  harness.assert_close(y, y_float, 1e-12, f"{op} ({form}): int inputs == float inputs")


@pytest.mark.parametrize("op, form", ALL)
def test_empty_sequence_returns_the_initial_state(op, form):
  args, h0 = _inputs(op, 0)
  y, final = _call(op, form, args, h0)
  assert y.shape[:2] == (B, 0)
  if op == "attention_prefill":
    np.testing.assert_array_equal(final["pos"], 0)
  elif op != "attention":
    harness.assert_close(final, jnp.asarray(h0).astype(final.dtype), 0.0, f"{op}: final state")
    y0, final0 = _call(op, form, args, None)
    assert y0.shape[:2] == (B, 0) and not np.any(np.asarray(final0))


# (s4d_conv's state is complex by design and its output 2 Re(C x) real: its forms are tested
# with complex initial states in test_s4d_ops.py.)
LINEAR_IN_STATE = [(op, form) for op, form in STATEFUL
                   if op not in ("log_linear_scan", "s4d_conv")]


def _zero_values(op, args):
  """The args with the value input that enters the state additively set to zero."""
  position = {"linear_scan": 1, "selective_scan": 0, "linear_attention": 2,
              "gated_delta_rule": 2}[op]
  return tuple(jnp.zeros_like(a) if i == position else a for i, a in enumerate(args))


@pytest.mark.parametrize("op, form", LINEAR_IN_STATE)
def test_complex_initial_state_makes_the_computation_complex(op, form):
  """The output and final state are linear in (values, initial state) jointly, so with
  x0 = a + ib: out(v, a + ib) = out(v, a) + i out(0, b) — the imaginary part is not dropped.
  (Pallas kernels compute in float32 / complex64; the fused selective scan and the chunked
  matrix-state kernels refuse complex.)"""
  args, _ = _inputs(op, 9)
  h0 = harness.rand(11, jnp.shape(_inputs(op, 1)[1]), jnp.complex128)
  if form == "pallas" and op != "linear_scan":
    with pytest.raises(ValueError, match="impl='pallas' takes real inputs and a real "
                                         "initial_state"):
      _call(op, form, args, h0)
    return
  tol = 1e-5 if form == "pallas" else 1e-10
  y, final = _call(op, form, args, h0)
  y_re, final_re = _call(op, form, args, h0.real)
  y_im, final_im = _call(op, form, _zero_values(op, args), h0.imag)
  assert jnp.iscomplexobj(y) and jnp.iscomplexobj(final), f"{op}: {y.dtype}, {final.dtype}"
  harness.assert_close(y, y_re + 1j * y_im, tol, f"{op} ({form}): complex outputs")
  harness.assert_close(final, final_re + 1j * final_im, tol, f"{op} ({form}): final state")


def test_log_linear_scan_refuses_a_complex_state():
  (log_a, log_b), h0 = _log_scan_inputs(4, False)
  with pytest.raises(ValueError, match="log_linear_scan: initial_state must be real"):
    ops.log_linear_scan(log_a, log_b, h0 + 1j)


def test_other_public_functions_take_array_likes():
  u = np.arange(12.0).reshape(1, 4, 3)
  K_ = np.ones((3, 4))
  harness.assert_close(ops.causal_conv(u, K_), ops.causal_conv(jnp.asarray(u), jnp.asarray(K_)),
                       0.0, "causal_conv")
  (_, log_dt, A_re, A_im, C), _ = _s4d_inputs(1, False)
  np_modes = [np.asarray(x) for x in (log_dt, A_re, A_im, C)]
  harness.assert_close(ops.s4d_kernel(*np_modes, 5), ops.s4d_kernel(log_dt, A_re, A_im, C, 5),
                       0.0, "s4d_kernel")
  q = np.ones((B, H, K), int)
  o, cache = ops.attention_step(q, q, np.ones((B, H, V), int), ops.init_cache(B, 3, H, K, V))
  assert o.dtype == jnp.float64 and int(cache["pos"][0]) == 1
