"""SpamAssassin public corpus: ham vs spam from an email's raw bytes (headers included), the
first 4096 bytes, 2 classes; LRA Text's stand-in. Fetch the emails once with
`python -m train.data.fetch spam`. The split is fixed (train/tasks/real.py: seeded
permutation; 600 test, 600 eval, 4,846 train).

  python -m train --config configs/real/spam.py:model=s4d,size=cpu --workdir runs/spam_s4d
"""
import ml_collections

from train import config_lib

TRAIN_SIZE = 4_846

SIZES = {
    # "cpu": a 2-layer width-64 model for a 2-core CPU
    "cpu": dict(d_model=64, n_layers=2, mixer_kwargs={"s4d": {"d_state": 32}}, lr=0.004,
                ssm_lr=0.001, weight_decay=0.05, batch_size=8, steps=200, eval_every=100,
                eval_batches=8),
    # LRA Text's "full" setting of the S4D paper (32 epochs)
    "full": dict(d_model=256, n_layers=6, mixer_kwargs={"s4d": {"d_state": 64}}, lr=0.01,
                 ssm_lr=0.001, weight_decay=0.05, batch_size=16,
                 steps=32 * TRAIN_SIZE // 16, eval_every=TRAIN_SIZE // 16, eval_batches=37),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return config_lib.lra_config(arg, dict(
      name="spam_assassin",
      data_dir="",       # "": ~/.cache/seqmodels/spam_assassin
      max_length=4096,
      seed=0,
  ), SIZES, task_args=("seed",))
