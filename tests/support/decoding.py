"""Shared set-up for the decoding tests: a small MedPalmMModel and multimodal prompts."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import seqio

from medpalm.models import configs
from medpalm.model import MedPalmMModel
from medpalm.models import medpalm_m
from medpalm.models.medpalm_m import MedPalmM

EOS = 1


def small_config(**runtime):
  """tiny with 28-pixel images (4 image tokens) so decoding tests stay fast."""
  c = configs.get_config("tiny", **runtime)
  return dataclasses.replace(c, vision=dataclasses.replace(c.vision, image_size=28))


def make_model(config=None, **kwargs):
  config = config or small_config()
  vocab = seqio.PassThroughVocabulary(config.decoder.vocab_size, eos_id=EOS)
  model = MedPalmMModel(MedPalmM(config), vocab, **kwargs)
  params = nn.meta.unbox(medpalm_m.init(config, jax.random.key(0)))["params"]
  # Scale the embedding down so that logits are not dominated by one token (varied decodes).
  params["decoder"]["embedding"] = params["decoder"]["embedding"] * 0.3
  return model, params


def prompt_batch(config, prompt_lengths=(9, 14), image_at=(2, 5), length=24, seed=0):
  """Prompts of different lengths with one image mid-prompt; targets after the prompt."""
  rng = np.random.default_rng(seed)
  m, size = config.num_image_tokens, config.vision.image_size
  batch = len(prompt_lengths)
  tokens = rng.integers(2, 500, (batch, length)).astype(np.int32)
  causal = np.zeros((batch, length), np.int32)
  for row, (p, at) in enumerate(zip(prompt_lengths, image_at)):
    tokens[row, at : at + m] = config.image_token_id
    causal[row, :p] = 1
  targets = np.roll(tokens, -1, axis=1)
  targets[:, -1] = 0
  weights = (1 - causal).astype(np.float32)
  weights[:, -1] = 0
  return {
      "decoder_input_tokens": jnp.asarray(tokens),
      "decoder_target_tokens": jnp.asarray(targets),
      "decoder_causal_attention": jnp.asarray(causal),
      "decoder_loss_weights": jnp.asarray(weights),
      "images": jnp.asarray(rng.integers(0, 256, (batch, 1, size, size, 3), np.uint8)),
      "image_mask": jnp.ones((batch, 1), bool),
  }
