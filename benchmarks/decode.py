"""Decoding cost per registered mixer: per-token latency and tokens/s of `generate`'s decode
loop (jitted, after a warm-up, prefill excluded) at several prompt contexts and batch sizes,
beside the bytes of decoding state each model holds.

  python -m benchmarks [--full] --only decode

Each mixer is a 2-layer d=256 `LanguageModel`; `generate` is `start_decoding` (prefill into a
state sized for prompt + new tokens) then `decode_steps` (a `lax.scan` of `step`): the second
alone is timed, `new_tokens` steps, min over repetitions. Attention's cache and cost grow with
the context; every recurrent model's state and per-token cost must not (`flat_ratio`: CPU
time at the longest context / at the shortest, at most FLAT_LIMIT; the note under the table
names any recurrent model over it). Cases whose compiled prefill or decode would need more
than MAX_BYTES (attention's O(T^2) score matrix at long prompts) are skipped and marked so.
"""
from __future__ import annotations

import functools
import hashlib

import jax
import jax.numpy as jnp

from benchmarks import common
from layers import state_bytes
from seqmodels import Backbone, LanguageModel, registry
from seqmodels.generate import decode_steps, start_decoding
from seqmodels.sampling import GREEDY

D_MODEL, N_LAYERS, VOCAB = 256, 2, 256
SMALL = dict(contexts=(256, 1024), batches=(1,), new_tokens=32, repeats=3)
FULL = dict(contexts=(256, 1024, 4096, 16384), batches=(1, 16), new_tokens=64, repeats=5)
MAX_BYTES = 6 << 30   # compiled temp + arguments + outputs of one call; the machine is shared
MIN_SECONDS = 0.5     # each context's loop repeats until this much time passed (min taken)
FLAT_LIMIT = 1.1      # recurrent models: per-token time at the longest / shortest context


def mixers() -> list[str]:
  """Every registered sequence mixer ("none", the MLP-only ablation, mixes nothing)."""
  return [name for name in registry.MIXERS if name != "none"]


def language_model(mixer: str, d_model: int = D_MODEL, n_layers: int = N_LAYERS):
  """The benchmarked model: n_layers blocks of `mixer` alone (a tuple pattern: "based" is
  the Taylor linear attention here, not the paper's mix)."""
  return LanguageModel(Backbone(d_model=d_model, n_layers=n_layers, pattern=(mixer,),
                                vocab_size=VOCAB))


def decode_program(model: LanguageModel, batch: int, max_len: int) -> str:
  """A fingerprint of the compiled-to-be decode loop of `model` (its StableHLO, from shapes
  alone) with a state sized init_state(batch, max_len): equal fingerprints, equal cost."""
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((batch, 1), jnp.int32))
  state = jax.eval_shape(lambda: model.init_with_output(
      jax.random.key(0), batch, max_len, method="init_state")[0])
  token = jax.eval_shape(GREEDY, jax.random.key(0), jnp.zeros((batch, VOCAB)))
  keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), 4))
  lowered = jax.jit(functools.partial(decode_steps, model, sampler=GREEDY)).lower(
      variables, token, state, keys)
  return fingerprint(lowered)


def fingerprint(lowered) -> str:
  """A short hash of a lowered function's StableHLO text."""
  return hashlib.sha1(lowered.as_text().encode()).hexdigest()[:12]


def _bytes(compiled) -> int:
  m = compiled.memory_analysis()
  return sum(int(getattr(m, f, 0) or 0) for f in
             ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes"))


def measure(mixer: str, batch: int, contexts, new_tokens: int, repeats: int,
            max_bytes: int = MAX_BYTES) -> list[dict]:
  """One row per context: per-token decode ms and tokens/s after a prompt of that many tokens
  (or `skipped` with the reason when it would not fit `max_bytes`). The contexts' decode loops
  are timed in turn, run by run (`common.time_fns`), so load from other processes hits them
  alike and their ratio holds."""
  model = language_model(mixer)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((batch, 8), jnp.int32))
  start = jax.jit(functools.partial(start_decoding, model, max_new_tokens=new_tokens,
                                    sampler=GREEDY))
  decode = jax.jit(functools.partial(decode_steps, model, sampler=GREEDY))
  rows, loops = [], {}
  for context in contexts:
    prompt = jax.random.randint(jax.random.key(1), (batch, context), 0, VOCAB)
    args = (variables, prompt, jnp.ones(prompt.shape, bool), jax.random.key(2))
    row = {"mixer": mixer, "B": batch, "context": context, "new_tokens": new_tokens,
           "state_bytes": state_bytes(model, batch, context + new_tokens)}
    prefill = start.lower(*args).compile()
    need = _bytes(prefill)
    if need <= max_bytes:
      first, state, keys = prefill(*args)
      lowered = decode.lower(variables, first, state, keys)
      row["program"] = fingerprint(lowered)
      loop = lowered.compile()
      need = max(need, _bytes(loop))
      loops[context] = functools.partial(loop, variables, first, state, keys)
    row["compiled_MiB"] = need / 2**20
    if need > max_bytes:
      loops.pop(context, None)
      row["skipped"] = f"needs {need / 2**30:.1f} GiB > {max_bytes / 2**30:.0f} GiB"
    rows.append(row)
  seconds = common.time_fns(loops, repeats=repeats, min_seconds=MIN_SECONDS, max_runs=200,
                            cpu=True)
  steps = new_tokens - 1  # the first new token comes from the prefill's logits
  for row in rows:
    if row["context"] in seconds:
      wall, cpu = seconds[row["context"]]
      row["ms_per_token"] = 1e3 * wall / steps
      row["tokens_per_s"] = batch * steps / wall
      row["cpu_ms_per_token"] = 1e3 * cpu / steps
  return rows


def flat_ratios(rows: list[dict], key: str = "cpu_ms_per_token") -> dict:
  """{(mixer, B): rows[key] (per-token time) at the longest timed context / at the shortest}.
  The default, CPU time, leaves out the time a loaded machine keeps the process waiting."""
  out = {}
  for group in dict.fromkeys((r["mixer"], r["B"]) for r in rows):
    timed = sorted((r["context"], r[key]) for r in rows
                   if (r["mixer"], r["B"]) == group and key in r)
    if len(timed) >= 2:
      out[group] = timed[-1][1] / timed[0][1]
  return out


def is_recurrent(mixer: str) -> bool:
  """True when the mixer's state does not grow with max_len (all but full attention)."""
  module = registry.build_mixer(mixer, D_MODEL)
  return state_bytes(module, 1, 16) == state_bytes(module, 1, 4096)


def run(full: bool = False) -> common.Result:
  """Every mixer at the small (or --full) contexts and batches."""
  settings = FULL if full else SMALL
  rows = []
  for mixer in mixers():
    for batch in settings["batches"]:
      group = measure(mixer, batch, settings["contexts"], settings["new_tokens"],
                      settings["repeats"])
      same = len({r["program"] for r in group if "program" in r}) == 1
      for row in group:
        row["same_program"] = same
        row["recurrent"] = is_recurrent(mixer)
        print(f"  {mixer:15s} B={batch:<3d} context={row['context']:6d} "
              + (row["skipped"] if "skipped" in row else f"{row['ms_per_token']:.3f} ms/token"),
              flush=True)
      rows += group
  ratios, wall_ratios = flat_ratios(rows), flat_ratios(rows, "ms_per_token")
  for row in rows:
    row["flat_ratio"] = ratios.get((row["mixer"], row["B"]))
    row["flat_ratio_wall"] = wall_ratios.get((row["mixer"], row["B"]))
  note = (f"{N_LAYERS}-layer d={D_MODEL} LM per mixer, greedy, {settings['new_tokens'] - 1} "
          "decode steps timed (prefill excluded), min over repetitions, the contexts of a row "
          "timed in turn. Cells: wall ms per token, tokens/s (batch x steps / wall time), and "
          "the process's CPU ms per token, which leaves out waiting for a core on a loaded "
          "machine; the ratio (longest / shortest context) is of CPU time (wall time's is in "
          "the JSON). *same program*: the decode loop compiles to one program at every "
          "context, so its cost cannot depend on the context. Skipped: the prefill's O(T^2) "
          f"score matrix (attention) would need more than {MAX_BYTES >> 30} GiB.")
  over = sorted({f"`{r['mixer']}` (B={r['B']}, {r['flat_ratio']:.2f}x)" for r in rows
                 if r["recurrent"] and (r["flat_ratio"] or 0) > FLAT_LIMIT})
  note += (f" Recurrent models over {FLAT_LIMIT}x: {', '.join(over)}." if over else
           f" Every recurrent model is within {FLAT_LIMIT}x.")
  return common.Result(rows, markdown=markdown(rows, settings["contexts"]), note=note,
                       settings={**settings, "d_model": D_MODEL, "n_layers": N_LAYERS,
                                 "vocab": VOCAB, "max_bytes": MAX_BYTES})


def _context(n: int) -> str:
  return f"{n // 1024}K" if n >= 1024 else str(n)


def markdown(rows: list[dict], contexts) -> str:
  """One line per (mixer, B): ms per token (tokens/s) at each context, the longest / shortest
  ratio, whether the decode program is the same at every context, and the state bytes at the
  longest context."""
  last = _context(contexts[-1])
  head = (["mixer", "B"] + [f"{_context(c)}: ms/token, tok/s (CPU ms)" for c in contexts]
          + [f"{last}/{_context(contexts[0])}", "same program", f"state at {last}"])
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for mixer, batch in dict.fromkeys((r["mixer"], r["B"]) for r in rows):
    mine = {r["context"]: r for r in rows if (r["mixer"], r["B"]) == (mixer, batch)}
    cells = [f"skipped ({mine[c]['skipped']})" if "skipped" in mine[c] else
             f"{mine[c]['ms_per_token']:.3f}, {mine[c]['tokens_per_s']:.0f} "
             f"({mine[c]['cpu_ms_per_token']:.3f})" for c in contexts]
    ratio = mine[contexts[0]]["flat_ratio"]
    cells += ["" if ratio is None else f"{ratio:.2f}x",
              "yes" if mine[contexts[0]]["same_program"] else "no",
              common.format_bytes(mine[contexts[-1]]["state_bytes"])]
    lines.append("| " + " | ".join([f"`{mixer}`", str(batch)] + cells) + " |")
  return "\n".join(lines)
