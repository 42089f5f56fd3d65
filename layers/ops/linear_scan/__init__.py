"""Diagonal linear recurrences: `linear_scan` (linear space) and `log_linear_scan` (log space)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from layers.ops import _common
from layers.ops.linear_scan import reference, xla

_FORMS = {"reference": reference, "associative": xla}


def _resolve(op, impl):
  # On CPU the sequential scan is 2-10x faster than the associative one at every T we measured
  # (benchmarks/scan.py): it does O(T) work against O(T log T) and streams memory once.
  name = _common.resolve_impl(op, impl, tuple(_FORMS), cpu_default="reference",
                              accelerator_default="associative")
  return _FORMS[name]


def _check_inputs(op, x1_name, x1, x2_name, x2, initial_state, segment_ids):
  if jnp.ndim(x1) < 2:
    raise ValueError(f"{op}: {x1_name} must have shape [B, T, ...] (rank >= 2); "
                     f"got shape {tuple(jnp.shape(x1))}")
  _common.check_shape(op, x2_name, x2, jnp.shape(x1), f"[B, T, ...] like {x1_name}")
  batch, length = jnp.shape(x1)[:2]
  if initial_state is not None:
    state_shape = (batch, *jnp.shape(x1)[2:])
    _common.check_shape(op, "initial_state", initial_state, state_shape, "[B, ...]")
  _common.check_segment_ids(op, segment_ids, batch, length)
  return batch, length


def linear_scan(a: jax.Array, b: jax.Array, initial_state: jax.Array | None = None, *,
                impl: str = "auto", reverse: bool = False,
                segment_ids: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Elementwise linear recurrence h_t = a_t * h_{t-1} + b_t along axis 1.

  Args:
    a, b: [B, T, ...] real or complex, same shape.
    initial_state: h_{-1}, [B, ...] (zeros when None); it feeds the first segment of each row.
    impl: "reference" (lax.scan) | "associative" (lax.associative_scan) | "auto"
      (reference on CPU, associative on GPU/TPU).
    reverse: run from the last step to the first (h_t = a_t h_{t+1} + b_t); the initial state
      then feeds the last segment and the final state is h at t = 0.
    segment_ids: [B, T] int; the state restarts from zero wherever the id changes.
  Returns:
    h: [B, T, ...] in the inputs' dtype, and the final state [B, ...] in the accumulation
    dtype (float32 or wider).
  """
  op = "linear_scan"
  batch, length = _check_inputs(op, "a", a, "b", b, initial_state, segment_ids)
  form = _resolve(op, impl)
  dtype = _common.accumulation_dtype(a, b)
  out_dtype = jnp.result_type(a, b)
  a, b = a.astype(dtype), b.astype(dtype)
  h0 = (jnp.zeros(a.shape[:1] + a.shape[2:], dtype) if initial_state is None
        else initial_state.astype(dtype))
  resets = _common.broadcast_flags(
      _common.segment_starts(segment_ids, batch, length, reverse), a)
  h, h_last = form.linear_scan(a, b, h0, resets, reverse=reverse)
  return h.astype(out_dtype), h_last


def log_linear_scan(log_a: jax.Array, log_b: jax.Array,
                    initial_state: jax.Array | None = None, *, impl: str = "auto",
                    segment_ids: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Positive recurrence h_t = exp(log_a_t) h_{t-1} + exp(log_b_t), computed in log space.

  The form minGRU/minLSTM train with: stable at long T because every combine is a logaddexp.

  Args:
    log_a, log_b: [B, T, ...] real, same shape.
    initial_state: the linear h_{-1} > 0, [B, ...] (h_{-1} = 0 when None); it feeds the first
      segment of each row, later segments start from zero.
    impl: "reference" (lax.scan) | "associative" (lax.associative_scan on
      (a1 + a2, logaddexp(b1 + a2, b2)) with reset flags) | "auto" (reference on CPU,
      associative on GPU/TPU).
    segment_ids: [B, T] int; the state restarts from zero wherever the id changes.
  Returns:
    h: [B, T, ...] linear, in the inputs' dtype; final state [B, ...] linear, float32 or wider.
  """
  op = "log_linear_scan"
  batch, length = _check_inputs(op, "log_a", log_a, "log_b", log_b, initial_state,
                                segment_ids)
  if jnp.iscomplexobj(log_a) or jnp.iscomplexobj(log_b):
    raise ValueError(f"{op}: log_a and log_b must be real; got {log_a.dtype}, {log_b.dtype}")
  form = _resolve(op, impl)
  dtype = _common.accumulation_dtype(log_a, log_b)
  out_dtype = jnp.result_type(log_a, log_b)
  log_a, log_b = log_a.astype(dtype), log_b.astype(dtype)
  resets = _common.segment_starts(segment_ids, batch, length)
  if initial_state is None:  # h_{-1} = 0: start the first step as a reset, never log(0).
    log_h0 = jnp.zeros(log_a.shape[:1] + log_a.shape[2:], dtype)
    resets = resets.at[:, 0].set(True)
  else:
    log_h0 = jnp.log(initial_state.astype(dtype))
  resets = _common.broadcast_flags(resets, log_a)
  log_h, log_h_last = form.log_linear_scan(log_a, log_b, log_h0, resets)
  return jnp.exp(log_h).astype(out_dtype), jnp.exp(log_h_last)


__all__ = ["linear_scan", "log_linear_scan"]
