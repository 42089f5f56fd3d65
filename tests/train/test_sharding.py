"""Logical axis names + config rules -> shardings of the train state (on an abstract 2x2x2
mesh: no devices needed; tests/train/test_multidevice.py runs them on 8 devices)."""
import jax
import jax.numpy as jnp
import pytest
from flax import linen as nn
from jax.sharding import AbstractMesh, PartitionSpec as P

from layers import axes
from seqmodels import Backbone, LanguageModel, registry
from train import config_lib, sharding
from train.loop import build
from train.tasks import build_task

MESH = AbstractMesh((2, 2, 2), sharding.AXES)
TOKENS = jnp.zeros((2, 8), jnp.int32)


def _shardings(mixer, rules=sharding.DEFAULT_RULES, opt=None):
  config = config_lib.base_config(mixer, "s", {"s": (32, 1)})
  config.model.update(mlp_expand=2, tie_embeddings=False)
  if mixer == "attention":
    config.model.mixer_kwargs = {"attention": {"num_heads": 2, "head_dim": 16}}
  config.task = {"name": "mqar", "vocab_size": 16}
  config.opt.update(**(opt or {}))
  setup = build(config, build_task(config.task), TOKENS)
  names = nn.get_partition_spec(setup.boxed)
  return setup.abstract_state, sharding.state_shardings(setup.abstract_state, names, MESH,
                                                        rules)


@pytest.mark.parametrize("mixer", registry.known_models())
def test_every_parameter_has_logical_names_for_each_axis(mixer):
  model = LanguageModel(Backbone(d_model=32, n_layers=len(registry.get_pattern(mixer)),
                                 pattern=mixer, vocab_size=16))
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), TOKENS))["params"]
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  for leaf in leaves:
    assert isinstance(leaf, axes.Param), leaf
    assert len(leaf.names) == leaf.value.ndim
    assert set(leaf.names) <= set(axes.NAMES) | {None}


def test_default_rules_shard_width_over_fsdp_and_heads_mlp_vocab_over_model():
  _, s = _shardings("attention")
  block = s.params["backbone"]["blocks_0"]
  assert s.params["backbone"]["embed"]["embedding"].spec == P("model", "fsdp")  # [vocab, D]
  assert s.params["head"]["kernel"].spec == P("fsdp", "model")                # [D, vocab]
  assert block["mixer"]["qkv_proj"]["kernel"].spec == P("fsdp", None, "model", None)
  assert block["mlp"]["in_proj"]["kernel"].spec == P("fsdp", "model")         # [D, 2 * 64]
  assert block["mixer_norm"]["scale"].spec == P("fsdp")
  assert sharding.batch_sharding(MESH, sharding.DEFAULT_RULES).spec == P(("data", "fsdp"))


def test_optimizer_moments_follow_their_parameter_and_the_rest_is_replicated():
  abstract, s = _shardings("attention", opt={"grad_accum_steps": 2})
  kernel = s.params["backbone"]["blocks_0"]["mixer"]["qkv_proj"]["kernel"]
  specs = [leaf.spec for leaf, x in zip(jax.tree.leaves(s.opt_state),
                                        jax.tree.leaves(abstract.opt_state))
           if x.shape == abstract.params["backbone"]["blocks_0"]["mixer"]["qkv_proj"][
               "kernel"].shape]
  # adam mu, nu and the MultiSteps gradient accumulator
  assert specs == [kernel.spec] * 3
  scalars = [leaf.spec for leaf, x in zip(jax.tree.leaves(s.opt_state),
                                          jax.tree.leaves(abstract.opt_state)) if x.ndim == 0]
  assert scalars and all(spec == P() for spec in scalars)
  assert s.step.spec == P() and s.rng.spec == P()


def test_axes_the_mesh_does_not_divide_stay_replicated():
  rules = ((axes.STATE, "model"), (axes.EMBED, "fsdp"))
  _, s = _shardings("mamba", rules=rules)
  assert s.params["backbone"]["blocks_0"]["mixer"]["A_log"].spec == P("fsdp", "model")  # [64, 16]
  assert sharding.mesh_spec(P(axes.EMBED, axes.STATE), (3, 16), MESH, rules) == P(None, "model")
  assert sharding.mesh_spec(P(axes.EMBED, axes.STATE), (3, 5), MESH, rules) == P(None, None)


def test_fsdp_takes_the_largest_free_axis_of_parameters_the_rules_keep_off_it():
  _, s = _shardings("mamba")  # A_log [E, N] = [mlp -> model, state: no rule]
  assert s.params["backbone"]["blocks_0"]["mixer"]["A_log"].spec == P("model", "fsdp")
  spec = sharding.mesh_spec(P(axes.STATE, axes.CONV), (8, 12), MESH, sharding.DEFAULT_RULES)
  assert spec == P(None, "fsdp")
  no_fsdp = AbstractMesh((4, 1, 2), sharding.AXES)
  assert sharding.mesh_spec(P(axes.STATE, axes.CONV), (8, 12), no_fsdp, ()) == P(None, None)


def test_rules_choose_the_layout():
  """No rule for a name: replicated (without fsdp); a mesh axis serves one array axis only."""
  mesh = AbstractMesh((2, 1, 4), sharding.AXES)
  rules = ((axes.HEADS, "model"),)
  assert sharding.mesh_spec(P(axes.EMBED, None, axes.HEADS, axes.HEAD_DIM), (32, 3, 2, 16),
                            mesh, rules) == P(None, None, None, None)  # 2 heads, 4 devices
  assert sharding.mesh_spec(P(axes.EMBED, None, axes.HEADS, axes.HEAD_DIM), (32, 3, 8, 16),
                            mesh, rules) == P(None, None, "model", None)
  spec = sharding.mesh_spec(P(axes.EMBED, axes.MLP), (32, 64), MESH,
                            ((axes.EMBED, "model"), (axes.MLP, "model")))
  assert spec == P("model", "fsdp")


@pytest.mark.parametrize("rules, message", [
    (((axes.EMBED, "tensor"),), "names a mesh axis not in"),
    ((("width", "fsdp"),), "must be (logical axis, mesh axes) with a logical axis among batch"),
])
def test_bad_rules_are_named(rules, message):
  config = config_lib.base_config("attention", "s", {"s": (32, 1)})
  config.mesh.rules = rules
  with pytest.raises(ValueError, match=r"^mesh\.rules: .*" + message.replace("(", r"\(")
                     .replace(")", r"\)")):
    sharding.check_rules(config.mesh.rules)


def test_value_tables_are_split_by_columns_and_never_by_rows():
  """A memory table [N, V] takes its columns over fsdp x model; where the mesh does not divide
  V it stays whole rather than taking FSDP along its rows, as another parameter would."""
  table, rules = P(None, axes.MEMORY_VALUES), sharding.DEFAULT_RULES
  assert sharding.mesh_spec(table, (1024, 32), MESH, rules) == P(None, ("fsdp", "model"))
  assert sharding.mesh_spec(table, (1024, 6), MESH, rules) == P(None, None)
  assert sharding.mesh_spec(P(None, None), (1024, 6), MESH, rules) == P("fsdp", None)
