"""Plumbing shared by the Pallas kernels of every op (`layers/ops/<op>/pallas.py`).

- `on_platform` picks a kernel body per platform when the computation is lowered
  (`jax.lax.platform_dependent`): the TPU kernel on tpu, the GPU kernel on cuda (none yet: an
  explicit error), the TPU kernel in interpret mode on cpu (correct and slow: tests, debugging).
  So `jax.export(..., platforms=["tpu"])` lowers the real kernel from a CPU machine.
- `VERIFIED` records where the hardware-marked tests (`tpu` / `gpu` pytest markers) have passed;
  only there does `impl="auto"` pick a kernel (`common.resolve_impl`).
- Layout helpers: wrappers pad time and channels (`pad_axis`) to whole blocks and hold the
  backend compiler parameters here (`tpu_params`).

Shape legend: B batch, T time (Tp padded), D channels (Dp padded), N state size.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu

# (platform, device kind, jax version) where a platform's hardware-marked tests passed, e.g.
# ("tpu", "TPU v5 lite", "0.10.2"). Empty: no TPU or GPU run has verified a kernel yet, so
# "auto" keeps the XLA forms everywhere and impl="pallas" is opt-in.
VERIFIED: tuple[tuple[str, str, str], ...] = ()

LANES = 128  # TPU vector lanes: channel blocks are multiples of this


def verified() -> bool:
  """Whether the default device (platform, kind) and this jax version are in VERIFIED."""
  device = jax.devices()[0]
  return (device.platform, device.device_kind, jax.__version__) in VERIFIED


def sublanes(dtype) -> int:
  """Rows of one TPU vector register tile for `dtype`: 8 for 32-bit, 16 for 16-bit types."""
  return 8 * max(1, 4 // jnp.dtype(dtype).itemsize)


def round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def pad_axis(x: jax.Array, axis: int, size: int, value=0) -> jax.Array:
  """`x` padded at the end of `axis` to `size` with `value`."""
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, pad, constant_values=value)


def tpu_params(*dimension_semantics: str) -> pltpu.CompilerParams:
  """Mosaic compiler parameters of a kernel whose grid axes have these semantics
  ("parallel" or "arbitrary": an axis that carries state in scratch memory)."""
  return pltpu.CompilerParams(dimension_semantics=dimension_semantics)


def on_platform(op: str, *args, tpu: Callable, cuda: Callable | None = None):
  """`tpu(*args, interpret=False)` on TPU, `cuda(*args)` on GPU, and the TPU kernel in
  interpret mode (`tpu(*args, interpret=True)`) on CPU; chosen when the computation is
  lowered, so one jitted function exports for each platform.

  Without a GPU kernel, calling on a GPU raises a ValueError (and lowering for cuda fails):
  TPU code never runs there.
  """
  if cuda is None and jax.default_backend() in ("gpu", "cuda", "rocm"):
    raise ValueError(f"{op}: impl='pallas' has no GPU kernel yet; use impl='auto' (the XLA "
                     "forms) on GPUs")
  branches = {"tpu": functools.partial(tpu, interpret=False),
              "cpu": functools.partial(tpu, interpret=True)}
  if cuda is not None:
    branches["cuda"] = cuda
  return jax.lax.platform_dependent(*args, **branches)
