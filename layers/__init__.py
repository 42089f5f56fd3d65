"""Sequence layers: Flax linen modules over the pure-JAX ops in `layers.ops` (parameters, their
initialisation, projections and op calls; the math of every recurrence lives in the ops).

Every causal sequence mixer (S4D, MinGRU, MinLSTM, Mamba, Mamba2, Attention, RetNet, Based,
BaseConv, DeltaNet, GatedDeltaNet, ShortConv) has one calling convention, with explicit state
pytrees:

  y, state = mixer.apply(variables, x, state=None, segment_ids=None)   # x: [B, T, D]
  state0 = mixer.apply(variables, batch_size, max_len, method="init_state")
  y_t, state = mixer.apply(variables, x_t, state, method="step")      # x_t: [B, D]

Option names mean one thing in every mixer:

  option      meaning                                       mixers
  d_model     D, the width of x                             all
  num_heads   H                                             Attention, RetNet, Based, GDN
  head_dim    K, the query/key width of one head            Attention (V = K), GDN, Based (the
                                                            Taylor map's feature dim d)
  expand_v    V = expand_v * K, the value width of a head   RetNet, GDN
  value_dim   V given directly, the value width of a head   Based, Mamba2 (P, `headdim` there)
  expand      E = expand * D, the inner width               Mamba, Mamba2, BaseConv, minGRU/LSTM
  d_state     N, the state size per channel                 S4D (N/2 complex modes), Mamba(2)
  conv_width  W, taps of the short causal convolution       Mamba, Mamba2, BaseConv, GDN
  impl        the op form (layers.ops.common.IMPLS)         every mixer that calls a scan op,
                                                            Attention
  chunk_size  C of the chunked op forms                     Mamba(2), RetNet, Based, GDN,
                                                            Attention (its blockwise block)

(GDN: GatedDeltaNet and DeltaNet.)

ProductKeyMemory (with MemoryValues, its value table) is a channel mixer, not a sequence
mixer: x [B, T, D] or [B, D] -> the same shape, no state; a Backbone puts it in place of the
MLP of the blocks in `memory_layers`.
"""
from layers.attention import Attention
from layers.bidirectional import Bidirectional
from layers.based import BaseConv, Based, taylor_feature_map
from layers.common import state_bytes
from layers.conv import ShortConv
from layers.gated_deltanet import DeltaNet, GatedDeltaNet
from layers.mamba import Mamba, Mamba2
from layers.memory import MemoryValues, ProductKeyMemory
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
    "Bidirectional",
    "Based",
    "DeltaNet",
    "GatedDeltaNet",
    "GatedRMSNorm",
    "Mamba",
    "Mamba2",
    "MemoryValues",
    "MinGRU",
    "MinLSTM",
    "NoMixer",
    "ProductKeyMemory",
    "RetNet",
    "RMSNorm",
    "S4D",
    "ShortConv",
    "apply_rotary",
    "state_bytes",
    "taylor_feature_map",
]
