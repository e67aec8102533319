"""Named architecture configs: `tiny`, `12b`, `84b`, `562b` and the PaliGemma-shaped family.

Sizes follow the paper (Med-PaLM M = PaLM-E = ViT + PaLM): 12b = ViT-e + PaLM 8B, 84b = ViT-22B +
PaLM 62B, 562b = ViT-22B + PaLM 540B. The open starting points: paligemma_3b (SigLIP + Gemma 2B),
paligemma2_3b (SigLIP + Gemma 2 2B) and gemma3_4b (MedGemma 4B's shapes: SigLIP at 896 px pooled
to 256 tokens + Gemma 3 4B). Switches on `TransformerConfig` cover the blocks of every
architecture whose weights we load (SigLIP, Gemma, Cohere) so one implementation serves all.

    python -m medpalm.models --summary      # parameter counts by eval_shape, no allocation
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "save_attention_out")
ATTENTION_IMPLEMENTATIONS = ("jax", "recompute", "reference", "splash")  # splash: TPU kernel
ACTIVATIONS = ("silu", "gelu", "gelu_tanh")
LAYER_TYPES = ("global", "local")
PROJECTORS = ("affine", "pool_norm_linear")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """The block shared by the vision tower and the decoder.

  `parallel_block`: y = x + Attn(N(x)) + MLP(N(x)) with one norm (PaLM, ViT-22B); otherwise the
  sequential pre-norm block y' = x + Attn(N1(x)); y = y' + MLP(N2(y')) (SigLIP, Gemma, ViT-e).
  `gated_mlp`: SwiGLU / GeGLU with `d_ff` per matrix (PaLM, Gemma); otherwise fc1-act-fc2.
  `norm`: "layernorm" (mean-centred) or "rmsnorm"; `norm_scale_plus_one` applies the scale as 1 + w.
  `post_norms`: sequential blocks also norm the attention and MLP outputs before the residual add
  (Gemma 2 and 3: y' = x + N2(Attn(N1(x))); y = y' + N4(MLP(N3(y')))).
  `query_scale`: queries are multiplied by it (None: head_dim ** -0.5; Gemma 2/3 use
  query_pre_attn_scalar ** -0.5). `attn_logit_softcap`: attention logits become
  cap * tanh(logits / cap) before the mask (Gemma 2).
  `layer_types`: the repeating pattern of "global" and "local" (sliding-window) layers from layer 0,
  () meaning all global; local layers attend to keys less than `sliding_window` positions back.
  The stack scans over whole repetitions of the pattern so compile time stays flat in depth.
  """

  num_layers: int
  d_model: int
  num_heads: int
  head_dim: int
  d_ff: int
  num_kv_heads: int
  parallel_block: bool
  gated_mlp: bool
  mlp_activation: str
  use_bias: bool
  norm: str = "layernorm"
  norm_epsilon: float = 1e-6
  norm_scale_plus_one: bool = False
  qk_norm: bool = False
  post_norms: bool = False
  query_scale: float | None = None
  attn_logit_softcap: float | None = None
  layer_types: tuple[str, ...] = ()
  sliding_window: int | None = None
  dropout_rate: float = 0.0
  dtype: str = "float32"
  param_dtype: str = "float32"
  scan_layers: bool = True
  remat_policy: str = "none"
  # "jax" (jax.nn.dot_product_attention), "recompute" (the backward pass recomputes the softmax
  # instead of storing it) or "reference" (plain einsums); see layers.dot_product_attention.
  attention: str = "jax"

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads={self.num_heads} not a multiple of " f"num_kv_heads={self.num_kv_heads}"
      )
    if self.mlp_activation not in ACTIVATIONS:
      raise ValueError(f"mlp_activation {self.mlp_activation!r} not in {ACTIVATIONS}")
    if self.norm not in ("layernorm", "rmsnorm"):
      raise ValueError(f"norm {self.norm!r} must be 'layernorm' or 'rmsnorm'")
    if self.attention not in ATTENTION_IMPLEMENTATIONS:
      raise ValueError(f"attention {self.attention!r} not in {ATTENTION_IMPLEMENTATIONS}")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy {self.remat_policy!r} not in {REMAT_POLICIES}")
    if any(t not in LAYER_TYPES for t in self.layer_types):
      raise ValueError(f"layer_types {self.layer_types} may only hold {LAYER_TYPES}")
    if "local" in self.layer_types and not self.sliding_window:
      raise ValueError("layer_types has local layers but sliding_window is not set")
    if self.post_norms and self.parallel_block:
      raise ValueError("post_norms needs the sequential block (parallel_block=False)")

  @property
  def pattern(self) -> tuple[str, ...]:
    """The repeating layer pattern (("global",) when every layer is global)."""
    return self.layer_types or ("global",)

  def layer_type(self, index: int) -> str:
    return self.pattern[index % len(self.pattern)]


@dataclasses.dataclass(frozen=True)
class VisionConfig(TransformerConfig):
  """ViT over `image_size`² pixels in `patch_size`² patches; all patch tokens go out."""

  image_size: int = 224
  patch_size: int = 14
  final_norm: bool = True

  @property
  def num_tokens(self) -> int:
    if self.image_size % self.patch_size:
      raise ValueError(f"image_size {self.image_size} not a multiple of patch {self.patch_size}")
    return (self.image_size // self.patch_size) ** 2


@dataclasses.dataclass(frozen=True)
class DecoderConfig(TransformerConfig):
  """PaLM decoder. `logits_scale=None` means PaLM's 1/sqrt(d_model) on the shared embedding.

  `local_rope_base`: RoPE base of local (sliding-window) layers (None: `rope_base`; Gemma 3 uses
  10k locally and 1M globally). `rope_scale_factor`: global layers divide positions by it (linear
  RoPE scaling, Gemma 3 4B and larger). `final_logit_softcap`: logits become
  cap * tanh(logits / cap) (Gemma 2).
  """

  vocab_size: int = 256_000
  rope_base: float = 10_000.0
  scale_embeddings: bool = False
  logits_scale: float | None = None
  local_rope_base: float | None = None
  rope_scale_factor: float = 1.0
  final_logit_softcap: float | None = None

  @property
  def output_scale(self) -> float:
    return self.d_model**-0.5 if self.logits_scale is None else self.logits_scale


@dataclasses.dataclass(frozen=True)
class MedPalmMConfig:
  """ViT + projector + decoder. `image_token_id` marks the placeholder rows in the text.

  `projector`: "affine" (PaLM-E's ψ, PaliGemma's linear layer) or "pool_norm_linear" (Gemma 3:
  average-pool the patch grid to `pooled_tokens` tokens, RMSNorm(1 + w), bias-free matmul).
  `image_attention`: "sequence" (image rows attend like the text around them: causal, or
  bidirectional inside the prefix) or "bidirectional" (each image's rows also see each other,
  Gemma 3).
  """

  name: str
  vision: VisionConfig
  decoder: DecoderConfig
  image_token_id: int
  projector: str = "affine"
  pooled_tokens: int | None = None
  image_attention: str = "sequence"

  def __post_init__(self):
    if self.projector not in PROJECTORS:
      raise ValueError(f"projector {self.projector!r} not in {PROJECTORS}")
    if self.image_attention not in ("sequence", "bidirectional"):
      raise ValueError(f"image_attention {self.image_attention!r}: 'sequence' or 'bidirectional'")
    if self.projector == "pool_norm_linear":
      side, grid = math.isqrt(self.pooled_tokens or 0), math.isqrt(self.vision.num_tokens)
      if not self.pooled_tokens or side * side != self.pooled_tokens or grid % side:
        raise ValueError(
            f"pooled_tokens {self.pooled_tokens} must be a square whose side divides the "
            f"{grid}x{grid} patch grid"
        )
    if not 0 <= self.image_token_id < self.decoder.vocab_size:
      raise ValueError(
          f"image_token_id {self.image_token_id} outside the vocabulary "
          f"[0, {self.decoder.vocab_size})"
      )

  @property
  def num_image_tokens(self) -> int:
    return self.pooled_tokens if self.projector == "pool_norm_linear" else self.vision.num_tokens

  def replace(self, **runtime) -> "MedPalmMConfig":
    """Same architecture with runtime switches (dtype, param_dtype, scan_layers, remat_policy,
    dropout_rate) set on both towers."""
    return dataclasses.replace(
        self,
        vision=dataclasses.replace(self.vision, **runtime),
        decoder=dataclasses.replace(self.decoder, **runtime),
    )


# --- vision towers --------------------------------------------------------------------------


def vit_e() -> VisionConfig:
  """ViT-e/14 (PaLI's "ViT-4B"): sequential pre-LN blocks with biases, GELU MLP."""
  return VisionConfig(
      num_layers=56,
      d_model=1792,
      num_heads=16,
      head_dim=112,
      d_ff=15360,
      num_kv_heads=16,
      parallel_block=False,
      gated_mlp=False,
      mlp_activation="gelu",
      use_bias=True,
  )


def vit_22b() -> VisionConfig:
  """ViT-22B/14: parallel block, QK LayerNorm, no biases in projections or norms."""
  return VisionConfig(
      num_layers=48,
      d_model=6144,
      num_heads=48,
      head_dim=128,
      d_ff=24576,
      num_kv_heads=48,
      parallel_block=True,
      gated_mlp=False,
      mlp_activation="gelu",
      use_bias=False,
      qk_norm=True,
  )


def siglip_so400m() -> VisionConfig:
  """SigLIP So400m/14 at 224 as in PaliGemma: pre-LN with biases, gelu-tanh, post-LN."""
  return VisionConfig(
      num_layers=27,
      d_model=1152,
      num_heads=16,
      head_dim=72,
      d_ff=4304,
      num_kv_heads=16,
      parallel_block=False,
      gated_mlp=False,
      mlp_activation="gelu_tanh",
      use_bias=True,
  )


# --- decoders -------------------------------------------------------------------------------


def palm(num_layers: int, d_model: int, num_heads: int, d_ff: int) -> DecoderConfig:
  """PaLM: parallel block, one bias-free LayerNorm, SwiGLU, multi-query attention, head 256."""
  return DecoderConfig(
      num_layers=num_layers,
      d_model=d_model,
      num_heads=num_heads,
      head_dim=256,
      d_ff=d_ff,
      num_kv_heads=1,
      parallel_block=True,
      gated_mlp=True,
      mlp_activation="silu",
      use_bias=False,
  )


def gemma_2b() -> DecoderConfig:
  """Gemma 2B as in PaliGemma: sequential block, RMSNorm(1+w), GeGLU, MQA, scaled embeddings."""
  return DecoderConfig(
      num_layers=18,
      d_model=2048,
      num_heads=8,
      head_dim=256,
      d_ff=16384,
      num_kv_heads=1,
      parallel_block=False,
      gated_mlp=True,
      mlp_activation="gelu_tanh",
      use_bias=False,
      norm="rmsnorm",
      norm_scale_plus_one=True,
      vocab_size=257_216,
      scale_embeddings=True,
      logits_scale=1.0,
  )


def gemma2_2b() -> DecoderConfig:
  """Gemma 2 2B as in PaliGemma 2 3B: post-norms, GQA 8/4, soft-capped attention (50) and logits
  (30), local (4096-token window) and global layers alternating from a local one."""
  return dataclasses.replace(
      gemma_2b(),
      num_layers=26,
      d_model=2304,
      num_kv_heads=4,
      d_ff=9216,
      post_norms=True,
      query_scale=256**-0.5,
      attn_logit_softcap=50.0,
      final_logit_softcap=30.0,
      layer_types=("local", "global"),
      sliding_window=4096,
  )


def gemma3_4b() -> DecoderConfig:
  """Gemma 3 4B (MedGemma 4B's decoder): QK norm, 5 local (1024-token window, RoPE base 10k) to
  1 global layer (RoPE base 1M, positions scaled by 1/8), 262,208 ids."""
  return dataclasses.replace(
      gemma_2b(),
      num_layers=34,
      d_model=2560,
      num_kv_heads=4,
      d_ff=10240,
      vocab_size=262_208,
      qk_norm=True,
      post_norms=True,
      query_scale=256**-0.5,
      layer_types=("local",) * 5 + ("global",),
      sliding_window=1024,
      rope_base=1_000_000.0,
      local_rope_base=10_000.0,
      rope_scale_factor=8.0,
  )


def _gemma3_4b_multimodal() -> MedPalmMConfig:
  """MedGemma 4B's shapes: SigLIP So400m/14 at 896 px (4096 patches) average-pooled to 256
  tokens, RMSNorm + matmul projector, Gemma 3 4B; each image's rows attend to each other."""
  return MedPalmMConfig(
      "gemma3_4b",
      dataclasses.replace(siglip_so400m(), image_size=896),
      gemma3_4b(),
      image_token_id=262_144,
      projector="pool_norm_linear",
      pooled_tokens=256,
      image_attention="bidirectional",
  )


def _tiny() -> MedPalmMConfig:
  vision = VisionConfig(
      num_layers=2,
      d_model=64,
      num_heads=4,
      head_dim=16,
      d_ff=128,
      num_kv_heads=4,
      parallel_block=False,
      gated_mlp=False,
      mlp_activation="gelu",
      use_bias=True,
  )
  decoder = dataclasses.replace(
      palm(num_layers=2, d_model=64, num_heads=4, d_ff=256), head_dim=16, vocab_size=1024
  )
  return MedPalmMConfig("tiny", vision, decoder, image_token_id=1023)


CONFIGS: dict[str, Callable[[], MedPalmMConfig]] = {
    "tiny": _tiny,
    "12b": lambda: MedPalmMConfig("12b", vit_e(), palm(32, 4096, 16, 16384), 255_999),
    "84b": lambda: MedPalmMConfig("84b", vit_22b(), palm(64, 8192, 32, 32768), 255_999),
    # PaLM 540B: 48 heads x 256 = 12288 attention width, narrower than d_model 18432.
    "562b": lambda: MedPalmMConfig("562b", vit_22b(), palm(118, 18432, 48, 73728), 255_999),
    "paligemma_3b": lambda: MedPalmMConfig("paligemma_3b", siglip_so400m(), gemma_2b(), 257_152),
    "paligemma2_3b": lambda: MedPalmMConfig("paligemma2_3b", siglip_so400m(), gemma2_2b(), 257_152),
    "gemma3_4b": _gemma3_4b_multimodal,
}


def get_config(
    name: str, *, image_size: int | None = None, vocab=None, vocab_multiple: int = 128, **runtime
) -> MedPalmMConfig:
  """Returns the named config, with runtime switches (see `MedPalmMConfig.replace`) applied.

  image_size: overrides the vision tower's input size (e.g. 28 for fast tests: 4 image tokens).
  vocab: a vocabulary whose ids the model must cover (gin: the run's vocabulary). The decoder's
    vocab_size becomes `vocab.vocab_size` rounded up to `vocab_multiple` (so the vocab dimension
    splits over a `model` mesh axis; the extra rows are never targets), and `image_token_id`
    becomes `vocab.image_placeholder_id` when the vocabulary has one.
  """
  if name not in CONFIGS:
    raise ValueError(f"unknown config {name!r}; known configs: {', '.join(CONFIGS)}")
  config = CONFIGS[name]()
  if image_size is not None:
    config = dataclasses.replace(
        config, vision=dataclasses.replace(config.vision, image_size=image_size)
    )
  if vocab is not None:
    size = -(-int(vocab.vocab_size) // vocab_multiple) * vocab_multiple
    image_id = getattr(vocab, "image_placeholder_id", None)
    config = dataclasses.replace(
        config,
        decoder=dataclasses.replace(config.decoder, vocab_size=size),
        image_token_id=config.image_token_id if image_id is None else int(image_id),
    )
  return config.replace(**runtime) if runtime else config
