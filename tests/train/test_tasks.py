"""The synthetic tasks: examples are what the papers define, and a pure function of
(seed, split, index)."""
import numpy as np
import pytest

import dataclasses

from train.tasks import MQAR, InductionHeads, SelectiveCopying


def test_mqar_queries_ask_for_the_paired_values():
  task = MQAR(vocab_size=32, num_pairs=6, seq_len=64)
  batch = task.dataset("train", 16)[3]
  half = 16
  for x, y, w in zip(batch["inputs"], batch["targets"], batch["weights"]):
    keys, values = x[0:12:2], x[1:12:2]
    assert len(set(keys)) == 6 and (keys >= 1).all() and (keys < half).all()
    assert (values >= half).all() and (values < 32).all()
    pairs = dict(zip(keys, values))
    queries = np.flatnonzero(w)
    assert len(queries) == 6 and (queries >= 12).all()
    assert sorted(x[queries]) == sorted(keys)  # every key is asked once
    for t in queries:
      assert y[t] == pairs[x[t]] and x[t + 1] == y[t]
    filler = np.setdiff1d(np.arange(12, 64), np.concatenate([queries, queries + 1]))
    assert (x[filler] == 0).all()


def test_mqar_gaps_follow_the_power_law():
  task = MQAR(vocab_size=32, num_pairs=4, seq_len=256, power_alpha=0.01)
  batch = task.dataset("train", 256)[0]
  slots = (np.flatnonzero(batch["weights"].ravel() > 0) % 256 - 8) // 2
  # p(g) ~ 1/g: a quarter of the 124 slots should hold far more than a quarter of the queries.
  assert np.mean(slots < 31) > 0.5


def test_examples_are_a_function_of_seed_split_and_index():
  task = MQAR(seed=1)
  a, b = task.dataset("train", 4)[5], task.dataset("train", 4)[5]
  np.testing.assert_array_equal(a["inputs"], b["inputs"])
  other_split = task.dataset("eval", 4)[5]
  other_seed = MQAR(seed=2).dataset("train", 4)[5]
  assert not np.array_equal(a["inputs"], other_split["inputs"])
  assert not np.array_equal(a["inputs"], other_seed["inputs"])


def test_selective_copying_targets_are_the_data_in_order():
  task = SelectiveCopying(vocab_size=10, num_tokens=5, seq_len=20)
  batch = task.dataset("train", 8)[0]
  for x, y, w in zip(batch["inputs"], batch["targets"], batch["weights"]):
    region = x[:20]
    data = region[region != 0]
    assert len(data) == 5 and (x[20:] == 9).all()
    np.testing.assert_array_equal(y[20:], data)
    np.testing.assert_array_equal(w, np.r_[np.zeros(20), np.ones(5)])


def test_induction_heads_target_follows_the_first_trigger():
  task = InductionHeads(vocab_size=16, seq_len=32)
  batch = task.dataset("train", 16)[0]
  for x, y, w in zip(batch["inputs"], batch["targets"], batch["weights"]):
    first = np.flatnonzero(x == 15)[0]
    assert x[-1] == 15 and (x == 15).sum() == 2
    assert y[-1] == x[first + 1] and w.sum() == 1 and w[-1] == 1


@pytest.mark.parametrize("make, message", [
    (lambda: MQAR(vocab_size=8, num_pairs=4), r"num_pairs=4 needs"),
    (lambda: MQAR(num_pairs=4, seq_len=10), r"seq_len=10 must be >= 4 \* num_pairs"),
    (lambda: MQAR().dataset("test", 4), r"unknown split 'test'; known: train, eval"),
    (lambda: SelectiveCopying(num_tokens=30, seq_len=20), r"num_tokens=30 must be in"),
])
def test_bad_task_options_raise(make, message):
  with pytest.raises(ValueError, match=message):
    make()


@dataclasses.dataclass(frozen=True)
class _OffByOne(MQAR):
  """MQAR whose data holds the id vocab_size (one past the vocabulary)."""

  def example(self, rng):
    example = super().example(rng)
    example["inputs"][-1] = self.vocab_size
    return example


def test_batches_with_ids_outside_the_vocabulary_raise():
  with pytest.raises(ValueError, match=r"_OffByOne data: token id 32 at index \(0, 63\) is "
                                       r"outside the vocabulary \[0, 32\)"):
    _OffByOne(vocab_size=32, num_pairs=4, seq_len=64).dataset("train", 4)[0]
