"""XLA forms: the masked quadratic ("parallel") and the chunkwise form ("chunk")."""
from layers.ops import _chunk


def chunk(q, k, v, g, h0, resets, scale=1.0, chunk_size=32):
  """Chunkwise form of `reference.linear_attention` (same arguments and results).

  A loop over chunks (`_chunk.scan_chunks`); with S_in the state entering a chunk:
    o_i = sum_{j <= i} within_ij (scale q_i . k_j) v_j + entry_i S_in^T (scale q_i),
    S_out = carry S_in + sum_j exit_j k_j v_j^T.
  """
  def body(state, xs):
    q, k, v, g, resets = xs
    decay = _chunk.chunk_decay(g, resets)
    return (_chunk.state_update(state, k, v, decay),
            _chunk.chunk_output(q * scale, k, v, decay, state))

  return _chunk.scan_chunks(body, h0, (q, k, v, g, resets[..., None]), chunk_size)


def parallel(q, k, v, g, h0, resets, scale=1.0):
  """Masked quadratic form: o = ((Q K^T) * D) V + entry * Q S_0, one chunk spanning all of T.

  D_ij = exp(G_i - G_j) for j <= i in the same segment (masked before the exp); O(T^2) memory.
  """
  return chunk(q, k, v, g, h0, resets, scale, chunk_size=q.shape[1])
