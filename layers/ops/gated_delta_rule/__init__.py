"""Gated delta rule (Gated DeltaNet; g=None is DeltaNet): a delta-rule update of a matrix state."""
from __future__ import annotations

import jax

from layers.ops import _chunk, common
from layers.ops.gated_delta_rule import pallas, reference, xla

common.register("gated_delta_rule", {"reference": reference.gated_delta_rule,
                                     "chunk": xla.chunk, "pallas": pallas.gated_delta_rule})


def gated_delta_rule(q: jax.Array, k: jax.Array, v: jax.Array, beta: jax.Array,
                     g: jax.Array | None = None, *, scale: float | None = None,
                     initial_state: jax.Array | None = None,
                     segment_ids: jax.Array | None = None, impl: str = "auto",
                     chunk_size: int = 32) -> tuple[jax.Array, jax.Array]:
  """Gated delta rule ("Gated Delta Networks", Yang et al. 2024):

    S = exp(g_t) S_{t-1};  u_t = beta_t (v_t - S^T k_t);  S_t = S + k_t u_t^T;
    o_t = S_t^T (scale q_t).

  The op applies no sigmoid or L2 norm: callers pass beta in (0, 1) and L2-normalised q, k.

  Args:
    q, k: [B, T, H, K]; v: [B, T, H, V]; beta: [B, T, H] write strength (array-likes;
      integers become floats).
    g: [B, T, H] log decay (<= 0) per head and step; None for DeltaNet (no decay).
    scale: multiplies q only; default K**-0.5.
    initial_state: S_{-1}, [B, H, K, V] (zeros when None); it feeds the first segment of each
      row, later segments start from zero. A complex state makes the computation complex.
    segment_ids: [B, T] int; the state restarts from zero wherever the id changes.
    impl: "reference" (lax.scan over time) | "chunk" (WY/UT transform within chunks, state
      passed between them) | "pallas" (the UT transform in XLA, the state recurrence in the
      chunked TPU or Hopper GPU kernel, chunks of 64, real inputs only, K <= 256 on GPU,
      bfloat16 matmul operands there; interpret mode on CPU) | "auto"
      (common.AUTO_FORMS; the kernel where `_pallas.VERIFIED` lists the device).
    chunk_size: C for "chunk" (T is padded to a multiple of C internally); 32 is the fastest
      on CPU (benchmarks/linear_attention.py).
  Non-finite inputs: padding (segment id 0) is zeroed before any product, so garbage there
  never reaches real tokens; a non-finite input at step s never reaches outputs of earlier
  chunks. Inside its own chunk it can still spread to earlier steps through 0 * NaN (in the
  blockwise UT inverse); the reference form keeps it to steps >= s.

  Returns:
    o: [B, T, H, V] in v's dtype, and the final state [B, H, K, V] in the accumulation dtype
    (float32 or wider); at T = 0, an empty o and the initial state.
  """
  op = "gated_delta_rule"
  form = common.dispatch(op, impl, chunk_size=chunk_size)
  q, k, v, gates, h0, resets, scale, out_dtype = _chunk.prepare(
      op, q, k, v, {"beta": beta, "g": g}, scale, initial_state, segment_ids,
      keep_narrow=common.resolve_impl(op, impl) == "pallas")
  if q.shape[1] == 0:
    return v.astype(out_dtype), h0
  o, final = form(q, k, v, gates["beta"], gates["g"], h0, resets, scale=scale)
  return o.astype(out_dtype), final


__all__ = ["gated_delta_rule"]
