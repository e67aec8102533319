"""Losses of the training step: cross-entropy with z-loss and label smoothing, loss weights."""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

NORMALIZING_FACTORS = ("NUM_REAL_TARGET_TOKENS", "NUM_TOTAL_TARGET_TOKENS")


def cross_entropy_with_logits(
    logits: jax.Array, targets: jax.Array, z_loss: float, label_smoothing: float = 0.0
) -> tuple[jax.Array, jax.Array]:
  """Per-token cross-entropy float32[B, T] (z-loss included) and the z-loss part.

  logits: float32[B, T, V]; targets: int32[B, T]. Label smoothing spreads `label_smoothing` over
  the other V-1 classes and subtracts the entropy of that target, so a perfect model scores 0.
  """
  vocab = logits.shape[-1]
  log_z = jax.nn.logsumexp(logits, axis=-1)
  log_probs = logits - log_z[..., None]
  target_log_prob = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  if label_smoothing:
    confidence, low = 1.0 - label_smoothing, label_smoothing / (vocab - 1)
    mean_log_prob = (jnp.sum(log_probs, axis=-1) - target_log_prob) / (vocab - 1)
    loss = -(confidence * target_log_prob + label_smoothing * mean_log_prob)
    loss -= -(confidence * np.log(confidence) + label_smoothing * np.log(low + 1e-20))
  else:
    loss = -target_log_prob
  z = z_loss * jnp.square(log_z)
  return loss + z, z


def weighted_positions(weights: jax.Array, count: int) -> jax.Array:
  """int32[B, count]: each row's positions of nonzero weight, in order, then positions of weight
  zero (so a row with fewer than `count` weighted positions is padded with weight-0 ones).

  Training computes logits only there (`MedPalmMModel.loss_positions`); a row with more than
  `count` weighted positions would lose the rest, which the host-side batch check refuses.
  """
  order = jnp.argsort(weights <= 0, axis=1, stable=True)  # weighted first, each in position order
  return order[:, :count].astype(jnp.int32)


def loss_weights(batch: Mapping[str, jax.Array]) -> jax.Array:
  """float32[B, T]: `decoder_loss_weights`, or 1 on every non-padding target token."""
  weights = batch.get("decoder_loss_weights")
  if weights is None:
    weights = batch["decoder_target_tokens"] > 0
  return weights.astype(jnp.float32)
