"""Causal linear attention with an optional per-head log decay (RetNet, Mamba2/SSD, BASED)."""
from __future__ import annotations

import jax

from layers.ops import _chunk, common
from layers.ops.linear_attention import pallas, reference, xla

common.register("linear_attention", {"reference": reference.linear_attention,
                                     "parallel": xla.parallel, "chunk": xla.chunk,
                                     "pallas": pallas.linear_attention})


def linear_attention(q: jax.Array, k: jax.Array, v: jax.Array, g: jax.Array | None = None, *,
                     scale: float | None = None, initial_state: jax.Array | None = None,
                     segment_ids: jax.Array | None = None, impl: str = "auto",
                     chunk_size: int = 32) -> tuple[jax.Array, jax.Array]:
  """S_t = exp(g_t) S_{t-1} + k_t v_t^T, o_t = S_t^T (scale q_t).

  Args:
    q, k: [B, T, H, K]; v: [B, T, H, V] (array-likes; integers become floats).
    g: [B, T, H] log decay (<= 0) per head and step; None for no decay.
    scale: multiplies q only; default K**-0.5.
    initial_state: S_{-1}, [B, H, K, V] (zeros when None); it feeds the first segment of each
      row, later segments start from zero. A complex state makes the computation complex.
    segment_ids: [B, T] int; the state restarts from zero wherever the id changes.
    impl: "reference" (lax.scan over time) | "parallel" (masked quadratic, O(T^2) memory) |
      "chunk" (quadratic within chunks, state passed between them) | "pallas" (the chunked
      TPU or Hopper GPU kernel, chunks of 64, real inputs only, bfloat16 matmul operands on
      GPU; interpret mode on CPU) | "auto"
      (common.AUTO_FORMS; the kernel where `_pallas.VERIFIED` lists the device).
    chunk_size: C for "chunk" (T is padded to a multiple of C internally); 32 is the fastest
      on CPU (benchmarks/linear_attention.py).
  Non-finite inputs: padding (segment id 0) is zeroed before any product, so garbage there
  never reaches real tokens; a non-finite input at step s never reaches outputs before s, in
  every form (scores are masked with `where` before they meet values, and the products with
  values and the gate cumsums are masked, `common.masked_matmul`).

  Returns:
    o: [B, T, H, V] in v's dtype, and the final state [B, H, K, V] in the accumulation dtype
    (float32 or wider); at T = 0, an empty o and the initial state.
  """
  op = "linear_attention"
  form = common.dispatch(op, impl, chunk_size=chunk_size)
  q, k, v, gates, h0, resets, scale, out_dtype = _chunk.prepare(
      op, q, k, v, {"g": g}, scale, initial_state, segment_ids,
      keep_narrow=common.resolve_impl(op, impl) == "pallas")
  if q.shape[1] == 0:
    return v.astype(out_dtype), h0
  o, final = form(q, k, v, gates["g"], h0, resets, scale=scale)
  return o.astype(out_dtype), final


__all__ = ["linear_attention"]
