"""The one-screen model summary printed at start-up: the architecture, one row of parameters
per block (with its mixer), and the parameter count of every optimizer group."""
from __future__ import annotations

import jax
from flax import linen as nn

from seqmodels import registry
from train import optim


def parameter_rows(params) -> dict[str, int]:
  """{module path up to two levels (backbone/blocks_0, head): parameter count}, in order."""
  rows: dict[str, int] = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    keys = [str(getattr(k, "key", k)) for k in path]
    name = "/".join(keys[:2] if keys[0] == "backbone" else keys[:1])
    rows[name] = rows.get(name, 0) + leaf.size
  return rows


def model_summary(model_config, boxed) -> str:
  """A few lines on the model of config.model (architecture, mixers, widths) and its boxed
  parameters (`jax.eval_shape(model.init)`): per-block counts and per-group counts."""
  if model_config.architecture == "block_transformer":
    m = model_config
    lines = [f"model: block_transformer, block length {m.block_length}, block decoder "
             f"{m.block_pattern!r} {m.n_block_layers} layers d_block {m.d_block}, token decoder "
             f"{m.token_pattern!r} {m.n_token_layers} layers d_token {m.d_token}, prefix ratio "
             f"{m.prefix_ratio}, dtype {m.dtype}"]
  else:
    lines = [f"model: {model_config.architecture}, mixer {model_config.mixer!r}, "
             f"{model_config.n_layers} layers, d_model {model_config.d_model}, "
             f"dtype {model_config.dtype}"]
  for name, count in parameter_rows(nn.unbox(boxed)).items():
    if name.startswith("backbone/blocks_"):
      pattern = registry.get_pattern(model_config.mixer)
      name += f" ({pattern[int(name.rsplit('_', 1)[1]) % len(pattern)]})"
    lines.append(f"  {name:<32} {count:>12,}")
  sizes = optim.group_sizes(boxed)
  lines.append(f"parameters: {sum(sizes.values()):,} (" + ", ".join(
      f"{group} {n:,}" for group, n in sizes.items()) + ")")
  return "\n".join(lines)
