"""MedPalmM: ViT -> affine projector (PaLM-E's ψ) -> PaLM decoder over multimodal sentences.

Inputs follow the SeqIO / T5X feature names: `decoder_input_tokens`, `decoder_target_tokens`,
`decoder_causal_attention`, plus `images: uint8[B, N, 224, 224, 3]` and `image_mask: bool[B, N]`.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from medpalm.models.configs import MedPalmMConfig
from medpalm.models import multimodal
from medpalm.models.layers import Array, DenseGeneral, Norm, constrain, param
from medpalm.models.palm import PalmDecoder
from medpalm.models.vit import VisionTransformer


class PoolNormProjector(nn.Module):
  """Gemma 3's projector: float[N, P·P, C] patch tokens -> float[N, S·S, D].

  Averages k×k blocks of the P×P patch grid (k = P / S, row-major as the patches), applies
  RMSNorm(1 + w) and a bias-free [C, D] matmul; 4096 patches at 896 px become 256 tokens.
  """

  config: MedPalmMConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = self.config
    n, tokens, channels = x.shape
    grid, side = math.isqrt(tokens), math.isqrt(c.pooled_tokens)
    k = grid // side
    x = x.astype(jnp.float32).reshape(n, side, k, side, k, channels).mean(axis=(2, 4))
    x = x.reshape(n, side * side, channels)
    dtype, param_dtype = jnp.dtype(c.decoder.dtype), jnp.dtype(c.decoder.param_dtype)
    x = Norm(
        kind="rmsnorm",
        epsilon=c.vision.norm_epsilon,
        scale_plus_one=True,
        axis_name="vit_embed",
        dtype=dtype,
        param_dtype=param_dtype,
        name="norm",
    )(x)
    kernel = param(
        self,
        "kernel",
        nn.initializers.lecun_normal(),
        (channels, c.decoder.d_model),
        ("vit_embed", "embed"),
        param_dtype,
    )
    return x @ kernel.astype(dtype)


class MedPalmM(nn.Module):
  config: MedPalmMConfig

  def setup(self):
    c = self.config
    self.vision = VisionTransformer(c.vision)
    if c.projector == "pool_norm_linear":
      self.projector = PoolNormProjector(c)
    else:
      self.projector = DenseGeneral(
          (c.vision.d_model,),
          (c.decoder.d_model,),
          ("vit_embed", "embed"),
          use_bias=True,
          dtype=jnp.dtype(c.decoder.dtype),
          param_dtype=jnp.dtype(c.decoder.param_dtype),
      )
    self.decoder = PalmDecoder(c.decoder)

  def embed_images(
      self, images: Array, image_mask: Array | None = None, *, enable_dropout: bool = False
  ) -> Array:
    """uint8[B, N, H, W, 3], bool[B, N] -> float[B, N·M, D] projected image rows (M per image).

    Valid images come first, in order, so the k-th placeholder row of a row gets the k-th row of
    its valid images whatever the mask looks like; rows of invalid images are zero.
    """
    b, n = images.shape[:2]
    if image_mask is None:
      image_mask = jnp.ones((b, n), bool)
    order = multimodal.compact_valid_images(image_mask)
    images = jnp.take_along_axis(images, order[:, :, None, None, None], axis=1)
    valid = jnp.take_along_axis(image_mask.astype(bool), order, axis=1)
    x = self.vision(images.reshape(b * n, *images.shape[2:]), enable_dropout=enable_dropout)
    x = self.projector(x)
    x = jnp.where(valid.reshape(b * n, 1, 1), x, 0)
    x = x.reshape(b, n * x.shape[1], x.shape[2])
    return constrain(x, ("batch", "length", "embed"))

  def embed_tokens(self, tokens: Array) -> Array:
    """int32[B, T] -> float[B, T, D] text embeddings (placeholder rows still hold their id's)."""
    return self.decoder.embed(tokens)

  def __call__(
      self,
      decoder_input_tokens: Array,
      decoder_target_tokens: Array | None = None,
      decoder_segment_ids: Array | None = None,
      decoder_positions: Array | None = None,
      decoder_causal_attention: Array | None = None,
      images: Array | None = None,
      image_mask: Array | None = None,
      *,
      enable_dropout: bool = False,
      decode: bool = False,
      prefill: bool = False,
      max_decode_length: int | None = None,
      prompt_lengths: Array | None = None,
      logit_positions: Array | None = None,
  ) -> Array:
    """Logits float32[B, T, vocab] of the multimodal sentence (T5X's decoder-only signature).

    `decoder_causal_attention` (int[B, T], 1 on the prefix) makes the prefix bidirectional
    (PaliGemma); without it attention is causal over the whole sequence (PaLM-E).

    KV cache (needs `mutable=["cache"]`): `prefill=True` runs the full sequence, images included,
    and stores every position's keys/values in a cache of `max_decode_length` positions;
    `decode=True` takes one token per row (`decoder_input_tokens: int32[B, 1]`) at
    `decoder_positions: int32[B, 1]` and attends to the cache up to that position.
    `prompt_lengths` (int32[B], prefill only): each row's real prompt length, which the
    sliding-window layers' ring buffers need to keep the right keys (default: the whole row).
    `logit_positions` (int32[B, K]): logits float32[B, K, vocab] at those positions only (the
    loss positions of training), which spares the output head the other T - K rows.
    """
    c = self.config
    tokens = decoder_input_tokens
    if decoder_segment_ids is not None:
      raise ValueError(
          "packed examples (decoder_segment_ids) are not supported: images cannot "
          "be packed; use a feature converter with pack=False"
      )
    if decode:
      if images is not None or decoder_positions is None or tokens.shape[1] != 1:
        raise ValueError(
            "decode=True takes one token per row, decoder_positions int32[B, 1] "
            "and no images (their keys/values are in the cache from the prefill)"
        )
      x = self.embed_tokens(tokens)
      return self.decoder(tokens, decoder_positions, None, embeddings=x, mode="extend")
    multimodal.validate_inputs(c, tokens, images, image_mask)
    x = self.embed_tokens(tokens)
    if images is not None:
      rows = self.embed_images(images, image_mask, enable_dropout=enable_dropout)
      x = multimodal.merge_image_rows(x, rows, tokens == c.image_token_id)
    if decoder_positions is None:
      decoder_positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    local = "local" in c.decoder.pattern
    mask = multimodal.decoder_masks(
        tokens.shape[1],
        decoder_causal_attention,
        decoder_target_tokens,
        image_rows=(tokens == c.image_token_id) if c.image_attention == "bidirectional" else None,
        window=c.decoder.sliding_window if local else None,
    )
    mode, cache_length = "full", None
    if prefill:
      mode, cache_length = "prefill", max_decode_length or tokens.shape[1]
      if cache_length < tokens.shape[1]:
        raise ValueError(
            f"max_decode_length {cache_length} is shorter than the prompt "
            f"({tokens.shape[1]} positions)"
        )
    return self.decoder(
        tokens,
        decoder_positions,
        mask,
        embeddings=x,
        enable_dropout=enable_dropout,
        mode=mode,
        cache_length=cache_length,
        prompt_lengths=prompt_lengths if prefill else None,
        logit_positions=logit_positions,
    )


def dummy_inputs(
    config: MedPalmMConfig, batch: int = 1, length: int | None = None, num_images: int = 1
) -> dict[str, Array]:
  """A well-formed batch of zeros (with its placeholders) for `init` / `eval_shape`."""
  m = config.num_image_tokens * num_images
  length = length or m + 8
  size = config.vision.image_size
  tokens = jnp.zeros((batch, length), jnp.int32).at[:, 1 : m + 1].set(config.image_token_id)
  return {
      "decoder_input_tokens": tokens,
      "images": jnp.zeros((batch, num_images, size, size, 3), jnp.uint8),
      "image_mask": jnp.ones((batch, num_images), bool),
  }


def init(config: MedPalmMConfig, rng: Array, batch: int = 1) -> dict:
  """Boxed (logically partitioned) variables of a freshly initialised MedPalmM."""
  return MedPalmM(config).init(rng, **dummy_inputs(config, batch))


def abstract_params(config: MedPalmMConfig) -> dict:
  """Unboxed parameter ShapeDtypeStructs, from `jax.eval_shape` (nothing is allocated)."""
  abstract = jax.eval_shape(lambda: init(config, jax.random.key(0)))
  return nn.meta.unbox(abstract)["params"]


def parameter_counts(config: MedPalmMConfig) -> dict[str, int]:
  """Parameter counts per part from `jax.eval_shape` (nothing is allocated)."""
  shapes = abstract_params(config)
  count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
  parts = {
      "decoder": count(shapes["decoder"]),
      "vision": count(shapes["vision"]),
      "projector": count(shapes["projector"]),
  }
  parts["total"] = sum(parts.values())
  return parts
