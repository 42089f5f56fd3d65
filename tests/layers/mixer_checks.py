"""Checks every causal sequence mixer passes, written once against the calling convention

  y, state = apply(v, x, state, segment_ids); state0 = apply(v, B, max_len,
  method="init_state"); y_t, state = apply(v, x_t, state, method="step").
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from tests import harness

TOL = 1e-10  # float64: the forms agree to rounding


@functools.partial(jax.jit, static_argnums=0)
def _apply(module, variables, x, state, segment_ids):
  return module.apply(variables, x, state, segment_ids)


def whole(module, variables):
  """(x, state=None, segment_ids=None) -> (y, state), jitted (one cache per module config)."""
  return lambda x, state=None, segment_ids=None: _apply(module, variables, x, state,
                                                        segment_ids)


@functools.lru_cache(maxsize=None)
def setup(make_module, batch, length, width, seed=0):
  """(module, variables, x) from a jitted init on x = rand(seed, [B, T, D]); cached."""
  module = make_module()
  x = harness.rand(seed, (batch, length, width))
  return module, harness.init_variables(module, jax.random.key(seed), x), x


def init_state(module, variables, batch_size, max_len):
  """The mixer's empty state for `max_len` tokens."""
  return module.apply(variables, batch_size, max_len, method="init_state")


@functools.partial(jax.jit, static_argnums=0)
def steps(module, variables, x, state):
  """Runs `step` over x: [B, T, D] from `state` (one lax.scan); returns (y, final state)."""
  def body(state, x_t):
    y_t, state = module.apply(variables, x_t, state, method="step")
    return state, y_t
  state, y = jax.lax.scan(body, state, jnp.moveaxis(x, 1, 0))
  return jnp.moveaxis(y, 0, 1), state


def take_row(tree, b):
  """Row b of every leaf, keeping the batch axis."""
  return jax.tree.map(lambda a: a[b:b + 1], tree)


def assert_step_equals_whole(module, variables, x):
  B, T, _ = x.shape
  y, state = whole(module, variables)(x)
  y_steps, state_steps = steps(module, variables, x, init_state(module, variables, B, T))
  harness.assert_close(y_steps, y, TOL, "step by step: outputs")
  harness.assert_close(state_steps, state, TOL, "step by step: final state")


def assert_prefill_then_step(module, variables, x, k, prefill_state):
  """prefill x[:, :k] (from `prefill_state`), then steps over the rest == one whole pass."""
  y, state = whole(module, variables)(x)
  y_pre, state_pre = whole(module, variables)(x[:, :k], prefill_state)
  y_steps, state_steps = steps(module, variables, x[:, k:], state_pre)
  harness.assert_close(jnp.concatenate([y_pre, y_steps], axis=1), y, TOL,
                       f"prefill {k} + steps: outputs")
  harness.assert_close(state_steps, state, TOL, f"prefill {k} + steps: final state")


def assert_two_calls_equal_one(module, variables, x, k, state0):
  """Two whole-sequence calls with the carried state == one call over the concatenation."""
  run = whole(module, variables)
  y, state = run(x, state0)
  y_a, state_a = run(x[:, :k], state0)
  y_b, state_b = run(x[:, k:], state_a)
  harness.assert_close(jnp.concatenate([y_a, y_b], axis=1), y, TOL, "two calls: outputs")
  harness.assert_close(state_b, state, TOL, "two calls: final state")


def causal_jacobian(module, variables, x):
  """|d y_t / d x_s| summed over batch and channels: [T, T] (rows t, columns s)."""
  jac = jax.jit(jax.jacrev(lambda x: module.apply(variables, x)[0]))(x)
  return jnp.abs(jac).sum(axis=(0, 2, 3, 5))


def assert_causal(module, variables, x, atol=0.0):
  """d y_t / d x_s == 0 for s > t (exactly when atol = 0) and != 0 on the diagonal."""
  jac = np.asarray(causal_jacobian(module, variables, x))
  future = jac[np.triu_indices(jac.shape[0], k=1)]
  assert future.max() <= atol * jac.max(), f"output depends on the future: {future.max():.3g}"
  assert np.all(np.diag(jac) > 0), "output ignores the current input"


def assert_packed_equals_alone(module, variables, x, segment_ids, state0, empty):
  """A packed batch == each segment run alone: the row's first segment from `state0`, later
  ones from `empty` (a state of the same capacity); the final state is the last segment's."""
  run = whole(module, variables)
  y, state = run(x, state0, segment_ids)
  for b in range(x.shape[0]):
    for n, (start, end) in enumerate(harness.segment_bounds(segment_ids[b])):
      h0 = take_row(state0 if n == 0 else empty, b)
      y_alone, state_alone = run(x[b:b + 1, start:end], h0)
      harness.assert_close(y[b:b + 1, start:end], y_alone, TOL,
                           f"row {b} segment {n} [{start}:{end}] outputs")
    harness.assert_close(take_row(state, b), state_alone, TOL, f"row {b} final state")
