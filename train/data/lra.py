"""Readers of the Long Range Arena release files (Tay et al. 2021), each in exactly the
release's format. A missing file or folder raises MissingDataError naming the expected layout.
"""
from __future__ import annotations

import csv
import glob
import os
import pickle

import numpy as np
from PIL import Image

from train.data import listops

GRAY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140])  # ITU-R 601 luma, as tf.image.rgb_to_grayscale


class MissingDataError(FileNotFoundError, ValueError):
  """An expected data file or folder is absent (also a ValueError: the CLI prints one line)."""


def require(path: str, layout: str) -> str:
  """`path` if it exists, else MissingDataError naming it and the expected `layout`."""
  if not os.path.exists(path):
    raise MissingDataError(f"{path} not found; expected {layout}")
  return path


def _tsv_rows(path: str):
  """The rows of a tab-separated file, quotes taken literally (fields may be long)."""
  csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
  with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
    yield from csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)


def read_listops(path: str) -> list[tuple[np.ndarray, int]]:
  """basic_{train,val,test}.tsv: header `Source Target`, the source as the generator writes it
  (train/data/listops.py) -> [(token ids [n] uint8 without parentheses, label 0..9)]."""
  rows = _tsv_rows(path)
  header = next(rows, None)
  if header != ["Source", "Target"]:
    raise ValueError(f"{path}: expected the header Source<TAB>Target, got {header}")
  records = []
  for line, (source, target) in enumerate(rows, start=2):
    try:
      ids = listops.token_ids([t for t in source.split() if t not in "()"])
    except KeyError as e:
      raise ValueError(f"{path}:{line}: unknown token {e.args[0]!r}; expected "
                       f"{' '.join(listops.TOKENS)} and parentheses") from None
    records.append((ids, int(target)))
  return records


def read_imdb(folder: str) -> list[tuple[bytes, int]]:
  """aclImdb/{train,test} with {neg,pos}/*.txt reviews -> [(review bytes, 0 neg | 1 pos)],
  neg then pos, files in name order."""
  records = []
  for label, sentiment in enumerate(("neg", "pos")):
    files = sorted(glob.glob(os.path.join(folder, sentiment, "*.txt")))
    if not files:
      raise MissingDataError(f"no reviews in {os.path.join(folder, sentiment)}; expected "
                             "aclImdb/{train,test}/{pos,neg}/*.txt (the IMDB release)")
    for path in files:
      with open(path, "rb") as f:
        records.append((f.read(), label))
  return records


def read_aan(path: str, max_bytes: int) -> list[tuple[bytes, bytes, int]]:
  """new_aan_pairs.{train,eval,test}.tsv rows `label id1 id2 text1 text2` (no header) ->
  [(text1, text2 as utf-8 bytes cut to max_bytes, label 0 | 1)]."""
  records = []
  for line, row in enumerate(_tsv_rows(path), start=1):
    if len(row) != 5:
      raise ValueError(f"{path}:{line}: expected 5 tab-separated fields (label, id1, id2, "
                       f"text1, text2), got {len(row)}")
    label, _, _, text1, text2 = row
    records.append(tuple(t.encode("utf-8", "surrogateescape")[:max_bytes]
                         for t in (text1, text2)) + (int(float(label)),))
  return records


def read_cifar(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
  """CIFAR-10 python batches (pickled dicts, b'data' [N, 3072] uint8 as R, G, B planes of
  32x32, b'labels') -> (images [N, 32, 32, 3] uint8, labels [N] int64)."""
  images, labels = [], []
  for path in paths:
    with open(path, "rb") as f:
      batch = pickle.load(f, encoding="bytes")
    images.append(np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32))
    labels.append(np.asarray(batch[b"labels"], np.int64))
  return np.concatenate(images).transpose(0, 2, 3, 1), np.concatenate(labels)


def grayscale(rgb: np.ndarray) -> np.ndarray:
  """[..., 3] uint8 RGB -> [...] uint8 luma, rounded."""
  return np.rint(rgb @ GRAY_WEIGHTS).astype(np.uint8)


def read_pathfinder(folder: str) -> list[tuple[str, int]]:
  """pathfinderNN/<difficulty> with metadata/<k>.npy (text despite the name; lines
  `imgs/<k> sample_<i>.png <i> <label> ...`) -> [(png path, label 0 | 1)], metadata files in
  numeric order."""
  files = glob.glob(os.path.join(folder, "metadata", "*.npy"))
  if not files:
    raise MissingDataError(f"no metadata/*.npy in {folder}; expected pathfinderNN/"
                           "{curv_baseline,curv_contour_length_9,curv_contour_length_14}/"
                           "{imgs,metadata} (the LRA release)")
  records = []
  for path in sorted(files, key=lambda p: int(os.path.basename(p)[:-4])):
    with open(path) as f:
      for line in filter(None, f.read().splitlines()):
        fields = line.split(" ")
        records.append((os.path.join(folder, fields[0], fields[1]), int(fields[3])))
  return records


def read_gray_png(path: str) -> np.ndarray:
  """A grayscale PNG -> [H, W] uint8."""
  with Image.open(path) as image:
    return np.asarray(image.convert("L"))
