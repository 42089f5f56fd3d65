"""The fused Pallas kernels of `selective_scan` (Mamba S6; TPU and Hopper GPUs, interpret
mode on CPU).

Discretisation (a_t = exp(dt_t A), dt_t B_t u_t), the scan, the C contraction, the D skip and
the z gate all happen inside the kernel, so the [B, T, Dm, N] state tensor never reaches HBM.
Each program owns one batch row and `block_d` channels (a multiple of 128, on lanes) of one
group; its state is [N, block_d] (N on sublanes) in VMEM scratch, carried across the time
tiles of an "arbitrary" grid axis. A comes in as [N, Dm]; B and C as [B, G, T/R, N, R] (R rows
of a register tile, 8 in float32), so the N-vector of step t is a static column slice.

Backward (`jax.custom_vjp`): the forward saves only the state entering each time tile,
[B, T/block_t, N, Dm]. The backward kernel walks the tiles in reverse; in each it recomputes
the tile's states from the saved entry state into VMEM scratch, then steps back through them:
  dh_t = C_t dy_t + a_{t+1} dh_{t+1},   dB_t = dh_t . (dt_t u_t),   dC_t = h_t . dy_t,
  d(dt_t u_t) = B_t . dh_t,   da_t = dh_t h_{t-1},   dA += da_t a_t dt_t,   dh_{-1} = a_0 dh_0.

GPU (Mosaic GPU, `plgpu.kernel`, Hopper): one program (a warpgroup of 128 threads) per batch
row and 128 channels of one group; each thread keeps its channel's N state values (N <= 16,
padded to a multiple of 8) as N float32 register rows, and reads B_t, C_t as SMEM scalars.
Time runs in tiles of GPU_BLOCK_T = 16 steps copied GMEM -> SMEM by TMA; padded steps have
dt = 0 (a = 1, no input), so the state passes through them. The forward saves the tile-entry
states [B, T/16, Np, Dm]; the backward walks the tiles in reverse, recomputes the tile's 16
states into SMEM (16 x 16 x 128 float32: what bounds N) and steps back through them with the
equations above. The TPU and GPU forms are two custom_vjp functions picked per platform around
the whole op (their residuals differ).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from einops import rearrange
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu
from jax.experimental.pallas import tpu as pltpu

from layers.ops import _pallas

F32 = jnp.float32


class _Channels:
  """The channel layout both kernels' layouts share: each group's Dc channels padded to
  `group_width` (Dcp) and T to `padded_t` (Tp); padded steps have dt = 0, so the state stays."""

  def channels(self, x):
    """[B, T, G, Dc] -> [B, Tp, G * Dcp]."""
    x = _pallas.pad_axis(_pallas.pad_axis(x, 1, self.padded_t), 3, self.group_width)
    return rearrange(x, "b t g c -> b t (g c)")

  def unchannels(self, x):
    """[B, Tp, G * Dcp] -> [B, T, G, Dc]."""
    x = rearrange(x, "b t (g c) -> b t g c", g=self.groups)
    return x[:, :self.length, :, :self.width]


class _Layout(_Channels):
  """Block sizes and padded extents of one call: T -> Tp (block_t), each group's Dc channels
  -> Dcp (block_d)."""

  def __init__(self, u, B, block_t, block_d):
    self.batch, self.length, self.groups, self.width = u.shape
    self.state = B.shape[-1]
    self.rows = _pallas.sublanes(u.dtype)
    self.block_t = min(_pallas.round_up(block_t, self.rows),
                       _pallas.round_up(self.length, self.rows))
    if block_d % _pallas.LANES:
      raise ValueError(f"selective_scan: block_d must be a multiple of {_pallas.LANES}; "
                       f"got {block_d}")
    self.block_d = min(block_d, _pallas.round_up(self.width, _pallas.LANES))
    self.padded_t = _pallas.round_up(self.length, self.block_t)
    self.group_width = _pallas.round_up(self.width, self.block_d)
    self.blocks_per_group = self.group_width // self.block_d
    self.num_tiles = self.padded_t // self.block_t
    self.grid = (self.batch, self.groups * self.blocks_per_group, self.num_tiles)

  def columns(self, x):
    """B or C [B, T, G, N] -> [B, G, Tp / R, N, R]: step t's N-vector is a column."""
    x = _pallas.pad_axis(x, 1, self.padded_t)
    return rearrange(x, "b (k r) g n -> b g k n r", r=self.rows)

  def uncolumns(self, x):
    return rearrange(x, "b g k n r -> b (k r) g n")[:, :self.length]

  def states(self, h):
    """[B, G, Dc, N] -> [B, N, G * Dcp]."""
    return rearrange(_pallas.pad_axis(h, 2, self.group_width), "b g c n -> b n (g c)")

  def unstates(self, h):
    return rearrange(h, "b n (g c) -> b g c n", g=self.groups)[:, :, :self.width]

  # BlockSpecs over the grid (batch b, channel block j, time step k); `tile(k)` is the time
  # tile that step k visits.
  def seq_spec(self, tile):
    return pl.BlockSpec((None, self.block_t, self.block_d), lambda b, j, k: (b, tile(k), j))

  def reset_spec(self, tile):
    return pl.BlockSpec((None, self.block_t, 1), lambda b, j, k: (b, tile(k), 0))

  def column_spec(self, tile, per_block=False):
    """B, C (per group) or their gradients (per channel block)."""
    # lax.div: jnp's floor division needs the TPU generation to lower
    group = (lambda j: j) if per_block else (
        lambda j: lax.div(j, jnp.int32(self.blocks_per_group)))
    return pl.BlockSpec((None, None, self.block_t // self.rows, self.state, self.rows),
                        lambda b, j, k: (b, group(j), tile(k), 0, 0))

  def param_spec(self, rows):
    return pl.BlockSpec((rows, self.block_d), lambda b, j, k: (0, j))

  def state_spec(self, rows=None):
    rows = self.state if rows is None else rows
    return pl.BlockSpec((None, rows, self.block_d), lambda b, j, k: (b, 0, j))

  def entry_spec(self, tile):
    return pl.BlockSpec((None, None, self.state, self.block_d),
                        lambda b, j, k: (b, tile(k), 0, j))

  def params(self):
    return _pallas.tpu_params("parallel", "parallel", "arbitrary")


def _silu_parts(z):
  sig = 1 / (1 + jnp.exp(-z))  # jax.nn.sigmoid needs the TPU generation to lower
  return z * sig, sig * (1 + z * (1 - sig))  # silu(z), silu'(z)


def _decay(A, dt_r, reset_r):
  """a_t = exp(dt_t A) [N, block_d], 0 where a segment starts."""
  return jnp.where(reset_r > 0, 0.0, jnp.exp(A * dt_r))


def _forward_kernel(lay: _Layout, has_z: bool):
  rows = lay.rows

  def kernel(*refs):
    u_ref, dt_ref, *refs = refs
    z_ref = refs.pop(0) if has_z else None
    (B_ref, C_ref, A_ref, D_ref, h0_ref, reset_ref, y_ref, final_ref, entry_ref,
     carry) = refs
    k = pl.program_id(2)
    row = lax.broadcasted_iota(jnp.int32, (rows, lay.block_d), 0)

    @pl.when(k == 0)
    def _():
      carry[...] = h0_ref[...]

    entry_ref[...] = carry[...]
    A, D = A_ref[...], D_ref[...]

    def row_block(i, h):
      start = pl.multiple_of(i * jnp.int32(rows), rows)
      u = u_ref[pl.ds(start, rows), :].astype(F32)
      dt = dt_ref[pl.ds(start, rows), :].astype(F32)
      resets = reset_ref[pl.ds(start, rows), :]
      Bt, Ct = B_ref[i].astype(F32), C_ref[i].astype(F32)  # [N, R]
      x = dt * u
      y = jnp.zeros((rows, lay.block_d), F32)
      for r in range(rows):
        h = _decay(A, dt[r:r + 1], resets[r:r + 1]) * h + Bt[:, r:r + 1] * x[r:r + 1]
        y = jnp.where(row == r, jnp.sum(Ct[:, r:r + 1] * h, axis=0, keepdims=True), y)
      y = y + D * u
      if has_z:
        y = y * _silu_parts(z_ref[pl.ds(start, rows), :].astype(F32))[0]
      y_ref[pl.ds(start, rows), :] = y.astype(y_ref.dtype)
      return h

    h = lax.fori_loop(jnp.int32(0), jnp.int32(lay.block_t // rows), row_block, carry[...])
    carry[...] = h

    @pl.when(k == pl.num_programs(2) - 1)
    def _():
      final_ref[...] = h
  return kernel


def _forward_call(u, dt, z, Bc, Cc, A, D, h0, resets, *, lay, interpret):
  has_z = z is not None
  tile = lambda k: k
  seq = lay.seq_spec(tile)
  in_specs = [seq, seq] + [seq] * has_z + [
      lay.column_spec(tile), lay.column_spec(tile), lay.param_spec(lay.state),
      lay.param_spec(1), lay.state_spec(), lay.reset_spec(tile)]
  shape = lambda *s: jax.ShapeDtypeStruct(s, F32)
  padded_d = u.shape[-1]
  return pl.pallas_call(
      _forward_kernel(lay, has_z), grid=lay.grid, in_specs=in_specs,
      out_specs=[seq, lay.state_spec(), lay.entry_spec(tile)],
      out_shape=[jax.ShapeDtypeStruct(u.shape, u.dtype), shape(lay.batch, lay.state, padded_d),
                 shape(lay.batch, lay.num_tiles, lay.state, padded_d)],
      scratch_shapes=[pltpu.VMEM((lay.state, lay.block_d), F32)],
      compiler_params=lay.params(), interpret=interpret,
  )(u, dt, *([z] if has_z else []), Bc, Cc, A, D, h0, resets)


def _backward_kernel(lay: _Layout, has_z: bool):
  rows, block_t = lay.rows, lay.block_t

  def kernel(*refs):
    u_ref, dt_ref, *refs = refs
    z_ref = refs.pop(0) if has_z else None
    B_ref, C_ref, A_ref, D_ref, reset_ref, entry_ref, dy_ref, dfinal_ref, *refs = refs
    du_ref, ddt_ref, *refs = refs
    dz_ref = refs.pop(0) if has_z else None
    dB_ref, dC_ref, dA_ref, dD_ref, dh0_ref, dh, states = refs
    k = pl.program_id(2)
    row = lax.broadcasted_iota(jnp.int32, (rows, lay.block_d), 0)
    lane = lax.broadcasted_iota(jnp.int32, (lay.state, rows), 1)
    A, D = A_ref[...], D_ref[...]

    @pl.when(k == 0)
    def _():
      dh[...] = dfinal_ref[...]
      dA_ref[...] = jnp.zeros_like(dA_ref)
      dD_ref[...] = jnp.zeros_like(dD_ref)

    def load(i):
      start = pl.multiple_of(i * jnp.int32(rows), rows)
      u = u_ref[pl.ds(start, rows), :].astype(F32)
      dt = dt_ref[pl.ds(start, rows), :].astype(F32)
      return start, u, dt, reset_ref[pl.ds(start, rows), :]

    # Recompute the tile's states: states[s + 1] = h at step s of the tile, states[0] = entry.
    states[0] = entry_ref[...]

    def recompute(i, h):
      start, u, dt, resets = load(i)
      Bt, x = B_ref[i].astype(F32), dt * u
      for r in range(rows):
        h = _decay(A, dt[r:r + 1], resets[r:r + 1]) * h + Bt[:, r:r + 1] * x[r:r + 1]
        states[start + jnp.int32(r + 1)] = h
      return h

    lax.fori_loop(jnp.int32(0), jnp.int32(block_t // rows), recompute, entry_ref[...])

    def step_back(n, carry):
      g, dA = carry
      i = jnp.int32(block_t // rows - 1) - n
      start, u, dt, resets = load(i)
      Bt, Ct = B_ref[i].astype(F32), C_ref[i].astype(F32)
      dout = dy_ref[pl.ds(start, rows), :].astype(F32)
      if has_z:
        silu, dsilu = _silu_parts(z_ref[pl.ds(start, rows), :].astype(F32))
        dy = dout * silu
      else:
        dy = dout
      x = dt * u
      ddt = jnp.zeros((rows, lay.block_d), F32)
      du = dy * D
      y = jnp.zeros((rows, lay.block_d), F32)
      dB = jnp.zeros((lay.state, rows), F32)
      dC = jnp.zeros((lay.state, rows), F32)
      for r in range(rows - 1, -1, -1):
        h, h_prev = states[start + jnp.int32(r + 1)], states[start + jnp.int32(r)]
        y = jnp.where(row == r, jnp.sum(Ct[:, r:r + 1] * h, axis=0, keepdims=True), y)
        dC = jnp.where(lane == r, jnp.sum(h * dy[r:r + 1], axis=1, keepdims=True), dC)
        g = g + Ct[:, r:r + 1] * dy[r:r + 1]
        dB = jnp.where(lane == r, jnp.sum(g * x[r:r + 1], axis=1, keepdims=True), dB)
        dx = jnp.sum(g * Bt[:, r:r + 1], axis=0, keepdims=True)
        a = _decay(A, dt[r:r + 1], resets[r:r + 1])
        da = g * h_prev * a  # d loss / d (dt_t A), per [n, d]
        dA = dA + da * dt[r:r + 1]
        ddt = jnp.where(row == r, dx * u[r:r + 1] + jnp.sum(da * A, axis=0, keepdims=True),
                        ddt)
        du = jnp.where(row == r, du[r:r + 1] + dx * dt[r:r + 1], du)
        g = a * g
      dD_ref[...] += jnp.sum(dy * u, axis=0, keepdims=True)
      if has_z:
        dz_ref[pl.ds(start, rows), :] = (dout * (y + D * u) * dsilu).astype(dz_ref.dtype)
      du_ref[pl.ds(start, rows), :] = du.astype(du_ref.dtype)
      ddt_ref[pl.ds(start, rows), :] = ddt.astype(ddt_ref.dtype)
      dB_ref[i], dC_ref[i] = dB, dC
      return g, dA

    g, dA = lax.fori_loop(jnp.int32(0), jnp.int32(block_t // rows), step_back,
                          (dh[...], dA_ref[...]))
    dh[...] = g
    dA_ref[...] = dA

    @pl.when(k == pl.num_programs(2) - 1)
    def _():
      dh0_ref[...] = g
  return kernel


def _backward_call(u, dt, z, Bc, Cc, A, D, resets, entries, dy, dfinal, *, lay, interpret):
  has_z = z is not None
  tile = lambda k: lay.num_tiles - 1 - k
  seq = lay.seq_spec(tile)
  padded_d = u.shape[-1]
  shape = lambda *s: jax.ShapeDtypeStruct(s, F32)
  column_grad = shape(lay.batch, lay.grid[1], lay.padded_t // lay.rows, lay.state, lay.rows)
  in_specs = [seq, seq] + [seq] * has_z + [
      lay.column_spec(tile), lay.column_spec(tile), lay.param_spec(lay.state),
      lay.param_spec(1), lay.reset_spec(tile), lay.entry_spec(tile), seq, lay.state_spec()]
  out_specs = [seq, seq] + [seq] * has_z + [
      lay.column_spec(tile, per_block=True), lay.column_spec(tile, per_block=True),
      lay.state_spec(), lay.state_spec(1), lay.state_spec()]
  out_shape = [shape(*u.shape)] * (2 + has_z) + [
      column_grad, column_grad, shape(lay.batch, lay.state, padded_d),
      shape(lay.batch, 1, padded_d), shape(lay.batch, lay.state, padded_d)]
  return pl.pallas_call(
      _backward_kernel(lay, has_z), grid=lay.grid, in_specs=in_specs, out_specs=out_specs,
      out_shape=out_shape,
      scratch_shapes=[pltpu.VMEM((lay.state, lay.block_d), F32),
                      pltpu.VMEM((lay.block_t + 1, lay.state, lay.block_d), F32)],
      compiler_params=lay.params(), interpret=interpret,
  )(u, dt, *([z] if has_z else []), Bc, Cc, A, D, resets, entries, dy, dfinal)


def _kernel_inputs(lay, u, dt, z, A, B, C, D, h0, resets):
  """The op's grouped arrays in kernel layouts (see `_Layout`)."""
  params = lambda x: rearrange(_pallas.pad_axis(x, 1, lay.group_width), "g c n -> n (g c)")
  flags = _pallas.pad_axis(resets.astype(F32), 1, lay.padded_t)[..., None]
  return (lay.channels(u), lay.channels(dt), None if z is None else lay.channels(z),
          lay.columns(B), lay.columns(C), params(A.astype(F32)),
          params(D.astype(F32)[..., None]),
          lay.states(h0.astype(F32)), flags)


@functools.partial(jax.custom_vjp, nondiff_argnums=(9, 10))
def _fused(u, dt, z, A, B, C, D, h0, resets, block_t, block_d):
  return _fused_fwd(u, dt, z, A, B, C, D, h0, resets, block_t, block_d)[0]


def _fused_fwd(u, dt, z, A, B, C, D, h0, resets, block_t, block_d):
  lay = _Layout(u, B, block_t, block_d)
  args = _kernel_inputs(lay, u, dt, z, A, B, C, D, h0, resets)
  call = functools.partial(_forward_call, lay=lay)
  y, final, entries = _pallas.on_platform(
      "selective_scan", *args, tpu=call)
  out = (lay.unchannels(y), lay.unstates(final))
  return out, (u, dt, z, A, B, C, D, h0, resets, entries)


def _fused_bwd(block_t, block_d, residuals, cotangents):
  u, dt, z, A, B, C, D, h0, resets, entries = residuals
  dy, dfinal = cotangents
  lay = _Layout(u, B, block_t, block_d)
  u_, dt_, z_, Bc, Cc, A_, D_, _, flags = _kernel_inputs(lay, u, dt, z, A, B, C, D, h0, resets)
  call = functools.partial(_backward_call, lay=lay)
  outs = _pallas.on_platform(
      "selective_scan", u_, dt_, z_, Bc, Cc, A_, D_, flags, entries, lay.channels(dy),
      lay.states(dfinal.astype(F32)),
      tpu=call)
  du, ddt, *outs = outs
  dz = outs.pop(0) if z is not None else None
  dB, dC, dA, dD, dh0 = outs
  per_group = lambda x: lay.uncolumns(
      x.reshape(lay.batch, lay.groups, lay.blocks_per_group, *x.shape[2:]).sum(2))
  unparams = lambda x: rearrange(x, "n (g c) -> g c n", g=lay.groups)[:, :lay.width]
  grads = (lay.unchannels(du), lay.unchannels(ddt),
           None if z is None else lay.unchannels(dz), unparams(dA.sum(0)),
           per_group(dB), per_group(dC),
           None if D is None else unparams(dD.sum(0))[..., 0], lay.unstates(dh0),
           None)
  primals = (u, dt, z, A, B, C, D, h0, resets)
  return tuple(None if g is None else g.astype(p.dtype) for g, p in zip(grads, primals))


_fused.defvjp(_fused_fwd, _fused_bwd)


def selective_scan(u, dt, A, B, C, h0, resets, *, D=None, z=None, block_t=128, block_d=128):
  """Fused kernel form of `reference.selective_scan` (TPU kernel; Mosaic GPU kernel on cuda,
  N <= 16, tiles of min(block_t, 16) steps, block_d unused), with the D skip and z gate inside:

    h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t,   y_t = (C_t . h_t + D u_t) * silu(z_t).

  u, dt, z: [B, T, G, Dc]; A: [G, Dc, N]; B, C: [B, T, G, N]; D: [G, Dc] (or None);
  h0: [B, G, Dc, N] real; resets: [B, T] bool. Accumulates in float32. Returns y [B, T, G, Dc]
  in u's dtype (float32 for wider inputs) and the final state h_T in h0's dtype.
  block_t: time steps per grid step; block_d: channels per program (a multiple of 128).
  """
  if jnp.iscomplexobj(h0) or jnp.iscomplexobj(u):
    raise ValueError("selective_scan: impl='pallas' takes real inputs and a real "
                     "initial_state; use impl='reference' or 'chunk' for complex ones")
  if D is None:
    D = jnp.zeros(u.shape[2:], F32)
  narrow = lambda x: x if x.dtype.itemsize <= 4 else x.astype(F32)  # no float64 in kernels
  args = (narrow(u), narrow(dt), None if z is None else narrow(z), A, B, C, D, h0, resets)
  y, final = _pallas.on_platform(
      "selective_scan", *args,
      tpu=lambda *args, interpret: _fused(*args, block_t, block_d),  # picks its own branch
      cuda=lambda *args, interpret: _gpu_fused(*args, block_t, interpret))
  return y, final.astype(h0.dtype)


# Mosaic GPU (Hopper) ------------------------------------------------------------------------
GPU_BLOCK_T = 16  # steps per tile: the backward keeps a tile's states, 16 x 16 x 128 float32
GPU_MAX_STATE = 16  # state sizes above this overflow SMEM in the backward (N = 16: Mamba-1)


class _GpuLayout(_Channels):
  """Kernel layouts of one GPU call: each group's Dc channels padded to Dcp (whole programs
  of 128 channels), T to Tp (whole tiles), N to Np (rows of B and C in 32-byte multiples)."""

  def __init__(self, u, B, block_t):
    self.batch, self.length, self.groups, self.width = u.shape
    self.state = B.shape[-1]
    self.padded_n = _pallas.round_up(self.state, 8)
    if self.padded_n > GPU_MAX_STATE:
      raise ValueError(f"selective_scan: the Mosaic GPU kernel takes N <= {GPU_MAX_STATE} "
                       f"(its backward keeps a tile of states in SMEM); got N={self.state}; "
                       "use impl='chunk'")
    self.block_t = min(block_t, GPU_BLOCK_T, _pallas.round_up(self.length, 8))
    self.padded_t = _pallas.round_up(self.length, self.block_t)
    self.num_tiles = self.padded_t // self.block_t
    self.group_width = _pallas.round_up(self.width, _pallas.WARPGROUP)
    self.blocks_per_group = self.group_width // _pallas.WARPGROUP
    self.grid = (self.batch, self.groups * self.blocks_per_group)

  def rows(self, x):
    """B or C [B, T, G, N] -> [B, G, Tp, Np]."""
    x = _pallas.pad_axis(_pallas.pad_axis(x, 1, self.padded_t), 3, self.padded_n)
    return rearrange(x, "b t g n -> b g t n")

  def unrows(self, x):
    return rearrange(x, "b g t n -> b t g n")[:, :self.length, :, :self.state]

  def states(self, h):
    """[B, G, Dc, N] -> [B, Np, G * Dcp]."""
    h = _pallas.pad_axis(_pallas.pad_axis(h, 2, self.group_width), 3, self.padded_n)
    return rearrange(h, "b g c n -> b n (g c)")

  def unstates(self, h):
    return rearrange(h, "b n (g c) -> b g c n", g=self.groups)[:, :, :self.width, :self.state]

  def params(self, x):
    """A [G, Dc, N] -> [Np, G * Dcp]; D [G, Dc, 1] -> [1, G * Dcp]."""
    x = _pallas.pad_axis(_pallas.pad_axis(x, 1, self.group_width), 2,
                         self.padded_n if x.shape[2] > 1 else 1)
    return rearrange(x, "g c n -> n (g c)")

  def unparams(self, x):
    """The inverse of `params` ([Np or 1, G * Dcp] -> [G, Dc, N or 1])."""
    x = rearrange(x, "n (g c) -> g c n", g=self.groups)[:, :self.width]
    return x[..., :self.state] if x.shape[-1] > 1 else x


def _gpu_program(lay):
  """(batch row, channel columns, group) of this program."""
  b, j = lax.axis_index("batch"), lax.axis_index("channels")
  return b, j, pl.ds(j * _pallas.WARPGROUP, _pallas.WARPGROUP), lax.div(
      j, jnp.int32(lay.blocks_per_group))


def _gpu_step(A, h, dt, x, B_t, reset):
  """One step of every state row n: h_n <- a_n h_n + B_tn x, a_n = exp(dt A_n) (0 at a reset).
  Returns (new h, the decays)."""
  a = [jnp.where(reset > 0, 0.0, jnp.exp(dt * A_n)) for A_n in A]
  return [a_n * h_n + B_t[n] * x for n, (a_n, h_n) in enumerate(zip(a, h))], a


def _gpu_forward_kernel(lay, has_z):
  block_t, num_n = lay.block_t, lay.padded_n

  def kernel(*refs):
    u, dt, *refs = refs
    z = refs.pop(0) if has_z else None
    Bg, Cg, Ag, Dg, h0, resets, y, final, entries, *scratch = refs
    u_s, dt_s, *scratch = scratch
    z_s = scratch.pop(0) if has_z else None
    B_s, C_s, r_s, y_s, A_s, D_s, h_s, barriers = scratch
    b, _, cols, g = _gpu_program(lay)
    _pallas.gpu_load([(Ag.at[:, cols], A_s), (Dg.at[:, cols], D_s), (h0.at[b, :, cols], h_s)],
                     barriers)
    A, D = [A_s[n] for n in range(num_n)], D_s[0]

    def tile(k, entry):
      steps = pl.ds(k * block_t, block_t)
      _pallas.gpu_load([(u.at[b, steps, cols], u_s), (dt.at[b, steps, cols], dt_s),
                        (Bg.at[b, g, steps], B_s), (Cg.at[b, g, steps], C_s),
                        (resets.at[b, steps], r_s)]
                       + ([(z.at[b, steps, cols], z_s)] if has_z else []), barriers)

      def one_step(t, h):
        u_t, dt_t = u_s[t].astype(F32), dt_s[t].astype(F32)
        B_t = [B_s[t, n].astype(F32) for n in range(num_n)]
        h, _ = _gpu_step(A, h, dt_t, dt_t * u_t, B_t, r_s[t, 0])
        y_t = D * u_t
        for n in range(num_n):
          y_t = y_t + C_s[t, n].astype(F32) * h[n]
        if has_z:
          y_t = y_t * _silu_parts(z_s[t].astype(F32))[0]
        y_s[t] = y_t.astype(y_s.dtype)
        return h

      h = lax.fori_loop(0, block_t, one_step, entry)
      for n in range(num_n):  # stored with y, after the barrier that ends the tile's reads
        h_s[n] = entry[n]
      _pallas.gpu_store([(y_s, y.at[b, steps, cols]), (h_s, entries.at[b, k, :, cols])])
      return h

    h = lax.fori_loop(0, lay.num_tiles, tile, [h_s[n] for n in range(num_n)])
    for n in range(num_n):
      h_s[n] = h[n]
    _pallas.gpu_store([(h_s, final.at[b, :, cols])])
  return kernel


def _gpu_backward_kernel(lay, has_z):
  block_t, num_n = lay.block_t, lay.padded_n

  def kernel(*refs):
    u, dt, *refs = refs
    z = refs.pop(0) if has_z else None
    Bg, Cg, Ag, Dg, resets, entries, dy, dfinal, du, ddt, *refs = refs
    dz = refs.pop(0) if has_z else None
    dB, dC, dA, dD, dh0, *scratch = refs
    u_s, dt_s, dy_s, du_s, ddt_s, *scratch = scratch
    z_s, dz_s = (scratch.pop(0), scratch.pop(0)) if has_z else (None, None)
    B_s, C_s, r_s, dB_s, dC_s, A_s, D_s, h_s, states, barriers = scratch
    b, j, cols, g = _gpu_program(lay)
    _pallas.gpu_load([(Ag.at[:, cols], A_s), (Dg.at[:, cols], D_s), (dfinal.at[b, :, cols], h_s)],
                     barriers)
    A, D = [A_s[n] for n in range(num_n)], D_s[0]

    def tile(k, carry):
      k = lay.num_tiles - 1 - k
      steps = pl.ds(k * block_t, block_t)
      _pallas.gpu_load([(u.at[b, steps, cols], u_s), (dt.at[b, steps, cols], dt_s),
                        (Bg.at[b, g, steps], B_s), (Cg.at[b, g, steps], C_s),
                        (resets.at[b, steps], r_s), (dy.at[b, steps, cols], dy_s),
                        (entries.at[b, k, :, cols], h_s)]
                       + ([(z.at[b, steps, cols], z_s)] if has_z else []), barriers)

      def recompute(t, h):  # states[t] = h_{t-1} within the tile
        for n in range(num_n):
          states[t, n] = h[n]
        dt_t = dt_s[t].astype(F32)
        B_t = [B_s[t, n].astype(F32) for n in range(num_n)]
        return _gpu_step(A, h, dt_t, dt_t * u_s[t].astype(F32), B_t, r_s[t, 0])[0]

      h = lax.fori_loop(0, block_t, recompute, [h_s[n] for n in range(num_n)])

      def step_back(i, carry):
        grad, dA_acc, dD_acc, h = carry
        t = block_t - 1 - i
        u_t, dt_t, dout = u_s[t].astype(F32), dt_s[t].astype(F32), dy_s[t].astype(F32)
        B_t = [B_s[t, n].astype(F32) for n in range(num_n)]
        C_t = [C_s[t, n].astype(F32) for n in range(num_n)]
        h_prev = [states[t, n] for n in range(num_n)]
        if has_z:
          silu, dsilu = _silu_parts(z_s[t].astype(F32))
          dy_t = dout * silu
          y_t = D * u_t
          for n in range(num_n):
            y_t = y_t + C_t[n] * h[n]
          dz_s[t] = (dout * y_t * dsilu).astype(dz_s.dtype)
        else:
          dy_t = dout
        x = dt_t * u_t
        _, a = _gpu_step(A, h_prev, dt_t, x, B_t, r_s[t, 0])
        dx, ddt_t = jnp.zeros_like(x), jnp.zeros_like(x)
        new_grad, new_dA = [], []
        for n in range(num_n):
          dC_s[t, n] = jnp.sum(h[n] * dy_t)
          g_n = grad[n] + C_t[n] * dy_t
          dB_s[t, n] = jnp.sum(g_n * x)
          dx = dx + g_n * B_t[n]
          da = g_n * h_prev[n] * a[n]  # d loss / d (dt_t A_n)
          new_dA.append(dA_acc[n] + da * dt_t)
          ddt_t = ddt_t + da * A[n]
          new_grad.append(a[n] * g_n)
        du_s[t] = (dy_t * D + dx * dt_t).astype(du_s.dtype)
        ddt_s[t] = (dx * u_t + ddt_t).astype(ddt_s.dtype)
        return new_grad, new_dA, dD_acc + dy_t * u_t, h_prev

      grad, dA_acc, dD_acc, _ = lax.fori_loop(0, block_t, step_back, (*carry, h))
      _pallas.gpu_store([(du_s, du.at[b, steps, cols]), (ddt_s, ddt.at[b, steps, cols]),
                         (dB_s, dB.at[b, j, steps]), (dC_s, dC.at[b, j, steps])]
                        + ([(dz_s, dz.at[b, steps, cols])] if has_z else []))
      return grad, dA_acc, dD_acc

    dfinal_rows = [h_s[n] for n in range(num_n)]
    h_s[0] = jnp.zeros((_pallas.WARPGROUP,), F32)
    zeros = h_s[0]  # read back: the loop carries need the registers' layout, not a splat
    grad, dA_acc, dD_acc = lax.fori_loop(0, lay.num_tiles, tile,
                                         (dfinal_rows, [zeros] * num_n, zeros))
    for n in range(num_n):
      h_s[n], A_s[n] = grad[n], dA_acc[n]
    D_s[0] = dD_acc
    _pallas.gpu_store([(h_s, dh0.at[b, :, cols]), (A_s, dA.at[b, :, cols]),
                       (D_s, dD.at[b, :, cols])])
  return kernel


def _gpu_kernel(body, out_type, scratch, lay, interpret):
  return plgpu.kernel(body, out_type=out_type, scratch_types=scratch,
                      grid=lay.grid, grid_names=("batch", "channels"),
                      **({} if interpret is None else {"interpret": interpret}))


def _gpu_scratch(lay, u, z, Bc, num_copies):
  """SMEM of both kernels' common inputs: u, dt, (z) tiles; B, C rows; reset flags."""
  tile = (lay.block_t, _pallas.WARPGROUP)
  return ([plgpu.SMEM(tile, u.dtype), plgpu.SMEM(tile, F32)],
          [plgpu.SMEM(tile, z.dtype)] if z is not None else [],
          [plgpu.SMEM((lay.block_t, lay.padded_n), Bc.dtype)] * 2
          + [plgpu.SMEM((lay.block_t, 8), F32)],
          plgpu.Barrier(num_barriers=num_copies))


def _gpu_inputs(lay, u, dt, z, A, B, C, D, resets):
  # reset flags as [B, Tp, 8]: a tile of them is a whole number of 128-byte copies
  flags = jnp.broadcast_to(_pallas.pad_axis(resets.astype(F32), 1, lay.padded_t)[..., None],
                           (lay.batch, lay.padded_t, 8))
  return (lay.channels(u), lay.channels(dt.astype(F32)),
          None if z is None else lay.channels(z), lay.rows(B), lay.rows(C),
          lay.params(A.astype(F32)), lay.params(D.astype(F32)[..., None]), flags)


def _gpu_fused_call(u, dt, z, A, B, C, D, h0, resets, block_t, interpret):
  lay = _GpuLayout(u, B, block_t)
  u_, dt_, z_, Bc, Cc, A_, D_, flags = _gpu_inputs(lay, u, dt, z, A, B, C, D, resets)
  has_z, padded_d = z is not None, u_.shape[-1]
  state = jax.ShapeDtypeStruct((lay.batch, lay.padded_n, padded_d), F32)
  seq, common, rows, barriers = _gpu_scratch(lay, u_, z_, Bc, 6 + has_z)
  y, final, entries = _gpu_kernel(
      _gpu_forward_kernel(lay, has_z),
      [jax.ShapeDtypeStruct(u_.shape, u_.dtype), state,
       jax.ShapeDtypeStruct((lay.batch, lay.num_tiles, lay.padded_n, padded_d), F32)],
      seq + common + rows + [plgpu.SMEM((lay.block_t, _pallas.WARPGROUP), u_.dtype),
                             plgpu.SMEM((lay.padded_n, _pallas.WARPGROUP), F32),
                             plgpu.SMEM((1, _pallas.WARPGROUP), F32),
                             plgpu.SMEM((lay.padded_n, _pallas.WARPGROUP), F32), barriers],
      lay, interpret)(u_, dt_, *([z_] if has_z else []), Bc, Cc, A_, D_, lay.states(h0), flags)
  return (lay.unchannels(y), lay.unstates(final)), entries


@functools.partial(jax.custom_vjp, nondiff_argnums=(9, 10))
def _gpu_fused(u, dt, z, A, B, C, D, h0, resets, block_t, interpret):
  """The Mosaic GPU kernels with their backward (arguments as `_fused`)."""
  return _gpu_fused_call(u, dt, z, A, B, C, D, h0, resets, block_t, interpret)[0]


def _gpu_fused_fwd(u, dt, z, A, B, C, D, h0, resets, block_t, interpret):
  out, entries = _gpu_fused_call(u, dt, z, A, B, C, D, h0, resets, block_t, interpret)
  return out, (u, dt, z, A, B, C, D, h0, resets, entries)


def _gpu_fused_bwd(block_t, interpret, residuals, cotangents):
  u, dt, z, A, B, C, D, h0, resets, entries = residuals
  dy, dfinal = cotangents
  lay = _GpuLayout(u, B, block_t)
  u_, dt_, z_, Bc, Cc, A_, D_, flags = _gpu_inputs(lay, u, dt, z, A, B, C, D, resets)
  has_z, padded_d = z is not None, u_.shape[-1]
  seq_grad = jax.ShapeDtypeStruct(u_.shape, F32)
  row_grad = jax.ShapeDtypeStruct((lay.batch, lay.grid[1], lay.padded_t, lay.padded_n), F32)
  state = jax.ShapeDtypeStruct((lay.batch, lay.padded_n, padded_d), F32)
  dy_ = lay.channels(dy)
  seq, common, rows, barriers = _gpu_scratch(lay, u_, z_, Bc, 7 + has_z)
  f32_tile = plgpu.SMEM((lay.block_t, _pallas.WARPGROUP), F32)
  outs = _gpu_kernel(
      _gpu_backward_kernel(lay, has_z),
      [seq_grad] * (2 + has_z) + [row_grad, row_grad, state,
                                  jax.ShapeDtypeStruct((lay.batch, 1, padded_d), F32), state],
      seq + [plgpu.SMEM(f32_tile.shape, dy_.dtype)] + [f32_tile] * 2 + common
      + [f32_tile] * has_z + rows
      + [plgpu.SMEM((lay.block_t, lay.padded_n), F32)] * 2
      + [plgpu.SMEM((lay.padded_n, _pallas.WARPGROUP), F32), plgpu.SMEM((1, _pallas.WARPGROUP),
                                                                        F32),
         plgpu.SMEM((lay.padded_n, _pallas.WARPGROUP), F32),
         plgpu.SMEM((lay.block_t, lay.padded_n, _pallas.WARPGROUP), F32), barriers],
      lay, interpret)(u_, dt_, *([z_] if has_z else []), Bc, Cc, A_, D_, flags, entries,
                      dy_, lay.states(dfinal.astype(F32)))
  du, ddt, *outs = outs
  dz = outs.pop(0) if has_z else None
  dB, dC, dA, dD, dh0 = outs
  per_group = lambda x: lay.unrows(
      x.reshape(lay.batch, lay.groups, lay.blocks_per_group, *x.shape[2:]).sum(2))
  grads = (lay.unchannels(du), lay.unchannels(ddt), None if dz is None else lay.unchannels(dz),
           lay.unparams(dA.sum(0)), per_group(dB), per_group(dC),
           lay.unparams(dD.sum(0))[..., 0], lay.unstates(dh0), None)
  primals = (u, dt, z, A, B, C, D, h0, resets)
  return tuple(None if g is None else g.astype(p.dtype) for g, p in zip(grads, primals))


_gpu_fused.defvjp(_gpu_fused_fwd, _gpu_fused_bwd)
