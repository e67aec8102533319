"""One training step, medpalm vs transformers, on the same PaliGemma-architecture model.

    .venv/bin/python benchmarks/train_vs_transformers.py

A random PaliGemma (SigLIP + projector + Gemma) is built in transformers, saved, and imported
into medpalm (`convert.import_paligemma`), so both sides hold the same weights. Both run the same
work: a batch of images + text (image tokens and prompt as bidirectional prefix, loss on the
suffix), forward + backward + AdamW update. Prints tokens/s and the ratio ours / theirs (target
≥ 1.5×), after checking that both compute the same loss.

medpalm is timed once per remat policy in `--remat` (`dots` recomputes elementwise work in the
backward pass, the faster choice on a CPU; the matmuls and so the work are the same), each with
logits at the loss positions only (`loss_positions`, as `gin_configs/runs/train.gin` trains: the
output head and softmax skip the prompt, whose logits carry no loss) and, with
`--all_positions`, also over every position as transformers computes them. The glibc
setting of `common.retain_freed_memory` is process-wide, so it applies to both sides.

Each side's matmul work is counted, torch's by its `FlopCounterMode`, ours from the compiled
program's HLO (`common.matmul_flops`), and printed with the rate each reached and the ceiling it
sets: the time medpalm's matmuls alone would take at XLA's 2048² GEMM rate in this process, so
the most medpalm can reach on this machine without doing less work. On the AVX2 machine of
docs/PERFORMANCE.md that ceiling is 1.49-1.68× (against its two transformers runs): 1.5× would
take the whole step at 89-100 % of the best GEMM rate there.

Each side is timed best-of-`--repeats`, the two interleaved step by step, so that load from
other processes falls on both alike. To restrict both sides to AVX2 on an AVX-512 machine:
`XLA_FLAGS=--xla_cpu_max_isa=AVX2 ATEN_CPU_CAPABILITY=avx2 .venv/bin/python benchmarks/...`
(the first lines printed say which ISA each side ran with).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Runnable as `python benchmarks/<name>.py` and as `python -m benchmarks.<name>`: the shared
# `common` module and the repository on the import path.
sys.path[:0] = [
    os.path.dirname(os.path.abspath(__file__)),
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import seqio  # noqa: E402

from common import (  # noqa: E402
    RNG,
    add_allocator_flag,
    apply_allocator_flag,
    cpu_env,
    gemm_peaks,
    init_state,
    loss_of,
    matmul_flops,
    torch_settings,
    train_step,
)
from medpalm import convert  # noqa: E402
from medpalm.model import MedPalmMModel  # noqa: E402
from medpalm.models.medpalm_m import MedPalmM  # noqa: E402


def interleaved_best(fns: dict, repeats: int) -> dict:
  """{key: best wall seconds of fns[key]()} over `repeats` rounds that run every fn once in turn
  (after one warm-up each), so that a burst of load from elsewhere hits all of them."""
  import time

  for fn in fns.values():
    fn()
  best = {key: float("inf") for key in fns}
  for _ in range(repeats):
    for key, fn in fns.items():
      start = time.perf_counter()
      fn()
      best[key] = min(best[key], time.perf_counter() - start)
  return best


def count_cpu_attention(torch) -> None:
  """torch's `FlopCounterMode` has formulas for its GPU attention kernels but none for the CPU
  flash-attention kernels `scaled_dot_product_attention` runs here, whose QKᵀ and PV would go
  uncounted; this gives each CPU kernel the formula of its GPU counterpart (same arguments)."""
  counter, aten = torch.utils.flop_counter, torch.ops.aten
  for cpu, gpu in (
      ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention"),
      (
          "_scaled_dot_product_flash_attention_for_cpu_backward",
          "_scaled_dot_product_flash_attention_backward",
      ),
  ):
    if hasattr(aten, cpu):
      counter.flop_registry.setdefault(
          getattr(aten, cpu), counter.flop_registry[getattr(aten, gpu)]
      )


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--text", type=int, default=128, help="text tokens after the image")
  parser.add_argument("--layers", type=int, default=6)
  parser.add_argument("--d_model", type=int, default=512)
  parser.add_argument("--vocab", type=int, default=16384)
  parser.add_argument(
      "--remat",
      default="none,dots",
      help="comma-separated remat policies for medpalm, each measured",
  )
  parser.add_argument(
      "--all_positions",
      action="store_true",
      help="also time medpalm with logits at every position (as transformers computes them)",
  )
  parser.add_argument("--repeats", type=int, default=5, help="timed steps per side (best kept)")
  add_allocator_flag(parser)
  args = parser.parse_args(argv)
  import torch  # after parsing: `--help` answers without loading torch
  import torch.utils.flop_counter
  import transformers

  retained = apply_allocator_flag(args)
  torch.set_num_threads(os.cpu_count() or 1)
  torch.manual_seed(0)

  config = transformers.PaliGemmaConfig(
      vision_config=dict(
          hidden_size=256,
          intermediate_size=1024,
          num_hidden_layers=4,
          num_attention_heads=4,
          image_size=224,
          patch_size=14,
      ),
      text_config=dict(
          vocab_size=args.vocab,
          hidden_size=args.d_model,
          intermediate_size=4 * args.d_model,
          num_hidden_layers=args.layers,
          num_attention_heads=args.d_model // 64,
          head_dim=64,
          num_key_value_heads=1,
      ),
      image_token_index=args.vocab - 1,
      projection_dim=args.d_model,
  )
  reference = transformers.PaliGemmaForConditionalGeneration(config).train()
  with tempfile.TemporaryDirectory() as path:
    reference.save_pretrained(path)
    ours_config, params, _ = convert.import_paligemma(path)

  rng = np.random.default_rng(0)
  m = ours_config.num_image_tokens
  length = m + args.text
  prefix = m + args.text // 2
  tokens = rng.integers(2, args.vocab - 1, (args.batch, length)).astype(np.int64)
  tokens[:, :m] = ours_config.image_token_id
  images = rng.integers(0, 256, (args.batch, 224, 224, 3), dtype=np.uint8)
  targets = np.roll(tokens, -1, axis=1)
  weights = np.zeros((args.batch, length), np.float32)
  weights[:, prefix - 1 : length - 1] = 1  # predict every suffix token
  causal = np.zeros((args.batch, length), np.int32)
  causal[:, :prefix] = 1
  batch = {
      "decoder_input_tokens": jnp.asarray(tokens, jnp.int32),
      "decoder_target_tokens": jnp.asarray(targets, jnp.int32),
      "decoder_loss_weights": jnp.asarray(weights),
      "decoder_causal_attention": jnp.asarray(causal),
      "images": jnp.asarray(images)[:, None],
      "image_mask": jnp.ones((args.batch, 1), bool),
  }

  optimizer = optax.adamw(1e-4)

  def ours_with(remat: str, loss_positions: int | None):
    """medpalm's step with `remat` in both towers (recomputation is extra work for us only),
    logits at `loss_positions` per row (None: every position), and its compiled matmul FLOPs."""
    tower = lambda c: dataclasses.replace(c, remat_policy=remat)
    config = dataclasses.replace(
        ours_config, vision=tower(ours_config.vision), decoder=tower(ours_config.decoder)
    )
    model = MedPalmMModel(
        MedPalmM(config),
        seqio.PassThroughVocabulary(args.vocab, 1),
        z_loss=0.0,
        loss_normalizing_factor="NUM_REAL_TARGET_TOKENS",
        prefix_bidirectional=True,
        loss_positions=loss_positions,
    )
    model.validate_batch(batch)
    state = [init_state(optimizer, jax.tree.map(jnp.copy, params))]
    step = train_step(model).lower(state[0], batch, RNG).compile()

    def ours():
      state[0], metrics, _ = step(state[0], batch, RNG)
      return loss_of(metrics)

    return ours, matmul_flops(step)

  torch_opt = torch.optim.AdamW(reference.parameters(), lr=1e-4)
  labels = torch.tensor(np.where(causal == 1, -100, tokens), dtype=torch.long)
  torch_inputs = dict(
      input_ids=torch.tensor(tokens),
      labels=labels,
      pixel_values=torch.tensor(images.astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2),
      token_type_ids=torch.tensor(1 - causal, dtype=torch.long),
  )

  def theirs():
    torch_opt.zero_grad()
    loss = reference(**torch_inputs).loss
    loss.backward()
    torch_opt.step()
    return loss.item()

  suffix = length - prefix  # the weighted positions of every row
  variants = [(remat, suffix) for remat in args.remat.split(",")]
  if args.all_positions:
    variants += [(remat, None) for remat in args.remat.split(",")]
  ours, flops = {}, {}
  for remat, k in variants:
    name = f"remat {remat:>5}, logits at {'all' if k is None else k:>3} positions"
    ours[name], flops[name] = ours_with(remat, k)
  # Same weights: the same loss before any update. torch counts its own matmul FLOPs meanwhile.
  first_ours = {r: f() for r, f in ours.items()}
  count_cpu_attention(torch)
  with torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
    first_theirs = theirs()
  flops_theirs = counter.get_total_flops()
  timed = {**{("medpalm", r): f for r, f in ours.items()}, ("transformers", ""): theirs}
  best = interleaved_best(timed, args.repeats)
  t_ours = {name: best[("medpalm", name)] for name in ours}
  t_theirs = best[("transformers", "")]
  peaks = gemm_peaks(2048)
  work = args.batch * length
  print(
      f"PaliGemma architecture: SigLIP 4×256 at 224² ({m} image tokens) + Gemma "
      f"{args.layers}×{args.d_model}, vocab {args.vocab}; batch {args.batch} × {length} "
      f"positions; AdamW; {jax.device_count()} CPU device(s), torch threads "
      f"{torch.get_num_threads()}; "
      f"{'freed memory retained' if retained else 'system allocator'} (both sides)"
  )
  print(cpu_env.describe())
  print(torch_settings())
  print(
      f"first-step loss: transformers {first_theirs:.5f}, medpalm "
      + ", ".join(f"{loss:.5f} ({name})" for name, loss in first_ours.items())
  )
  print(
      "2048² float32 GEMM here: "
      + ", ".join(f"{lib} {rate / 1e9:.1f}" for lib, rate in peaks.items())
      + " GFLOP/s"
  )
  print(
      f"transformers (logits at all {length} positions) {work / t_theirs:9.1f} tokens/s "
      f"({t_theirs * 1e3:.0f} ms/step); matmuls {flops_theirs / 1e9:.1f} GFLOP/step "
      f"(torch's FlopCounterMode), {flops_theirs / t_theirs / 1e9:.1f} GFLOP/s"
  )
  for name, seconds in t_ours.items():
    print(
        f"medpalm, {name}    {work / seconds:9.1f} tokens/s ({seconds * 1e3:.0f} "
        f"ms/step): {t_theirs / seconds:.2f}x transformers (target >= 1.5x)"
    )
    # The ceiling: this step's matmuls alone, every one at XLA's large-GEMM rate, nothing else.
    floor = flops[name] / peaks["XLA"]
    print(
        f"  matmuls {flops[name] / 1e9:.1f} GFLOP/step (compiled HLO), "
        f"{flops[name] / seconds / 1e9:.1f} GFLOP/s; at XLA's 2048² rate they alone take "
        f"{floor * 1e3:.0f} ms: at most {t_theirs / floor:.2f}x transformers on this machine"
    )


if __name__ == "__main__":
  main()
