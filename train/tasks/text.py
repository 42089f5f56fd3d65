"""Character-level (byte-level) language modelling on plain-text files, with packing.

Documents are concatenated into one byte stream and cut into windows of `seq_len` + 1; each
window carries `segment_ids` (one run per document), so no token attends or recurs across
documents, and no target crosses a document boundary. With `block_align` = L each document is
padded to a multiple of L bytes (padding: weight 0), so documents start on the block
boundaries of a Block Transformer. Reports bits per byte.
"""
from __future__ import annotations

import dataclasses
import functools
import glob
import math
import os

import grain
import jax
import numpy as np

from train.data.moby_dick import FETCH_COMMAND
from train.tasks.base import Task


def read_documents(pattern: str) -> list[bytes]:
  """The bytes of every file matching `pattern` (a folder means all its *.txt files), in
  sorted order."""
  if os.path.isdir(pattern):
    pattern = os.path.join(pattern, "*.txt")
  paths = sorted(glob.glob(os.path.expanduser(pattern)))
  if not paths:
    raise FileNotFoundError(
        f"no text files match {pattern!r}: point task.data at a folder of *.txt files or a "
        f"glob pattern (for Moby-Dick run `{FETCH_COMMAND}` first)")
  docs = []
  for path in paths:
    with open(path, "rb") as f:
      docs.append(f.read())
  return docs


def pack(documents: list[bytes], seq_len: int, block_align: int = 1) -> dict[str, np.ndarray]:
  """Windows [N, seq_len] of `inputs`, next-byte `targets`, `weights` (0 where the target is
  in another document or padding) and `segment_ids` (1, 2, ... per document within the
  window). block_align = L > 1 pads every document with zero bytes to a multiple of L (the
  padding belongs to its document's segment), so with seq_len a multiple of L every segment
  starts at a multiple of L."""
  if block_align < 1 or seq_len % block_align:
    raise ValueError(f"CharLM: block_align={block_align} must be a positive divisor of "
                     f"seq_len={seq_len}")
  sizes = [-(-len(d) // block_align) * block_align for d in documents]
  stream = np.frombuffer(b"".join(d.ljust(size, b"\0") for d, size in zip(documents, sizes)),
                         np.uint8).astype(np.int32)
  real = np.concatenate([np.arange(size) < len(d) for d, size in zip(documents, sizes)])
  doc = np.repeat(np.arange(len(documents)), sizes)
  n = (len(stream) - 1) // seq_len
  if n < 1:
    raise ValueError(f"CharLM: {len(stream)} bytes of text are too few for one window of "
                     f"seq_len={seq_len}")
  starts = np.arange(n)[:, None] * seq_len + np.arange(seq_len)[None]
  inputs, targets = stream[starts], stream[starts + 1]
  doc_in, doc_out = doc[starts], doc[starts + 1]
  segment_ids = 1 + doc_in - doc_in[:, :1]  # documents are contiguous: 1, 2, ... per window
  return {"inputs": inputs, "targets": targets,
          "weights": ((doc_in == doc_out) & real[starts + 1]).astype(np.float32),
          "segment_ids": segment_ids.astype(np.int32)}


@dataclasses.dataclass(frozen=True)
class CharLM(Task):
  """Next-byte prediction on the text files `data` (folder or glob); the last
  `eval_fraction` of the documents (at least one) is the eval split."""
  data: str = "~/.cache/seqmodels/moby_dick"
  seq_len: int = 256
  eval_fraction: float = 0.05
  vocab_size: int = 256
  block_align: int = 1  # documents start at multiples of it (Block Transformer: block_length)

  def examples(self, split):
    documents = read_documents(self.data)
    if len(documents) < 2:
      raise ValueError(f"CharLM: {self.data!r} holds {len(documents)} document; the split "
                       "into train and eval needs at least two")
    n_eval = max(1, round(self.eval_fraction * len(documents)))
    chosen = documents[:-n_eval] if split == "train" else documents[-n_eval:]
    windows = pack(chosen, self.seq_len, self.block_align)
    n = len(windows["inputs"])
    take = lambda j: {k: v[j] for k, v in windows.items()}
    if split != "train":
      return grain.MapDataset.range(n).map(take)

    @functools.lru_cache(maxsize=2)
    def epoch_order(epoch):
      return np.random.default_rng([self.seed, epoch]).permutation(n)
    # Endless: epoch e visits every window once, in its own permutation.
    return grain.MapDataset.range(2**62).map(lambda i: take(epoch_order(i // n)[i % n]))

  def model_facts(self):
    """Token facts, and that packed documents start at multiples of `block_align`."""
    return dataclasses.replace(super().model_facts(), segment_starts=self.block_align)

  def loss_and_metrics(self, logits: jax.Array, batch: dict):
    """Cross-entropy in nats and bits per byte (= nats / ln 2) over same-document targets."""
    loss, metrics = super().loss_and_metrics(logits, batch)
    return loss, {**metrics, "bits_per_byte": loss / math.log(2)}
