"""PalmDecoder: PaLM's decoder-only transformer, with switches that load Gemma and Cohere weights.

PaLM: `y = x + Attn(LN(x)) + MLP(LN(x))` with one bias-free LayerNorm, SwiGLU, multi-query
attention, RoPE, no biases, input embedding shared with the output and logits scaled by
1/sqrt(d_model), final LayerNorm.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from medpalm.models.configs import DecoderConfig
from medpalm.models.blocks import DECODER_AXES, Stack
from medpalm.models.layers import Array, Norm, constrain, param


class PalmDecoder(nn.Module):
  """Token ids or ready-made embeddings -> logits float32[B, T, vocab]."""

  config: DecoderConfig

  def setup(self):
    c = self.config
    # N(0, 1): PaLM applies no norm to the embeddings ("since layer normalization is not applied").
    self.embedding = param(
        self,
        "embedding",
        nn.initializers.normal(stddev=1.0),
        (c.vocab_size, c.d_model),
        ("vocab", "embed"),
        jnp.dtype(c.param_dtype),
    )
    self.final_norm = Norm(
        kind=c.norm,
        epsilon=c.norm_epsilon,
        use_bias=c.use_bias,
        scale_plus_one=c.norm_scale_plus_one,
        dtype=jnp.dtype(c.dtype),
        param_dtype=jnp.dtype(c.param_dtype),
    )
    self.stack = Stack(
        c,
        DECODER_AXES,
        rope_base=c.rope_base,
        local_rope_base=c.local_rope_base,
        rope_scale=c.rope_scale_factor,
    )
    self.dropout = nn.Dropout(c.dropout_rate, broadcast_dims=(-2,))

  def embed(self, tokens: Array) -> Array:
    """int32[B, T] -> float[B, T, D] (× sqrt(D) when `scale_embeddings`, Gemma's convention)."""
    c = self.config
    # Gather from a table whole along embed (vocab stays split): XLA cannot reshard the gather
    # of an fsdp-split table to the batch-split activation without replicating it.
    table = constrain(self.embedding, ("vocab", None))
    x = jnp.take(table, tokens, axis=0).astype(jnp.dtype(c.dtype))
    if c.scale_embeddings:
      x = x * jnp.asarray(c.d_model**0.5, x.dtype)
    return constrain(x, ("batch", "length", "embed"))

  def __call__(
      self,
      tokens: Array | None,
      positions: Array,
      attention_mask: Array | None,
      *,
      embeddings: Array | None = None,
      enable_dropout: bool = False,
      mode: str = "full",
      cache_length: int | None = None,
      prompt_lengths: Array | None = None,
      logit_positions: Array | None = None,
  ) -> Array:
    """Runs the decoder.

    Args:
      tokens: int32[B, T]; ignored when `embeddings` is given.
      positions: int32[B, T] RoPE positions.
      attention_mask: bool[B, 1, T, T], True where a query may attend to a key, or a (global,
        local) pair when local layers see more than their window of the global mask (a
        bidirectional prefix); see `Stack`.
      embeddings: float[B, T, D] inputs already embedded (text with image rows merged in).
      mode, cache_length, prompt_lengths: KV cache behaviour ("full", "prefill", "extend"), see
        `Attention`.
      logit_positions: int32[B, K], the only positions whose logits are wanted (training's loss
        positions): the output head, the largest matmul of a small decoder, then runs on K rows
        per example instead of T.
    Returns:
      float32[B, T, vocab] logits (float32[B, K, vocab] with `logit_positions`).
    """
    c = self.config
    x = self.embed(tokens) if embeddings is None else embeddings
    x = self.dropout(x, deterministic=not enable_dropout)
    x = self.stack(x, positions, attention_mask, enable_dropout, mode, cache_length, prompt_lengths)
    if logit_positions is not None:
      x = jnp.take_along_axis(x, logit_positions[:, :, None], axis=1)
      x = constrain(x, ("batch", "length", "embed"))
    x = self.final_norm(x)
    logits = (
        jnp.einsum(
            "btd,vd->btv", x, self.embedding.astype(x.dtype), preferred_element_type=jnp.float32
        )
        * c.output_scale
    )
    if c.final_logit_softcap is not None:
      logits = c.final_logit_softcap * jnp.tanh(logits / c.final_logit_softcap)
    return constrain(logits, ("batch", "length", "vocab"))
