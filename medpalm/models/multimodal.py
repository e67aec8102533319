"""Multimodal sentences: image rows written into placeholder rows, attention masks, input checks.

PaLM-E places the projected image tokens where the `<img>` placeholders stand in the text, and the
image rows take the text positions they replace (so RoPE sees them as ordinary tokens).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from medpalm.models.configs import MedPalmMConfig
from medpalm.models.layers import Array


def attention_mask(
    length: int,
    decoder_causal_attention: Array | None = None,
    decoder_target_tokens: Array | None = None,
) -> Array:
  """bool[B, 1, T, T] (B = 1 when only causal): True where query t may attend to key s.

  Causal everywhere (PaLM-E); with `decoder_causal_attention` (int/bool[B, T], 1 on the prefix)
  the prefix also attends bidirectionally within itself (prefix LM, PaliGemma). With
  `decoder_target_tokens` (int32[B, T], 0 = padding) padding rows and columns are masked, as T5X
  does (the shifted inputs start with id 0, so the targets are what tell padding apart).
  """
  idx = jnp.arange(length)
  mask = (idx[None, :] <= idx[:, None])[None, None]  # [1, 1, T, T]
  if decoder_causal_attention is not None:
    prefix = decoder_causal_attention.astype(bool)
    mask = mask | (prefix[:, None, :, None] & prefix[:, None, None, :])
  if decoder_target_tokens is not None:
    valid = decoder_target_tokens > 0
    mask = mask & valid[:, None, :, None] & valid[:, None, None, :]
  return mask


def image_block_mask(image_rows: Array) -> Array:
  """bool[B, 1, T, T]: True where query and key are rows of the same image (one contiguous run
  of placeholder rows, image_rows bool[B, T]); Gemma 3 lets each image see itself whole."""
  starts = image_rows & ~jnp.pad(image_rows, ((0, 0), (1, 0)))[:, :-1]
  block = jnp.where(image_rows, jnp.cumsum(starts, axis=1), 0)
  same = block[:, :, None] == block[:, None, :]
  return (same & image_rows[:, :, None] & image_rows[:, None, :])[:, None]


def decoder_masks(
    length: int,
    decoder_causal_attention: Array | None = None,
    decoder_target_tokens: Array | None = None,
    image_rows: Array | None = None,
    window: int | None = None,
):
  """The decoder's attention mask, or (global, local) masks for a decoder with local layers.

  image_rows (bool[B, T]): each image's rows also attend to each other (Gemma 3). window: the
  local layers' sliding window. With a bidirectional prefix the local mask is the windowed causal
  mask OR the prefix block (PaliGemma 2: the prefix is whole in every layer); otherwise the local
  layers restrict the global mask to the window (Gemma 3: AND(window, OR(causal, image block))),
  which `blocks.Stack` derives itself.
  """
  mask = attention_mask(length, decoder_causal_attention, None)
  if image_rows is not None:
    mask = mask | image_block_mask(image_rows)
  pad = lambda m: m
  if decoder_target_tokens is not None:
    valid = decoder_target_tokens > 0
    pad = lambda m: m & valid[:, None, :, None] & valid[:, None, None, :]
  if window is None or decoder_causal_attention is None:
    return pad(mask)
  idx = jnp.arange(length)
  local = ((idx[None, :] <= idx[:, None]) & (idx[None, :] > idx[:, None] - window))[None, None]
  prefix = decoder_causal_attention.astype(bool)
  local = local | (prefix[:, None, :, None] & prefix[:, None, None, :])
  return pad(mask), pad(local)


def compact_valid_images(image_mask: Array) -> Array:
  """int32[B, N] permutation that moves the valid images of each row first, in order."""
  return jnp.argsort(~image_mask.astype(bool), axis=1, stable=True).astype(jnp.int32)


def merge_image_rows(text: Array, images: Array, placeholders: Array) -> Array:
  """Writes image rows into placeholder rows, in order, per example.

  Args:
    text: float[B, T, D] token embeddings.
    images: float[B, R, D] image rows, valid images first (R = N · tokens per image).
    placeholders: bool[B, T], True at placeholder ids; the k-th True row receives image row k.
  Returns:
    float[B, T, D].
  """
  index = jnp.clip(jnp.cumsum(placeholders, axis=1) - 1, 0, images.shape[1] - 1)
  gathered = jnp.take_along_axis(images, index[..., None], axis=1)
  return jnp.where(placeholders[..., None], gathered.astype(text.dtype), text)


def _concrete(x) -> bool:
  return x is not None and not isinstance(x, jax.core.Tracer)


def validate_inputs(config: MedPalmMConfig, tokens, images=None, image_mask=None) -> None:
  """Raises ValueError naming what is wrong before any XLA error.

  Shapes and dtypes are always checked; the placeholder count (256 × valid images per row) is
  checked whenever the values are concrete (outside `jit`; `MedPalmMModel.validate_batch` checks
  host batches before they enter a compiled step).
  """
  if tokens.ndim != 2:
    raise ValueError(f"decoder_input_tokens must be int[B, T], got shape {tokens.shape}")
  if not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f"decoder_input_tokens must be integers, got {tokens.dtype}")
  if images is None:
    if _concrete(tokens) and np.any(np.asarray(tokens) == config.image_token_id):
      raise ValueError(
          f"decoder_input_tokens contain image placeholder id "
          f"{config.image_token_id} but no images were given"
      )
    return
  size = config.vision.image_size
  if images.ndim != 5:
    raise ValueError(
        f"images must be uint8[B, N, {size}, {size}, 3] (rank 5), got rank "
        f"{images.ndim} with shape {images.shape}"
    )
  if images.dtype != jnp.uint8:
    raise ValueError(
        f"images must be uint8 (normalisation happens in the model), got " f"{images.dtype}"
    )
  if images.shape[2:] != (size, size, 3):
    raise ValueError(
        f"images must be [B, N, {size}, {size}, 3] for config "
        f"{config.name!r}, got {images.shape}"
    )
  if images.shape[0] != tokens.shape[0]:
    raise ValueError(f"images batch {images.shape[0]} != tokens batch {tokens.shape[0]}")
  if image_mask is not None and image_mask.shape != images.shape[:2]:
    raise ValueError(
        f"image_mask must be bool[B, N] = {images.shape[:2]}, got " f"{image_mask.shape}"
    )
  if _concrete(tokens) and (image_mask is None or _concrete(image_mask)):
    per_row = np.sum(np.asarray(tokens) == config.image_token_id, axis=1)
    valid = (
        np.full(images.shape[:2], True)
        if image_mask is None
        else np.asarray(image_mask).astype(bool)
    )
    expected = valid.sum(axis=1) * config.num_image_tokens
    bad = np.nonzero(per_row != expected)[0]
    if bad.size:
      row = int(bad[0])
      raise ValueError(
          f"row {row}: {int(per_row[row])} image placeholder tokens (id "
          f"{config.image_token_id}) but {int(valid[row].sum())} valid image(s) × "
          f"{config.num_image_tokens} tokens = {int(expected[row])} expected"
      )
