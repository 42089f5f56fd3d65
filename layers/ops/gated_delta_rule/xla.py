"""XLA chunkwise form of the gated delta rule (UT transform)."""
import jax.numpy as jnp
from jax import lax

from layers.ops import _chunk


def unit_lower_solve(lower, rhs):
  """U with (I + lower) U = rhs, `lower` [..., C, C] strictly lower triangular, by forward
  substitution (u_i = r_i - sum_{j<i} lower_ij u_j, one row per fori_loop step).

  jax.scipy's solve_triangular calls LAPACK trsm on CPU, whose batched kernels deadlocked
  under repeated jitted gradients here; this form is plain XLA (and what Pallas needs too).
  """
  def row(i, u):
    u_i = rhs[..., i, :] - jnp.einsum("...j,...jv->...v", lower[..., i, :], u)
    return u.at[..., i, :].set(u_i)
  return lax.fori_loop(0, rhs.shape[-2], row, jnp.zeros_like(rhs))


def chunk(q, k, v, beta, g, h0, resets, chunk_size):
  """Chunkwise form of `reference.gated_delta_rule` (same arguments and results).

  A `lax.scan` over chunks. With S_in the state entering a chunk and A_ij = within_ij (k_i . k_j)
  for j < i, the pseudo-values u_t = beta_t (v_t - S^T k_t) of the chunk solve the unit
  lower-triangular system
    (I + diag(beta) A) U = diag(beta) (V - diag(entry) K S_in);
  then the chunk is linear attention on U:
    o_i = sum_{j <= i} within_ij (q_i . k_j) u_j + entry_i S_in^T q_i,
    S_out = carry S_in + sum_j exit_j k_j u_j^T.
  """
  def body(state, xs):
    q, k, v, beta, g, resets = xs
    decay = _chunk.chunk_decay(g, resets)
    a = jnp.tril(jnp.einsum("bhik,bhjk->bhij", k, k) * decay.within, -1)
    rhs = v - jnp.einsum("bhck,bhkv->bhcv", k * decay.entry[..., None], state)
    u = unit_lower_solve(beta[..., None] * a, beta[..., None] * rhs)
    return (_chunk.state_update(state, k, u, decay),
            _chunk.chunk_output(q, k, u, decay, state))

  return _chunk.scan_chunks(body, h0, (q, k, v, beta, g, resets[..., None]), chunk_size)
