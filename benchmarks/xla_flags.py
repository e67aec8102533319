"""The trainer's step compiled under several XLA:CPU option sets, timed interleaved in one process.

    .venv/bin/python benchmarks/xla_flags.py                 # the candidate sets below
    .venv/bin/python benchmarks/xla_flags.py --repeats 8 --layers 6 --length 384

Each set is a dict of XLA debug options passed to `compile(compiler_options=...)` of the same
lowered step (the trainer's own donated step, `common.train_step_fn`, remat `dots`), so the sets
share one process, one set of weights and one batch. Steps run round-robin, one per set per
round, and each set keeps its best time: load from other processes falls on all sets alike.
Prints the best time per set and its speed relative to the first set (`cpu_env`'s defaults as
the driver applies them). A set XLA rejects is reported and skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import optax  # noqa: E402

from common import RNG, cpu_env, init_state, text_batch, train_step_fn  # noqa: E402
from medpalm.models import configs, medpalm_m  # noqa: E402

CANDIDATES = {
    "driver defaults": {},
    "oneDNN matmuls": {"xla_cpu_use_onednn": True},
    "XNNPACK off": {"xla_cpu_use_xnnpack": False},
    "XNN eltwise fusion": {"xla_cpu_experimental_xnn_fusion_type": "LIBRARY_FUSION_TYPE_ELTWISE"},
    "XNN graph fusion": {
        "xla_cpu_experimental_xnn_graph_fusion_mode": "XNN_GRAPH_FUSION_MODE_GREEDY"
    },
    "YNN dot fusion": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"},
    # XLA's generated (non-GEMM) code prefers 256-bit vectors, on AVX-512 too.
    "512-bit vectors": {"xla_cpu_prefer_vector_width": 512},
    # On by default: schedules for running independent ops at once, at some cost in memory.
    "concurrency scheduler off": {"xla_cpu_enable_concurrency_optimized_scheduler": False},
    "tiling propagation": {"xla_cpu_experimental_enable_tiling_propagation": True},
}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=5, help="rounds (best kept per set)")
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--d_model", type=int, default=512)
  parser.add_argument("--vocab", type=int, default=16384)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--length", type=int, default=256)
  parser.add_argument("--remat", default="dots")
  parser.add_argument(
      "--only", default=None, help="comma-separated set names to compare (default: all)"
  )
  args = parser.parse_args(argv)
  cpu_env.retain_freed_memory()  # as the driver's entry points do
  chosen = args.only.split(",") if args.only else list(CANDIDATES)

  base = configs.get_config("tiny", dtype="float32", remat_policy=args.remat)
  decoder = dataclasses.replace(
      base.decoder,
      num_layers=args.layers,
      d_model=args.d_model,
      num_heads=args.d_model // 64,
      head_dim=64,
      d_ff=4 * args.d_model,
      vocab_size=args.vocab,
  )
  config = dataclasses.replace(base, decoder=decoder, image_token_id=args.vocab - 1)
  batch = text_batch(args.batch, args.length, args.vocab)
  params = nn.meta.unbox(
      medpalm_m.MedPalmM(config).init(jax.random.key(0), batch["decoder_input_tokens"][:1, :8])
  )["params"]
  optimizer = optax.adafactor(1e-3, momentum=0.9)
  state = init_state(optimizer, params)
  lowered = train_step_fn(config).lower(state, batch, RNG)

  steps, states, losses = {}, {}, {}
  for name in chosen:
    options = CANDIDATES[name]
    try:
      steps[name] = lowered.compile(compiler_options=options)
    except Exception as e:  # noqa: BLE001  (an option this XLA build does not know)
      print(f"[{name}] rejected: {type(e).__name__}: {str(e)[:160]}")
      continue
    states[name] = jax.tree.map(lambda x: x.copy(), state)  # the same tree (and metadata)
    states[name], metrics, _ = steps[name](states[name], batch, RNG)  # warm-up
    losses[name] = float(metrics["loss"].total / metrics["loss"].count)
  print(cpu_env.describe(), flush=True)
  best = {name: float("inf") for name in steps}
  for round_ in range(args.repeats):
    for name, step in steps.items():
      start = time.perf_counter()
      states[name], metrics, _ = step(states[name], batch, RNG)
      jax.block_until_ready(metrics)
      best[name] = min(best[name], time.perf_counter() - start)
    print(
        f"round {round_}: " + ", ".join(f"{n} {t * 1e3:.0f} ms" for n, t in best.items()),
        flush=True,
    )

  print(
      f"decoder {args.layers}x{args.d_model}, vocab {args.vocab}, batch {args.batch} x "
      f"{args.length}, remat {args.remat}, Adafactor; best of {args.repeats} interleaved rounds"
  )
  first = next(iter(best))
  for name, seconds in best.items():
    print(
        f"  {seconds * 1e3:8.1f} ms  {best[first] / seconds:5.2f}x  first loss "
        f"{losses[name]:.5f}  [{name}] {CANDIDATES[name] or ''}"
    )


if __name__ == "__main__":
  main()
