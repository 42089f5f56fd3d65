"""The fused Pallas kernel of `selective_scan` (Mamba S6; TPU, interpret mode on CPU).

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
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from einops import rearrange
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from layers.ops import _pallas

F32 = jnp.float32


class _Layout:
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

  def channels(self, x):
    """[B, T, G, Dc] -> [B, Tp, G * Dcp]."""
    x = _pallas.pad_axis(_pallas.pad_axis(x, 1, self.padded_t), 3, self.group_width)
    return rearrange(x, "b t g c -> b t (g c)")

  def unchannels(self, x):
    """[B, Tp, G * Dcp] -> [B, T, G, Dc]."""
    x = rearrange(x, "b t (g c) -> b t g c", g=self.groups)
    return x[:, :self.length, :, :self.width]

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
  """Fused kernel form of `reference.selective_scan`, with the D skip and z gate inside:

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
  y, final = _fused(narrow(u), narrow(dt), None if z is None else narrow(z), A, B, C, D, h0,
                    resets, block_t, block_d)
  return y, final.astype(h0.dtype)
