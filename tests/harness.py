"""The harness every op test reuses: norm-relative comparisons of forms against the oracle.

An op under test is wrapped as `fn(time_args, initial_state, segment_ids) -> (out, final)`,
where every array in `time_args` is `[B, T, ...]`. Outputs, final states and the gradients of
every time argument and of the initial state come from one `jax.vjp` with a random cotangent.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

OUT_TOL = 1e-5   # outputs and final states, float64
GRAD_TOL = 1e-4  # gradients, float64


def init_variables(module, *args, **kwargs):
  """The jitted `module.init(*args)` as plain arrays (the logical axis names dropped)."""
  return nn.unbox(jax.jit(module.init)(*args, **kwargs))


def rand(seed: int, shape, dtype=jnp.float64, low=None, high=None):
  """Deterministic test input: standard normal, or uniform in [low, high)."""
  rng = np.random.default_rng(seed)
  if low is not None:
    x = rng.uniform(low, high, shape)
  else:
    x = rng.standard_normal(shape)
    if jnp.issubdtype(dtype, jnp.complexfloating):
      x = x + 1j * rng.standard_normal(shape)
  return jnp.asarray(x, dtype)


def rel_err(actual, expected) -> float:
  """max over leaves of ||actual - expected|| / ||expected||."""
  errs = jax.tree.map(
      lambda a, b: float(jnp.linalg.norm((jnp.asarray(a) - jnp.asarray(b)).ravel())
                         / max(float(jnp.linalg.norm(jnp.asarray(b).ravel())), 1e-30)),
      actual, expected)
  return max(jax.tree.leaves(errs), default=0.0)


def assert_close(actual, expected, tol: float, what: str) -> None:
  """Asserts norm-relative closeness of two pytrees, naming `what` on failure."""
  assert jax.tree.structure(actual) == jax.tree.structure(expected), what
  for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    assert jnp.shape(a) == jnp.shape(b), f"{what}: shape {jnp.shape(a)} != {jnp.shape(b)}"
    assert bool(jnp.all(jnp.isfinite(a))), f"{what}: non-finite values"
  err = rel_err(actual, expected)
  assert err <= tol, f"{what}: norm-relative error {err:.3g} > {tol:.1g}"


def _cotangent(seed, out):
  leaves, tree = jax.tree.flatten(out)
  return tree.unflatten([rand(seed + i, x.shape, x.dtype)
                         for i, x in enumerate(leaves)])


def value_and_grads(fn, time_args, initial_state, segment_ids=None, seed=0):
  """(outputs, final state) and the gradients of (time_args, initial_state) from one jitted
  vjp with a random cotangent."""
  def run(xs, h0, cotangent):
    out, pullback = jax.vjp(lambda xs, h0: fn(xs, h0, segment_ids), xs, h0)
    return out, pullback(cotangent)

  xs = tuple(time_args)
  cotangent = _cotangent(seed, jax.eval_shape(lambda: fn(xs, initial_state, segment_ids)))
  return jax.jit(run)(xs, initial_state, cotangent)


def assert_form_matches_reference(fn, ref, time_args, initial_state, segment_ids=None,
                                  out_tol=OUT_TOL, grad_tol=GRAD_TOL, what="form"):
  """Outputs, final state and all gradients of `fn` equal those of the oracle `ref`."""
  out, grads = value_and_grads(fn, time_args, initial_state, segment_ids)
  out_ref, grads_ref = value_and_grads(ref, time_args, initial_state, segment_ids)
  assert_close(out[0], out_ref[0], out_tol, f"{what}: outputs")
  assert_close(out[1], out_ref[1], out_tol, f"{what}: final state")
  for i, (g, g_ref) in enumerate(zip(grads[0], grads_ref[0])):
    assert_close(g, g_ref, grad_tol, f"{what}: gradient of time argument {i}")
  assert_close(grads[1], grads_ref[1], grad_tol, f"{what}: gradient of initial_state")


def segment_bounds(segment_ids_row) -> list[tuple[int, int]]:
  """[(start, end)] of the contiguous runs of one row of segment ids."""
  ids = np.asarray(segment_ids_row)
  cuts = [0, *(np.flatnonzero(ids[1:] != ids[:-1]) + 1), len(ids)]
  return list(zip(cuts[:-1], cuts[1:]))


def assert_packed_equals_alone(fn, time_args, initial_state, segment_ids, tol=OUT_TOL):
  """A packed batch equals each of its segments run alone.

  The first segment of a row starts from that row's initial state, later ones from zero; the
  packed final state is that of the row's last segment. A padding segment (id 0) runs alone as
  padding (all ids 0): ops zero padding before any product.
  """
  fn = jax.jit(fn)
  out, final = fn(tuple(time_args), initial_state, segment_ids)
  for b in range(segment_ids.shape[0]):
    bounds = segment_bounds(segment_ids[b])
    for n, (start, end) in enumerate(bounds):
      h0 = initial_state[b:b + 1]
      if n > 0:
        h0 = jnp.zeros_like(h0)
      xs = tuple(x[b:b + 1, start:end] for x in time_args)
      alone_ids = None if segment_ids[b, start] else jnp.zeros((1, end - start), jnp.int32)
      out_alone, final_alone = fn(xs, h0, alone_ids)
      assert_close(out[b:b + 1, start:end], out_alone, tol,
                   f"row {b} segment {n} [{start}:{end}] outputs")
    assert_close(final[b:b + 1], final_alone, tol, f"row {b} final state")


def assert_carry_equals_one_pass(fn, time_args, initial_state, split, tol=OUT_TOL):
  """Running [0, split) then [split, T) with the carried state equals one pass over [0, T)."""
  fn = jax.jit(fn)
  out, final = fn(tuple(time_args), initial_state, None)
  out_a, state_a = fn(tuple(x[:, :split] for x in time_args), initial_state, None)
  out_b, state_b = fn(tuple(x[:, split:] for x in time_args), state_a, None)
  assert_close(jnp.concatenate([out_a, out_b], axis=1), out, tol, "two calls: outputs")
  assert_close(state_b, final, tol, "two calls: final state")


def packed_segment_ids(batch: int, length: int, seed: int = 0, num_segments: int = 3):
  """[B, T] int32 ids of `num_segments` contiguous runs per row, cut at random points."""
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(batch):
    cuts = np.sort(rng.choice(np.arange(1, length), num_segments - 1, replace=False))
    rows.append(np.searchsorted(cuts, np.arange(length), side="right") + 1)
  return jnp.asarray(np.stack(rows), jnp.int32)
