"""Analytic cost of a JAX function from its jaxpr, and this machine's roofline constants.

XLA's `cost_analysis()` counts the body of a `lax.scan` / `fori_loop` once, so an op looped
T times is undercounted T-fold. `cost` walks the jaxpr instead and multiplies every loop body
by its trip count:

  flops   = sum over dot_general / conv of 2 * (output elements) * (contracted size)
            + one per output element of every arithmetic primitive (input elements for
            reductions and cumulative ops) + 5 N log2 N per length-N FFT;
  bytes   = the operands and result of every matmul, conv and FFT (each must cross memory at
            least once; elementwise work is assumed fused into them, so this is a lower bound);
  loop_steps = iterations run one after another (a scan of length L whose body holds a loop
            of M steps counts L * (1 + M)).

A `cond` counts its costliest branch; a `while` with a data-dependent trip count counts its
body once and is reported in `unknown_loops`.

The bound of a program is max(flops / matmul FLOP/s, bytes / memory bandwidth) with both
rates measured on this machine (`matmul_flops_per_s`, `memory_bandwidth`). Sequential loop
iterations are not in the bound: a step's time above it divided by its loop_steps is the cost
per iteration that the loops add.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common

# primitives that move or relabel data without arithmetic
FREE = frozenset({
    "reshape", "broadcast_in_dim", "transpose", "squeeze", "expand_dims", "slice",
    "dynamic_slice", "dynamic_update_slice", "concatenate", "pad", "gather", "convert_element_type",
    "iota", "copy", "copy_p", "rev", "bitcast_convert_type", "stop_gradient", "empty2",
    "device_put", "sharding_constraint", "optimization_barrier", "split", "real", "imag",
    "random_bits", "random_seed", "random_wrap", "random_unwrap", "threefry2x32",
})
# primitives whose cost is one per input element
REDUCTIONS = frozenset({
    "reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or",
    "argmax", "argmin", "cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp",
    "reduce_precision", "sort", "top_k",
})


@dataclasses.dataclass
class Cost:
  """Analytic totals of one program (see the module docstring)."""
  flops: float = 0.0
  bytes: float = 0.0
  loop_steps: float = 0.0
  unknown_loops: int = 0

  def __add__(self, other: Cost) -> Cost:
    return Cost(self.flops + other.flops, self.bytes + other.bytes,
                self.loop_steps + other.loop_steps, self.unknown_loops + other.unknown_loops)

  def __mul__(self, n: float) -> Cost:
    return Cost(self.flops * n, self.bytes * n, self.loop_steps * n, self.unknown_loops)


def _size(aval) -> int:
  return int(np.prod(aval.shape, dtype=np.int64))


def _bytes(*avals) -> int:
  return sum(_size(a) * np.dtype(a.dtype).itemsize for a in avals)


def _matmul_flops(eqn) -> float:
  lhs = eqn.invars[0].aval
  out = eqn.outvars[0].aval
  if eqn.primitive.name == "dot_general":
    (contract, _), _ = eqn.params["dimension_numbers"]
    inner = int(np.prod([lhs.shape[d] for d in contract], dtype=np.int64))
  else:  # conv_general_dilated: every output element contracts one filter
    rhs = eqn.invars[1].aval
    out_features = rhs.shape[eqn.params["dimension_numbers"].rhs_spec[0]]
    inner = _size(rhs) // out_features
  complex_factor = 4 if jnp.issubdtype(out.dtype, jnp.complexfloating) else 1
  return 2.0 * _size(out) * inner * complex_factor


def _fft_flops(eqn) -> float:
  n = int(np.prod(eqn.params["fft_lengths"]))
  batch = max(_size(a) for a in (eqn.invars[0].aval, eqn.outvars[0].aval)) / max(n, 1)
  return 5.0 * n * math.log2(max(n, 2)) * batch


def _subjaxprs(eqn):
  """The jaxprs held by a higher-order primitive's parameters (pjit, remat, custom_jvp/vjp)."""
  for value in eqn.params.values():
    for v in value if isinstance(value, (tuple, list)) else (value,):
      if hasattr(v, "eqns"):
        yield v
      elif hasattr(v, "jaxpr") and hasattr(v.jaxpr, "eqns"):
        yield v.jaxpr


def jaxpr_cost(jaxpr) -> Cost:
  """Cost of an (open) jaxpr, loops multiplied by their trip counts."""
  total = Cost()
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "scan":
      body = jaxpr_cost(eqn.params["jaxpr"].jaxpr)
      length = eqn.params["length"]
      total += body * length + Cost(loop_steps=length)
    elif name == "while":
      total += jaxpr_cost(eqn.params["body_jaxpr"].jaxpr) + Cost(loop_steps=1, unknown_loops=1)
    elif name == "cond":
      total += max((jaxpr_cost(b.jaxpr) for b in eqn.params["branches"]),
                   key=lambda c: c.flops)
    elif name in ("dot_general", "conv_general_dilated"):
      total += Cost(flops=_matmul_flops(eqn),
                    bytes=_bytes(*(v.aval for v in eqn.invars), eqn.outvars[0].aval))
    elif name == "fft":
      total += Cost(flops=_fft_flops(eqn), bytes=_bytes(eqn.invars[0].aval, eqn.outvars[0].aval))
    else:
      subs = list(_subjaxprs(eqn))
      if subs:  # a call: its first jaxpr is what runs (custom_jvp/vjp keep the primal first)
        total += jaxpr_cost(subs[0])
      elif name in REDUCTIONS:
        total += Cost(flops=float(sum(_size(v.aval) for v in eqn.invars[:1])))
      elif name not in FREE:
        total += Cost(flops=float(sum(_size(v.aval) for v in eqn.outvars)))
  return total


def cost(fn, *args) -> Cost:
  """Analytic cost of `fn(*args)` (args may be arrays or ShapeDtypeStructs)."""
  return jaxpr_cost(jax.make_jaxpr(fn)(*args).jaxpr)


def matmul_flops_per_s(n: int = 2048) -> float:
  """Achieved FLOP/s of a jitted float32 n x n matmul."""
  a = jax.random.normal(jax.random.key(0), (n, n))
  return 2 * n ** 3 / common.time_fn(jax.jit(jnp.matmul), a, a, repeats=10)


def memory_bandwidth(n: int = 1 << 26) -> float:
  """Achieved read bytes/s of a jitted float32 sum over n elements (256 MiB: beyond the caches;
  a reduction writes nothing, so no fresh output pages are touched)."""
  x = jnp.ones((n,), jnp.float32)
  return 4 * n / common.time_fn(jax.jit(jnp.sum), x, repeats=10)
