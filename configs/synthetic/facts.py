"""Facts: a fixed table of (subject, relation) -> object facts the model must store in its
parameters (train/tasks/synthetic.py: Facts). model=dense is one attention block with an
MLP; model=memory replaces that MLP by a Memory+ product-key memory, and the dense MLP's
width is set so both have the same FLOPs per token in their channel mixer (the analytic
count of layers.memory.flops_per_token against 3 * D * hidden for the gated MLP).
Arguments: model= dense | memory (default), facts= F (default 16384), steps= (default 2000).

  python -m train --config configs/synthetic/facts.py:model=memory,facts=16384 \
      --workdir runs/facts_memory_16384
  python -m train --config configs/synthetic/facts.py:model=dense,facts=16384 \
      --workdir runs/facts_dense_16384
"""
import ml_collections

from layers import memory
from train import config_lib

D_MODEL = 32
MEMORY = dict(n_keys=128, heads=4, topk=8, k_dim=32, v_dim=32, memory_plus=True)


def dense_expand(d_model: int, options: dict) -> float:
  """The gated-MLP expand whose FLOPs per token, 3 * D * hidden, equal the memory layer's."""
  hidden = memory.flops_per_token(d_model, options) / (3 * d_model)
  return hidden / d_model


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  options = config_lib.parse_arg(arg, model="memory", facts="16384", steps="2000")
  if options["model"] not in ("dense", "memory"):
    raise ValueError(f"config argument model={options['model']!r}: expected dense or memory")
  config = config_lib.base_config("attention", "tiny", {"tiny": (D_MODEL, 1)})
  config.task = ml_collections.ConfigDict(dict(
      name="facts",
      num_facts=int(options["facts"]),  # F, the size of the table
      num_objects=64,
      facts_per_example=8,              # triples per sequence: T = 24
      seed=0,
  ))
  if options["model"] == "memory":
    config.model.memory.update(layers=(0,), **MEMORY)
  else:
    config.model.mlp_expand = dense_expand(D_MODEL, MEMORY)
  config.opt.update(lr=3e-3, weight_decay=0.0, warmup_steps=100)
  config.opt.groups.memory.lr = 1e-2
  config.run.update(steps=int(options["steps"]), batch_size=64, eval_every=1000,
                    checkpoint_every=1000, eval_batches=8, log_every=100)
  return config
