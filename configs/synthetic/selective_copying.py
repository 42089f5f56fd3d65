"""Selective copying (Mamba, section 4.1.1): copy the scattered data tokens in order.

  python -m train --config configs/synthetic/selective_copying.py:model=s4d --workdir runs/sc
"""
import ml_collections

from train import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  options = config_lib.parse_arg(arg, model="attention", size="tiny", arch="lm")
  config = config_lib.base_config(options["model"], options["size"])
  config.task = ml_collections.ConfigDict(dict(
      name="selective_copying",
      vocab_size=10,   # data tokens 1..8, marker 9, filler 0
      num_tokens=8,
      seq_len=64,      # length of the region holding the data tokens
      seed=0,
  ))
  config_lib.set_architecture(config, options["arch"])
  return config
