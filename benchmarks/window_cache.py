"""KV-cache memory of the sliding-window (ring buffer) layers against a full cache, by eval_shape.

    .venv/bin/python benchmarks/window_cache.py

For the Gemma 3 4B decoder (5 local : 1 global, window 1024) and Gemma 2 2B (1 : 1, window 4096)
in bfloat16, batch 1: the cache a prefill of 8x the window leaves (room for 256 more tokens),
with the local layers' ring buffers, against the same decoder with every layer global. Nothing
is allocated: the sizes come from the cache arrays' shapes.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from medpalm.models import configs, multimodal  # noqa: E402
from medpalm.models.palm import PalmDecoder  # noqa: E402


def cache_bytes(decoder: configs.DecoderConfig, prompt: int, length: int) -> int:
  tokens = jnp.ones((1, prompt), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(prompt), (1, prompt))
  mask = multimodal.attention_mask(prompt)
  init = lambda: PalmDecoder(decoder).init_with_output(
      jax.random.key(0), tokens, positions, mask, mode="prefill", cache_length=length
  )
  _, variables = jax.eval_shape(init)
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(variables["cache"]))


def main(argv=None) -> None:
  argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
  for name, make in (("gemma3_4b", configs.gemma3_4b), ("gemma2_2b", configs.gemma2_2b)):
    decoder = dataclasses.replace(make(), dtype="bfloat16", param_dtype="bfloat16")
    prompt = 8 * decoder.sliding_window
    length = prompt + 256
    window = cache_bytes(decoder, prompt, length)
    full = cache_bytes(
        dataclasses.replace(decoder, layer_types=(), sliding_window=None), prompt, length
    )
    print(
        f"{name}: prompt {prompt} + 256: window cache {window / 2**20:.1f} MiB, "
        f"full cache {full / 2**20:.1f} MiB, ratio {window / full:.3f}"
    )


if __name__ == "__main__":
  main()
