"""Block Transformer (Ho et al. 2024, "Global-to-Local Language Modeling for Fast Inference"):
a global block decoder over blocks of L tokens and a local token decoder inside each block.

Training runs the whole sequence at once (`BlockTransformer.__call__`); decoding
(`generate_blocks`, reached through `seqmodels.generate`) advances the block decoder's cache by
one entry per block and runs the token decoder with a cache of R + L - 1 positions that is
reset every block.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange
from flax import linen as nn
from flax.core import FrozenDict

from layers import axes
from seqmodels import registry
from seqmodels.backbone import Backbone
from seqmodels.sampling import Sampler


def check_block_aligned(segment_ids, block_length: int) -> None:
  """Raises a ValueError naming the first segment of `segment_ids` [B, T] that starts off a
  block boundary (a position not a multiple of `block_length`). Traced ids are not checked."""
  if segment_ids is None or isinstance(segment_ids, jax.core.Tracer):
    return
  ids = np.asarray(segment_ids)
  starts = np.argwhere(ids[:, 1:] != ids[:, :-1]) + [0, 1]
  off = starts[starts[:, 1] % block_length != 0]
  if len(off):
    row, col = off[0]
    raise ValueError(f"BlockTransformer: a segment of row {row} starts at position {col}, off "
                     f"a block boundary (a multiple of block_length={block_length}); pack "
                     "documents block-aligned (CharLM: task.block_align = block_length)")


class BlockTransformer(nn.Module):
  """Global-to-local language model over blocks of L = `block_length` tokens.

  - Embedder: token t gets e_t = E_b[t] in R^{d_block / L}; block i's embedding is the
    concatenation [e_{iL}, .., e_{iL+L-1}] in R^{d_block}.
  - Block decoder: a causal `Backbone` (pattern `block_pattern`, rotary position = block
    index) over [s, emb_0, .., emb_{n-2}] with s a learned start embedding; its output c_i at
    position i (input: block i - 1) is the context of block i, so block i's tokens never see
    their own block's embedding, and block 0's context comes from s alone.
  - Token decoder (prefix strategy): c_i -> R = `prefix_ratio` prefix vectors
    [P_1..P_R] = W c_i (width d_token); each block is its own row
    [P_1..P_R, t_{iL}, .., t_{iL+L-2}] of R + L - 1 positions (causal, positions from 0), and
    its last L outputs h give the logits h E_t^T (tied to the token decoder's embedding E_t)
    of the block's L tokens.

  `__call__(tokens, segment_ids) -> logits [B, T, V]` is aligned as a token LM's: logits[:, t]
  predicts tokens[:, t + 1] (the model's prediction of token 0 from s is dropped; the one of
  token T comes from one more block, padded). T need not be a multiple of L: the end is padded
  and padded positions reach no returned logit. Packed segments must start on block
  boundaries (checked on concrete ids); no block attends across segments.
  """
  vocab_size: int
  block_length: int = 4
  d_block: int = 128
  d_token: int = 128
  n_block_layers: int = 2
  n_token_layers: int = 2
  block_pattern: str | tuple = "attention"
  token_pattern: str | tuple = "attention"
  prefix_ratio: int = 2
  mixer_kwargs: FrozenDict = FrozenDict()  # {mixer name: {option: value}}, both decoders
  mlp_expand: float = 8 / 3
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def __post_init__(self):
    object.__setattr__(self, "mixer_kwargs", FrozenDict(self.mixer_kwargs))
    for name in ("block_pattern", "token_pattern"):
      if not isinstance(getattr(self, name), str):
        object.__setattr__(self, name, tuple(getattr(self, name)))
    super().__post_init__()

  def setup(self):
    L = self.block_length
    if L < 1 or self.prefix_ratio < 1 or self.d_block % L:
      raise ValueError(f"BlockTransformer: expected block_length >= 1, prefix_ratio >= 1 and "
                       f"d_block divisible by block_length; got block_length={L}, "
                       f"prefix_ratio={self.prefix_ratio}, d_block={self.d_block}")
    modules = dict(dtype=self.dtype, param_dtype=self.param_dtype)

    def decoder(d_model, n_layers, pattern, **inputs):
      used = set(registry.get_pattern(pattern))
      return Backbone(d_model=d_model, n_layers=n_layers, pattern=pattern,
                      mixer_kwargs={k: v for k, v in self.mixer_kwargs.items() if k in used},
                      mlp_expand=self.mlp_expand, **inputs, **modules)

    self.block_embed = nn.Embed(
        self.vocab_size, self.d_block // L, param_dtype=self.param_dtype,
        embedding_init=axes.param(nn.initializers.normal(stddev=1.0), axes.VOCAB, None,
                                  group=axes.NO_DECAY))
    self.start = self.param("start", axes.param(nn.initializers.normal(stddev=1.0),
                                                axes.EMBED, group=axes.NO_DECAY),
                            (self.d_block,), self.param_dtype)
    self.block_decoder = decoder(self.d_block, self.n_block_layers, self.block_pattern,
                                 input_dim=self.d_block)
    self.prefix = nn.DenseGeneral((self.prefix_ratio, self.d_token), use_bias=False,
                                  kernel_init=axes.kernel(None, None, axes.EMBED), **modules)
    self.token_decoder = decoder(self.d_token, self.n_token_layers, self.token_pattern,
                                 vocab_size=self.vocab_size)

  def _logits(self, h):
    logits = self.token_decoder.embed.attend(h)
    return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))

  def embed(self, tokens):
    """tokens: [B, T] int -> (x_block: [B, T, d_block / L], x_token: [B, T, d_token]): each
    token's slice of its block embedding and its token-decoder input."""
    if jnp.ndim(tokens) != 2 or not jnp.issubdtype(jnp.asarray(tokens).dtype, jnp.integer):
      raise ValueError(f"BlockTransformer: tokens must be an int array [B, T]; got shape "
                       f"{tuple(jnp.shape(tokens))} dtype {jnp.asarray(tokens).dtype}")
    return self.block_embed(tokens).astype(self.dtype), self.token_decoder.embed_inputs(tokens)

  def __call__(self, tokens, segment_ids=None):
    """tokens: [B, T] int, segment_ids: [B, T] -> logits: [B, T, vocab] (float32 or wider),
    logits[:, t] predicting tokens[:, t + 1]."""
    return self.logits_from_embeddings(*self.embed(tokens), segment_ids)

  def logits_from_embeddings(self, x_block, x_token, segment_ids=None):
    """The model after `embed`: x_block [B, T, d_block / L], x_token [B, T, d_token] ->
    logits [B, T, vocab] (a token's embeddings reach logits t >= its position only)."""
    B, T = x_block.shape[:2]
    L, R = self.block_length, self.prefix_ratio
    if segment_ids is not None and jnp.shape(segment_ids) != (B, T):
      raise ValueError(f"BlockTransformer: segment_ids must have shape {(B, T)}; got "
                       f"{tuple(jnp.shape(segment_ids))}")
    check_block_aligned(segment_ids, L)
    n = T // L + 1  # blocks covering positions 0..T (position T: the prediction after the end)
    pad = lambda x: jnp.pad(x, ((0, 0), (0, n * L - T), (0, 0)))
    x_block, x_token = pad(x_block), pad(x_token)
    emb = rearrange(x_block, "b (n l) d -> b n (l d)", l=L)
    if segment_ids is None:
      block_ids = None
      first = jnp.arange(n)[None] == 0
    else:
      block_ids = jnp.pad(segment_ids, ((0, 0), (0, n * L - T)), mode="edge")[:, ::L]
      first = jnp.concatenate([jnp.ones((B, 1), bool), block_ids[:, 1:] != block_ids[:, :-1]],
                              axis=1)
    # Block i's input: the embedding of block i - 1, or s where block i starts a segment.
    previous = jnp.pad(emb, ((0, 0), (1, 0), (0, 0)))[:, :-1]
    inputs = jnp.where(first[..., None], self.start[None, None].astype(emb.dtype), previous)
    context, _ = self.block_decoder(inputs, None, block_ids)
    rows = jnp.concatenate([
        rearrange(self.prefix(context), "b n r d -> (b n) r d"),
        rearrange(x_token, "b (n l) d -> (b n) l d", l=L)[:, :L - 1].astype(self.dtype)], axis=1)
    h, _ = self.token_decoder.mix(rows)
    h = rearrange(h[:, R - 1:], "(b n) l d -> b (n l) d", b=B)
    return self._logits(h[:, 1:T + 1])

  # Decoding, one method per phase (`generate_blocks` drives them).

  def init_block_state(self, batch_size: int, max_blocks: int):
    """Empty block-decoder states for up to `max_blocks` block positions."""
    return self.block_decoder.init_state(batch_size, max_blocks)

  def init_token_state(self, batch_size: int):
    """Empty token-decoder states of R + L - 1 positions (one block's row)."""
    return self.token_decoder.init_state(batch_size,
                                         self.prefix_ratio + self.block_length - 1)

  def block_inputs(self, blocks):
    """blocks: [B, n, L] int -> block embeddings [B, n, d_block]."""
    x_block, _ = self.embed(rearrange(blocks, "b n l -> b (n l)"))
    return rearrange(x_block, "b (n l) d -> b n (l d)", l=self.block_length)

  def block_prefill(self, blocks, valid, state):
    """Runs [s, emb(blocks_0), ..] of each row into the block decoder, left-padded: blocks
    [B, n, L] int, valid [B, n + 1] bool (False = padding, on the left; the first valid
    position takes s) -> (context of the next block [B, d_block], block-decoder states)."""
    emb = jnp.pad(self.block_inputs(blocks), ((0, 0), (1, 0), (0, 0)))
    first = valid & ~jnp.pad(valid, ((0, 0), (1, 0)))[:, :-1]
    inputs = jnp.where(first[..., None], self.start[None, None].astype(emb.dtype), emb)
    context, state = self.block_decoder(inputs, state, valid.astype(jnp.int32))
    return context[:, -1], state

  def block_step(self, block, state):
    """block: [B, L] int, a finished block -> (context of the next block [B, d_block],
    block-decoder states advanced by one entry)."""
    return self.block_decoder.step(self.block_inputs(block[:, None])[:, 0], state)

  def token_prefill(self, context, state):
    """context: [B, d_block], state: empty token-decoder states -> (logits of the block's
    first token [B, vocab], states holding the R prefix positions)."""
    h, state = self.token_decoder.mix(self.prefix(context), state)
    return self._logits(h[:, -1]), state

  def token_step(self, tokens_t, state):
    """tokens_t: [B] int, a token of the current block -> (logits of the next [B, vocab],
    token-decoder states)."""
    h, state = self.token_decoder.step(tokens_t, state)
    return self._logits(h), state


def start_blocks(model: BlockTransformer, variables, prompt, prompt_mask, rng,
                 max_new_tokens: int):
  """The prefill half of `generate_blocks` (pure; jit it with model and max_new_tokens
  static): each row re-aligned to start at position 0, its complete blocks run into the block
  decoder (left-padded across rows, so every row holds its own count).

  prompt, prompt_mask: [B, P] -> the carry of `decode_blocks`: (context of the next block
  [B, d_block], block-decoder states, the prompt's tokens of the block it ends in [B, L],
  how many there are r_b [B], keys [n_iter, L])."""
  apply = functools.partial(model.apply, variables)
  B, P = prompt.shape
  L, N = model.block_length, max_new_tokens
  length = prompt_mask.sum(axis=1).astype(jnp.int32)  # P_b
  complete, offset = length // L, length % L  # n_b complete prompt blocks, r_b tokens after
  # Row b's tokens from position 0 (right-padded): shift left by its padding.
  index = jnp.arange(P)[None] + (P - length)[:, None]
  tokens = jnp.take_along_axis(prompt, jnp.minimum(index, P - 1), axis=1)
  n = P // L  # the most complete blocks a row can have
  blocks = rearrange(tokens[:, :n * L], "b (n l) -> b n l", l=L)
  # Left-pad the block sequence [s, blocks_0 .. blocks_{n_b - 1}] to n + 1 positions.
  pad = n - complete
  gather = jnp.clip(jnp.arange(n)[None] - pad[:, None], 0, max(n - 1, 0))
  blocks = jnp.take_along_axis(blocks, gather[..., None], axis=1)
  valid = jnp.arange(n + 1)[None] >= pad[:, None]
  n_iter = -(-(L - 1 + N) // L)  # blocks the scan visits: enough for r_b = L - 1
  block_state = apply(B, n + n_iter, method="init_block_state")
  context, block_state = apply(blocks, valid, block_state, method="block_prefill")
  # The prompt's tokens in the block it ends in (forced in the first block of the scan).
  partial = jnp.take_along_axis(
      tokens, jnp.minimum(complete[:, None] * L + jnp.arange(L)[None], P - 1), axis=1)
  return context, block_state, partial, offset, jax.random.split(rng, (n_iter, L))


def decode_blocks(model: BlockTransformer, variables, context, block_state, partial, offset,
                  keys, max_new_tokens: int, sampler: Sampler):
  """The decode half of `generate_blocks` (pure; jit it with model, max_new_tokens and sampler
  static), on `start_blocks`'s carry: a `lax.scan` over blocks runs the token decoder (reset
  to the R prefix positions of the block's context) through the block's L positions, forcing
  the prompt's tokens of a block the prompt ends in, sampling the rest, and advances the block
  decoder by the finished block while the row needs more tokens.

  -> (new tokens [B, max_new_tokens] int32, (block-decoder states, token-decoder states))."""
  apply = functools.partial(model.apply, variables)
  B, L, N = partial.shape[0], model.block_length, max_new_tokens
  forced0 = jnp.arange(L)[None] < offset[:, None]

  def token(carry, inputs):
    logits, state = carry
    key, forced, prompt_token = inputs
    t = jnp.where(forced, prompt_token, sampler(key, logits).astype(partial.dtype))
    return apply(t, state, method="token_step"), t

  def block(carry, inputs):
    context, block_state, _ = carry
    k, keys = inputs
    logits, token_state = apply(context, apply(B, method="init_token_state"),
                                method="token_prefill")
    forced = (forced0 & (k == 0)).T  # [L, B]
    prompt_tokens = partial.T
    # Positions 0 .. L - 2 feed the token decoder; the last token only ends the block.
    (logits, token_state), head = jax.lax.scan(
        token, (logits, token_state), (keys[:-1], forced[:-1], prompt_tokens[:-1]))
    last = jnp.where(forced[-1], prompt_tokens[-1],
                     sampler(keys[-1], logits).astype(partial.dtype))
    new = jnp.concatenate([head, last[None]], axis=0).T  # [B, L]
    more = offset + N > (k + 1) * L  # the row needs the next block
    next_context, next_state = apply(new, block_state, method="block_step")
    keep = lambda a, b: jnp.where(more.reshape((B,) + (1,) * (a.ndim - 1)), a, b)
    block_state = jax.tree.map(keep, next_state, block_state)
    context = keep(next_context, context)
    return (context, block_state, token_state), new

  token_state = apply(B, method="init_token_state")
  (_, block_state, token_state), out = jax.lax.scan(
      block, (context, block_state, token_state), (jnp.arange(len(keys)), keys))
  out = rearrange(out, "k b l -> b (k l)")
  new_tokens = jnp.take_along_axis(out, offset[:, None] + jnp.arange(N)[None], axis=1)
  return new_tokens, (block_state, token_state)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "sampler"))
def generate_blocks(model: BlockTransformer, variables, prompt, prompt_mask, rng,
                    max_new_tokens: int, sampler: Sampler):
  """Block-cached decoding: prompt [B, P] int, left-padded as `prompt_mask` [B, P] bool says
  -> (new tokens [B, max_new_tokens], (block-decoder states, token-decoder states) at the end):
  `start_blocks` (the prompt's complete blocks into the block decoder) then `decode_blocks`
  (a `lax.scan` over blocks of the token decoder, the block decoder advanced by one entry per
  finished block). After P_b + N tokens row b's block decoder holds ceil((P_b + N) / L)
  entries.
  """
  carry = start_blocks(model, variables, prompt, prompt_mask, rng, max_new_tokens)
  new_tokens, states = decode_blocks(model, variables, *carry, max_new_tokens=max_new_tokens,
                                     sampler=sampler)
  return new_tokens.astype(prompt.dtype), states
