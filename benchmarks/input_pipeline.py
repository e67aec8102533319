"""Input pipeline vs training consumption: is the data what limits the demo?

    .venv/bin/python benchmarks/input_pipeline.py [--output /tmp/medpalm_bench --batch_size 16]

Uses the demo's data (synthetic MultiMedBench in the official formats, images prepared once at the
demo's 56×56) and its feature lengths. Prints, in one run:
1. examples/s of the `multimedbench` training mixture through SeqIO and the model's feature
   converter, batched as training batches it;
2. the tiny model's training consumption: examples/s of its train step on a cached in-memory
   batch, and with every step's batch pulled from the pipeline (one step in flight, as
   `medpalm.driver.train` runs), with the demo's `input_threads=1` and with tf.data autotuned. Target:
   step time with the real pipeline ≤ 1.1× the cached-batch step time.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import sys
import time

# Runnable as `python benchmarks/<name>.py` and as `python -m benchmarks.<name>`: the shared
# `common` module and the repository on the import path.
sys.path[:0] = [
    os.path.dirname(os.path.abspath(__file__)),
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
]
from medpalm import demo  # noqa: E402  (sets the CPU environment before jax is imported)

import jax  # noqa: E402
import flax.linen as nn  # noqa: E402
import optax  # noqa: E402

from common import RNG, cpu_env, init_state, train_step_fn  # noqa: E402
from medpalm.models import configs  # noqa: E402
from medpalm.driver import data
from medpalm.model import MedPalmMModel  # noqa: E402
from medpalm.models import medpalm_m  # noqa: E402

LENGTHS = {"inputs": 256, "targets": 16, "images": 1, "image_mask": 1}  # the demo's
DEMO_INPUT_THREADS = 1  # gin_configs/experiments/demo_cpu.gin: input and training share the CPU


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--output", default="/tmp/medpalm_input_bench")
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--steps", type=int, default=20)
  args = parser.parse_args(argv)
  print(cpu_env.describe())

  env = demo.prepare(pathlib.Path(args.output), num_examples=256)
  demo.register_tasks(env)
  from tasks import vocab

  vocabulary = vocab.get_vocabulary(env["MEDPALM_SPM_MODEL"])
  cfg = data.DatasetConfig(
      mixture_or_task_name="multimedbench",
      task_feature_lengths=LENGTHS,
      split="train",
      batch_size=args.batch_size,
      shuffle=True,
      seed=0,
      input_threads=DEMO_INPUT_THREADS,
  )

  def warm_batches(cfg):
    batches = data.get_dataset(cfg, 0, 1, MedPalmMModel.FEATURE_CONVERTER_CLS).as_numpy_iterator()
    for _ in range(args.steps):  # file reads, exemplar tables, the shuffle buffer
      next(batches)
    return batches

  batches = warm_batches(cfg)
  start = time.perf_counter()
  for _ in range(args.steps):
    next(batches)
  pipeline_rate = args.steps * args.batch_size / (time.perf_counter() - start)

  config = configs.get_config("tiny", image_size=demo.IMAGE_SIZE, vocab=vocabulary)
  batch = next(batches)
  params = nn.meta.unbox(
      medpalm_m.MedPalmM(config).init(
          jax.random.key(0),
          batch["decoder_input_tokens"][:1],
          images=batch["images"][:1],
          image_mask=batch["image_mask"][:1],
      )
  )["params"]
  optimizer = optax.adafactor(1e-3, momentum=0.9)
  step = train_step_fn(config)
  state = [init_state(optimizer, params)]

  def train(get_batch) -> float:
    """Seconds per step, the way `medpalm.driver.train` runs them: the next batch is read while the
    step before it runs (one step in flight), so the two overlap where the machine allows."""
    start, in_flight = time.perf_counter(), None
    for _ in range(args.steps):
      state[0], metrics, _ = step(state[0], get_batch(), RNG)
      jax.block_until_ready(in_flight)
      in_flight = metrics
    jax.block_until_ready(in_flight)
    return (time.perf_counter() - start) / args.steps

  train(lambda: batch)  # compile
  cached = train(lambda: batch)
  piped = train(lambda: next(batches))
  autotuned = warm_batches(dataclasses.replace(cfg, input_threads=None))
  piped_autotuned = train(lambda: next(autotuned))
  cached_again = train(lambda: batch)  # brackets the piped runs against drift in machine load
  cached = min(cached, cached_again)
  print(
      f"multimedbench mixture, demo lengths {LENGTHS}, batch {args.batch_size}, "
      f"{demo.IMAGE_SIZE}² images; tiny model on {jax.device_count()} CPU device(s)"
  )
  print(f"input pipeline alone           {pipeline_rate:8.1f} examples/s")
  print(
      f"train step, cached batch       {args.batch_size / cached:8.1f} examples/s "
      f"({cached * 1e3:.0f} ms/step)"
  )
  print(
      f"train step, pipeline batches   {args.batch_size / piped:8.1f} examples/s "
      f"({piped * 1e3:.0f} ms/step; input_threads={DEMO_INPUT_THREADS}, as the demo)"
  )
  print(
      f"  same, tf.data autotuned       {args.batch_size / piped_autotuned:8.1f} examples/s "
      f"({piped_autotuned * 1e3:.0f} ms/step; input_threads=None): "
      f"{piped_autotuned / cached:.3f} x cached"
  )
  print(
      f"pipeline / consumption: {pipeline_rate / (args.batch_size / cached):.2f}x; step time "
      f"with the pipeline / cached: {piped / cached:.3f} (target <= 1.1)"
  )


if __name__ == "__main__":
  main()
