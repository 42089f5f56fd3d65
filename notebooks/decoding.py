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
# a fixed-size state, so theirs does not. This is the decode benchmark
# (`benchmarks/decode.py`, all mixers and sizes with `python -m benchmarks --only decode
# --full`) recomputed small: a few mixers, batch 1, contexts up to 2048.

# %%
import pathlib
import sys

import matplotlib.pyplot as plt

ROOT = next(p for p in [pathlib.Path.cwd(), *pathlib.Path.cwd().parents]
            if (p / "benchmarks").is_dir())
sys.path.insert(0, str(ROOT))  # benchmarks/ lives beside the packages

from benchmarks import decode  # noqa: E402

MIXERS = ("attention", "swa", "mingru", "mamba2", "gated_deltanet")
CONTEXTS = (128, 512, 2048)
rows = [row for mixer in MIXERS
        for row in decode.measure(mixer, 1, CONTEXTS, new_tokens=32, repeats=5)]
rows[:3]

# %% [markdown]
# ## Per-token time and state size against the context
# Wall time per token and the CPU time of the process (which leaves out waiting for a core
# on a shared machine); the state bytes come from shapes alone (`layers.state_bytes`).

# %%
fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(12, 4), constrained_layout=True)
for mixer in MIXERS:
  mine = [r for r in rows if r["mixer"] == mixer]
  line, = ax_t.plot(CONTEXTS, [r["cpu_ms_per_token"] for r in mine], "o-", label=mixer)
  ax_t.plot(CONTEXTS, [r["ms_per_token"] for r in mine], ":", color=line.get_color())
  ax_s.plot(CONTEXTS, [r["state_bytes"] / 2**20 for r in mine], "o-", label=mixer)
ax_t.set(xscale="log", yscale="log", xlabel="context (prompt tokens)",
         ylabel="ms per token (solid: CPU, dotted: wall)")
ax_s.set(xscale="log", yscale="log", xlabel="context (prompt tokens)", ylabel="state MiB")
ax_t.legend()
plt.show()

# %% [markdown]
# Every recurrent mixer's decode loop is one compiled program whatever the context (its
# state has one shape), so its cost cannot grow; attention's cache, and with it the program,
# grows with the context.

# %%
for mixer in MIXERS:
  mine = [r for r in rows if r["mixer"] == mixer]
  same = len({r["program"] for r in mine}) == 1
  grows = mine[-1]["state_bytes"] > mine[0]["state_bytes"]
  ratio = mine[-1]["cpu_ms_per_token"] / mine[0]["cpu_ms_per_token"]
  print(f"{mixer:15s} same program: {same!s:5s} state grows: {grows!s:5s} "
        f"CPU time {CONTEXTS[-1]} / {CONTEXTS[0]}: {ratio:.2f}x")
  assert same == (not grows) == (mixer != "attention"), mixer
print("notebook done")
