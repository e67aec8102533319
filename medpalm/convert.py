"""Importers of open Hugging Face checkpoints (safetensors) into medpalm parameters.

No PaLM-E weights are public, so users start from open checkpoints whose blocks our switches
reproduce exactly:

    PaliGemma (SigLIP + projector + Gemma)  -> MedPalmM          import_paligemma(path)
    Gemma                                   -> PalmDecoder       import_gemma(path)
    SigLIP vision                           -> VisionTransformer import_siglip(path)
    Cohere-architecture decoder (PaLM block)-> PalmDecoder       import_cohere(path)

`path` is a `save_pretrained` directory (config.json + *.safetensors, sharded or not). Tensors are
read with numpy; torch is never needed. Every tensor is checked against the shape our config
implies, the first misfit raises a ValueError naming it, and tensors left unused are reported.
Parameters come out in the scanned layout (a leading `layers` axis) unless the config says
`scan_layers=False`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import pathlib

# Registers bfloat16 with numpy: Gemma and Cohere checkpoints are bf16, and safetensors' numpy
# reader fails with "data type 'bfloat16' not understood" in a process that has not imported it.
import ml_dtypes  # noqa: F401
import numpy as np
from safetensors.numpy import load_file

from medpalm.models import blocks
from medpalm.models.configs import DecoderConfig, MedPalmMConfig, VisionConfig

_ACT = {
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "gelu": "gelu",
    "silu": "silu",
    "swish": "silu",
}


@dataclasses.dataclass
class ImportReport:
  """What an import used and left over (e.g. SigLIP's unused MAP head)."""

  source: str
  used: list[str]
  unused: list[str]


class Tensors:
  """A checkpoint's tensors by name; `take` checks shape and records what was used."""

  def __init__(self, path: str | pathlib.Path):
    self.path = pathlib.Path(path)
    files = [self.path] if self.path.is_file() else sorted(self.path.glob("*.safetensors"))
    if not files:
      raise ValueError(f"{self.path}: no *.safetensors files")
    self.tensors: dict[str, np.ndarray] = {}
    for f in files:
      self.tensors.update(load_file(str(f)))
    self.used: list[str] = []

  def find_prefix(self, candidates: list[str], probe: str) -> str:
    """The first candidate prefix under which `probe` exists (checkpoints differ by wrapper)."""
    for prefix in candidates:
      if prefix + probe in self.tensors:
        return prefix
    raise ValueError(
        f"{self.path}: no tensor {probe!r} under any of the prefixes {candidates}; "
        f"first tensors: {sorted(self.tensors)[:5]}"
    )

  def take(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in self.tensors:
      raise ValueError(f"{self.path}: tensor {name!r} is missing (expected shape {shape})")
    t = np.asarray(self.tensors[name], dtype=np.float32)
    if t.shape != tuple(shape):
      raise ValueError(
          f"{self.path}: tensor {name!r} has shape {t.shape}, the config implies " f"{tuple(shape)}"
      )
    self.used.append(name)
    return t

  def report(self) -> ImportReport:
    unused = sorted(set(self.tensors) - set(self.used))
    if unused:
      logging.warning("%s: %d tensors left unused: %s", self.path, len(unused), unused[:10])
    return ImportReport(str(self.path), list(self.used), unused)


def read_config(path: str | pathlib.Path, expected: tuple[str, ...]) -> dict:
  """config.json of a checkpoint, refusing another architecture."""
  file = pathlib.Path(path) / "config.json"
  if not file.exists():
    raise ValueError(f"{file} not found: expected a Hugging Face save_pretrained directory")
  config = json.loads(file.read_text())
  kind = config.get("model_type")
  if kind not in expected:
    raise ValueError(
        f"{path} holds a {kind!r} checkpoint ({config.get('architectures')}); this "
        f"importer expects model_type {' or '.join(map(repr, expected))}"
    )
  return config


def _rope_base(hf: dict) -> float:
  return float((hf.get("rope_parameters") or {}).get("rope_theta", hf.get("rope_theta", 10000.0)))


def _activation(hf: dict, key: str = "hidden_act") -> str:
  field = "hidden_activation" if hf.get("hidden_activation") else key
  act = hf.get(field, "gelu_pytorch_tanh")
  _unsupported(hf.get("model_type", "config"), field, act, tuple(_ACT))
  return _ACT[act]


def _require_tied(hf: dict) -> None:
  if not hf.get("tie_word_embeddings", True):
    raise ValueError(
        "untied input/output embeddings are not supported: medpalm shares them " "(PaLM)"
    )


# --- configs from config.json ---------------------------------------------------------------


def vision_config_from_hf(hf: dict) -> VisionConfig:
  heads = hf["num_attention_heads"]
  return VisionConfig(
      num_layers=hf["num_hidden_layers"],
      d_model=hf["hidden_size"],
      num_heads=heads,
      head_dim=hf["hidden_size"] // heads,
      d_ff=hf["intermediate_size"],
      num_kv_heads=heads,
      parallel_block=False,
      gated_mlp=False,
      mlp_activation=_activation(hf),
      use_bias=True,
      norm_epsilon=hf.get("layer_norm_eps", 1e-6),
      image_size=hf["image_size"],
      patch_size=hf["patch_size"],
      final_norm=True,
  )


def _unsupported(source: str, field: str, value, allowed) -> None:
  """Refuses a config field that changes the math in a way medpalm does not implement."""
  if value not in allowed:
    raise ValueError(
        f"{source}: config field {field!r} = {value!r} is not supported (supported: "
        f"{', '.join(map(repr, allowed))}); importing it would silently change the model"
    )


GEMMA_TYPES = ("gemma", "gemma2", "gemma3_text")


def _layer_types(hf: dict, kind: str) -> tuple[str, ...]:
  """The shortest repeating pattern of HF `layer_types` as "local" / "global"."""
  names = {"sliding_attention": "local", "full_attention": "global"}
  types = hf.get("layer_types")
  if not types:
    if kind == "gemma2":
      types = ["sliding_attention", "full_attention"] * ((hf["num_hidden_layers"] + 1) // 2)
    elif kind == "gemma3_text":
      period = hf.get("sliding_window_pattern") or hf.get("_sliding_window_pattern") or 6
      types = [
          "full_attention" if (i + 1) % period == 0 else "sliding_attention"
          for i in range(hf["num_hidden_layers"])
      ]
    else:
      return ()
  types = types[: hf["num_hidden_layers"]]
  for t in types:
    _unsupported(kind, "layer_types", t, tuple(names))
  types = [names[t] for t in types]
  if all(t == "global" for t in types):
    return ()
  for period in range(1, len(types) + 1):
    if all(types[i] == types[i % period] for i in range(len(types))):
      return tuple(types[:period])
  raise AssertionError("unreachable: the whole list is a period")


def _gemma_rope(hf: dict, kind: str) -> tuple[float, float | None, float]:
  """(global base, local base, global linear scale) from rope_parameters / legacy fields."""
  rope = hf.get("rope_parameters") or {}
  if kind == "gemma3_text" and "full_attention" in rope:
    full, local = rope["full_attention"], rope.get("sliding_attention") or {}
    _unsupported(
        kind,
        "rope_parameters.sliding_attention.rope_type",
        local.get("rope_type", "default"),
        ("default",),
    )
    _unsupported(
        kind,
        "rope_parameters.full_attention.rope_type",
        full.get("rope_type", "default"),
        ("default", "linear"),
    )
    scale = float(full.get("factor", 1.0)) if full.get("rope_type") == "linear" else 1.0
    return float(full["rope_theta"]), float(local.get("rope_theta", 10_000.0)), scale
  scaling = hf.get("rope_scaling") or {}
  rope_type = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
  allowed = ("default", "linear") if kind == "gemma3_text" else ("default",)
  _unsupported(kind, "rope_parameters.rope_type", rope_type, allowed)
  scale = (
      float(rope.get("factor") or scaling.get("factor") or 1.0) if rope_type == "linear" else 1.0
  )
  local = hf.get("rope_local_base_freq") if kind == "gemma3_text" else None
  return _rope_base(hf), None if local is None else float(local), scale


def gemma_config_from_hf(
    hf: dict, kind: str = "gemma", in_paligemma: bool = False
) -> DecoderConfig:
  """Gemma 1, 2 or 3 text config -> DecoderConfig; refuses fields whose math we lack.

  `in_paligemma`: PaliGemma configures its Gemma bidirectional over the prefix, which medpalm
  reproduces with `decoder_causal_attention`; a standalone bidirectional Gemma is refused."""
  _unsupported(kind, "model_type", kind, GEMMA_TYPES)
  _require_tied(hf)
  _unsupported(kind, "attention_bias", bool(hf.get("attention_bias", False)), (False,))
  act = "gelu_tanh" if _activation(hf) == "gelu" else _activation(hf)  # legacy Gemma "gelu"
  if not in_paligemma:
    _unsupported(
        kind,
        "use_bidirectional_attention",
        hf.get("use_bidirectional_attention") or False,
        (False,),
    )
  for field in ("attn_logit_softcapping", "final_logit_softcapping", "sliding_window"):
    if kind == "gemma" and hf.get(field) is not None:
      _unsupported(kind, field, hf[field], (None,))
  attn_cap = hf.get("attn_logit_softcapping") if kind != "gemma" else None
  final_cap = hf.get("final_logit_softcapping") if kind != "gemma" else None
  layer_types = _layer_types(hf, kind) if kind != "gemma" else ()
  rope_base, local_base, rope_scale = _gemma_rope(hf, kind)
  scalar = hf.get("query_pre_attn_scalar")
  head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
  return DecoderConfig(
      num_layers=hf["num_hidden_layers"],
      d_model=hf["hidden_size"],
      num_heads=hf["num_attention_heads"],
      head_dim=head_dim,
      d_ff=hf["intermediate_size"],
      num_kv_heads=hf["num_key_value_heads"],
      parallel_block=False,
      gated_mlp=True,
      mlp_activation=act,
      use_bias=bool(hf.get("attention_bias", False)),
      norm="rmsnorm",
      norm_epsilon=hf.get("rms_norm_eps", 1e-6),
      norm_scale_plus_one=True,
      qk_norm=kind == "gemma3_text",
      post_norms=kind != "gemma",
      query_scale=None if kind == "gemma" or scalar is None else float(scalar) ** -0.5,
      attn_logit_softcap=None if attn_cap is None else float(attn_cap),
      layer_types=layer_types,
      sliding_window=hf.get("sliding_window") if layer_types else None,
      vocab_size=hf["vocab_size"],
      rope_base=rope_base,
      local_rope_base=local_base,
      rope_scale_factor=rope_scale,
      scale_embeddings=True,
      logits_scale=1.0,
      final_logit_softcap=None if final_cap is None else float(final_cap),
  )


def cohere_config_from_hf(hf: dict) -> DecoderConfig:
  _require_tied(hf)
  # QK norm or attention biases make it something other than a PaLM block.
  _unsupported("cohere", "use_qk_norm", bool(hf.get("use_qk_norm")), (False,))
  _unsupported("cohere", "attention_bias", bool(hf.get("attention_bias")), (False,))
  return DecoderConfig(
      num_layers=hf["num_hidden_layers"],
      d_model=hf["hidden_size"],
      num_heads=hf["num_attention_heads"],
      head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
      d_ff=hf["intermediate_size"],
      num_kv_heads=hf["num_key_value_heads"],
      parallel_block=True,
      gated_mlp=True,
      mlp_activation=_activation(hf),
      use_bias=False,
      norm="layernorm",
      norm_epsilon=hf.get("layer_norm_eps", 1e-5),
      vocab_size=hf["vocab_size"],
      rope_base=_rope_base(hf),
      logits_scale=hf["logit_scale"],
  )


# --- tensors -> parameter trees --------------------------------------------------------------


def _linear(t: Tensors, name: str, d_in: int, out_shape: tuple[int, ...]) -> np.ndarray:
  """HF Linear weight [out, in] -> our kernel [in, *out_shape]."""
  return t.take(name, (int(np.prod(out_shape)), d_in)).T.reshape(d_in, *out_shape)


def _out_linear(t: Tensors, name: str, in_shape: tuple[int, ...], d_out: int) -> np.ndarray:
  """HF Linear weight [out, in] -> our kernel [*in_shape, out]."""
  return t.take(name, (d_out, int(np.prod(in_shape)))).T.reshape(*in_shape, d_out)


def _stack(layers: list[dict], config) -> dict:
  return blocks.stack_layer_params(layers, config, stack_fn=np.stack)


def _attention(t: Tensors, p: str, c, bias: bool, qk_perm: np.ndarray | None = None) -> dict:
  heads, kv, k, d = c.num_heads, c.num_kv_heads, c.head_dim, c.d_model
  out = {
      "query": {"kernel": _linear(t, p + "q_proj.weight", d, (heads, k))},
      "key": {"kernel": _linear(t, p + "k_proj.weight", d, (kv, k))},
      "value": {"kernel": _linear(t, p + "v_proj.weight", d, (kv, k))},
  }
  o_name = p + ("out_proj" if p + "out_proj.weight" in t.tensors else "o_proj")
  out["out"] = {"kernel": _out_linear(t, o_name + ".weight", (heads, k), d)}
  if bias:
    out["query"]["bias"] = t.take(p + "q_proj.bias", (heads * k,)).reshape(heads, k)
    out["key"]["bias"] = t.take(p + "k_proj.bias", (kv * k,)).reshape(kv, k)
    out["value"]["bias"] = t.take(p + "v_proj.bias", (kv * k,)).reshape(kv, k)
    out["out"]["bias"] = t.take(o_name + ".bias", (d,))
  if qk_perm is not None:
    for name in ("query", "key"):
      out[name] = {n: v[..., qk_perm] for n, v in out[name].items()}
  return out


def _norm(t: Tensors, name: str, dim: int, bias: bool) -> dict:
  out = {"scale": t.take(name + ".weight", (dim,))}
  if bias:
    out["bias"] = t.take(name + ".bias", (dim,))
  return out


def siglip_params(t: Tensors, prefix: str, c: VisionConfig) -> dict:
  """SigLIP vision tower under `prefix` (e.g. "vision_model.") -> VisionTransformer params."""
  d, p = c.d_model, c.patch_size
  conv = t.take(prefix + "embeddings.patch_embedding.weight", (d, 3, p, p))
  layers = []
  for i in range(c.num_layers):
    lp = f"{prefix}encoder.layers.{i}."
    layers.append(
        {
            "pre_attention_norm": _norm(t, lp + "layer_norm1", d, True),
            "pre_mlp_norm": _norm(t, lp + "layer_norm2", d, True),
            "attention": _attention(t, lp + "self_attn.", c, bias=True),
            "mlp": {
                "wi": {
                    "kernel": _linear(t, lp + "mlp.fc1.weight", d, (c.d_ff,)),
                    "bias": t.take(lp + "mlp.fc1.bias", (c.d_ff,)),
                },
                "wo": {
                    "kernel": _out_linear(t, lp + "mlp.fc2.weight", (c.d_ff,), d),
                    "bias": t.take(lp + "mlp.fc2.bias", (d,)),
                },
            },
        }
    )
  return {
      # Conv [out, c, kh, kw] -> [kh·kw·c, out], matching `vit.patchify`'s pixel order.
      "patch_embedding": {
          "kernel": conv.transpose(2, 3, 1, 0).reshape(p * p * 3, d),
          "bias": t.take(prefix + "embeddings.patch_embedding.bias", (d,)),
      },
      "pos_embedding": t.take(prefix + "embeddings.position_embedding.weight", (c.num_tokens, d)),
      "encoder": _stack(layers, c),
      "final_norm": _norm(t, prefix + "post_layernorm", d, True),
  }


def _decoder_params(t: Tensors, prefix: str, c: DecoderConfig, qk_perm=None) -> dict:
  d = c.d_model
  layers = []
  for i in range(c.num_layers):
    lp = f"{prefix}layers.{i}."
    layer = {
        "attention": _attention(t, lp + "self_attn.", c, bias=False, qk_perm=qk_perm),
        "mlp": {
            "wi_0": {"kernel": _linear(t, lp + "mlp.gate_proj.weight", d, (c.d_ff,))},
            "wi_1": {"kernel": _linear(t, lp + "mlp.up_proj.weight", d, (c.d_ff,))},
            "wo": {"kernel": _out_linear(t, lp + "mlp.down_proj.weight", (c.d_ff,), d)},
        },
    }
    if c.qk_norm:
      layer["attention"]["query_norm"] = _norm(t, lp + "self_attn.q_norm", c.head_dim, False)
      layer["attention"]["key_norm"] = _norm(t, lp + "self_attn.k_norm", c.head_dim, False)
    if c.parallel_block:
      layer["pre_norm"] = _norm(t, lp + "input_layernorm", d, False)
    elif c.post_norms:  # Gemma 2 / 3: post_attention_layernorm norms the attention output
      layer["pre_attention_norm"] = _norm(t, lp + "input_layernorm", d, False)
      layer["post_attention_norm"] = _norm(t, lp + "post_attention_layernorm", d, False)
      layer["pre_mlp_norm"] = _norm(t, lp + "pre_feedforward_layernorm", d, False)
      layer["post_mlp_norm"] = _norm(t, lp + "post_feedforward_layernorm", d, False)
    else:
      layer["pre_attention_norm"] = _norm(t, lp + "input_layernorm", d, False)
      layer["pre_mlp_norm"] = _norm(t, lp + "post_attention_layernorm", d, False)
    layers.append(layer)
  return {
      "embedding": t.take(prefix + "embed_tokens.weight", (c.vocab_size, d)),
      "final_norm": _norm(t, prefix + "norm", d, False),
      "stack": _stack(layers, c),
  }


def interleaved_to_half_split(head_dim: int) -> np.ndarray:
  """Permutation of a head's dims that turns interleaved RoPE pairs (2i, 2i+1) into our half-split
  pairs (i, i + K/2); applied to both q and k it leaves q·k unchanged."""
  return np.concatenate([np.arange(0, head_dim, 2), np.arange(1, head_dim, 2)])


# --- public importers ------------------------------------------------------------------------


def import_siglip(path, **runtime) -> tuple[VisionConfig, dict, ImportReport]:
  hf = read_config(path, ("siglip_vision_model", "siglip"))
  hf = hf.get("vision_config", hf)
  config = dataclasses.replace(vision_config_from_hf(hf), **runtime)
  t = Tensors(path)
  prefix = t.find_prefix(
      ["vision_model.", "", "vision_model.vision_model."], "embeddings.patch_embedding.weight"
  )
  return config, siglip_params(t, prefix, config), t.report()


def import_gemma(path, **runtime) -> tuple[DecoderConfig, dict, ImportReport]:
  """Gemma 1, Gemma 2 or Gemma 3 text (`Gemma3ForCausalLM`) -> PalmDecoder params."""
  hf = read_config(path, GEMMA_TYPES)
  config = dataclasses.replace(gemma_config_from_hf(hf, hf["model_type"]), **runtime)
  t = Tensors(path)
  prefix = t.find_prefix(["model.", "", "model.language_model."], "embed_tokens.weight")
  return config, _decoder_params(t, prefix, config), t.report()


def import_cohere(path, **runtime) -> tuple[DecoderConfig, dict, ImportReport]:
  config = dataclasses.replace(cohere_config_from_hf(read_config(path, ("cohere",))), **runtime)
  t = Tensors(path)
  prefix = t.find_prefix(["model.", ""], "embed_tokens.weight")
  params = _decoder_params(t, prefix, config, interleaved_to_half_split(config.head_dim))
  return config, params, t.report()


def _text_config(hf: dict, allowed: tuple[str, ...]) -> tuple[dict, str]:
  text = {"vocab_size": hf.get("vocab_size"), **hf["text_config"]}
  kind = text.get("model_type", allowed[0])
  _unsupported(hf["model_type"], "text_config.model_type", kind, allowed)
  return text, kind


def _siglip_prefix(t: Tensors) -> str:
  return t.find_prefix(
      [
          "model.vision_tower.vision_model.",
          "vision_tower.vision_model.",
          "model.vision_tower.",
          "vision_tower.",
      ],
      "embeddings.patch_embedding.weight",
  )


def _language_prefix(t: Tensors) -> str:
  return t.find_prefix(
      ["model.language_model.", "language_model.model.", "language_model."], "embed_tokens.weight"
  )


def import_paligemma(path, **runtime) -> tuple[MedPalmMConfig, dict, ImportReport]:
  """PaliGemma 1 or 2 -> (MedPalmMConfig, MedPalmM params, report). Use prefix-bidirectional
  attention (`decoder_causal_attention` on the image + prompt prefix) to reproduce PaliGemma."""
  hf = read_config(path, ("paligemma",))
  vision = dataclasses.replace(vision_config_from_hf(hf["vision_config"]), **runtime)
  text, kind = _text_config(hf, ("gemma", "gemma2"))
  decoder = dataclasses.replace(gemma_config_from_hf(text, kind, in_paligemma=True), **runtime)
  config = MedPalmMConfig(
      "paligemma2" if kind == "gemma2" else "paligemma",
      vision,
      decoder,
      image_token_id=hf.get("image_token_id", hf.get("image_token_index")),
  )
  t = Tensors(path)
  vp, dp = _siglip_prefix(t), _language_prefix(t)
  pp = t.find_prefix(["model.multi_modal_projector.", "multi_modal_projector."], "linear.weight")
  params = {
      "vision": siglip_params(t, vp, vision),
      "projector": {
          "kernel": _linear(t, pp + "linear.weight", vision.d_model, (decoder.d_model,)),
          "bias": t.take(pp + "linear.bias", (decoder.d_model,)),
      },
      "decoder": _decoder_params(t, dp, decoder),
  }
  return config, params, t.report()


def import_gemma3(path, **runtime) -> tuple[MedPalmMConfig, dict, ImportReport]:
  """Gemma 3 multimodal (`Gemma3ForConditionalGeneration`, MedGemma 4B's architecture) ->
  (MedPalmMConfig, MedPalmM params, report): SigLIP, average pool to `mm_tokens_per_image`,
  RMSNorm + matmul projector, Gemma 3 decoder in which each image's rows see each other."""
  hf = read_config(path, ("gemma3",))
  vision = dataclasses.replace(vision_config_from_hf(hf["vision_config"]), **runtime)
  text, kind = _text_config(hf, ("gemma3_text",))
  decoder = dataclasses.replace(gemma_config_from_hf(text, kind), **runtime)
  tokens = hf.get("mm_tokens_per_image", 256)
  side, grid = math.isqrt(tokens), vision.image_size // vision.patch_size
  if side * side != tokens or grid % side:
    raise ValueError(
        f"gemma3: config field 'mm_tokens_per_image' = {tokens} is not supported: the average "
        f"pool needs a square number of tokens whose side divides the {grid}x{grid} patch grid"
    )
  config = MedPalmMConfig(
      "gemma3",
      vision,
      decoder,
      image_token_id=hf.get("image_token_id", hf.get("image_token_index")),
      projector="pool_norm_linear",
      pooled_tokens=tokens,
      image_attention="bidirectional",
  )
  t = Tensors(path)
  vp, dp = _siglip_prefix(t), _language_prefix(t)
  pp = t.find_prefix(
      ["model.multi_modal_projector.", "multi_modal_projector."], "mm_input_projection_weight"
  )
  c = vision.d_model
  params = {
      "vision": siglip_params(t, vp, vision),
      "projector": {
          "norm": _norm(t, pp + "mm_soft_emb_norm", c, False),
          "kernel": t.take(pp + "mm_input_projection_weight", (c, decoder.d_model)),
      },
      "decoder": _decoder_params(t, dp, decoder),
  }
  return config, params, t.report()


IMPORTERS = {
    "gemma": import_gemma,
    "gemma2": import_gemma,
    "gemma3_text": import_gemma,
    "cohere": import_cohere,
    "siglip": import_siglip,
    "siglip_vision_model": import_siglip,
    "paligemma": import_paligemma,
    "gemma3": import_gemma3,
}


def import_hf(path, **runtime):
  """Any supported checkpoint, by its config.json `model_type` -> (config, params, report)."""
  hf = read_config(path, tuple(IMPORTERS))
  return IMPORTERS[hf["model_type"]](path, **runtime)
