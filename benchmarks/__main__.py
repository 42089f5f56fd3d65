"""Every benchmark, one command: prints a table per benchmark, writes
benchmarks/results/<name>.json (machine, device, jax version, load, settings, rows) and
regenerates the README's section of each between `<!-- bench:NAME -->` and
`<!-- /bench:NAME -->`, so every speed number in the README comes from here.

  python -m benchmarks                    # small settings (minutes on a 2-core CPU)
  python -m benchmarks --full             # the real sizes
  python -m benchmarks --only decode,scan [--no-readme] [--results DIR]
"""
from __future__ import annotations

import argparse
import datetime
import pathlib
import re
import sys
import time

from benchmarks import (attention, block_transformer, common, decode, kernels,
                        linear_attention, memory, scan, selective_scan, train_step)

ROOT = pathlib.Path(__file__).resolve().parent.parent
# name -> run(full) -> common.Result; run in this order
BENCHMARKS = {
    "scan": scan.run,
    "selective_scan": selective_scan.run,
    "linear_attention": linear_attention.run,
    "attention": attention.run,
    "kernels": kernels.run,
    "train_step": train_step.run,
    "train_step_dp": train_step.run_data_parallel,
    "decode": decode.run,
    "block_transformer": block_transformer.run,
    "memory": memory.run,
}


def section(name: str, result: common.Result, full: bool, seconds: float) -> str:
  """The README block of one benchmark: provenance line, table, note."""
  m = common.machine()
  command = "python -m benchmarks" + (" --full" if full else "") + f" --only {name}"
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
  return (f"`{command}` ({stamp}, {seconds:.0f} s; {len(m['devices'])} x {m['devices'][0]}, "
          f"{m['processor']}, {m['cpu_count']} cores, 5-min load average "
          f"{m['load_average'][1]}, jax {m['jax']}; "
          f"`benchmarks/results/{name}.json`)\n\n{result.markdown}\n\n{result.note}".rstrip())


def replace_section(text: str, name: str, body: str) -> str:
  """`text` with the content between `<!-- bench:name -->` and `<!-- /bench:name -->`
  replaced by `body`; a ValueError when the markers are missing."""
  pattern = re.compile(rf"(<!-- bench:{re.escape(name)} -->\n).*?(<!-- /bench:"
                       rf"{re.escape(name)} -->)", re.S)
  if not pattern.search(text):
    raise ValueError(f"README.md has no <!-- bench:{name} --> ... <!-- /bench:{name} --> "
                     "markers")
  return pattern.sub(lambda m: m.group(1) + body.rstrip() + "\n" + m.group(2), text)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--full", action="store_true", help="the real sizes (slow)")
  parser.add_argument("--only", type=lambda s: s.split(","), default=list(BENCHMARKS),
                      help=f"comma-separated subset of {','.join(BENCHMARKS)}")
  parser.add_argument("--results", type=pathlib.Path, default=ROOT / "benchmarks" / "results")
  parser.add_argument("--readme", type=pathlib.Path, default=ROOT / "README.md")
  parser.add_argument("--no-readme", action="store_true", help="leave README.md as it is")
  args = parser.parse_args(argv)
  unknown = sorted(set(args.only) - set(BENCHMARKS))
  if unknown:
    parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
  for name in args.only:
    print(f"== {name}{' (full)' if args.full else ''}", flush=True)
    start = time.perf_counter()
    result = BENCHMARKS[name](args.full)
    seconds = time.perf_counter() - start
    print(result.markdown, result.note, sep="\n\n", flush=True)
    common.write_json(args.results / f"{name}.json", name, result, args.full)
    if not args.no_readme:
      text = replace_section(args.readme.read_text(), name,
                             section(name, result, args.full, seconds))
      args.readme.write_text(text)
      print(f"updated {args.readme} (bench:{name})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
