"""Training-step model-FLOPs utilization three ways: physical peak, best GEMM, XLA's GEMM.

    .venv/bin/python benchmarks/mfu.py                      # ~53M-parameter decoder, seq 512, CPU
    .venv/bin/python benchmarks/mfu.py --dtype bfloat16 --d_model 2048 --layers 16 --batch 16

Model FLOPs per step are analytic (6 × matmul parameters × tokens + 12 × layers × T × attention
width per token for QKᵀ and PV, forward and backward) and cross-checked against the matmuls of
each compiled step (`common.matmul_flops`: equal without recomputation, more with it). MFU = model FLOPs / step time / peak, against three peaks:
- nominal: the physical peak of the ISA XLA generates code for (cores × clock × FLOPs/cycle,
  `cpu_env.nominal_peak`: 32 float32 FLOPs/cycle for AVX2 FMA, 64 for AVX-512 on full-width
  FMA units, 32 on AMD Zen 4's half-width ones);
- best GEMM: the fastest of XLA, numpy (OpenBLAS) and torch on a 2048² matmul in this process;
- XLA GEMM: XLA's own 2048² matmul (the figure this script printed alone before).
To run with AVX2 only on an AVX-512 machine (both sides of the comparisons):
`XLA_FLAGS=--xla_cpu_max_isa=AVX2 ATEN_CPU_CAPABILITY=avx2 .venv/bin/python benchmarks/mfu.py`.

Each remat policy in `--remat`, with each attention implementation in `--attention`, is timed
in the same run against the same peak. Model FLOPs do
not count recomputation (PaLM's definition), so `dots` (keep matmul outputs, recompute the
elementwise work in the backward pass) earns its place only by being faster: on a CPU it trades
cheap arithmetic for the memory traffic of storing every layer's softmax and MLP activations.
By default glibc is told to keep freed memory (`common.retain_freed_memory`); pass
`--system_allocator` to measure without that.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Runnable as `python benchmarks/<name>.py` and as `python -m benchmarks.<name>`: the shared
# `common` module and the repository on the import path.
sys.path[:0] = [
    os.path.dirname(os.path.abspath(__file__)),
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
]

import jax  # noqa: E402
import flax.linen as nn  # noqa: E402
import optax  # noqa: E402

from common import (  # noqa: E402
    RNG,
    add_allocator_flag,
    apply_allocator_flag,
    best_time,
    cpu_env,
    gemm_peaks,
    init_state,
    matmul_flops,
    text_batch,
    torch_settings,
    train_step_fn,
)
from medpalm.models import configs  # noqa: E402
from medpalm.models import medpalm_m  # noqa: E402


def analytic_flops(c, batch: int, length: int) -> float:
  """Forward + backward FLOPs of the decoder's matmuls for one step (PaLM's MFU accounting)."""
  attn_width = c.num_heads * c.head_dim
  per_layer = (
      2 * c.d_model * attn_width
      + 2 * c.d_model * c.num_kv_heads * c.head_dim
      + (3 if c.gated_mlp else 2) * c.d_model * c.d_ff
  )
  matmul_params = c.num_layers * per_layer + c.vocab_size * c.d_model  # output logits matmul
  tokens = batch * length
  return 6 * matmul_params * tokens + 12 * c.num_layers * length * attn_width * tokens


def build(args, remat: str, attention: str):
  """(config, params) of the benchmark decoder with the given remat policy and attention."""
  base = configs.get_config("tiny", dtype=args.dtype, remat_policy=remat, attention=attention)
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
  params = nn.meta.unbox(
      medpalm_m.MedPalmM(config).init(
          jax.random.key(0), text_batch(1, 8, args.vocab)["decoder_input_tokens"]
      )
  )["params"]
  return config, params


def step_seconds(config, params, optimizer, batch) -> tuple[float, int, float]:
  """(best step time, bytes of XLA scratch space the step allocates per execution, matmul FLOPs
  the compiled step executes: the model FLOPs plus any recomputation)."""
  state = [init_state(optimizer, params)]
  step = train_step_fn(config).lower(state[0], batch, RNG).compile()

  def run():
    state[0], metrics, _ = step(state[0], batch, RNG)
    jax.block_until_ready(metrics)

  return best_time(run, repeats=3), step.memory_analysis().temp_size_in_bytes, matmul_flops(step)


def add_shape_args(parser) -> None:
  """The benchmark decoder's size and batch (defaults: ~53M parameters, 4 × 512 tokens)."""
  parser.add_argument("--layers", type=int, default=12)
  parser.add_argument("--d_model", type=int, default=512)
  parser.add_argument("--vocab", type=int, default=16384)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--length", type=int, default=512)
  parser.add_argument("--dtype", default="float32")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_shape_args(parser)
  parser.add_argument(
      "--remat",
      default="none,dots",
      help="comma-separated remat policies, each measured in this run",
  )
  parser.add_argument(
      "--attention",
      default="jax,recompute",
      help="comma-separated attention implementations, each measured",
  )
  add_allocator_flag(parser)
  args = parser.parse_args(argv)
  retained = apply_allocator_flag(args)

  optimizer = optax.adafactor(1e-3, momentum=0.9)
  batch = text_batch(args.batch, args.length, args.vocab)
  variants = [
      (remat, attention)
      for remat in args.remat.split(",")
      for attention in args.attention.split(",")
  ]
  config, params = build(args, "none", variants[0][1])
  n_params = sum(x.size for x in jax.tree.leaves(params))
  flops = analytic_flops(config.decoder, args.batch, args.length)
  times = {variant: step_seconds(*build(args, *variant), optimizer, batch) for variant in variants}
  peaks = gemm_peaks(2048, args.dtype)
  isa = cpu_env.effective_isa()
  nominal = cpu_env.nominal_peak(isa, jax.numpy.dtype(args.dtype).itemsize)
  best_name = max(peaks, key=peaks.get)

  print(
      f"decoder {n_params / 1e6:.1f}M parameters ({args.layers} layers, d_model "
      f"{args.d_model}, vocab {args.vocab}), batch {args.batch} × {args.length} tokens, "
      f"{args.dtype}, {jax.device_count()} {jax.devices()[0].platform} device(s), "
      f"{'freed memory retained' if retained else 'system allocator'}"
  )
  print(f"model FLOPs/step (analytic): {flops:.3e}")
  print(cpu_env.describe())
  print(torch_settings())
  print(
      f"peaks: nominal {isa} {(nominal or float('nan')) / 1e9:.1f} GFLOP/s "
      f"({cpu_env.cores()} cores × {cpu_env.cpu_mhz() or float('nan'):.0f} MHz × "
      f"{cpu_env.peak_flops_per_cycle(isa, jax.numpy.dtype(args.dtype).itemsize)} FLOP/cycle); "
      "2048² GEMM " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in peaks.items()) + " GFLOP/s"
  )
  for (remat, attention), (seconds, scratch, executed) in times.items():
    achieved = flops / seconds
    print(
        f"remat {remat:>5}, attention {attention:>9}: step {seconds * 1e3:7.1f} ms -> "
        f"{achieved / 1e9:6.1f} GFLOP/s; MFU {achieved / (nominal or float('nan')):.1%} of "
        f"nominal {isa}, {achieved / peaks[best_name]:.1%} of best GEMM ({best_name}), "
        f"{achieved / peaks['XLA']:.1%} of XLA GEMM; XLA scratch {scratch / 2**30:.2f} GiB; "
        f"compiled matmuls {executed:.3e} FLOPs ({executed / flops:.2f}× the model's)"
    )


if __name__ == "__main__":
  main()
