"""The Pallas kernels of chunked `linear_attention` (TPU and Hopper GPUs; interpret mode on
CPU), shared with the gated delta rule (`gated_delta_rule/pallas.py`), whose chunks they run on
pseudo-values.

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

GPU (Mosaic GPU, `plgpu.kernel`, Hopper; PALLAS.md rules 14-17): chunks of C = GPU_CHUNK = 64
(the wgmma row block), K and V padded to multiples of 64. One program (a warpgroup) per head and
GPU_BLOCK_V = 64 value columns: V is split across programs, so each holds the float32 state
block S [Kp, 64] in registers (the WGMMA layout) and mirrors it to SMEM as bfloat16 for the
matmuls; every matmul is a `plgpu.wgmma` of bfloat16 SMEM operands (q scaled and rounded
outside, k, v, w; P and the pseudo-values written back as bfloat16) into a float32
accumulator. Chunks are copied GMEM -> SMEM by TMA. The forward saves the bfloat16 entry
states [BH, NC + 1, Kp, Vp] (the last: the final state). The backward runs the same equations
per value block: dv, dh0 are its own, dq, dk, dw come out as float32 partial sums over the
value blocks (summed in XLA), and the final-state term <dS, S_out> of each chunk as row sums
(S_out: the entry state it read for the chunk after); dG is then assembled in XLA from dq, dk
and those rows. SMEM (232448 bytes) bounds the keys: linear attention with Kp > GPU_MAX_K =
128 splits them into blocks of 128 run as heads of their own (`_split_keys`; o sums over the
blocks, which the recurrence keeps independent); the delta rule couples them (U = V - W S_in),
so above 128 keys its programs take Vb = 32 value columns (64-byte swizzled tiles) and the
staging tiles of each kernel share memory (`_union`), up to GPU_WIDE_K = 256 keys
(GatedDeltaNet's K = 256, V = 512); it has no GPU kernel above that. Where SMEM allows (K <=
128), the forward double-buffers its inputs: chunk n + 1's TMA copies run while chunk n
computes (the backward has no room for a second set). The CPU interpreter runs the kernel
bodies with stand-ins (`_tile`, `_union`, `_mma`, `_load`, `_iota`).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from einops import rearrange
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu
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
def chunked(q, k, v, w, G, seg, h0, scale, interpret):
  """The chunk recurrence of the module docstring in kernel layout (`_forward_call`; TPU, or
  its interpreter): returns o [BH, Tp, Vp] and the final state [BH, Kp, Vp]; `w` None for
  linear attention."""
  return chunked_fwd(q, k, v, w, G, seg, h0, scale, interpret)[0]


def chunked_fwd(q, k, v, w, G, seg, h0, scale, interpret):
  o, final, entries = _forward_call(q, k, v, w, G, seg, h0, scale=scale, interpret=interpret)
  return (o, final), (q, k, v, w, G, seg, entries)


def chunked_bwd(scale, interpret, residuals, cotangents):
  q, k, v, w, G, seg, entries = residuals
  do, dfinal = cotangents
  dq, dk, dv, dw, dG, dh0 = _backward_call(q, k, v, w, G, seg, entries, do.astype(v.dtype),
                                           dfinal.astype(F32), scale=scale,
                                           interpret=interpret)
  return dq, dk, dv, dw, dG, None, dh0


chunked.defvjp(chunked_fwd, chunked_bwd)


class Layout(NamedTuple):
  """How one call maps onto the kernel: T -> Tp = NC * C steps, K -> Kp, V -> Vp; `gpu`: the
  Mosaic GPU kernel's (C = GPU_CHUNK, widths padded to multiples of 64), else the TPU's."""
  batch: int
  length: int
  heads: int
  K: int
  V: int
  size: int  # C
  num: int   # NC
  gpu: bool = False

  @classmethod
  def of(cls, q, v, chunk_size, gpu=False):
    batch, length, heads, K = q.shape
    rows = _pallas.sublanes(q.dtype)
    size = GPU_CHUNK if gpu else min(_pallas.round_up(chunk_size, rows),
                                     _pallas.round_up(length, rows))
    return cls(batch, length, heads, K, v.shape[-1], size, -(-length // size), gpu)

  def width(self, n):
    """A padded key/value width: `_lane_width` on TPU; on GPU a multiple of 64, of GPU_MAX_K
    above it (whole key blocks: `_split_keys`)."""
    if not self.gpu:
      return _lane_width(n)
    return _pallas.round_up(n, GPU_BLOCK_V if n <= GPU_MAX_K else GPU_MAX_K)

  def seq(self, x):
    """[B, T, H, D] -> [BH, Tp, Dp] (zero padding; D padded by `width`)."""
    x = _pallas.pad_axis(_pallas.pad_axis(x, 1, self.num * self.size), 3, self.width(x.shape[3]))
    return rearrange(x, "b t h d -> (b h) t d")

  def unseq(self, x, width):
    return rearrange(x, "(b h) t d -> b t h d", b=self.batch)[:, :self.length, :, :width]

  def state(self, h):
    """[B, H, K, V] -> [BH, Kp, Vp] float32."""
    h = _pallas.pad_axis(_pallas.pad_axis(h.astype(F32), 2, self.width(self.K)), 3,
                         self.width(self.V))
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


def run(lay, q, k, v, w, G, seg, h0, scale, interpret):
  """The chunk recurrence on `lay`'s kernel (TPU or Mosaic GPU; interpret: as `on_platform`
  passes it): q, k, w [B, T, H, K]; v [B, T, H, V]; G, seg from `lay.gates`; h0 [B, H, K, V].
  Returns o [B, T, H, V] in v's dtype and the final state [B, H, K, V] in h0's dtype."""
  args = [lay.seq(q), lay.seq(k), lay.seq(v), None if w is None else lay.seq(w), G, seg,
          lay.state(h0)]
  if not lay.gpu:
    o, final = chunked(*args, scale, interpret)
  elif w is None and args[0].shape[-1] > GPU_MAX_K:
    o, final = _split_keys(*args, scale, interpret)
  else:
    o, final = gpu_chunked(*args, scale, interpret)
  return lay.unseq(o, lay.V).astype(v.dtype), lay.unstate(final).astype(h0.dtype)


def platform_form(op, form, *args, gpu_kernel=True):
  """`form(*args, interpret=..., gpu=...)` per platform (`_pallas.on_platform`): gpu=True on
  cuda (and under `_pallas.interpret_gpu` on cpu); no cuda branch without `gpu_kernel`."""
  return _pallas.on_platform(op, *args, tpu=form,
                             cuda=functools.partial(form, gpu=True) if gpu_kernel else None)


def linear_attention(q, k, v, g, h0, resets, scale=1.0, chunk_size=CHUNK):
  """Kernel form of `reference.linear_attention` (same arguments and results):

    S_t = exp(g_t) S_{t-1} + k_t v_t^T,   o_t = S_t^T (scale q_t),

  in chunks of C = chunk_size steps (see the module docstring; C = GPU_CHUNK on GPU).
  q, k: [B, T, H, K]; v: [B, T, H, V]; g: [B, T, H]; h0: [B, H, K, V] real; resets: [B, T]
  bool. Accumulates in float32 (the GPU kernel's matmuls take bfloat16 operands). Returns o
  [B, T, H, V] in v's dtype (float32 for wider inputs) and S_T in h0's dtype.
  """
  check_real("linear_attention", q, k, v, g, h0)
  q, k, v = narrow(q), narrow(k), narrow(v)

  def form(q, k, v, g, h0, resets, *, interpret, gpu=False):
    lay = Layout.of(q, v, chunk_size, gpu)
    G, seg = lay.gates(g, resets)
    return run(lay, q, k, v, None, G, seg, h0, float(scale), interpret)
  return platform_form("linear_attention", form, q, k, v, g, h0, resets)


# Mosaic GPU (Hopper) ------------------------------------------------------------------------
GPU_CHUNK = 64  # C on GPU: the wgmma row block
GPU_BLOCK_V = 64  # Vb: value columns per program (V is split across programs)
GPU_MAX_K = 128  # Kp above this: Vb = 32 (the delta rule; linear attention splits its keys)
GPU_WIDE_K = 256  # Kp above this overflows the backward's SMEM even at Vb = 32
SMEM_BYTES = 228 * 1024  # of Hopper's 232448 bytes per program, a margin for barriers
BF16 = jnp.bfloat16


class _GpuLayout(NamedTuple):
  """One GPU call: heads BH, chunks NC of C steps, Kp key and Vp value width (Vp = NV Vb)."""
  heads: int
  num: int
  size: int
  K: int
  V: int

  @classmethod
  def of(cls, q, v, G):
    (heads, _, K), V = q.shape, v.shape[-1]
    return cls(heads, G.shape[1], G.shape[2], K, V)

  @property
  def block_v(self):
    """Vb: 64 value columns per program, 32 above GPU_MAX_K keys (SMEM)."""
    return GPU_BLOCK_V if self.K <= GPU_MAX_K else GPU_BLOCK_V // 2

  @property
  def swizzle(self):
    """Bytes of the bfloat16 operand tiles' swizzle: a value block's row (128 or 64)."""
    return 2 * self.block_v

  @property
  def grid(self):
    return (self.heads, self.V // self.block_v)


def _gpu_program(lay):
  """(head, value block, its columns) of this program."""
  j = lax.axis_index("values")
  return lax.axis_index("heads"), j, pl.ds(j * lay.block_v, lay.block_v)


# Stand-ins: Mosaic GPU's interpreter lacks tiled SMEM, transpose_ref, run_state, plgpu.load
# and layout casts, so under it (interpret is not None) these helpers use plain SMEM, value
# loads and a float32 dot of the same bfloat16 operands.
def _tile(shape, interpret, dtype=BF16, swizzle=128):
  """An SMEM buffer for wgmma operands and WGMMA-layout arrays: (8, swizzle bytes)-tiled and
  swizzled (the operands of one wgmma share their swizzle: `_GpuLayout.swizzle`)."""
  if interpret is not None:
    return plgpu.SMEM(shape, dtype)
  itemsize = jnp.dtype(dtype).itemsize
  swizzle = min(swizzle, shape[-1] * itemsize)
  return plgpu.SMEM(shape, dtype, transforms=(plgpu.TilingTransform((8, swizzle // itemsize)),
                                              plgpu.SwizzleTransform(swizzle)))


def _union(tiles, interpret):
  """SMEM buffers used one after another, sharing memory (`plgpu.RefUnion`; the interpreter:
  separate buffers)."""
  return tuple(tiles) if interpret is not None else plgpu.RefUnion(*tiles)


def _mma(a, b, acc=None, *, ta=False, tb=False, interpret=None):
  """acc + op(a) @ op(b) in float32 (wgmma), op = transpose where `ta` / `tb`; a, b are
  bfloat16 SMEM refs, acc a float32 array in the WGMMA layout."""
  shape = (a.shape[ta], b.shape[1 - tb])
  if interpret is not None:
    out = lax.dot_general(a[...], b[...], (((1 - ta,), (tb,)), ((), ())),
                          preferred_element_type=F32)
    return out if acc is None else acc + out
  a = plgpu.transpose_ref(a, (1, 0)) if ta else a
  b = plgpu.transpose_ref(b, (1, 0)) if tb else b
  if acc is None:
    def fresh(ref):
      plgpu.wgmma(ref, a, b)
      return ref[...]
    return pl.run_scoped(fresh, plgpu.ACC(shape, F32))

  def accumulate(ref):
    plgpu.wgmma(ref, a, b)
  return pl.run_state(accumulate)(plgpu.ACC.init(acc))


def _load(ref, layout, interpret):
  """ref[...] as an array in `layout` (plgpu.Layout.WGMMA or one of its reductions)."""
  return ref[...] if interpret is not None else plgpu.load(ref, (), layout=layout)


def _iota(size, dim, interpret):
  if interpret is not None:
    return lax.broadcasted_iota(jnp.int32, (size, size), dim)
  return plgpu.broadcasted_iota(jnp.int32, (size, size), dim, layout=plgpu.Layout.WGMMA)


class _GpuDecay(NamedTuple):
  """`_Decay` in the WGMMA layout: within [C, C]; entry, exit [C] (per row); carry scalar."""
  within: jax.Array
  entry: jax.Array
  exit: jax.Array
  carry: jax.Array


def _gpu_decay(G_ref, seg_ref, interpret) -> _GpuDecay:
  """Decays from one chunk's G and segment index (SMEM [C]); every exp sees a masked exponent."""
  size = G_ref.shape[0]
  row = plgpu.Layout.WGMMA.reduce(1)
  G_i, seg_i = _load(G_ref, row, interpret), _load(seg_ref, row, interpret)
  G_j = _load(G_ref, plgpu.Layout.WGMMA.reduce(0), interpret)
  seg_j = _load(seg_ref, plgpu.Layout.WGMMA.reduce(0), interpret)
  G_last, seg_last = G_ref[size - 1], seg_ref[size - 1]
  col = lambda x: lax.broadcast_in_dim(x, (size, size), [0])
  line = lambda x: lax.broadcast_in_dim(x, (size, size), [1])
  mask = (_iota(size, 0, interpret) >= _iota(size, 1, interpret)) & (col(seg_i) == line(seg_j))
  return _GpuDecay(
      within=_masked_exp(mask, col(G_i) - line(G_j)),
      entry=_masked_exp(seg_i == 0, G_i),
      exit=_masked_exp(seg_i == seg_last, G_last - G_i),
      carry=jnp.where(seg_last == 0, jnp.exp(G_last), 0.0))


def _rows(x, shape):
  """A per-row vector [C] broadcast over the columns of `shape`."""
  return lax.broadcast_in_dim(x, shape, [0])


def _gpu_forward_kernel(lay: _GpuLayout, delta: bool, slots: int, interpret):
  """The Mosaic GPU forward body of one (head, value block) program: the chunks in order,
  the state block in registers (see the module docstring). With two input `slots`, chunk
  n + 1 is copied in while chunk n computes."""
  C, Vb, m = lay.size, lay.block_v, 5 + delta

  def kernel(*refs):
    q_ref, k_ref, v_ref, *refs = refs
    w_ref = refs.pop(0) if delta else None
    G_ref, seg_ref, h0_ref, o_ref, final_ref, entry_ref, *refs = refs
    inputs, refs = refs[:m], refs[m:]  # [slots, ...]: q, k, v, G, seg (, w)
    S_s, p_s, u_s, (o_s, f32_s), barriers = refs
    h, _, cols = _gpu_program(lay)
    _pallas.gpu_load([(h0_ref.at[h, :, cols], f32_s)], barriers)
    S = _load(f32_s, plgpu.Layout.WGMMA, interpret)

    def fetch(n, slot):
      steps = pl.ds(n * C, C)
      sources = [q_ref.at[h, steps], k_ref.at[h, steps], v_ref.at[h, steps, cols],
                 G_ref.at[h, n], seg_ref.at[h, n]] + ([w_ref.at[h, steps]] if delta else [])
      for i, (src, dst) in enumerate(zip(sources, inputs)):
        plgpu.copy_gmem_to_smem(src, dst.at[slot], barriers.at[slot * m + i])

    if slots > 1:
      fetch(0, 0)

    def chunk(n, S):
      steps, slot = pl.ds(n * C, C), lax.rem(n, slots)
      if slots > 1:
        pl.when(n + 1 < lay.num)(lambda: fetch(n + 1, 1 - slot))
      else:
        fetch(n, slot)
      for i in range(m):
        plgpu.barrier_wait(barriers.at[slot * m + i])
      q_s, k_s, v_s, G_s, seg_s = (x.at[slot] for x in inputs[:5])
      w_s = inputs[5].at[slot] if delta else None
      S_s[...] = S.astype(BF16)
      _pallas.gpu_store([(S_s, entry_ref.at[h, n, :, cols])])
      dec = _gpu_decay(G_s, seg_s, interpret)
      u = _load(v_s, plgpu.Layout.WGMMA, interpret).astype(F32)
      if delta:  # pseudo-values U = V - W S_in
        u = u - _mma(w_s, S_s, interpret=interpret)
      u_s[...] = u.astype(BF16)
      p_s[...] = (_mma(q_s, k_s, tb=True, interpret=interpret) * dec.within).astype(BF16)
      plgpu.commit_smem()
      o = _rows(dec.entry, (C, Vb)) * _mma(q_s, S_s, interpret=interpret)
      o = _mma(p_s, u_s, o, interpret=interpret)
      o_s[...] = o.astype(o_s.dtype)
      _pallas.gpu_store([(o_s, o_ref.at[h, steps, cols])])
      u_s[...] = (_rows(dec.exit, (C, Vb)) * u).astype(BF16)
      plgpu.commit_smem()
      return _mma(k_s, u_s, dec.carry * S, ta=True, interpret=interpret)

    S = lax.fori_loop(0, lay.num, chunk, S)
    f32_s[...] = S
    S_s[...] = S.astype(BF16)
    _pallas.gpu_store([(f32_s, final_ref.at[h, :, cols]),
                       (S_s, entry_ref.at[h, lay.num, :, cols])])
  return kernel


def _gpu_call(body, lay, out_type, scratch, interpret):
  return plgpu.kernel(body, out_type=out_type, scratch_types=scratch, grid=lay.grid,
                      grid_names=("heads", "values"),
                      **({} if interpret is None else {"interpret": interpret}))


def _gpu_forward_call(q, k, v, w, G, seg, h0, *, interpret):
  """The GPU form of `_forward_call` on scaled bfloat16 q, k, v, w [BH, Tp, Kp|Vp] (Kp, Vp
  multiples of 64): returns o [BH, Tp, Vp] (float32), the final state [BH, Kp, Vp] float32 and
  the bfloat16 chunk-entry states [BH, NC + 1, Kp, Vp] (the last one: the final state)."""
  lay, delta = _GpuLayout.of(q, v, G), w is not None
  C, K, Vb = lay.size, lay.K, lay.block_v
  tile = lambda *s: _tile(s, interpret, swizzle=lay.swizzle)
  resident = 2 * K * Vb + 2 * C * C + 2 * C * Vb + 4 * max(C, K) * Vb  # bytes besides inputs
  per_slot = 2 * C * K * (2 + delta) + 2 * C * Vb + 8 * C
  slots = 2 if resident + 2 * per_slot <= SMEM_BYTES else 1
  inputs = ([tile(slots, C, K)] * 2 + [tile(slots, C, Vb)] + [plgpu.SMEM((slots, C), F32)] * 2
            + [tile(slots, C, K)] * delta)
  scratch = inputs + [
      tile(K, Vb), tile(C, C), tile(C, Vb),
      _union([_tile((C, Vb), interpret, F32), _tile((K, Vb), interpret, F32)], interpret),
      plgpu.Barrier(num_barriers=slots * len(inputs))]
  f32 = lambda *s: jax.ShapeDtypeStruct(s, F32)
  return _gpu_call(
      _gpu_forward_kernel(lay, delta, slots, interpret), lay,
      [f32(lay.heads, lay.num * C, lay.V), f32(lay.heads, K, lay.V),
       jax.ShapeDtypeStruct((lay.heads, lay.num + 1, K, lay.V), BF16)],
      scratch, interpret,
  )(q, k, v, *([w] if delta else []), G, seg, h0)


def _gpu_backward_kernel(lay: _GpuLayout, delta: bool, interpret):
  """The Mosaic GPU backward body of one (head, value block) program: the chunks in reverse,
  dS in registers (see the module docstring)."""
  C = lay.size
  wgmma = plgpu.Layout.WGMMA

  def kernel(*refs):
    q_ref, k_ref, v_ref, *refs = refs
    w_ref = refs.pop(0) if delta else None
    G_ref, seg_ref, entry_ref, do_ref, dfinal_ref, dq_ref, dk_ref, dv_ref, *refs = refs
    dw_ref = refs.pop(0) if delta else None
    fin_ref, dh0_ref, q_s, k_s, v_s, do_s, *refs = refs
    w_s = refs.pop(0) if delta else None
    G_s, seg_s, S_s, dS_s, p_s, u_s, du_s, doe_s, (out_s, dv_s, f32_s), fin_s, barriers = refs
    h, j, cols = _gpu_program(lay)
    _pallas.gpu_load([(dfinal_ref.at[h, :, cols], f32_s),
                      (entry_ref.at[h, lay.num, :, cols], S_s)], barriers)
    dS = _load(f32_s, wgmma, interpret)

    def chunk(i, dS):
      n = lay.num - 1 - i
      steps = pl.ds(n * C, C)
      # rule 21's final-state term of this chunk: S_s still holds S_out (the next entry state)
      fin_s[...] = jnp.sum(dS * _load(S_s, wgmma, interpret).astype(F32), axis=1)
      _pallas.gpu_store([(fin_s, fin_ref.at[j, h, n])])
      _pallas.gpu_load([(q_ref.at[h, steps], q_s), (k_ref.at[h, steps], k_s),
                        (v_ref.at[h, steps, cols], v_s), (do_ref.at[h, steps, cols], do_s),
                        (G_ref.at[h, n], G_s), (seg_ref.at[h, n], seg_s),
                        (entry_ref.at[h, n, :, cols], S_s)]
                       + ([(w_ref.at[h, steps], w_s)] if delta else []), barriers)
      dec = _gpu_decay(G_s, seg_s, interpret)
      dS_s[...] = dS.astype(BF16)
      u = _load(v_s, wgmma, interpret).astype(F32)
      if delta:
        u = u - _mma(w_s, S_s, interpret=interpret)
      u_s[...] = u.astype(BF16)
      p_s[...] = (_mma(q_s, k_s, tb=True, interpret=interpret) * dec.within).astype(BF16)
      plgpu.commit_smem()
      exit_v = lambda x: _rows(dec.exit, x.shape) * x
      du = _mma(p_s, do_s, exit_v(_mma(k_s, dS_s, interpret=interpret)), ta=True,
                interpret=interpret)
      dv_s[...] = du
      _pallas.gpu_store([(dv_s, dv_ref.at[h, steps, cols])])
      # dP, into P's buffer (P is spent)
      p_s[...] = (_mma(do_s, u_s, tb=True, interpret=interpret) * dec.within).astype(BF16)
      do = _load(do_s, wgmma, interpret).astype(F32)
      doe_s[...] = (_rows(dec.entry, do.shape) * do).astype(BF16)
      if delta:
        du_s[...] = (-du).astype(BF16)
      plgpu.commit_smem()
      entry_dq = _mma(do_s, S_s, tb=True, interpret=interpret)
      out_s[...] = _mma(p_s, k_s, _rows(dec.entry, entry_dq.shape) * entry_dq,
                        interpret=interpret)
      _pallas.gpu_store([(out_s, dq_ref.at[j, h, steps])])
      out_s[...] = _mma(p_s, q_s, exit_v(_mma(u_s, dS_s, tb=True, interpret=interpret)),
                        ta=True, interpret=interpret)
      _pallas.gpu_store([(out_s, dk_ref.at[j, h, steps])])
      dS = _mma(q_s, doe_s, dec.carry * dS, ta=True, interpret=interpret)
      if delta:
        out_s[...] = _mma(du_s, S_s, tb=True, interpret=interpret)
        _pallas.gpu_store([(out_s, dw_ref.at[j, h, steps])])
        dS = _mma(w_s, du_s, dS, ta=True, interpret=interpret)
      return dS

    f32_s[...] = lax.fori_loop(0, lay.num, chunk, dS)
    _pallas.gpu_store([(f32_s, dh0_ref.at[h, :, cols])])
  return kernel


def _gpu_backward_call(q, k, v, w, G, seg, entries, do, dfinal, *, interpret):
  """Gradients of `_gpu_forward_call`'s o and final state (bfloat16 inputs as there, do
  bfloat16, dfinal float32): dq, dk, dw as float32 partial sums over the NV value blocks
  [NV, BH, Tp, Kp]; dv [BH, Tp, Vp] and dh0 [BH, Kp, Vp] float32; and the final-state term of
  rule 21 per chunk as row sums [NV, BH, NC, Kp]."""
  lay, delta = _GpuLayout.of(q, v, G), w is not None
  C, K, Vb, NV = lay.size, lay.K, lay.block_v, lay.grid[1]
  tile = lambda *s: _tile(s, interpret, swizzle=lay.swizzle)
  scratch = ([tile(C, K)] * 2 + [tile(C, Vb)] * 2 + [tile(C, K)] * delta
             + [plgpu.SMEM((C,), F32)] * 2 + [tile(K, Vb)] * 2 + [tile(C, C)]
             + [tile(C, Vb)] * 3
             + [_union([_tile((C, K), interpret, F32), _tile((C, Vb), interpret, F32),
                        _tile((K, Vb), interpret, F32)], interpret), plgpu.SMEM((K,), F32),
                plgpu.Barrier(num_barriers=8)])
  f32 = lambda *s: jax.ShapeDtypeStruct(s, F32)
  part = f32(NV, lay.heads, lay.num * C, K)
  outs = _gpu_call(
      _gpu_backward_kernel(lay, delta, interpret), lay,
      [part, part, f32(lay.heads, lay.num * C, lay.V)] + [part] * delta
      + [f32(NV, lay.heads, lay.num, K), f32(lay.heads, K, lay.V)],
      scratch, interpret,
  )(q, k, v, *([w] if delta else []), G, seg, entries, do, dfinal)
  dq, dk, dv, *outs = outs
  dw = outs.pop(0) if delta else None
  fin, dh0 = outs
  return dq, dk, dv, dw, fin, dh0


def _bf16(x):
  return None if x is None else x.astype(BF16)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def gpu_chunked(q, k, v, w, G, seg, h0, scale, interpret):
  """`chunked` on the Mosaic GPU kernels (Kp <= GPU_WIDE_K): the matmul operands q (scaled),
  k, v, w are rounded to bfloat16; o comes back float32."""
  return gpu_chunked_fwd(q, k, v, w, G, seg, h0, scale, interpret)[0]


def gpu_chunked_fwd(q, k, v, w, G, seg, h0, scale, interpret):
  o, final, entries = _gpu_forward_call(_bf16(q * scale), _bf16(k), _bf16(v), _bf16(w), G, seg,
                                        h0, interpret=interpret)
  return (o, final), (q, k, v, w, G, seg, entries)


def gpu_chunked_bwd(scale, interpret, residuals, cotangents):
  """The kernel's partial dq, dk, dw summed over value blocks; dG by rule 21 per chunk (the
  module docstring) from them and the kernel's final-state rows."""
  q, k, v, w, G, seg, entries = residuals
  do, dfinal = cotangents
  dq, dk, dv, dw, fin, dh0 = _gpu_backward_call(
      _bf16(q * scale), _bf16(k), _bf16(v), _bf16(w), G, seg, entries, _bf16(do),
      dfinal.astype(F32), interpret=interpret)
  dq, dk = jnp.sum(dq, axis=0), jnp.sum(dk, axis=0)  # gradient of the scaled q
  dG = jnp.sum(scale * q.astype(F32) * dq - k.astype(F32) * dk, axis=-1).reshape(G.shape)
  dG = dG.at[..., -1].add(jnp.sum(fin, axis=(0, 3)))
  return ((scale * dq).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype),
          None if w is None else jnp.sum(dw, axis=0).astype(w.dtype), dG, None, dh0)


gpu_chunked.defvjp(gpu_chunked_fwd, gpu_chunked_bwd)


def _split_keys(q, k, v, w, G, seg, h0, scale, interpret):
  """Linear attention with Kp > GPU_MAX_K on the GPU kernel: o and S split over key blocks
  (o = sum_b o(q_b, k_b, v), S_b independent), each block a head of its own."""
  blocks = q.shape[-1] // GPU_MAX_K
  keys = lambda x: rearrange(x, "n t (b k) -> (n b) t k", b=blocks)
  heads = lambda x: jnp.repeat(x, blocks, axis=0)
  o, final = gpu_chunked(keys(q), keys(k), heads(v), None, heads(G), heads(seg),
                         rearrange(h0, "n (b k) v -> (n b) k v", b=blocks), scale, interpret)
  return (jnp.sum(rearrange(o, "(n b) t v -> n b t v", b=blocks), axis=1),
          rearrange(final, "(n b) k v -> n (b k) v", b=blocks))
