"""The facts task (one fixed table, asked as triples, answered at the relation token) and its
config (dense and Memory+ models of equal channel-mixer FLOPs per token)."""
import numpy as np
import pytest

from configs.synthetic import facts as facts_config
from layers import memory
from train import config_lib
from train.loop import train_and_evaluate
from train.tasks import Facts


def test_every_example_asks_facts_of_one_fixed_table():
  task = Facts(num_facts=50, num_objects=7, facts_per_example=5, seed=3)
  n = 8  # ceil(sqrt(50)) subjects and relations
  assert task.vocab_size == 1 + 2 * n + 7
  table = task.table
  assert table.shape == (50, 3) and len({(s, r) for s, r, _ in table}) == 50
  assert (table[:, 0] >= 1).all() and (table[:, 0] <= n).all()
  assert (table[:, 1] > n).all() and (table[:, 1] <= 2 * n).all()
  assert (table[:, 2] > 2 * n).all() and (table[:, 2] < task.vocab_size).all()
  np.testing.assert_array_equal(Facts(num_facts=50, num_objects=7, seed=3).table, table)
  assert not np.array_equal(Facts(num_facts=50, num_objects=7, seed=4).table, table)
  known = {(s, r): o for s, r, o in table}
  for split in ("train", "eval"):
    batch = task.dataset(split, 4)[2]
    for x, y, w in zip(batch["inputs"], batch["targets"], batch["weights"]):
      triples = x.reshape(5, 3)
      assert all(known[(s, r)] == o for s, r, o in triples)
      np.testing.assert_array_equal(np.flatnonzero(w), np.arange(1, 15, 3))
      np.testing.assert_array_equal(y[1::3], triples[:, 2])


def test_bad_options_raise():
  with pytest.raises(ValueError, match="num_objects=1 must be >= 2"):
    Facts(num_objects=1)


@pytest.mark.parametrize("key, value, message", [
    ("layers", (0, 1), r"model.memory.layers=\(0, 1\) must be distinct block indices in "
     r"\[0, n_layers=1\)"),
    ("topk", 129, r"model.memory: ProductKeyMemory: topk=129 must be <= n_keys=128"),
    ("query_norm", "rms", r"model.memory: ProductKeyMemory: query_norm='rms'"),
])
def test_bad_memory_config_raises(key, value, message):
  config = facts_config.get_config("model=memory")
  config.model.memory[key] = value
  with pytest.raises(ValueError, match=message):
    config_lib.validate(config)


def test_config_models_have_equal_channel_mixer_flops():
  dense = facts_config.get_config("model=dense,facts=64")
  mem = facts_config.get_config("model=memory,facts=64")
  for config in (dense, mem):
    config_lib.validate(config)
  D = dense.model.d_model
  options = {k: v for k, v in mem.model.memory.items() if k not in ("layers", "shared_values")}
  np.testing.assert_allclose(3 * D * dense.model.mlp_expand * D,
                             memory.flops_per_token(D, options), rtol=1e-12)
  assert tuple(mem.model.memory.layers) == (0,) and tuple(dense.model.memory.layers) == ()
  # the analytic count: query, sub-key scores, candidates, bag, W_s and W_o
  H, n, k, Kh, V = 4, 128, 8, 16, 32
  assert memory.flops_per_token(D, options) == (
      D * H * 2 * Kh + 2 * H * n * Kh + H * k * k + H * k * V + 2 * D * V)


FACTS = 16384  # above the dense model's capacity (the curve is in the README); 2000 steps


@pytest.mark.slow
def test_memory_stores_facts_a_dense_model_of_equal_flops_cannot(tmp_path):
  accuracy = {}
  for model in ("dense", "memory"):
    config = facts_config.get_config(f"model={model},facts={FACTS}")
    config.run.progress = False
    accuracy[model] = train_and_evaluate(config, str(tmp_path / model))["eval_accuracy"]
  assert accuracy["memory"] >= 0.9 and accuracy["dense"] <= 0.5, accuracy
