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
# # Decoding cost against context
#
# `generate` runs the prompt through `prefill`, then a `lax.scan` of `step`, one token at a
# time. Softmax attention keeps every key and value of the context (its KV cache) and reads
# them all at each step, so its per-token cost grows with the context; recurrent mixers carry
# a fixed-size state, so theirs does not. The Block Transformer (Ho et al. 2024) sits between
# the two: its block decoder attends over one cache entry per block of L tokens and advances
# once per block, and its token decoder attends within the current block only. This is the
# decode benchmark (`benchmarks/decode.py`, all mixers and sizes with `python -m benchmarks
# --only decode --full`) recomputed small: a few models, batch 1, contexts up to 2048.

# %%
import pathlib
import sys

import matplotlib.pyplot as plt

ROOT = next(p for p in [pathlib.Path.cwd(), *pathlib.Path.cwd().parents]
            if (p / "benchmarks").is_dir())
sys.path.insert(0, str(ROOT))  # benchmarks/ lives beside the packages

from benchmarks import decode  # noqa: E402

MODELS = ("attention", "swa", "mingru", "mamba2", "gated_deltanet", "block_transformer")
CONTEXTS = (128, 512, 2048)
rows = [row for name in MODELS
        for row in decode.measure(name, 1, CONTEXTS, new_tokens=32, repeats=5)]
rows[:3]

# %% [markdown]
# ## Per-token time and state size against the context
# Wall time per token and the CPU time of the process (which leaves out waiting for a core
# on a shared machine); the state bytes come from shapes alone (`decode.state_size`).

# %%
fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(12, 4), constrained_layout=True)
for name in MODELS:
  mine = [r for r in rows if r["model"] == name]
  line, = ax_t.plot(CONTEXTS, [r["cpu_ms_per_token"] for r in mine], "o-", label=name)
  ax_t.plot(CONTEXTS, [r["ms_per_token"] for r in mine], ":", color=line.get_color())
  ax_s.plot(CONTEXTS, [r["state_bytes"] / 2**20 for r in mine], "o-", label=name)
ax_t.set(xscale="log", yscale="log", xlabel="context (prompt tokens)",
         ylabel="ms per token (solid: CPU, dotted: wall)")
ax_s.set(xscale="log", yscale="log", xlabel="context (prompt tokens)", ylabel="state MiB")
ax_t.legend()
plt.show()

# %% [markdown]
# ## The Block Transformer next to the attention LM
# Both decode with attention caches that grow with the context, but the Block Transformer's
# block decoder holds one entry per block of L = 4 tokens and runs once per block, while the
# LM reads its whole cache at every token. CPU ms per token and the LM's time over the Block
# Transformer's (`decode.build("block_transformer")`: one attention layer in each decoder, the
# LM has two):

# %%
per_token = {(r["model"], r["context"]): r["cpu_ms_per_token"] for r in rows}
print(f"{'context':>8s} {'attention LM':>13s} {'block transformer':>18s} {'LM / BT':>8s}")
for c in CONTEXTS:
  lm, bt = per_token["attention", c], per_token["block_transformer", c]
  print(f"{c:8d} {lm:13.3f} {bt:18.3f} {lm / bt:7.1f}x")

# %% [markdown]
# Every recurrent mixer's decode loop is one compiled program whatever the context (its
# state has one shape), so its cost cannot grow; the caches of attention and of the Block
# Transformer's block decoder, and with them the program, grow with the context.

# %%
for name in MODELS:
  mine = [r for r in rows if r["model"] == name]
  same = len({r["program"] for r in mine}) == 1
  grows = mine[-1]["state_bytes"] > mine[0]["state_bytes"]
  ratio = mine[-1]["cpu_ms_per_token"] / mine[0]["cpu_ms_per_token"]
  print(f"{name:17s} same program: {same!s:5s} state grows: {grows!s:5s} "
        f"CPU time {CONTEXTS[-1]} / {CONTEXTS[0]}: {ratio:.2f}x")
  assert same == (not grows) == decode.is_recurrent(name), name
print("notebook done")
