"""The selective scan of Mamba (S6): a diagonal SSM whose dt, B and C depend on the input."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from einops import rearrange

from layers.ops import common
from layers.ops.selective_scan import pallas, reference, xla

common.register("selective_scan", {"reference": reference.selective_scan, "chunk": xla.chunk,
                                   "checkpointed": xla.checkpointed,
                                   "pallas": pallas.selective_scan})


def _check_inputs(op, u, delta, A, B, C, D, z, delta_bias, initial_state):
  """Raises a ValueError naming the first badly shaped input; returns (B, T, Dm, G, N)."""
  common.check_rank(op, "u", u, 3, "[B, T, Dm]")
  batch, length, width = jnp.shape(u)
  for name, x in (("delta", delta), ("z", z)):
    if x is not None:
      common.check_shape(op, name, x, (batch, length, width), "[B, T, Dm] like u")
  common.check_rank(op, "A", A, 2, "[Dm, N]")
  state = jnp.shape(A)[1]
  common.check_shape(op, "A", A, (width, state), "[Dm, N]")
  if jnp.ndim(B) not in (3, 4):
    raise ValueError(f"{op}: B must have shape [B, T, N] or [B, T, G, N]; "
                     f"got shape {tuple(jnp.shape(B))}")
  groups = 1 if jnp.ndim(B) == 3 else jnp.shape(B)[2]
  if groups < 1 or width % groups:
    raise ValueError(f"{op}: the number of groups G={groups} of B and C must divide "
                     f"Dm={width}")
  layout = "[B, T, N]" if jnp.ndim(B) == 3 else "[B, T, G, N]"
  grouped = (batch, length) + ((groups,) if jnp.ndim(B) == 4 else ()) + (state,)
  common.check_shape(op, "B", B, grouped, layout)
  common.check_shape(op, "C", C, grouped, f"{layout} like B")
  for name, x in (("D", D), ("delta_bias", delta_bias)):
    if x is not None:
      common.check_shape(op, name, x, (width,), "[Dm]")
  if initial_state is not None:
    common.check_shape(op, "initial_state", initial_state, (batch, width, state),
                        "[B, Dm, N]")
  return batch, length, width, groups, state


def selective_scan(u: jax.Array, delta: jax.Array, A: jax.Array, B: jax.Array, C: jax.Array,
                   D: jax.Array | None = None, z: jax.Array | None = None,
                   delta_bias: jax.Array | None = None, delta_softplus: bool = False,
                   initial_state: jax.Array | None = None,
                   segment_ids: jax.Array | None = None, *, impl: str = "auto",
                   chunk_size: int = 64) -> tuple[jax.Array, jax.Array]:
  """Mamba's S6 (ZOH for A, Euler for B), per channel d and state index n:

    dt_t = softplus?(delta_t + delta_bias),
    h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t,   y_t = (C_t . h_t + D u_t) * silu(z_t).

  Args:
    u, delta: [B, T, Dm]; A: [Dm, N] (real, negative).
    B, C: [B, T, N], or grouped [B, T, G, N] where channel d uses group d // (Dm / G).
    D: [Dm] skip (none when None); z: [B, T, Dm] gate (none when None).
    delta_bias: [Dm] added to delta; delta_softplus: apply softplus to delta + delta_bias.
    initial_state: h_{-1}, [B, Dm, N] (zeros when None); it feeds the first segment of each
      row, later segments start from zero.
    segment_ids: [B, T] int; the state restarts from zero wherever the id changes.
    impl: "reference" (lax.scan over time) | "chunk" (associative scan within chunks of
      `chunk_size`, state carried across them, chunks rematerialised) | "checkpointed" (the
      sequential scan within chunks, rematerialised) | "pallas" (the fused TPU kernel, or the
      Mosaic GPU kernel on a Hopper GPU (N <= 16), D and z inside; interpret mode on CPU; real
      inputs) | "auto" (common.AUTO_FORMS: checkpointed on
      CPU, chunk on GPU/TPU, the kernel where `_pallas.VERIFIED` lists the device).
  Non-finite inputs: padding (segment id 0) is zeroed first (u, dt, B, C, z), so garbage
  there never reaches real tokens; a non-finite input at step s never reaches earlier chunks
  of the chunk form, but may spread inside its own chunk through 0 * NaN.

  Returns:
    y: [B, T, Dm] in u's dtype (complex if the initial state is), and the final state h_T
    [B, Dm, N] in the accumulation dtype (float32 or wider); at T = 0, an empty y and the
    initial state.
  """
  op = "selective_scan"
  u, delta, A, B, C, D, z, delta_bias, initial_state = common.as_float(
      u, delta, A, B, C, D, z, delta_bias, initial_state)
  batch, length, width, groups, state = _check_inputs(
      op, u, delta, A, B, C, D, z, delta_bias, initial_state)
  segment_ids = common.as_segment_ids(op, segment_ids, batch, length)
  form = common.dispatch(op, impl, chunk_size=chunk_size)
  dtype = common.accumulation_dtype(u, delta, A, B, C, D, z, delta_bias)
  state_dtype = common.accumulation_dtype(dtype, initial_state)  # complex with a complex state
  out_dtype = common.output_dtype(u, initial_state)
  fused = common.resolve_impl(op, impl) == "pallas"  # the kernel applies D and z itself
  # ... and reads bfloat16 u, B, C, z as they are (half the traffic), accumulating in float32
  narrow = fused and state_dtype == jnp.float32
  delta, A = delta.astype(dtype), A.astype(dtype)
  B, C = (x if narrow else x.astype(dtype) for x in (B, C))
  u, B, C, z = common.zero_padding(segment_ids, u, B, C, z)
  u = u if narrow else u.astype(state_dtype)
  h0 = jnp.zeros((batch, width, state), state_dtype) if initial_state is None else (
      initial_state.astype(state_dtype))
  if length == 0:
    return u.astype(out_dtype), h0
  dt = delta if delta_bias is None else delta + delta_bias.astype(dtype)[None, None]
  if delta_softplus:
    dt = jax.nn.softplus(dt)
  dt = common.zero_padding(segment_ids, dt)[0]  # padding leaves the state unchanged
  if jnp.ndim(B) == 3:
    B, C = B[:, :, None], C[:, :, None]
  split = functools.partial(rearrange, pattern="... (g c) -> ... g c", g=groups)
  if fused:
    form = functools.partial(form, D=None if D is None else split(D.astype(dtype)),
                             z=None if z is None else split(z))
  y, final = form(split(u), split(dt), rearrange(A, "(g c) n -> g c n", g=groups), B, C,
                  rearrange(h0, "b (g c) n -> b g c n", g=groups),
                  common.segment_starts(segment_ids, batch, length))
  y = rearrange(y, "b t g c -> b t (g c)")
  if D is not None and not fused:
    y = y + jnp.einsum("btd,d->btd", u, D.astype(dtype))
  if z is not None and not fused:
    y = y * jax.nn.silu(z.astype(dtype))
  return y.astype(out_dtype), rearrange(final, "b g c n -> b (g c) n")
