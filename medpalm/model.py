"""MedPalmMModel: the object training, evaluation and inference drive, with T5X's model contract.

Names, signatures and return values follow `t5x.models.DecoderOnlyModel`, so `t5x.train` can
drive medpalm through gin where T5X is installed from source; medpalm's own driver uses the same
surface. Differences from T5X's decoder-only model, all forced by images:
- batches are never packed (`FEATURE_CONVERTER_CLS(pack=True)` raises);
- the prompt is prefilled once, images included (the ViT runs there), and `decode_fn` extends
  the KV cache from there (see `medpalm.decoding`).

With `loss_positions=K` the loss and its gradient are computed from the logits of each row's
first K weighted positions only (K = the targets' feature length covers every unpacked batch):
the same numbers as over all T positions, without the output head and the softmax over the
T - K prompt positions that carry no loss. The host-side batch check refuses a row with more
than K weighted positions.

Loss normalization is T5X's: with `loss_normalizing_factor=None` the loss is the *sum* of the
weighted per-token cross-entropies of the batch; a number divides that sum by it;
"NUM_REAL_TARGET_TOKENS" divides by the sum of `decoder_loss_weights` (a per-token mean).
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable, Mapping

import clu.metrics as clu_metrics
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen import partitioning as flax_partitioning

from medpalm import decoding, losses, optimizers
from medpalm.models import multimodal
from medpalm.models.medpalm_m import MedPalmM


def params_axes(boxed_params: Any) -> Any:
  """T5X's `params_axes` collection: `<name>_axes` -> AxisMetadata(names) beside every param."""

  def walk(tree):
    out = {}
    for key, value in tree.items():
      if isinstance(value, nn.meta.AxisMetadata):
        out[f"{key}_axes"] = flax_partitioning.AxisMetadata(names=tuple(value.get_partition_spec()))
      else:
        out[key] = walk(value)
    return out

  return walk(boxed_params)


class _FeatureConverterClass:
  """`MedPalmMModel.FEATURE_CONVERTER_CLS`, resolved on first access: the converter is SeqIO's
  (TensorFlow), which loss, scoring and decoding never need."""

  def __get__(self, obj, owner):
    from medpalm import features  # pylint: disable=g-import-not-at-top

    return features.MultimodalDecoderFeatureConverter


class MedPalmMModel:
  """T5X `DecoderOnlyModel`-shaped wrapper around the `MedPalmM` module."""

  FEATURE_CONVERTER_CLS = _FeatureConverterClass()

  def __init__(
      self,
      module: MedPalmM,
      vocabulary,
      optimizer_def: optimizers.OptaxOptimizerDef | None = None,
      decode_fn: Callable = decoding.temperature_sample,
      z_loss: float = 1e-4,
      label_smoothing: float = 0.0,
      loss_normalizing_factor: float | str | None = None,
      prefix_bidirectional: bool = False,
      loss_positions: int | None = None,
  ):
    if isinstance(loss_normalizing_factor, str) and (
        loss_normalizing_factor not in losses.NORMALIZING_FACTORS
    ):
      raise ValueError(
          f"loss_normalizing_factor {loss_normalizing_factor!r} not in "
          f"{losses.NORMALIZING_FACTORS} (or a number, or None for a sum)"
      )
    self.module = module
    self._vocabulary = vocabulary
    self.optimizer_def = optimizer_def or optimizers.adafactor()
    self._decode_fn = decode_fn
    self._z_loss = z_loss
    self._label_smoothing = label_smoothing
    self._loss_normalizing_factor = loss_normalizing_factor
    self.prefix_bidirectional = prefix_bidirectional
    if loss_positions is not None and loss_positions < 1:
      raise ValueError(
          f"loss_positions must be >= 1 (or None: every position), got {loss_positions}"
      )
    self.loss_positions = loss_positions

  # Properties T5X reads.
  input_vocabulary = property(lambda self: self._vocabulary)
  output_vocabulary = property(lambda self: self._vocabulary)
  decode_fn = property(lambda self: self._decode_fn)
  # What the train step needs to normalize the loss over a whole batch split in microbatches.
  loss_normalizing_factor = property(lambda self: self._loss_normalizing_factor)

  @property
  def config(self):
    return self.module.config

  def validate_batch(self, batch: Mapping[str, Any]) -> None:
    """Host-side check of a concrete batch before it enters a compiled step, where only shapes
    can be checked: dtypes, image shapes and 256 placeholders per valid image in every row."""
    multimodal.validate_inputs(
        self.config,
        np.asarray(batch["decoder_input_tokens"]),
        None if batch.get("images") is None else np.asarray(batch["images"]),
        None if batch.get("image_mask") is None else np.asarray(batch["image_mask"]),
    )
    if self.loss_positions is not None and "decoder_target_tokens" in batch:
      weights = batch.get("decoder_loss_weights")
      weighted = np.asarray(batch["decoder_target_tokens"] if weights is None else weights) > 0
      counts = weighted.sum(axis=1)
      if counts.max(initial=0) > self.loss_positions:
        row = int(np.argmax(counts))
        raise ValueError(
            f"batch row {row} has {int(counts[row])} positions with a loss weight "
            f"(decoder_loss_weights) but the model computes logits at loss_positions="
            f"{self.loss_positions}: set MedPalmMModel.loss_positions to at least the targets' "
            f"feature length"
        )

  def _inputs(self, batch: Mapping[str, jax.Array]) -> dict:
    """The module's keyword inputs from a feature-converted batch."""
    inputs = {
        "decoder_target_tokens": batch.get("decoder_target_tokens"),
        "images": batch.get("images"),
        "image_mask": batch.get("image_mask"),
    }
    if self.prefix_bidirectional:
      inputs["decoder_causal_attention"] = batch.get("decoder_causal_attention")
    return inputs

  def _compute_logits(self, params, batch, dropout_rng=None, mutable=False, other_variables=None):
    """float32[B, T, V] logits (dropout on when `dropout_rng` is given)."""
    return self._apply(params, batch, dropout_rng, mutable, other_variables)

  def _apply(self, params, batch, dropout_rng=None, mutable=False, other_variables=None, **kwargs):
    """The module on a feature-converted batch; `kwargs` go to `MedPalmM.__call__`."""
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
    return self.module.apply(
        {"params": params, **(other_variables or {})},
        batch["decoder_input_tokens"],
        **self._inputs(batch),
        **kwargs,
        enable_dropout=dropout_rng is not None,
        rngs=rngs,
        mutable=mutable,
    )

  # -- training and evaluation --

  def loss_fn(self, params, batch, dropout_rng):
    """(loss, metrics) with metrics named as T5X names them (clu metrics, mergeable)."""
    targets = batch["decoder_target_tokens"]
    weights = losses.loss_weights(batch)
    num_tokens = targets.size  # the batch's, whether or not only the loss positions are computed
    if self.loss_positions is not None and self.loss_positions < targets.shape[1]:
      positions = losses.weighted_positions(weights, self.loss_positions)
      targets = jnp.take_along_axis(targets, positions, axis=1)
      weights = jnp.take_along_axis(weights, positions, axis=1)
      logits = self._apply(params, batch, dropout_rng, logit_positions=positions)
    else:
      logits = self._compute_logits(params, batch, dropout_rng)
    token_loss, token_z = losses.cross_entropy_with_logits(
        logits, targets, self._z_loss, self._label_smoothing
    )
    factor = self._loss_normalizing_factor
    if factor == "NUM_REAL_TARGET_TOKENS":
      factor = jnp.maximum(jnp.sum(weights), 1.0)
    elif factor == "NUM_TOTAL_TARGET_TOKENS":
      factor = jnp.float32(num_tokens)
    normalize = (lambda x: x) if factor is None else (lambda x: x / factor)
    loss = normalize(jnp.sum(token_loss * weights))
    z_loss = normalize(jnp.sum(token_z * weights))
    metrics = self._metrics(
        logits, targets, weights, token_loss - token_z, loss, z_loss, num_tokens
    )
    return loss, metrics

  @staticmethod
  def _metrics(logits, targets, weights, token_ce, loss, z_loss, num_tokens) -> dict:
    average = lambda total, count: clu_metrics.Average(
        total=jnp.asarray(total, jnp.float32), count=jnp.asarray(count, jnp.int32)
    )
    nonpadding = jnp.sum(weights)
    correct = (jnp.argmax(logits, -1) == targets) * weights
    return {
        "loss": average(loss, 1),
        "z_loss": average(z_loss, 1),
        "cross_ent_loss": average(loss - z_loss, 1),
        "accuracy": average(jnp.sum(correct), nonpadding),
        "loss_per_nonpadding_target_token": average(jnp.sum(token_ce * weights), nonpadding),
        "loss_per_all_target_tokens": average(jnp.sum(token_ce * weights), num_tokens),
        "non_padding_fraction/loss_weights": average(jnp.sum(weights > 0), num_tokens),
    }

  def eval_fn(self, params, batch):
    return self.loss_fn(params, batch, dropout_rng=None)

  def score_batch(self, params, batch, return_intermediates: bool = False):
    """float32[B]: per-example sum of target log-likelihoods (`decoder_loss_weights`)."""
    if return_intermediates:
      logits, state = self._compute_logits(params, batch, mutable=["intermediates"])
    else:
      logits = self._compute_logits(params, batch)
    token_scores = -losses.cross_entropy_with_logits(logits, batch["decoder_target_tokens"], 0.0)[0]
    token_scores = token_scores * losses.loss_weights(batch)
    scores = jnp.sum(token_scores, axis=-1)
    if return_intermediates:
      return scores, {**state.get("intermediates", {}), "token_scores": token_scores}
    return scores

  # -- inference --

  def predict_batch(self, params, batch, rng=None):
    return self.predict_batch_with_aux(params, batch, rng=rng)[0]

  def predict_batch_with_aux(
      self, params, batch, rng=None, *, return_all_decodes=False, num_decodes=1, decoder_params=None
  ):
    """Decodes int32[B, L] (or [B, num_decodes, L], best last), prompt removed, zero-padded.

    The prompt is `decoder_input_tokens` where `decoder_causal_attention` is 1. `L` is
    `decoder_params["max_decode_length"]` — the total positions of prompt + answer, as in T5X —
    or the batch length. Returns (decodes, {"scores": float32[B] or [B, num_decodes]}).
    """
    decoder_params = dict(decoder_params or {})
    if num_decodes < 1:
      raise ValueError(f"num_decodes must be >= 1, got {num_decodes}")
    length = int(decoder_params.pop("max_decode_length", batch["decoder_input_tokens"].shape[1]))
    error = decoding.decode_params_error(self._decode_fn, decoder_params)
    if error:
      raise ValueError(error)
    if "decoder_causal_attention" not in batch:
      raise ValueError(
          "predict needs decoder_causal_attention (1 on the prompt) to find the "
          "prompt; use the model's FEATURE_CONVERTER_CLS"
      )
    prompt_lengths = jnp.sum(batch["decoder_causal_attention"], axis=1).astype(jnp.int32)
    if not isinstance(prompt_lengths, jax.core.Tracer):
      longest = int(np.max(np.asarray(prompt_lengths)))
      if longest >= length:
        raise ValueError(
            f"a prompt of {longest} positions leaves no room to decode within "
            f"max_decode_length {length}"
        )
    start = self.prefill(params, batch, length, prompt_lengths)
    mask = self._decode_mask()
    start = start.replace(logits=mask(start.logits))

    def step_fn(tokens, positions, cache):
      logits, cache = self.extend(params, tokens, positions, cache)
      return mask(logits), cache

    decodes, scores = self._decode_fn(
        start,
        step_fn,
        max_decode_length=length,
        eos_id=self._vocabulary.eos_id,
        rng=rng,
        num_decodes=num_decodes,
        **decoder_params,
    )
    if not return_all_decodes:
      decodes, scores = decodes[:, -1], scores[:, -1]
    return decodes, {"scores": scores}

  def _decode_mask(self) -> Callable[[jax.Array], jax.Array]:
    """Logits -> logits that cannot pick the image placeholder or a padded vocabulary row."""
    placeholder = getattr(self._vocabulary, "image_placeholder_id", None)
    banned = () if placeholder is None else (int(placeholder),)
    valid = int(self._vocabulary.vocab_size)
    return functools.partial(decoding.mask_logits, valid_size=valid, banned_ids=banned)

  def prefill(self, params, batch, length: int, prompt_lengths: jax.Array) -> decoding.Prefilled:
    """Runs the prompt once (images included) and returns the cache and next-token logits."""
    prompt_array = min(batch["decoder_input_tokens"].shape[1], length)
    causal = batch["decoder_causal_attention"][:, :prompt_array]
    tokens = batch["decoder_input_tokens"][:, :prompt_array] * causal
    inputs = {"images": batch.get("images"), "image_mask": batch.get("image_mask")}
    if self.prefix_bidirectional:
      inputs["decoder_causal_attention"] = causal
    logits, state = self.module.apply(
        {"params": params},
        tokens,
        **inputs,
        prefill=True,
        max_decode_length=length,
        prompt_lengths=prompt_lengths,
        mutable=["cache"],
    )
    last = jnp.take_along_axis(logits, (prompt_lengths - 1)[:, None, None], axis=1)[:, 0]
    return decoding.Prefilled(
        last,
        state["cache"],
        prompt_lengths,
        limits=length - prompt_lengths,
        cache_batch_axis=1 if self.config.decoder.scan_layers else 0,
    )

  def extend(self, params, tokens, positions, cache):
    """One decoding step: int32[B, 1] tokens at int32[B, 1] positions -> (float32[B, V], cache)."""
    logits, state = self.module.apply(
        {"params": params, "cache": cache},
        tokens,
        decoder_positions=positions,
        decode=True,
        mutable=["cache"],
    )
    return logits[:, 0], state["cache"]

  # -- initialisation --

  def get_initial_variables(self, rng, input_shapes, input_types=None):
    """{"params", "params_axes"} from every model feature's shape (images included)."""
    input_types = dict(input_types or {})
    dummy = {}
    for name, shape in input_shapes.items():
      dtype = input_types.get(name, jnp.int32)
      dummy[name] = jnp.zeros(shape, np.uint8 if name == "images" else dtype)
    if "images" in dummy:
      # No valid images in the dummy batch: it needs no placeholders (all ids are 0).
      dummy["image_mask"] = jnp.zeros(dummy["images"].shape[:2], bool)
    inputs = {k: dummy.get(k) for k in ("decoder_target_tokens", "images", "image_mask")}
    if self.prefix_bidirectional:
      inputs["decoder_causal_attention"] = dummy.get("decoder_causal_attention")
    variables = self.module.init(rng, dummy["decoder_input_tokens"], **inputs, enable_dropout=False)
    return {
        "params": nn.meta.unbox(variables["params"]),
        "params_axes": params_axes(variables["params"]),
    }


def _register_with_t5x() -> None:
  """Registers MedPalmMModel as a t5x BaseTransformerModel when T5X is already imported.

  T5X's binaries import `t5x.models` before gin reaches this module, so the registration happens
  exactly where T5X drives medpalm; importing T5X here ourselves would pull SeqIO and TensorFlow
  into every `import medpalm.model`.
  """
  t5x_models = sys.modules.get("t5x.models")
  if t5x_models is not None:
    t5x_models.BaseTransformerModel.register(MedPalmMModel)


_register_with_t5x()
