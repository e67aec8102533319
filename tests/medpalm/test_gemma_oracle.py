"""Gemma 2, Gemma 3 (text and multimodal) and PaliGemma 2 against transformers.

Tiny random models with a sliding window far shorter than the prompts, so local layers, the
global/local pattern (with a remainder past the last whole repetition) and the window ring-buffer
cache all matter: float32 logits within 1e-4, and greedy decoding token-identical to `generate`
for 32 new tokens.
"""

import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import torch
import transformers

from medpalm import convert
from medpalm.model import MedPalmMModel
from medpalm.models import configs
from medpalm.models.configs import MedPalmMConfig
from medpalm.models.medpalm_m import MedPalmM
from tests.medpalm.test_convert_oracle import (
    TEXT,
    TOL,
    VISION,
    _decoder_logits,
    _images,
    _max_diff,
    _pixel_values,
    _save,
    _tokens,
)

pytestmark = pytest.mark.oracle
WINDOW, NEW_TOKENS, EOS = 4, 32, 1
VOCAB = TEXT["vocab_size"]
IMAGE_ID = VOCAB - 1


def gemma2_config(**overrides):
  fields = dict(
      TEXT,
      num_hidden_layers=3,  # local, global, local: a remainder past the pattern
      num_key_value_heads=2,
      sliding_window=WINDOW,
      query_pre_attn_scalar=24,  # not head_dim: the query scale must come from the config
      attn_logit_softcapping=1.5,  # small caps so that both tanh's bend the random logits
      final_logit_softcapping=2.0,
  )
  return transformers.Gemma2Config(**{**fields, **overrides})


def gemma3_text_config(**overrides):
  fields = dict(
      TEXT,
      num_hidden_layers=7,  # 5 local, 1 global, then 1 local again
      num_key_value_heads=2,
      sliding_window=WINDOW,
      query_pre_attn_scalar=24,
      rope_parameters={
          "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6},
          "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
      },
  )
  return transformers.Gemma3TextConfig(**{**fields, **overrides})


def gemma3_config():
  return transformers.Gemma3Config(
      vision_config={**VISION, "model_type": "siglip_vision_model"},
      text_config=gemma3_text_config().to_dict(),
      mm_tokens_per_image=4,  # the 4x4 patch grid average-pooled 2x2
      image_token_index=IMAGE_ID,
      boi_token_index=VOCAB - 3,
      eoi_token_index=VOCAB - 2,
  )


def paligemma2_config():
  text = gemma2_config(sliding_window=8).to_dict()  # shorter than the 16 image rows
  return transformers.PaliGemmaConfig(
      vision_config=VISION,
      text_config=text,
      image_token_index=IMAGE_ID,
      projection_dim=TEXT["hidden_size"],
  )


def _generate(model, prompt, **kwargs):
  out = model.generate(
      input_ids=torch.tensor([prompt], dtype=torch.long),
      do_sample=False,
      max_new_tokens=NEW_TOKENS,
      eos_token_id=EOS,
      pad_token_id=0,
      **kwargs,
  )
  theirs = out[0, len(prompt) :].tolist()
  assert len(theirs) == NEW_TOKENS and EOS not in theirs  # the whole 32 tokens are compared
  return theirs


def _batch(prompts, extra=None):
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


# --- text decoders ------------------------------------------------------------------------------


@pytest.mark.parametrize("scan", [True, False])
@pytest.mark.parametrize("family", ["gemma2", "gemma3_text"], ids=["gemma2", "gemma3_text"])
def test_decoder_logits_match(tmp_path, family, scan):
  if family == "gemma2":
    ref = _save(transformers.Gemma2ForCausalLM(gemma2_config()), tmp_path)
  else:
    ref = _save(transformers.Gemma3ForCausalLM(gemma3_text_config()), tmp_path)
  config, params, report = convert.import_gemma(tmp_path, scan_layers=scan)
  assert report.unused == [] and config.sliding_window == WINDOW
  assert config.layer_types == (
      ("local", "global") if family == "gemma2" else ("local",) * 5 + ("global",)
  )
  tokens = _tokens(2, 4 * WINDOW + 3)  # prompts 4.75x the window
  want = ref(input_ids=torch.tensor(tokens, dtype=torch.long)).logits
  assert _max_diff(_decoder_logits(config, params, tokens), want) <= TOL


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gemma2", "gemma3_text"])
def test_decoder_greedy_matches_generate(tmp_path, family):
  if family == "gemma2":
    ref = _save(transformers.Gemma2ForCausalLM(gemma2_config()), tmp_path)
  else:
    ref = _save(transformers.Gemma3ForCausalLM(gemma3_text_config()), tmp_path)
  decoder, params, _ = convert.import_gemma(tmp_path)
  config = MedPalmMConfig("text", configs.get_config("tiny").vision, decoder, IMAGE_ID)
  model = MedPalmMModel(MedPalmM(config), seqio.PassThroughVocabulary(VOCAB, EOS))
  rng = np.random.default_rng(3)
  prompts = [rng.integers(2, VOCAB - 4, n).tolist() for n in (9, 3 * WINDOW + 2, 6)]
  decodes = model.predict_batch(params={"decoder": params}, batch=_batch(prompts))
  for row, prompt in enumerate(prompts):
    assert np.asarray(decodes[row])[:NEW_TOKENS].tolist() == _generate(ref, prompt)


# --- PaliGemma 2 ----------------------------------------------------------------------------------


def test_paligemma2_logits_match(tmp_path):
  ref = _save(transformers.PaliGemmaForConditionalGeneration(paligemma2_config()), tmp_path)
  config, params, report = convert.import_paligemma(tmp_path)
  assert config.decoder.post_norms and config.decoder.final_logit_softcap == 2.0
  assert not [n for n in report.unused if ".head." not in n]  # only SigLIP's MAP head
  m, prefix, length = config.num_image_tokens, 22, 34  # window 8 < 16 image rows < prefix
  tokens = _tokens(2, length, IMAGE_ID)
  tokens[:, :m] = IMAGE_ID
  token_type = np.zeros_like(tokens)
  token_type[:, prefix:] = 1
  images = _images(2, VISION["image_size"])
  want = ref(
      input_ids=torch.tensor(tokens, dtype=torch.long),
      pixel_values=_pixel_values(images),
      token_type_ids=torch.tensor(token_type, dtype=torch.long),
  ).logits
  ours = MedPalmM(config).apply(
      {"params": params},
      jnp.asarray(tokens),
      images=jnp.asarray(images)[:, None],
      decoder_causal_attention=jnp.asarray(1 - token_type),
  )
  assert _max_diff(ours, want) <= TOL


@pytest.mark.slow
def test_paligemma2_greedy_matches_generate(tmp_path):
  ref = _save(transformers.PaliGemmaForConditionalGeneration(paligemma2_config()), tmp_path)
  config, params, _ = convert.import_paligemma(tmp_path)
  model = MedPalmMModel(
      MedPalmM(config), seqio.PassThroughVocabulary(VOCAB, EOS), prefix_bidirectional=True
  )
  rng = np.random.default_rng(1)
  m = config.num_image_tokens
  prompts = [[IMAGE_ID] * m + rng.integers(2, VOCAB - 4, n).tolist() for n in (4, 11)]
  images = _images(2, VISION["image_size"], seed=2)
  batch = _batch(prompts, {"images": jnp.asarray(images)[:, None]})
  decodes = model.predict_batch(params, batch)
  for row, prompt in enumerate(prompts):
    theirs = _generate(
        ref,
        prompt,
        pixel_values=_pixel_values(images[row : row + 1]),
        token_type_ids=torch.zeros((1, len(prompt)), dtype=torch.long),
    )
    assert np.asarray(decodes[row])[:NEW_TOKENS].tolist() == theirs


# --- Gemma 3 multimodal (MedGemma's architecture) -------------------------------------------------


def _gemma3_prompt(rng, before, after):
  return (
      rng.integers(2, VOCAB - 4, before).tolist()
      + [IMAGE_ID] * 4
      + rng.integers(2, VOCAB - 4, after).tolist()
  )


def test_gemma3_multimodal_logits_match(tmp_path):
  ref = _save(transformers.Gemma3ForConditionalGeneration(gemma3_config()), tmp_path)
  config, params, report = convert.import_gemma3(tmp_path)
  assert config.num_image_tokens == 4 and config.image_attention == "bidirectional"
  assert not [n for n in report.unused if ".head." not in n]
  rng = np.random.default_rng(4)
  tokens = np.asarray([_gemma3_prompt(rng, 3, 14), _gemma3_prompt(rng, 9, 8)], np.int32)
  images = _images(2, VISION["image_size"], seed=4)
  want = ref(
      input_ids=torch.tensor(tokens, dtype=torch.long),
      pixel_values=_pixel_values(images),
      token_type_ids=torch.tensor(tokens == IMAGE_ID, dtype=torch.long),
  ).logits
  ours = MedPalmM(config).apply(
      {"params": params}, jnp.asarray(tokens), images=jnp.asarray(images)[:, None]
  )
  assert _max_diff(ours, want) <= TOL


@pytest.mark.slow
def test_gemma3_multimodal_greedy_matches_generate(tmp_path):
  ref = _save(transformers.Gemma3ForConditionalGeneration(gemma3_config()), tmp_path)
  config, params, _ = convert.import_gemma3(tmp_path)
  model = MedPalmMModel(MedPalmM(config), seqio.PassThroughVocabulary(VOCAB, EOS))
  rng = np.random.default_rng(5)
  prompts = [_gemma3_prompt(rng, 2, 5), _gemma3_prompt(rng, 6, 11)]
  images = _images(2, VISION["image_size"], seed=5)
  decodes = model.predict_batch(params, _batch(prompts, {"images": jnp.asarray(images)[:, None]}))
  for row, prompt in enumerate(prompts):
    theirs = _generate(
        ref,
        prompt,
        pixel_values=_pixel_values(images[row : row + 1]),
        token_type_ids=torch.tensor([[int(t == IMAGE_ID) for t in prompt]], dtype=torch.long),
    )
    assert np.asarray(decodes[row])[:NEW_TOKENS].tolist() == theirs


def test_window_cache_steps_match_the_full_forward(tmp_path):
  """Teacher-forced: every cached decoding step's logits (ring buffers wrapping several times,
  rows of different prompt lengths in one batch) equal the uncached forward pass's, which the
  tests above tie to transformers."""
  _save(transformers.Gemma2ForCausalLM(gemma2_config()), tmp_path)
  decoder, params, _ = convert.import_gemma(tmp_path)
  config = MedPalmMConfig("text", configs.get_config("tiny").vision, decoder, IMAGE_ID)
  model = MedPalmMModel(MedPalmM(config), seqio.PassThroughVocabulary(VOCAB, EOS))
  lengths, steps = (9, 3 * WINDOW + 2, 6), 3 * WINDOW
  rows = _tokens(3, max(lengths) + steps, VOCAB - 4, seed=7)
  prompts = [row[:n].tolist() for row, n in zip(rows, lengths)]
  batch = _batch(prompts)
  total = batch["decoder_input_tokens"].shape[1]
  start = model.prefill({"decoder": params}, batch, total, jnp.asarray(lengths, jnp.int32))
  want = np.asarray(_decoder_logits(decoder, params, rows))
  got = [np.asarray(start.logits)]
  cache, positions = start.cache, np.asarray(lengths)
  for i in range(steps):
    tokens = rows[np.arange(3), positions + i][:, None]
    logits, cache = model.extend(
        {"decoder": params}, jnp.asarray(tokens), jnp.asarray(positions + i)[:, None], cache
    )
    got.append(np.asarray(logits))
  for i, step in enumerate(got):
    expected = want[np.arange(3), positions - 1 + i]
    assert np.max(np.abs(step - expected)) <= TOL, i
