"""Causal linear attention with an optional per-head log decay (RetNet, Mamba2/SSD, BASED)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from layers.ops import _chunk, _common
from layers.ops.linear_attention import reference, xla

_FORMS = {
    "reference": reference.linear_attention,
    "parallel": xla.parallel,
    "chunk": xla.chunk,
}


def linear_attention(q: jax.Array, k: jax.Array, v: jax.Array, g: jax.Array | None = None, *,
                     scale: float | None = None, initial_state: jax.Array | None = None,
                     segment_ids: jax.Array | None = None, impl: str = "auto",
                     chunk_size: int = 32) -> tuple[jax.Array, jax.Array]:
  """S_t = exp(g_t) S_{t-1} + k_t v_t^T, o_t = S_t^T (scale q_t).

  Args:
    q, k: [B, T, H, K]; v: [B, T, H, V].
    g: [B, T, H] log decay (<= 0) per head and step; None for no decay.
    scale: multiplies q only; default K**-0.5.
    initial_state: S_{-1}, [B, H, K, V] (zeros when None); it feeds the first segment of each
      row, later segments start from zero.
    segment_ids: [B, T] int; the state restarts from zero wherever the id changes.
    impl: "reference" (lax.scan over time) | "parallel" (masked quadratic, O(T^2) memory) |
      "chunk" (quadratic within chunks, state passed between them) | "auto".
    chunk_size: C for "chunk" (T is padded to a multiple of C internally); 32 is the fastest
      on CPU (benchmarks/linear_attention.py).
  Returns:
    o: [B, T, H, V] in v's dtype, and the final state [B, H, K, V] in the accumulation dtype
    (float32 or wider).
  """
  op = "linear_attention"
  out_dtype = jnp.result_type(v)
  q, k, v, gates, h0, resets, scale = _chunk.prepare(
      op, q, k, v, {"g": g}, scale, initial_state, segment_ids, chunk_size)
  # on CPU "chunk" is as fast as "parallel" at T = 128 and faster beyond (benchmarks/)
  form = _FORMS[_common.resolve_impl(op, impl, tuple(_FORMS), cpu_default="chunk")]
  if form is xla.chunk:
    form = functools.partial(form, chunk_size=chunk_size)
  o, final = form(q, k, v, gates["g"], h0, resets, scale=scale)
  return o.astype(out_dtype), final


__all__ = ["linear_attention"]
