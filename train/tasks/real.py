"""Classification on real corpora that run offline once fetched (`python -m train.data.fetch
NAME`; readers in train/data/real.py), as the LRA tasks do (train/tasks/lra.py: a Classifier
over a bidirectional backbone, cross-entropy, mean pooling):

- `fashion_mnist`: sequential Fashion-MNIST, 784 pixel tokens (0..255) in raster order or in a
  fixed seeded permutation (`permuted=True`), 10 classes. LRA Image's stand-in.
- `ucr`: a UCR archive problem (`problem=`), the real-valued series [T, F] z-normalised per
  series, on the archive's own train/test split.
- `spam_assassin`: ham (0) vs spam (1) from the raw email's first `max_length` bytes (headers
  included), 2 classes. LRA Text's stand-in.

Splits: train (shuffled, endless), eval and test. Fashion-MNIST and UCR have no validation
set: eval and test are both the release's test set (as LRA Text and Image). SpamAssassin has
no split of its own: a fixed permutation (seed SPLIT_SEED) of the corpus in reader order gives
test = its first 600 emails, eval = the next 600, train = the other 4,846.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np

from seqmodels import TaskFacts
from train.data import real
from train.tasks.lra import BYTE_VOCAB, Classification, _bytes

PERMUTATION_SEED = 0  # the permuted Fashion-MNIST pixel order: default_rng(0).permutation(784)
SPLIT_SEED = 0        # the SpamAssassin split


@functools.lru_cache(maxsize=4)
def _fashion_mnist(folder: str, split: str):
  images, labels = real.read_fashion_mnist(folder, split)
  return images.reshape(len(images), -1), labels


@functools.lru_cache(maxsize=8)
def _ucr(folder: str, dataset: str, split: str):
  return real.read_ucr(folder, dataset, split)


@functools.lru_cache(maxsize=2)
def _spam(folder: str):
  return real.read_spam(folder)


class _RealData:
  """data_dir defaults to the fetch command's folder (real.default_dir(DATA))."""
  DATA = ""

  @property
  def folder(self) -> str:
    return self.data_dir or real.default_dir(self.DATA)


@dataclasses.dataclass(frozen=True)
class FashionMNIST(_RealData, Classification):
  """Sequential Fashion-MNIST: inputs [784] pixel tokens, targets [] in 0..9. permuted: the
  pixels in the fixed order `permutation()` (the same for every seed) instead of raster order.
  eval and test are both the t10k set."""
  permuted: bool = False

  DATA = "fashion_mnist"
  SPLITS = {"train": 0, "eval": 1, "test": 2}
  FILES = {"train": "train", "eval": "test", "test": "test"}
  num_classes = 10
  vocab_size = 256

  @staticmethod
  def permutation() -> np.ndarray:
    """The permuted task's pixel order [784]: position t reads pixel permutation()[t]."""
    return np.random.default_rng(PERMUTATION_SEED).permutation(28 * 28)

  def records(self, split):
    images, labels = _fashion_mnist(self.folder, self.FILES[split])
    if self.permuted:
      images = images[:, self.permutation()]
    return list(zip(images, labels))

  def encode(self, record):
    pixels, label = record
    return {"inputs": pixels.astype(np.int32), "targets": np.int32(label)}


@dataclasses.dataclass(frozen=True)
class UCR(_RealData, Classification):
  """The UCR archive problem `problem` (e.g. "GunPoint"): inputs [T, F] float32
  (z-normalised per series), targets [] int. train is the archive's TRAIN file; eval and
  test are both its TEST file."""
  problem: str = "GunPoint"

  DATA = "ucr"
  FILES = {"train": "train", "eval": "test", "test": "test"}
  vocab_size = None

  def _read(self, split: str):
    return _ucr(self.folder, self.problem, self.FILES[split])

  @property
  def num_classes(self) -> int:
    return self._read("train")[2]

  def model_facts(self):
    """Real-valued features of width F (the series' dimensions), `num_classes` classes."""
    x = self._read("train")[0]
    return TaskFacts(input_dim=x.shape[-1], causal=False, num_classes=self.num_classes,
                     pooling=self.pooling)

  def records(self, split):
    x, labels, _ = self._read(split)
    return list(zip(x, labels))

  def encode(self, record):
    series, label = record
    return {"inputs": series, "targets": np.int32(label)}


@dataclasses.dataclass(frozen=True)
class SpamAssassin(_RealData, Classification):
  """Ham vs spam: inputs [max_length] byte tokens (byte b -> b + 1, 0 pads) with
  segment_ids (1 real, 0 padding), targets [] 0 ham | 1 spam. The split is fixed (module
  docstring), whatever the task's seed; `held_out` emails each in test and eval."""
  max_length: int = 4096
  held_out: int = 600

  DATA = "spam"
  vocab_size = BYTE_VOCAB

  def records(self, split):
    emails = _spam(self.folder)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(emails))
    n = self.held_out
    if 2 * n >= len(emails):
      raise ValueError(f"SpamAssassin: held_out={n} leaves no training emails of "
                       f"{len(emails)}")
    held = {"test": order[:n], "eval": order[n:2 * n], "train": order[2 * n:]}[split]
    return [emails[i] for i in held]

  def encode(self, record):
    text, label = record
    inputs, segment_ids = _bytes(text, self.max_length)
    return {"inputs": inputs, "segment_ids": segment_ids, "targets": np.int32(label)}
