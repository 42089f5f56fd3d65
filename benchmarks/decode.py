"""Decoding cost per registered mixer: per-token latency and tokens/s of `generate`'s decode
loop (jitted, after a warm-up, prefill excluded) at several prompt contexts and batch sizes,
beside the bytes of decoding state each model holds.

  python -m benchmarks [--full] --only decode

Each mixer is a 2-layer d=256 `LanguageModel`; two more models join them: `attention+memory`
(the attention LM with a Memory+ product-key memory in place of its last MLP) and
`block_transformer` (a Block Transformer of one block-decoder and one token-decoder attention
layer). `generate` is `start_decoding` (prefill into a state sized for prompt + new tokens; a
prompt longer than PREFILL_CHUNK runs in chunks of that many tokens, `prefill_chunked`) then
`decode_steps` (a `lax.scan` of `step`); the Block Transformer's are `start_blocks` and
`decode_blocks`. The decode half alone is timed, min over repetitions. Attention's cache and
cost grow with the context; every recurrent model's state and per-token cost must not
(`flat_ratio`: CPU time at the longest context / at the shortest, at most FLAT_LIMIT; the
note under the table names any recurrent model over it). Cases whose compiled prefill or
decode would still need more than MAX_BYTES are skipped and marked so.
"""
from __future__ import annotations

import functools
import hashlib

import jax
import jax.numpy as jnp

from benchmarks import common
from layers import state_bytes
from benchmarks import block_transformer
from seqmodels import Backbone, BlockTransformer, LanguageModel, registry
from seqmodels.block_transformer import decode_blocks, start_blocks
from seqmodels.generate import decode_steps, start_decoding
from seqmodels.sampling import GREEDY

D_MODEL, N_LAYERS, VOCAB = 256, 2, 256
SMALL = dict(contexts=(256, 1024), batches=(1,), new_tokens=32, repeats=3)
FULL = dict(contexts=(256, 1024, 4096, 16384), batches=(1, 16), new_tokens=64, repeats=5)
MAX_BYTES = 6 << 30   # compiled temp + arguments + outputs of one call; the machine is shared
MIN_SECONDS = 0.5     # each context's loop repeats until this much time passed (min taken)
FLAT_LIMIT = 1.1      # recurrent models: per-token time at the longest / shortest context
PREFILL_CHUNK = 2048  # longer prompts are prefilled in chunks of this many tokens
# the memory-layer model's Memory+ (layers.ProductKeyMemory): 128**2 = 16,384 value rows
MEMORY = dict(n_keys=128, heads=4, topk=32, k_dim=64)
BLOCK_LENGTH, PREFIX_RATIO = 4, 2  # the Block Transformer's L and R
EXTRA = ("attention+memory", "block_transformer")


def mixers() -> list[str]:
  """Every registered sequence mixer ("none", the MLP-only ablation, mixes nothing)."""
  return [name for name in registry.MIXERS if name != "none"]


def models() -> list[str]:
  """The benchmarked models: one LM per mixer, then EXTRA."""
  return mixers() + list(EXTRA)


def language_model(mixer: str, d_model: int = D_MODEL, n_layers: int = N_LAYERS):
  """The benchmarked model: n_layers blocks of `mixer` alone (a tuple pattern: "based" is
  the Taylor linear attention here, not the paper's mix)."""
  return LanguageModel(Backbone(d_model=d_model, n_layers=n_layers, pattern=(mixer,),
                                vocab_size=VOCAB))


def build(name: str, d_model: int = D_MODEL, n_layers: int = N_LAYERS):
  """The model `name` of `models()`: a mixer's LM; "attention+memory", the attention LM with
  MEMORY in its last block; "block_transformer", n_layers / 2 attention layers in each
  decoder (block length BLOCK_LENGTH, prefix ratio PREFIX_RATIO)."""
  if name == "attention+memory":
    return LanguageModel(Backbone(d_model=d_model, n_layers=n_layers, pattern=("attention",),
                                  vocab_size=VOCAB, memory_layers=(n_layers - 1,),
                                  memory=MEMORY))
  if name == "block_transformer":
    half = max(n_layers // 2, 1)
    return BlockTransformer(vocab_size=VOCAB, block_length=BLOCK_LENGTH, d_block=d_model,
                            d_token=d_model, n_block_layers=half, n_token_layers=half,
                            prefix_ratio=PREFIX_RATIO)
  return language_model(name, d_model, n_layers)


def decoding(model, new_tokens: int, prefill_chunk: int | None = None):
  """(start(variables, prompt, prompt_mask, rng) -> carry, loop(variables, *carry) -> (new
  tokens, state), the tokens the loop decodes): `generate`'s two halves for `model`."""
  if isinstance(model, BlockTransformer):
    return (functools.partial(start_blocks, model, max_new_tokens=new_tokens),
            functools.partial(decode_blocks, model, max_new_tokens=new_tokens,
                              sampler=GREEDY), new_tokens)
  # the first new token comes from the prefill's logits
  return (functools.partial(start_decoding, model, max_new_tokens=new_tokens, sampler=GREEDY,
                            prefill_chunk=prefill_chunk),
          functools.partial(decode_steps, model, sampler=GREEDY), new_tokens - 1)


def state_size(model, batch: int, max_len: int) -> int:
  """Bytes of the decoding state `generate` holds for max_len tokens, from shapes alone."""
  if isinstance(model, BlockTransformer):
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    return block_transformer.cache_bytes(model, variables, batch, max_len, 0)
  return state_bytes(model, batch, max_len)


def decode_program(model, batch: int, context: int) -> str:
  """A fingerprint of the compiled-to-be decode loop of `model` (its StableHLO, from shapes
  alone) after a prompt of `context` tokens: equal fingerprints, equal cost."""
  start, loop, _ = decoding(model, 4)
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((batch, 8), jnp.int32))
  carry = jax.eval_shape(start, variables, jax.ShapeDtypeStruct((batch, context), jnp.int32),
                         jax.ShapeDtypeStruct((batch, context), bool), jax.random.key(0))
  return fingerprint(jax.jit(loop).lower(variables, *carry))


def fingerprint(lowered) -> str:
  """A short hash of a lowered function's StableHLO text."""
  return hashlib.sha1(lowered.as_text().encode()).hexdigest()[:12]


def _bytes(compiled) -> int:
  m = compiled.memory_analysis()
  return sum(int(getattr(m, f, 0) or 0) for f in
             ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes"))


def measure(name: str, batch: int, contexts, new_tokens: int, repeats: int,
            max_bytes: int = MAX_BYTES, prefill_chunk: int = PREFILL_CHUNK) -> list[dict]:
  """One row per context: per-token decode ms and tokens/s of the model `name` (`build`)
  after a prompt of that many tokens (prefilled in chunks of `prefill_chunk` tokens when
  longer), or `skipped` with the reason when it would not fit `max_bytes`. The contexts'
  decode loops are timed in turn, run by run (`common.time_fns`), so load from other
  processes hits them alike and their ratio holds."""
  model = build(name)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((batch, 8), jnp.int32))
  rows, loops = [], {}
  for context in contexts:
    # (the Block Transformer prefills its context / L blocks whole)
    chunk = (prefill_chunk if context > prefill_chunk and not isinstance(model, BlockTransformer)
             else None)
    start, decode, steps = decoding(model, new_tokens, chunk)
    prompt = jax.random.randint(jax.random.key(1), (batch, context), 0, VOCAB)
    args = (variables, prompt, jnp.ones(prompt.shape, bool), jax.random.key(2))
    row = {"model": name, "B": batch, "context": context, "new_tokens": new_tokens,
           "steps_timed": steps, "prefill_chunk": chunk,
           "state_bytes": state_size(model, batch, context + new_tokens)}
    prefill = jax.jit(start).lower(*args).compile()
    need = _bytes(prefill)
    if need <= max_bytes:
      carry = prefill(*args)
      lowered = jax.jit(decode).lower(variables, *carry)
      row["program"] = fingerprint(lowered)
      loop = lowered.compile()
      need = max(need, _bytes(loop))
      loops[context] = functools.partial(loop, variables, *carry)
    row["compiled_MiB"] = need / 2**20
    if need > max_bytes:
      loops.pop(context, None)
      row["skipped"] = f"needs {need / 2**30:.1f} GiB > {max_bytes / 2**30:.0f} GiB"
    rows.append(row)
  seconds = common.time_fns(loops, repeats=repeats, min_seconds=MIN_SECONDS, max_runs=200,
                            cpu=True)
  for row in rows:
    if row["context"] in seconds:
      wall, cpu = seconds[row["context"]]
      steps = row["steps_timed"]
      row["ms_per_token"] = 1e3 * wall / steps
      row["tokens_per_s"] = batch * steps / wall
      row["cpu_ms_per_token"] = 1e3 * cpu / steps
  return rows


def flat_ratios(rows: list[dict], key: str = "cpu_ms_per_token") -> dict:
  """{(model, B): rows[key] (per-token time) at the longest timed context / at the shortest}.
  The default, CPU time, leaves out the time a loaded machine keeps the process waiting."""
  out = {}
  for group in dict.fromkeys((r["model"], r["B"]) for r in rows):
    timed = sorted((r["context"], r[key]) for r in rows
                   if (r["model"], r["B"]) == group and key in r)
    if len(timed) >= 2:
      out[group] = timed[-1][1] / timed[0][1]
  return out


def is_recurrent(name: str) -> bool:
  """True when the decoding state of the model `name` (`build`) does not grow with max_len
  (every mixer but full attention; not the models with attention layers in EXTRA)."""
  model = build(name)
  return state_size(model, 1, 16) == state_size(model, 1, 4096)


def run(full: bool = False) -> common.Result:
  """Every model at the small (or --full) contexts and batches."""
  settings = FULL if full else SMALL
  rows = []
  for name in models():
    recurrent = is_recurrent(name)
    for batch in settings["batches"]:
      group = measure(name, batch, settings["contexts"], settings["new_tokens"],
                      settings["repeats"])
      same = len({r["program"] for r in group if "program" in r}) == 1
      for row in group:
        row["same_program"] = same
        row["recurrent"] = recurrent
        print(f"  {name:17s} B={batch:<3d} context={row['context']:6d} "
              + (row["skipped"] if "skipped" in row else f"{row['ms_per_token']:.3f} ms/token"),
              flush=True)
      rows += group
  ratios, wall_ratios = flat_ratios(rows), flat_ratios(rows, "ms_per_token")
  for row in rows:
    row["flat_ratio"] = ratios.get((row["model"], row["B"]))
    row["flat_ratio_wall"] = wall_ratios.get((row["model"], row["B"]))
  n = settings["new_tokens"]
  skipped = [f"`{r['model']}` B={r['B']} at {_context(r['context'])}" for r in rows
             if "skipped" in r]
  note = (f"{N_LAYERS}-layer d={D_MODEL} LM per mixer, greedy, {n - 1} decode steps timed "
          f"(prefill excluded; prompts over {_context(PREFILL_CHUNK)} tokens prefilled in "
          f"chunks of {_context(PREFILL_CHUNK)}), min over repetitions, the contexts of a row "
          "timed in turn. `attention+memory`: the attention LM with a Memory+ layer "
          f"({MEMORY['n_keys'] ** 2:,} value rows, {MEMORY['heads']} heads, top-"
          f"{MEMORY['topk']}) in place of its last MLP; `block_transformer`: one attention "
          f"layer in each decoder, blocks of {BLOCK_LENGTH}, {n} tokens timed (its decode "
          "half, `decode_blocks`, makes all of them). Cells: wall ms per token, tokens/s "
          "(batch x tokens / wall time), and the process's CPU ms per token, which leaves out "
          "waiting for a core on a loaded machine; the ratio (longest / shortest context) is "
          "of CPU time (wall time's is in the JSON). *same program*: the decode loop compiles "
          "to one program at every context, so its cost cannot depend on the context. "
          + (f"Skipped (compiled prefill or decode over {MAX_BYTES >> 30} GiB even with "
             f"chunked prefill): {', '.join(skipped)}." if skipped else
             f"Nothing skipped: every case fits {MAX_BYTES >> 30} GiB."))
  over = sorted({f"`{r['model']}` (B={r['B']}, {r['flat_ratio']:.2f}x)" for r in rows
                 if r["recurrent"] and (r["flat_ratio"] or 0) > FLAT_LIMIT})
  note += (f" Recurrent models over {FLAT_LIMIT}x: {', '.join(over)}." if over else
           f" Every recurrent model is within {FLAT_LIMIT}x.")
  return common.Result(rows, markdown=markdown(rows, settings["contexts"]), note=note,
                       settings={**settings, "d_model": D_MODEL, "n_layers": N_LAYERS,
                                 "vocab": VOCAB, "max_bytes": MAX_BYTES,
                                 "prefill_chunk": PREFILL_CHUNK, "memory": MEMORY,
                                 "block_length": BLOCK_LENGTH, "prefix_ratio": PREFIX_RATIO})


def _context(n: int) -> str:
  return f"{n // 1024}K" if n >= 1024 else str(n)


def markdown(rows: list[dict], contexts) -> str:
  """One line per (model, B): ms per token (tokens/s) at each context, the longest / shortest
  ratio, whether the decode program is the same at every context, and the state bytes at the
  longest context."""
  last = _context(contexts[-1])
  head = (["model", "B"] + [f"{_context(c)}: ms/token, tok/s (CPU ms)" for c in contexts]
          + [f"{last}/{_context(contexts[0])}", "same program", f"state at {last}"])
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, batch in dict.fromkeys((r["model"], r["B"]) for r in rows):
    mine = {r["context"]: r for r in rows if (r["model"], r["B"]) == (name, batch)}
    cells = [f"skipped ({mine[c]['skipped']})" if "skipped" in mine[c] else
             f"{mine[c]['ms_per_token']:.3f}, {mine[c]['tokens_per_s']:.0f} "
             f"({mine[c]['cpu_ms_per_token']:.3f})" for c in contexts]
    ratio = mine[contexts[0]]["flat_ratio"]
    cells += ["" if ratio is None else f"{ratio:.2f}x",
              "yes" if mine[contexts[0]]["same_program"] else "no",
              common.format_bytes(mine[contexts[-1]]["state_bytes"])]
    lines.append("| " + " | ".join([f"`{name}`", str(batch)] + cells) + " |")
  return "\n".join(lines)
