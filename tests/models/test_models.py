"""Backbone, LanguageModel, Classifier and the registry: decoding equals the whole-sequence
forward, causality, packing, pooling, and clear errors."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from seqmodels import ARCHITECTURES, Backbone, Classifier, LanguageModel, TaskFacts, build_model
from seqmodels import registry
from tests import harness

B, T, D, VOCAB = 2, 11, 16, 13
F64 = dict(dtype=jnp.float64, param_dtype=jnp.float64)
PATTERNS = ["attention", "swa", "s4d", "mingru", "minlstm", "mamba", "mamba2", "none",
            "mingru_attention", "retnet", "based", "gated_deltanet", "deltanet",
            "gated_deltanet_h1", "gated_deltanet_h2"]
SMALL = {"swa": {"window": 4}, "s4d": {"d_state": 8}, "mamba": {"d_state": 4},
         "mamba2": {"d_state": 8, "value_dim": 8, "chunk_size": 4},
         "retnet": {"num_heads": 2, "chunk_size": 4},
         "based": {"num_heads": 2, "head_dim": 4, "chunk_size": 4},
         "gated_deltanet": {"num_heads": 2, "head_dim": 4, "chunk_size": 4},
         "deltanet": {"num_heads": 2, "head_dim": 4, "chunk_size": 4}}


def _lm(pattern, **kw):
  names = registry.get_pattern(pattern)
  mixer_kwargs = {n: SMALL[n] for n in names if n in SMALL}
  return LanguageModel(Backbone(d_model=D, n_layers=len(names) if len(names) > 1 else 2,
                                pattern=pattern, vocab_size=VOCAB, mixer_kwargs=mixer_kwargs,
                                **F64), **kw)


def _tokens(seed=0, length=T):
  return jnp.asarray(np.random.default_rng(seed).integers(0, VOCAB, (B, length)), jnp.int32)


def _decode(model, variables, tokens, state):
  def step(state, tok):
    logits, state = model.apply(variables, tok, state, method="step")
    return state, logits
  state, logits = jax.lax.scan(step, state, tokens.T)
  return jnp.moveaxis(logits, 0, 1), state


@pytest.mark.parametrize("pattern", PATTERNS)
def test_steps_and_prefill_equal_whole_sequence(pattern):
  model, tokens, k = _lm(pattern), _tokens(), 5
  variables = harness.init_variables(model, jax.random.key(0), tokens)

  @jax.jit
  def run(variables, tokens):
    whole = model.apply(variables, tokens)
    stepped, _ = _decode(model, variables, tokens,
                         model.apply(variables, B, T, method="init_state"))
    prefix, state = model.apply(variables, tokens[:, :k],
                                model.apply(variables, B, T, method="init_state"),
                                method="prefill")
    rest, _ = _decode(model, variables, tokens[:, k:], state)
    return whole, stepped, jnp.concatenate([prefix, rest], axis=1)

  whole, stepped, prefilled = run(variables, tokens)
  harness.assert_close(stepped, whole, 1e-10, f"{pattern}: step by step")
  harness.assert_close(prefilled, whole, 1e-10, f"{pattern}: prefill {k} then steps")


@pytest.mark.parametrize("pattern", ["attention", "s4d", "mingru_attention"])
def test_backbone_is_causal(pattern):
  names = registry.get_pattern(pattern)
  model = Backbone(d_model=D, n_layers=len(names), pattern=pattern, input_dim=3,
                   mixer_kwargs={n: SMALL[n] for n in names if n in SMALL}, **F64)
  x = harness.rand(0, (1, 7, 3))
  variables = harness.init_variables(model, jax.random.key(0), x)
  jac = jax.jit(jax.jacrev(lambda x: model.apply(variables, x)[0]))(x)  # [1, T, D, 1, T, F]
  influence = jnp.abs(jac[0, :, :, 0]).sum(axis=(1, 3))  # [t, s]
  # Exactly zero, except for S4D's FFT convolution, whose roundoff (~1e-16) reaches everywhere.
  leak = 1e-13 * float(influence.max()) if "s4d" in names else 0.0
  assert float(jnp.triu(influence, k=1).max()) <= leak
  assert float(jnp.diagonal(influence).min()) > 0


@pytest.mark.parametrize("pattern", ["attention", "swa", "s4d", "mingru", "minlstm"])
def test_packed_backbone_equals_segments_alone(pattern):
  model = _lm(pattern)
  tokens = _tokens(3)
  segment_ids = harness.packed_segment_ids(B, T, seed=1)
  variables = harness.init_variables(model, jax.random.key(0), tokens)
  apply = jax.jit(lambda tokens, ids: model.apply(variables, tokens, ids))
  packed = apply(tokens, segment_ids)
  for b in range(B):
    for start, end in harness.segment_bounds(segment_ids[b]):
      alone = apply(tokens[b:b + 1, start:end], None)
      harness.assert_close(packed[b:b + 1, start:end], alone, 1e-10,
                           f"{pattern} row {b} [{start}:{end}]")


def test_untied_head_and_parameter_shapes():
  model = _lm("mingru", tie_embeddings=False)
  params = harness.init_variables(model, jax.random.key(0), _tokens())["params"]
  assert params["head"]["kernel"].shape == (D, VOCAB)
  assert params["backbone"]["embed"]["embedding"].shape == (VOCAB, D)
  assert set(params["backbone"]) == {"embed", "blocks_0", "blocks_1", "norm"}
  tied = harness.init_variables(_lm("mingru"), jax.random.key(0), _tokens())["params"]
  assert "head" not in tied


@pytest.mark.parametrize("pooling", ["mean", "last"])
@pytest.mark.parametrize("pattern", ["attention", "s4d"])
def test_classifier_pools_over_real_tokens(pooling, pattern):
  backbone = Backbone(d_model=D, n_layers=1, pattern=pattern, vocab_size=VOCAB, causal=False,
                      mixer_kwargs={n: SMALL[n] for n in [pattern] if n in SMALL}, **F64)
  model = Classifier(backbone, num_classes=3, pooling=pooling)
  tokens = _tokens(4)
  segment_ids = jnp.array([[1] * 8 + [0] * 3, [1] * T])  # row 0 right-padded
  variables = harness.init_variables(model, jax.random.key(0), tokens, segment_ids)
  logits = model.apply(variables, tokens, segment_ids)
  assert logits.shape == (B, 3)
  alone = model.apply(variables, tokens[:1, :8])
  harness.assert_close(logits[:1], alone, 1e-10, "padding does not change the logits")
  h, _ = backbone.apply({"params": variables["params"]["backbone"]}, tokens[1:])
  pooled = h.mean(1) if pooling == "mean" else h[:, -1]
  head = variables["params"]["head"]
  harness.assert_close(logits[1:], pooled @ head["kernel"] + head["bias"][None], 1e-10, pooling)


def test_bidirectional_backbone_sees_the_future():
  backbone = Backbone(d_model=D, n_layers=1, pattern="attention", input_dim=3, causal=False,
                      **F64)
  x = harness.rand(0, (1, 5, 3))
  variables = harness.init_variables(backbone, jax.random.key(0), x)
  jac = jax.jacrev(lambda x: backbone.apply(variables, x)[0])(x)
  assert float(jnp.abs(jac[0, 0, :, 0, 4]).sum()) > 0


def _model_config(architecture, mixer="s4d", **kw):
  """A config.model as train/config_lib.py makes it."""
  return ml_collections.ConfigDict(dict(
      architecture=architecture, mixer=mixer, d_model=D, n_layers=1, mlp_expand=2.0,
      tie_embeddings=True, dtype="float64", mixer_kwargs={"s4d": {"d_state": 4}}, **kw))


@pytest.mark.parametrize("architecture, facts, inputs, logits_shape", [
    ("lm", TaskFacts(vocab_size=VOCAB), jnp.zeros((B, T), jnp.int32), (B, T, VOCAB)),
    ("classifier", TaskFacts(vocab_size=VOCAB, causal=False, num_classes=3),
     jnp.zeros((B, T), jnp.int32), (B, 3)),
    ("classifier", TaskFacts(input_dim=5, causal=False, num_classes=4, pooling="last",
                             two_tower=True), jnp.zeros((B, 2, T, 5)), (B, 4)),
])
def test_every_architecture_builds_from_config_and_task_facts_and_trains_by_one_call(
    architecture, facts, inputs, logits_shape):
  # (block_transformer: tests/models/test_block_transformer.py)
  assert set(ARCHITECTURES) == {"lm", "classifier", "block_transformer"}
  model = build_model(_model_config(architecture), facts)
  segment_ids = jnp.ones(inputs.shape[:3 if facts.two_tower else 2], jnp.int32)
  variables = harness.init_variables(model, jax.random.key(0), inputs)  # segment_ids: None
  logits = model.apply(variables, inputs, segment_ids)
  assert logits.shape == logits_shape
  backbone = model.backbone
  assert (backbone.causal, backbone.vocab_size, backbone.input_dim) == (
      facts.causal, facts.vocab_size, facts.input_dim)
  assert backbone.mixer_kwargs == {"s4d": {"d_state": 4}}
  if architecture == "classifier":
    assert (model.num_classes, model.pooling, model.two_tower) == (
        facts.num_classes, facts.pooling, facts.two_tower)


def test_tie_embeddings_comes_from_the_config():
  config = _model_config("lm")
  assert build_model(config, TaskFacts(vocab_size=VOCAB)).tie_embeddings
  config.tie_embeddings = False
  assert not build_model(config, TaskFacts(vocab_size=VOCAB)).tie_embeddings


@pytest.mark.parametrize("make, message", [
    (lambda: registry.build_mixer("lstm", D), r"unknown mixer 'lstm'; known: attention, "),
    (lambda: registry.get_pattern("transformer++"), r"unknown mixer or block pattern"),
    (lambda: registry.get_pattern(["mingru", "gru"]), r"unknown mixer 'gru'"),
    (lambda: registry.build_mixer("s4d", D, overrides={"d_stat": 4}),
     r"mixer 's4d': unknown option\(s\) d_stat; known: .*d_state"),
    (lambda: build_model(_model_config("seq2seq"), TaskFacts(vocab_size=VOCAB)),
     r"model.architecture='seq2seq' is unknown; known: block_transformer, classifier, lm"),
    (lambda: build_model(_model_config("lm"), TaskFacts(vocab_size=VOCAB, num_classes=2)),
     r"architecture='lm' predicts tokens, but the task has 2 classes; use 'classifier'"),
    (lambda: build_model(_model_config("classifier"), TaskFacts(vocab_size=VOCAB)),
     r"architecture='classifier' needs a classification task"),
])
def test_registry_errors_list_known_names(make, message):
  with pytest.raises(ValueError, match=message):
    make()


@pytest.mark.parametrize("model, inputs, message", [
    (_lm("mingru"), jnp.ones((B, T, 2), jnp.int32), r"token inputs must be an int array \[B, T\]"),
    (_lm("mingru"), jnp.ones((B, T)), r"token inputs must be an int array"),
    (LanguageModel(Backbone(d_model=D, n_layers=1, input_dim=3)), jnp.ones((B, T, 3)),
     r"LanguageModel: the backbone must be causal with token inputs"),
    (Backbone(d_model=D, n_layers=1, input_dim=3), jnp.ones((B, T, 4)),
     r"feature inputs must have shape \[B, T, F=3\]"),
    (Backbone(d_model=D, n_layers=1, vocab_size=5, input_dim=3), jnp.ones((B, T), jnp.int32),
     r"set exactly one of vocab_size"),
    (Backbone(d_model=D, n_layers=1, vocab_size=5, mixer_kwargs={"s4d": {}}),
     jnp.ones((B, T), jnp.int32), r"mixer_kwargs for s4d, which the pattern"),
])
def test_bad_model_inputs_raise(model, inputs, message):
  with pytest.raises(ValueError, match=message):
    harness.init_variables(model, jax.random.key(0), inputs)
