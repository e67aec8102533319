"""Our modules against transformers' reference implementations: same weights, same logits.

Each reference model is built with random weights from a tiny config, saved with
`save_pretrained`, imported by `medpalm.convert`, and compared in float32.
"""

import numpy as np
import pytest

import jax.numpy as jnp
import torch  # the [test] extra installs the CPU build; CI always has it
import transformers

from medpalm import convert
from medpalm.models import multimodal
from medpalm.models.medpalm_m import MedPalmM
from medpalm.models.palm import PalmDecoder
from medpalm.models.vit import VisionTransformer

pytestmark = pytest.mark.oracle
TOL = 1e-4
TEXT = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    head_dim=16,
)
VISION = dict(
    hidden_size=48,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=56,
    patch_size=14,
)


def _save(model, tmp_path):
  torch.manual_seed(0)
  with torch.no_grad():  # random, non-trivial weights everywhere (norm scales included)
    for p in model.parameters():
      p.copy_(torch.randn_like(p) * 0.2)
  model.eval()
  model.save_pretrained(tmp_path)
  return model


def _decoder_logits(config, params, tokens):
  positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
  mask = multimodal.attention_mask(tokens.shape[1])
  return PalmDecoder(config).apply({"params": params}, jnp.asarray(tokens), positions, mask)


def _tokens(batch=2, length=12, vocab=96, seed=0):
  return np.random.default_rng(seed).integers(1, vocab, (batch, length)).astype(np.int32)


def _max_diff(ours, theirs):
  return float(np.max(np.abs(np.asarray(ours) - theirs.detach().numpy())))


def test_palm_decoder_matches_cohere(tmp_path):
  """PaLM block (parallel, shared bias-free LayerNorm, SwiGLU, MQA, tied, 1/sqrt(d) logits)."""
  cfg = transformers.CohereConfig(
      **TEXT,
      num_key_value_heads=1,
      tie_word_embeddings=True,
      logit_scale=TEXT["hidden_size"] ** -0.5
  )
  ref = _save(transformers.CohereForCausalLM(cfg), tmp_path)
  config, params, report = convert.import_cohere(tmp_path)
  assert config.parallel_block and config.num_kv_heads == 1 and config.norm == "layernorm"
  assert config.output_scale == pytest.approx(TEXT["hidden_size"] ** -0.5)
  assert report.unused == []
  tokens = _tokens()
  want = ref(input_ids=torch.tensor(tokens, dtype=torch.long)).logits
  assert _max_diff(_decoder_logits(config, params, tokens), want) <= TOL


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_gemma_decoder_matches_gemma(tmp_path, kv_heads):
  """Sequential block, RMSNorm (1 + w), GeGLU, sqrt(d)-scaled embeddings; MQA and GQA."""
  cfg = transformers.GemmaConfig(**TEXT, num_key_value_heads=kv_heads)
  ref = _save(transformers.GemmaForCausalLM(cfg), tmp_path)
  config, params, report = convert.import_gemma(tmp_path)
  assert config.num_kv_heads == kv_heads and report.unused == []
  tokens = _tokens()
  want = ref(input_ids=torch.tensor(tokens, dtype=torch.long)).logits
  assert _max_diff(_decoder_logits(config, params, tokens), want) <= TOL


def _images(batch, size, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def _pixel_values(images):
  """What PaliGemma/SigLIP processors feed: [-1, 1] floats, channels first."""
  return torch.tensor(images.astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2)


def test_vit_matches_siglip_vision(tmp_path):
  ref = _save(transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**VISION)), tmp_path)
  config, params, report = convert.import_siglip(tmp_path)
  assert config.num_tokens == 16
  assert report.unused and all(("." + n).count(".head.") for n in report.unused)  # MAP head
  images = _images(2, VISION["image_size"])
  ours = VisionTransformer(config).apply({"params": params}, jnp.asarray(images))
  want = ref(pixel_values=_pixel_values(images)).last_hidden_state
  assert _max_diff(ours, want) <= TOL


def _paligemma(tmp_path):
  cfg = transformers.PaliGemmaConfig(
      vision_config=VISION,
      text_config={**TEXT, "num_key_value_heads": 1},
      image_token_index=TEXT["vocab_size"] - 1,
      projection_dim=TEXT["hidden_size"],
  )
  ref = _save(transformers.PaliGemmaForConditionalGeneration(cfg), tmp_path)
  config, params, _ = convert.import_paligemma(tmp_path)
  assert config.num_image_tokens == 16
  return ref, config, params


def test_medpalm_m_matches_paligemma(tmp_path):
  """Image tokens first, then the prompt (bidirectional prefix), then the suffix (causal)."""
  ref, config, params = _paligemma(tmp_path)
  m, prefix, length = config.num_image_tokens, 22, 28
  tokens = _tokens(2, length, TEXT["vocab_size"] - 1)
  tokens[:, :m] = config.image_token_id
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
      image_mask=jnp.ones((2, 1), bool),
      decoder_causal_attention=jnp.asarray(1 - token_type),
  )
  assert _max_diff(ours, want) <= TOL


def test_images_mid_prompt_match_reference_inputs_embeds(tmp_path):
  """PaLM-E placement: image rows written at placeholder positions in the middle of the text,
  causal attention; the reference decoder gets inputs_embeds built by hand."""
  ref, config, params = _paligemma(tmp_path)
  m, starts, length = config.num_image_tokens, (5, 9), 34
  tokens = _tokens(2, length, TEXT["vocab_size"] - 1, seed=1)
  for row, start in enumerate(starts):
    tokens[row, start : start + m] = config.image_token_id
  images = _images(2, VISION["image_size"], seed=1)
  # PaliGemma's Gemma is configured bidirectional (its prefix); PaLM-E's decoder is causal.
  decoder = ref.model.language_model
  decoder.config.use_bidirectional_attention = False
  for layer in decoder.layers:
    layer.self_attn.is_causal = True
  with torch.no_grad():
    image_rows = ref.model.get_image_features(_pixel_values(images)).pooler_output
    embeds = ref.model.get_input_embeddings()(torch.tensor(tokens, dtype=torch.long))
    for row, start in enumerate(starts):
      embeds[row, start : start + m] = image_rows[row]
    want = ref.lm_head(decoder(inputs_embeds=embeds).last_hidden_state)
  ours = MedPalmM(config).apply(
      {"params": params}, jnp.asarray(tokens), images=jnp.asarray(images)[:, None]
  )
  assert _max_diff(ours, want) <= TOL


def test_importer_refuses_other_architecture(tmp_path):
  _save(
      transformers.GemmaForCausalLM(transformers.GemmaConfig(**TEXT, num_key_value_heads=1)),
      tmp_path,
  )
  with pytest.raises(ValueError, match="'gemma' checkpoint.*expects model_type 'cohere'"):
    convert.import_cohere(tmp_path)
  with pytest.raises(ValueError, match="paligemma"):
    convert.import_paligemma(tmp_path)


def test_importer_names_first_misfit_tensor(tmp_path):
  _save(
      transformers.GemmaForCausalLM(transformers.GemmaConfig(**TEXT, num_key_value_heads=1)),
      tmp_path,
  )
  config_file = tmp_path / "config.json"
  config_file.write_text(
      config_file.read_text().replace('"intermediate_size": 128', '"intermediate_size": 100')
  )
  with pytest.raises(
      ValueError, match=r"layers\.0\.mlp\.gate_proj\.weight.*\(128, 64\).*\(100, 64\)"
  ):
    convert.import_gemma(tmp_path)
