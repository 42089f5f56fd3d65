"""The GPU check of the Mosaic GPU kernels (issues 21, 22), one command for a Hopper machine
(an H200 loan: about 6 minutes of its 15; hand the machine back right after):

  python -m benchmarks.gpu_kernels [--results DIR] [--no-fla]

(through the device tool: carry ["benchmarks/wheels"], the FLA wheel `benchmarks.fla_compare`
installs).

1. the `gpu`-marked tests: each kernel compiled on the GPU against the float64 lax.scan oracle
   (outputs, final state, every gradient; float32, bfloat16, complex, reverse, groups);
2. `benchmarks.kernels` on the channel scans (linear_scan, log_linear_scan, selective_scan):
   the kernel against the XLA form `impl="auto"` picks on GPUs and the reference, forward and
   forward+backward, with the bandwidth achieved against the device's peak (H200: 4800 GB/s),
   at B, T, D = (2, 2048, 256);
3. `benchmarks.fla_compare` on FLA's grid: the chunked linear attention and gated delta rule
   kernels against our XLA chunk forms and FLA's Triton kernels, with FLOP/s and bandwidth
   against the H200's peaks (skipped with --no-fla).

Prints all three and writes DIR/gpu_kernels.json and DIR/fla_compare.json (default
benchmarks/results). Exit status:
pytest's when the tests fail (the timing still runs, to see how far off the kernels are).
Passing tests on a device is what lets `_pallas.VERIFIED` record it.
"""
from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys

import jax

from benchmarks import common, fla_compare, kernels

ROOT = pathlib.Path(__file__).resolve().parent.parent
TESTS = ["tests/ops/test_pallas_scans.py", "tests/ops/test_pallas_selective_scan.py",
         "tests/ops/test_pallas_chunked.py"]
OPS = ("linear_scan", "log_linear_scan", "selective_scan")
SHAPES = [(2, 2048, 256)]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--results", type=pathlib.Path, default=ROOT / "benchmarks" / "results")
  parser.add_argument("--no-fla", action="store_true", help="skip the FLA comparison")
  args = parser.parse_args(argv)
  device = jax.devices()[0]
  print(f"== {device.platform} {device.device_kind} "
        f"(compute capability {getattr(device, 'compute_capability', '?')}), jax "
        f"{jax.__version__}", flush=True)
  # a process of their own: the tests switch on float64 and strict rank promotion
  status = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-n", "0", "-q", "-rs",
                           "-p", "no:cacheprovider", *TESTS], cwd=ROOT).returncode
  print(f"== gpu-marked tests: exit status {status}", flush=True)
  result = kernels.run(False, ops=OPS, shapes=SHAPES)
  print(result.markdown, result.note, sep="\n\n", flush=True)
  common.write_json(args.results / "gpu_kernels.json", "gpu_kernels", result, False)
  if not args.no_fla:
    rows, note = fla_compare.run()
    columns = ["op", "impl", "B", "T", "H", "D", "fwd_ms", "fwd_bwd_ms", "fwd_TFLOPs",
               "fwd_bwd_TFLOPs", "fwd_flop_frac", "fwd_bwd_flop_frac", "fwd_bw_frac",
               "fwd_bwd_bw_frac", "error"]
    compared = common.Result(rows, columns, note=note)
    print(compared.markdown, note, sep="\n\n", flush=True)
    common.write_json(args.results / "fla_compare.json", "fla_compare", compared, False)
  return status


if __name__ == "__main__":
  sys.exit(main())
