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
# # Training on MQAR inside a notebook
#
# The training loop is a library call: `train.loop.train_and_evaluate(config, workdir)` is
# what `seqmodels-train` runs, here on multi-query associative recall (MQAR: key-value pairs,
# then queries for some keys; `configs/synthetic/mqar.py`) with a small attention model.
# The run writes its metrics to `workdir/metrics.jsonl`; we plot them.

# %%
import importlib.util
import pathlib
import tempfile

import matplotlib.pyplot as plt

from train.loop import train_and_evaluate
from train.metrics import read_metrics

ROOT = next(p for p in [pathlib.Path.cwd(), *pathlib.Path.cwd().parents]
            if (p / "configs").is_dir())
spec = importlib.util.spec_from_file_location("mqar", ROOT / "configs/synthetic/mqar.py")
mqar = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mqar)

config = mqar.get_config("model=attention,size=tiny")
config.run.update(steps=300, eval_every=100, log_every=10, checkpoint_every=300,
                  progress=False)
print(config.model)
print(config.task)

# %%
workdir = tempfile.mkdtemp(prefix="mqar_")
final = train_and_evaluate(config, workdir)
final

# %% [markdown]
# ## Loss and accuracy
# Training loss and token accuracy at the answer positions every `log_every` steps, eval
# accuracy every `eval_every` steps. Chance is 1/8 (values come from 8 ids); a model that
# recalls reaches far above it.

# %%
records = read_metrics(workdir)
train = [r for r in records if "loss" in r]
evals = [r for r in records if "eval_accuracy" in r]
fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train])
ax_loss.set(xlabel="step", ylabel="train loss", yscale="log")
ax_acc.plot([r["step"] for r in train], [r["accuracy"] for r in train], label="train")
ax_acc.plot([r["step"] for r in evals], [r["eval_accuracy"] for r in evals], "o-", label="eval")
ax_acc.axhline(1 / 8, color="gray", ls=":", label="chance")
ax_acc.set(xlabel="step", ylabel="accuracy")
ax_acc.legend()
plt.show()

# %%
assert final["eval_accuracy"] > 0.5, final  # chance: 0.125
print(f"eval accuracy {final['eval_accuracy']:.3f}; notebook done")
