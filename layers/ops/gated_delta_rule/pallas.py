"""The Pallas kernel form of the chunked gated delta rule (TPU and Hopper GPUs, K <= 256 there;
interpret mode on CPU).

The UT transform of each chunk does not depend on the state, so it runs in XLA for all chunks
at once (batched matmuls; the unit-lower-triangular inverse is `xla.unit_lower_inverse`:
substitution on 16-row diagonal blocks merged pairwise by matmuls, no triangular_solve and no
power series), and autodiff carries its gradient:
  T = (I + diag(beta) A)^{-1},  A_ij = within_ij (k_i . k_j) for j < i,
  W = T diag(beta entry) K,     U_0 = T diag(beta) V.
The state recurrence then is the linear-attention kernel on the pseudo-values
U = U_0 - W S_in (`linear_attention/pallas.py`, which holds the forward and backward kernels
of both platforms):
  o_i = sum_{j <= i} within_ij (scale q_i . k_j) u_j + entry_i S_in^T (scale q_i),
  S_out = carry S_in + sum_j exit_j k_j u_j^T.
"""
from __future__ import annotations

import jax.numpy as jnp

from layers.ops import _chunk
from layers.ops.gated_delta_rule.xla import unit_lower_inverse
from layers.ops.linear_attention import pallas as kernel


def ut_transform(lay, k, v, beta, g, resets):
  """(W [B, T, H, K], U_0 [B, T, H, V]) of the module docstring, per chunk of `lay`
  (`kernel.Layout`); k, v: [B, T, H, K|V], beta, g: [B, T, H]; resets: [B, T] bool."""
  flags = lay.chunks(resets[..., None].astype(g.dtype))  # [B, 1, NC, C]
  decay = _chunk.chunk_decay(lay.chunks(jnp.where(resets[..., None], 0, g)), flags > 0)
  k_c, v_c = lay.chunks(k), lay.chunks(v)
  beta = lay.chunks(beta)[..., None]
  a = jnp.tril(jnp.einsum("bhnik,bhnjk->bhnij", k_c, k_c) * decay.within, -1)
  t = unit_lower_inverse(beta * a)
  w = t @ (beta * decay.entry[..., None] * k_c)
  return lay.unchunks(w), lay.unchunks(t @ (beta * v_c))


def gated_delta_rule(q, k, v, beta, g, h0, resets, scale=1.0, chunk_size=kernel.CHUNK):
  """Kernel form of `reference.gated_delta_rule` (same arguments and results):

    S = exp(g_t) S_{t-1};  u_t = beta_t (v_t - S^T k_t);  S_t = S + k_t u_t^T;
    o_t = S_t^T (scale q_t),

  in chunks of C = chunk_size steps. q, k: [B, T, H, K]; v: [B, T, H, V]; beta, g: [B, T, H];
  h0: [B, H, K, V] real; resets: [B, T] bool. Accumulates in float32. Returns o [B, T, H, V]
  in v's dtype (float32 for wider inputs) and S_T in h0's dtype.
  """
  kernel.check_real("gated_delta_rule", q, k, v, beta, g, h0)
  q, k, v = kernel.narrow(q), kernel.narrow(k), kernel.narrow(v)
  beta, g = kernel.narrow(beta), kernel.narrow(g)

  def form(q, k, v, beta, g, h0, resets, *, interpret, gpu=False):
    lay = kernel.Layout.of(q, v, chunk_size, gpu)
    w, u = ut_transform(lay, k.astype(kernel.F32), v.astype(kernel.F32),
                        beta.astype(kernel.F32), g.astype(kernel.F32), resets)
    G, seg = lay.gates(g, resets)
    return kernel.run(lay, q, k, u, w, G, seg, h0, float(scale), interpret)
  return kernel.platform_form("gated_delta_rule", form, q, k, v, beta, g, h0, resets,
                              gpu_kernel=q.shape[-1] <= kernel.GPU_WIDE_K)
