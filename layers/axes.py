"""Logical axis names and optimizer groups of the parameters.

Every parameter says what each of its axes is and which optimizer group it belongs to
(`param`, `kernel`, `bias` box its initial value in a `Param`); the training config's
`mesh.rules` map the names onto the device mesh (train/sharding.py), so no layer names a
device axis, and `config.opt.groups` give each group its learning rate and weight decay
(train/optim.py), so no config matches parameter names. `model.init` returns the parameters
boxed (`nn.get_partition_spec` reads the names, `groups` the groups, `nn.unbox` drops both);
`apply` takes either.
"""
from __future__ import annotations

import functools

import jax
from flax import linen as nn
from flax import struct

EMBED = "embed"        # the model width D
MLP = "mlp"            # an expanded inner width (MLP hidden, Mamba/BaseConv E, GLU input)
HEADS = "heads"        # heads H (attention, linear attention, Mamba2 / GDN decay per head)
HEAD_DIM = "head_dim"  # the key or value width of one head K, V
STATE = "state"        # the SSM state size N (S4D, Mamba)
CONV = "conv"          # convolution taps W
VOCAB = "vocab"        # the token vocabulary
# The value width V of a memory layer's value table [N, V]; its rows N are never sharded.
# Columns, not rows: a lookup gathers whole rows by data-dependent indices, so with columns
# split every device gathers its slice [., V / |axis|] of the rows it is asked for locally
# (the indices and weights, [B, T, H, k], are small and all-gathered), the bag [B, T, V]
# comes out split along V like the hidden of Memory+'s W_s, and W_o's contraction over V
# reduces it as in a tensor-parallel MLP; sparse updates scatter into the local columns
# without communication. Rows split would need every device to mask the indices it owns, an
# all-reduce of the partial bags [B, T, V] of every lookup and row updates routed to their
# owners. (The at-scale code of Berges et al. 2024 shards the columns too.)
MEMORY_VALUES = "memory_values"
NAMES = (EMBED, MLP, HEADS, HEAD_DIM, STATE, CONV, VOCAB, MEMORY_VALUES)

DEFAULT = "default"    # weight matrices: opt.lr and opt.weight_decay
NO_DECAY = "no_decay"  # norm scales, biases, embeddings, skip weights D: no weight decay
SSM = "ssm"            # state-space dynamics (A, dt): opt.ssm_lr, no weight decay
MEMORY = "memory"      # memory-layer value tables: their own lr and gradient clipping
GROUPS = (DEFAULT, NO_DECAY, SSM, MEMORY)


class Param(nn.LogicallyPartitioned, eq=False):
  """A parameter boxed with its logical axis `names` and its optimizer `group` (both static:
  not pytree leaves)."""
  group: str = struct.field(default=DEFAULT, pytree_node=False)


def param(init, *names: str | None, group: str = DEFAULT):
  """`init` whose parameter carries one logical name per axis (None: never sharded) and its
  optimizer group (one of GROUPS)."""
  if group not in GROUPS:
    raise ValueError(f"unknown optimizer group {group!r}; known: {', '.join(GROUPS)}")

  @functools.wraps(init)
  def boxed(*args, **kwargs) -> Param:
    return Param(init(*args, **kwargs), names, group=group)
  return boxed


def kernel(*names: str | None, init=nn.initializers.lecun_normal(), group: str = DEFAULT):
  """A Dense / DenseGeneral kernel_init (flax's default lecun normal) with logical names."""
  return param(init, *names, group=group)


def bias(name: str | None):
  """A Dense bias_init (zeros, as flax) with its logical name; biases take no weight decay."""
  return param(nn.initializers.zeros_init(), name, group=NO_DECAY)


def _is_box(x) -> bool:
  return isinstance(x, nn.meta.AxisMetadata)


def groups(boxed):
  """The optimizer group of every parameter of a boxed tree (`model.init`'s, or its
  `jax.eval_shape`), in the tree of the unboxed parameters; DEFAULT where none is declared."""
  return jax.tree.map(lambda x: x.group if isinstance(x, Param) else DEFAULT, boxed,
                      is_leaf=_is_box)
