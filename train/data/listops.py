"""The Long Range Arena's ListOps generator (Tay et al. 2021, after Nangia & Bowman 2018), with
its exact distribution, writing the release's TSV files:

  python -m train.data.listops --out data/listops --seed 0 [--train 96000 --val 2000 --test 2000]

writes OUT/basic_{train,val,test}.tsv (header `Source<TAB>Target`), the files that
`ListOps(data_dir=OUT)` (configs/lra/listops.py with --config.task.data_dir=OUT) reads.

The distribution: a tree grown from depth 1; below depth 10 a node is an operator with
probability 0.25, else a value; at depth 10 always a value. An operator takes randint(2, 10)
arguments (inclusive) and is uniform over MIN, MAX, MED (the median, floored), SM (sum mod 10);
values are uniform over 0..9. Expressions whose token count without parentheses is strictly
between 500 and 2000 are kept, without duplicates. The source is written as the release writes
it, a binary tree whose nodes are `( left right )`: `[MAX 2 9 ]` is `( ( ( [MAX 2 ) 9 ) ] )`.
About 2 ms per kept expression (11 trees drawn per kept one).
"""
from __future__ import annotations

import argparse
import csv
import os
import random
import statistics

import numpy as np

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
MAX_DEPTH = 10
MAX_ARGS = 10
OPERATOR_P = 0.25
MIN_LENGTH, MAX_LENGTH = 500, 2000  # kept: MIN_LENGTH < tokens < MAX_LENGTH
TOKENS = (*map(str, range(10)), *OPERATORS, END)  # token TOKENS[i] has id i + 1; 0 pads
SPLIT_FILES = {"train": "basic_train.tsv", "val": "basic_val.tsv", "test": "basic_test.tsv"}

_IDS = {t: i + 1 for i, t in enumerate(TOKENS)}
_APPLY = {
    "[MIN": min,
    "[MAX": max,
    "[MED": lambda args: int(statistics.median(args)),  # floored, as int(np.median)
    "[SM": lambda args: sum(args) % 10,
}


def random_tree(rng: random.Random, depth: int = 1, max_depth: int = MAX_DEPTH):
  """An expression: a value 0..9, or (operator, [arguments]) drawn as LRA's generator does
  (nodes at `max_depth` are values: operators nest at most max_depth - 1 deep)."""
  if depth < max_depth and rng.random() <= OPERATOR_P:
    args = [random_tree(rng, depth + 1, max_depth) for _ in range(rng.randint(2, MAX_ARGS))]
    return rng.choice(OPERATORS), args
  return rng.randrange(10)


def tokens(tree) -> list[str]:
  """The expression's tokens without parentheses: `[MAX 2 9 ]` -> ['[MAX', '2', '9', ']']."""
  if isinstance(tree, int):
    return [str(tree)]
  op, args = tree
  return [op, *(t for arg in args for t in tokens(arg)), END]


def token_ids(tokens: list[str]) -> np.ndarray:
  """Token ids [n] uint8 (TOKENS[i] -> i + 1); a KeyError names an unknown token."""
  return np.array([_IDS[t] for t in tokens], np.uint8)


def value(tree) -> int:
  """The expression's value, 0..9."""
  if isinstance(tree, int):
    return tree
  op, args = tree
  return _APPLY[op]([value(arg) for arg in args])


def render(tree) -> str:
  """The release's source text: operator and arguments folded left into `( left right )`
  pairs, closed by `]`."""
  if isinstance(tree, int):
    return str(tree)
  op, args = tree
  text = f"( {op} {render(args[0])} )"
  for arg in args[1:]:
    text = f"( {text} {render(arg)} )"
  return f"( {text} {END} )"


def sample(rng: random.Random, max_depth: int = MAX_DEPTH, min_length: int = MIN_LENGTH):
  """A tree of the benchmark's length range: trees drawn until one has between min_length and
  MAX_LENGTH tokens (exclusive). Smaller max_depth and min_length give easier expressions
  (a diagnostic, not the benchmark: max_depth=3, min_length=3 nests operators two deep)."""
  while True:
    tree = random_tree(rng, max_depth=max_depth)
    if min_length < len(tokens(tree)) < MAX_LENGTH:
      return tree


def generate(sizes: dict[str, int], seed: int) -> dict[str, list[tuple[str, int]]]:
  """{split: [(source, label)]} with sizes[split] distinct expressions per split, none shared
  across splits, drawn in order train, val, test from random.Random(seed)."""
  rng = random.Random(seed)
  rows = {}  # source -> label, in order of drawing
  total = sum(sizes.values())
  while len(rows) < total:
    tree = sample(rng)
    rows.setdefault(render(tree), value(tree))
  items, splits, start = list(rows.items()), {}, 0
  for split, n in sizes.items():
    splits[split], start = items[start:start + n], start + n
  return splits


def write(out: str, sizes: dict[str, int], seed: int) -> list[str]:
  """Writes out/basic_{split}.tsv for every split of `sizes`; returns the paths."""
  os.makedirs(out, exist_ok=True)
  paths = []
  for split, rows in generate(sizes, seed).items():
    path = os.path.join(out, SPLIT_FILES[split])
    with open(path, "w", newline="") as f:
      writer = csv.writer(f, delimiter="\t")
      writer.writerow(["Source", "Target"])
      writer.writerows(rows)
    paths.append(path)
  return paths


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m train.data.listops",
                                   description="Writes the LRA ListOps TSV files.")
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("--seed", type=int, default=0)
  for split, n in (("train", 96_000), ("val", 2_000), ("test", 2_000)):
    parser.add_argument(f"--{split}", type=int, default=n, help=f"{split} examples ({n})")
  args = parser.parse_args(argv)
  for path in write(args.out, {s: getattr(args, s) for s in SPLIT_FILES}, args.seed):
    print(path)


if __name__ == "__main__":
  main()
