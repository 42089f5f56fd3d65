"""Samples text from a trained byte-level language model (e.g. configs/lm/chars.py).

  python -m train.sample --workdir runs/chars --prompt "Call me Ishmael." --max_new_tokens 300 \
      [--temperature 0.8 --top_p 0.95 --seed 0]

Rebuilds the model from `workdir/config.json`, restores the latest checkpoint's parameters
and continues the prompt with `seqmodels.generate`.
"""
from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp

from seqmodels import BlockTransformer, LanguageModel, Sampler, generate
from train import checkpoint
from train.eval import load_config, restore_state
from train.loop import build
from train.tasks import build_task


def load(workdir: str):
  """(config, model, params, step) of the latest checkpoint in `workdir`."""
  config = load_config(workdir)
  setup = build(config, build_task(config.task), jax.ShapeDtypeStruct((1, 8), jnp.int32))
  if not isinstance(setup.model, (LanguageModel, BlockTransformer)):
    raise ValueError(f"{workdir!r} holds a model.architecture={config.model.architecture!r} "
                     "run; train.sample decodes language models (architecture 'lm' or "
                     "'block_transformer')")
  on_one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  state, step = restore_state(workdir, checkpoint.abstract(
      setup.abstract_state, jax.tree.map(lambda _: on_one_device, setup.abstract_state)))
  return config, setup.model, state.params, step


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--prompt", default="Call me Ishmael.")
  parser.add_argument("--max_new_tokens", type=int, default=300)
  parser.add_argument("--temperature", type=float, default=0.8)
  parser.add_argument("--top_p", type=float, default=0.95)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  try:
    _, model, params, step = load(args.workdir)
  except (ValueError, FileNotFoundError, checkpoint.CheckpointError) as e:
    sys.exit(f"error: {e}")
  prompt = jnp.asarray([list(args.prompt.encode("utf-8"))], jnp.int32)
  tokens = generate(model, {"params": params}, prompt, args.max_new_tokens,
                    jax.random.key(args.seed), Sampler(args.temperature, top_p=args.top_p))
  text = bytes(int(t) for t in tokens[0]).decode("utf-8", errors="replace")
  print(f"[step {step}] {args.prompt}{text}")


if __name__ == "__main__":
  main()
