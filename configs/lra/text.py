"""LRA Text: IMDB sentiment from bytes, 4096 per review, 2 classes. Reads the IMDB release:
DATA_DIR/aclImdb/{train,test}/{pos,neg}/*.txt.

  python -m train --config configs/lra/text.py:size=cpu --workdir runs/text_cpu \\
      --config.task.data_dir=DATA_DIR
"""
import ml_collections

from train import config_lib

TRAIN_SIZE = 25_000

SIZES = {
    # The S4D paper's LRA hyperparameters: 6 layers, width 256, state 64, lr 0.01 (SSM 0.001),
    # weight decay 0.05, batch 16, 32 epochs, bidirectional, mean pooling.
    "full": dict(d_model=256, n_layers=6, mixer_kwargs={"s4d": {"d_state": 64}}, lr=0.01,
                 ssm_lr=0.001, weight_decay=0.05, batch_size=16,
                 steps=32 * TRAIN_SIZE // 16, eval_every=TRAIN_SIZE // 16, eval_batches=1562),
    # A 2-core CPU:
    "cpu": dict(d_model=64, n_layers=2, mixer_kwargs={"s4d": {"d_state": 32}}, lr=0.004,
                ssm_lr=0.001, weight_decay=0.05, batch_size=4, steps=2000, eval_every=200,
                eval_batches=16),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return config_lib.lra_config(arg, dict(
      name="text",
      data_dir="",       # the folder holding aclImdb/
      max_length=4096,
  ), SIZES)
