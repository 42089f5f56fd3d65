"""Fast forms: exact product-key top-k from the two halves ("product"), and the value bag
over chunks of tokens with a hand-written VJP ("chunk")."""
import functools

import jax
import jax.numpy as jnp
from einops import rearrange

from layers.ops.product_keys.reference import half_scores


def product(q, keys, topk):
  """`reference.product_key_topk` without scoring all n**2 keys (Lample et al. 2019, 3.2).

  The best `topk` product keys are among the sums of each half's `topk` best sub-keys:
  (v_c, i_c) = top_k(s_c); candidates v_0[a] + v_1[b] for a, b < topk; a second top-k over
  these topk**2 sums; index = i_0[a] * n + i_1[b]. Exact (not an approximation).
  """
  s0, s1 = half_scores(q, keys)
  n = keys.shape[2]
  v0, i0 = jax.lax.top_k(s0, topk)
  v1, i1 = jax.lax.top_k(s1, topk)
  candidates = (v0[..., :, None] + v1[..., None, :]).reshape(*v0.shape[:-1], topk * topk)
  scores, best = jax.lax.top_k(candidates, topk)
  rows = jnp.take_along_axis(i0, best // topk, axis=-1)
  cols = jnp.take_along_axis(i1, best % topk, axis=-1)
  return scores, rows * n + cols


def _chunks(x, chunk_size):
  """[B, T, H, k] -> [M / C, C, H * k] over the M = B * T tokens, zero-padded to a multiple
  of C (padding has weight 0, index 0: it adds nothing)."""
  x = rearrange(x, "b t h k -> (b t) (h k)")
  pad = -x.shape[0] % chunk_size
  x = jnp.pad(x, ((0, pad), (0, 0)))
  return rearrange(x, "(m c) hk -> m c hk", c=chunk_size)


def _forward(values, idx, w):
  """Chunked out[m] = sum_j w[m, j] values[idx[m, j]], idx, w: [M / C, C, H * k]; one chunk's
  gathered rows [C, H * k, V] live at a time."""
  def body(_, xs):
    idx, w = xs
    return None, jnp.einsum("cj,cjv->cv", w, values[idx])
  return jax.lax.scan(body, None, (idx, w))[1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _lookup(values, idx, w, chunk_size):
  return _forward(values, idx, w)


def _lookup_fwd(values, idx, w, chunk_size):
  return _forward(values, idx, w), (values, idx, w)


def _lookup_bwd(chunk_size, residuals, d_out):
  """d values = scatter-add of w[m, j] d_out[m] into row idx[m, j]; d w[m, j] =
  <d_out[m], values[idx[m, j]]>; chunk by chunk, never [M, H * k, V] at once."""
  values, idx, w = residuals

  def body(d_values, xs):
    idx, w, d_out = xs
    d_w = jnp.einsum("cv,cjv->cj", d_out, values[idx])
    d_values = d_values.at[idx].add(w[..., None] * d_out[:, None, :])
    return d_values, d_w

  d_values, d_w = jax.lax.scan(body, jnp.zeros_like(values), (idx, w, d_out))
  return d_values, None, d_w


_lookup.defvjp(_lookup_fwd, _lookup_bwd)


def chunk(values, indices, weights, chunk_size=64):
  """`reference.memory_lookup` over chunks of C = chunk_size tokens, forward and backward
  (a custom_vjp), so neither materialises [B, T, H, k, V] nor a one-hot: the temporaries are
  one chunk's gathered rows [C, H * k, V] and the output."""
  B, T = indices.shape[:2]
  out = _lookup(values, _chunks(indices, chunk_size), _chunks(weights, chunk_size), chunk_size)
  out = rearrange(out, "m c v -> (m c) v")[:B * T]
  return rearrange(out, "(b t) v -> b t v", b=B)
