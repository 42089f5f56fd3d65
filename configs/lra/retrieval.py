"""LRA Retrieval: do two AAN papers cite one another? Bytes, 4000 per paper, a two-tower
classifier ([h1, h2, h1 * h2, h1 - h2] -> MLP). Reads the release's
DATA_DIR/new_aan_pairs.{train,eval,test}.tsv.

  python -m train --config configs/lra/retrieval.py:size=cpu --workdir runs/retrieval_cpu \\
      --config.task.data_dir=DATA_DIR
"""
import ml_collections

from train import config_lib

TRAIN_SIZE = 147_086

SIZES = {
    # The S4D paper's LRA hyperparameters: 6 layers, width 256, state 64, lr 0.01 (SSM 0.001),
    # weight decay 0.05, batch 64, 20 epochs, bidirectional, mean pooling.
    "full": dict(d_model=256, n_layers=6, mixer_kwargs={"s4d": {"d_state": 64}}, lr=0.01,
                 ssm_lr=0.001, weight_decay=0.05, batch_size=64,
                 steps=20 * TRAIN_SIZE // 64, eval_every=TRAIN_SIZE // 64, eval_batches=282),
    # A 2-core CPU:
    "cpu": dict(d_model=64, n_layers=2, mixer_kwargs={"s4d": {"d_state": 32}}, lr=0.004,
                ssm_lr=0.001, weight_decay=0.05, batch_size=4, steps=2000, eval_every=200,
                eval_batches=16),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return config_lib.lra_config(arg, dict(
      name="retrieval",
      data_dir="",       # the folder holding new_aan_pairs.*.tsv
      max_length=4000,   # bytes per paper
  ), SIZES)
