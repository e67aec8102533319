"""Cost of the host batch check (`MedPalmMModel.validate_batch`) against the demo's train step.

    .venv/bin/python benchmarks/validate_batch.py

The driver checks every host batch before it reaches the devices (image placeholders per valid
image, image dtype and shape), in train, eval and infer. This times that check on a batch of
the CPU demo's shape (16 examples, 256 + 16 positions, one 56-pixel image = 16 placeholders
each) and the tiny model's train step on the same batch (the trainer's own step, on the 8 fake
CPU devices of the demo's 2×2×2 mesh), and prints their ratio (target: under 2 %).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
# Runnable as `python benchmarks/<name>.py` and as `python -m benchmarks.<name>`: the shared
# `common` module and the repository on the import path.
sys.path[:0] = [
    os.path.dirname(os.path.abspath(__file__)),
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
]

import jax  # noqa: E402
import numpy as np  # noqa: E402

from medpalm import partitioning  # noqa: E402
from medpalm.driver import cpu_env  # noqa: E402
from medpalm.driver import trainer as trainer_lib  # noqa: E402
from medpalm.model import MedPalmMModel  # noqa: E402
from medpalm.models import configs  # noqa: E402
from medpalm.models.medpalm_m import MedPalmM  # noqa: E402


def demo_batch(config, batch: int, inputs: int, targets: int) -> dict:
  """A prefix-LM batch of the demo's shape with the right placeholder count in every row."""
  rng = np.random.default_rng(0)
  length = inputs + targets
  tokens = rng.integers(3, config.decoder.vocab_size - 1, (batch, length)).astype(np.int32)
  tokens[:, 0] = 0
  tokens[:, 1 : 1 + config.num_image_tokens] = config.image_token_id
  causal = (np.arange(length) < inputs).astype(np.int32)[None].repeat(batch, 0)
  size = config.vision.image_size
  return {
      "decoder_input_tokens": tokens,
      "decoder_target_tokens": np.roll(tokens, -1, 1),
      "decoder_causal_attention": causal,
      "decoder_loss_weights": 1 - causal,
      "images": rng.integers(0, 256, (batch, 1, size, size, 3)).astype(np.uint8),
      "image_mask": np.ones((batch, 1), bool),
  }


def main(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog=__doc__,
  )
  parser.add_argument("--repeats", type=int, default=20)
  args = parser.parse_args(argv)
  print(cpu_env.describe())
  import seqio  # after parsing: `--help` answers without loading TensorFlow

  config = configs.get_config("tiny", image_size=56)
  model = MedPalmMModel(MedPalmM(config), seqio.PassThroughVocabulary(config.decoder.vocab_size, 1))
  batch = demo_batch(config, 16, 256, 16)

  start = time.perf_counter()
  for _ in range(args.repeats):
    model.validate_batch(batch)
  check = (time.perf_counter() - start) / args.repeats

  part = partitioning.Partitioner(2, 2, 2)
  shapes = {k: v.shape for k, v in batch.items()}
  types = {k: v.dtype for k, v in batch.items()}
  init = trainer_lib.TrainStateInitializer(model, shapes, types, part)
  trainer = trainer_lib.Trainer(model, part, init.train_state_axes)
  state = init.from_scratch(jax.random.PRNGKey(0))
  device_batch = part.host_local_to_global(batch)
  state, metrics, _ = trainer.train_step(state, device_batch)  # compile
  jax.block_until_ready(metrics)
  times = []
  for _ in range(max(3, args.repeats // 4)):
    start = time.perf_counter()
    state, metrics, _ = trainer.train_step(state, device_batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  step = float(np.median(times))
  print(f"validate_batch: {check * 1e3:.3f} ms per batch (mean of {args.repeats})")
  print(f"train step:     {step * 1e3:.1f} ms (median of {len(times)})")
  print(f"ratio:          {100 * check / step:.2f} % of the step (target < 2 %)")


if __name__ == "__main__":
  main()
