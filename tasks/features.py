"""Feature names, dtypes and default lengths shared by the tasks and the model.

Task features (what a task's dataset yields, per example):

  inputs        int32[<= 966]  prompt tokens; the query's <img> is NUM_IMAGE_TOKENS placeholder ids
  targets       int32[<= 256]  " " + answer + "." tokens, then EOS
  images        uint8[N, 224, 224, 3]  the query image(s); N = 1 in training (the paper: at most one),
                N = 2 for the zero-shot two-view report task (frontal, then lateral)
  image_mask    bool[N]        which rows of `images` are real (False: text-only task / padding)

Model features (after the feature converter; T5X / SeqIO names, prefix-LM, no packing):

  decoder_input_tokens      int32[B, L]   L = inputs + targets length (966 + 256 = 1222)
  decoder_target_tokens     int32[B, L]
  decoder_causal_attention  int32[B, L]   1 over the inputs and one position more (SeqIO prefix-LM)
  decoder_loss_weights      int32[B, L]   1 on target tokens only
  images, image_mask        passed through: uint8[B, N, 224, 224, 3], bool[B, N]

The paper's limits are 710 input tokens and 256 output tokens; we read the 710 as text only and
reserve NUM_IMAGE_TOKENS = 256 more for the image (224/14 = 16 → 16×16 patches), hence 966. Text-only
tasks get the same 710 text tokens, so every task sees the paper's text budget.

Images survive only without packing (SeqIO's packing drops non-token features): `feature_converter()` refuses pack=True.
"""

from __future__ import annotations

import seqio
import tensorflow as tf

# The model owns the converter (T5X's FEATURE_CONVERTER_CLS); the tasks feed it.
from medpalm.features import MultimodalDecoderFeatureConverter

NUM_IMAGE_TOKENS = 256
IMAGE_SIZE = 224
TEXT_INPUT_LENGTH = 710
INPUT_LENGTH = TEXT_INPUT_LENGTH + NUM_IMAGE_TOKENS  # 966
TARGET_LENGTH = 256
TRAIN_IMAGES = 1

INPUTS, TARGETS, IMAGES, IMAGE_MASK = "inputs", "targets", "images", "image_mask"
MODEL_FEATURES = (
    "decoder_input_tokens",
    "decoder_target_tokens",
    "decoder_causal_attention",
    "decoder_loss_weights",
    IMAGES,
    IMAGE_MASK,
)


def task_feature_lengths(
    inputs: int | None = None, targets: int = TARGET_LENGTH, images: int = TRAIN_IMAGES
) -> dict[str, int]:
  """``TASK_FEATURE_LENGTHS`` for seqio.get_dataset: token lengths and the image count N.
  ``inputs`` defaults to the paper's 710 text tokens plus NUM_IMAGE_TOKENS per image (966 for
  one image, 1222 for the two-view report task's ``images=2``)."""
  if inputs is None:
    inputs = TEXT_INPUT_LENGTH + NUM_IMAGE_TOKENS * images
  return {INPUTS: inputs, TARGETS: targets, IMAGES: images, IMAGE_MASK: images}


def output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
  """The tasks' output features. ``images`` / ``image_mask`` are not tokens: a pass-through
  vocabulary satisfies seqio.Feature, and ``required=False`` lets a caller drop them."""
  no_vocab = seqio.PassThroughVocabulary(size=0)
  return {
      INPUTS: seqio.Feature(vocabulary, add_eos=False, dtype=tf.int32),
      TARGETS: seqio.Feature(vocabulary, add_eos=True, dtype=tf.int32),
      IMAGES: seqio.Feature(no_vocab, add_eos=False, dtype=tf.uint8, rank=4, required=False),
      IMAGE_MASK: seqio.Feature(no_vocab, add_eos=False, dtype=tf.bool, rank=1, required=False),
  }


def feature_converter(pack: bool = False) -> MultimodalDecoderFeatureConverter:
  """The converter to pass to seqio.get_dataset for the model's batches."""
  return MultimodalDecoderFeatureConverter(pack=pack)
