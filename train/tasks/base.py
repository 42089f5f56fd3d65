"""What the loop needs from a task: examples by index, the facts the architecture is built
from, a loss and metrics. The loop calls the model (`model(inputs, segment_ids) -> logits`)."""
from __future__ import annotations

import abc
import dataclasses

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

from seqmodels import TaskFacts
from seqmodels.generate import check_token_ids


ENDLESS = 2**62  # the length of a split of generated examples


def generated_examples(make, seed: int, stream: int) -> grain.MapDataset:
  """Endless examples drawn from their index: example i is make(rng) with rng seeded by
  (seed, stream, i)."""
  return grain.MapDataset.range(ENDLESS).map(
      lambda i: make(np.random.default_rng([seed, stream, int(i)])))


@dataclasses.dataclass(frozen=True)
class Task(abc.ABC):
  """A task whose example i of a split is a pure function of (seed, split, i).

  Examples are dicts of numpy arrays. Language-model tasks: `inputs` [T] int tokens,
  `targets` [T] int and `weights` [T] float (1 where the loss counts); classification tasks
  (train/tasks/lra.py) have their own layout. Subclasses add a `vocab_size` field and
  implement `examples`.
  """
  seed: int = 0

  SPLITS = {"train": 0, "eval": 1}

  @abc.abstractmethod
  def examples(self, split: str) -> grain.MapDataset:
    """The examples of `split` in order (the train split endless)."""

  def dataset(self, split: str, batch_size: int, num_examples: int | None = None):
    """A grain MapDataset of batches; batch j holds examples j*B .. (j+1)*B - 1 of `split`
    (all of them when `num_examples` is None: an endless stream for training)."""
    if split not in self.SPLITS:
      raise ValueError(f"{type(self).__name__}: unknown split {split!r}; known: "
                       f"{', '.join(self.SPLITS)}")
    ds = self.examples(split)
    if num_examples is not None:
      if len(ds) < num_examples:
        raise ValueError(f"{type(self).__name__}: the {split} split has {len(ds)} examples, "
                         f"fewer than the {num_examples} asked for (run.eval_batches * "
                         "run.batch_size)")
      ds = ds[:num_examples]
    return ds.batch(batch_size, drop_remainder=True).map(self.check_batch)

  def check_batch(self, batch: dict) -> dict:
    """`batch` unchanged once its token inputs are checked against the vocabulary (a
    ValueError naming the bad id; min/max of a batch, cheap beside a step)."""
    if np.issubdtype(batch["inputs"].dtype, np.integer):
      check_token_ids(batch["inputs"], getattr(self, "vocab_size", None),
                      f"{type(self).__name__} data")
    return batch

  def model_facts(self) -> TaskFacts:
    """What the architecture (`seqmodels.build_model`) needs to know of this task: causal
    next-token prediction over `vocab_size` tokens."""
    return TaskFacts(vocab_size=self.vocab_size)

  def loss_and_metrics(self, logits: jax.Array, batch: dict) -> tuple[jax.Array, dict]:
    """Weighted next-token cross-entropy and accuracy over the positions with weight 1.

    logits: [B, T, V]; batch targets, weights: [B, T]. Returns (loss, {loss, accuracy}).
    """
    weights = batch["weights"].astype(jnp.float32)
    total = jnp.maximum(weights.sum(), 1.0)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                         batch["targets"])
    loss = (ce * weights).sum() / total
    correct = (jnp.argmax(logits, -1) == batch["targets"]).astype(jnp.float32)
    return loss, {"loss": loss, "accuracy": (correct * weights).sum() / total}


@dataclasses.dataclass(frozen=True)
class GeneratedTask(Task):
  """A task whose examples are generated from their index: every split is endless."""

  @abc.abstractmethod
  def example(self, rng: np.random.Generator) -> dict:
    """One example drawn from `rng`."""

  def examples(self, split):
    return generated_examples(self.example, self.seed, self.SPLITS[split])
