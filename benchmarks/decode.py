"""Decoding speed: KV-cache decoding vs full recomputation vs transformers `generate`, one run.

    .venv/bin/python benchmarks/decode.py [--layers 4 --d_model 256 --batch 4 --new_tokens 64]

One random PaLM-block checkpoint (Cohere architecture in transformers: parallel block, MQA,
SwiGLU, tied embeddings) is saved once and loaded by both sides, so the work is identical: same
weights, same prompts, the same number of greedy tokens (no EOS can stop early). Prints tokens/s
and the ratios, then decode time against output length (it must grow linearly: the cache makes
each step cost the same order of work).
"""

from __future__ import annotations

import argparse
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
import seqio  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from common import best_time, cpu_env, torch_settings  # noqa: E402
from medpalm.models import configs  # noqa: E402
from medpalm import convert
from medpalm.models.configs import MedPalmMConfig  # noqa: E402
from medpalm.model import MedPalmMModel  # noqa: E402
from medpalm.models.medpalm_m import MedPalmM  # noqa: E402


def build(args, path):
  hf_config = transformers.CohereConfig(
      vocab_size=args.vocab,
      hidden_size=args.d_model,
      intermediate_size=4 * args.d_model,
      num_hidden_layers=args.layers,
      num_attention_heads=args.d_model // 64,
      head_dim=64,
      num_key_value_heads=1,
      tie_word_embeddings=True,
      logit_scale=args.d_model**-0.5,
  )
  torch.manual_seed(0)
  reference = transformers.CohereForCausalLM(hf_config).eval()
  reference.save_pretrained(path)
  decoder, params, _ = convert.import_cohere(path)
  config = MedPalmMConfig(
      "bench", configs.get_config("tiny").vision, decoder, image_token_id=args.vocab - 1
  )
  never = args.vocab  # an id no step can produce: every row decodes exactly new_tokens
  model = MedPalmMModel(MedPalmM(config), seqio.PassThroughVocabulary(args.vocab + 1, never))
  return reference, model, {"decoder": params}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--d_model", type=int, default=256)
  parser.add_argument("--vocab", type=int, default=4096)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--prompt", type=int, default=64)
  parser.add_argument("--new_tokens", type=int, default=64)
  args = parser.parse_args(argv)
  print(cpu_env.describe())
  print(torch_settings())
  torch.set_num_threads(os.cpu_count() or 1)

  with tempfile.TemporaryDirectory() as path:
    reference, model, params = build(args, path)
  rng = np.random.default_rng(0)
  prompts = rng.integers(2, args.vocab - 1, (args.batch, args.prompt)).astype(np.int32)
  total = args.prompt + args.new_tokens

  def batch_for(new_tokens):
    length = args.prompt + new_tokens
    tokens = np.zeros((args.batch, length), np.int32)
    tokens[:, : args.prompt] = prompts
    causal = np.zeros_like(tokens)
    causal[:, : args.prompt] = 1
    return {
        "decoder_input_tokens": jnp.asarray(tokens),
        "decoder_causal_attention": jnp.asarray(causal),
    }

  predict = jax.jit(model.predict_batch)
  cached = lambda n: jax.block_until_ready(predict(params, batch_for(n)))

  apply = jax.jit(lambda p, tokens: MedPalmM(model.config).apply({"params": p}, tokens))

  def recompute():
    """No cache: a full forward pass over the whole (fixed-length) sequence per new token."""
    tokens = jnp.asarray(batch_for(args.new_tokens)["decoder_input_tokens"])
    for i in range(args.new_tokens):
      logits = apply(params, tokens)[:, args.prompt - 1 + i]
      tokens = tokens.at[:, args.prompt + i].set(jnp.argmax(logits, -1).astype(jnp.int32))
    return jax.block_until_ready(tokens)

  def hf_generate():
    with torch.no_grad():
      return reference.generate(
          input_ids=torch.tensor(prompts, dtype=torch.long),
          do_sample=False,
          max_new_tokens=args.new_tokens,
          min_new_tokens=args.new_tokens,
          eos_token_id=None,
          pad_token_id=0,
      )

  ours = np.asarray(cached(args.new_tokens))[:, : args.new_tokens]
  theirs = hf_generate()[:, args.prompt :].numpy()
  same = float(np.mean(ours == theirs))
  work = args.batch * args.new_tokens
  t_cached = best_time(lambda: cached(args.new_tokens))
  t_recompute = best_time(recompute, repeats=1)
  t_hf = best_time(hf_generate)
  print(
      f"PaLM-block decoder: {args.layers} layers, d_model {args.d_model}, vocab {args.vocab}; "
      f"batch {args.batch}, prompt {args.prompt}, {args.new_tokens} new tokens "
      f"(total {total}); {jax.device_count()} CPU device(s), torch threads "
      f"{torch.get_num_threads()}"
  )
  print(f"greedy tokens identical to transformers: {same:.1%}")
  print(f"medpalm cached decoding   {work / t_cached:9.1f} tokens/s")
  print(f"medpalm full recompute    {work / t_recompute:9.1f} tokens/s")
  print(f"transformers generate     {work / t_hf:9.1f} tokens/s")
  print(f"ratio cached / recompute       {t_recompute / t_cached:6.2f}x")
  print(f"ratio cached / transformers    {t_hf / t_cached:6.2f}x")
  print("decode time vs output length (cached):")
  lengths = [args.new_tokens // 4, args.new_tokens // 2, args.new_tokens, 2 * args.new_tokens]
  times = [best_time(lambda n=n: cached(n)) for n in lengths]
  for n, t in zip(lengths, times):
    print(f"  {n:5d} tokens  {t * 1e3:8.1f} ms  {t / n * 1e3:6.2f} ms/token")
  slope, intercept = np.polyfit(lengths, times, 1)
  fitted = np.polyval([slope, intercept], lengths)
  r2 = 1 - np.sum((np.array(times) - fitted) ** 2) / np.sum((times - np.mean(times)) ** 2)
  print(f"  linear fit: {slope * 1e3:.2f} ms/token + {intercept * 1e3:.1f} ms, R^2 = {r2:.4f}")


if __name__ == "__main__":
  main()
