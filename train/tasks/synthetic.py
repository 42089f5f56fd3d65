"""Synthetic recall tasks whose examples are generated from their index (the benchmarks
themselves are generated, so these are the real thing).

Token 0 is the filler/noise token in every task.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np

from train.tasks.base import GeneratedTask


def _fields_check(name: str, condition: bool, message: str) -> None:
  if not condition:
    raise ValueError(f"{name}: {message}")


@dataclasses.dataclass(frozen=True)
class MQAR(GeneratedTask):
  """Multi-query associative recall (Arora et al. 2023, Zoology; BASED).

  The sequence starts with `num_pairs` key-value pairs (keys drawn without replacement from
  the first half of the vocabulary, values from the second half); the rest is filler, where
  each key appears once more as a query at a gap drawn from a power law p(g) ~ g^(alpha - 1),
  followed by its value. The target at a query is its value; only those positions count.
  """
  vocab_size: int = 16
  num_pairs: int = 4
  seq_len: int = 64
  power_alpha: float = 0.01

  def __post_init__(self):
    _fields_check("MQAR", 2 <= self.num_pairs <= (self.vocab_size - 2) // 2,
                  f"num_pairs={self.num_pairs} needs 2 <= num_pairs <= (vocab_size - 2) / 2")
    _fields_check("MQAR", self.seq_len >= 4 * self.num_pairs,
                  f"seq_len={self.seq_len} must be >= 4 * num_pairs = {4 * self.num_pairs}")

  def example(self, rng):
    P, T, half = self.num_pairs, self.seq_len, self.vocab_size // 2
    keys = rng.choice(np.arange(1, half), P, replace=False)
    values = rng.choice(np.arange(half, self.vocab_size), P, replace=True)
    inputs = np.zeros(T, np.int32)
    inputs[0:2 * P:2], inputs[1:2 * P:2] = keys, values
    slots = (T - 2 * P) // 2  # query slot j: key at 2P + 2j, its value right after
    gaps = np.arange(1, slots + 1, dtype=np.float64)
    prob = gaps ** (self.power_alpha - 1)
    chosen = rng.choice(slots, P, replace=False, p=prob / prob.sum())
    order = rng.permutation(P)
    query_pos = 2 * P + 2 * chosen
    inputs[query_pos], inputs[query_pos + 1] = keys[order], values[order]
    targets = np.zeros(T, np.int32)
    weights = np.zeros(T, np.float32)
    targets[query_pos], weights[query_pos] = values[order], 1.0
    return {"inputs": inputs, "targets": targets, "weights": weights}


@dataclasses.dataclass(frozen=True)
class SelectiveCopying(GeneratedTask):
  """Selective copying (Gu & Dao 2023, Mamba, section 4.1.1).

  `num_tokens` data tokens (from 1 .. vocab_size - 2) sit at random positions of a region of
  `seq_len` filler tokens; then `num_tokens` marker tokens (vocab_size - 1) follow, and at the
  i-th marker the target is the i-th data token in order of appearance.
  """
  vocab_size: int = 10
  num_tokens: int = 8
  seq_len: int = 64

  def __post_init__(self):
    _fields_check("SelectiveCopying", self.vocab_size >= 3, "vocab_size must be >= 3")
    _fields_check("SelectiveCopying", 1 <= self.num_tokens <= self.seq_len,
                  f"num_tokens={self.num_tokens} must be in [1, seq_len={self.seq_len}]")

  def example(self, rng):
    n, L = self.num_tokens, self.seq_len
    data = rng.integers(1, self.vocab_size - 1, n)
    region = np.zeros(L, np.int32)
    region[np.sort(rng.choice(L, n, replace=False))] = data
    inputs = np.concatenate([region, np.full(n, self.vocab_size - 1, np.int32)])
    targets = np.concatenate([np.zeros(L, np.int32), data.astype(np.int32)])
    weights = np.concatenate([np.zeros(L, np.float32), np.ones(n, np.float32)])
    return {"inputs": inputs, "targets": targets, "weights": weights}


@dataclasses.dataclass(frozen=True)
class InductionHeads(GeneratedTask):
  """Induction heads (Olsson et al. 2022; Mamba section 4.1.2).

  Random tokens from 1 .. vocab_size - 2; the trigger token (vocab_size - 1) appears once at
  a random position followed by the answer token, and again as the last token, where the
  target is the answer.
  """
  vocab_size: int = 16
  seq_len: int = 64

  def __post_init__(self):
    _fields_check("InductionHeads", self.vocab_size >= 3, "vocab_size must be >= 3")
    _fields_check("InductionHeads", self.seq_len >= 4, "seq_len must be >= 4")

  def example(self, rng):
    T, trigger = self.seq_len, self.vocab_size - 1
    inputs = rng.integers(1, trigger, T).astype(np.int32)
    position = rng.integers(0, T - 2)
    answer = inputs[position + 1]
    inputs[position], inputs[-1] = trigger, trigger
    targets = np.zeros(T, np.int32)
    weights = np.zeros(T, np.float32)
    targets[-1], weights[-1] = answer, 1.0
    return {"inputs": inputs, "targets": targets, "weights": weights}


@dataclasses.dataclass(frozen=True)
class Facts(GeneratedTask):
  """Facts stored in the parameters: a fixed random table of `num_facts` facts
  (subject, relation) -> object, drawn once from the seed and the same in every batch.

  n = ceil(sqrt(num_facts)) subjects and n relations (a square table, so neither embedding
  alone can hold a fact), `num_facts` of the n**2 pairs without replacement, objects uniform
  among `num_objects`. An example asks `facts_per_example` facts drawn uniformly as
  `subject relation object` triples, nothing stated in context; the target at each relation
  token is the object, and only those positions count. Tokens: 0 unused, subjects 1..n,
  relations n+1..2n, objects 2n+1..2n+num_objects.
  """
  num_facts: int = 1024
  num_objects: int = 64
  facts_per_example: int = 8

  def __post_init__(self):
    _fields_check("Facts", self.num_facts >= 1, f"num_facts={self.num_facts} must be >= 1")
    _fields_check("Facts", self.num_objects >= 2,
                  f"num_objects={self.num_objects} must be >= 2")
    _fields_check("Facts", self.facts_per_example >= 1,
                  f"facts_per_example={self.facts_per_example} must be >= 1")

  @property
  def num_subjects(self) -> int:
    """n, the number of subjects and of relations."""
    return int(np.ceil(np.sqrt(self.num_facts)))

  @property
  def vocab_size(self) -> int:
    return 1 + 2 * self.num_subjects + self.num_objects

  @functools.cached_property
  def table(self) -> np.ndarray:
    """[num_facts, 3] int32 rows (subject, relation, object) as tokens; a pure function of
    the seed (its own stream, apart from the splits')."""
    n = self.num_subjects
    rng = np.random.default_rng([self.seed, len(self.SPLITS)])
    pairs = rng.choice(n * n, self.num_facts, replace=False)
    objects = rng.integers(0, self.num_objects, self.num_facts)
    return np.stack([1 + pairs // n, 1 + n + pairs % n, 1 + 2 * n + objects],
                    axis=1).astype(np.int32)

  def example(self, rng):
    facts = self.table[rng.integers(0, self.num_facts, self.facts_per_example)]
    inputs = facts.ravel()
    targets = np.zeros_like(inputs)
    weights = np.zeros(inputs.shape, np.float32)
    targets[1::3], weights[1::3] = facts[:, 2], 1.0
    return {"inputs": inputs, "targets": targets, "weights": weights}
