"""Autoregressive decoding: parallel prefill (whole or in chunks), then a `lax.scan` over the
model's `step`."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange
from flax import linen as nn

from seqmodels.block_transformer import BlockTransformer, generate_blocks
from seqmodels.sampling import GREEDY, Sampler


def check_token_ids(tokens, vocab_size: int | None, what: str) -> None:
  """Raises a ValueError naming the first id of `tokens` outside [0, vocab_size) (an embedding
  lookup would return NaN or garbage for it). Needs concrete values: traced arrays and
  vocab_size None are not checked."""
  if vocab_size is None or isinstance(tokens, jax.core.Tracer):
    return
  tokens = np.asarray(tokens)
  bad = (tokens < 0) | (tokens >= vocab_size)
  if bad.any():
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(f"{what}: token id {int(tokens[where])} at index {where} is outside the "
                     f"vocabulary [0, {vocab_size})")


def check_left_padded(prompt_mask) -> None:
  """Raises a ValueError unless every row of `prompt_mask` [B, P] is padding (False) then
  real tokens (True), with at least one real token. Traced masks are not checked."""
  if isinstance(prompt_mask, jax.core.Tracer):
    return
  mask = np.asarray(prompt_mask, bool)
  right = np.argwhere(mask[:, :-1] & ~mask[:, 1:])
  if len(right):
    row, col = right[0]
    raise ValueError(f"generate: prompt row {row} has padding at index {col + 1} after a real "
                     "token; prompts must be left-padded (padding, then the tokens)")
  empty = np.flatnonzero(~mask.any(axis=1))
  if len(empty):
    raise ValueError(f"generate: prompt row {empty[0]} has no real token")


def prefill_chunked(model, variables, tokens, state, segment_ids=None, *, chunk_size: int,
                    last_only: bool = False):
  """`model.prefill` over the prompt in chunks of `chunk_size` tokens, each continuing the
  state (KV caches, recurrent states) the previous one left: the same logits and state as one
  whole `prefill`, with activations held for one chunk at a time (peak memory O(chunk_size)
  rather than O(T), besides the state itself and the logits returned: take last_only for
  decoding). Pure; jit it with model, chunk_size and
  last_only static.

    state_0 = state,  (logits_c, state_{c+1}) = prefill(tokens_c, restart_c(state_c), ids_c)

  The first T % chunk_size tokens form the first chunk, then a `lax.scan` runs the full chunks.
  restart_c empties (zeros: every mixer's `init_state`) the state of the rows whose segment id
  changes at the boundary before chunk c, as the whole prefill starts a later segment.

  tokens, segment_ids: [B, T] (segment_ids None: one segment) -> (logits [B, T, vocab], or
  [B, vocab] at the last position when last_only, and the state after the last token).
  """
  if not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f"prefill_chunked: chunk_size must be a positive int; got {chunk_size!r}")
  if jnp.ndim(tokens) != 2 or jnp.shape(tokens)[1] < 1:
    raise ValueError(f"prefill_chunked: tokens must be [B, T] with T >= 1; got shape "
                     f"{tuple(jnp.shape(tokens))}")
  B, T = tokens.shape
  ids = jnp.ones((B, T), jnp.int32) if segment_ids is None else jnp.asarray(segment_ids)
  empty = jax.tree.map(jnp.zeros_like, state)

  def prefill(state, previous_id, tokens_c, ids_c):
    """One chunk after a chunk that ended in segment previous_id [B]."""
    new = ids_c[:, 0] != previous_id
    state = jax.tree.map(lambda e, s: jnp.where(new.reshape((B,) + (1,) * (s.ndim - 1)), e, s),
                         empty, state)
    logits, state = model.apply(variables, tokens_c, state, ids_c, method="prefill")
    return (logits[:, -1] if last_only else logits), state

  head = T % chunk_size
  outputs = []
  if head:
    logits, state = prefill(state, ids[:, 0], tokens[:, :head], ids[:, :head])
    outputs.append(logits)
  if T > head:
    chunks = lambda x: rearrange(x[:, head:], "b (n c) -> n b c", c=chunk_size)

    def body(carry, inputs):
      state, previous_id = carry
      tokens_c, ids_c = inputs
      logits, state = prefill(state, previous_id, tokens_c, ids_c)
      return (state, ids_c[:, -1]), logits

    previous = ids[:, head - 1] if head else ids[:, 0]
    (state, _), logits = jax.lax.scan(body, (state, previous), (chunks(tokens), chunks(ids)))
    outputs.append(logits[-1] if last_only else rearrange(logits, "n b c v -> b (n c) v"))
  if last_only:
    return outputs[-1], state
  return jnp.concatenate(outputs, axis=1), state


def start_decoding(model, variables, prompt, prompt_mask, rng, max_new_tokens, sampler,
                   prefill_chunk=None):
  """The prefill half of `generate` (pure; jit it with model, max_new_tokens, sampler and
  prefill_chunk static): the state sized init_state(B, P + max_new_tokens), the prompt run
  into it (whole, or `prefill_chunked` in chunks of prefill_chunk tokens), and the first new
  token sampled from the last prompt position's logits.

  prompt, prompt_mask: [B, P] (left-padded, see `generate`) -> (first token [B], state, keys
  [max_new_tokens - 1] for `decode_steps`)."""
  B, P = prompt.shape
  # Left padding is segment 0; the real tokens form segment 1, so recurrences start from zero
  # and rotary positions from 0 at the first real token.
  segment_ids = prompt_mask.astype(jnp.int32)
  state = model.apply(variables, B, P + max_new_tokens, method="init_state")
  if prefill_chunk is None:
    logits, state = model.apply(variables, prompt, state, segment_ids, method="prefill")
    last = logits[:, -1]
  else:
    last, state = prefill_chunked(model, variables, prompt, state, segment_ids,
                                  chunk_size=prefill_chunk, last_only=True)
  keys = jax.random.split(rng, max_new_tokens)
  return sampler(keys[0], last), state, keys[1:]


def decode_steps(model, variables, token, state, keys, sampler):
  """The decode half of `generate` (pure; jit it with model and sampler static): a `lax.scan`
  of `model.step`, each token fed back, one step per key.

  token: [B] int, state: the model's decoding state, keys: [n] -> tokens [B, n] (those after
  `token`) and the state after them."""
  def decode(carry, key):
    token, state = carry
    logits_t, state = model.apply(variables, token, state, method="step")
    token = sampler(key, logits_t)
    return (token, state), token

  (_, state), tokens = jax.lax.scan(decode, (token, state), keys)
  return tokens.T, state


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "sampler",
                                             "prefill_chunk"))
def _generate(model, variables, prompt, prompt_mask, rng, max_new_tokens, sampler,
              prefill_chunk=None):
  first, state, keys = start_decoding(model, variables, prompt, prompt_mask, rng,
                                      max_new_tokens, sampler, prefill_chunk)
  rest, _ = decode_steps(model, variables, first, state, keys, sampler)
  return jnp.concatenate([first[:, None], rest], axis=1).astype(prompt.dtype)


def generate(model: nn.Module, variables, prompt: jax.Array, max_new_tokens: int,
             rng: jax.Array, sampler: Sampler = GREEDY,
             prompt_mask: jax.Array | None = None,
             prefill_chunk: int | None = None) -> jax.Array:
  """Continues `prompt` by `max_new_tokens` tokens drawn with `sampler`.

  Args:
    model: a module with `prefill(tokens, state, segment_ids)`, `init_state` and `step`
      returning logits (`LanguageModel`), or a `BlockTransformer` (decoded block by block:
      `block_transformer.generate_blocks`).
    prompt: [B, P] int; prompts of different lengths are left-padded.
    max_new_tokens: number of tokens to generate (static: one compilation per value).
    rng: PRNG key (unused by greedy decoding).
    sampler: `Sampler(temperature, top_k, top_p)`; GREEDY by default.
    prompt_mask: [B, P] bool, True at real tokens (None: all real). Every row needs at least
      one real token, and the padding must be on the left (checked: right padding would
      decode after the padding and give other tokens than the prompt alone).
    prefill_chunk: run the prompt in chunks of this many tokens (`prefill_chunked`: the same
      result, activations of one chunk at a time, for long prompts at large batch); None:
      whole. Token models only (a BlockTransformer prefills its P / L blocks whole).
  Returns:
    new tokens [B, max_new_tokens], in the dtype of prompt.

  The prompt ids (padding included: it is embedded too) are checked against the model's
  vocabulary (`model.backbone.vocab_size`, `model.vocab_size`) before compilation. The state
  is sized `init_state(B, P + max_new_tokens)`, so decoding never runs past a KV cache's capacity
  (beyond it, full attention would see only the last capacity tokens).
  """
  if jnp.ndim(prompt) != 2 or not jnp.issubdtype(prompt.dtype, jnp.integer):
    raise ValueError(f"generate: prompt must be an int array [B, P]; got shape "
                     f"{tuple(jnp.shape(prompt))} dtype {prompt.dtype}")
  if max_new_tokens < 1:
    raise ValueError(f"generate: max_new_tokens must be >= 1; got {max_new_tokens}")
  if prompt_mask is None:
    prompt_mask = jnp.ones(prompt.shape, bool)
  elif jnp.shape(prompt_mask) != prompt.shape:
    raise ValueError(f"generate: prompt_mask must have the prompt's shape {prompt.shape}; "
                     f"got {tuple(jnp.shape(prompt_mask))}")
  check_left_padded(prompt_mask)
  prompt_mask = jnp.asarray(prompt_mask, bool)
  if prefill_chunk is not None and (not isinstance(prefill_chunk, int) or prefill_chunk < 1):
    raise ValueError(f"generate: prefill_chunk must be a positive int or None; got "
                     f"{prefill_chunk!r}")
  if isinstance(model, BlockTransformer):
    if prefill_chunk is not None:
      raise ValueError("generate: prefill_chunk is for token models; a BlockTransformer "
                       "prefills its P / L blocks whole")
    check_token_ids(prompt, model.vocab_size, "generate: prompt")
    return generate_blocks(model, variables, prompt, prompt_mask, rng, max_new_tokens,
                           sampler)[0]
  backbone = getattr(model, "backbone", None)
  check_token_ids(prompt, getattr(backbone, "vocab_size", None), "generate: prompt")
  return _generate(model, variables, prompt, prompt_mask, rng,
                   max_new_tokens, sampler, prefill_chunk)
