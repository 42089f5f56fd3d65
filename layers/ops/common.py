"""Shared plumbing of the ops, public so layers use it too: the one `impl` dispatcher, the input
rule every op applies, shape checks, segment resets and accumulation dtypes.

Shape legend used across `layers.ops`:
  B batch, T time, D channels, H heads, K key dim, V value dim, N state size, C chunk/cache.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

AUTO = "auto"
# Every form name an op may offer; `impl` takes one of these.
IMPLS = ("reference", "associative", "compensated", "parallel", "chunk", "checkpointed",
         "blockwise", "fft", "product", "pallas", AUTO)
CHUNKED = ("chunk", "checkpointed", "blockwise")  # forms that take `chunk_size`
ACCELERATORS = ("gpu", "cuda", "rocm", "tpu")

# What "auto" means, per op and platform ("cpu" or "accelerator"): the fastest form measured
# there (benchmarks/). A Pallas kernel overrides them only on a device listed in
# `_pallas.VERIFIED` (where the hardware-marked tests have passed).
AUTO_FORMS: dict[str, dict[str, str]] = {
    # CPU: the sequential scan is 2-10x faster than the associative one at every T measured
    # (benchmarks/scan.py): O(T) work against O(T log T), memory streamed once.
    "linear_scan": {"cpu": "reference", "accelerator": "associative"},
    # compensated: the sequential scan's speed (1.02x forward, 1.14x forward+backward at
    # T = 16384) with float64-level accuracy in float32 (2.8e-7 against the plain scan's 6e-4
    # at a = 1 - 1e-4; benchmarks/scan.py)
    "log_linear_scan": {"cpu": "compensated", "accelerator": "associative"},
    # CPU: the sequential scan is 5-9x faster than the associative chunk form; checkpointed
    # (the sequential scan in rematerialised chunks of 64) keeps its forward and is 3.5x
    # faster forward+backward than the plain scan at T = 1024 and 4096 with 7x less temporary
    # memory: one chunk's residuals stay in cache (benchmarks/selective_scan.py).
    "selective_scan": {"cpu": "checkpointed", "accelerator": "chunk"},
    # chunk is as fast as parallel at T = 128 and faster beyond (benchmarks/linear_attention.py)
    "linear_attention": {"cpu": "chunk", "accelerator": "chunk"},
    "gated_delta_rule": {"cpu": "chunk", "accelerator": "chunk"},
    # the FFT convolution (with the scan for rows of many segments) trains ~2x faster than the
    # recurrence on padded LRA batches
    "s4d_conv": {"cpu": "fft", "accelerator": "fft"},
    "attention": {"cpu": "reference", "accelerator": "reference"},
    "attention_prefill": {"cpu": "reference", "accelerator": "reference"},
    # exact either way; not benchmarked yet: the product form scores 2n sub-keys and k^2
    # candidates per head where the reference scores all n^2 product keys
    "product_key_topk": {"cpu": "product", "accelerator": "product"},
    # the chunked bag never materialises [B, T, H, k, V] (forward or backward)
    "memory_lookup": {"cpu": "chunk", "accelerator": "chunk"},
}
# Where "auto" leaves AUTO_FORMS by length: op -> (T, form) used from T keys on. Attention:
# blockwise is 2.4-3.9x faster forward+backward from T = 1024 on (full causal and a 256-token
# window) and its memory is O(T * block), not O(T**2) (benchmarks/attention.py); at T = 512 a
# window of 256 is still faster dense.
LONG_FORMS: dict[str, tuple[int, str]] = {
    "attention": (1024, "blockwise"),
    "attention_prefill": (1024, "blockwise"),
}


def platform() -> str:
  """"accelerator" on GPU/TPU, else "cpu": the columns of AUTO_FORMS."""
  return "accelerator" if jax.default_backend() in ACCELERATORS else "cpu"


# op -> {form name: function}: each op's module registers its forms (`register`).
FORMS: dict[str, dict[str, Callable]] = {}


def register(op: str, forms: Mapping[str, Callable]) -> None:
  """Declares the forms of `op` (names from IMPLS; "reference" is the oracle)."""
  unknown = set(forms) - set(IMPLS)
  if "reference" not in forms or unknown or AUTO in forms:
    raise ValueError(f"{op}: forms must include 'reference' and use names from {IMPLS}; "
                     f"got {tuple(forms)}")
  FORMS[op] = dict(forms)


def resolve_impl(op: str, impl: str, length: int | None = None) -> str:
  """The concrete form name of `op` for `impl`: "auto" looks up AUTO_FORMS for this platform,
  or LONG_FORMS when `length` (the time steps the op sees) reaches that op's threshold, except
  that it picks the op's Pallas kernel where `_pallas.VERIFIED` lists the device.

  A name that is not among the op's forms (a typo, or a form this op does not have) raises a
  ValueError listing them.
  """
  forms = FORMS[op]
  if impl == AUTO:
    if platform() == "accelerator" and "pallas" in forms:
      from layers.ops import _pallas  # the kernels' plumbing: imported only on accelerators
      if _pallas.verified():
        return "pallas"
    if op in LONG_FORMS and length is not None and length >= LONG_FORMS[op][0]:
      return LONG_FORMS[op][1]
    return AUTO_FORMS[op][platform()]
  if impl not in forms:
    known = ", ".join(repr(f) for f in (*forms, AUTO))
    raise ValueError(f"{op}: unknown impl={impl!r}; expected one of {known}")
  return impl


def dispatch(op: str, impl: str, *, chunk_size: int | None = None,
             length: int | None = None) -> Callable:
  """The function of the form `impl` resolves to (see `resolve_impl`, which `length` informs);
  chunked forms get `chunk_size` bound."""
  if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
    raise ValueError(f"{op}: chunk_size must be a positive int; got {chunk_size!r}")
  name = resolve_impl(op, impl, length)
  fn = FORMS[op][name]
  if name in CHUNKED and chunk_size is not None:
    return functools.partial(fn, chunk_size=chunk_size)
  return fn


def as_float(*xs):
  """The input rule of every op: array-likes (NumPy arrays, Python scalars) become jax arrays
  as `jnp.asarray` makes them, and integer or bool inputs are promoted to the default float
  dtype (float32; float64 under jax_enable_x64). None stays None. Returns a tuple."""
  def convert(x):
    if x is None:
      return None
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
      x = x.astype(jnp.result_type(float))
    return x
  return tuple(convert(x) for x in xs)


def as_segment_ids(op: str, segment_ids, batch: int, length: int):
  """`segment_ids` as an integer jax array [B, T] (or None), checked."""
  if segment_ids is None:
    return None
  segment_ids = jnp.asarray(segment_ids)
  check_shape(op, "segment_ids", segment_ids, (batch, length), "[B, T]")
  if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
    raise ValueError(f"{op}: segment_ids must be an integer array [B, T]; "
                     f"got dtype {segment_ids.dtype}")
  return segment_ids


def output_dtype(x, initial_state=None) -> jnp.dtype:
  """The dtype of an op's sequence output: that of `x`, made complex when the initial state is
  complex (a complex state with real inputs makes the whole computation complex)."""
  dtype = jnp.result_type(x)
  if initial_state is not None and jnp.iscomplexobj(initial_state):
    dtype = jnp.promote_types(dtype, jnp.complex64)
  return dtype


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


def segment_starts(segment_ids: jax.Array | None, batch: int, length: int,
                   reverse: bool = False) -> jax.Array:
  """Reset flags `[B, T]`: True where a segment starts (in scan direction), never at the first step.

  A boundary is where the id changes. Scanning in reverse, a segment starts at its last token.
  """
  if segment_ids is None or length == 0:
    return jnp.zeros((batch, length), bool)
  change = segment_ids[:, 1:] != segment_ids[:, :-1]
  no_reset = jnp.zeros((batch, 1), bool)
  if reverse:
    return jnp.concatenate([change, no_reset], axis=1)
  return jnp.concatenate([no_reset, change], axis=1)


def segment_positions(segment_ids: jax.Array | None, batch: int,
                      length: int) -> tuple[jax.Array, jax.Array]:
  """(segment index, position within the segment), both [B, T] int.

  The index counts the boundaries before t (0 for the first segment of a row; a boundary is
  where the id changes); the position is t minus the start of t's segment.
  """
  starts = segment_starts(segment_ids, batch, length)
  t = jnp.arange(length)[None]
  first = jax.lax.cummax(jnp.where(starts, t, 0), axis=1)
  return jnp.cumsum(starts, axis=1), t - first


def accumulation_dtype(*xs) -> jnp.dtype:
  """float32, or the inputs' dtype when wider (float64, complex); None entries are skipped."""
  return jnp.result_type(*(x for x in xs if x is not None), jnp.float32)


def broadcast_flags(flags: jax.Array, like: jax.Array) -> jax.Array:
  """Appends trailing unit axes so `[B, T]` flags broadcast against `[B, T, ...]`."""
  return flags.reshape(flags.shape + (1,) * (like.ndim - flags.ndim))


def zero_padding(segment_ids: jax.Array | None, *xs):
  """`xs` ([B, T, ...] arrays or None) with every padding position (segment id 0) set to 0, so
  that garbage (even NaN) in padding never meets a product that reaches real tokens."""
  if segment_ids is None:
    return xs
  pad = segment_ids == 0
  return tuple(None if x is None else jnp.where(broadcast_flags(pad, x), 0, x) for x in xs)


def masked_matmul(weights: jax.Array, mask: jax.Array, x: jax.Array) -> jax.Array:
  """weights @ x ([..., I, J] @ [..., J, V]) for weights that are zero outside `mask`
  ([..., I, J] bool, broadcastable), where a non-finite x_j reaches row i only if mask_ij: a
  plain matmul would spread it to every row through 0 * NaN. Such rows become NaN whole."""
  bad = ~jnp.isfinite(x)
  out = jnp.matmul(weights, jnp.where(bad, 0, x))
  reached = jnp.matmul(mask.astype(weights.real.dtype),
                       bad.any(-1, keepdims=True).astype(weights.real.dtype)) > 0
  return jnp.where(reached, jnp.nan, out)
