"""Induction heads (Olsson et al.; Mamba section 4.1.2): after the second trigger, recall the
token that followed the first.

  python -m train --config configs/synthetic/induction_heads.py:model=mingru --workdir runs/ih
"""
import ml_collections

from train import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  options = config_lib.parse_arg(arg, model="attention", size="tiny", arch="lm")
  config = config_lib.base_config(options["model"], options["size"])
  config.task = ml_collections.ConfigDict(dict(
      name="induction_heads",
      vocab_size=16,   # tokens 1..14, trigger 15
      seq_len=64,
      seed=0,
  ))
  config_lib.set_architecture(config, options["arch"])
  return config
