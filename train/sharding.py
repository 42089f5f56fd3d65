"""Placement of the train state and batches on a `("data", "fsdp", "model")` device mesh.

Every parameter carries logical axis names (layers/axes.py); `config.mesh.rules` map them onto
the mesh axes by flax's rules (in order: a logical axis takes the first rule whose mesh axes
are still free in that array). An axis whose size the mesh axes do not divide stays
replicated; a parameter the rules keep off "fsdp" is FSDP-sharded along its largest free axis
that fsdp divides. The batch is the logical axis "batch". Optimizer moments follow their parameter;
everything else is replicated. JAX's SPMD partitioner (Auto axis types) does the rest.
"""
from __future__ import annotations

import math

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec as P

from layers import axes

AXES = ("data", "fsdp", "model")
BATCH = "batch"
# Batch over data x fsdp; FSDP along the model width; tensor parallel over heads, the inner
# (MLP / expanded) width and the vocabulary; memory value tables split by columns over
# fsdp x model (layers/axes.py says why columns), so a table takes N * V / (fsdp * model)
# bytes per device.
DEFAULT_RULES = (
    (BATCH, ("data", "fsdp")),
    (axes.VOCAB, "model"),
    (axes.MLP, "model"),
    (axes.HEADS, "model"),
    (axes.EMBED, "fsdp"),
    (axes.MEMORY_VALUES, ("fsdp", "model")),
)


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


def check_rules(rules) -> None:
  """Raises a one-line ValueError unless `rules` is ((logical name, mesh axes), ...)."""
  logical = (BATCH,) + axes.NAMES
  if not isinstance(rules, (tuple, list)):
    raise ValueError(f"mesh.rules={rules!r}: expected ((logical axis, mesh axes), ...)")
  for rule in rules:
    if not isinstance(rule, (tuple, list)) or len(rule) != 2 or rule[0] not in logical:
      raise ValueError(f"mesh.rules: {rule!r} must be (logical axis, mesh axes) with a "
                       f"logical axis among {', '.join(logical)}")
    if any(t not in AXES for t in _axis_names(rule[1])):
      raise ValueError(f"mesh.rules: {tuple(rule)!r} names a mesh axis not in {AXES} "
                       f"(None: replicated)")


def mesh_spec(names: P | None, shape: tuple[int, ...], mesh, rules) -> P:
  """The PartitionSpec over `mesh` of a parameter with logical axis `names` (None: no names)
  under `rules`; an axis whose size its mesh axes do not divide is replicated. FSDP covers
  every parameter: one the rules keep off "fsdp" is sharded over it along its largest
  unsharded axis that fsdp divides (replicated when there is none), but for a memory value
  table (names with `axes.MEMORY_VALUES`), which is split by columns or not at all
  (layers/axes.py says why)."""
  spec = [None] * len(shape) if names is None else list(_mesh_axes(names, rules))
  spec = [t if t is None or n % mesh_size(mesh, t) == 0 else None for t, n in zip(spec, shape)]
  used = {a for t in spec for a in _axis_names(t)}
  free = [a for a, t in enumerate(spec) if t is None and shape[a] % mesh.shape["fsdp"] == 0
          and axes.MEMORY_VALUES not in (names or ())]
  if mesh.shape["fsdp"] > 1 and "fsdp" not in used and free:
    spec[max(free, key=lambda a: shape[a])] = "fsdp"
  return P(*spec)


def _mesh_axes(names, rules) -> P:
  """flax's resolution of logical `names` by `rules` (lists, as from JSON, read as tuples)."""
  rules = tuple((name, tuple(t) if isinstance(t, list) else t) for name, t in rules)
  return nn.logical_to_mesh_axes(tuple(names), rules)


def mesh_size(mesh, mesh_axes) -> int:
  """Devices along a mesh axis name, a tuple of them, or None (1)."""
  return math.prod(mesh.shape[a] for a in _axis_names(mesh_axes))


def _axis_names(mesh_axes) -> tuple:
  """A rule's or spec entry's mesh axes as a tuple: None -> (), ("x", "y") -> itself, any
  other single value ("x") -> ("x",)."""
  if mesh_axes is None:
    return ()
  return tuple(mesh_axes) if isinstance(mesh_axes, (tuple, list)) else (mesh_axes,)


def state_shardings(abstract_state, names, mesh, rules):
  """NamedShardings of the (abstract) train state: parameters by their logical `names` (a
  tree of PartitionSpecs of names, `nn.get_partition_spec` of the boxed parameters), the
  optimizer's per-parameter leaves (moments, accumulated gradients) as their parameter,
  everything else replicated."""
  params = jax.tree.map(lambda x, n: NamedSharding(mesh, mesh_spec(n, x.shape, mesh, rules)),
                        abstract_state.params, names)
  by_path = {_dict_keys(path): (x.shape, s) for (path, x), s in zip(
      jax.tree.leaves_with_path(abstract_state.params), jax.tree.leaves(params))}

  def follow_param(path, x):
    """An optimizer leaf whose dict-key path ends with a parameter's path and has its shape
    is that parameter's moment (optax nests them under its own keys)."""
    keys = _dict_keys(path)
    for start in range(len(keys)):
      shape, s = by_path.get(keys[start:], (None, None))
      if shape == x.shape:
        return s
    return replicated(mesh)

  opt_state = jax.tree.map_with_path(follow_param, abstract_state.opt_state)
  return type(abstract_state)(step=replicated(mesh), params=params, opt_state=opt_state,
                              rng=replicated(mesh))


def _dict_keys(path) -> tuple:
  return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))


def replicated(mesh) -> NamedSharding:
  """A copy on every device (metrics)."""
  return NamedSharding(mesh, P())


def to_host(tree):
  """numpy values of replicated arrays, readable on every process."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def batch_sharding(mesh, rules) -> NamedSharding:
  """The leading axis split over the mesh axes the rules give the logical axis "batch"."""
  return NamedSharding(mesh, _mesh_axes((BATCH,), rules))


def global_batch(batch: dict, sharding: NamedSharding) -> dict:
  """The global arrays of a numpy batch that every process holds whole: each process
  contributes the rows of its addressable devices (multi-host safe)."""
  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
  return jax.tree.map(put, batch)
