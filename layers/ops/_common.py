"""Shared plumbing of the ops: input checks, `impl` resolution, segment resets, dtypes.

Shape legend used across `layers.ops`:
  B batch, T time, D channels, H heads, K key dim, V value dim, N state size, C chunk/cache.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

AUTO = "auto"


def resolve_impl(op: str, impl: str, forms: Sequence[str], cpu_default: str,
                 accelerator_default: str | None = None) -> str:
  """Returns the concrete form for `impl`; "auto" picks per platform.

  "auto" gives `accelerator_default` (Pallas when an op has it) on GPU/TPU and
  `cpu_default` elsewhere. An unknown name raises a ValueError listing `forms`.
  """
  if impl == AUTO:
    platform = jax.default_backend()
    if accelerator_default is not None and platform in ("gpu", "cuda", "rocm", "tpu"):
      return accelerator_default
    return cpu_default
  if impl not in forms:
    known = ", ".join(repr(f) for f in (*forms, AUTO))
    raise ValueError(f"{op}: unknown impl={impl!r}; expected one of {known}")
  return impl


def check_rank(op: str, name: str, x, rank: int, layout: str) -> None:
  """Raises a ValueError unless `x` has `rank` dimensions (named by `layout`)."""
  if jnp.ndim(x) != rank:
    raise ValueError(f"{op}: {name} must have shape {layout} (rank {rank}); "
                     f"got shape {tuple(jnp.shape(x))}")


def check_shape(op: str, name: str, x, expected: Sequence[int], layout: str) -> None:
  """Raises a ValueError unless `x.shape == expected` (described by `layout`)."""
  if tuple(jnp.shape(x)) != tuple(expected):
    raise ValueError(f"{op}: {name} must have shape {layout} = {tuple(expected)}; "
                     f"got {tuple(jnp.shape(x))}")


def check_segment_ids(op: str, segment_ids, batch: int, length: int) -> None:
  """`segment_ids` must be an integer array `[B, T]` (or None)."""
  if segment_ids is None:
    return
  check_shape(op, "segment_ids", segment_ids, (batch, length), "[B, T]")
  if not jnp.issubdtype(jnp.asarray(segment_ids).dtype, jnp.integer):
    raise ValueError(f"{op}: segment_ids must be an integer array [B, T]; "
                     f"got dtype {jnp.asarray(segment_ids).dtype}")


def segment_starts(segment_ids: jax.Array | None, batch: int, length: int,
                   reverse: bool = False) -> jax.Array:
  """Reset flags `[B, T]`: True where a segment starts (in scan direction), never at the first step.

  A boundary is where the id changes. Scanning in reverse, a segment starts at its last token.
  """
  if segment_ids is None:
    return jnp.zeros((batch, length), bool)
  change = segment_ids[:, 1:] != segment_ids[:, :-1]
  no_reset = jnp.zeros((batch, 1), bool)
  if reverse:
    return jnp.concatenate([change, no_reset], axis=1)
  return jnp.concatenate([no_reset, change], axis=1)


def accumulation_dtype(*xs) -> jnp.dtype:
  """float32, or the inputs' dtype when wider (float64, complex)."""
  return jnp.result_type(*xs, jnp.float32)


def broadcast_flags(flags: jax.Array, like: jax.Array) -> jax.Array:
  """Appends trailing unit axes so `[B, T]` flags broadcast against `[B, T, ...]`."""
  return flags.reshape(flags.shape + (1,) * (like.ndim - flags.ndim))
