"""XLA forms: the masked quadratic ("parallel") and the chunkwise form ("chunk")."""
from layers.ops import _chunk


def chunk(q, k, v, g, h0, resets, chunk_size):
  """Chunkwise form of `reference.linear_attention` (same arguments and results).

  Within a chunk the output is the masked quadratic form; the state entering each chunk comes
  from a `lax.scan` over chunks: S_out = carry S_in + sum_j exit_j k_j v_j^T.
  """
  length = q.shape[1]
  decay, q, k, v = _chunk.chunk_inputs(q, k, v, g, resets, chunk_size)

  def body(state, xs):
    k_n, v_n, exit_n, carry_n = xs
    return _chunk.state_update(state, k_n, v_n, exit_n, carry_n), state

  final, states = _chunk.scan_chunks(body, h0, (k, v, decay.exit, decay.carry))
  o = _chunk.chunk_output(q, k, v, decay, states)
  return _chunk.from_chunks(o, length), final


def parallel(q, k, v, g, h0, resets):
  """Masked quadratic form: o = ((Q K^T) * D) V + entry * Q S_0, one chunk spanning all of T.

  D_ij = exp(G_i - G_j) for j <= i in the same segment (masked before the exp); O(T^2) memory.
  """
  return chunk(q, k, v, g, h0, resets, chunk_size=q.shape[1])
