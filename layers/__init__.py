"""Sequence layers: Flax linen modules over the pure-JAX ops in `layers.ops`.

Every causal sequence mixer (S4D, MinGRU, MinLSTM, Mamba, Mamba2, Attention, ShortConv) has
one calling convention, with explicit state pytrees:

  y, state = mixer.apply(variables, x, state=None, segment_ids=None)   # x: [B, T, D]
  state0 = mixer.apply(variables, batch_size, max_len, method="init_state")
  y_t, state = mixer.apply(variables, x_t, state, method="step")      # x_t: [B, D]
"""
from layers._common import state_bytes
from layers.attention import Attention
from layers.based import BaseConv, Based, taylor_feature_map
from layers.conv import ShortConv
from layers.gated_deltanet import DeltaNet, GatedDeltaNet
from layers.mamba import Mamba, Mamba2
from layers.min_rnn import MinGRU, MinLSTM
from layers.mlp import MLP
from layers.no_mixer import NoMixer
from layers.norm import GatedRMSNorm, RMSNorm
from layers.retnet import RetNet
from layers.rotary import apply_rotary
from layers.s4d import S4D

__all__ = [
    "MLP",
    "Attention",
    "BaseConv",
    "Based",
    "DeltaNet",
    "GatedDeltaNet",
    "GatedRMSNorm",
    "Mamba",
    "Mamba2",
    "MinGRU",
    "MinLSTM",
    "NoMixer",
    "RetNet",
    "RMSNorm",
    "S4D",
    "ShortConv",
    "apply_rotary",
    "state_bytes",
    "taylor_feature_map",
]
