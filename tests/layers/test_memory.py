"""ProductKeyMemory / Memory+: the layer against its equations written out in numpy, init
statistics and groups, the backbone's shared value table, usage counts, decoding with memory
layers in the stack, and the input checks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from layers import ProductKeyMemory, axes
from seqmodels import Backbone, LanguageModel, generate
from tests import harness
from train.metrics import memory_rows, memory_usage

F64 = dict(dtype=jnp.float64, param_dtype=jnp.float64)
B, T, D, VOCAB = 2, 7, 8, 13
SMALL = dict(n_keys=6, heads=2, topk=3, k_dim=4)


def _randomised(variables, seed=1):
  """Every parameter replaced by N(0, 1) draws, so zero biases and unit scales count too."""
  leaves, tree = jax.tree.flatten(variables)
  return tree.unflatten([harness.rand(seed + i, x.shape) for i, x in enumerate(leaves)])


def _numpy_memory(p, x, memory_plus, heads, topk, k_dim):
  """The layer's equations in numpy, every product key scored."""
  p, x = jax.tree.map(np.asarray, p), np.asarray(x)
  q = x @ p["query"]["kernel"] + p["query"]["bias"]
  q = q.reshape(*x.shape[:-1], heads, 2, k_dim // 2)
  q = (q - q.mean(-1, keepdims=True)) / np.sqrt(q.var(-1, keepdims=True) + 1e-6)
  q = q * p["norm"]["scale"] + p["norm"]["bias"]
  s = np.einsum("bthck,hcnk->bthcn", q, p["keys"])
  full = (s[..., 0, :, None] + s[..., 1, None, :]).reshape(*s.shape[:3], -1)
  idx = np.argsort(-full, axis=-1)[..., :topk]
  scores = np.take_along_axis(full, idx, -1)
  w = np.exp(scores - scores.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  out = np.einsum("bthk,bthkv->btv", w, p["table"]["table"][idx])
  if memory_plus:
    gate = x @ p["gate_proj"]["kernel"] + p["gate_proj"]["bias"]
    out = (out * gate / (1 + np.exp(-gate))) @ p["out_proj"]["kernel"] + p["out_proj"]["bias"]
  return out


@pytest.mark.parametrize("memory_plus, v_dim", [(True, 5), (False, None)])
def test_layer_computes_its_equations(memory_plus, v_dim):
  layer = ProductKeyMemory(D, **SMALL, v_dim=v_dim, memory_plus=memory_plus,
                           impl="reference", **F64)
  x = harness.rand(0, (B, T, D))
  variables = _randomised(harness.init_variables(layer, jax.random.key(0), x))
  out, out_t = jax.jit(lambda v, x: (layer.apply(v, x), layer.apply(v, x[:, 3])))(variables, x)
  want = _numpy_memory(variables["params"], x, memory_plus, **{k: SMALL[k] for k in (
      "heads", "topk", "k_dim")})
  harness.assert_close(out, want, 1e-10, "ProductKeyMemory")
  np.testing.assert_allclose(out_t, out[:, 3], rtol=1e-12)  # a decoding step's [B, D]


def test_init_statistics_and_groups():
  layer = ProductKeyMemory(64, n_keys=32, heads=4, topk=8, k_dim=32, v_dim=48)
  boxed = jax.jit(layer.init)(jax.random.key(0), jnp.zeros((1, 1, 64)))["params"]
  p = nn.unbox(boxed)
  keys, table = np.asarray(p["keys"]), np.asarray(p["table"]["table"])
  assert keys.shape == (4, 2, 32, 16) and table.shape == (32 * 32, 48)
  assert np.abs(keys).max() <= 16 ** -0.5 and np.abs(keys).max() > 0.95 * 16 ** -0.5
  np.testing.assert_allclose(keys.std(), 16 ** -0.5 / np.sqrt(3), rtol=0.05)
  np.testing.assert_allclose(table.std(), 48 ** -0.5, rtol=0.02)
  for name in ("query", "gate_proj", "out_proj"):
    assert not np.any(p[name]["bias"]), f"{name} bias is not zero at init"
  groups = axes.groups(boxed)
  assert groups["table"]["table"] == axes.MEMORY
  assert groups["keys"] == axes.DEFAULT and groups["norm"]["scale"] == axes.NO_DECAY


def _backbone(shared=True, pattern="none", **memory):
  """Three blocks (no sequence mixing by default: the memory is under test), memories in 0
  and 2."""
  return Backbone(d_model=D, n_layers=3, pattern=pattern, vocab_size=VOCAB,
                  memory_layers=(0, 2), memory={**SMALL, "shared_values": shared, **memory},
                  **F64)


def test_shared_table_appears_once_and_usage_is_counted():
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, VOCAB, (B, T)), jnp.int32)
  model = _backbone()
  variables = harness.init_variables(model, jax.random.key(0), tokens)
  params = variables["params"]
  assert params["memory_values"]["table"].shape == (36, D)
  assert "mlp" not in params["blocks_0"] and "mlp" in params["blocks_1"]
  assert all("table" not in params[f"blocks_{i}"]["memory"] for i in (0, 2))

  @jax.jit
  def run(params):
    _, intermediates = model.apply({"params": params}, tokens, mutable=["intermediates"])
    grad = jax.grad(lambda p: model.apply({"params": p}, tokens)[0].sum())(params)
    return memory_rows(intermediates), grad

  rows, grad = run(params)
  H, k = SMALL["heads"], SMALL["topk"]
  assert rows["row_hits"].shape == (1, 36)
  np.testing.assert_allclose(rows["row_hits"].sum(), 2 * B * T * H * k)
  np.testing.assert_allclose(rows["row_weights"].sum(), 2 * B * T * H, rtol=1e-6)
  # the table's gradient lives on the rows read
  touched = np.asarray(jnp.abs(grad["memory_values"]["table"]).sum(-1) > 0)
  np.testing.assert_array_equal(touched, np.asarray(rows["row_hits"][0] > 0))

  unshared = jax.eval_shape(_backbone(shared=False).init, jax.random.key(0), tokens)["params"]
  assert "memory_values" not in unshared
  assert nn.unbox(unshared)["blocks_2"]["memory"]["table"]["table"].shape == (36, D)


def test_usage_measures():
  usage = memory_usage(row_hits=[[1, 0, 2, 0], [1, 1, 1, 1]],
                       row_weights=[[1.0, 0, 1.0, 0], [1.0, 1.0, 1.0, 1.0]])
  assert usage["memory_rows_hit"] == pytest.approx(0.75)
  assert usage["memory_usage_kl"] == pytest.approx(np.log(2) / 2)  # log 4 - log 2, and 0


def test_decoding_with_memory_layers_in_the_stack():
  model = LanguageModel(_backbone(pattern="attention"))
  tokens = jnp.asarray(np.random.default_rng(1).integers(1, VOCAB, (B, T)), jnp.int32)
  variables = harness.init_variables(model, jax.random.key(0), tokens)

  @jax.jit
  def run(variables, tokens):
    def step(state, tok):
      logits, state = model.apply(variables, tok, state, method="step")
      return state, logits
    state = model.apply(variables, B, T, method="init_state")
    _, stepped = jax.lax.scan(step, state, tokens.T)
    return model.apply(variables, tokens), jnp.moveaxis(stepped, 0, 1)

  whole, stepped = run(variables, tokens)
  harness.assert_close(stepped, whole, 1e-10, "memory LM: step by step")
  # greedy generation from the first 4 tokens, checked against whole-sequence argmaxes
  out = generate(model, variables, tokens[:, :4], T - 4, jax.random.key(1))
  greedy = jnp.argmax(run(variables, jnp.concatenate([tokens[:, :4], out], 1))[0], -1)
  np.testing.assert_array_equal(out, greedy[:, 3:-1])


@pytest.mark.parametrize("make, message", [
    (lambda: Backbone(d_model=D, n_layers=2, vocab_size=VOCAB, memory_layers=(2,)),
     r"memory_layers=\(2,\) must be distinct block indices in \[0, n_layers=2\)"),
    (lambda: Backbone(d_model=D, n_layers=2, vocab_size=VOCAB, memory_layers=(1,),
                      memory={"n_key": 4}), r"unknown option\(s\) n_key"),
    (lambda: _backbone(topk=7), r"topk=7 must be <= n_keys=6"),
    (lambda: _backbone(k_dim=5), r"k_dim=5 must be even"),
    (lambda: _backbone(query_norm="rms"), r"query_norm='rms': expected one of"),
    (lambda: _backbone(memory_plus=False, v_dim=4), r"v_dim=4 must be d_model=8"),
])
def test_bad_options_raise(make, message):
  with pytest.raises(ValueError, match=message):
    make().init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32))


def test_bad_input_shape_raises():
  layer = ProductKeyMemory(D, **SMALL)
  with pytest.raises(ValueError, match=r"x must have shape \[B, T, D=8\] or \[B, D\]"):
    layer.init(jax.random.key(0), jnp.zeros((2, 3, 4)))
