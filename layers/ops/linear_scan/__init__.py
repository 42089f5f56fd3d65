"""Diagonal linear recurrences: `linear_scan` (linear space) and `log_linear_scan` (log space)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from layers.ops import common
from layers.ops.linear_scan import pallas, reference, xla

common.register("linear_scan", {"reference": reference.linear_scan,
                                "associative": xla.linear_scan, "pallas": pallas.linear_scan})
common.register("log_linear_scan", {"reference": reference.log_linear_scan,
                                    "associative": xla.log_linear_scan,
                                    "compensated": xla.log_linear_scan_compensated,
                                    "pallas": pallas.log_linear_scan})


def _accumulation_inputs(op, impl, dtype, *xs):
  """`xs` cast to the accumulation dtype, except that the Pallas kernels read bfloat16 inputs
  as they are (half the memory traffic) and accumulate in float32 themselves."""
  keep = common.resolve_impl(op, impl) == "pallas" and dtype == jnp.float32
  return tuple(x if keep else x.astype(dtype) for x in xs)


def _check_inputs(op, x1_name, x1, x2_name, x2, initial_state, segment_ids):
  """Checks shapes; returns (B, T, segment_ids as an int array or None)."""
  if jnp.ndim(x1) < 2:
    raise ValueError(f"{op}: {x1_name} must have shape [B, T, ...] (rank >= 2); "
                     f"got shape {tuple(jnp.shape(x1))}")
  common.check_shape(op, x2_name, x2, jnp.shape(x1), f"[B, T, ...] like {x1_name}")
  batch, length = jnp.shape(x1)[:2]
  if initial_state is not None:
    state_shape = (batch, *jnp.shape(x1)[2:])
    common.check_shape(op, "initial_state", initial_state, state_shape, "[B, ...]")
  return batch, length, common.as_segment_ids(op, segment_ids, batch, length)


def linear_scan(a: jax.Array, b: jax.Array, initial_state: jax.Array | None = None, *,
                impl: str = "auto", reverse: bool = False,
                segment_ids: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Elementwise linear recurrence h_t = a_t * h_{t-1} + b_t along axis 1.

  Args:
    a, b: [B, T, ...] real or complex, same shape (array-likes; integers become floats).
    initial_state: h_{-1}, [B, ...] (zeros when None); it feeds the first segment of each row.
      A complex state with real a, b makes the recurrence complex.
    impl: "reference" (lax.scan) | "associative" (lax.associative_scan) | "pallas" (the
      TPU kernel, or the Mosaic GPU kernel on a Hopper GPU; interpret mode on CPU) | "auto" (common.AUTO_FORMS: reference on CPU,
      associative on GPU/TPU, the kernel where `_pallas.VERIFIED` lists the device).
    reverse: run from the last step to the first (h_t = a_t h_{t+1} + b_t); the initial state
      then feeds the last segment and the final state is h at t = 0.
    segment_ids: [B, T] int; the state restarts from zero wherever the id changes.
  Non-finite inputs: padding (segment id 0) becomes a = 1, b = 0 first, so garbage there
  never reaches real tokens; a non-finite input at step s reaches only h from s on.

  Returns:
    h: [B, T, ...] in the inputs' dtype (complex if the state is), and the final state [B, ...]
    in the accumulation dtype (float32 or wider); at T = 0, an empty h and the initial state.
  """
  op = "linear_scan"
  a, b, initial_state = common.as_float(a, b, initial_state)
  batch, length, segment_ids = _check_inputs(op, "a", a, "b", b, initial_state, segment_ids)
  form = common.dispatch(op, impl)
  dtype = common.accumulation_dtype(a, b, initial_state)
  out_dtype = common.output_dtype(jnp.result_type(a, b), initial_state)
  a, b = _accumulation_inputs(op, impl, dtype, a, b)
  h0 = (jnp.zeros(a.shape[:1] + a.shape[2:], dtype) if initial_state is None
        else initial_state.astype(dtype))
  if length == 0:
    return b.astype(out_dtype), h0
  resets = common.broadcast_flags(
      common.segment_starts(segment_ids, batch, length, reverse), a)
  if segment_ids is not None:  # padding leaves the state unchanged: a = 1, b = 0
    pad = common.broadcast_flags(segment_ids == 0, a)
    a, b = jnp.where(pad, 1, a), jnp.where(pad, 0, b)
  h, h_last = form(a, b, h0, resets, reverse=reverse)
  return h.astype(out_dtype), h_last


def log_linear_scan(log_a: jax.Array, log_b: jax.Array,
                    initial_state: jax.Array | None = None, *, impl: str = "auto",
                    segment_ids: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Positive recurrence h_t = exp(log_a_t) h_{t-1} + exp(log_b_t), computed in log space.

  The form minGRU/minLSTM train with: stable at long T because every combine is a logaddexp.

  Args:
    log_a, log_b: [B, T, ...] real, same shape (array-likes; integers become floats).
    initial_state: the linear h_{-1} >= 0, real, [B, ...] (h_{-1} = 0 when None); it feeds the
      first segment of each row, later segments start from zero.
    impl: "reference" (lax.scan) | "associative" (lax.associative_scan on
      (a1 + a2, logaddexp(b1 + a2, b2)) with reset flags) | "compensated" (lax.scan summing
      log h with Kahan compensation: float32 stays accurate when log_a is tiny next to log h)
      | "pallas" (the TPU kernel, or the Mosaic GPU kernel on a Hopper GPU; interpret mode on
      CPU) | "auto" (common.AUTO_FORMS).
    segment_ids: [B, T] int; the state restarts from zero wherever the id changes.
  Returns:
    h: [B, T, ...] linear, in the inputs' dtype; final state [B, ...] linear, float32 or wider;
    at T = 0, an empty h and the initial state.
  """
  op = "log_linear_scan"
  log_a, log_b, initial_state = common.as_float(log_a, log_b, initial_state)
  batch, length, segment_ids = _check_inputs(op, "log_a", log_a, "log_b", log_b,
                                             initial_state, segment_ids)
  for name, x in (("log_a", log_a), ("log_b", log_b), ("initial_state", initial_state)):
    if x is not None and jnp.iscomplexobj(x):
      raise ValueError(f"{op}: {name} must be real (a positive recurrence in log space); "
                       f"got {x.dtype}; use linear_scan for complex recurrences")
  form = common.dispatch(op, impl)
  dtype = common.accumulation_dtype(log_a, log_b, initial_state)
  out_dtype = jnp.result_type(log_a, log_b)
  log_a, log_b = _accumulation_inputs(op, impl, dtype, log_a, log_b)
  state_shape = log_a.shape[:1] + log_a.shape[2:]
  if length == 0:
    h0 = jnp.zeros(state_shape, dtype) if initial_state is None else initial_state.astype(dtype)
    return log_b.astype(out_dtype), h0
  resets = common.segment_starts(segment_ids, batch, length)
  if initial_state is None:  # h_{-1} = 0: start the first step as a reset, never log(0).
    log_h0 = jnp.zeros(state_shape, dtype)
    resets = resets.at[:, 0].set(True)
  else:
    log_h0 = jnp.log(initial_state.astype(dtype))
  resets = common.broadcast_flags(resets, log_a)
  log_h, log_h_last = form(log_a, log_b, log_h0, resets)
  return jnp.exp(log_h).astype(out_dtype), jnp.exp(log_h_last)


__all__ = ["linear_scan", "log_linear_scan"]
