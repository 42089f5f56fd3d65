"""The optimizer: each declared group gets its config's lr and weight decay; the schedule
and gradient accumulation."""
import jax.numpy as jnp
import numpy as np
import pytest

from layers import axes
from train import config_lib, optim

PARAMS = {"w": jnp.ones(2), "norm": jnp.ones(2), "A_log": jnp.ones(2)}
LABELS = {"w": axes.DEFAULT, "norm": axes.NO_DECAY, "A_log": axes.SSM}


def _first_updates(opt, grad):
  """[default, no_decay, ssm] updates of a parameter p = 1 with gradient `grad`."""
  tx, _ = optim.make_optimizer(opt, 100, LABELS)
  updates, _ = tx.update({k: jnp.full(2, grad) for k in PARAMS}, tx.init(PARAMS), PARAMS)
  return [float(updates[k][0]) for k in ("w", "norm", "A_log")]


def _opt(**overrides):
  opt = config_lib.base_config("s4d", "tiny").opt
  opt.update(lr=0.1, ssm_lr=0.01, weight_decay=0.5, warmup_steps=0, **overrides)
  return opt


def test_each_group_has_its_lr_and_weight_decay():
  # AdamW's first step: -lr (g / |g| + weight_decay * p), p = 1
  np.testing.assert_allclose(_first_updates(_opt(), 1.0),
                             [-0.1 * 1.5, -0.1, -0.01], rtol=1e-5)
  np.testing.assert_allclose(_first_updates(_opt(), 0.0), [-0.05, 0, 0],
                             atol=1e-7)


def test_groups_are_overridden_from_the_config():
  opt = _opt()
  opt.groups.no_decay.lr = 0.2
  opt.groups.ssm.weight_decay = 0.5
  assert opt.ssm_lr == opt.groups.ssm.lr == 0.01  # one value, two names
  np.testing.assert_allclose(_first_updates(opt, 1.0),
                             [-0.1 * 1.5, -0.2, -0.01 * 1.5], rtol=1e-5)
  opt.ssm_lr = 0.03
  np.testing.assert_allclose(_first_updates(opt, 1.0)[2], -0.03 * 1.5, rtol=1e-5)


def test_every_declared_group_needs_its_settings():
  config = config_lib.base_config("s4d", "tiny")
  config.task = {"name": "mqar"}
  assert set(config.opt.groups) == set(axes.GROUPS) - {axes.DEFAULT}
  del config.opt.groups["ssm"]
  with pytest.raises(ValueError, match=r"opt.groups has memory, no_decay; expected .*: memory, no_decay, ssm"):
    config_lib.validate(config)


def test_memory_group_has_its_own_lr_and_clipping():
  # eps >> |g|: AdamW's first step is -lr g / (|g| + eps) ~ -lr g / eps, so clipping shows
  opt = _opt(eps=1e4, clip_norm=1.0)
  opt.weight_decay = 0.0
  opt.groups.memory.update(lr=0.3, clip_norm=0.5)
  tx, _ = optim.make_optimizer(opt, 100, {"w": axes.DEFAULT, "table": axes.MEMORY})
  params = {"w": jnp.ones(4), "table": jnp.ones(4)}
  grads = {"w": jnp.full(4, 100.0), "table": jnp.full(4, 0.1)}  # norms 200 and 0.2
  updates, _ = tx.update(grads, tx.init(params), params)
  # w alone is clipped to norm 1 (0.5 each); the table keeps its 0.1 (norm 0.2 < 0.5)
  np.testing.assert_allclose(updates["w"], -0.1 * 0.5 / 1e4, rtol=1e-3)
  np.testing.assert_allclose(updates["table"], -0.3 * 0.1 / 1e4, rtol=1e-3)
  grads["table"] = jnp.full(4, 10.0)  # norm 20: clipped to 0.5 by its own clip_norm
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["table"], -0.3 * 0.25 / 1e4, rtol=1e-3)
  np.testing.assert_allclose(updates["w"], -0.1 * 0.5 / 1e4, rtol=1e-3)


def test_memory_lr_follows_the_main_lr():
  opt = config_lib.base_config("s4d", "tiny").opt
  opt.lr = 3e-4
  np.testing.assert_allclose(optim.group_settings(opt)[axes.MEMORY], (3e-3, 0.0))


def test_group_sizes_count_the_declared_groups():
  boxed = {"w": axes.Param(jnp.ones((3, 4)), (None, None)),
           "scale": axes.Param(jnp.ones(4), (None,), group=axes.NO_DECAY),
           "dt": axes.Param(jnp.ones(5), (None,), group=axes.SSM)}
  assert optim.group_sizes(boxed) == {axes.DEFAULT: 12, axes.NO_DECAY: 4, axes.SSM: 5,
                                      axes.MEMORY: 0}


def test_schedule_warms_up_then_decays():
  opt = config_lib.base_config("s4d", "tiny").opt
  _, lr = optim.make_optimizer(opt, 1000, LABELS)
  assert float(lr(0)) == 0.0
  np.testing.assert_allclose(float(lr(opt.warmup_steps)), opt.lr, rtol=1e-6)
  np.testing.assert_allclose(float(lr(1000)), opt.lr * opt.final_lr_ratio, rtol=1e-5)


def _constant_gradient_updates(opt, total_steps, n, width):
  """(the lr schedule, the updates of a one-parameter group "w" [width] under n steps of a
  constant gradient of ones)."""
  tx, lr = optim.make_optimizer(opt, total_steps, {"w": axes.DEFAULT})
  params = {"w": jnp.ones(width)}
  state = tx.init(params)
  updates = []
  for _ in range(n):
    update, state = tx.update({"w": jnp.ones(width)}, state, params)
    updates.append(update["w"])
  return lr, updates


def test_gradient_accumulation_applies_every_k_steps():
  opt = config_lib.base_config("attention", "tiny").opt
  opt.update(grad_accum_steps=3, warmup_steps=0)
  _, updates = _constant_gradient_updates(opt, 100, 6, 4)
  changed = [bool(jnp.any(u != 0)) for u in updates]
  assert changed == [False, False, True, False, False, True]


def test_accumulation_schedules_updates_and_logs_the_applied_lr():
  """steps=50, k=2: 25 updates; the cosine ends at the last one, and the lr logged at each
  step is the one its update applies (Adam's step on a constant gradient is -lr)."""
  opt = config_lib.base_config("attention", "tiny").opt
  opt.update(grad_accum_steps=2, warmup_steps=10, weight_decay=0.0, eps=1e-12)
  lr, updates = _constant_gradient_updates(opt, 50, 50, 1)
  applied = [(step, -float(u[0])) for step, u in enumerate(updates) if step % 2]
  assert len(applied) == 25
  for step, value in applied:
    np.testing.assert_allclose(float(lr(step)), value, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(float(lr(step - 1)), value, rtol=1e-5, atol=1e-9)
  np.testing.assert_allclose(float(lr(49)), opt.lr * opt.final_lr_ratio, rtol=1e-5)
  np.testing.assert_allclose(float(lr(10)), opt.lr, rtol=1e-5)  # warmup: 5 updates


def test_the_cosine_ends_at_the_last_step():
  opt = config_lib.base_config("attention", "tiny").opt
  opt.warmup_steps = 10
  _, lr = optim.make_optimizer(opt, 50, {"w": axes.DEFAULT})
  np.testing.assert_allclose(float(lr(49)), opt.lr * opt.final_lr_ratio, rtol=1e-5)


def _mqar_config():
  config = config_lib.base_config("attention", "tiny")
  config.task = {"name": "mqar"}
  return config


@pytest.mark.parametrize("key, value, message", [
    ("opt.clip_norm", -1.0, "opt.clip_norm=-1.0: expected a positive number"),
    ("opt.clip_norm", 0.0, "opt.clip_norm=0.0: expected a positive number"),
    ("opt.b1", -1.0, r"opt.b1=-1.0: expected a number in \[0, 1\)"),
    ("opt.b1", 1.0, r"opt.b1=1.0: expected a number in \[0, 1\)"),
    ("opt.b2", 2.0, r"opt.b2=2.0: expected a number in \[0, 1\)"),
    ("opt.eps", 0.0, "opt.eps=0.0: expected a positive number"),
    ("opt.warmup_steps", -1, "opt.warmup_steps=-1: expected a number >= 0"),
    ("opt.weight_decay", -5.0, "opt.weight_decay=-5.0: expected a number >= 0"),
    ("opt.lr", 0.0, "opt.lr=0.0: expected a positive number"),
    ("opt.lr", float("nan"), "opt.lr=nan: expected a positive number"),
    ("opt.ssm_lr", -1.0, "opt.ssm_lr=-1.0: expected a positive number"),
    ("opt.groups.no_decay.lr", -1.0, "opt.groups.no_decay.lr=-1.0: expected a positive"),
    ("opt.groups.no_decay.weight_decay", -1.0,
     "opt.groups.no_decay.weight_decay=-1.0: expected a number >= 0"),
    ("opt.final_lr_ratio", 1.5, r"opt.final_lr_ratio=1.5: expected a number in \[0, 1\]"),
    ("opt.grad_accum_steps", 0, "opt.grad_accum_steps=0: expected a positive number"),
    ("opt.grad_accum_steps", 2000, "run.steps=1000: expected at least opt.grad_accum_steps"),
    ("model.mlp_expand", 0.0, "model.mlp_expand=0.0: expected a positive number"),
    ("run.keep_checkpoints", 0, "run.keep_checkpoints=0: expected a positive number"),
])
def test_out_of_range_values_fail_validation_in_one_line(key, value, message):
  config = _mqar_config()
  section, _, name = key.rpartition(".")
  config_lib._lookup(config, section)[name] = value
  with pytest.raises(ValueError, match=f"^{message}") as error:
    config_lib.validate(config)
  assert "\n" not in str(error.value)
