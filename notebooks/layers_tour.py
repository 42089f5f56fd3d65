# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A tour of the layers
#
# Every registered sequence mixer (`seqmodels.registry.MIXERS`) with the one calling
# convention of `layers/`: its parameter tree, the bytes of decoding state it holds, and its
# whole-sequence output beside the output of `step` run token by token, shown equal.

# %%
import jax
import jax.numpy as jnp
import numpy as np
import treescope

from layers import state_bytes
from seqmodels import registry

B, T, D = 2, 16, 32   # batch, tokens, model width (small: every mixer compiles in seconds)
x = jax.random.normal(jax.random.key(0), (B, T, D))
mixers = {name: registry.build_mixer(name, D) for name in registry.MIXERS}


def init_whole_and_steps(mixer, x):
  """(variables, whole-sequence y and final state, stepwise y and final state) of `mixer`:
  `y, state = mixer.apply(variables, x, state0)`, and `init_state` then `step` in a
  `lax.scan`, one token at a time, as decoding does (one compilation per mixer)."""
  variables = mixer.init(jax.random.key(1), x)
  state0 = mixer.apply(variables, B, T, method="init_state")
  y, state = mixer.apply(variables, x, state0)

  def step(state, x_t):
    y_t, state = mixer.apply(variables, x_t, state, method="step")
    return state, y_t
  final, ys = jax.lax.scan(step, state0, jnp.swapaxes(x, 0, 1))
  return variables, (y, state), (jnp.swapaxes(ys, 0, 1), final)


runs = {name: jax.jit(init_whole_and_steps, static_argnums=0)(mixer, x)
        for name, mixer in mixers.items()}
variables = {name: run[0] for name, run in runs.items()}
list(mixers)

# %% [markdown]
# ## Parameter trees
# Shapes of every parameter of every mixer at d_model = 32 (treescope renders the nested
# dicts; click to expand).

# %%
shapes = {name: jax.tree.map(lambda p: f"{p.dtype}{list(p.shape)}", v["params"])
          for name, v in variables.items() if "params" in v}
treescope.show(shapes)

# %% [markdown]
# ## Whole sequence vs step by step
# `y, state = mixer.apply(variables, x, state0)` runs the sequence at once (the fast forms:
# chunked, FFT, associative); `init_state` then `step` in a `lax.scan` runs it one token at a
# time, as decoding does (`init_whole_and_steps` above). Both must give the same outputs and
# the same final state.

# %%
def relative_error(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


rows = []
for name in mixers:
  _, (y, state), (y_steps, state_steps) = runs[name]
  state_error = max((relative_error(a, b) for a, b in
                     zip(jax.tree.leaves(state_steps), jax.tree.leaves(state))
                     if jnp.issubdtype(a.dtype, jnp.floating)), default=0.0)
  rows.append((name, sum(p.size for p in jax.tree.leaves(variables[name])),
               state_bytes(mixers[name], 1, T), state_bytes(mixers[name], 1, 4096),
               relative_error(y_steps, y), state_error))

print(f"{'mixer':15s} {'params':>8s} {'state@T=16':>11s} {'state@4096':>11s} "
      f"{'|y_step-y|/|y|':>15s} {'state err':>10s}")
for name, n, s16, s4k, err, serr in rows:
  print(f"{name:15s} {n:8d} {s16:11d} {s4k:11d} {err:15.2e} {serr:10.2e}")

# %% [markdown]
# Side by side for one mixer (Gated DeltaNet, first row, first four channels): the two
# columns agree to float32 rounding.

# %%
_, (y, _), (y_steps, _) = runs["gated_deltanet"]
print(np.concatenate([np.asarray(y[0, :, :4]), np.asarray(y_steps[0, :, :4])], axis=1).round(4))

# %% [markdown]
# ## A memory layer
# A product-key memory (`layers.ProductKeyMemory`: Lample et al. 2019, and Memory+ of Berges
# et al. 2024) is a channel mixer: it takes an MLP's place in a block. Per head, its query
# picks the top-k of n^2 product keys exactly (two top-k's over n sub-keys each), and it
# returns the softmax-weighted sum of those k rows of a value table. It holds no sequence
# state, so a decoding step is the same function on one token. Here n = 16 sub-keys per half
# (256 value rows), 2 heads, top-4.

# %%
from layers import ProductKeyMemory
from layers import memory as memory_lib
from seqmodels import Backbone, LanguageModel

MEMORY = dict(n_keys=16, heads=2, topk=4, k_dim=16)
memory = ProductKeyMemory(D, **MEMORY)


@jax.jit
def memory_whole_and_steps(x):
  """(variables, m(x) [B, T, D] at once, m(x_t) token by token [B, T, D], how often each
  value row was read [N])."""
  variables = memory.init(jax.random.key(2), x)
  whole, sown = memory.apply(variables, x, mutable=["intermediates"])
  steps = jax.vmap(lambda x_t: memory.apply(variables, x_t), in_axes=1, out_axes=1)(x)
  return variables, whole, steps, sown["intermediates"]["table"]["row_hits"]


memory_variables, m_whole, m_steps, row_hits = memory_whole_and_steps(x)
n_rows, v_dim = memory_lib.table_shape(D, MEMORY)
print(f"value table: {n_rows} rows x {v_dim} = {n_rows * v_dim} of the layer's "
      f"{sum(p.size for p in jax.tree.leaves(memory_variables))} parameters; "
      f"{memory_lib.flops_per_token(D, MEMORY)} multiply-adds per token")
print(f"{B * T} tokens x {MEMORY['heads']} heads x top-{MEMORY['topk']} read "
      f"{int((row_hits > 0).sum())} distinct rows; "
      f"|step - whole| / |whole| = {relative_error(m_steps, m_whole):.1e}")
treescope.show(jax.tree.map(lambda p: f"{p.dtype}{list(p.shape)}", memory_variables["params"]))

# %% [markdown]
# In a model, `Backbone(memory_layers=...)` (`model.memory.layers` in a config) lists the
# blocks whose MLP becomes a memory; with `shared_values` (the default) the backbone owns one
# value table (`memory_values`) that every memory layer reads, while keys, queries and
# projections stay per layer. The parameter tree of a 2-layer minGRU LM with memories in both
# blocks, from shapes alone:

# %%
memory_lm = LanguageModel(Backbone(d_model=D, n_layers=2, pattern="mingru", vocab_size=64,
                                   memory_layers=(0, 1), memory=MEMORY))
lm_shapes = jax.eval_shape(memory_lm.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
treescope.show(jax.tree.map(lambda p: f"{p.dtype}{list(p.shape)}", lm_shapes["params"]))

# %% [markdown]
# Every mixer: outputs and final states equal within float32 rounding (norm-relative error
# below 1e-4; the tests check the same in float64 at 1e-5). Only full attention's state grows
# with the context (its KV cache); every other mixer's state has a fixed size.

# %%
for name, _, s16, s4k, err, serr in rows:
  assert err < 1e-4 and serr < 1e-4, (name, err, serr)
  assert (s4k > s16) == (name == "attention"), name
assert relative_error(m_steps, m_whole) < 1e-5
assert int(row_hits.sum()) == B * T * MEMORY["heads"] * MEMORY["topk"]  # every read counted
print("all", len(rows), "mixers and the memory layer: step-by-step == whole sequence")
