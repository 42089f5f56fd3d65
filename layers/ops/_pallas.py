"""Plumbing shared by the Pallas kernels of every op (`layers/ops/<op>/pallas.py`).

- `on_platform` picks a kernel body per platform when the computation is lowered
  (`jax.lax.platform_dependent`): the TPU kernel on tpu, the Mosaic GPU kernel (`plgpu.kernel`,
  Hopper only: `check_hopper`) on cuda where the op has one (else an explicit error), and on
  cpu a kernel in interpret mode (correct and slow: tests, debugging) — the TPU kernel, or the
  GPU kernel in Mosaic GPU's interpreter while `CPU_INTERPRETS == "gpu"` (`interpret_gpu`).
  So `jax.export(..., platforms=["tpu"])` / `["cuda"]` lowers the real kernels from a CPU
  machine.
- `VERIFIED` records where the hardware-marked tests (`tpu` / `gpu` pytest markers) have passed;
  only there does `impl="auto"` pick a kernel (`common.resolve_impl`).
- Layout helpers: wrappers pad time and channels (`pad_axis`) to whole blocks and hold the
  backend compiler parameters here (`tpu_params`).

Shape legend: B batch, T time (Tp padded), D channels (Dp padded), N state size.
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.experimental.pallas import mosaic_gpu as plgpu
from jax.experimental.pallas import tpu as pltpu

# (platform, device kind, jax version) where a platform's hardware-marked tests passed, e.g.
# ("tpu", "TPU v5 lite", "0.10.2"). Empty: no TPU or GPU run has verified a kernel yet, so
# "auto" keeps the XLA forms everywhere and impl="pallas" is opt-in.
VERIFIED: tuple[tuple[str, str, str], ...] = ()

LANES = 128  # TPU vector lanes: channel blocks are multiples of this
WARPGROUP = 128  # threads of one Mosaic GPU program: its channel blocks are multiples of this

# Which kernel interpret mode runs on cpu: "tpu" (the TPU kernel, fast interpreter) or "gpu"
# (the Mosaic GPU kernel in its own, slower interpreter). Tests switch it with `interpret_gpu`.
CPU_INTERPRETS = "tpu"


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


def check_hopper(op: str) -> None:
  """Raises a ValueError unless the default GPU is a Hopper (compute capability 9.x, sm_90a:
  H100 / H200), the only GPU the Mosaic GPU kernels target (they use no tcgen05 for
  Blackwell and Mosaic GPU does not cover Ampere)."""
  device = jax.devices()[0]
  capability = str(getattr(device, "compute_capability", ""))
  if device.platform == "gpu" and not capability.startswith("9."):
    raise ValueError(f"{op}: impl='pallas' has Mosaic GPU kernels for Hopper (sm_90: H100, "
                     f"H200) only; this is {device.device_kind} (compute capability "
                     f"{capability or 'unknown'}); use impl='auto' (the XLA forms)")


def gpu_load(pairs, barriers):
  """Mosaic GPU: copies each (GMEM slice, SMEM ref) pair by TMA with its own barrier and waits
  for all."""
  for i, (src, dst) in enumerate(pairs):
    plgpu.copy_gmem_to_smem(src, dst, barriers.at[i])
  for i in range(len(pairs)):
    plgpu.barrier_wait(barriers.at[i])


def gpu_store(pairs):
  """Mosaic GPU: copies each (SMEM ref, GMEM slice) pair out and waits until the SMEM may be
  rewritten."""
  plgpu.commit_smem()
  for src, dst in pairs:
    plgpu.copy_smem_to_gmem(src, dst)
  plgpu.wait_smem_to_gmem(0)


@contextlib.contextmanager
def interpret_gpu():
  """Within this context, impl="pallas" on cpu runs the Mosaic GPU kernels (where an op has
  one) in Mosaic GPU's interpreter instead of the TPU kernels in theirs."""
  global CPU_INTERPRETS
  previous, CPU_INTERPRETS = CPU_INTERPRETS, "gpu"
  try:
    yield
  finally:
    CPU_INTERPRETS = previous


def gpu_interpret_params():
  """The Mosaic GPU interpreter's parameters (private in jax 0.10: `plgpu.kernel` rejects
  `interpret=True`)."""
  from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams
  return InterpretGPUParams()


def on_platform(op: str, *args, tpu: Callable, cuda: Callable | None = None):
  """`tpu(*args, interpret=False)` on TPU, `cuda(*args, interpret=None)` on GPU (a Hopper:
  `check_hopper`), and on CPU the TPU kernel in interpret mode (`tpu(*args,
  interpret=True)`), or the GPU kernel in Mosaic GPU's interpreter under `interpret_gpu()`;
  chosen when the computation is lowered, so one jitted function exports for each platform.

  Without a GPU kernel, calling on a GPU raises a ValueError (and lowering for cuda fails):
  TPU code never runs there.
  """
  if jax.default_backend() in ("gpu", "cuda", "rocm"):
    if cuda is None:
      raise ValueError(f"{op}: impl='pallas' has no GPU kernel yet; use impl='auto' (the XLA "
                       "forms) on GPUs")
    check_hopper(op)
  branches = {"tpu": functools.partial(tpu, interpret=False),
              "cpu": functools.partial(tpu, interpret=True)}
  if cuda is not None:
    branches["cuda"] = functools.partial(cuda, interpret=None)
    if CPU_INTERPRETS == "gpu":
      branches["cpu"] = functools.partial(cuda, interpret=gpu_interpret_params())
  return jax.lax.platform_dependent(*args, **branches)
