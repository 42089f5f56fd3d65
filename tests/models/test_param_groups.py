"""Optimizer groups are declared by the parameters (layers/axes.py): every parameter of every
registered model is boxed with its group, every dynamics parameter is in "ssm", and nothing
that should escape weight decay is left in "default"."""
import jax
import jax.numpy as jnp
import pytest
from flax import traverse_util

from layers import axes
from seqmodels import Backbone, LanguageModel, registry

# The dynamics parameters of each registered mixer: their own lr, no weight decay (the
# papers' code: S4D's A and dt; Mamba's, Mamba2's and Gated DeltaNet's A_log and dt_bias,
# `_no_weight_decay` there). RetNet's decays are fixed; the others have no dynamics.
# A new mixer must be added here, or this table's test fails.
SSM_PARAMS = {
    "s4d": {"log_dt", "log_A_real", "A_imag"},
    "mamba": {"A_log", "dt_bias"},
    "mamba2": {"A_log", "dt_bias"},
    "gated_deltanet": {"A_log", "dt_bias"},
    **dict.fromkeys(["attention", "swa", "mingru", "minlstm", "retnet", "based", "baseconv",
                     "deltanet", "none"], set()),
}
TOKENS = jnp.zeros((2, 8), jnp.int32)


def test_every_registered_mixer_has_its_dynamics_listed():
  assert set(SSM_PARAMS) == set(registry.MIXERS)


def _boxed_params(model: str):
  lm = LanguageModel(Backbone(d_model=32, n_layers=len(registry.get_pattern(model)),
                              pattern=model, vocab_size=16), tie_embeddings=False)
  boxed = jax.eval_shape(lm.init, jax.random.key(0), TOKENS)["params"]
  return traverse_util.flatten_dict(boxed)


@pytest.mark.parametrize("model", registry.known_models())
def test_every_parameter_declares_its_group(model):
  names = registry.get_pattern(model)
  flat = _boxed_params(model)
  ssm = {}
  for path, leaf in flat.items():
    where = "/".join(path)
    assert isinstance(leaf, axes.Param), f"{where}: not declared through layers/axes.py"
    if leaf.value.ndim <= 1:  # norm scales, biases, skips D, per-channel / per-head dynamics
      assert leaf.group != axes.DEFAULT, f"{where}: a vector left in the weight-decay group"
    if leaf.group == axes.SSM:
      block, part, *rest = path[1:]
      assert path[0] == "backbone" and part == "mixer", f"{where}: ssm outside a mixer"
      mixer = names[int(block.removeprefix("blocks_")) % len(names)]
      ssm.setdefault(block, (mixer, set()))[1].add("/".join(rest))
  for block in {path[1] for path in flat if path[1].startswith("blocks_")}:
    mixer = names[int(block.removeprefix("blocks_")) % len(names)]
    assert ssm.get(block, (mixer, set())) == (mixer, SSM_PARAMS[mixer]), block
  assert flat["backbone", "embed", "embedding"].group == axes.NO_DECAY
  assert flat["head", "kernel"].group == axes.DEFAULT


def test_bidirectional_s4d_declares_the_same_groups():
  backbone = Backbone(d_model=8, n_layers=1, pattern="s4d", input_dim=3, causal=False)
  boxed = jax.eval_shape(backbone.init, jax.random.key(0), jnp.zeros((1, 4, 3)))["params"]
  groups = axes.groups(boxed)
  mixer = groups["blocks_0"]["mixer"]
  assert {k for k, g in mixer.items() if g == axes.SSM} == SSM_PARAMS["s4d"]
  assert mixer["C_bwd_re"] == axes.DEFAULT
  assert groups["embed"] == {"kernel": axes.NO_DECAY, "bias": axes.NO_DECAY}


def test_an_unknown_group_is_refused():
  with pytest.raises(ValueError, match=r"unknown optimizer group 'dynamics'; known: default"):
    axes.param(jax.nn.initializers.zeros, axes.EMBED, group="dynamics")
