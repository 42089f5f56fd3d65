"""LRA Path-X: Pathfinder at 128x128, 16384 pixel tokens, 2 classes. Reads the release:
DATA_DIR/pathfinder128/curv_contour_length_14/{imgs,metadata}.

  python -m train --config configs/lra/pathx.py:size=cpu --workdir runs/pathx_cpu \\
      --config.task.data_dir=DATA_DIR
"""
import ml_collections

from train import config_lib

TRAIN_SIZE = 160_000

SIZES = {
    # The S4D paper's LRA hyperparameters: 6 layers, width 256, state 64, lr 0.0005 (SSM
    # 0.0005), weight decay 0.05, batch 32, 50 epochs, bidirectional, mean pooling, and a 10x
    # smaller dt range (dt in [1e-4, 1e-2]) for the 16x longer sequence.
    "full": dict(d_model=256, n_layers=6,
                 mixer_kwargs={"s4d": {"d_state": 64, "dt_min": 1e-4, "dt_max": 1e-2}},
                 lr=0.0005, ssm_lr=0.0005, weight_decay=0.05, batch_size=32,
                 steps=50 * TRAIN_SIZE // 32, eval_every=TRAIN_SIZE // 32, eval_batches=625),
    # A 2-core CPU:
    "cpu": dict(d_model=64, n_layers=2,
                mixer_kwargs={"s4d": {"d_state": 32, "dt_min": 1e-4, "dt_max": 1e-2}},
                lr=0.002, ssm_lr=0.0005, weight_decay=0.05, batch_size=4, steps=2000,
                eval_every=200, eval_batches=16),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return config_lib.lra_config(arg, dict(
      name="pathfinder",
      data_dir="",       # the folder holding pathfinder128/
      resolution=128,
      difficulty="curv_contour_length_14",
  ), SIZES)
