"""Sequential oracle: one `lax.scan` over time that reads like the recurrence."""
import jax
import jax.numpy as jnp
from jax import lax


def linear_attention(q, k, v, g, h0, resets, scale=1.0):
  """S_t = exp(g_t) S_{t-1} + k_t v_t^T, o_t = S_t^T (scale q_t); S_{t-1} := 0 where
  `resets[:, t]`.

  q, k: [B, T, H, K] (unscaled); v: [B, T, H, V]; g: [B, T, H]; h0: [B, H, K, V];
  resets: [B, T] bool. Returns o: [B, T, H, V] and the final state S_T.
  """
  def step(state, xs):
    q_t, k_t, v_t, g_t, r_t = xs
    state = jnp.where(r_t[:, None, None, None], 0, jnp.exp(g_t)[..., None, None] * state)
    state = state + jnp.einsum("bhk,bhv->bhkv", k_t, v_t)
    return state, jnp.einsum("bhk,bhkv->bhv", q_t, state)

  xs = jax.tree.map(lambda x: jnp.moveaxis(x, 1, 0), (q * scale, k, v, g, resets))
  final, o = lax.scan(step, h0, xs)
  return jnp.moveaxis(o, 0, 1), final
