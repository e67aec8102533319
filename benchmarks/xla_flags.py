"""The trainer's step under several XLA:CPU flag sets, each in its own process, rounds interleaved.

    .venv/bin/python benchmarks/xla_flags.py                 # the candidate sets below, 2 rounds
    .venv/bin/python benchmarks/xla_flags.py --sets "|--xla_cpu_use_onednn=true" --rounds 3

XLA reads `XLA_FLAGS` once, when its backend starts, so flag sets cannot share a process. Each
set runs in a child process that times the trainer's own donated step (`common.train_step_fn`,
remat `dots`) best-of-`--repeats`; rounds alternate the sets so that load from other processes
falls on all of them alike. Prints the best time per set and its ratio to the first set (by
default `medpalm.cpu_env`'s defaults, then the alternatives that were tried against them).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CANDIDATES = (
    "",  # XLA's own defaults
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_experimental_xnn_fusion_type=+eltwise,+reduce",
    "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce",
)


def child(args) -> None:
  """Times the step in this process (XLA_FLAGS already set by the parent)."""
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.path.insert(0, HERE)
  import dataclasses

  import flax.linen as nn
  import jax
  import optax

  from common import RNG, best_time, init_state, text_batch, train_step_fn
  from medpalm.models import configs, medpalm_m

  base = configs.get_config("tiny", dtype="float32", remat_policy="dots")
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
  state = [init_state(optax.adafactor(1e-3, momentum=0.9), params)]
  step = train_step_fn(config)

  def run():
    state[0], metrics, _ = step(state[0], batch, RNG)
    jax.block_until_ready(metrics)

  print(f"SECONDS {best_time(run, args.repeats):.6f}")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sets", default="|".join(CANDIDATES), help="'|'-separated XLA_FLAGS sets")
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=4)
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--d_model", type=int, default=512)
  parser.add_argument("--vocab", type=int, default=16384)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--length", type=int, default=256)
  parser.add_argument(
      "--max_isa", default="", help="e.g. AVX2: adds --xla_cpu_max_isa to every set"
  )
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    return child(args)
  sys.path.insert(0, HERE)
  from medpalm.driver import cpu_env

  print(cpu_env.describe())
  sets = args.sets.split("|")
  isa = f" --xla_cpu_max_isa={args.max_isa}" if args.max_isa else ""
  best = {s: float("inf") for s in sets}
  passthrough = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--child"]
  for r in range(args.rounds):
    for flags in sets:
      env = {**os.environ, "XLA_FLAGS": (flags + isa).strip(), "MEDPALM_CPU_ENV": "off"}
      out = subprocess.run(
          [sys.executable, os.path.abspath(__file__), *passthrough, "--child"],
          env=env,
          capture_output=True,
          text=True,
      )
      lines = [line for line in out.stdout.splitlines() if line.startswith("SECONDS ")]
      if out.returncode or not lines:
        print(f"round {r}: [{flags or 'XLA defaults'}] failed:\n{out.stderr[-2000:]}")
        continue
      seconds = float(lines[-1].split()[1])
      best[flags] = min(best[flags], seconds)
      print(f"round {r}: [{flags or 'XLA defaults'}] {seconds * 1e3:.1f} ms", flush=True)
  first = best[sets[0]]
  print(f"\nbest of {args.rounds} rounds x {args.repeats} steps{isa}:")
  for flags, seconds in best.items():
    print(f"  {seconds * 1e3:8.1f} ms  {first / seconds:5.2f}x  [{flags or 'XLA defaults'}]")


if __name__ == "__main__":
  main()
