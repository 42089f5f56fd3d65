"""The optimizer: AdamW with linear warmup + cosine decay per parameter group, global norm
clipping (shared, or per group where a group sets its own) and optional gradient
accumulation (all optax).

The groups are declared by the parameters themselves (layers/axes.py: `axes.GROUPS`), so a
new layer cannot silently get weight decay on its dynamics; `config.opt` gives each group its
learning rate and weight decay.
"""
from __future__ import annotations

import jax
import optax
from flax import linen as nn

from layers import axes
from train import sparse as sparse_lib


def schedule(opt, updates: int, peak: float) -> optax.Schedule:
  """The learning rate of each optimizer update (counted from 0): linear warmup from 0 to
  `peak` over opt.warmup_steps, cosine decay reaching peak * opt.final_lr_ratio at the last
  of `updates` updates. opt.warmup_steps counts training steps: the warmup lasts
  opt.warmup_steps // opt.grad_accum_steps updates."""
  warmup = opt.warmup_steps // opt.grad_accum_steps
  return optax.warmup_cosine_decay_schedule(
      0.0, peak, warmup, max(updates - 1, warmup + 1), end_value=peak * opt.final_lr_ratio)


def group_settings(opt) -> dict[str, tuple[float, float]]:
  """{group: (peak lr, weight decay)}: `default` from opt.lr and opt.weight_decay, every
  other group from opt.groups.<group> (lr None: opt.lr)."""
  settings = {axes.DEFAULT: (opt.lr, opt.weight_decay)}
  for group, hyper in opt.groups.items():
    settings[group] = (opt.lr if hyper.lr is None else hyper.lr, hyper.weight_decay)
  return settings


def make_optimizer(opt, total_steps: int, labels,
                   sparse: bool = False) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(optimizer, lr(step): the main group's learning rate applied by the update that the
  0-based training step `step` contributes to, for logging) from the `opt` config.

  opt: lr, weight_decay, groups ({group: {lr, weight_decay, clip_norm (optional)}}; ssm_lr
  is groups.ssm.lr), b1, b2, eps, warmup_steps, final_lr_ratio, clip_norm (the global norm
  of the gradients of every group without its own clip_norm; a group with one is clipped
  alone), grad_accum_steps (k: an update every k steps, so the schedules count
  total_steps // k updates).
  labels: the group of every parameter (`axes.groups` of the boxed parameters), a tree of
  the parameters' structure.
  sparse: the memory tables' gradients come as `train.sparse.SparseRows` of their touched
  rows (model.memory.sparse_updates): the same optimizer, applied to those rows only
  (`train.sparse.lazy`: lazy AdamW); no gradient accumulation.
  """
  k = opt.grad_accum_steps
  updates = max(1, total_steps // k)
  own_clip = {group: hyper.clip_norm for group, hyper in opt.groups.items()
              if hyper.get("clip_norm") is not None}
  transforms = {}
  for group, (lr, weight_decay) in group_settings(opt).items():
    adamw = optax.adamw(schedule(opt, updates, lr), b1=opt.b1, b2=opt.b2, eps=opt.eps,
                        weight_decay=weight_decay)
    transforms[group] = (optax.chain(optax.clip_by_global_norm(own_clip[group]), adamw)
                         if group in own_clip else adamw)
  shared_clip = jax.tree.map(lambda group: group not in own_clip, labels)
  tx = optax.chain(optax.masked(optax.clip_by_global_norm(opt.clip_norm), shared_clip),
                   optax.multi_transform(transforms, labels))
  if sparse:
    if k > 1:
      raise ValueError("sparse updates accumulate no gradients: opt.grad_accum_steps must be 1")
    tx = sparse_lib.lazy(tx)
  elif k > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=k)
  main = schedule(opt, updates, opt.lr)
  return tx, lambda step: main(step // k)


def group_sizes(boxed) -> dict[str, int]:
  """Number of parameters in each group of `axes.GROUPS`, from the boxed parameters (or
  their `jax.eval_shape`), for the run log."""
  sizes = dict.fromkeys(axes.GROUPS, 0)
  for group, leaf in zip(jax.tree.leaves(axes.groups(boxed)),
                         jax.tree.leaves(nn.unbox(boxed))):
    sizes[group] += leaf.size
  return sizes
