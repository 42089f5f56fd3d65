"""Architectures over a `Backbone`: a language model and a sequence classifier, and the
registry that builds one from (config.model, task facts).

Every architecture trains through one call, `model(inputs, segment_ids=None) -> logits`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
from einops import rearrange
from flax import linen as nn

from layers import axes
from seqmodels import registry
from seqmodels.backbone import Backbone
from seqmodels.block_transformer import BlockTransformer

POOLINGS = ("mean", "last")


class LanguageModel(nn.Module):
  """Next-token logits: logits_t = head(Backbone(tokens)_t), head tied to the embedding
  (logits = h E^T) or a separate bias-free projection. Needs a causal token backbone.

  Training: `model(tokens, segment_ids)`; decoding: `prefill`, `init_state`, `step`.
  """
  backbone: Backbone
  tie_embeddings: bool = True

  def setup(self):
    if self.backbone.vocab_size is None or not self.backbone.causal:
      raise ValueError("LanguageModel: the backbone must be causal with token inputs "
                       f"(vocab_size set); got vocab_size={self.backbone.vocab_size}, "
                       f"causal={self.backbone.causal}")
    if not self.tie_embeddings:
      self.head = nn.Dense(self.backbone.vocab_size, use_bias=False,
                           kernel_init=axes.kernel(axes.EMBED, axes.VOCAB),
                           dtype=self.backbone.dtype, param_dtype=self.backbone.param_dtype)

  def _logits(self, h):
    logits = self.backbone.embed.attend(h) if self.tie_embeddings else self.head(h)
    return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))

  def __call__(self, tokens, segment_ids=None):
    """tokens: [B, T] int -> logits: [B, T, vocab] (float32 or wider)."""
    return self.prefill(tokens, None, segment_ids)[0]

  def prefill(self, tokens, state, segment_ids=None):
    """tokens: [B, T] int, state: per-layer states (`init_state`; None: empty) -> (logits:
    [B, T, vocab] float32 or wider, per-layer states after the last token)."""
    h, state = self.backbone(tokens, state, segment_ids)
    return self._logits(h), state

  def init_state(self, batch_size: int, max_len: int):
    """Per-layer empty states for decoding up to `max_len` tokens."""
    return self.backbone.init_state(batch_size, max_len)

  def step(self, tokens_t, state):
    """tokens_t: [B] int -> (logits_t: [B, vocab] float32 or wider, per-layer states)."""
    h_t, state = self.backbone.step(tokens_t, state)
    return self._logits(h_t), state


class Classifier(nn.Module):
  """logits = W pool(Backbone(inputs)) + b over the tokens with segment id != 0 (all tokens
  when segment_ids is None): "mean" pooling averages them, "last" takes the last one.

  two_tower=True (LRA retrieval, Tay et al. 2021): inputs hold two sequences, both encoded by
  the one backbone and pooled to h1, h2; logits = MLP([h1, h2, h1 * h2, h1 - h2]) with
  hidden widths D and D/2 and ReLU.
  """
  backbone: Backbone
  num_classes: int
  pooling: str = "mean"
  two_tower: bool = False

  def setup(self):
    if self.pooling not in POOLINGS:
      raise ValueError(f"Classifier: unknown pooling={self.pooling!r}; expected one of "
                       f"{POOLINGS}")
    # Small heads: replicated (no logical names that a rule could shard).
    dense = lambda n: nn.Dense(n, kernel_init=axes.kernel(None, None), bias_init=axes.bias(None),
                               param_dtype=self.backbone.param_dtype)
    d_model = self.backbone.d_model
    self.head = (nn.Sequential([dense(d_model), nn.relu, dense(d_model // 2), nn.relu,
                                dense(self.num_classes)])
                 if self.two_tower else dense(self.num_classes))

  def _pool(self, inputs, segment_ids):
    """[B, T] tokens or [B, T, F] -> pooled features [B, D] (float32 or wider)."""
    h, _ = self.backbone(inputs, None, segment_ids)
    B, T, _ = h.shape
    valid = jnp.ones((B, T), bool) if segment_ids is None else segment_ids != 0
    h = h.astype(jnp.promote_types(h.dtype, jnp.float32))
    if self.pooling == "mean":
      weights = valid / jnp.maximum(valid.sum(1, keepdims=True), 1)
      return jnp.einsum("bt,btd->bd", weights, h)
    last = T - 1 - jnp.argmax(valid[:, ::-1], axis=1)
    return jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]

  def __call__(self, inputs, segment_ids=None):
    """inputs: [B, T] tokens or [B, T, F] features ([B, 2, T] or [B, 2, T, F] two-tower),
    segment_ids: [B, T] ([B, 2, T]) -> logits: [B, num_classes] (float32 or wider)."""
    if not self.two_tower:
      return self.head(self._pool(inputs, segment_ids))
    if inputs.shape[1] != 2:
      raise ValueError(f"Classifier: two_tower inputs must be [B, 2, T] or [B, 2, T, F]; got "
                       f"shape {inputs.shape}")
    towers = lambda x: None if x is None else rearrange(x, "b s t ... -> (b s) t ...")
    h = rearrange(self._pool(towers(inputs), towers(segment_ids)), "(b s) d -> s b d", s=2)
    return self.head(jnp.concatenate([h[0], h[1], h[0] * h[1], h[0] - h[1]], axis=-1))


@dataclasses.dataclass(frozen=True)
class TaskFacts:
  """What an architecture needs to know of the task it is built for (the task gives them)."""
  vocab_size: int | None = None   # token inputs [B, T]; None: features [B, T, input_dim]
  input_dim: int | None = None
  causal: bool = True             # False: bidirectional mixers
  num_classes: int | None = None  # a classification task; None: next-token prediction
  pooling: str = "mean"           # classifiers: "mean" | "last"
  two_tower: bool = False         # classifiers: inputs hold two sequences [B, 2, T(, F)]
  # packed inputs: segments start at multiples of this (1: anywhere); None: no segment ids
  segment_starts: int | None = None


def backbone(model, facts: TaskFacts) -> Backbone:
  """The Backbone of `model` (config.model: mixer, d_model, n_layers, mlp_expand, dtype,
  mixer_kwargs, memory: {layers, and the memory layers' options}) over the task's inputs.
  memory.sparse_updates is the train step's (train/sparse.py), not the model's."""
  memory = dict(model.get("memory", {}))
  memory.pop("sparse_updates", None)
  return Backbone(d_model=model.d_model, n_layers=model.n_layers, pattern=model.mixer,
                  vocab_size=facts.vocab_size, input_dim=facts.input_dim,
                  mixer_kwargs={name: dict(options)
                                for name, options in model.mixer_kwargs.items()},
                  mlp_expand=model.mlp_expand, memory_layers=tuple(memory.pop("layers", ())),
                  memory=memory, causal=facts.causal, dtype=jnp.dtype(model.dtype))


def _language_model(model, facts: TaskFacts) -> LanguageModel:
  if facts.num_classes is not None:
    raise ValueError(f"model.architecture='lm' predicts tokens, but the task has "
                     f"{facts.num_classes} classes; use 'classifier'")
  return LanguageModel(backbone(model, facts), tie_embeddings=model.tie_embeddings)


def _classifier(model, facts: TaskFacts) -> Classifier:
  if facts.num_classes is None:
    raise ValueError("model.architecture='classifier' needs a classification task "
                     "(num_classes); use 'lm' for next-token prediction")
  return Classifier(backbone(model, facts), facts.num_classes, facts.pooling, facts.two_tower)


def _block_transformer(model, facts: TaskFacts) -> BlockTransformer:
  if facts.num_classes is not None or facts.vocab_size is None or not facts.causal:
    raise ValueError("model.architecture='block_transformer' predicts tokens: it needs a "
                     "causal token task (vocab_size, no classes)")
  L = model.block_length
  if facts.segment_starts is not None and facts.segment_starts % L:
    raise ValueError(f"model.architecture='block_transformer' needs packed documents to "
                     f"start on block boundaries (multiples of block_length={L}); the task "
                     f"starts them at multiples of {facts.segment_starts} (CharLM: set "
                     f"task.block_align={L})")
  return BlockTransformer(
      vocab_size=facts.vocab_size, block_length=L, d_block=model.d_block,
      d_token=model.d_token, n_block_layers=model.n_block_layers,
      n_token_layers=model.n_token_layers, block_pattern=model.block_pattern,
      token_pattern=model.token_pattern, prefix_ratio=model.prefix_ratio,
      mixer_kwargs={name: dict(options) for name, options in model.mixer_kwargs.items()},
      mlp_expand=model.mlp_expand, dtype=jnp.dtype(model.dtype))


# name -> build(config.model, TaskFacts) -> the module
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "lm": _language_model,          # next-token logits; decodable (prefill, step)
    "classifier": _classifier,      # pooled class logits (LRA)
    "block_transformer": _block_transformer,  # next-token logits; decoded block by block
}

# config.model keys that name a mixer or block pattern, per architecture
PATTERN_KEYS = {"block_transformer": ("block_pattern", "token_pattern")}


def model_patterns(model) -> dict[str, str]:
  """{config.model key: the mixer or block pattern it names}: `mixer` (lm, classifier), or
  the block transformer's block_pattern and token_pattern."""
  return {key: model[key] for key in PATTERN_KEYS.get(model.architecture, ("mixer",))}


def model_mixers(model) -> tuple[str, ...]:
  """The mixer names the model of config.model uses, each once, in order."""
  names = (n for p in model_patterns(model).values() for n in registry.get_pattern(p))
  return tuple(dict.fromkeys(names))


def get_architecture(name: str) -> Callable[..., nn.Module]:
  """The builder registered as `name`; a ValueError listing the known ones otherwise."""
  if name not in ARCHITECTURES:
    raise ValueError(f"model.architecture={name!r} is unknown; known: "
                     f"{', '.join(sorted(ARCHITECTURES))}")
  return ARCHITECTURES[name]


def build_model(model, facts: TaskFacts) -> nn.Module:
  """The architecture `model.architecture` (a key of ARCHITECTURES) built from `model`
  (config.model) and the task's `facts`."""
  return get_architecture(model.architecture)(model, facts)
