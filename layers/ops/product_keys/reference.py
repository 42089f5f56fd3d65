"""The oracles: every product key scored densely, and the value bag as a plain gather.

Shapes (DESIGN.md legend): q [B, T, H, 2, Kh] (two half-queries per head), keys
[H, 2, n, Kh] (two sub-key tables per head), values [N, V], indices and weights
[B, T, H, k] (k = topk).
"""
import jax
import jax.numpy as jnp


def half_scores(q, keys):
  """The sub-key scores of both halves: s_c[b, t, h, i] = q[b, t, h, c] . keys[h, c, i]
  (no 1/sqrt(d)); returns (s_0, s_1), each [B, T, H, n]."""
  s = jnp.einsum("bthck,hcnk->bthcn", q, keys)
  return s[..., 0, :], s[..., 1, :]


def product_key_topk(q, keys, topk):
  """The `topk` best of the n**2 product keys, descending: score(i, j) = s_0[i] + s_1[j]
  over all (i, j) (an [B, T, H, n**2] array), then `lax.top_k`; index = i * n + j.

  Returns (scores, indices), each [B, T, H, topk].
  """
  s0, s1 = half_scores(q, keys)
  n = keys.shape[2]
  full = (s0[..., :, None] + s1[..., None, :]).reshape(*s0.shape[:-1], n * n)
  return jax.lax.top_k(full, topk)


def memory_lookup(values, indices, weights):
  """out[b, t] = sum_h sum_k weights[b, t, h, k] values[indices[b, t, h, k]] by a plain gather
  (materialises [B, T, H, k, V]: small inputs only). Returns [B, T, V]."""
  return jnp.einsum("bthk,bthkv->btv", weights, values[indices])
