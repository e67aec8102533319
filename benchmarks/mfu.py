"""Training-step model-FLOPs utilization against a matmul peak measured in the same process.

    .venv/bin/python benchmarks/mfu.py                      # ~53M-parameter decoder, seq 512, CPU
    .venv/bin/python benchmarks/mfu.py --dtype bfloat16 --d_model 2048 --layers 16 --batch 16

Model FLOPs per step are analytic (6 × matmul parameters × tokens + 12 × layers × T × attention
width per token for QKᵀ and PV, forward and backward) and cross-checked against XLA's
`cost_analysis`. MFU = model FLOPs / step time / peak, where the peak is a large square matmul
of the same dtype timed in this process, on this machine, now.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import flax.linen as nn  # noqa: E402
import optax  # noqa: E402

from common import best_time, matmul_peak, text_batch, train_step_fn  # noqa: E402
from medpalm import configs  # noqa: E402
from medpalm.models import medpalm_m  # noqa: E402
from medpalm.models.blocks import unstack_layers  # noqa: E402


def blocks_unstacked(decoder_params: dict, layers: int) -> dict:
  return {**decoder_params, "stack": unstack_layers(decoder_params["stack"], layers)}


def analytic_flops(c, batch: int, length: int) -> float:
  """Forward + backward FLOPs of the decoder's matmuls for one step (PaLM's MFU accounting)."""
  attn_width = c.num_heads * c.head_dim
  per_layer = (2 * c.d_model * attn_width + 2 * c.d_model * c.num_kv_heads * c.head_dim
               + (3 if c.gated_mlp else 2) * c.d_model * c.d_ff)
  matmul_params = c.num_layers * per_layer + c.vocab_size * c.d_model  # output logits matmul
  tokens = batch * length
  return 6 * matmul_params * tokens + 12 * c.num_layers * length * attn_width * tokens


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--layers", type=int, default=12)
  parser.add_argument("--d_model", type=int, default=512)
  parser.add_argument("--vocab", type=int, default=16384)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--length", type=int, default=512)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--remat", default="none")
  args = parser.parse_args(argv)

  base = configs.get_config("tiny", dtype=args.dtype, remat_policy=args.remat)
  heads = args.d_model // 64
  decoder = dataclasses.replace(base.decoder, num_layers=args.layers, d_model=args.d_model,
                                num_heads=heads, head_dim=64, d_ff=4 * args.d_model,
                                vocab_size=args.vocab)
  config = dataclasses.replace(base, decoder=decoder, image_token_id=args.vocab - 1)
  params = nn.meta.unbox(medpalm_m.MedPalmM(config).init(
      jax.random.key(0), text_batch(1, 8, args.vocab)["decoder_input_tokens"]))["params"]
  n_params = sum(x.size for x in jax.tree.leaves(params))
  optimizer = optax.adafactor(1e-3, momentum=0.9)
  opt_state = optimizer.init(params)
  batch = text_batch(args.batch, args.length, args.vocab)
  step = train_step_fn(config, optimizer)
  # XLA counts a loop body once, so the cross-check compiles the unrolled twin (not run).
  unrolled = dataclasses.replace(config, decoder=dataclasses.replace(config.decoder,
                                                                     scan_layers=False))
  unrolled_params = {"decoder": blocks_unstacked(params["decoder"], args.layers)}
  cost = train_step_fn(unrolled, optimizer).lower(
      unrolled_params, optimizer.init(unrolled_params), batch).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  xla_flops = float(cost.get("flops", float("nan")))

  state = {"params": params, "opt": opt_state}

  def run():
    state["params"], state["opt"], loss = step(state["params"], state["opt"], batch)
    jax.block_until_ready(loss)

  step_time = best_time(run, repeats=3)
  peak = matmul_peak(2048, jax.numpy.dtype(args.dtype))
  flops = analytic_flops(config.decoder, args.batch, args.length)
  print(f"decoder {n_params / 1e6:.1f}M parameters ({args.layers} layers, d_model "
        f"{args.d_model}, vocab {args.vocab}), batch {args.batch} × {args.length} tokens, "
        f"{args.dtype}, remat {args.remat}, {jax.device_count()} {jax.devices()[0].platform} "
        f"device(s)")
  print(f"model FLOPs/step: analytic {flops:.3e}, XLA cost_analysis {xla_flops:.3e} "
        f"(ratio {xla_flops / flops:.2f})")
  print(f"step time {step_time * 1e3:.1f} ms -> {flops / step_time / 1e9:.1f} GFLOP/s; "
        f"matmul peak {peak / 1e9:.1f} GFLOP/s")
  print(f"MFU = {flops / step_time / peak:.1%} of the in-process matmul peak")


if __name__ == "__main__":
  main()
