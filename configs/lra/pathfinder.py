"""LRA Pathfinder: are the two dots of a 32x32 image joined by a dashed path? 1024 pixel
tokens, 2 classes. Reads the release: DATA_DIR/pathfinder32/curv_contour_length_14/
{imgs,metadata} (80% / 10% / 10% train / eval / test in metadata order).

  python -m train --config configs/lra/pathfinder.py:size=cpu --workdir runs/pathfinder_cpu \\
      --config.task.data_dir=DATA_DIR
"""
import ml_collections

from train import config_lib

TRAIN_SIZE = 160_000

SIZES = {
    # The S4D paper's LRA hyperparameters: 6 layers, width 256, state 64, lr 0.004 (SSM 0.001),
    # weight decay 0.05, batch 64, 200 epochs, bidirectional, mean pooling.
    "full": dict(d_model=256, n_layers=6, mixer_kwargs={"s4d": {"d_state": 64}}, lr=0.004,
                 ssm_lr=0.001, weight_decay=0.05, batch_size=64,
                 steps=200 * TRAIN_SIZE // 64, eval_every=TRAIN_SIZE // 64, eval_batches=312),
    # A 2-core CPU:
    "cpu": dict(d_model=64, n_layers=2, mixer_kwargs={"s4d": {"d_state": 32}}, lr=0.004,
                ssm_lr=0.001, weight_decay=0.05, batch_size=16, steps=2000, eval_every=200,
                eval_batches=16),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return config_lib.lra_config(arg, dict(
      name="pathfinder",
      data_dir="",       # the folder holding pathfinder32/
      resolution=32,
      difficulty="curv_contour_length_14",  # or curv_baseline, curv_contour_length_9
  ), SIZES)
