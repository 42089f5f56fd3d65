"""Decode throughput of the Block Transformer against a vanilla attention LM of about the same
parameter count, the same sampler (greedy) and the same prompts, with the KV-cache bytes each
holds.

  python -m benchmarks [--full] --only block_transformer

Models: a `size` of configs/lm/chars.py (tiny; full: small, d=128): the Block Transformer with
block and token decoders of n_layers attention layers each (block length 4, prefix ratio 2),
the LM with 2 * n_layers layers. Per (batch, prompt context) both run `seqmodels.generate`
with N1 and N2 new tokens; decode throughput = B (N2 - N1) / (t(N2) - t(N1)) generated tokens/s
(prefill excluded), prefill time = t(N1) - B N1 / throughput. The reference attention op
scores a [B, H, T, C] matrix in prefill below `LONG_FORMS["attention_prefill"]` keys (the
blockwise form above it holds one tile); a case needing more than MAX_GIB of scores is skipped
(and listed).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from benchmarks import common
from layers.ops import common as ops_common
from layers.ops.attention import xla as attention_xla
from seqmodels import BlockTransformer, TaskFacts, build_model, generate
from train import config_lib

VOCAB = 256
MAX_GIB = 4.0
NEW_TOKENS = (16, 144)  # N1, N2


def models(size: str) -> dict:
  """{"lm": LanguageModel, "block_transformer": BlockTransformer} of about equal size."""
  lm = config_lib.base_config("attention", size)
  bt = config_lib.base_config("attention", size)
  config_lib.block_transformer(bt.model)
  lm.model.n_layers = 2 * lm.model.n_layers
  facts = TaskFacts(vocab_size=VOCAB)
  return {"lm": build_model(lm.model, facts), "block_transformer": build_model(bt.model, facts)}


def cache_bytes(model, variables, batch: int, context: int, new_tokens: int) -> int:
  """Bytes of the decoding state `generate` holds for `context` + `new_tokens` tokens (from
  shapes alone: `variables` may be `jax.eval_shape`'s)."""
  nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
  shape = lambda *args, method: jax.eval_shape(
      lambda v: model.apply(v, *args, method=method), variables)
  if isinstance(model, BlockTransformer):
    L = model.block_length
    blocks = math.ceil((context + new_tokens) / L) + 1  # generate_blocks sizes for r_b < L
    return (nbytes(shape(batch, blocks, method="init_block_state"))
            + nbytes(shape(batch, method="init_token_state")))
  return nbytes(shape(batch, context + new_tokens, method="init_state"))


def score_gib(model, batch: int, context: int, new_tokens: int) -> float:
  """GiB of the prefill's largest attention scores (float32, softmax temporaries about 3x):
  the whole [B, H, T, keys] matrix of the dense form, or one [B, H, block, block] tile of the
  blockwise form that "auto" picks from `LONG_FORMS["attention_prefill"]` keys on."""
  if isinstance(model, BlockTransformer):
    heads, T = model.d_block // 64 or 1, context // model.block_length + 1
  else:
    heads, T = model.backbone.d_model // 64 or 1, context
  keys = 2 * T + new_tokens
  if keys >= ops_common.LONG_FORMS["attention_prefill"][0]:
    T = keys = attention_xla.BLOCK
  return 3 * 4 * batch * heads * T * keys / 2 ** 30


def run(full: bool = False) -> common.Result:
  """Both models at batch 1 and 16, prompt contexts 512 and 2048 (full: size small, up to
  8192)."""
  size, contexts = ("small", (512, 2048, 8192)) if full else ("tiny", (512, 2048))
  batches = (1, 16)
  n1, n2 = NEW_TOKENS
  built = models(size)
  variables = {name: jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
               for name, model in built.items()}
  params = {name: sum(x.size for x in jax.tree.leaves(v)) for name, v in variables.items()}
  print(", ".join(f"{name}: {n:,} parameters" for name, n in params.items()))
  rows, skipped = [], []
  for batch in batches:
    for context in contexts:
      prompt = jax.random.randint(jax.random.key(1), (batch, context), 0, VOCAB)
      for name, model in built.items():
        gib = score_gib(model, batch, context, n2)
        if gib > MAX_GIB:
          skipped.append(f"{name} B={batch} context={context} (~{gib:.0f} GiB of scores)")
          continue
        fns = {n: (lambda p, n=n: generate(model, variables[name], p, n, jax.random.key(0)))
               for n in (n1, n2)}
        t = common.time_fns(fns, prompt, repeats=3)
        # NaN where timing noise (a loaded machine) swamps the decode time
        rate = batch * (n2 - n1) / (t[n2] - t[n1]) if t[n2] > t[n1] else float("nan")
        rows.append({"model": name, "B": batch, "context": context, "params": params[name],
                     "decode_tokens_per_s": rate,
                     "prefill_s": t[n1] - batch * n1 / rate,
                     "kv_cache_MiB": cache_bytes(model, variables[name], batch, context,
                                                 n2) / 2 ** 20})
        print(f"  {name} B={batch} context={context}: {rate:.1f} tokens/s", flush=True)
  for row in rows:
    lm = [r for r in rows if r["model"] == "lm" and (r["B"], r["context"]) == (row["B"],
                                                                                row["context"])]
    if row["model"] == "block_transformer" and lm:
      row["speedup_vs_lm"] = row["decode_tokens_per_s"] / lm[0]["decode_tokens_per_s"]
  note = (f"Greedy decoding, {n2 - n1} tokens timed (t({n2}) - t({n1}) new tokens: prefill "
          "excluded); speedup_vs_lm = Block Transformer decode tokens/s / the LM's at the same "
          "batch and context." + (" Skipped (the reference attention's O(T^2) scores): "
                                  + "; ".join(skipped) if skipped else ""))
  return common.Result(
      rows, ["model", "B", "context", "params", "decode_tokens_per_s", "prefill_s",
             "kv_cache_MiB", "speedup_vs_lm"], note=note,
      settings={"size": size, "contexts": contexts, "batches": batches,
                "new_tokens": NEW_TOKENS, "skipped": skipped})
