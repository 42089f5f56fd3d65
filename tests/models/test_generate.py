"""generate: greedy decoding equals argmax of repeated full forwards (left-padded prompts of
different lengths included), one compilation per shape; samplers filter as documented."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqmodels import GREEDY, Backbone, BlockTransformer, LanguageModel, Sampler, generate
from tests import harness

generate_module = importlib.import_module("seqmodels.generate")

VOCAB, P, N = 11, 6, 4


def _model(pattern):
  return LanguageModel(Backbone(d_model=16, n_layers=2, pattern=pattern, vocab_size=VOCAB,
                                mixer_kwargs={"s4d": {"d_state": 8}} if pattern == "s4d" else {},
                                dtype=jnp.float64, param_dtype=jnp.float64))


@pytest.mark.parametrize("pattern", ["mingru_attention",
                                     pytest.param("s4d", marks=pytest.mark.slow)])
def test_greedy_equals_argmax_of_full_forwards(pattern):
  model = _model(pattern)
  prompt = jnp.array([[3, 1, 4, 1, 5, 9], [0, 0, 0, 2, 6, 5]], jnp.int32)
  mask = jnp.array([[True] * P, [False] * 3 + [True] * 3])
  variables = harness.init_variables(model, jax.random.key(0), prompt)
  out = generate(model, variables, prompt, N, jax.random.key(1), prompt_mask=mask)
  assert out.shape == (2, N) and out.dtype == prompt.dtype
  forward = jax.jit(lambda tokens: model.apply(variables, tokens)[0, -1])
  for row in range(2):
    tokens = list(np.asarray(prompt[row])[np.asarray(mask[row])])
    for _ in range(N):
      tokens.append(int(jnp.argmax(forward(jnp.asarray([tokens], jnp.int32)))))
    np.testing.assert_array_equal(out[row], tokens[-N:], err_msg=f"{pattern} row {row}")


def test_compiles_once_per_shape():
  model = _model("mingru_attention")
  prompt = jnp.ones((2, P), jnp.int32)
  variables = harness.init_variables(model, jax.random.key(0), prompt)
  generate(model, variables, prompt, N, jax.random.key(0))
  before = generate_module._generate._cache_size()
  sampler = Sampler(temperature=0.7, top_k=5)
  for seed in range(3):
    generate(model, variables, prompt + seed, N, jax.random.key(seed), sampler=sampler)
  assert generate_module._generate._cache_size() == before + 1  # the new sampler only


def test_sampling_is_seeded_and_stays_in_top_k():
  model = _model("mingru")
  prompt = jnp.ones((2, P), jnp.int32)
  variables = harness.init_variables(model, jax.random.key(0), prompt)
  sampler = Sampler(temperature=2.0, top_k=3)
  a = generate(model, variables, prompt, 8, jax.random.key(5), sampler)
  b = generate(model, variables, prompt, 8, jax.random.key(5), sampler)
  np.testing.assert_array_equal(a, b)


def test_filters_keep_top_k_and_nucleus():
  logits = jnp.log(jnp.array([[0.5, 0.05, 0.3, 0.15]]))
  kept = lambda s: np.isfinite(np.asarray(s.filter_logits(logits)))[0].tolist()
  assert kept(Sampler(top_k=2)) == [True, False, True, False]
  assert kept(Sampler(top_p=0.5)) == [True, False, False, False]
  assert kept(Sampler(top_p=0.8)) == [True, False, True, False]
  assert kept(Sampler(top_p=0.81)) == [True, False, True, True]
  assert kept(Sampler(top_p=1.0)) == [True, True, True, True]
  np.testing.assert_allclose(Sampler(temperature=0.5).filter_logits(logits), 2 * logits,
                             rtol=1e-6)


def test_temperature_one_samples_the_softmax():
  probs = np.array([0.5, 0.05, 0.3, 0.15])
  logits = jnp.log(jnp.broadcast_to(jnp.asarray(probs), (20000, 4)))
  draws = np.asarray(Sampler()(jax.random.key(0), logits))
  freq = np.bincount(draws, minlength=4) / len(draws)
  np.testing.assert_allclose(freq, probs, atol=0.015)
  assert (np.asarray(GREEDY(jax.random.key(0), logits)) == 0).all()


@pytest.mark.parametrize("make, message", [
    (lambda: Sampler(temperature=-1.0), r"temperature must be >= 0"),
    (lambda: Sampler(top_k=0), r"top_k must be a positive int"),
    (lambda: Sampler(top_p=1.5), r"top_p must be in \(0, 1\]"),
    (lambda: generate(_model("mingru"), {}, jnp.ones((2,), jnp.int32), 3, jax.random.key(0)),
     r"prompt must be an int array \[B, P\]"),
    (lambda: generate(_model("mingru"), {}, jnp.ones((2, 3), jnp.int32), 0, jax.random.key(0)),
     r"max_new_tokens must be >= 1"),
    (lambda: generate(_model("mingru"), {}, jnp.ones((2, 3), jnp.int32), 2, jax.random.key(0),
                      prompt_mask=jnp.ones((2, 4), bool)), r"prompt_mask must have the prompt"),
    (lambda: generate(_model("mingru"), {}, jnp.array([[1, 100, 2]]), 2, jax.random.key(0)),
     r"token id 100 at index \(0, 1\) is outside the vocabulary \[0, 11\)"),
    (lambda: generate(_model("mingru"), {}, jnp.array([[1, -1, 2]]), 2, jax.random.key(0)),
     r"token id -1 .* outside the vocabulary"),
    (lambda: generate(_model("mingru"), {}, jnp.ones((2, 3), jnp.int32), 2, jax.random.key(0),
                      prompt_mask=jnp.array([[1, 1, 1], [1, 1, 0]], bool)),
     r"prompt row 1 has padding at index 2 after a real token; prompts must be left-padded"),
    (lambda: generate(_model("mingru"), {}, jnp.ones((2, 3), jnp.int32), 2, jax.random.key(0),
                      prompt_mask=jnp.array([[1, 1, 1], [0, 0, 0]], bool)),
     r"prompt row 1 has no real token"),
    (lambda: generate(_model("mingru"), {}, jnp.ones((2, 3), jnp.int32), 2, jax.random.key(0),
                      prefill_chunk=0), r"prefill_chunk must be a positive int or None"),
    (lambda: generate(BlockTransformer(vocab_size=VOCAB), {}, jnp.ones((2, 3), jnp.int32), 2,
                      jax.random.key(0), prefill_chunk=2),
     r"prefill_chunk is for token models; a BlockTransformer prefills its P / L blocks whole"),
    (lambda: generate_module.prefill_chunked(_model("mingru"), {}, jnp.ones((2, 3), jnp.int32),
                                             None, chunk_size=0),
     r"chunk_size must be a positive int"),
    (lambda: generate_module.prefill_chunked(_model("mingru"), {}, jnp.ones((2, 0), jnp.int32),
                                             None, chunk_size=2),
     r"tokens must be \[B, T\] with T >= 1"),
])
def test_bad_arguments_raise(make, message):
  with pytest.raises(ValueError, match=message):
    make()


def test_full_attention_prefill_past_the_cache_capacity_raises():
  """Full attention over more tokens than its cache holds would silently slide a window."""
  model = _model("attention")
  prompt = jnp.ones((1, P), jnp.int32)
  variables = harness.init_variables(model, jax.random.key(0), prompt)
  state = model.apply(variables, 1, P - 1, method="init_state")
  with pytest.raises(ValueError, match=r"6 tokens do not fit a full-attention KV cache of "
                                       r"capacity 5"):
    model.apply(variables, prompt, state, method="prefill")
  model.apply(variables, prompt, model.apply(variables, 1, P, method="init_state"),
              method="prefill")  # fits



CHUNKED = ("attention", "swa", "mingru", "gated_deltanet")  # one layer each
T_CHUNKED, CHUNK = 13, 4  # a head of 1 token, then 3 chunks


def _chunked_case():
  """A 4-layer model (full attention, window 3 < chunk, two recurrences), a 3-row prompt of
  13 tokens: row 0 all real, row 1 left padding that ends exactly at a chunk boundary (the
  state restarts there), row 2 padding that ends inside a chunk."""
  model = LanguageModel(Backbone(d_model=16, n_layers=len(CHUNKED), pattern=CHUNKED,
                                 vocab_size=VOCAB, mixer_kwargs={"swa": {"window": 3}},
                                 dtype=jnp.float64, param_dtype=jnp.float64))
  tokens = jax.random.randint(jax.random.key(2), (3, T_CHUNKED), 0, VOCAB)
  ids = (jnp.arange(T_CHUNKED)[None] >= jnp.array([[0], [5], [7]])).astype(jnp.int32)
  return model, harness.init_variables(model, jax.random.key(0), tokens), tokens, ids


def test_chunked_prefill_equals_whole_prefill():
  """prefill_chunked: the logits and every layer's state equal one whole prefill."""
  model, variables, tokens, ids = _chunked_case()
  state = model.apply(variables, 3, T_CHUNKED + 3, method="init_state")
  whole = jax.jit(lambda t, s, i: model.apply(variables, t, s, i, method="prefill"))(
      tokens, state, ids)
  chunked = jax.jit(lambda t, s, i: generate_module.prefill_chunked(
      model, variables, t, s, i, chunk_size=CHUNK))(tokens, state, ids)
  harness.assert_close(chunked[0], whole[0], harness.OUT_TOL, "logits")
  for name, a, b in zip(CHUNKED, chunked[1], whole[1]):
    harness.assert_close(a, b, harness.OUT_TOL, f"{name} state")


@pytest.mark.slow
def test_generate_with_chunked_prefill_equals_whole():
  model, variables, tokens, ids = _chunked_case()
  run = lambda chunk: generate(model, variables, tokens, 5, jax.random.key(1),
                               prompt_mask=ids.astype(bool), prefill_chunk=chunk)
  np.testing.assert_array_equal(run(CHUNK), run(None))
