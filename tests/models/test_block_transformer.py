"""Block Transformer: causality by gradients, the loss against a per-token composition of its
parts, packed == alone, greedy generation == argmax of full forwards, the blocked caches,
config registration, and (slow) learning the byte-level LM."""
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from seqmodels import BlockTransformer, TaskFacts, build_model, generate
from seqmodels.block_transformer import generate_blocks
from seqmodels.sampling import GREEDY
from tests import harness

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VOCAB, L, R = 13, 4, 2
F64 = dict(dtype=jnp.float64, param_dtype=jnp.float64)
MODEL = BlockTransformer(vocab_size=VOCAB, block_length=L, d_block=16, d_token=8,
                         n_block_layers=1, n_token_layers=1, prefix_ratio=R,
                         mixer_kwargs={"attention": {"num_heads": 2, "head_dim": 4}}, **F64)
T_MAX = 16  # one padded length for every full forward below (one compilation)


def _tokens(seed, shape):
  return jax.random.randint(jax.random.key(seed), shape, 0, VOCAB)


@pytest.fixture(scope="module")
def variables():
  return harness.init_variables(MODEL, jax.random.key(0), _tokens(0, (1, T_MAX)))


@pytest.fixture(scope="module")
def forward(variables):
  """tokens [B, T_MAX], segment ids (default: one segment) -> logits (one compilation)."""
  apply = jax.jit(lambda tokens, ids: MODEL.apply(variables, tokens, ids))
  return lambda tokens, ids=None: apply(tokens, jnp.ones(tokens.shape, int) if ids is None
                                        else ids)


def test_causal_by_gradients(variables):
  T = 11  # not a multiple of L: the end is padded
  x_block, x_token = MODEL.apply(variables, _tokens(1, (1, T)), method="embed")
  logits = lambda xb, xt: MODEL.apply(variables, xb, xt, method="logits_from_embeddings")
  jac = jax.jit(jax.jacrev(logits, argnums=(0, 1)))(x_block, x_token)  # [1,T,V,1,T,F] each
  influence = sum(jnp.abs(j[0, :, :, 0]).sum(axis=(1, 3)) for j in jac)  # [t, s]
  assert float(jnp.triu(influence, k=1).max()) == 0.0  # logits_t never sees token s > t
  assert float(jnp.diagonal(influence).min()) > 0  # ... and always sees token t


def _reference_logits(variables, tokens):
  """logits [T, V] of one row [T], token by token from the parts: target u = t + 1 lies in
  block i = u // L at j = u % L; its context is the block decoder's last output over
  [s, emb(block_0), .., emb(block_{i-1})]; the token decoder reads [P_1..P_R, t_{iL} ..
  t_{iL+j-1}] and its last output gives the logits."""
  part = lambda fn: jax.jit(lambda *args: MODEL.apply(variables, *args, method=fn))
  embed = part(lambda m, tokens: m.embed(tokens[None]))
  context = part(lambda m, blocks: m.block_decoder(jnp.stack([m.start, *blocks])[None])[0])
  logits = part(lambda m, context, x: m.token_decoder.embed.attend(m.token_decoder.mix(
      jnp.concatenate([m.prefix(context), x])[None])[0][0, -1]))
  x_block, x_token = embed(tokens)
  rows = []
  for u in range(1, tokens.shape[0] + 1):
    i, j = divmod(u, L)
    blocks = [x_block[0, b * L:(b + 1) * L].reshape(-1) for b in range(i)]
    rows.append(logits(context(blocks)[0, -1], x_token[0, i * L:i * L + j]))
  return jnp.stack(rows)


def test_loss_is_the_mean_token_cross_entropy(variables, forward):
  T = 7  # targets in a full block and a partial one
  tokens = _tokens(2, (1, T_MAX))
  targets = _tokens(3, (T,))
  logits = forward(tokens)[0, :T]  # logits before T see tokens before T only
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
  reference = _reference_logits(variables, tokens[0, :T])
  expected = -jax.nn.log_softmax(reference)[np.arange(T), targets].mean()
  harness.assert_close(loss, expected, 1e-12, "loss")
  harness.assert_close(logits, reference, 1e-10, "logits")


def test_packed_equals_segments_alone(forward):
  tokens = _tokens(4, (2, T_MAX))
  ids = jnp.array([[1] * 4 + [2] * 8 + [3] * 4, [5] * 8 + [6] * 8])
  packed = forward(tokens, ids)
  for b in range(2):
    for start, end in harness.segment_bounds(ids[b]):
      alone = forward(jnp.pad(tokens[b:b + 1, start:end], ((0, 0), (0, T_MAX - end + start))))
      # The last logit of a segment predicts the next segment's first token: not compared.
      stop = end - start if end == T_MAX else end - start - 1
      harness.assert_close(packed[b, start:start + stop], alone[0, :stop], 1e-10,
                           f"row {b} segment [{start}, {end})")


def test_segments_off_block_boundaries_raise(variables):
  ids = jnp.array([[1] * 6 + [2] * 6])
  with pytest.raises(ValueError, match="row 0 starts at position 6, off a block boundary"):
    MODEL.apply(variables, _tokens(0, (1, 12)), ids)


# Prompts of 8 (ends on a block boundary), 6 (mid-block) and 3 (inside block 0) tokens,
# left-padded into one batch; 6 new tokens each.
LENGTHS, P, N = (8, 6, 3), 8, 6


@pytest.fixture(scope="module")
def decoded(variables):
  prompt = _tokens(5, (len(LENGTHS), P))
  mask = jnp.arange(P)[None] >= P - jnp.array(LENGTHS)[:, None]
  return prompt, mask, generate_blocks(MODEL, variables, prompt, mask, jax.random.key(0), N,
                                       GREEDY)


def test_greedy_generate_equals_argmax_of_full_forwards(variables, forward, decoded):
  prompt, mask, (new, _) = decoded
  np.testing.assert_array_equal(generate(MODEL, variables, prompt, N, jax.random.key(0),
                                         prompt_mask=mask), new)  # the public entry
  for b, length in enumerate(LENGTHS):
    row = list(np.asarray(prompt[b, P - length:]))  # the prompt alone
    for _ in range(N):
      padded = jnp.array([row + [0] * (T_MAX - len(row))])  # later tokens reach no logit
      row.append(int(jnp.argmax(forward(padded)[0, len(row) - 1])))
    np.testing.assert_array_equal(new[b], row[length:], err_msg=f"prompt of {length}")


def test_caches_are_blocked(decoded):
  """The block decoder holds one entry per block touched, ceil((P_b + N) / L), and the token
  decoder a row of R + L - 1 positions: a decoder that re-ran the model per token, or kept a
  token-level cache, fails this."""
  _, _, (_, (block_state, token_state)) = decoded
  for layer in block_state:
    np.testing.assert_array_equal(layer["pos"], [math.ceil((p + N) / L) for p in LENGTHS])
  for layer in token_state:
    assert layer["k"].shape[1] == R + L - 1
    np.testing.assert_array_equal(layer["pos"], R + L - 1)


def _chars_config(arg="model=attention,size=tiny,arch=block_transformer"):
  sys.path.insert(0, ROOT)
  from configs.lm import chars  # noqa: PLC0415 (configs is not an installed package)
  return chars.get_config(arg)


def test_config_builds_a_block_transformer():
  from train import config_lib  # noqa: PLC0415
  config = _chars_config()
  config_lib.validate(config)
  assert config.task.block_align == config.model.block_length == 4
  model = build_model(config.model, TaskFacts(vocab_size=256, segment_starts=4))
  assert isinstance(model, BlockTransformer)
  assert (model.d_block, model.n_token_layers, model.prefix_ratio) == (64, 2, 2)
  with pytest.raises(ValueError, match="task.block_align=4"):
    build_model(config.model, TaskFacts(vocab_size=256, segment_starts=1))
  config.model.mixer_kwargs = {"mamba": {"d_state": 4}}
  with pytest.raises(ValueError, match="model.mixer_kwargs.mamba: the model 'attention'"):
    config_lib.validate(config)


@pytest.mark.slow
def test_learns_the_byte_level_lm(tmp_path):
  """A short run on a repetitive corpus: a model that could not see earlier blocks or the
  current block's tokens stays near the unigram entropy (about 4 bits)."""
  from train.loop import train_and_evaluate  # noqa: PLC0415
  folder = tmp_path / "texts"
  folder.mkdir()
  text = ("It was the best of times, it was the worst of times, it was the age of wisdom, "
          "it was the age of foolishness. ")
  for i in range(6):
    (folder / f"{i}.txt").write_text(text * (3 + i) + f"chapter {i}\n")
  config = _chars_config()
  config.task.update(data=str(folder), seq_len=64, eval_fraction=0.2)
  config.model.update(d_block=32, d_token=32)
  config.run.update(steps=150, batch_size=8, eval_every=150, checkpoint_every=150,
                    eval_batches=1, progress=False)
  metrics = train_and_evaluate(config, str(tmp_path / "run"))
  assert metrics["eval_bits_per_byte"] < 2.0, metrics
