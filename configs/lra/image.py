"""LRA Image: CIFAR-10 as 1024 grayscale pixel tokens, 10 classes. Reads the CIFAR-10 python
release: DATA_DIR/cifar-10-batches-py/{data_batch_1..5,test_batch}.

  python -m train --config configs/lra/image.py:size=cpu --workdir runs/image_cpu \\
      --config.task.data_dir=DATA_DIR
"""
import ml_collections

from train import config_lib

TRAIN_SIZE = 50_000

SIZES = {
    # The S4D paper's LRA hyperparameters: 6 layers, width 512, state 64, lr 0.01 (SSM 0.001),
    # weight decay 0.05, batch 50, 200 epochs, bidirectional, mean pooling (dropout 0.1 there;
    # our blocks have none).
    "full": dict(d_model=512, n_layers=6, mixer_kwargs={"s4d": {"d_state": 64}}, lr=0.01,
                 ssm_lr=0.001, weight_decay=0.05, batch_size=50,
                 steps=200 * TRAIN_SIZE // 50, eval_every=TRAIN_SIZE // 50, eval_batches=200),
    # A 2-core CPU:
    "cpu": dict(d_model=64, n_layers=2, mixer_kwargs={"s4d": {"d_state": 32}}, lr=0.004,
                ssm_lr=0.001, weight_decay=0.05, batch_size=16, steps=2000, eval_every=200,
                eval_batches=16),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return config_lib.lra_config(arg, dict(
      name="image",
      data_dir="",       # the folder holding cifar-10-batches-py/
  ), SIZES)
