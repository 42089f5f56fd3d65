"""XLA chunkwise form of the gated delta rule (UT transform)."""
import jax
import jax.numpy as jnp
from jax import lax

from layers.ops import _chunk, common


_SUBSTITUTION_BLOCK = 16  # diagonal blocks inverted row by row, larger ones by 2x2 merging


def _diagonal_blocks(x, size):
  """[..., n * size, n * size] -> its n diagonal blocks [..., n, size, size]."""
  n = x.shape[-1] // size
  x = x.reshape(*x.shape[:-2], n, size, n, size)
  return jnp.moveaxis(jnp.diagonal(x, axis1=-4, axis2=-2), -1, -3)


@jax.custom_vjp
def unit_lower_inverse(lower):
  """(I + lower)^{-1} for `lower` [..., C, C] strictly lower triangular.

  Diagonal blocks of 16 rows by forward substitution (x_i = e_i - sum_{j<i} lower_ij x_j, one
  row per fori_loop step), then merged pairwise:
    [[A, 0], [L, D]]^{-1} = [[A^-1, 0], [-D^-1 L A^-1, D^-1]].
  No powers of `lower` (a Neumann series loses float32 precision); jax.scipy's
  solve_triangular calls LAPACK trsm on CPU, whose batched kernels deadlocked under repeated
  jitted gradients here.
  """
  size = lower.shape[-1]
  block = min(size, _SUBSTITUTION_BLOCK)
  padded = block
  while padded < size:
    padded *= 2
  pad = [(0, 0)] * (lower.ndim - 2) + [(0, padded - size)] * 2
  lower = jnp.pad(lower, pad)  # rows beyond C are identity rows, dropped at the end

  blocks = _diagonal_blocks(lower, block)
  eye = jnp.broadcast_to(jnp.eye(block, dtype=lower.dtype), blocks.shape)

  def row(i, x):
    return x.at[..., i, :].set(
        eye[..., i, :] - jnp.einsum("...j,...jv->...v", blocks[..., i, :], x))
  inverse = lax.fori_loop(1, block, row, eye)  # [..., n, block, block]

  while block < padded:
    below = _diagonal_blocks(lower, 2 * block)[..., block:, :block]
    inverse = inverse.reshape(*inverse.shape[:-3], -1, 2, block, block)
    first, second = inverse[..., 0, :, :], inverse[..., 1, :, :]
    below = -jnp.einsum("...ij,...jk,...kl->...il", second, below, first)
    inverse = jnp.concatenate([jnp.concatenate([first, jnp.zeros_like(first)], axis=-1),
                               jnp.concatenate([below, second], axis=-1)], axis=-2)
    block *= 2
  return inverse[..., 0, :size, :size]


def _unit_lower_inverse_fwd(lower):
  inverse = unit_lower_inverse(lower)
  return inverse, inverse


def _unit_lower_inverse_bwd(inverse, d_inverse):
  """X = (I + L)^{-1}: dX = -X dL X, so dL = -X^T dX X^T on the strict lower triangle."""
  inverse_t = jnp.swapaxes(inverse, -1, -2)
  return (-jnp.tril(inverse_t @ d_inverse @ inverse_t, -1),)


unit_lower_inverse.defvjp(_unit_lower_inverse_fwd, _unit_lower_inverse_bwd)


def chunk(q, k, v, beta, g, h0, resets, scale=1.0, chunk_size=32):
  """Chunkwise form of `reference.gated_delta_rule` (same arguments and results).

  A loop over chunks (`_chunk.scan_chunks`). With S_in the state entering a chunk and
  A_ij = within_ij (k_i . k_j) for j < i, the pseudo-values u_t = beta_t (v_t - S^T k_t) of the
  chunk solve the unit lower-triangular system
    (I + diag(beta) A) U = diag(beta) (V - diag(entry) K S_in),
  U = (I + diag(beta) A)^{-1} diag(beta) (V - diag(entry) K S_in); then the chunk is linear
  attention on U:
    o_i = sum_{j <= i} within_ij (scale q_i . k_j) u_j + entry_i S_in^T (scale q_i),
    S_out = carry S_in + sum_j exit_j k_j u_j^T.
  """
  def body(state, xs):
    q, k, v, beta, g, resets = xs
    decay = _chunk.chunk_decay(g, resets)
    a = jnp.tril(jnp.einsum("bhik,bhjk->bhij", k, k) * decay.within, -1)
    rhs = v - jnp.einsum("bhck,bhkv->bhcv", k * decay.entry[..., None], state)
    u = common.masked_matmul(unit_lower_inverse(beta[..., None] * a), decay.mask,
                             beta[..., None] * rhs)
    return (_chunk.state_update(state, k, u, decay),
            _chunk.chunk_output(q * scale, k, u, decay, state))

  return _chunk.scan_chunks(body, h0, (q, k, v, beta, g, resets[..., None]), chunk_size)
