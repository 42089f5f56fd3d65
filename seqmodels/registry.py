"""Names -> sequence mixers, block patterns and architectures, so a config says
`model.mixer = "mingru"` and nothing else in the code branches on the name.

Unknown names and unknown keyword arguments raise a ValueError listing what is known.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

from flax import linen as nn

from layers import S4D, Attention, Mamba, Mamba2, MinGRU, MinLSTM, NoMixer
from layers import BaseConv, Based, Bidirectional, DeltaNet, GatedDeltaNet, RetNet


@dataclasses.dataclass(frozen=True)
class MixerSpec:
  """A registered mixer: its module class and its defaults as a function of d_model."""
  cls: type[nn.Module]
  defaults: Callable[[int], dict] = lambda d_model: {}


def _heads(max_head_dim=64, **options):
  """Defaults head_dim = min(d_model, max_head_dim), num_heads = d_model // head_dim, plus
  `options`."""
  def defaults(d_model):
    head_dim = min(d_model, max_head_dim)
    return {"num_heads": max(1, d_model // head_dim), "head_dim": head_dim, **options}
  return defaults


MIXERS: dict[str, MixerSpec] = {
    "attention": MixerSpec(Attention, _heads()),
    "swa": MixerSpec(Attention, _heads(window=64)),
    "s4d": MixerSpec(S4D),
    "mingru": MixerSpec(MinGRU),
    "minlstm": MixerSpec(MinLSTM),
    "mamba": MixerSpec(Mamba),  # d_state 16, expand 2, dt_rank ceil(d_model / 16)
    "mamba2": MixerSpec(Mamba2, lambda d_model: {"value_dim": min(64, d_model)}),
    # key head dim 256 (the paper's), value head dim 2x
    "retnet": MixerSpec(RetNet, lambda d_model: {"num_heads": max(1, d_model // 256)}),
    # Taylor linear attention, feature dim (head_dim) 16, value_dim = d_model / num_heads
    "based": MixerSpec(Based, lambda d_model: {"num_heads": max(1, d_model // 64)}),
    "baseconv": MixerSpec(BaseConv),  # expand 2, width 3
    "gated_deltanet": MixerSpec(GatedDeltaNet, _heads(256)),  # value head dim 2x
    "deltanet": MixerSpec(DeltaNet, _heads(256)),
    "none": MixerSpec(NoMixer),  # ablation: blocks reduce to their MLPs
}

# Block patterns: layer i of a backbone uses pattern[i % len(pattern)]. Every mixer name is
# also the pattern of that mixer alone, except "based": as a model it is the paper's mix.
PATTERNS: dict[str, tuple[str, ...]] = {
    # BASED: Taylor linear attention at layers 1, 6, 11, .., sliding window at 2, 7, 12, ..,
    # BaseConv elsewhere
    "based": ("baseconv", "based", "swa", "baseconv", "baseconv"),
    # Gated DeltaNet-H1: GDN and sliding-window attention alternate
    "gated_deltanet_h1": ("gated_deltanet", "swa"),
    # Gated DeltaNet-H2: Mamba2, then GDN, then sliding-window attention
    "gated_deltanet_h2": ("mamba2", "gated_deltanet", "swa"),
    "mingru_attention": ("mingru", "mingru", "attention"),
    "s4d_attention": ("s4d", "s4d", "attention"),
}


_BACKBONE_SETS = ("d_model", "causal", "dtype", "param_dtype")
# the type of an option's default -> the types its values may have
_KINDS = {bool: bool, int: int, float: (int, float), str: str, tuple: (tuple, list)}


def _unknown(kind: str, name, known) -> ValueError:
  return ValueError(f"unknown {kind} {name!r}; known: {', '.join(sorted(set(known)))}")


def register_mixer(name: str, cls: type[nn.Module],
                   defaults: Callable[[int], dict] = lambda d_model: {}) -> None:
  """Adds a mixer under `name` (its class must take `d_model` and follow the mixer calling
  convention of DESIGN.md)."""
  MIXERS[name] = MixerSpec(cls, defaults)


def mixer_options(name: str) -> tuple[str, ...]:
  """The options a config may set for the mixer `name` (`model.mixer_kwargs.<name>`): the
  fields of its class but those the backbone sets (d_model, causal, dtypes)."""
  if name not in MIXERS:
    raise _unknown("mixer", name, MIXERS)
  fields = {f.name for f in dataclasses.fields(MIXERS[name].cls)}
  return tuple(sorted(fields - {"parent", "name", *_BACKBONE_SETS}))


def check_mixer_options(name: str, options: Mapping) -> None:
  """Raises a one-line ValueError for the first option of `options` ({option: value}) that
  the mixer `name` lacks, or whose value is not of its default's kind (bool, int, float: an
  int too, str, tuple: a list too)."""
  known = mixer_options(name)
  bad = sorted(set(options) - set(known))
  if bad:
    raise ValueError(f"mixer {name!r}: unknown option(s) {', '.join(bad)}; "
                     f"known: {', '.join(known)}")
  defaults = {f.name: f.default for f in dataclasses.fields(MIXERS[name].cls)}
  for option, value in options.items():
    kinds = _KINDS.get(type(defaults[option]))
    if kinds and value is not None and not (isinstance(value, kinds) and (
        isinstance(value, bool) == isinstance(defaults[option], bool))):
      raise ValueError(f"mixer {name!r}: option {option}={value!r} must be like its default "
                       f"{defaults[option]!r}")


def build_mixer(name: str, d_model: int, *, causal: bool = True,
                overrides: Mapping | None = None, **module_kwargs) -> nn.Module:
  """The mixer `name` at width `d_model`: registered defaults, then `overrides` (config
  keys, checked against `mixer_options`), then `module_kwargs` (dtype, ...).

  causal=False: the mixer's native bidirectional form where it has one (a `causal` field:
  S4D, Attention), else `Bidirectional` over two instances of it (forward and reversed)."""
  overrides = dict(overrides or {})
  check_mixer_options(name, overrides)
  spec = MIXERS[name]
  kwargs = {**spec.defaults(d_model), **overrides, **module_kwargs}
  if "causal" in {f.name for f in dataclasses.fields(spec.cls)}:
    kwargs["causal"] = causal
  elif not causal:
    return Bidirectional(spec.cls(d_model=d_model, **kwargs),
                         spec.cls(d_model=d_model, **kwargs))
  return spec.cls(d_model=d_model, **kwargs)


def get_pattern(pattern: str | Sequence[str]) -> tuple[str, ...]:
  """A block pattern by name (or a mixer name, or a sequence of mixer names), checked."""
  if isinstance(pattern, str):
    if pattern in PATTERNS:
      names = PATTERNS[pattern]
    elif pattern in MIXERS:
      names = (pattern,)
    else:
      raise _unknown("mixer or block pattern", pattern, known_models())
  else:
    names = tuple(pattern)
  for name in names:
    if name not in MIXERS:
      raise _unknown("mixer", name, MIXERS)
  if not names:
    raise ValueError("a block pattern needs at least one mixer name")
  return names


def known_models() -> tuple[str, ...]:
  """Every name a config's `model` may take: mixers and block patterns, each once ("based"
  is both)."""
  return tuple(sorted({*MIXERS, *PATTERNS}))
