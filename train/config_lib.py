"""Building blocks of the run configs in `configs/` and the checks that stop a bad config
before anything is compiled.

A config has five sections: `task` (name + options of the task), `model` (mixer or block
pattern, sizes), `opt` (optimizer), `mesh` (device mesh axis sizes) and `run` (steps, batch,
eval, logging, checkpoints).
"""
from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable

import ml_collections
from ml_collections.config_dict import placeholder

from layers import axes
from layers import memory as memory_lib
from seqmodels import registry
from seqmodels.models import get_architecture, model_mixers, model_patterns
from train import sharding

SIZES = {  # size name -> (d_model, n_layers)
    "tiny": (64, 2),
    "small": (128, 4),
    "base": (256, 6),
}
DTYPES = ("float32", "bfloat16")


def load_python_file(path: str, what: str, example: str):
  """The module of the Python file at `path` (a config or sweep file); a ValueError naming
  `what` was expected there, with `example`, when there is no such file."""
  if not os.path.isfile(path):
    raise ValueError(f"no {what} at {path!r} (expected e.g. {example})")
  spec = importlib.util.spec_from_file_location(what.replace(" ", "_"), path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def parse_arg(arg: str | None, **defaults) -> dict:
  """Parses the `config.py:key=value,key=value` argument; keys must be among `defaults`."""
  options = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep or key not in defaults:
      raise ValueError(f"config argument {item!r}: expected key=value with key in "
                       f"{', '.join(defaults)}")
    options[key] = value
  return options


def base_config(model: str, size: str, sizes: dict = SIZES) -> ml_collections.ConfigDict:
  """Model, optimizer, mesh and run defaults shared by every config (the task is added by
  it); `sizes` maps size names to (d_model, n_layers)."""
  if size not in sizes:
    raise ValueError(f"config argument size={size!r}: expected one of {', '.join(sizes)}")
  d_model, n_layers = sizes[size]
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict(dict(
      architecture="lm",       # a key of seqmodels.ARCHITECTURES: lm | classifier
      mixer=model,             # a mixer or block pattern name from seqmodels.registry
      d_model=d_model,
      n_layers=n_layers,
      mlp_expand=8 / 3,        # hidden width of the gated MLP, as a multiple of d_model
      tie_embeddings=True,     # lm: logits = h E^T with the token embedding E
      dtype="float32",         # compute dtype: float32 | bfloat16 (params stay float32)
      # {mixer name: {option: value}}; from the command line as
      # --config.model.mixer_kwargs.s4d.d_state=32 (train/main.py)
      mixer_kwargs=ml_collections.ConfigDict(),
      # product-key memory layers (layers/memory.py) in place of the MLP of the blocks in
      # `layers`, e.g. (1,) or (4, 12, 20) of 24; none by default
      memory=ml_collections.ConfigDict(dict(
          layers=(),
          n_keys=32,           # sub-keys per half: n_keys**2 value rows
          heads=4,             # memory heads (their bags are summed)
          topk=32,             # rows read per head
          k_dim=64,            # product-key width (two halves of k_dim / 2)
          v_dim=placeholder(int),  # value width (None: d_model)
          memory_plus=True,    # Memory+: W_o(mem(x) * silu(W_s x)); False: mem(x), V = D
          shared_values=True,  # one value table for all memory layers of the backbone
          query_norm="layernorm",  # "layernorm" | None
          impl="auto",         # product_key_topk form: auto | product | reference
          # update only the value rows a step reads (lazy AdamW, train/sparse.py) instead of
          # dense AdamW over the whole table; needs opt.grad_accum_steps=1
          sparse_updates=False,
      )),
  ))
  config.opt = ml_collections.ConfigDict(dict(
      lr=1e-3,                 # the "default" group: weight matrices
      weight_decay=0.1,
      ssm_lr=1e-3,             # the "ssm" group's lr (state-space dynamics A, dt)
      b1=0.9, b2=0.98, eps=1e-8,
      warmup_steps=50,
      final_lr_ratio=0.1,      # cosine decays to lr * final_lr_ratio
      clip_norm=1.0,
      grad_accum_steps=1,
  ))
  # The optimizer groups the parameters declare (layers/axes.py), beside "default": their lr
  # (None: opt.lr) and weight decay. groups.ssm.lr is opt.ssm_lr (one value, two names).
  config.opt.groups = ml_collections.ConfigDict({
      axes.NO_DECAY: dict(lr=placeholder(float), weight_decay=0.0),  # norms, biases, embeddings
      axes.SSM: dict(lr=config.opt.get_ref("ssm_lr"), weight_decay=0.0),
      # memory value tables: 10x opt.lr (Berges et al.: 1e-3 against 1e-4), no decay, and
      # their own global-norm clipping (the other groups share opt.clip_norm)
      axes.MEMORY: dict(lr=config.opt.get_ref("lr") * 10, weight_decay=0.0, clip_norm=1.0),
  })
  config.mesh = ml_collections.ConfigDict(dict(
      data=-1,                 # data parallel; -1: all devices not used by the other axes
      fsdp=1,                  # parameters sharded as `rules` say (the model width)
      model=1,                 # tensor parallel (heads, inner widths, vocabulary)
      # (logical axis, mesh axes): how parameters and batches map onto the mesh
      rules=sharding.DEFAULT_RULES,
  ))
  config.run = ml_collections.ConfigDict(dict(
      steps=1000,
      batch_size=32,
      seed=0,
      log_every=25,
      eval_every=250,
      eval_batches=8,
      checkpoint_every=250,
      keep_checkpoints=2,
      progress=True,           # tqdm progress bar
  ))
  return config


ARCHS = ("lm", "block_transformer")  # the `arch=` of the language-model configs


def set_architecture(config: ml_collections.ConfigDict, arch: str) -> None:
  """The `arch=` option of a language-model config: "lm" keeps config.model as it is;
  "block_transformer" makes it a Block Transformer's (`block_transformer`), and a task that
  packs documents (task.block_align) aligns them to its blocks (one value: overriding
  either key changes both)."""
  if arch not in ARCHS:
    raise ValueError(f"config argument arch={arch!r}: expected one of {', '.join(ARCHS)}")
  if arch == "block_transformer":
    block_transformer(config.model)
    if "block_align" in config.task:
      config.task.block_align = config.model.get_ref("block_length")


def block_transformer(model: ml_collections.ConfigDict, block_length: int = 4,
                      prefix_ratio: int = 2) -> None:
  """Turns config.model (built by `base_config`) into a Block Transformer's in place: the
  block and token decoders both take the pattern `mixer`, the width d_model and n_layers
  layers (the paper's main configs), then those keys give way to block_pattern,
  token_pattern, d_block, d_token, n_block_layers and n_token_layers (tie_embeddings goes too:
  the token decoder's head is always tied)."""
  with model.unlocked():
    model.update(architecture="block_transformer", block_length=block_length,
                 block_pattern=model.mixer, token_pattern=model.mixer,
                 d_block=model.d_model, d_token=model.d_model,
                 n_block_layers=model.n_layers, n_token_layers=model.n_layers,
                 prefix_ratio=prefix_ratio)
    for key in ("mixer", "d_model", "n_layers", "tie_embeddings"):
      del model[key]


def lra_config(arg: str | None, task: dict, sizes: dict[str, dict] | Callable[[dict], dict],
               task_args: tuple[str, ...] = ()) -> ml_collections.ConfigDict:
  """A Long Range Arena run (configs/lra/, configs/real/): `arg` picks model= (default s4d)
  and size= among `sizes` (the first is the default), and sets the task options named in
  `task_args` (`seed` among them: task.seed and run.seed, one value); `task` holds the task's
  options. Each size gives d_model, n_layers, mixer_kwargs ({mixer: options}, kept for the
  mixers the model uses), lr, ssm_lr, weight_decay, batch_size, steps, eval_every,
  eval_batches; `sizes` may be a function of the task options returning that dict. Warmup is
  1% of the steps, then a cosine decay to 0; checkpoints at every eval."""
  task = dict(task)
  options = parse_arg(arg, model="s4d", size=None, **{k: task.get(k, 0) for k in task_args})
  for key in task_args:
    task[key] = _parse_like(task.get(key, 0), options[key], key)
  if callable(sizes):
    sizes = sizes(task)
  options["size"] = options["size"] or next(iter(sizes))
  config = base_config(options["model"], options["size"],
                       {name: (h["d_model"], h["n_layers"]) for name, h in sizes.items()})
  h = sizes[options["size"]]
  used = registry.get_pattern(options["model"])
  config.model.mixer_kwargs = ml_collections.ConfigDict(
      {name: kwargs for name, kwargs in h["mixer_kwargs"].items() if name in used})
  config.model.architecture = "classifier"
  config.task = ml_collections.ConfigDict({"pooling": "mean", "seed": 0, **task})
  config.opt.update(lr=h["lr"], ssm_lr=h["ssm_lr"], weight_decay=h["weight_decay"],
                    warmup_steps=max(1, h["steps"] // 100), final_lr_ratio=0.0)
  config.run.update(steps=h["steps"], batch_size=h["batch_size"], eval_every=h["eval_every"],
                    eval_batches=h["eval_batches"], checkpoint_every=h["eval_every"],
                    seed=config.task.seed)
  return config


def _parse_like(default, value, key: str):
  """A config argument's string `value` as the type of `default` (bools: True/False)."""
  if not isinstance(value, str):
    return value
  if isinstance(default, bool):
    if value not in ("True", "False"):
      raise ValueError(f"config argument {key}={value!r}: expected True or False")
    return value == "True"
  try:
    return type(default)(value)
  except ValueError:
    raise ValueError(f"config argument {key}={value!r}: expected a {type(default).__name__}"
                     ) from None


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises a one-line ValueError naming the first bad key and what it accepts (every value
  with a valid range is checked: RANGES)."""
  model, opt, run = config.model, config.opt, config.run
  sharding.check_rules(config.mesh.rules)
  get_architecture(model.architecture)
  patterns = model_patterns(model)
  for key, pattern in patterns.items():
    if pattern not in registry.known_models():
      raise ValueError(f"model.{key}={pattern!r} is unknown; known: "
                       f"{', '.join(registry.known_models())}")
  if model.dtype not in DTYPES:
    raise ValueError(f"model.dtype={model.dtype!r}: expected one of {', '.join(DTYPES)}")
  names = model_mixers(model)
  for name, overrides in model.mixer_kwargs.items():
    if name not in names:
      raise ValueError(f"model.mixer_kwargs.{name}: the model "
                       f"{' + '.join(map(repr, patterns.values()))} uses only "
                       f"{', '.join(names)}")
    registry.build_mixer(name, model.get("d_model", model.get("d_block")),
                         overrides=overrides.to_dict())
  _validate_memory(model)
  for key, (accepts, expected) in RANGES.items():
    value = _lookup(config, key)
    if value is _ABSENT:  # a key of another architecture
      continue
    if not accepts(value):
      raise ValueError(f"{key}={value}: expected {expected}")
  if model.memory.get("sparse_updates") and opt.grad_accum_steps != 1:
    raise ValueError(f"model.memory.sparse_updates=True takes opt.grad_accum_steps=1 (got "
                     f"{opt.grad_accum_steps}): sparse updates accumulate no gradients")
  if run.steps < opt.grad_accum_steps:
    raise ValueError(f"run.steps={run.steps}: expected at least opt.grad_accum_steps="
                     f"{opt.grad_accum_steps} (one optimizer update)")
  _validate_groups(opt)


POSITIVE = (lambda v: v > 0, "a positive number")
NON_NEGATIVE = (lambda v: v >= 0, "a number >= 0")
BELOW_ONE = (lambda v: 0 <= v < 1, "a number in [0, 1)")
FRACTION = (lambda v: 0 <= v <= 1, "a number in [0, 1]")
RANGES = {  # dotted key -> (accepts(value), what it accepts), checked in this order
    "model.d_model": POSITIVE, "model.n_layers": POSITIVE, "model.mlp_expand": POSITIVE,
    "model.block_length": POSITIVE, "model.prefix_ratio": POSITIVE,
    "model.d_block": POSITIVE, "model.d_token": POSITIVE,
    "model.n_block_layers": POSITIVE, "model.n_token_layers": POSITIVE,
    "opt.lr": POSITIVE, "opt.ssm_lr": POSITIVE, "opt.weight_decay": NON_NEGATIVE,
    "opt.b1": BELOW_ONE, "opt.b2": BELOW_ONE, "opt.eps": POSITIVE,
    "opt.warmup_steps": NON_NEGATIVE, "opt.final_lr_ratio": FRACTION,
    "opt.clip_norm": POSITIVE, "opt.grad_accum_steps": POSITIVE,
    "run.steps": POSITIVE, "run.batch_size": POSITIVE, "run.log_every": POSITIVE,
    "run.eval_every": POSITIVE, "run.eval_batches": POSITIVE,
    "run.checkpoint_every": POSITIVE, "run.keep_checkpoints": POSITIVE,
}


_ABSENT = object()


def _lookup(config, key: str):
  """config["a"]["b"] of the dotted key "a.b" (_ABSENT if the config lacks it)."""
  for part in key.split("."):
    if part not in config:
      return _ABSENT
    config = config[part]
  return config


def _validate_memory(model) -> None:
  """model.memory.layers are distinct block indices; the other keys are valid
  ProductKeyMemory options."""
  options = model.memory.to_dict()
  layers, _ = options.pop("layers"), options.pop("shared_values")
  sparse = options.pop("sparse_updates", False)
  if not isinstance(sparse, bool):
    raise ValueError(f"model.memory.sparse_updates={sparse!r}: expected True or False")
  if "n_layers" not in model:  # an architecture without a Backbone of its own (Block Transformer)
    if layers:
      raise ValueError(f"model.memory.layers={tuple(layers)}: the {model.architecture} "
                       "architecture has no memory layers; expected ()")
    return
  memory_lib.check_layers(layers, model.n_layers, "model.memory.layers")
  try:
    memory_lib.check_options(model.d_model, options)
  except ValueError as e:
    raise ValueError(f"model.memory: {e}") from None


def _validate_groups(opt) -> None:
  """opt.groups names every declared group but "default", each with a positive lr (or None)
  and a weight decay >= 0."""
  declared = set(axes.GROUPS) - {axes.DEFAULT}
  if set(opt.groups) != declared:
    raise ValueError(f"opt.groups has {', '.join(sorted(opt.groups))}; expected the groups "
                     f"the parameters declare (layers/axes.py): {', '.join(sorted(declared))}")
  for group, hyper in opt.groups.items():
    if hyper.lr is not None and not hyper.lr > 0:
      raise ValueError(f"opt.groups.{group}.lr={hyper.lr}: expected a positive number (or "
                       "None: opt.lr)")
    if not hyper.weight_decay >= 0:
      raise ValueError(f"opt.groups.{group}.weight_decay={hyper.weight_decay}: expected a "
                       "number >= 0")
    clip = hyper.get("clip_norm")
    if clip is not None and not clip > 0:
      raise ValueError(f"opt.groups.{group}.clip_norm={clip}: expected a positive number (or "
                       "None: opt.clip_norm, shared)")
