"""Logical axis names of the parameters.

Every parameter says what each of its axes is (`nn.with_logical_partitioning`); the training
config's `mesh.rules` map these names onto the device mesh (train/sharding.py), so no layer
names a device axis. `model.init` returns the parameters boxed with their names
(`nn.get_partition_spec` reads them, `nn.unbox` drops them); `apply` takes either.
"""
from __future__ import annotations

from flax import linen as nn

EMBED = "embed"        # the model width D
MLP = "mlp"            # an expanded inner width (MLP hidden, Mamba/BaseConv E, GLU input)
HEADS = "heads"        # heads H (attention, linear attention, Mamba2 / GDN decay per head)
HEAD_DIM = "head_dim"  # the key or value width of one head K, V
STATE = "state"        # the SSM state size N (S4D, Mamba)
CONV = "conv"          # convolution taps W
VOCAB = "vocab"        # the token vocabulary
NAMES = (EMBED, MLP, HEADS, HEAD_DIM, STATE, CONV, VOCAB)


def param(init, *names: str | None):
  """`init` whose parameter carries one logical name per axis (None: never sharded)."""
  return nn.with_logical_partitioning(init, names)


def kernel(*names: str | None, init=nn.initializers.lecun_normal()):
  """A Dense / DenseGeneral kernel_init (flax's default lecun normal) with logical names."""
  return param(init, *names)


def bias(name: str | None):
  """A Dense bias_init (zeros, as flax) with its logical name."""
  return param(nn.initializers.zeros_init(), name)
