"""Character-level (byte) language modelling on plain text with document packing; reports
bits per byte. Default data: Moby-Dick, fetched once with

  python -m train.data.moby_dick --out ~/.cache/seqmodels/moby_dick
  python -m train --config configs/lm/chars.py:model=mingru_attention --workdir runs/chars
  python -m train --config configs/lm/chars.py:model=s4d --workdir runs/chars_s4d \
      --config.task.data='path/to/my/texts/*.txt'
  python -m train --config configs/lm/chars.py:model=attention,arch=block_transformer \
      --workdir runs/chars_bt   # Block Transformer: block and token decoders of `model`
"""
import ml_collections

from train import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  options = config_lib.parse_arg(arg, model="mingru_attention", size="small", arch="lm")
  config = config_lib.base_config(options["model"], options["size"])
  config.task = ml_collections.ConfigDict(dict(
      name="chars",
      data="~/.cache/seqmodels/moby_dick",  # a folder of *.txt files or a glob pattern
      seq_len=256,
      eval_fraction=0.05,  # the last 5% of the documents
      block_align=1,  # documents start at multiples of it (arch=block_transformer: L)
      seed=0,
  ))
  config.opt.lr = 2e-3
  config.run.update(steps=2000, batch_size=16, eval_every=500, checkpoint_every=500)
  config_lib.set_architecture(config, options["arch"])
  return config
