"""Compile time against depth: with `nn.scan` the layer body compiles once.

    .venv/bin/python benchmarks/compile_time.py

Lowers and compiles the full train step (forward, backward, Adafactor update) of a PaLM-block
decoder at 4 and 32 layers, scanned and unrolled, in one run, and prints the ratios. Target:
scanned 32 layers compile in at most 1.5× the time of 4 layers.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
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

from common import RNG, cpu_env, init_state, text_batch, train_step_fn  # noqa: E402
from medpalm.models import configs  # noqa: E402
from medpalm.models import medpalm_m  # noqa: E402


def compile_seconds(layers: int, scan: bool) -> float:
  base = configs.get_config("tiny", scan_layers=scan)
  decoder = dataclasses.replace(
      base.decoder,
      num_layers=layers,
      d_model=256,
      num_heads=4,
      head_dim=64,
      d_ff=1024,
      vocab_size=4096,
  )
  config = dataclasses.replace(base, decoder=decoder, image_token_id=4095)
  optimizer = optax.adafactor(1e-3, momentum=0.9)
  params = medpalm_m.abstract_params(config)
  params = {"decoder": params["decoder"]}  # text-only step: the vision tower is not traced
  state = jax.eval_shape(lambda p: init_state(optimizer, p), params)
  batch = jax.eval_shape(lambda: text_batch(8, 256, 4096))
  step = train_step_fn(config)
  start = time.perf_counter()
  step.lower(state, batch, RNG).compile()
  return time.perf_counter() - start


def main(argv=None):
  argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog=__doc__,
  ).parse_args(argv)
  print(cpu_env.describe())
  results = {
      (layers, scan): compile_seconds(layers, scan) for scan in (True, False) for layers in (4, 32)
  }
  print("train step compile time (lower + compile), PaLM-block decoder d_model 256:")
  for (layers, scan), seconds in results.items():
    print(f"  {'scanned ' if scan else 'unrolled'} {layers:3d} layers  {seconds:7.2f} s")
  scanned = results[(32, True)] / results[(4, True)]
  unrolled = results[(32, False)] / results[(4, False)]
  print(f"ratio 32 / 4 layers: scanned {scanned:.2f}x (target <= 1.5x), unrolled {unrolled:.2f}x")


if __name__ == "__main__":
  main()
