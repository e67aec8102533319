"""The transformer block shared by the ViT and the PaLM decoder, and the layer stack.

One `Block` covers PaLM (parallel, shared norm, SwiGLU, MQA, RoPE, no biases), ViT-22B (parallel,
QK norm, no biases), ViT-e / SigLIP (sequential pre-LN, biases, GELU) and Gemma (sequential,
RMSNorm 1+w, GeGLU); `Stack` repeats it with `nn.scan` (one compiled layer body, parameters with
a leading `layers` axis) or unrolled for debugging.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from medpalm.models.configs import TransformerConfig
from medpalm.models.layers import (
    Array,
    DenseGeneral,
    Norm,
    constrain,
    dot_product_attention,
    rotary_embedding,
)


@dataclasses.dataclass(frozen=True)
class Axes:
  """Logical axis names of one tower (the vision tower has its own, so rules can differ)."""

  embed: str
  heads: str
  kv_heads: str
  kv: str
  mlp: str
  layers: str
  length: str


DECODER_AXES = Axes("embed", "heads", "kv_heads", "kv", "mlp", "layers", "length")
VIT_AXES = Axes(
    "vit_embed", "vit_heads", "vit_heads", "vit_kv", "vit_mlp", "vit_layers", "vit_length"
)

_ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
}

_REMAT = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    "save_attention_out": jax.checkpoint_policies.save_only_these_names("attention_out"),
}


def _dtype(name: str):
  return jnp.dtype(name)


CACHE_AXES = ("cache_batch", "cache_length", "cache_heads", "cache_kv")


class Attention(nn.Module):
  """Multi-head attention with `num_kv_heads` key/value heads (1 = PaLM's multi-query).

  The attention width `num_heads * head_dim` may differ from `d_model` (PaLM 540B).

  `mode` selects the KV cache behaviour: "full" (no cache: training, scoring), "prefill" (full
  attention over the prompt, and its keys/values stored in a `cache_length` cache) or "extend"
  (one new token per row at `positions`, written into the cache, attending to the cache up to
  and including that position).
  """

  config: TransformerConfig
  axes: Axes
  rope_base: float | None = None
  mode: str = "full"
  cache_length: int | None = None

  def _cache(self, k: Array, v: Array, positions: Array) -> tuple[Array, Array, Array | None]:
    """Stores k/v (float[B, T, G, K]); returns the cached k/v and, when extending, the mask."""
    b, t, g, d = k.shape
    if self.mode == "extend" and not self.has_variable("cache", "cached_key"):
      raise ValueError("decoding step without a KV cache: run a prefill first")
    init = nn.with_logical_partitioning(jnp.zeros, CACHE_AXES)
    shape = (b, self.cache_length or t, g, d)
    cached_k = self.variable("cache", "cached_key", init, shape, k.dtype)
    cached_v = self.variable("cache", "cached_value", init, shape, v.dtype)
    if self.mode == "prefill":
      cached_k.value = jax.lax.dynamic_update_slice_in_dim(cached_k.value, k, 0, axis=1)
      cached_v.value = jax.lax.dynamic_update_slice_in_dim(cached_v.value, v, 0, axis=1)
      return k, v, None
    write = jax.vmap(lambda cache, x, i: jax.lax.dynamic_update_slice_in_dim(cache, x, i, 0))
    index = positions[:, 0]
    cached_k.value = write(cached_k.value, k, index)
    cached_v.value = write(cached_v.value, v, index)
    length = cached_k.value.shape[1]
    mask = (jnp.arange(length)[None, :] <= index[:, None])[:, None, None, :]  # [B, 1, 1, S]
    return cached_k.value, cached_v.value, mask

  @nn.compact
  def __call__(self, x: Array, positions: Array | None, mask: Array | None) -> Array:
    """x: float[B, T, D]; positions: int32[B, T] (for RoPE and the cache); mask: bool[B, 1, T, T]
    (ignored when extending: the cache defines what is visible)."""
    c, a = self.config, self.axes
    dense = functools.partial(
        DenseGeneral, use_bias=c.use_bias, dtype=_dtype(c.dtype), param_dtype=_dtype(c.param_dtype)
    )
    q = dense((c.d_model,), (c.num_heads, c.head_dim), (a.embed, a.heads, a.kv), name="query")(x)
    kv_shape, kv_axes = (c.num_kv_heads, c.head_dim), (a.embed, a.kv_heads, a.kv)
    k = dense((c.d_model,), kv_shape, kv_axes, name="key")(x)
    v = dense((c.d_model,), kv_shape, kv_axes, name="value")(x)
    if c.qk_norm:
      qk_norm = functools.partial(
          Norm,
          kind=c.norm,
          epsilon=c.norm_epsilon,
          use_bias=c.use_bias,
          axis_name=a.kv,
          dtype=_dtype(c.dtype),
          param_dtype=_dtype(c.param_dtype),
      )
      q, k = qk_norm(name="query_norm")(q), qk_norm(name="key_norm")(k)
    if self.rope_base is not None:
      q = rotary_embedding(q, positions, self.rope_base)
      k = rotary_embedding(k, positions, self.rope_base)
    q = constrain(q * c.head_dim**-0.5, ("batch", "length", a.heads, a.kv))
    if self.mode != "full":
      k, v, cache_mask = self._cache(k, v, positions)
      mask = mask if cache_mask is None else cache_mask
    out = dot_product_attention(q, k, v, mask, _dtype(c.dtype), c.attention)
    out = constrain(out, ("batch", "length", a.heads, a.kv))
    out = dense((c.num_heads, c.head_dim), (c.d_model,), (a.heads, a.kv, a.embed), name="out")(out)
    return checkpoint_name(out, "attention_out")


class Mlp(nn.Module):
  """Gated (SwiGLU / GeGLU: `wo(act(wi_0 x) * wi_1 x)`) or plain (`wo(act(wi x))`) MLP."""

  config: TransformerConfig
  axes: Axes

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c, a = self.config, self.axes
    dense = functools.partial(
        DenseGeneral, use_bias=c.use_bias, dtype=_dtype(c.dtype), param_dtype=_dtype(c.param_dtype)
    )
    act = _ACTIVATIONS[c.mlp_activation]
    up = (c.d_model,), (c.d_ff,), (a.embed, a.mlp)
    if c.gated_mlp:
      h = act(dense(*up, name="wi_0")(x)) * dense(*up, name="wi_1")(x)
    else:
      h = act(dense(*up, name="wi")(x))
    h = constrain(h, ("batch", "length", a.mlp))
    return dense((c.d_ff,), (c.d_model,), (a.mlp, a.embed), name="wo")(h)


class Block(nn.Module):
  """One transformer layer; `(x, positions, mask) -> (x, None)` so that `nn.scan` can carry x."""

  config: TransformerConfig
  axes: Axes
  rope_base: float | None = None
  enable_dropout: bool = False
  mode: str = "full"
  cache_length: int | None = None

  @nn.compact
  def __call__(self, x: Array, positions: Array | None, mask: Array | None):
    c, a = self.config, self.axes
    norm = functools.partial(
        Norm,
        kind=c.norm,
        epsilon=c.norm_epsilon,
        use_bias=c.use_bias,
        scale_plus_one=c.norm_scale_plus_one,
        axis_name=a.embed,
        dtype=_dtype(c.dtype),
        param_dtype=_dtype(c.param_dtype),
    )
    dropout = nn.Dropout(
        c.dropout_rate, broadcast_dims=(-2,), deterministic=not self.enable_dropout
    )
    attention = Attention(c, a, self.rope_base, self.mode, self.cache_length, name="attention")
    mlp = Mlp(c, a, name="mlp")
    if c.parallel_block:
      h = norm(name="pre_norm")(x)
      x = x + dropout(attention(h, positions, mask)) + dropout(mlp(h))
    else:
      x = x + dropout(attention(norm(name="pre_attention_norm")(x), positions, mask))
      x = x + dropout(mlp(norm(name="pre_mlp_norm")(x)))
    return constrain(x, ("batch", "length", a.embed)), None


class Stack(nn.Module):
  """`num_layers` Blocks: scanned (params get a leading layers axis) or unrolled (`layers_<i>`)."""

  config: TransformerConfig
  axes: Axes
  rope_base: float | None = None

  @nn.compact
  def __call__(
      self,
      x: Array,
      positions: Array | None,
      mask: Array | None,
      enable_dropout: bool = False,
      mode: str = "full",
      cache_length: int | None = None,
  ) -> Array:
    """`mode` / `cache_length`: see `Attention` (the cache gets a leading layers axis when
    scanned)."""
    c = self.config
    block = Block
    if c.remat_policy != "none":
      block = nn.remat(Block, policy=_REMAT[c.remat_policy], prevent_cse=not c.scan_layers)
    kwargs = dict(
        config=c,
        axes=self.axes,
        rope_base=self.rope_base,
        enable_dropout=enable_dropout,
        mode=mode,
        cache_length=cache_length,
    )
    if not c.scan_layers:
      for i in range(c.num_layers):
        x, _ = block(**kwargs, name=f"layers_{i}")(x, positions, mask)
      return x
    scanned = nn.scan(
        block,
        variable_axes={"params": 0, "cache": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast, nn.broadcast),
        length=c.num_layers,
        metadata_params={nn.PARTITION_NAME: self.axes.layers},
    )
    x, _ = scanned(**kwargs, name="layers")(x, positions, mask)
    return x


def unstack_layers(params: dict, num_layers: int) -> dict:
  """Turns scanned `layers` params (leading axis L) into unrolled `layers_<i>` params."""
  params = dict(params)
  stacked = params.pop("layers")
  for i in range(num_layers):
    params[f"layers_{i}"] = jax.tree.map(lambda p: p[i], stacked)
  return params
