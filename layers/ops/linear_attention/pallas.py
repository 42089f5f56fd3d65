"""The Pallas kernel of chunked `linear_attention` (TPU; interpret mode on CPU), shared with
the gated delta rule (`gated_delta_rule/pallas.py`), whose chunks it runs on pseudo-values.

Layout: heads fold into the batch, [BH, Tp, Kp] (T padded to whole chunks of C steps, K and V
to lane multiples where the full width would not be a legal block: `_lane_width`). The grid is
(BH "parallel", NC "arbitrary"): each program owns one head and walks its chunks in order,
carrying the state S [Kp, Vp] in float32 VMEM scratch. Per-step gates reach the kernel as the
chunk-local cumulative log decay G (cumsum outside: TPU cannot lower one) and the segment index
within the chunk (0 = continues from the previous chunk), each as a row [1, C] and a column
[C, 1] block. With S_in the state entering the chunk and within_ij = exp(G_i - G_j) for j <= i
in one segment (masked before the exp):

  U = V - W S_in                              (delta rule; linear attention: U = V)
  o_i = sum_j within_ij (scale q_i . k_j) u_j + entry_i S_in^T (scale q_i),
  S_out = carry S_in + sum_j exit_j k_j u_j^T,

entry_i = exp(G_i) on the chunk's first segment, exit_j = exp(G_last - G_j) on its last one,
carry = exp(G_last) when no segment starts inside the chunk.

Backward (`jax.custom_vjp`): the forward saves the chunk-entry states [BH, NC, Kp, Vp]; the
backward kernel walks the chunks in reverse carrying dS (the cotangent of S_out) and recomputes
each chunk from its entry state (P = (scale Q K^T) * within):
  dU = P^T dO + diag(exit) K dS,      dP = (dO U^T) * within,
  dQ = scale (dP K + diag(entry) dO S_in^T),   dK = dP^T (scale Q) + diag(exit) U dS^T,
  dW = -dU S_in^T,    dS_in = carry dS + (scale Q diag(entry))^T dO - W^T dU.
The decay gradient is PALLAS.md rule 21 applied to each chunk, whose output depends on G only
through exp(G_i) on q_i, exp(-G_j) on k_j and exp(G_last) on S_out:
  dG_i = q_i . dq_i - k_i . dk_i + [i = C - 1] <dS, S_out>
(the last term is the final-state term of rule 21 for the last chunk); autodiff of the local
cumsum outside turns dG into dg.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from einops import rearrange
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from layers.ops import _pallas

F32 = jnp.float32
CHUNK = 64  # C: steps per chunk (a multiple of the dtype's sublanes)


def _lane_width(n: int) -> int:
  """A key/value width as the kernel blocks it: a multiple of 128 lanes, or n itself when it
  is a multiple of 8 below 128 (a full-dimension block; K = V = 64 stays unpadded)."""
  if n % _pallas.LANES == 0 or (n < _pallas.LANES and n % 8 == 0):
    return n
  return _pallas.round_up(n, _pallas.LANES)


# Matmuls in float32 with float32 accumulation; `_nt` contracts the last axes of both
# (A B^T), `_tn` the first axes (A^T B).
def _dot(a, b, dims):
  return lax.dot_general(a, b, (dims, ((), ())), precision=lax.Precision.HIGHEST,
                         preferred_element_type=F32)


def _nn(a, b):
  return _dot(a, b, ((1,), (0,)))


def _nt(a, b):
  return _dot(a, b, ((1,), (1,)))


def _tn(a, b):
  return _nn(a.T, b)


def _masked_exp(mask, x):
  return jnp.exp(jnp.where(mask, x, -jnp.inf))


class _Decay(NamedTuple):
  """One chunk's decays (see the module docstring): within [C, C], entry and exit [C, 1],
  carry [1, 1]; every exp sees a masked exponent."""
  within: jax.Array
  entry: jax.Array
  exit: jax.Array
  carry: jax.Array


def _decay(G_row, G_col, seg_row, seg_col) -> _Decay:
  """Decays from the chunk-local cumulative gate G and segment index, as rows [1, C] and
  columns [C, 1]."""
  size = G_col.shape[0]
  i = lax.broadcasted_iota(jnp.int32, (size, size), 0)
  j = lax.broadcasted_iota(jnp.int32, (size, size), 1)
  last_lane = lax.broadcasted_iota(jnp.int32, (1, size), 1) == size - 1
  G_last = jnp.sum(jnp.where(last_lane, G_row, 0), axis=1, keepdims=True)  # [1, 1]
  seg_last = jnp.sum(jnp.where(last_lane, seg_row, 0), axis=1, keepdims=True)
  return _Decay(
      within=_masked_exp((i >= j) & (seg_col == seg_row), G_col - G_row),
      entry=_masked_exp(seg_col == 0, G_col),
      exit=_masked_exp(seg_col == seg_last, G_last - G_col),
      carry=_masked_exp(seg_last == 0, G_last))


def _forward_kernel(scale: float, delta: bool):
  def kernel(*refs):
    q_ref, k_ref, v_ref, *refs = refs
    w_ref = refs.pop(0) if delta else None
    (G_row, G_col, seg_row, seg_col, h0_ref, o_ref, final_ref, entry_ref, state) = refs
    n = pl.program_id(1)

    @pl.when(n == 0)
    def _():
      state[...] = h0_ref[...]

    S = state[...]
    entry_ref[...] = S
    q = q_ref[...].astype(F32) * scale
    k = k_ref[...].astype(F32)
    u = v_ref[...].astype(F32)
    if delta:
      u = u - _nn(w_ref[...].astype(F32), S)
    dec = _decay(G_row[...], G_col[...], seg_row[...], seg_col[...])
    scores = _nt(q, k) * dec.within
    o_ref[...] = (_nn(scores, u) + _nn(q * dec.entry, S)).astype(o_ref.dtype)
    S = dec.carry * S + _tn(k * dec.exit, u)
    state[...] = S

    @pl.when(n == pl.num_programs(1) - 1)
    def _():
      final_ref[...] = S
  return kernel


def _backward_kernel(scale: float, delta: bool):
  def kernel(*refs):
    q_ref, k_ref, v_ref, *refs = refs
    w_ref = refs.pop(0) if delta else None
    G_row, G_col, seg_row, seg_col, entry_ref, do_ref, dfinal_ref, *refs = refs
    dq_ref, dk_ref, dv_ref, *refs = refs
    dw_ref = refs.pop(0) if delta else None
    dG_ref, dh0_ref, d_state = refs
    n = pl.program_id(1)

    @pl.when(n == 0)
    def _():
      d_state[...] = dfinal_ref[...]

    dS, S = d_state[...], entry_ref[...]
    q = q_ref[...].astype(F32) * scale
    k = k_ref[...].astype(F32)
    u = v_ref[...].astype(F32)
    if delta:
      w = w_ref[...].astype(F32)
      u = u - _nn(w, S)
    do = do_ref[...].astype(F32)
    dec = _decay(G_row[...], G_col[...], seg_row[...], seg_col[...])
    k_exit = k * dec.exit
    S_out = dec.carry * S + _tn(k_exit, u)
    du = _tn(_nt(q, k) * dec.within, do) + _nn(k_exit, dS)
    dP = _nt(do, u) * dec.within
    dq = _nn(dP, k) + dec.entry * _nt(do, S)  # gradient of the scaled q
    dk = _tn(dP, q) + dec.exit * _nt(u, dS)
    dS_in = dec.carry * dS + _tn(q * dec.entry, do)
    if delta:
      dS_in = dS_in - _tn(w, du)
      dw_ref[...] = (-_nt(du, S)).astype(dw_ref.dtype)
    row = lax.broadcasted_iota(jnp.int32, dG_ref.shape, 0)
    final_term = jnp.sum(jnp.sum(dS * S_out, axis=1, keepdims=True), axis=0, keepdims=True)
    dG_ref[...] = (jnp.sum(q * dq - k * dk, axis=1, keepdims=True)
                   + jnp.where(row == dG_ref.shape[0] - 1, final_term, 0))
    dq_ref[...] = (scale * dq).astype(dq_ref.dtype)
    dk_ref[...] = dk.astype(dk_ref.dtype)
    dv_ref[...] = du.astype(dv_ref.dtype)
    d_state[...] = dS_in

    @pl.when(n == pl.num_programs(1) - 1)
    def _():
      dh0_ref[...] = dS_in
  return kernel


class _Specs:
  """BlockSpecs over the grid (head h, step n); `chunk(n)` is the chunk that step n visits."""

  def __init__(self, num, size, K, V, reverse):
    self.size, self.K, self.V = size, K, V
    self.chunk = (lambda n: num - 1 - n) if reverse else (lambda n: n)

  def seq(self, width):
    return pl.BlockSpec((None, self.size, width), lambda h, n: (h, self.chunk(n), 0))

  def row(self):
    return pl.BlockSpec((None, None, 1, self.size), lambda h, n: (h, self.chunk(n), 0, 0))

  def col(self):
    return pl.BlockSpec((None, None, self.size, 1), lambda h, n: (h, self.chunk(n), 0, 0))

  def state(self):
    return pl.BlockSpec((None, self.K, self.V), lambda h, n: (h, 0, 0))

  def entry(self):
    return pl.BlockSpec((None, None, self.K, self.V), lambda h, n: (h, self.chunk(n), 0, 0))


def _gate_views(G, seg):
  """[BH, NC, C] -> rows [BH, NC, 1, C] and columns [BH, NC, C, 1] of G and seg."""
  return G[:, :, None, :], G[..., None], seg[:, :, None, :], seg[..., None]


def _forward_call(q, k, v, w, G, seg, h0, *, scale, interpret):
  """q, k, w: [BH, Tp, Kp]; v: [BH, Tp, Vp]; G, seg: [BH, NC, C] float32; h0: [BH, Kp, Vp]
  float32. Returns o [BH, Tp, Vp] (v's dtype), the final state and the chunk-entry states
  [BH, NC, Kp, Vp] (float32)."""
  (heads, length, K), V = q.shape, v.shape[-1]
  num, size = G.shape[1:]
  sp, delta = _Specs(num, size, K, V, reverse=False), w is not None
  in_specs = ([sp.seq(K), sp.seq(K), sp.seq(V)] + [sp.seq(K)] * delta
              + [sp.row(), sp.col(), sp.row(), sp.col(), sp.state()])
  f32 = lambda *s: jax.ShapeDtypeStruct(s, F32)
  return pl.pallas_call(
      _forward_kernel(scale, delta), grid=(heads, num), in_specs=in_specs,
      out_specs=[sp.seq(V), sp.state(), sp.entry()],
      out_shape=[jax.ShapeDtypeStruct((heads, length, V), v.dtype), f32(heads, K, V),
                 f32(heads, num, K, V)],
      scratch_shapes=[pltpu.VMEM((K, V), F32)],
      compiler_params=_pallas.tpu_params("parallel", "arbitrary"), interpret=interpret,
  )(q, k, v, *([w] if delta else []), *_gate_views(G, seg), h0)


def _backward_call(q, k, v, w, G, seg, entries, do, dfinal, *, scale, interpret):
  """Gradients (dq, dk, dv, dw or None, dG [BH, NC, C], dh0) of `_forward_call`'s o and final
  state, from the chunk-entry states and the cotangents do, dfinal."""
  (heads, _, K), V = q.shape, v.shape[-1]
  num, size = G.shape[1:]
  sp, delta = _Specs(num, size, K, V, reverse=True), w is not None
  in_specs = ([sp.seq(K), sp.seq(K), sp.seq(V)] + [sp.seq(K)] * delta
              + [sp.row(), sp.col(), sp.row(), sp.col(), sp.entry(), sp.seq(V), sp.state()])
  out_specs = [sp.seq(K), sp.seq(K), sp.seq(V)] + [sp.seq(K)] * delta + [sp.col(), sp.state()]
  like = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)
  f32 = lambda *s: jax.ShapeDtypeStruct(s, F32)
  out_shape = ([like(q), like(k), like(v)] + ([like(w)] if delta else [])
               + [f32(heads, num, size, 1), f32(heads, K, V)])
  outs = pl.pallas_call(
      _backward_kernel(scale, delta), grid=(heads, num), in_specs=in_specs,
      out_specs=out_specs, out_shape=out_shape,
      scratch_shapes=[pltpu.VMEM((K, V), F32)],
      compiler_params=_pallas.tpu_params("parallel", "arbitrary"), interpret=interpret,
  )(q, k, v, *([w] if delta else []), *_gate_views(G, seg), entries, do, dfinal)
  dq, dk, dv, *outs = outs
  dw = outs.pop(0) if delta else None
  dG, dh0 = outs
  return dq, dk, dv, dw, dG[..., 0], dh0


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def chunked(q, k, v, w, G, seg, h0, scale, op):
  """The chunk recurrence of the module docstring in kernel layout (`_forward_call`) for the
  op named `op`: returns o [BH, Tp, Vp] and the final state [BH, Kp, Vp]; `w` None for linear
  attention."""
  return chunked_fwd(q, k, v, w, G, seg, h0, scale, op)[0]


def chunked_fwd(q, k, v, w, G, seg, h0, scale, op):
  o, final, entries = _pallas.on_platform(
      op, q, k, v, w, G, seg, h0,
      tpu=functools.partial(_forward_call, scale=scale))
  return (o, final), (q, k, v, w, G, seg, entries)


def chunked_bwd(scale, op, residuals, cotangents):
  q, k, v, w, G, seg, entries = residuals
  do, dfinal = cotangents
  dq, dk, dv, dw, dG, dh0 = _pallas.on_platform(
      op, q, k, v, w, G, seg, entries, do.astype(v.dtype),
      dfinal.astype(F32), tpu=functools.partial(_backward_call, scale=scale))
  return dq, dk, dv, dw, dG, None, dh0


chunked.defvjp(chunked_fwd, chunked_bwd)


class Layout(NamedTuple):
  """How one call maps onto the kernel: T -> Tp = NC * C steps, K -> Kp, V -> Vp."""
  batch: int
  length: int
  heads: int
  K: int
  V: int
  size: int  # C
  num: int   # NC

  @classmethod
  def of(cls, q, v, chunk_size):
    batch, length, heads, K = q.shape
    rows = _pallas.sublanes(q.dtype)
    size = min(_pallas.round_up(chunk_size, rows), _pallas.round_up(length, rows))
    return cls(batch, length, heads, K, v.shape[-1], size, -(-length // size))

  def seq(self, x):
    """[B, T, H, D] -> [BH, Tp, Dp] (zero padding; D lane-padded by `_lane_width`)."""
    x = _pallas.pad_axis(_pallas.pad_axis(x, 1, self.num * self.size), 3,
                         _lane_width(x.shape[3]))
    return rearrange(x, "b t h d -> (b h) t d")

  def unseq(self, x, width):
    return rearrange(x, "(b h) t d -> b t h d", b=self.batch)[:, :self.length, :, :width]

  def state(self, h):
    """[B, H, K, V] -> [BH, Kp, Vp] float32."""
    h = _pallas.pad_axis(_pallas.pad_axis(h.astype(F32), 2, _lane_width(self.K)), 3,
                         _lane_width(self.V))
    return rearrange(h, "b h k v -> (b h) k v")

  def unstate(self, h):
    return rearrange(h, "(b h) k v -> b h k v", b=self.batch)[:, :, :self.K, :self.V]

  def chunks(self, x):
    """[B, T, H, ...] -> [B, H, NC, C, ...] (zero padding)."""
    x = _pallas.pad_axis(x, 1, self.num * self.size)
    return rearrange(x, "b (n c) h ... -> b h n c ...", c=self.size)

  def unchunks(self, x):
    return rearrange(x, "b h n c ... -> b (n c) h ...")[:, :self.length]

  def gates(self, g, resets):
    """(G, seg) [BH, NC, C] float32: the chunk-local cumulative log decay (g at segment starts
    is zeroed first: it never reaches the output, and so gets an exact zero gradient) and the
    segment index within each chunk."""
    g = jnp.where(resets[..., None], 0, g.astype(F32))
    G = jnp.cumsum(self.chunks(g), axis=-1)
    seg = jnp.cumsum(self.chunks(resets[..., None].astype(F32)), axis=-1)
    seg = jnp.broadcast_to(seg, G.shape)
    return (rearrange(G, "b h n c -> (b h) n c"), rearrange(seg, "b h n c -> (b h) n c"))


def check_real(op, *xs):
  """Raises a ValueError naming `op` if any of `xs` is complex (Mosaic has no complex type)."""
  if any(jnp.iscomplexobj(x) for x in xs):
    raise ValueError(f"{op}: impl='pallas' takes real inputs and a real initial_state; use "
                     "impl='reference' or 'chunk' for complex ones")


def narrow(x):
  """Kernels compute in float32: wider inputs (float64 under jax_enable_x64) are narrowed."""
  return x if x.dtype.itemsize <= 4 else x.astype(F32)


def linear_attention(q, k, v, g, h0, resets, scale=1.0, chunk_size=CHUNK):
  """Kernel form of `reference.linear_attention` (same arguments and results):

    S_t = exp(g_t) S_{t-1} + k_t v_t^T,   o_t = S_t^T (scale q_t),

  in chunks of C = chunk_size steps (see the module docstring). q, k: [B, T, H, K];
  v: [B, T, H, V]; g: [B, T, H]; h0: [B, H, K, V] real; resets: [B, T] bool. Accumulates in
  float32. Returns o [B, T, H, V] in v's dtype (float32 for wider inputs) and S_T in h0's dtype.
  """
  check_real("linear_attention", q, k, v, g, h0)
  q, k, v = narrow(q), narrow(k), narrow(v)
  lay = Layout.of(q, v, chunk_size)
  G, seg = lay.gates(g, resets)
  o, final = chunked(lay.seq(q), lay.seq(k), lay.seq(v), None, G, seg, lay.state(h0),
                     float(scale), "linear_attention")
  return lay.unseq(o, lay.V), lay.unstate(final).astype(h0.dtype)
