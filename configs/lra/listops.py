"""LRA ListOps: the value of a nested MIN / MAX / MED / SM expression, up to 2048 tokens, 10
classes. Runs out of the box: examples are generated from their index with the benchmark's
distribution (train/data/listops.py); --config.task.data_dir=DIR reads DIR/basic_*.tsv instead
(the release's listops-1000 folder, or `python -m train.data.listops --out DIR`).

  python -m train --config configs/lra/listops.py:size=cpu --workdir runs/listops_cpu
  python -m train --config configs/lra/listops.py:model=s4d --workdir runs/listops

Easier expressions (a diagnostic; operators nested at most two deep, any length):
  python -m train --config configs/lra/listops.py:size=cpu,max_depth=3,min_length=3 ...
"""
import ml_collections

from train import config_lib
from train.data import listops

TRAIN_SIZE = 96_000

SIZES = {
    # The S4D paper's (Gu et al. 2022, "On the Parameterization and Initialization of Diagonal
    # State Space Models", LRA hyperparameter table; the S4 paper's are the same): 8 layers,
    # width 128, state 64, lr 0.01 (SSM 0.001), weight decay 0.05, batch 50, 40 epochs,
    # bidirectional, mean pooling.
    "full": dict(d_model=128, n_layers=8, mixer_kwargs={"s4d": {"d_state": 64}}, lr=0.01,
                 ssm_lr=0.001, weight_decay=0.05, batch_size=50,
                 steps=40 * TRAIN_SIZE // 50, eval_every=TRAIN_SIZE // 50, eval_batches=40),
    # A 2-core CPU (a 2-layer d=64 S4D step on 8 x 2048 tokens takes seconds there):
    "cpu": dict(d_model=64, n_layers=2, mixer_kwargs={"s4d": {"d_state": 32}}, lr=0.004,
                ssm_lr=0.001, weight_decay=0.05, batch_size=8, steps=2000, eval_every=200,
                eval_batches=16),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return config_lib.lra_config(arg, dict(
      name="listops",
      data_dir="",       # "": generated examples; else the folder of basic_{train,val,test}.tsv
      max_length=2048,
      max_depth=listops.MAX_DEPTH,    # generator: operators nest at most max_depth - 1 deep
      min_length=listops.MIN_LENGTH,  # generator: expressions longer than this (tokens)
  ), SIZES, task_args=("max_depth", "min_length"))
