"""Importers refuse what they cannot reproduce, exports load in transformers, configs count right.

Unsupported config fields: one case per family, each a ValueError naming the field. Round trip:
a transformers model saved in bfloat16 is imported (the command line, in a fresh process, where
nothing has registered bfloat16 with numpy yet), exported, loaded back by transformers, and gives
the original's float32 logits. Parameter counts of the named open configs equal those of the
transformers models their Hugging Face configs describe (built on the meta device: no memory).
"""

import dataclasses
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from medpalm import convert
from medpalm.models import configs
from medpalm.models.medpalm_m import MedPalmM, parameter_counts
from tests.medpalm.test_convert_oracle import TEXT, VISION, _images, _pixel_values, _save, _tokens
from tests.medpalm.test_gemma_oracle import (
    IMAGE_ID,
    gemma2_config,
    gemma3_config,
    gemma3_text_config,
    paligemma2_config,
)
from tests.support import driver as driver_setup

pytestmark = pytest.mark.oracle


# --- unsupported fields -------------------------------------------------------------------------


def _write_config(path, config, **changes):
  """config.json of `config` with nested changes ("a.b" keys reach into sub-dicts)."""
  hf = config.to_dict()
  for key, value in changes.items():
    node, *rest = key.split(".")
    if rest:
      hf[node] = dict(hf[node], **{rest[0]: value})
    else:
      hf[key] = value
  (path / "config.json").write_text(json.dumps(hf))


UNSUPPORTED = {
    # family: (importer, transformers config, field, bad value)
    "gemma": (
        convert.import_gemma,
        lambda: transformers.GemmaConfig(**TEXT),
        "final_logit_softcapping",
        30.0,
    ),
    "gemma2": (
        convert.import_gemma,
        gemma2_config,
        "rope_parameters",
        {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4},
    ),
    "gemma3_text": (
        convert.import_gemma,
        gemma3_text_config,
        "rope_parameters",
        {
            "full_attention": {"rope_type": "yarn", "factor": 8.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
        },
    ),
    "paligemma": (
        convert.import_paligemma,
        paligemma2_config,
        "text_config.model_type",
        "gemma3_text",
    ),
    "gemma3": (convert.import_gemma3, gemma3_config, "mm_tokens_per_image", 5),
    "cohere": (
        convert.import_cohere,
        lambda: transformers.CohereConfig(**TEXT, tie_word_embeddings=True),
        "use_qk_norm",
        True,
    ),
    "siglip": (
        convert.import_siglip,
        lambda: transformers.SiglipVisionConfig(**VISION),
        "hidden_act",
        "relu",
    ),
}


@pytest.mark.parametrize("family", sorted(UNSUPPORTED))
def test_unsupported_field_is_refused_by_name(tmp_path, family):
  importer, make_config, field, value = UNSUPPORTED[family]
  _write_config(tmp_path, make_config(), **{field: value})
  name = field.split(".")[-1] if family != "paligemma" else field
  if family in ("gemma2", "gemma3_text"):
    name = "rope_type"  # the field inside rope_parameters that changes the math
  with pytest.raises(ValueError, match=name):
    importer(tmp_path)


def test_gemma3_bidirectional_text_is_refused(tmp_path):
  _write_config(tmp_path, gemma3_text_config(), use_bidirectional_attention=True)
  with pytest.raises(ValueError, match="use_bidirectional_attention"):
    convert.import_gemma(tmp_path)


# --- export round trips ---------------------------------------------------------------------------


def _reference_logits(model, tokens, images=None, **kwargs):
  inputs = {"input_ids": torch.tensor(tokens, dtype=torch.long), **kwargs}
  if images is not None:
    inputs["pixel_values"] = _pixel_values(images)
  with torch.no_grad():
    return model(**inputs).logits.float().numpy()


FAMILIES = {
    "gemma": lambda: transformers.GemmaForCausalLM(
        transformers.GemmaConfig(**TEXT, num_key_value_heads=1)
    ),
    "gemma2": lambda: transformers.Gemma2ForCausalLM(gemma2_config()),
    "gemma3_text": lambda: transformers.Gemma3ForCausalLM(gemma3_text_config()),
    "cohere": lambda: transformers.CohereForCausalLM(
        transformers.CohereConfig(
            **TEXT, num_key_value_heads=1, tie_word_embeddings=True, logit_scale=0.125
        )
    ),
    "siglip": lambda: transformers.SiglipVisionModel(
        transformers.SiglipVisionConfig(**VISION, vision_use_head=False)
    ),
    "paligemma2": lambda: transformers.PaliGemmaForConditionalGeneration(paligemma2_config()),
    "gemma3": lambda: transformers.Gemma3ForConditionalGeneration(gemma3_config()),
}


def _inputs(family):
  """(tokens, images or None, extra reference kwargs) for one forward pass."""
  if family == "siglip":
    return None, _images(2, VISION["image_size"]), {}
  if family == "paligemma2":
    tokens = _tokens(2, 26, IMAGE_ID)
    tokens[:, :16] = IMAGE_ID
    return tokens, _images(2, VISION["image_size"]), {}
  if family == "gemma3":
    tokens = _tokens(2, 14, IMAGE_ID)
    tokens[:, 3:7] = IMAGE_ID
    return tokens, _images(2, VISION["image_size"]), {}
  return _tokens(2, 19), None, {}


def _compare_after_export(family, original, exported_dir):
  exported = type(original).from_pretrained(exported_dir, dtype=torch.float32).eval()
  tokens, images, kwargs = _inputs(family)
  if family == "siglip":
    with torch.no_grad():
      want = original(pixel_values=_pixel_values(images)).last_hidden_state.numpy()
      got = exported(pixel_values=_pixel_values(images)).last_hidden_state.numpy()
  else:
    want = _reference_logits(original, tokens, images, **kwargs)
    got = _reference_logits(exported, tokens, images, **kwargs)
  assert np.max(np.abs(got - want)) <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_export_round_trip_in_process(tmp_path, family):
  """bf16 save_pretrained -> import -> export_hf (bf16) -> from_pretrained: same f32 logits."""
  torch.manual_seed(0)
  model = FAMILIES[family]()
  _save(model, tmp_path / "source")
  model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
  original = type(model).from_pretrained(tmp_path / "bf16", dtype=torch.float32).eval()
  config, params, _ = convert.import_hf(tmp_path / "bf16")
  convert.export_hf(config, params, tmp_path / "exported", dtype="bfloat16")
  assert json.loads((tmp_path / "exported" / "config.json").read_text())["model_type"] == (
      json.loads((tmp_path / "bf16" / "config.json").read_text())["model_type"]
  )
  _compare_after_export(family, original, tmp_path / "exported")


@pytest.mark.slow
def test_command_line_round_trip_in_fresh_processes(tmp_path):
  """`python -m medpalm.convert import` then `export`, each a fresh interpreter (bf16 tensors)."""
  torch.manual_seed(0)
  model = FAMILIES["paligemma2"]()
  _save(model, tmp_path / "source")
  model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
  original = type(model).from_pretrained(tmp_path / "bf16", dtype=torch.float32).eval()
  env = driver_setup.subprocess_env(devices=1)
  run = lambda *args: subprocess.run(
      [sys.executable, "-m", "medpalm.convert", *map(str, args)],
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
  )
  imported = run("import", tmp_path / "bf16", tmp_path / "imported")
  assert imported.returncode == 0, imported.stderr[-3000:]
  exported = run("export", tmp_path / "imported", tmp_path / "bf16", tmp_path / "exported")
  assert exported.returncode == 0, exported.stderr[-3000:]
  _compare_after_export("paligemma2", original, tmp_path / "exported")


# --- parameter counts ---------------------------------------------------------------------------


SIGLIP_SO400M = dict(
    hidden_size=1152,
    intermediate_size=4304,
    num_hidden_layers=27,
    num_attention_heads=16,
    patch_size=14,
    vision_use_head=False,
)
HF_CONFIGS = {
    "paligemma_3b": lambda: transformers.PaliGemmaConfig(
        vision_config={**SIGLIP_SO400M, "image_size": 224},
        text_config=dict(
            model_type="gemma",
            hidden_size=2048,
            intermediate_size=16384,
            num_hidden_layers=18,
            num_attention_heads=8,
            num_key_value_heads=1,
            head_dim=256,
            vocab_size=257216,
        ),
        projection_dim=2048,
        image_token_index=257152,
    ),
    "paligemma2_3b": lambda: transformers.PaliGemmaConfig(
        vision_config={**SIGLIP_SO400M, "image_size": 224},
        text_config=dict(
            model_type="gemma2",
            hidden_size=2304,
            intermediate_size=9216,
            num_hidden_layers=26,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=256,
            vocab_size=257216,
        ),
        projection_dim=2304,
        image_token_index=257152,
    ),
    "gemma3_4b": lambda: transformers.Gemma3Config(
        vision_config={**SIGLIP_SO400M, "image_size": 896, "model_type": "siglip_vision_model"},
        text_config=dict(
            hidden_size=2560,
            intermediate_size=10240,
            num_hidden_layers=34,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=256,
            vocab_size=262208,
            sliding_window=1024,
            rope_parameters={
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
            },
        ),
        mm_tokens_per_image=256,
        image_token_index=262144,
    ),
}
ARCH = {
    "paligemma_3b": transformers.PaliGemmaForConditionalGeneration,
    "paligemma2_3b": transformers.PaliGemmaForConditionalGeneration,
    "gemma3_4b": transformers.Gemma3ForConditionalGeneration,
}


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_parameter_counts_match_hugging_face(name):
  with torch.device("meta"):
    reference = ARCH[name](HF_CONFIGS[name]())
  want = sum(p.numel() for p in reference.parameters())  # tied lm_head counted once
  got = parameter_counts(configs.get_config(name))
  assert got["total"] == want, (got, want)


def test_named_configs_match_their_importers_on_the_hf_configs(tmp_path):
  """The hand-written named configs are what the importer derives from the same config.json."""
  for name in HF_CONFIGS:
    (tmp_path / "config.json").write_text(json.dumps(HF_CONFIGS[name]().to_dict()))
    imported = convert.hf_model_config(tmp_path)
    named = configs.get_config(name)
    assert imported.vision == named.vision, name
    assert imported.decoder == named.decoder, name
    assert (imported.projector, imported.pooled_tokens, imported.image_attention) == (
        named.projector,
        named.pooled_tokens,
        named.image_attention,
    )


# --- the sliding-window cache ---------------------------------------------------------------------


def _cache_bytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def test_window_cache_at_8x_the_window_is_at_most_a_quarter_of_a_full_cache():
  """Prefill a prompt 8x the window into a cache with room for 16 more tokens: each local
  layer's ring buffer (keys, values, slot positions) against the full cache it replaces."""
  window, prompt, room = 16, 128, 16
  small = dict(d_model=64, num_heads=4, num_kv_heads=2, head_dim=16, d_ff=128, vocab_size=128)
  decoder = dataclasses.replace(configs.gemma3_4b(), **small, num_layers=6, sliding_window=window)
  vision = configs.get_config("tiny", image_size=28).vision
  config = configs.MedPalmMConfig("window", vision, decoder, image_token_id=127)
  full = configs.MedPalmMConfig(
      "full",
      vision,
      dataclasses.replace(decoder, layer_types=(), sliding_window=None),
      image_token_id=127,
  )

  def cache(c):
    tokens = jnp.ones((1, prompt), jnp.int32)
    _, state = jax.eval_shape(
        lambda: MedPalmM(c).init_with_output(
            jax.random.key(0), tokens, prefill=True, max_decode_length=prompt + room
        )
    )
    return state["cache"]["decoder"]["stack"]

  windowed, whole = cache(config), cache(full)
  ring = _cache_bytes(windowed["layers"]["block_0"])  # one local layer, scanned once
  per_layer_full = _cache_bytes(whole["layers"]) // 6
  assert ring * 4 <= per_layer_full, (ring, per_layer_full)
  total_ratio = _cache_bytes(windowed) / _cache_bytes(whole)
  assert total_ratio < 0.3  # 5 ring buffers + 1 full layer out of 6 full layers
