"""Sequential oracle: one `lax.scan` over time that reads like the S6 recurrence."""
import jax
import jax.numpy as jnp
from jax import lax


def selective_scan(u, dt, A, B, C, h0, resets):
  """h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t, y_t = C_t . h_t; h_{t-1} := 0 where `resets`.

  Channels are split into the G groups of B and C (Dm = G * Dc):
  u, dt: [B, T, G, Dc] (dt after bias and softplus); A: [G, Dc, N]; B, C: [B, T, G, N];
  h0: [B, G, Dc, N]; resets: [B, T] bool. Returns y: [B, T, G, Dc] and the final state h_T.
  """
  def step(h, xs):
    u_t, dt_t, B_t, C_t, r_t = xs
    decay = jnp.exp(jnp.einsum("bgc,gcn->bgcn", dt_t, A))
    h = jnp.where(r_t[:, None, None, None], 0, decay * h)
    h = h + jnp.einsum("bgc,bgn->bgcn", dt_t * u_t, B_t)
    return h, jnp.einsum("bgcn,bgn->bgc", h, C_t)

  xs = jax.tree.map(lambda x: jnp.moveaxis(x, 1, 0), (u, dt, B, C, resets))
  final, y = lax.scan(step, h0, xs)
  return jnp.moveaxis(y, 0, 1), final
