"""Rank classification: score every option of a multiple-choice prompt, normalise over options.

Classification tasks (MIMIC-CXR conditions, PAD-UFES-20, mammography, genomics) are evaluated by
macro-AUC, which needs class probabilities, not one generated answer: each option's target text is
scored after the prompt with `score_batch` (sum of target log-likelihoods), and a softmax over
the options gives P(class | prompt).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def option_batch(batch: dict, options: Sequence[Sequence[int]]) -> dict:
  """Expands a prompt batch [B, T] to one row per (example, option): [B·C, T + max option]
  (numpy, on the host; rows example-major: row b·C + k is option k of example b).

  `batch` holds `decoder_input_tokens` and `decoder_causal_attention` (1 on the prompt, as the
  model's feature converter makes it) and optionally `images` / `image_mask`; `options` are the
  C option token sequences (e.g. "Yes." / "No."), shared by every example.
  """
  if not options or any(len(o) == 0 for o in options):
    raise ValueError("rank classification needs at least one option and no empty option")
  tokens = np.asarray(batch["decoder_input_tokens"])
  causal = np.asarray(batch["decoder_causal_attention"]).astype(bool)
  b, t = tokens.shape
  c, longest = len(options), max(len(o) for o in options)
  length = t + longest
  inputs = np.zeros((b, c, length), np.int32)
  targets = np.zeros_like(inputs)
  weights = np.zeros((b, c, length), np.float32)
  prompt_lengths = causal.sum(axis=1)
  for row in range(b):
    p = int(prompt_lengths[row])
    for k, option in enumerate(options):
      sequence = np.concatenate([tokens[row, :p], np.asarray(option, np.int32)])
      inputs[row, k, : len(sequence)] = sequence
      targets[row, k, : len(sequence) - 1] = sequence[1:]
      weights[row, k, p - 1 : len(sequence) - 1] = 1.0
  out = {
      "decoder_input_tokens": inputs.reshape(b * c, length),
      "decoder_target_tokens": targets.reshape(b * c, length),
      "decoder_loss_weights": weights.reshape(b * c, length),
      "decoder_causal_attention": np.pad(causal, ((0, 0), (0, longest))).repeat(c, 0),
  }
  for name in ("images", "image_mask"):
    if batch.get(name) is not None:
      out[name] = np.repeat(np.asarray(batch[name]), c, axis=0)
  return out


def rank_classify(
    model, params, batch: dict, options: Sequence[Sequence[int]], score_fn=None
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Returns (log-likelihoods float32[B, C], probabilities float32[B, C], argmax int32[B]).

  `score_fn(params, batch)` defaults to `model.score_batch` (pass a jitted one to reuse it).
  """
  expanded = {k: jnp.asarray(v) for k, v in option_batch(batch, options).items()}
  scores = (score_fn or model.score_batch)(params, expanded)
  scores = scores.reshape(-1, len(options))
  return scores, jax.nn.softmax(scores, axis=-1), jnp.argmax(scores, axis=-1).astype(jnp.int32)
