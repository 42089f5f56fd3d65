"""A UCR time-series classification problem (Dau et al. 2019, "The UCR Time Series Archive"):
the real-valued series z-normalised per series, on the archive's own train/test split. Fetch
the files once with `python -m train.data.fetch ucr` (into ~/.cache/seqmodels/ucr).

  python -m train --config configs/real/ucr.py:problem=GunPoint,model=s4d,seed=0 \\
      --workdir runs/ucr/GunPoint_s4d_0

`problem=` one of UCR below; `seed=` sets task.seed (data order) and run.seed (init). eval
is the archive's TEST file (there is no validation set); `python -m train.report` scores the
whole of it.
"""
import ml_collections

from train import config_lib

UCR = {  # name: (train size, test size, length), as the archive has them
    "ACSF1": (100, 100, 1460),
    "ArrowHead": (36, 175, 251),
    "GunPoint": (50, 150, 150),
    "ItalyPowerDemand": (67, 1029, 24),
    "OSULeaf": (200, 242, 427),
}


def sizes(task: dict) -> dict:
  """The sizes of task["problem"]: "cpu", a 2-layer width-64 model for a 2-core CPU."""
  if task["problem"] not in UCR:
    raise ValueError(f"config argument problem={task['problem']!r}: expected one of "
                     f"{', '.join(UCR)}")
  _, test_size, _ = UCR[task["problem"]]
  batch_size = 16
  return {
      "cpu": dict(d_model=64, n_layers=2, mixer_kwargs={"s4d": {"d_state": 32}}, lr=0.004,
                  ssm_lr=0.001, weight_decay=0.05, batch_size=batch_size, steps=300,
                  eval_every=150, eval_batches=max(1, test_size // batch_size)),
  }


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return config_lib.lra_config(arg, dict(
      name="ucr",
      problem="GunPoint",  # a problem of the archive (UCR above)
      data_dir="",         # "": ~/.cache/seqmodels/ucr (python -m train.data.fetch ucr)
      seed=0,
  ), sizes, task_args=("problem", "seed"))
