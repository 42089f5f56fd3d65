"""The residual stack every architecture shares: embedding -> N pre-norm blocks -> norm."""
from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from flax import linen as nn
from flax.core import FrozenDict

from layers import MLP, MemoryValues, ProductKeyMemory, RMSNorm, axes
from layers import memory as memory_lib
from seqmodels import registry


EMBED_STD = 0.3  # token embedding std, times sqrt(D)


class Block(nn.Module):
  """Pre-norm residual block: x + mixer(norm(x)), then x + MLP(norm(x)).

  The mixer is any module with the mixer calling convention (`__call__`, `init_state`,
  `step`); its state passes through unchanged in structure. `memory` (a stateless channel
  mixer, e.g. `ProductKeyMemory`) takes the MLP's place when given.
  """
  mixer: nn.Module
  mlp_expand: float = 8 / 3
  memory: nn.Module | None = None
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.mixer_norm = RMSNorm(dtype=self.dtype, param_dtype=self.param_dtype)
    self.mlp_norm = RMSNorm(dtype=self.dtype, param_dtype=self.param_dtype)
    if self.memory is None:
      self.mlp = MLP(expand=self.mlp_expand, dtype=self.dtype, param_dtype=self.param_dtype)

  def _channel_mix(self, x):
    channel_mixer = self.mlp if self.memory is None else self.memory
    return x + channel_mixer(self.mlp_norm(x))

  def __call__(self, x, state=None, segment_ids=None):
    """x: [B, T, D] -> (x: [B, T, D], mixer state)."""
    y, state = self.mixer(self.mixer_norm(x), state, segment_ids)
    return self._channel_mix(x + y.astype(x.dtype)), state

  def init_state(self, batch_size: int, max_len: int):
    return self.mixer.init_state(batch_size, max_len)

  def step(self, x_t, state):
    """x_t: [B, D] -> (x_t: [B, D], mixer state)."""
    y_t, state = self.mixer.step(self.mixer_norm(x_t), state)
    return self._channel_mix(x_t + y_t.astype(x_t.dtype)), state


class Backbone(nn.Module):
  """Token (or feature) embedding, `n_layers` blocks whose mixers follow `pattern` (layer i
  uses pattern[i % len(pattern)]: a hybrid when it names several), then a final RMSNorm.
  Token embeddings E ~ N(0, EMBED_STD^2 / D) enter as E[token] * sqrt(D), as Gemma's; a tied
  LM head (h E^T, |h| = sqrt(D) after the final norm) then starts with logits of std
  EMBED_STD, near uniform: the initial loss is about log(vocab_size). Embeddings take no
  weight decay.

  inputs: [B, T] int tokens when `vocab_size` is set, else [B, T, input_dim] features (a
  linear embedding). The state is a tuple with one mixer state per layer.

  Memory layers (Berges et al. 2024): the blocks listed in `memory_layers` get a
  `ProductKeyMemory` (options `memory`: layers.memory.OPTIONS, plus shared_values) in place
  of their MLP; with shared_values (default) one value table, owned here
  ("memory_values"), serves them all, while keys, queries and projections stay per layer.
  """
  d_model: int
  n_layers: int
  pattern: str | Sequence[str] = "attention"
  vocab_size: int | None = None
  input_dim: int | None = None
  mixer_kwargs: FrozenDict = FrozenDict()  # {mixer name: {option: value}}
  mlp_expand: float = 8 / 3
  memory_layers: Sequence[int] = ()
  memory: FrozenDict = FrozenDict()  # ProductKeyMemory options and shared_values
  causal: bool = True
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def __post_init__(self):
    # Hashable fields, so that a model can be a static argument of jit (`generate`).
    object.__setattr__(self, "mixer_kwargs", FrozenDict(self.mixer_kwargs))
    object.__setattr__(self, "memory", FrozenDict(self.memory))
    object.__setattr__(self, "memory_layers", tuple(self.memory_layers))
    if not isinstance(self.pattern, str):
      object.__setattr__(self, "pattern", tuple(self.pattern))
    super().__post_init__()

  def setup(self):
    if (self.vocab_size is None) == (self.input_dim is None):
      raise ValueError("Backbone: set exactly one of vocab_size (token inputs [B, T]) and "
                       f"input_dim (features [B, T, F]); got vocab_size={self.vocab_size}, "
                       f"input_dim={self.input_dim}")
    names = registry.get_pattern(self.pattern)
    unused = sorted(set(self.mixer_kwargs) - set(names))
    if unused:
      raise ValueError(f"Backbone: mixer_kwargs for {', '.join(unused)}, which the pattern "
                       f"{names} does not use")
    modules = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if self.vocab_size is not None:
      self.embed = nn.Embed(self.vocab_size, self.d_model, param_dtype=self.param_dtype,
                            embedding_init=axes.param(
                                nn.initializers.normal(stddev=EMBED_STD / self.d_model ** 0.5),
                                axes.VOCAB, axes.EMBED, group=axes.NO_DECAY))
    else:
      self.embed = nn.Dense(self.d_model,
                            kernel_init=axes.kernel(None, axes.EMBED, group=axes.NO_DECAY),
                            bias_init=axes.bias(axes.EMBED), **modules)
    memories = self._memories(modules)
    self.blocks = [
        Block(registry.build_mixer(names[i % len(names)], self.d_model, causal=self.causal,
                                   overrides=self.mixer_kwargs.get(names[i % len(names)]),
                                   **modules),
              mlp_expand=self.mlp_expand, memory=memories.get(i), **modules)
        for i in range(self.n_layers)]
    self.norm = RMSNorm(**modules)

  def _memories(self, modules) -> dict[int, ProductKeyMemory]:
    """{block index: its ProductKeyMemory} for `memory_layers` (checked), sharing one value
    table when memory.shared_values (default True)."""
    layers = self.memory_layers
    memory_lib.check_layers(layers, self.n_layers, "Backbone: memory_layers")
    options = dict(self.memory)
    shared = options.pop("shared_values", True)
    memory_lib.check_options(self.d_model, options)
    values = None
    if layers and shared:
      values = self.memory_values = MemoryValues(
          *memory_lib.table_shape(self.d_model, options), param_dtype=self.param_dtype)
    return {i: ProductKeyMemory(self.d_model, values=values, **options, **modules)
            for i in layers}

  def _embed(self, inputs, step: bool):
    rank = 1 if step else 2
    if self.vocab_size is not None:
      if jnp.ndim(inputs) != rank or not jnp.issubdtype(jnp.asarray(inputs).dtype, jnp.integer):
        layout = "[B]" if step else "[B, T]"
        raise ValueError(f"Backbone: token inputs must be an int array {layout}; got "
                         f"shape {tuple(jnp.shape(inputs))} dtype {jnp.asarray(inputs).dtype}")
    elif jnp.ndim(inputs) != rank + 1 or jnp.shape(inputs)[-1] != self.input_dim:
      layout = f"[B, F={self.input_dim}]" if step else f"[B, T, F={self.input_dim}]"
      raise ValueError(f"Backbone: feature inputs must have shape {layout}; got "
                       f"{tuple(jnp.shape(inputs))}")
    if self.vocab_size is None:
      return self.embed(inputs).astype(self.dtype)
    return (self.embed(inputs) * self.d_model ** 0.5).astype(self.dtype)

  def __call__(self, inputs, state=None, segment_ids=None):
    """inputs: [B, T] tokens or [B, T, F] -> (h: [B, T, D], per-layer states)."""
    return self.mix(self.embed_inputs(inputs), state, segment_ids)

  def embed_inputs(self, inputs):
    """inputs: [B, T] tokens or [B, T, F] -> x: [B, T, D], the input of the first block."""
    return self._embed(inputs, step=False)

  def mix(self, x, state=None, segment_ids=None):
    """x: [B, T, D] already embedded (`embed_inputs`, or vectors of the caller's own) ->
    (h: [B, T, D], per-layer states): the blocks and the final norm."""
    states = (None,) * self.n_layers if state is None else state
    new_states = []
    for block, s in zip(self.blocks, states):
      x, s = block(x, s, segment_ids)
      new_states.append(s)
    return self.norm(x), tuple(new_states)

  def init_state(self, batch_size: int, max_len: int):
    """Per-layer empty states for decoding up to `max_len` tokens."""
    return tuple(block.init_state(batch_size, max_len) for block in self.blocks)

  def step(self, inputs_t, state):
    """inputs_t: [B] tokens or [B, F] -> (h_t: [B, D], per-layer states)."""
    return self.mix_step(self._embed(inputs_t, step=True), state)

  def mix_step(self, x, state):
    """x: [B, D] already embedded -> (h_t: [B, D], per-layer states)."""
    new_states = []
    for block, s in zip(self.blocks, state):
      x, s = block.step(x, s)
      new_states.append(s)
    return self.norm(x), tuple(new_states)
