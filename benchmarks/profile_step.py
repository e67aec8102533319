"""Where the MFU benchmark's training step spends its CPU time, from a `perf` sample profile.

    .venv/bin/python benchmarks/profile_step.py                   # remat dots, jax attention
    .venv/bin/python benchmarks/profile_step.py --remat none --system_allocator

Compiles and warms up the step of `benchmarks/mfu.py`, then records `perf record -g` on this
process while steps run (compilation is not in the profile) and prints the share of samples
per binary (GEMM kernels live in libjax_common.so, XLA's generated elementwise code shows up as
JIT, page faults and zero-filling as the kernel) and the top symbols. Needs Linux `perf`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Runnable as `python benchmarks/<name>.py` and as `python -m benchmarks.<name>`: the shared
# `common` module and the repository on the import path.
sys.path[:0] = [
    os.path.dirname(os.path.abspath(__file__)),
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
]

import jax  # noqa: E402
import optax  # noqa: E402

from common import (  # noqa: E402
    RNG,
    add_allocator_flag,
    apply_allocator_flag,
    cpu_env,
    init_state,
    text_batch,
    train_step_fn,
)
import mfu  # noqa: E402


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  mfu.add_shape_args(parser)
  parser.add_argument("--remat", default="dots")
  parser.add_argument("--attention", default="jax")
  parser.add_argument("--seconds", type=float, default=12.0)
  add_allocator_flag(parser)
  args = parser.parse_args(argv)
  if shutil.which("perf") is None:
    sys.exit("profile_step.py needs Linux `perf` on the PATH")
  apply_allocator_flag(args)
  print(cpu_env.describe())
  config, params = mfu.build(args, args.remat, args.attention)
  optimizer = optax.adafactor(1e-3, momentum=0.9)
  step = train_step_fn(config)
  state = [init_state(optimizer, params)]
  batch = text_batch(args.batch, args.length, args.vocab)

  def run():
    state[0], metrics, _ = step(state[0], batch, RNG)
    jax.block_until_ready(metrics)

  run()
  run()  # compiled and warm
  with tempfile.TemporaryDirectory() as tmp:
    data = os.path.join(tmp, "perf.data")
    recorder = subprocess.Popen(
        [
            "perf",
            "record",
            "-F",
            "999",
            "-g",
            "-p",
            str(os.getpid()),
            "-o",
            data,
            "--",
            "sleep",
            str(args.seconds),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    steps, start = 0, time.perf_counter()
    while recorder.poll() is None:
      run()
      steps += 1
    recorder.wait()
    print(
        f"remat {args.remat}, attention {args.attention}, "
        f"{'system allocator' if args.system_allocator else 'freed memory retained'}: "
        f"{steps} steps, {(time.perf_counter() - start) / max(steps, 1) * 1e3:.0f} ms/step"
    )
    for sort, rows in (("dso", 6), ("sym", 12)):
      report = subprocess.run(
          [
              "perf",
              "report",
              "-i",
              data,
              "--no-children",
              "-g",
              "none",
              "--sort",
              sort,
              "--percent-limit",
              "0.5",
          ],
          capture_output=True,
          text=True,
          check=True,
      ).stdout
      lines = [
          line[:120] for line in report.splitlines() if "%" in line and not line.startswith("#")
      ]
      print(f"-- samples by {sort}:")
      print("\n".join(lines[:rows]))


if __name__ == "__main__":
  main()
