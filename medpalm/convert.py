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
from safetensors.numpy import load_file, save_file

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


# --- export to Hugging Face ---------------------------------------------------------------------
#
# The inverse of the importers: our parameter trees -> the tensor names and layouts that
# transformers' `from_pretrained` reads, plus a config.json of the same architecture. Tied input
# and output embeddings are written once (the embedding), as `save_pretrained` does.


def _hf_linear(kernel: np.ndarray, n_in: int = 1) -> np.ndarray:
  """Our kernel [*in, *out] -> HF Linear weight [prod(out), prod(in)]."""
  kernel = np.asarray(kernel)
  d_in = int(np.prod(kernel.shape[:n_in]))
  return kernel.reshape(d_in, -1).T


def _put_attention(out: dict, p: str, a: dict, names=("q_proj", "k_proj", "v_proj"), o="o_proj"):
  for ours, theirs in zip(("query", "key", "value"), names):
    out[p + theirs + ".weight"] = _hf_linear(a[ours]["kernel"])
    if "bias" in a[ours]:
      out[p + theirs + ".bias"] = np.asarray(a[ours]["bias"]).reshape(-1)
  out[p + o + ".weight"] = _hf_linear(a["out"]["kernel"], n_in=2)
  if "bias" in a["out"]:
    out[p + o + ".bias"] = np.asarray(a["out"]["bias"])


def _put_norm(out: dict, name: str, norm: dict) -> None:
  out[name + ".weight"] = np.asarray(norm["scale"])
  if "bias" in norm:
    out[name + ".bias"] = np.asarray(norm["bias"])


def siglip_tensors(params: dict, prefix: str, c: VisionConfig) -> dict[str, np.ndarray]:
  """VisionTransformer params -> SigLIP vision tensors under `prefix`."""
  p, d = c.patch_size, c.d_model
  out = {
      prefix
      + "embeddings.patch_embedding.weight": np.asarray(params["patch_embedding"]["kernel"])
      .reshape(p, p, 3, d)
      .transpose(3, 2, 0, 1),
      prefix + "embeddings.patch_embedding.bias": np.asarray(params["patch_embedding"]["bias"]),
      prefix + "embeddings.position_embedding.weight": np.asarray(params["pos_embedding"]),
  }
  _put_norm(out, prefix + "post_layernorm", params["final_norm"])
  for i, layer in enumerate(blocks.layer_params(params["encoder"], c)):
    lp = f"{prefix}encoder.layers.{i}."
    _put_norm(out, lp + "layer_norm1", layer["pre_attention_norm"])
    _put_norm(out, lp + "layer_norm2", layer["pre_mlp_norm"])
    _put_attention(out, lp + "self_attn.", layer["attention"], o="out_proj")
    for ours, theirs in (("wi", "fc1"), ("wo", "fc2")):
      out[lp + f"mlp.{theirs}.weight"] = _hf_linear(layer["mlp"][ours]["kernel"])
      out[lp + f"mlp.{theirs}.bias"] = np.asarray(layer["mlp"][ours]["bias"])
  return out


def decoder_tensors(params: dict, prefix: str, c: DecoderConfig) -> dict[str, np.ndarray]:
  """PalmDecoder params -> Gemma 1/2/3 or Cohere decoder tensors under `prefix`."""
  out = {prefix + "embed_tokens.weight": np.asarray(params["embedding"])}
  _put_norm(out, prefix + "norm", params["final_norm"])
  unperm = np.argsort(interleaved_to_half_split(c.head_dim)) if c.parallel_block else None
  for i, layer in enumerate(blocks.layer_params(params["stack"], c)):
    lp = f"{prefix}layers.{i}."
    attention = dict(layer["attention"])
    if unperm is not None:  # back to Cohere's interleaved RoPE pairs
      for name in ("query", "key"):
        attention[name] = {"kernel": np.asarray(attention[name]["kernel"])[..., unperm]}
    _put_attention(out, lp + "self_attn.", attention)
    if c.qk_norm:
      _put_norm(out, lp + "self_attn.q_norm", attention["query_norm"])
      _put_norm(out, lp + "self_attn.k_norm", attention["key_norm"])
    mlp = layer["mlp"]
    out[lp + "mlp.gate_proj.weight"] = _hf_linear(mlp["wi_0"]["kernel"])
    out[lp + "mlp.up_proj.weight"] = _hf_linear(mlp["wi_1"]["kernel"])
    out[lp + "mlp.down_proj.weight"] = _hf_linear(mlp["wo"]["kernel"])
    if c.parallel_block:
      _put_norm(out, lp + "input_layernorm", layer["pre_norm"])
    elif c.post_norms:
      _put_norm(out, lp + "input_layernorm", layer["pre_attention_norm"])
      _put_norm(out, lp + "post_attention_layernorm", layer["post_attention_norm"])
      _put_norm(out, lp + "pre_feedforward_layernorm", layer["pre_mlp_norm"])
      _put_norm(out, lp + "post_feedforward_layernorm", layer["post_mlp_norm"])
    else:
      _put_norm(out, lp + "input_layernorm", layer["pre_attention_norm"])
      _put_norm(out, lp + "post_attention_layernorm", layer["pre_mlp_norm"])
  return out


_HF_ACT = {"gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu", "silu": "silu"}


def decoder_family(c: DecoderConfig) -> str:
  """The Hugging Face `model_type` whose math a DecoderConfig is."""
  if c.parallel_block:
    return "cohere"
  if c.qk_norm:
    return "gemma3_text"
  return "gemma2" if c.post_norms else "gemma"


def _hf_layer_types(c: DecoderConfig) -> list[str]:
  names = {"local": "sliding_attention", "global": "full_attention"}
  return [names[c.layer_type(i)] for i in range(c.num_layers)]


def decoder_hf_config(c: DecoderConfig) -> dict:
  """config.json fields of the text model (transformers fills in the rest)."""
  kind = decoder_family(c)
  hf = {
      "model_type": kind,
      "vocab_size": c.vocab_size,
      "hidden_size": c.d_model,
      "intermediate_size": c.d_ff,
      "num_hidden_layers": c.num_layers,
      "num_attention_heads": c.num_heads,
      "num_key_value_heads": c.num_kv_heads,
      "head_dim": c.head_dim,
      "tie_word_embeddings": True,
      "attention_bias": False,
  }
  if kind == "cohere":
    return {
        **hf,
        "hidden_act": _HF_ACT[c.mlp_activation],
        "layer_norm_eps": c.norm_epsilon,
        "logit_scale": c.output_scale,
        "use_qk_norm": False,
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_base},
    }
  hf.update(hidden_activation=_HF_ACT[c.mlp_activation], rms_norm_eps=c.norm_epsilon)
  if kind == "gemma":
    return {**hf, "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_base}}
  scalar = c.head_dim if c.query_scale is None else c.query_scale**-2
  hf.update(
      query_pre_attn_scalar=round(scalar) if abs(scalar - round(scalar)) < 1e-6 else scalar,
      attn_logit_softcapping=c.attn_logit_softcap,
      final_logit_softcapping=c.final_logit_softcap,
      sliding_window=c.sliding_window or 4096,
      layer_types=_hf_layer_types(c),
  )
  if kind == "gemma2":
    if c.rope_scale_factor != 1.0 or c.local_rope_base not in (None, c.rope_base):
      raise ValueError("gemma2 has one unscaled RoPE: rope_scale_factor / local_rope_base")
    return {**hf, "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_base}}
  full = {"rope_type": "default", "rope_theta": c.rope_base}
  if c.rope_scale_factor != 1.0:
    full = {"rope_type": "linear", "factor": c.rope_scale_factor, "rope_theta": c.rope_base}
  local = {"rope_type": "default", "rope_theta": c.local_rope_base or c.rope_base}
  return {**hf, "rope_parameters": {"full_attention": full, "sliding_attention": local}}


def vision_hf_config(c: VisionConfig) -> dict:
  return {
      "model_type": "siglip_vision_model",
      "hidden_size": c.d_model,
      "intermediate_size": c.d_ff,
      "num_hidden_layers": c.num_layers,
      "num_attention_heads": c.num_heads,
      "image_size": c.image_size,
      "patch_size": c.patch_size,
      "hidden_act": _HF_ACT[c.mlp_activation],
      "layer_norm_eps": c.norm_epsilon,
      "vision_use_head": False,  # medpalm keeps every patch token; there is no MAP head
  }


_CAUSAL_LM = {
    "gemma": "GemmaForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "cohere": "CohereForCausalLM",
}


def export_hf(config, params: dict, path, dtype: str = "bfloat16") -> pathlib.Path:
  """Writes `path/config.json` + `path/model.safetensors` that transformers loads as the same
  architecture (PaliGemma 1/2, Gemma 3 multimodal, Gemma 1/2/3 text, Cohere, SigLIP vision).

  config: a MedPalmMConfig, DecoderConfig or VisionConfig; params: the matching tree (MedPalmM,
  PalmDecoder or VisionTransformer params, any layer layout). dtype: of the written tensors.
  """
  params = _host(params)
  if isinstance(config, MedPalmMConfig):
    decoder, vision = config.decoder, config.vision
    tensors = {
        **siglip_tensors(params["vision"], "model.vision_tower.vision_model.", vision),
        **decoder_tensors(params["decoder"], "model.language_model.", decoder),
    }
    text, kind = decoder_hf_config(decoder), decoder_family(decoder)
    if config.projector == "pool_norm_linear":
      if kind != "gemma3_text":
        raise ValueError(f"the pooled projector exports as gemma3, whose text model is not {kind}")
      pp = "model.multi_modal_projector."
      _put_norm(tensors, pp + "mm_soft_emb_norm", params["projector"]["norm"])
      tensors[pp + "mm_input_projection_weight"] = np.asarray(params["projector"]["kernel"])
      hf = {
          "model_type": "gemma3",
          "architectures": ["Gemma3ForConditionalGeneration"],
          "mm_tokens_per_image": config.pooled_tokens,
          "image_token_index": config.image_token_id,
          "tie_word_embeddings": True,
      }
    else:
      if kind not in ("gemma", "gemma2"):
        raise ValueError(
            f"the affine projector exports as paligemma, whose text model is not {kind}"
        )
      pp = "model.multi_modal_projector.linear."
      tensors[pp + "weight"] = _hf_linear(params["projector"]["kernel"])
      tensors[pp + "bias"] = np.asarray(params["projector"]["bias"])
      hf = {
          "model_type": "paligemma",
          "architectures": ["PaliGemmaForConditionalGeneration"],
          "image_token_index": config.image_token_id,
          "projection_dim": decoder.d_model,
          "hidden_size": decoder.d_model,
          "vocab_size": decoder.vocab_size,
          "tie_word_embeddings": True,
      }
    hf.update(text_config=text, vision_config=vision_hf_config(vision))
  elif isinstance(config, DecoderConfig):
    tensors = decoder_tensors(params, "model.", config)
    hf = {**decoder_hf_config(config), "architectures": [_CAUSAL_LM[decoder_family(config)]]}
  elif isinstance(config, VisionConfig):
    tensors = siglip_tensors(params, "vision_model.", config)
    hf = {**vision_hf_config(config), "architectures": ["SiglipVisionModel"]}
  else:
    raise ValueError(f"cannot export a {type(config).__name__}")
  hf["dtype"] = dtype
  out = pathlib.Path(path)
  out.mkdir(parents=True, exist_ok=True)
  np_dtype = np.dtype(dtype)
  save_file(
      {name: np.ascontiguousarray(t.astype(np_dtype)) for name, t in tensors.items()},
      str(out / "model.safetensors"),
      metadata={"format": "pt"},
  )
  (out / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
  return out


def _host(tree):
  """Nested dicts of numpy arrays (gathers jax arrays; unboxes logical partitioning)."""
  if isinstance(tree, dict) or hasattr(tree, "items"):
    return {k: _host(v) for k, v in tree.items()}
  value = getattr(tree, "value", tree)  # flax Partitioned boxes
  return np.asarray(value)


# --- fine-tuning from an open checkpoint ----------------------------------------------------------


def hf_model_config(path, vocab=None, **runtime) -> MedPalmMConfig:
  """The MedPalmMConfig of a multimodal Hugging Face checkpoint (PaliGemma 1/2, Gemma 3), for
  gin: `MedPalmM.config = @convert.hf_model_config()` next to a restore through `import_hf`.

  vocab: the run's vocabulary. Its ids must fit the checkpoint's embedding table (which cannot
  grow without new rows nobody trained); its image placeholder id becomes the model's.
  runtime: dtype, param_dtype, scan_layers, remat_policy, dropout_rate (both towers).
  """
  hf = read_config(path, ("paligemma", "gemma3"))
  text, kind = _text_config(hf, ("gemma", "gemma2", "gemma3_text"))
  vision = vision_config_from_hf(hf["vision_config"])
  decoder = gemma_config_from_hf(text, kind, in_paligemma=hf["model_type"] == "paligemma")
  image_id = hf.get("image_token_id", hf.get("image_token_index"))
  if vocab is not None:
    if int(vocab.vocab_size) > decoder.vocab_size:
      raise ValueError(
          f"{path}: the run's vocabulary has {vocab.vocab_size} ids but the checkpoint's "
          f"embedding table (text_config.vocab_size) has {decoder.vocab_size} rows"
      )
    placeholder = getattr(vocab, "image_placeholder_id", None)
    image_id = image_id if placeholder is None else int(placeholder)
  extra = {}
  if hf["model_type"] == "gemma3":
    extra = dict(
        projector="pool_norm_linear",
        pooled_tokens=hf.get("mm_tokens_per_image", 256),
        image_attention="bidirectional",
    )
  config = MedPalmMConfig(hf["model_type"], vision, decoder, image_id, **extra)
  return config.replace(**runtime) if runtime else config


def read_checkpoint_params(path) -> dict:
  """Parameters of a medpalm checkpoint as numpy trees: a `checkpoint_<step>` directory, a model
  dir (its latest checkpoint) or the directory `python -m medpalm.convert import` wrote."""
  import orbax.checkpoint as ocp  # Local: only the command line reads medpalm checkpoints.

  path = pathlib.Path(path).absolute()
  if (path / "params").is_dir():
    return _host(ocp.StandardCheckpointer().restore(path / "params"))
  if not (path / "state").is_dir():
    steps = sorted(path.glob("checkpoint_*"), key=lambda p: int(p.name.split("_")[-1]))
    steps = [p for p in steps if p.name.split("_")[-1].isdigit() and (p / "state").is_dir()]
    if not steps:
      raise ValueError(f"{path}: no params/, state/ or checkpoint_<step>/state inside")
    path = steps[-1]
  state = ocp.StandardCheckpointer().restore(path / "state")
  return _host(state["params"])


def main(argv=None) -> int:
  """python -m medpalm.convert import HF_DIR OUT_DIR
  python -m medpalm.convert export CHECKPOINT HF_CONFIG_DIR OUT_DIR [--dtype bfloat16]

  import: HF_DIR (save_pretrained) -> OUT_DIR/params (orbax), OUT_DIR/config.json (the source's,
    which `export` reuses) and OUT_DIR/import_report.json.
  export: CHECKPOINT (a medpalm checkpoint_<step>, model dir or import directory) with the
    architecture of HF_CONFIG_DIR's config.json (the checkpoint it was fine-tuned from) ->
    OUT_DIR loadable by transformers' from_pretrained.
  """
  import argparse
  import shutil

  parser = argparse.ArgumentParser(prog="python -m medpalm.convert", description=main.__doc__)
  sub = parser.add_subparsers(dest="command", required=True)
  imp = sub.add_parser("import", help="Hugging Face directory -> medpalm params")
  imp.add_argument("hf_dir")
  imp.add_argument("out_dir")
  exp = sub.add_parser("export", help="medpalm checkpoint -> Hugging Face directory")
  exp.add_argument("checkpoint")
  exp.add_argument("hf_config_dir")
  exp.add_argument("out_dir")
  exp.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
  args = parser.parse_args(argv)
  if args.command == "import":
    import orbax.checkpoint as ocp

    config, params, report = import_hf(args.hf_dir)
    out = pathlib.Path(args.out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(out / "params", params)
    checkpointer.wait_until_finished()
    shutil.copy(pathlib.Path(args.hf_dir) / "config.json", out / "config.json")
    (out / "import_report.json").write_text(json.dumps(dataclasses.asdict(report), indent=1))
    print(f"imported {len(report.used)} tensors ({len(report.unused)} unused) into {out}")
    return 0
  config, _, _ = import_hf_config(args.hf_config_dir)
  params = read_checkpoint_params(args.checkpoint)
  out = export_hf(config, params, args.out_dir, dtype=args.dtype)
  print(f"exported {type(config).__name__} to {out}")
  return 0


def import_hf_config(path):
  """(config, model_type, hf dict) of a supported checkpoint directory, reading no tensors."""
  hf = read_config(path, tuple(IMPORTERS))
  kind = hf["model_type"]
  if kind in ("paligemma", "gemma3"):
    return hf_model_config(path), kind, hf
  if kind in GEMMA_TYPES:
    return gemma_config_from_hf(hf, kind), kind, hf
  if kind == "cohere":
    return cohere_config_from_hf(hf), kind, hf
  return vision_config_from_hf(hf.get("vision_config", hf)), kind, hf


if __name__ == "__main__":
  raise SystemExit(main())
