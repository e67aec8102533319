"""Greedy decoding of imported checkpoints equals transformers' `generate(do_sample=False)`."""

import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import torch
import transformers

from medpalm.models import configs
from medpalm import convert
from medpalm.models.configs import MedPalmMConfig
from medpalm.model import MedPalmMModel
from medpalm.models.medpalm_m import MedPalmM
from tests.medpalm.test_convert_oracle import TEXT, VISION, _images, _pixel_values, _save

pytestmark = pytest.mark.oracle
EOS, NEW_TOKENS = 1, 8


def _batch(prompts, extra=None):
  """Prompts of different lengths, left-aligned, room for NEW_TOKENS after the longest."""
  length = max(map(len, prompts)) + NEW_TOKENS
  tokens = np.zeros((len(prompts), length), np.int32)
  causal = np.zeros_like(tokens)
  for row, prompt in enumerate(prompts):
    tokens[row, : len(prompt)] = prompt
    causal[row, : len(prompt)] = 1
  return {
      "decoder_input_tokens": jnp.asarray(tokens),
      "decoder_causal_attention": jnp.asarray(causal),
      **(extra or {}),
  }


def _reference(model, prompt, **kwargs):
  out = model.generate(
      input_ids=torch.tensor([prompt], dtype=torch.long),
      do_sample=False,
      max_new_tokens=NEW_TOKENS,
      eos_token_id=EOS,
      pad_token_id=0,
      **kwargs
  )
  return out[0, len(prompt) :].tolist()


def _assert_same_prefix(ours, theirs):
  """Equal over what transformers produced (it stops at EOS; we pad with zeros after it)."""
  ours = np.asarray(ours)[: len(theirs)].tolist()
  assert ours == theirs
  assert EOS not in theirs[:-1]


def test_greedy_matches_generate_for_a_palm_style_decoder(tmp_path):
  cfg = transformers.CohereConfig(
      **TEXT,
      num_key_value_heads=1,
      tie_word_embeddings=True,
      logit_scale=TEXT["hidden_size"] ** -0.5
  )
  ref = _save(transformers.CohereForCausalLM(cfg), tmp_path)
  decoder, params, _ = convert.import_cohere(tmp_path)
  config = MedPalmMConfig(
      "cohere", configs.get_config("tiny").vision, decoder, image_token_id=TEXT["vocab_size"] - 1
  )
  model = MedPalmMModel(MedPalmM(config), seqio.PassThroughVocabulary(TEXT["vocab_size"], EOS))
  rng = np.random.default_rng(0)
  prompts = [rng.integers(2, 90, n).tolist() for n in (5, 11, 8)]
  decodes = model.predict_batch(params={"decoder": params}, batch=_batch(prompts))
  for row, prompt in enumerate(prompts):
    _assert_same_prefix(decodes[row], _reference(ref, prompt))


def test_greedy_matches_generate_for_paligemma(tmp_path):
  cfg = transformers.PaliGemmaConfig(
      vision_config=VISION,
      text_config={**TEXT, "num_key_value_heads": 1},
      image_token_index=TEXT["vocab_size"] - 1,
      projection_dim=TEXT["hidden_size"],
  )
  ref = _save(transformers.PaliGemmaForConditionalGeneration(cfg), tmp_path)
  config, params, _ = convert.import_paligemma(tmp_path)
  model = MedPalmMModel(
      MedPalmM(config),
      seqio.PassThroughVocabulary(TEXT["vocab_size"], EOS),
      prefix_bidirectional=True,
  )
  rng = np.random.default_rng(1)
  m = config.num_image_tokens
  prompts = [[config.image_token_id] * m + rng.integers(2, 90, n).tolist() for n in (4, 9)]
  images = _images(2, VISION["image_size"], seed=2)
  batch = _batch(
      prompts, {"images": jnp.asarray(images)[:, None], "image_mask": jnp.ones((2, 1), bool)}
  )
  decodes = model.predict_batch(params, batch)
  for row, prompt in enumerate(prompts):
    theirs = _reference(
        ref,
        prompt,
        pixel_values=_pixel_values(images[row : row + 1]),
        token_type_ids=torch.zeros((1, len(prompt)), dtype=torch.long),
    )
    _assert_same_prefix(decodes[row], theirs)
