"""Pallas kernels of `linear_scan` and `log_linear_scan` (TPU and Hopper GPUs; interpret mode
on CPU).

One channel-scan kernel serves both ops, both directions and both backward passes: channels
are blocked lane-dense (`block_d`, a multiple of 128) over a "parallel" grid axis, time runs
sequentially inside the kernel over tiles of `block_t` steps along an "arbitrary" grid axis
that carries the state in VMEM scratch. Each tile is read a vector-register row block at a
time (8 rows in float32, 16 in bfloat16) and the steps inside it are unrolled.

GPU (Mosaic GPU, `plgpu.kernel`, Hopper): one program (a warpgroup of 128 threads) per batch
row and 128 channels; each thread keeps its channel's float32 state in registers and walks
time sequentially over tiles of `block_t` steps, copied GMEM -> SMEM by TMA (one barrier per
input) and written back SMEM -> GMEM per tile. Padded steps past the true length leave the
state as is. Mosaic GPU lowers no `log1p`, so the log step there is max + log(1 + exp(-|x -
y|)), and segment starts come folded into log_a as -inf (the kernel reads no flag array).

Complex scans (S4D): Mosaic has no complex type, so the wrapper splits real and imaginary parts
and the kernel does the complex multiply-add by hand.

Backward (`jax.custom_vjp`): the per-step state of these scans is their output, so the
backward reads it back (nothing is stored beyond the outputs) and runs the same kernel in the
other time direction on the cotangents:
  g_t = dh_t + a_{t+1} g_{t+1},   da_t = g_t h_{t-1},   db_t = g_t,   dh_{-1} = a_0 g_0
(for the log scan, a_t = d log h_t / d log h_{t-1} = exp(log_a_t + log h_{t-1} - log h_t)).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu
from jax.experimental.pallas import tpu as pltpu

from layers.ops import _pallas

F32 = jnp.float32


def _real_step(h, x):
  (h,), (a, b) = h, x
  return (a * h + b,)


def _complex_step(h, x):
  """(h_re, h_im) <- a * h + b with a, b given as (re, im) parts."""
  (h_re, h_im), (a_re, a_im, b_re, b_im) = h, x
  return a_re * h_re - a_im * h_im + b_re, a_re * h_im + a_im * h_re + b_im


def _log_step(h, x):
  """log h <- logaddexp(log_a + log h, log_b), or log_b where the reset flag is set."""
  (h,), (log_a, log_b, reset) = h, x
  x, y = log_a + h, log_b
  top = jnp.maximum(x, y)
  added = top + jnp.log1p(jnp.exp(-jnp.abs(x - y)))
  return (jnp.where(reset > 0, log_b, added),)


def _log_step_gpu(h, x):
  """log h <- logaddexp(log_a + log h, log_b), where log_a = -inf marks a segment start (then
  log_b: also when log_b = -inf, which would make the difference NaN)."""
  (h,), (log_a, log_b) = h, x
  x, y = log_a + h, log_b
  top = jnp.maximum(x, y)
  added = top + jnp.log(1 + jnp.exp(-jnp.abs(x - y)))  # Mosaic GPU lowers no log1p
  return (jnp.where(log_a == -jnp.inf, y, added),)


def _scan_kernel(step, num_inputs, num_states, length, reverse, block_t, block_d, rows):
  """The kernel body: refs are (inputs, initial states, outputs, final states, carries)."""
  def kernel(*refs):
    n, s = num_inputs, num_states
    xs, h0s, hs_out = refs[:n], refs[n:n + s], refs[n + s:n + 2 * s]
    finals, carry = refs[n + 2 * s:n + 3 * s], refs[n + 3 * s:]
    k, num_tiles = pl.program_id(2), pl.num_programs(2)
    tile = num_tiles - 1 - k if reverse else k
    row = lax.broadcasted_iota(jnp.int32, (rows, block_d), 0)
    order = range(rows - 1, -1, -1) if reverse else range(rows)
    num_blocks = block_t // rows

    @pl.when(k == 0)
    def _():
      for c, h0 in zip(carry, h0s):
        c[...] = h0[...]

    def row_block(i, h):  # index arithmetic in int32 (Mosaic), also under jax_enable_x64
      i = jnp.int32(num_blocks - 1) - i if reverse else i
      start = pl.multiple_of(i * jnp.int32(rows), rows)
      x = [ref[pl.ds(start, rows), :].astype(F32) for ref in xs]
      out = [jnp.zeros((rows, block_d), F32)] * num_states
      for r in order:
        new = step(h, [v[r:r + 1] for v in x])
        if length % block_t:  # padded steps (past the true length) leave the state as is
          valid = tile * jnp.int32(block_t) + start + jnp.int32(r) < jnp.int32(length)
          new = tuple(jnp.where(valid, hk, old) for hk, old in zip(new, h))
        h = new
        out = [jnp.where(row == r, hk, o) for hk, o in zip(h, out)]
      for ref, o in zip(hs_out, out):
        ref[pl.ds(start, rows), :] = o.astype(ref.dtype)
      return h

    h = lax.fori_loop(jnp.int32(0), jnp.int32(num_blocks), row_block,
                      tuple(c[...] for c in carry))
    for c, hk in zip(carry, h):
      c[...] = hk

    @pl.when(k == num_tiles - 1)
    def _():
      for f, hk in zip(finals, h):
        f[...] = hk
  return kernel


def _channel_scan(step, xs, h0s, out_dtype, *, reverse, block_t, block_d, interpret):
  """Runs `step` over time for every channel: xs [B, T, D] (or [B, T, 1], broadcast over
  channels), h0s [B, D] float32. Returns (h [B, T, D] in out_dtype, final [B, D] float32) per
  state part."""
  batch, length, width = h0s[0].shape[0], xs[0].shape[1], h0s[0].shape[1]
  rows = max(_pallas.sublanes(x.dtype) for x in xs)
  block_t = min(_pallas.round_up(block_t, rows), _pallas.round_up(length, rows))
  block_d = min(block_d, _pallas.round_up(width, _pallas.LANES))
  if block_d % _pallas.LANES:
    raise ValueError(f"block_d must be a multiple of {_pallas.LANES}; got {block_d}")
  padded_t, padded_d = _pallas.round_up(length, block_t), _pallas.round_up(width, block_d)
  num_tiles = padded_t // block_t
  xs = [_pallas.pad_axis(x.astype(F32) if x.dtype.itemsize > 4 else x, 1, padded_t)
        for x in xs]
  xs = [x if x.shape[2] == 1 else _pallas.pad_axis(x, 2, padded_d) for x in xs]
  h0s = [_pallas.pad_axis(h0.astype(F32), 1, padded_d)[:, None] for h0 in h0s]

  def time_block(k):
    return num_tiles - 1 - k if reverse else k

  def x_spec(x):
    if x.shape[2] == 1:
      return pl.BlockSpec((None, block_t, 1), lambda b, j, k: (b, time_block(k), 0))
    return pl.BlockSpec((None, block_t, block_d), lambda b, j, k: (b, time_block(k), j))

  state_spec = pl.BlockSpec((None, 1, block_d), lambda b, j, k: (b, 0, j))
  num_states = len(h0s)
  outs = pl.pallas_call(
      _scan_kernel(step, len(xs), num_states, length, reverse, block_t, block_d, rows),
      grid=(batch, padded_d // block_d, num_tiles),
      in_specs=[x_spec(x) for x in xs] + [state_spec] * num_states,
      out_specs=[pl.BlockSpec((None, block_t, block_d),
                              lambda b, j, k: (b, time_block(k), j))] * num_states
      + [state_spec] * num_states,
      out_shape=[jax.ShapeDtypeStruct((batch, padded_t, padded_d), out_dtype)] * num_states
      + [jax.ShapeDtypeStruct((batch, 1, padded_d), F32)] * num_states,
      scratch_shapes=[pltpu.VMEM((1, block_d), F32)] * num_states,
      compiler_params=_pallas.tpu_params("parallel", "parallel", "arbitrary"),
      interpret=interpret,
  )(*xs, *h0s)
  return ([h[:, :length, :width] for h in outs[:num_states]],
          [f[:, 0, :width] for f in outs[num_states:]])


GPU_BLOCK_T = 64  # time steps per SMEM tile on GPU: 6 float32 tiles (complex) fit in SMEM


def _gpu_scan_kernel(step, num_inputs, num_states, length, reverse, block_t, num_tiles):
  """The Mosaic GPU body: refs are (inputs, initial states in GMEM; outputs, final states in
  GMEM; input tiles, output tiles, state rows in SMEM; barriers)."""
  n, s = num_inputs, num_states

  def kernel(*refs):
    xs, h0s, hs, finals = refs[:n], refs[n:n + s], refs[n + s:n + 2 * s], refs[
        n + 2 * s:n + 3 * s]
    x_tiles, h_tiles = refs[n + 3 * s:2 * n + 3 * s], refs[2 * n + 3 * s:2 * n + 4 * s]
    rows, barriers = refs[2 * n + 4 * s:2 * n + 5 * s], refs[-1]
    b, j = lax.axis_index("batch"), lax.axis_index("channels")
    cols = pl.ds(j * _pallas.WARPGROUP, _pallas.WARPGROUP)
    for i, (h0, row) in enumerate(zip(h0s, rows)):
      plgpu.copy_gmem_to_smem(h0.at[b, cols], row, barriers.at[n + i])
    for i in range(s):
      plgpu.barrier_wait(barriers.at[n + i])

    def tile(k, h):
      k = num_tiles - 1 - k if reverse else k
      steps = pl.ds(k * block_t, block_t)
      for i, (x, x_tile) in enumerate(zip(xs, x_tiles)):
        plgpu.copy_gmem_to_smem(x.at[b, steps, cols], x_tile, barriers.at[i])
      for i in range(n):
        plgpu.barrier_wait(barriers.at[i])

      def one_step(i, h):
        t = block_t - 1 - i if reverse else i
        new = step(h, [x_tile[t].astype(F32) for x_tile in x_tiles])
        if length % block_t:  # padded steps (past the true length) leave the state as is
          valid = k * block_t + t < length
          new = tuple(jnp.where(valid, hk, old) for hk, old in zip(new, h))
        for h_tile, hk in zip(h_tiles, new):
          h_tile[t] = hk.astype(h_tile.dtype)
        return new

      h = lax.fori_loop(0, block_t, one_step, h)
      plgpu.commit_smem()
      for h_tile, out in zip(h_tiles, hs):
        plgpu.copy_smem_to_gmem(h_tile, out.at[b, steps, cols])
      plgpu.wait_smem_to_gmem(0)  # the tiles are rewritten by the next time tile
      return h

    h = lax.fori_loop(0, num_tiles, tile, tuple(row[...] for row in rows))
    for row, hk in zip(rows, h):
      row[...] = hk
    plgpu.commit_smem()
    for row, final in zip(rows, finals):
      plgpu.copy_smem_to_gmem(row, final.at[b, cols])
    plgpu.wait_smem_to_gmem(0)
  return kernel


def _gpu_channel_scan(step, xs, h0s, out_dtype, *, reverse, block_t, interpret):
  """The Mosaic GPU form of `_channel_scan` (every input [B, T, D]): `step` over time per
  channel, 128 channels per program; block_t is capped at GPU_BLOCK_T."""
  batch, length, width = xs[0].shape
  block_t = min(block_t, GPU_BLOCK_T, _pallas.round_up(length, 8))
  padded_t = _pallas.round_up(length, block_t)
  padded_d = _pallas.round_up(width, _pallas.WARPGROUP)
  xs = [_pallas.pad_axis(_pallas.pad_axis(x.astype(F32) if x.dtype.itemsize > 4 else x, 1,
                                          padded_t), 2, padded_d) for x in xs]
  h0s = [_pallas.pad_axis(h0.astype(F32), 1, padded_d) for h0 in h0s]
  num_states, tile = len(h0s), (block_t, _pallas.WARPGROUP)
  outs = plgpu.kernel(
      _gpu_scan_kernel(step, len(xs), num_states, length, reverse, block_t,
                       padded_t // block_t),
      out_type=[jax.ShapeDtypeStruct((batch, padded_t, padded_d), out_dtype)] * num_states
      + [jax.ShapeDtypeStruct((batch, padded_d), F32)] * num_states,
      scratch_types=[plgpu.SMEM(tile, x.dtype) for x in xs]
      + [plgpu.SMEM(tile, out_dtype)] * num_states
      + [plgpu.SMEM((_pallas.WARPGROUP,), F32)] * num_states
      + [plgpu.Barrier(num_barriers=len(xs) + num_states)],
      grid=(batch, padded_d // _pallas.WARPGROUP), grid_names=("batch", "channels"),
      **({} if interpret is None else {"interpret": interpret}),
  )(*xs, *h0s)
  return ([h[:, :length, :width] for h in outs[:num_states]],
          [f[:, :width] for f in outs[num_states:]])


def _linear_call(a, b, h0, *, reverse, block_t, block_d, interpret, gpu=False):
  """h_t = a_t h_{t-1} + b_t over [B, T, D] (real or complex); returns (h, final). `gpu`: the
  Mosaic GPU kernel (block_d unused), else the TPU kernel."""
  scan = (functools.partial(_gpu_channel_scan, reverse=reverse, block_t=block_t,
                            interpret=interpret) if gpu else
          functools.partial(_channel_scan, reverse=reverse, block_t=block_t, block_d=block_d,
                            interpret=interpret))
  if jnp.iscomplexobj(a) or jnp.iscomplexobj(b) or jnp.iscomplexobj(h0):
    parts = [f(x) for x in (a, b) for f in (jnp.real, jnp.imag)]
    (h_re, h_im), (f_re, f_im) = scan(_complex_step, parts, [jnp.real(h0), jnp.imag(h0)], F32)
    return lax.complex(h_re, h_im), lax.complex(f_re, f_im)
  dtype = jnp.result_type(a, b)
  out_dtype = dtype if dtype.itemsize < 4 else F32  # bfloat16 in, bfloat16 out
  (h,), (final,) = scan(_real_step, [a, b], [h0], out_dtype)
  return h, final


def _linear(a, b, h0, reverse, block_t, block_d):
  kernel = functools.partial(_linear_call, reverse=reverse, block_t=block_t, block_d=block_d)
  return _pallas.on_platform("linear_scan", a, b, h0, tpu=kernel,
                             cuda=functools.partial(kernel, gpu=True))


def _shift(x, first, reverse):
  """x one step back in scan order: [first, x_0, ..., x_{T-2}] (mirrored when reverse)."""
  first = first[:, None].astype(x.dtype)
  if reverse:
    return jnp.concatenate([x[:, 1:], first], axis=1)
  return jnp.concatenate([first, x[:, :-1]], axis=1)


def _next(x, reverse):
  """x one step ahead in scan order, 1 past the last step: the backward scan's coefficients."""
  ones = jnp.ones_like(x[:, 0])
  if reverse:
    return jnp.concatenate([ones[:, None], x[:, :-1]], axis=1)
  return jnp.concatenate([x[:, 1:], ones[:, None]], axis=1)


def _first(x, reverse):
  return x[:, -1] if reverse else x[:, 0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _linear_scan(a, b, h0, reverse, block_t, block_d):
  """The kernel with its backward: a, b [B, T, D]; h0 [B, D]. Returns (h, final)."""
  return _linear(a, b, h0, reverse, block_t, block_d)


def _linear_scan_fwd(a, b, h0, reverse, block_t, block_d):
  h, final = _linear(a, b, h0, reverse, block_t, block_d)
  return (h, final), (a, b, h0, h)


def _linear_scan_bwd(reverse, block_t, block_d, residuals, cotangents):
  a, b, h0, h = residuals
  dh, dfinal = cotangents
  g, g_first = _linear(_next(a, reverse), dh, dfinal, not reverse, block_t, block_d)
  da = g.astype(a.dtype) * _shift(h, h0, reverse).astype(a.dtype)
  dh0 = _first(a, reverse) * g_first
  return (da.astype(a.dtype), g.astype(b.dtype), dh0.astype(h0.dtype))


_linear_scan.defvjp(_linear_scan_fwd, _linear_scan_bwd)


def _flat(x):
  return x.reshape(x.shape[0], x.shape[1], -1)


def linear_scan(a, b, h0, resets, reverse=False, *, block_t=256, block_d=512):
  """Kernel form of `reference.linear_scan` (same arguments and results), accumulating in
  float32 (complex64): h comes back in bfloat16 for bfloat16 a, b, else float32 / complex64;
  the final state in h0's dtype.

  a, b: [B, T, ...]; h0: [B, ...]; resets: [B, T, ...] bools (a reset zeroes a_t).
  block_t: time steps per grid step; block_d: channels per program (a multiple of 128; TPU).
  The Mosaic GPU kernel (cuda) takes 128 channels per program and min(block_t, 64) steps per
  SMEM tile.
  """
  a = jnp.where(resets, 0, a)
  h, final = _linear_scan(_flat(a), _flat(b), h0.reshape(h0.shape[0], -1), reverse,
                          block_t, block_d)
  return h.reshape(a.shape), final.reshape(h0.shape).astype(h0.dtype)


def _log_call(log_a, log_b, resets, log_h0, *, block_t, block_d, interpret):
  (log_h,), (final,) = _channel_scan(
      _log_step, [log_a, log_b, resets], [log_h0], F32, reverse=False, block_t=block_t,
      block_d=block_d, interpret=interpret)
  return log_h, final


def _log_gpu_call(log_a, log_b, resets, log_h0, *, block_t, interpret):
  """The Mosaic GPU kernel: segment starts enter as log_a = -inf (`_log_step_gpu`)."""
  log_a = jnp.where(resets > 0, -jnp.inf, log_a)
  (log_h,), (final,) = _gpu_channel_scan(
      _log_step_gpu, [log_a, log_b], [log_h0], F32, reverse=False, block_t=block_t,
      interpret=interpret)
  return log_h, final


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _log_linear_scan(log_a, log_b, resets, log_h0, block_t, block_d):
  """The log-space kernel with its backward: log_a, log_b [B, T, D]; resets [B, T, 1] float
  (1 where a segment starts); log_h0 [B, D]. Returns (log h, log h_T)."""
  kernel = functools.partial(_log_call, block_t=block_t, block_d=block_d)
  return _pallas.on_platform("log_linear_scan", log_a, log_b, resets, log_h0, tpu=kernel,
                             cuda=functools.partial(_log_gpu_call, block_t=block_t))


def _log_linear_scan_fwd(log_a, log_b, resets, log_h0, block_t, block_d):
  log_h, final = _log_linear_scan(log_a, log_b, resets, log_h0, block_t, block_d)
  return (log_h, final), (log_a, log_b, resets, log_h0, log_h)


def _log_linear_scan_bwd(block_t, block_d, residuals, cotangents):
  log_a, log_b, resets, log_h0, log_h = residuals
  d_log_h, d_final = cotangents
  # w_t = d log h_t / d log h_{t-1} = d log h_t / d log_a_t (0 at a reset)
  w = jnp.where(resets > 0, 0, jnp.exp(log_a + _shift(log_h, log_h0, False) - log_h))
  g, g_first = _linear(_next(w, False), d_log_h, d_final, True, block_t, block_d)
  return ((g * w).astype(log_a.dtype), (g * jnp.exp(log_b - log_h)).astype(log_b.dtype),
          jnp.zeros_like(resets), w[:, 0] * g_first)


_log_linear_scan.defvjp(_log_linear_scan_fwd, _log_linear_scan_bwd)


def log_linear_scan(log_a, log_b, log_h0, resets, *, block_t=256, block_d=512):
  """Kernel form of `reference.log_linear_scan` (same arguments and results), in float32.

  log_a, log_b: [B, T, ...]; log_h0: [B, ...]; resets: [B, T, 1...] bools.
  """
  out_dtype = log_h0.dtype
  batch, length = log_a.shape[:2]
  flags = resets.reshape(batch, length, -1).astype(F32)
  log_h, final = _log_linear_scan(_flat(log_a), _flat(log_b), flags,
                                  log_h0.reshape(batch, -1).astype(F32), block_t, block_d)
  return (log_h.reshape(log_a.shape).astype(out_dtype),
          final.reshape(log_h0.shape).astype(out_dtype))
