"""Placement of the train state and batches on a `("data", "fsdp", "model")` device mesh.

The batch is split over data x fsdp. A parameter (and its optimizer moments) is FSDP-sharded
along its largest axis divisible by the fsdp size, replicated when no axis is; everything
else is replicated. JAX's SPMD partitioner (Auto axis types) does the rest.
"""
from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")


def make_mesh(mesh_config) -> jax.sharding.Mesh:
  """The mesh of config.mesh = {data, fsdp, model}; one size may be -1 (the rest)."""
  sizes = [mesh_config[name] for name in AXES]
  devices = jax.device_count()
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"mesh: sizes {dict(zip(AXES, sizes))} must be positive, one may be -1")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if devices % known:
      raise ValueError(f"mesh: {dict(zip(AXES, sizes))} does not divide {devices} devices")
    sizes[sizes.index(-1)] = devices // known
  if math.prod(sizes) != devices:
    raise ValueError(f"mesh: data x fsdp x model = {math.prod(sizes)} must equal the "
                     f"{devices} devices")
  return jax.make_mesh(sizes, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int) -> P:
  """Shards the largest axis divisible by `fsdp_size` over "fsdp" (P() when none is)."""
  if fsdp_size > 1:
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
      if shape[axis] % fsdp_size == 0:
        return P(*(("fsdp" if a == axis else None) for a in range(len(shape))))
  return P()


def state_shardings(abstract_state, mesh):
  """NamedShardings for every leaf of the (abstract) train state."""
  fsdp = mesh.shape["fsdp"]
  return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(x.shape, fsdp)), abstract_state)


def replicated(mesh) -> NamedSharding:
  """A copy on every device (metrics)."""
  return NamedSharding(mesh, P())


def to_host(tree):
  """numpy values of replicated arrays, readable on every process."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def batch_sharding(mesh) -> NamedSharding:
  """Leading (batch) axis split over data x fsdp."""
  return NamedSharding(mesh, P(BATCH_AXES))


def global_batch(batch: dict, sharding: NamedSharding) -> dict:
  """The global arrays of a numpy batch that every process holds whole: each process
  contributes the rows of its addressable devices (multi-host safe)."""
  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
  return jax.tree.map(put, batch)
