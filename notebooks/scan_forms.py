# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The forms of each op agree
#
# Every op in `layers.ops` has one calling convention and several forms (`impl=`): the
# sequential `"reference"` (a `lax.scan` that reads like the paper's equation) and the fast
# ones (associative scan, chunked, parallel, FFT; Pallas kernels join here, in interpret mode
# on CPU, once registered). This notebook runs every registered form of every op on the same
# inputs in float64 and shows they agree with the reference, then times them against T.

# %%
import functools
import pathlib
import sys

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt

jax.config.update("jax_enable_x64", True)
ROOT = next(p for p in [pathlib.Path.cwd(), *pathlib.Path.cwd().parents]
            if (p / "benchmarks").is_dir())
sys.path.insert(0, str(ROOT))  # benchmarks/ (timing helpers) lives beside the packages

from benchmarks import common as bench  # noqa: E402
from layers import ops  # noqa: E402
from layers.ops import common  # noqa: E402

{op: tuple(forms) for op, forms in common.FORMS.items()}

# %% [markdown]
# ## Inputs per op
# Random inputs at initialisation scale, a nonzero initial state where the op takes one:
# `inputs[op](T, dtype)` returns `(call, args)`: `call(*args, impl=...)` gives the op's
# (output, final state) in that form.

# %%
B, D, H, K, V, N = 2, 16, 2, 8, 8, 4


def _normal(key, shape, dtype):
  return jax.random.normal(jax.random.key(key), shape, dtype)


def _unit(x):
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def linear_scan_inputs(T, dtype):
  a = jax.random.uniform(jax.random.key(0), (B, T, D), dtype, 0.5, 0.99)
  b, h0 = _normal(1, (B, T, D), dtype), _normal(2, (B, D), dtype)
  return (lambda a, b, h0, impl: ops.linear_scan(a, b, h0, impl=impl)), (a, b, h0)


def log_linear_scan_inputs(T, dtype):
  log_a = jnp.log(jax.random.uniform(jax.random.key(0), (B, T, D), dtype, 0.5, 0.99))
  log_b, h0 = _normal(1, (B, T, D), dtype), jnp.ones((B, D), dtype)
  return (lambda *x, impl: ops.log_linear_scan(*x, impl=impl)), (log_a, log_b, h0)


def selective_scan_inputs(T, dtype):
  u, delta, z = (_normal(i, (B, T, D), dtype) for i in range(3))
  A = -jnp.broadcast_to(jnp.arange(1, N + 1, dtype=dtype), (D, N))
  Bm, C = _normal(3, (B, T, N), dtype), _normal(4, (B, T, N), dtype)
  h0 = _normal(5, (B, D, N), dtype)
  return ((lambda u, delta, A, Bm, C, z, h0, impl: ops.selective_scan(
      u, delta, A, Bm, C, jnp.ones(D, dtype), z, jnp.full(D, -3.0, dtype), True, h0,
      impl=impl)), (u, delta, A, Bm, C, z, h0))


def linear_attention_inputs(T, dtype):
  q, k = (_unit(_normal(i, (B, T, H, K), dtype)) for i in range(2))
  v, S0 = _normal(2, (B, T, H, V), dtype), _normal(3, (B, H, K, V), dtype)
  g = -jax.random.uniform(jax.random.key(4), (B, T, H), dtype, 0.01, 0.5)
  return ((lambda q, k, v, g, S0, impl: ops.linear_attention(q, k, v, g, initial_state=S0,
                                                              impl=impl)), (q, k, v, g, S0))


def gated_delta_rule_inputs(T, dtype):
  q, k = (_unit(_normal(i, (B, T, H, K), dtype)) for i in range(2))
  v, S0 = _normal(2, (B, T, H, V), dtype), _normal(3, (B, H, K, V), dtype)
  beta = jax.random.uniform(jax.random.key(4), (B, T, H), dtype, 0.05, 0.95)
  g = -jax.random.uniform(jax.random.key(5), (B, T, H), dtype, 0.01, 0.5)
  return ((lambda q, k, v, beta, g, S0, impl: ops.gated_delta_rule(
      q, k, v, beta, g, initial_state=S0, impl=impl)), (q, k, v, beta, g, S0))


def s4d_conv_inputs(T, dtype):
  u = _normal(0, (B, T, D), dtype)
  log_dt = jnp.log(jnp.full((D,), 0.05, dtype))
  A_re = jnp.full((D, N // 2), -0.5, dtype)
  A_im = jnp.pi * jnp.broadcast_to(jnp.arange(N // 2, dtype=dtype), (D, N // 2))
  C = _normal(1, (D, N // 2), dtype) + 1j * _normal(2, (D, N // 2), dtype)
  x0 = (_normal(3, (B, D, N // 2), dtype) + 1j * _normal(4, (B, D, N // 2), dtype)) / 10
  return ((lambda u, log_dt, A_re, A_im, C, x0, impl: ops.s4d_conv(
      u, log_dt, A_re, A_im, C, initial_state=x0, impl=impl)), (u, log_dt, A_re, A_im, C, x0))


def attention_inputs(T, dtype):
  q, k, v = (_normal(i, (B, T, H, K), dtype) for i in range(3))
  return (lambda q, k, v, impl: (ops.attention(q, k, v, impl=impl), None)), (q, k, v)


def attention_prefill_inputs(T, dtype):
  q, k, v = (_normal(i, (B, T, H, K), dtype) for i in range(3))
  return (lambda q, k, v, impl: ops.attention_prefill(q, k, v, impl=impl)), (q, k, v)


def product_key_topk_inputs(T, dtype, n_keys=16, half=4, topk=4):
  q = _normal(0, (B, T, H, 2, half), dtype)
  keys = _normal(1, (H, 2, n_keys, half), dtype)
  return (lambda q, keys, impl: ops.product_key_topk(q, keys, topk=topk, impl=impl)), (q, keys)


def memory_lookup_inputs(T, dtype, rows=256, topk=4):
  values = _normal(0, (rows, V), dtype)
  indices = jax.random.randint(jax.random.key(1), (B, T, H, topk), 0, rows)
  weights = jax.nn.softmax(_normal(2, (B, T, H, topk), dtype), axis=-1)
  return ((lambda values, indices, weights, impl: (
      ops.memory_lookup(values, indices, weights, impl=impl), None)),
      (values, indices, weights))


inputs = {"linear_scan": linear_scan_inputs, "log_linear_scan": log_linear_scan_inputs,
          "selective_scan": selective_scan_inputs, "linear_attention": linear_attention_inputs,
          "gated_delta_rule": gated_delta_rule_inputs, "s4d_conv": s4d_conv_inputs,
          "attention": attention_inputs, "attention_prefill": attention_prefill_inputs,
          "product_key_topk": product_key_topk_inputs, "memory_lookup": memory_lookup_inputs}
missing = set(common.FORMS) - set(inputs)
assert not missing, f"add inputs for the new op(s) {missing}"

# %% [markdown]
# ## Agreement with the reference (float64, T = 100: not a multiple of any chunk size)
# Norm-relative error ‖form − reference‖ / ‖reference‖ of the output and the final state.

# %%
def rel(a, b):
  return max((float(jnp.linalg.norm(x - y) / jnp.linalg.norm(y))
              for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
              if jnp.issubdtype(y.dtype, jnp.inexact)), default=0.0)


errors = {}
for op, forms in common.FORMS.items():
  call, args = inputs[op](100, jnp.float64)
  reference = jax.jit(functools.partial(call, impl="reference"))(*args)
  for impl in forms:
    if impl != "reference":
      errors[op, impl] = rel(jax.jit(functools.partial(call, impl=impl))(*args), reference)
  if len(forms) == 1:
    print(f"{op:18s} reference only")
for (op, impl), err in errors.items():
  print(f"{op:18s} {impl:12s} vs reference: {err:.1e}")
assert all(err < 1e-5 for err in errors.values()), errors

# %% [markdown]
# ## Time against T (float32, forward, jitted, best of 3)
# On a CPU the sequential reference is often the fastest (it streams memory once, and
# `"auto"` picks it there: `layers.ops.common.AUTO_FORMS`); the parallel forms pay off on
# accelerators. `python -m benchmarks` measures the same at larger sizes. Pallas kernels run
# in interpret mode on a CPU (correct, not fast), so they are timed only on an accelerator.

# %%
lengths = (128, 512, 2048)
timed = [op for op, forms in common.FORMS.items() if len(forms) > 1]
fig, axes = plt.subplots(-(-len(timed) // 3), 3, figsize=(13, 3.5 * -(-len(timed) // 3)),
                         constrained_layout=True)
on_cpu = jax.default_backend() == "cpu"
for ax, op in zip(axes.flat, timed):
  for impl in (f for f in common.FORMS[op] if not (on_cpu and f == "pallas")):
    ms = []
    for T in lengths:
      call, args = inputs[op](T, jnp.float32)
      ms.append(1e3 * bench.time_fn(jax.jit(functools.partial(call, impl=impl)), *args,
                                    repeats=3))
    ax.loglog(lengths, ms, "o-", label=impl)
  ax.set(title=op, xlabel="T", ylabel="ms")
  ax.legend()
plt.show()
print("notebook done")
