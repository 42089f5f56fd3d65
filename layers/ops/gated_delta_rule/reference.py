"""Sequential oracle: one `lax.scan` over time that reads like the recurrence."""
import jax
import jax.numpy as jnp
from jax import lax


def gated_delta_rule(q, k, v, beta, g, h0, resets, scale=1.0):
  """Gated delta rule, with S_{t-1} := 0 where `resets[:, t]`:

    S = exp(g_t) S_{t-1};  u_t = beta_t (v_t - S^T k_t);  S_t = S + k_t u_t^T;
    o_t = S_t^T (scale q_t).

  q, k: [B, T, H, K] (unscaled); v: [B, T, H, V]; beta, g: [B, T, H];
  h0: [B, H, K, V]; resets: [B, T] bool. Returns o: [B, T, H, V] and the final state S_T.
  """
  def step(state, xs):
    q_t, k_t, v_t, beta_t, g_t, r_t = xs
    state = jnp.where(r_t[:, None, None, None], 0, jnp.exp(g_t)[..., None, None] * state)
    u_t = beta_t[..., None] * (v_t - jnp.einsum("bhk,bhkv->bhv", k_t, state))
    state = state + jnp.einsum("bhk,bhv->bhkv", k_t, u_t)
    return state, jnp.einsum("bhk,bhkv->bhv", q_t, state)

  xs = jax.tree.map(lambda x: jnp.moveaxis(x, 1, 0), (q * scale, k, v, beta, g, resets))
  final, o = lax.scan(step, h0, xs)
  return jnp.moveaxis(o, 0, 1), final
