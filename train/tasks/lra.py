"""The Long Range Arena (Tay et al. 2021): sequence classification at lengths 1K-16K.

Every task reads the release's files under `data_dir` (train/data/lra.py parses them); ListOps
also runs without files, generating its examples from their index with the benchmark's own
distribution (train/data/listops.py). Examples: `inputs` [T] int tokens ([2, T] for the
two-tower retrieval task), `targets` [] int class and, for tasks with padding, `segment_ids`
of `inputs`' shape (1 on real tokens, 0 on padding, which pooling and the mixers skip).
Fixed-length tasks (images) carry no segment_ids, so S4D keeps its FFT form. Splits: train
(shuffled, a new order every epoch, endless), eval and test.
"""
from __future__ import annotations

import abc
import dataclasses
import os
import random

import grain
import jax.numpy as jnp
import numpy as np
import optax

from seqmodels import TaskFacts
from train.data import listops, lra
from train.tasks.base import Task, generated_examples

BYTE_VOCAB = 257  # byte b -> token b + 1; 0 pads


def _padded(ids: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
  """ids [n] -> (tokens [length] int32 cut or zero-padded, segment_ids [length]: 1 real)."""
  n = min(len(ids), length)
  tokens = np.zeros(length, np.int32)
  tokens[:n] = ids[:n]
  return tokens, (np.arange(length) < n).astype(np.int32)


def _bytes(text: bytes, length: int) -> tuple[np.ndarray, np.ndarray]:
  return _padded(np.frombuffer(text, np.uint8).astype(np.int32) + 1, length)


@dataclasses.dataclass(frozen=True)
class Classification(Task):
  """An LRA task: a Classifier over a bidirectional backbone, cross-entropy over the batch.

  data_dir: the folder holding the release's files (LAYOUT); pooling: "mean" | "last".
  """
  data_dir: str = ""
  pooling: str = "mean"

  SPLITS = {"train": 0, "eval": 1, "test": 2}
  LAYOUT = ""       # the expected files under data_dir, for error messages
  num_classes = 2
  vocab_size = BYTE_VOCAB
  two_tower = False  # inputs hold two sequences [2, T]

  @abc.abstractmethod
  def records(self, split: str):
    """The split's raw records in file order (a sequence: len and indexing)."""

  @abc.abstractmethod
  def encode(self, record) -> dict:
    """One record -> an example dict of numpy arrays."""

  def path(self, *parts: str) -> str:
    """data_dir/parts..., checked to exist (MissingDataError naming LAYOUT otherwise)."""
    name = type(self).__name__
    if not self.data_dir:
      raise lra.MissingDataError(f"{name}: task.data_dir is not set; expected "
                                 f"{self.LAYOUT} in it")
    return lra.require(os.path.join(self.data_dir, *parts), f"{name} data: {self.LAYOUT}")

  def examples(self, split):
    ds = grain.MapDataset.source(self.records(split))
    if split == "train":
      ds = ds.shuffle(seed=self.seed).repeat()
    return ds.map(self.encode)

  def model_facts(self):
    """Bidirectional, `num_classes` classes, pooled as `pooling`."""
    return TaskFacts(vocab_size=self.vocab_size, causal=False, num_classes=self.num_classes,
                     pooling=self.pooling, two_tower=self.two_tower)

  def loss_and_metrics(self, logits, batch):
    """Mean cross-entropy and accuracy; logits [B, C], batch targets [B]."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                         batch["targets"])
    loss = ce.mean()
    accuracy = (jnp.argmax(logits, -1) == batch["targets"]).astype(jnp.float32).mean()
    return loss, {"loss": loss, "accuracy": accuracy}


@dataclasses.dataclass(frozen=True)
class ListOps(Classification):
  """ListOps: the value 0-9 of a nested MIN / MAX / MED / SM expression, tokens without
  parentheses (ids from listops.TOKENS), up to `max_length` tokens. Without data_dir the
  examples are generated from their index; with it, read from the release's TSVs.
  max_depth and min_length set the generator's (`listops.sample`; the benchmark's by default,
  smaller for easier expressions)."""
  max_length: int = 2048
  max_depth: int = listops.MAX_DEPTH
  min_length: int = listops.MIN_LENGTH

  LAYOUT = ("basic_{train,val,test}.tsv (the release's listops-1000 folder, or the output of "
            "python -m train.data.listops --out DIR)")
  FILES = {"train": "basic_train.tsv", "eval": "basic_val.tsv", "test": "basic_test.tsv"}
  num_classes = 10
  vocab_size = len(listops.TOKENS) + 1

  def __post_init__(self):
    generator = (self.max_depth, self.min_length)
    if self.data_dir and generator != (listops.MAX_DEPTH, listops.MIN_LENGTH):
      raise ValueError(f"ListOps: max_depth and min_length shape generated examples only; "
                       f"got {generator} with data_dir={self.data_dir!r}")

  def examples(self, split):
    if self.data_dir:
      return super().examples(split)
    def make(rng):
      tree = listops.sample(random.Random(int(rng.integers(2**63))), self.max_depth,
                            self.min_length)
      return self.encode((listops.token_ids(listops.tokens(tree)), listops.value(tree)))
    return generated_examples(make, self.seed, self.SPLITS[split])

  def records(self, split):
    return lra.read_listops(self.path(self.FILES[split]))

  def encode(self, record):
    ids, label = record
    inputs, segment_ids = _padded(ids, self.max_length)
    return {"inputs": inputs, "segment_ids": segment_ids, "targets": np.int32(label)}


@dataclasses.dataclass(frozen=True)
class Text(Classification):
  """IMDB sentiment from bytes (LRA "Text"): reviews cut or padded to `max_length` bytes.
  eval and test are both the release's test set (IMDB has no validation set; LRA does so)."""
  max_length: int = 4096

  LAYOUT = "aclImdb/{train,test}/{pos,neg}/*.txt (the IMDB release, aclImdb_v1.tar.gz)"
  FOLDERS = {"train": "train", "eval": "test", "test": "test"}

  def records(self, split):
    return lra.read_imdb(self.path("aclImdb", self.FOLDERS[split]))

  def encode(self, record):
    text, label = record
    inputs, segment_ids = _bytes(text, self.max_length)
    return {"inputs": inputs, "segment_ids": segment_ids, "targets": np.int32(label)}


@dataclasses.dataclass(frozen=True)
class Retrieval(Classification):
  """AAN citation pairs (LRA "Retrieval"): do two papers cite one another? Each is bytes cut
  or padded to `max_length`; a two-tower Classifier encodes both with one backbone."""
  max_length: int = 4000

  LAYOUT = ("new_aan_pairs.{train,eval,test}.tsv (the release's tsv_data folder; rows "
            "label, id1, id2, text1, text2)")
  FILES = {"train": "new_aan_pairs.train.tsv", "eval": "new_aan_pairs.eval.tsv",
           "test": "new_aan_pairs.test.tsv"}
  two_tower = True

  def records(self, split):
    return lra.read_aan(self.path(self.FILES[split]), self.max_length)

  def encode(self, record):
    """-> inputs, segment_ids [2, max_length], targets []."""
    *texts, label = record
    inputs, segment_ids = zip(*(_bytes(t, self.max_length) for t in texts))
    return {"inputs": np.stack(inputs), "segment_ids": np.stack(segment_ids),
            "targets": np.int32(label)}


@dataclasses.dataclass(frozen=True)
class Image(Classification):
  """CIFAR-10 as a sequence (LRA "Image"): 32x32 grayscale pixels (tokens 0..255) in raster
  order, length 1024. eval and test are both test_batch (as LRA)."""
  LAYOUT = ("cifar-10-batches-py/{data_batch_1..5,test_batch} (the CIFAR-10 python "
            "release, cifar-10-python.tar.gz)")
  FILES = {"train": [f"data_batch_{k}" for k in range(1, 6)], "eval": ["test_batch"],
           "test": ["test_batch"]}
  num_classes = 10
  vocab_size = 256

  def records(self, split):
    images, labels = lra.read_cifar([self.path("cifar-10-batches-py", name)
                                     for name in self.FILES[split]])
    return list(zip(lra.grayscale(images).reshape(len(images), -1), labels))

  def encode(self, record):
    pixels, label = record
    return {"inputs": pixels.astype(np.int32), "targets": np.int32(label)}


@dataclasses.dataclass(frozen=True)
class Pathfinder(Classification):
  """Pathfinder / Path-X: are the two dots joined by a path? `resolution`^2 grayscale pixels
  (tokens 0..255) in raster order: 32 -> 1024 (Pathfinder), 128 -> 16384 (Path-X). The
  `difficulty` folder's examples, in metadata order, split 80% / 10% / 10% into train, eval,
  test (as LRA)."""
  resolution: int = 32
  difficulty: str = "curv_contour_length_14"

  LAYOUT = ("pathfinder{32,64,128,256}/{curv_baseline,curv_contour_length_9,"
            "curv_contour_length_14}/{imgs,metadata} (the LRA release)")
  DIFFICULTIES = ("curv_baseline", "curv_contour_length_9", "curv_contour_length_14")
  FRACTIONS = {"train": (0.0, 0.8), "eval": (0.8, 0.9), "test": (0.9, 1.0)}
  vocab_size = 256

  def __post_init__(self):
    if self.difficulty not in self.DIFFICULTIES:
      raise ValueError(f"Pathfinder: difficulty={self.difficulty!r}; expected one of "
                       f"{', '.join(self.DIFFICULTIES)}")

  def records(self, split):
    records = lra.read_pathfinder(self.path(f"pathfinder{self.resolution}", self.difficulty))
    start, stop = (round(f * len(records)) for f in self.FRACTIONS[split])
    return records[start:stop]

  def encode(self, record):
    path, label = record
    image = lra.read_gray_png(path)
    if image.shape != (self.resolution,) * 2:
      raise ValueError(f"{path}: a {image.shape} image; expected {self.resolution}x"
                       f"{self.resolution}")
    return {"inputs": image.reshape(-1).astype(np.int32), "targets": np.int32(label)}
