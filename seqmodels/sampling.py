"""Token samplers for `generate`: greedy, temperature, top-k and top-p (nucleus)."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Sampler:
  """How the next token is drawn from logits [B, V].

  temperature 0 is greedy (argmax); otherwise logits / temperature are filtered to the `top_k`
  largest and/or the smallest set whose probability reaches `top_p`, then sampled.
  """
  temperature: float = 1.0
  top_k: int | None = None
  top_p: float | None = None

  def __post_init__(self):
    if self.temperature < 0:
      raise ValueError(f"Sampler: temperature must be >= 0; got {self.temperature}")
    if self.top_k is not None and self.top_k < 1:
      raise ValueError(f"Sampler: top_k must be a positive int or None; got {self.top_k}")
    if self.top_p is not None and not 0 < self.top_p <= 1:
      raise ValueError(f"Sampler: top_p must be in (0, 1] or None; got {self.top_p}")

  def filter_logits(self, logits: jax.Array) -> jax.Array:
    """logits [B, V] / temperature with the tokens outside top-k / top-p set to -inf."""
    logits = logits.astype(jnp.float32) / self.temperature
    if self.top_k is not None and self.top_k < logits.shape[-1]:
      kth = jax.lax.top_k(logits, self.top_k)[0][:, -1:]
      logits = jnp.where(logits < kth, -jnp.inf, logits)
    if self.top_p is not None:
      sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
      probs = jax.nn.softmax(sorted_logits, axis=-1)
      mass_before = jnp.cumsum(probs, axis=-1) - probs
      # The smallest logit still kept: the last one whose preceding mass is below top_p.
      keep = mass_before < self.top_p
      threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
      logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits

  def __call__(self, rng: jax.Array, logits: jax.Array) -> jax.Array:
    """Draws token ids [B] from logits [B, V]."""
    if self.temperature == 0:
      return jnp.argmax(logits, axis=-1)
    return jax.random.categorical(rng, self.filter_logits(logits), axis=-1)


GREEDY = Sampler(temperature=0.0)
