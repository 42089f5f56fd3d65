"""The optimizer: AdamW with linear warmup + cosine decay, parameter groups by name, global
norm clipping and optional gradient accumulation (all optax)."""
from __future__ import annotations

import re

import jax
import optax
from flax import traverse_util

# Group of a parameter: the first group whose pattern matches its "/"-joined path.
#   ssm:      state-space dynamics (S4D's A and dt, Mamba's A_log and dt bias): own lr, no decay
#   no_decay: norms, biases and embeddings: no weight decay
GROUPS = ("ssm", "no_decay", "default")


def param_labels(params, ssm_pattern: str, no_decay_pattern: str):
  """The group name of every leaf of `params` (same tree structure)."""
  flat = traverse_util.flatten_dict(params, sep="/")
  def label(path):
    if re.search(ssm_pattern, path):
      return "ssm"
    if re.search(no_decay_pattern, path):
      return "no_decay"
    return "default"
  return traverse_util.unflatten_dict({k: label(k) for k in flat}, sep="/")


def schedule(opt, total_steps: int, peak: float) -> optax.Schedule:
  """Linear warmup from 0 to `peak` over opt.warmup_steps, cosine decay to
  peak * opt.final_lr_ratio at `total_steps`."""
  return optax.warmup_cosine_decay_schedule(
      0.0, peak, opt.warmup_steps, max(total_steps, opt.warmup_steps + 1),
      end_value=peak * opt.final_lr_ratio)


def make_optimizer(opt, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(optimizer, the main learning-rate schedule for logging) from the `opt` config.

  opt: lr, ssm_lr, weight_decay, b1, b2, eps, warmup_steps, final_lr_ratio, clip_norm,
  grad_accum_steps, ssm_pattern, no_decay_pattern.
  """
  def adamw(lr, weight_decay):
    return optax.adamw(schedule(opt, total_steps, lr), b1=opt.b1, b2=opt.b2, eps=opt.eps,
                       weight_decay=weight_decay)

  transforms = {"default": adamw(opt.lr, opt.weight_decay), "no_decay": adamw(opt.lr, 0.0),
                "ssm": adamw(opt.ssm_lr, 0.0)}
  labels = lambda params: param_labels(params, opt.ssm_pattern, opt.no_decay_pattern)
  tx = optax.chain(optax.clip_by_global_norm(opt.clip_norm),
                   optax.multi_transform(transforms, labels))
  if opt.grad_accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=opt.grad_accum_steps)
  return tx, schedule(opt, total_steps, opt.lr)


def group_sizes(params, opt) -> dict[str, int]:
  """Number of parameters in each group (for the run log)."""
  labels = jax.tree.leaves(param_labels(params, opt.ssm_pattern, opt.no_decay_pattern))
  sizes = dict.fromkeys(GROUPS, 0)
  for label, leaf in zip(labels, jax.tree.leaves(params)):
    sizes[label] += leaf.size
  return sizes
