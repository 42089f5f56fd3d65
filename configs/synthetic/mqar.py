"""Multi-query associative recall (Zoology / BASED): a small vocabulary, a few key-value pairs,
queries at power-law gaps. The README's default job.

  python -m train --config configs/synthetic/mqar.py:model=attention --workdir runs/mqar
  python -m train --config configs/synthetic/mqar.py:model=mingru,size=small \
      --workdir runs/mqar_mingru --config.opt.lr=3e-3
"""
import ml_collections

from train import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  options = config_lib.parse_arg(arg, model="attention", size="tiny", arch="lm")
  config = config_lib.base_config(options["model"], options["size"])
  config.task = ml_collections.ConfigDict(dict(
      name="mqar",
      vocab_size=16,    # keys from [1, 8), values from [8, 16); 0 is filler
      num_pairs=4,
      seq_len=64,
      power_alpha=0.01,  # query gaps g ~ g^(alpha - 1)
      seed=0,
  ))
  config.opt.lr = 3e-3
  config.run.steps = 400
  config.run.batch_size = 32
  config.run.eval_every = 100
  config.run.checkpoint_every = 100
  config_lib.set_architecture(config, options["arch"])
  return config
