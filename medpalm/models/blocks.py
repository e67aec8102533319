"""The transformer block shared by the ViT and the PaLM decoder, and the layer stack.

One `Block` covers PaLM (parallel, shared norm, SwiGLU, MQA, RoPE, no biases), ViT-22B (parallel,
QK norm, no biases), ViT-e / SigLIP (sequential pre-LN, biases, GELU), Gemma (sequential,
RMSNorm 1+w, GeGLU) and Gemma 2 / 3 (post-norms, soft-capping, QK norm, local sliding-window
layers); `Stack` repeats it with `nn.scan` (one compiled layer body, parameters with a leading
`layers` axis) or unrolled for debugging.

Parameter layout of a stack whose `layer_types` pattern has P > 1 entries (L layers):
`layers/block_<j>` (scanned over the L // P whole repetitions, leading axis L // P) and
`remainder/block_<j>` for the L % P layers left over (scanned once, leading axis 1, so every
cache leaf keeps its batch on axis 1). `layer_params` / `stack_layer_params` convert between
this layout and a per-layer list.
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


def _full(value: int):
  return lambda shape, dtype: jnp.full(shape, value, dtype)


class Attention(nn.Module):
  """Multi-head attention with `num_kv_heads` key/value heads (1 = PaLM's multi-query).

  The attention width `num_heads * head_dim` may differ from `d_model` (PaLM 540B).

  `mode` selects the KV cache behaviour: "full" (no cache: training, scoring), "prefill" (full
  attention over the prompt, and its keys/values stored in a `cache_length` cache) or "extend"
  (one new token per row at `positions`, written into the cache, attending to the cache up to
  and including that position).

  With `window` (a local layer) the cache is a ring buffer of `min(window, cache_length)` slots:
  position p lives in slot p % size, and `cached_positions` int32[B, size] records which position
  each slot holds (-1: empty), so memory stays at the window whatever the decode length.
  """

  config: TransformerConfig
  axes: Axes
  rope_base: float | None = None
  rope_scale: float = 1.0
  window: int | None = None
  mode: str = "full"
  cache_length: int | None = None

  def _cache(self, k, v, positions, prompt_lengths) -> tuple[Array, Array, Array | None]:
    """Stores k/v (float[B, T, G, K]); returns the cached k/v and, when extending, the mask."""
    b, t, g, d = k.shape
    if self.mode == "extend" and not self.has_variable("cache", "cached_key"):
      raise ValueError("decoding step without a KV cache: run a prefill first")
    if self.window is not None:
      return self._ring_cache(k, v, positions, prompt_lengths)
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

  def _ring_cache(self, k, v, positions, prompt_lengths) -> tuple[Array, Array, Array | None]:
    """The local layer's ring buffer (see the class docstring)."""
    b, t, g, d = k.shape
    size = min(self.window, self.cache_length or t)
    init = nn.with_logical_partitioning(jnp.zeros, CACHE_AXES)
    cached_k = self.variable("cache", "cached_key", init, (b, size, g, d), k.dtype)
    cached_v = self.variable("cache", "cached_value", init, (b, size, g, d), v.dtype)
    slot_init = nn.with_logical_partitioning(_full(-1), CACHE_AXES[:2])
    held = self.variable("cache", "cached_positions", slot_init, (b, size), jnp.int32)
    if self.mode == "prefill":
      # Slot s keeps the row's last prompt index i < prompt length with i % size == s: padding
      # past a short prompt must not evict keys its first decoding steps still see.
      lengths = jnp.full((b,), t, jnp.int32) if prompt_lengths is None else prompt_lengths
      slots = jnp.arange(size, dtype=jnp.int32)[None, :]
      last = lengths[:, None] - 1
      index = last - (last - slots) % size  # int32[B, size]
      valid = index >= 0
      index = jnp.clip(index, 0, t - 1)
      gather = lambda x: jnp.take_along_axis(x, index[:, :, None, None], axis=1)
      cached_k.value = jnp.where(valid[..., None, None], gather(k), 0).astype(k.dtype)
      cached_v.value = jnp.where(valid[..., None, None], gather(v), 0).astype(v.dtype)
      held.value = jnp.where(valid, jnp.take_along_axis(positions, index, axis=1), -1)
      return k, v, None
    position = positions[:, 0]
    slot = position % cached_k.value.shape[1]  # the size the prefill chose
    write = jax.vmap(lambda cache, x, i: jax.lax.dynamic_update_slice_in_dim(cache, x, i, 0))
    cached_k.value = write(cached_k.value, k, slot)
    cached_v.value = write(cached_v.value, v, slot)
    held.value = held.value.at[jnp.arange(b), slot].set(position)
    p, q = held.value, position[:, None]
    mask = (p >= 0) & (p <= q) & (p > q - self.window)
    return cached_k.value, cached_v.value, mask[:, None, None, :]

  @nn.compact
  def __call__(
      self,
      x: Array,
      positions: Array | None,
      mask: Array | None,
      prompt_lengths: Array | None = None,
  ) -> Array:
    """x: float[B, T, D]; positions: int32[B, T] (for RoPE and the cache); mask: bool[B, 1, T, T]
    (ignored when extending: the cache defines what is visible); prompt_lengths: int32[B] real
    prompt length per row when prefilling (what a local layer's ring buffer keeps)."""
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
          scale_plus_one=c.norm_scale_plus_one,
          axis_name=a.kv,
          dtype=_dtype(c.dtype),
          param_dtype=_dtype(c.param_dtype),
      )
      q, k = qk_norm(name="query_norm")(q), qk_norm(name="key_norm")(k)
    if self.rope_base is not None:
      q = rotary_embedding(q, positions, self.rope_base, self.rope_scale)
      k = rotary_embedding(k, positions, self.rope_base, self.rope_scale)
    scale = c.head_dim**-0.5 if c.query_scale is None else c.query_scale
    q = constrain(q * scale, ("batch", "length", a.heads, a.kv))
    if self.mode != "full":
      k, v, cache_mask = self._cache(k, v, positions, prompt_lengths)
      mask = mask if cache_mask is None else cache_mask
    out = dot_product_attention(
        q, k, v, mask, _dtype(c.dtype), c.attention, softcap=c.attn_logit_softcap
    )
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


Masks = tuple[Array | None, Array | None]


class Block(nn.Module):
  """One transformer layer; `(x, positions, masks, prompt_lengths) -> (x, None)` so that `nn.scan`
  can carry x. `masks` = (global mask, local mask); the layer's `layer_type` picks one."""

  config: TransformerConfig
  axes: Axes
  rope_base: float | None = None
  local_rope_base: float | None = None
  rope_scale: float = 1.0
  layer_type: str = "global"
  enable_dropout: bool = False
  mode: str = "full"
  cache_length: int | None = None

  @nn.compact
  def __call__(self, x: Array, positions: Array | None, masks: Masks, prompt_lengths=None):
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
    local = self.layer_type == "local"
    rope_base, rope_scale = self.rope_base, self.rope_scale
    if local and self.rope_base is not None:
      rope_base, rope_scale = self.local_rope_base or self.rope_base, 1.0
    attention = Attention(
        c,
        a,
        rope_base,
        rope_scale,
        c.sliding_window if local else None,
        self.mode,
        self.cache_length,
        name="attention",
    )
    mask = masks[1] if local else masks[0]
    mlp = Mlp(c, a, name="mlp")
    if c.parallel_block:
      h = norm(name="pre_norm")(x)
      x = x + dropout(attention(h, positions, mask, prompt_lengths)) + dropout(mlp(h))
    elif c.post_norms:
      h = attention(norm(name="pre_attention_norm")(x), positions, mask, prompt_lengths)
      x = x + dropout(norm(name="post_attention_norm")(h))
      x = x + dropout(norm(name="post_mlp_norm")(mlp(norm(name="pre_mlp_norm")(x))))
    else:
      x = x + dropout(
          attention(norm(name="pre_attention_norm")(x), positions, mask, prompt_lengths)
      )
      x = x + dropout(mlp(norm(name="pre_mlp_norm")(x)))
    return constrain(x, ("batch", "length", a.embed)), None


def _block_cls(c: TransformerConfig):
  if c.remat_policy == "none":
    return Block
  return nn.remat(Block, policy=_REMAT[c.remat_policy], prevent_cse=not c.scan_layers)


class Group(nn.Module):
  """One repetition of the layer pattern: `block_<j>` of type `types[j]` (the scanned body)."""

  config: TransformerConfig
  axes: Axes
  types: tuple[str, ...]
  block_kwargs: dict

  @nn.compact
  def __call__(self, x: Array, positions: Array | None, masks: Masks, prompt_lengths=None):
    block = _block_cls(self.config)
    for j, layer_type in enumerate(self.types):
      x, _ = block(
          self.config, self.axes, layer_type=layer_type, **self.block_kwargs, name=f"block_{j}"
      )(x, positions, masks, prompt_lengths)
    return x, None


def window_mask(mask: Array, positions: Array, window: int) -> Array:
  """`mask` (bool[B, 1, T, T]) restricted to keys less than `window` positions before the query
  (positions int32[B, T])."""
  q, k = positions[:, None, :, None], positions[:, None, None, :]
  return mask & (k > q - window)


class Stack(nn.Module):
  """`num_layers` Blocks: scanned (params get a leading layers axis) or unrolled (`layers_<i>`)."""

  config: TransformerConfig
  axes: Axes
  rope_base: float | None = None
  local_rope_base: float | None = None
  rope_scale: float = 1.0

  @nn.compact
  def __call__(
      self,
      x: Array,
      positions: Array | None,
      mask: Array | Masks | None,
      enable_dropout: bool = False,
      mode: str = "full",
      cache_length: int | None = None,
      prompt_lengths: Array | None = None,
  ) -> Array:
    """`mask`: one bool[B, 1, T, T] for every layer, or (global, local) masks; a local layer
    given only the global mask restricts it to its window. `mode` / `cache_length` /
    `prompt_lengths`: see `Attention` (the cache gets a leading layers axis when scanned)."""
    c = self.config
    global_mask, local_mask = mask if isinstance(mask, tuple) else (mask, None)
    if "local" in c.pattern and local_mask is None and global_mask is not None:
      local_mask = window_mask(global_mask, positions, c.sliding_window)
    masks = (global_mask, local_mask)
    kwargs = dict(
        rope_base=self.rope_base,
        local_rope_base=self.local_rope_base,
        rope_scale=self.rope_scale,
        enable_dropout=enable_dropout,
        mode=mode,
        cache_length=cache_length,
    )
    args = (positions, masks, prompt_lengths)
    if not c.scan_layers:
      block = _block_cls(c)
      for i in range(c.num_layers):
        x, _ = block(c, self.axes, layer_type=c.layer_type(i), **kwargs, name=f"layers_{i}")(
            x, *args
        )
      return x
    scan = functools.partial(
        nn.scan,
        variable_axes={"params": 0, "cache": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
        metadata_params={nn.PARTITION_NAME: self.axes.layers},
    )
    pattern = c.pattern
    if len(pattern) == 1:
      block = scan(_block_cls(c), length=c.num_layers)
      x, _ = block(c, self.axes, layer_type=pattern[0], **kwargs, name="layers")(x, *args)
      return x
    repeats, rest = divmod(c.num_layers, len(pattern))
    if repeats:
      group = scan(Group, length=repeats)(c, self.axes, pattern, kwargs, name="layers")
      x, _ = group(x, *args)
    if rest:
      group = scan(Group, length=1)(c, self.axes, pattern[:rest], kwargs, name="remainder")
      x, _ = group(x, *args)
    return x


def layer_params(stack: dict, config: TransformerConfig) -> list[dict]:
  """A stack's parameters (any layout `Stack` makes) as a list of per-layer trees."""
  if not config.scan_layers:
    return [stack[f"layers_{i}"] for i in range(config.num_layers)]
  pattern = config.pattern
  if len(pattern) == 1:
    return [jax.tree.map(lambda p, i=i: p[i], stack["layers"]) for i in range(config.num_layers)]
  out = []
  for i in range(config.num_layers):
    group, index = divmod(i, len(pattern))
    if "layers" in stack and group < jax.tree.leaves(stack["layers"])[0].shape[0]:
      out.append(jax.tree.map(lambda p, g=group: p[g], stack["layers"][f"block_{index}"]))
    else:
      out.append(jax.tree.map(lambda p: p[0], stack["remainder"][f"block_{index}"]))
  return out


def stack_layer_params(layers: list, config: TransformerConfig, stack_fn=None) -> dict:
  """The inverse of `layer_params`: per-layer trees -> the layout `Stack` expects.

  stack_fn: how leaves are stacked (default `jnp.stack`; numpy's keeps imports on the host)."""
  stack_fn = stack_fn or jnp.stack
  stacked = lambda trees: jax.tree.map(lambda *xs: stack_fn(xs), *trees)
  if not config.scan_layers:
    return {f"layers_{i}": layer for i, layer in enumerate(layers)}
  p = len(config.pattern)
  if p == 1:
    return {"layers": stacked(layers)}
  repeats, rest = divmod(len(layers), p)
  out = {}
  if repeats:
    out["layers"] = {f"block_{j}": stacked(layers[j : repeats * p : p]) for j in range(p)}
  if rest:
    out["remainder"] = {f"block_{j}": stacked([layers[repeats * p + j]]) for j in range(rest)}
  return out


def unstack_layers(params: dict, num_layers: int) -> dict:
  """Turns scanned `layers` params (leading axis L) into unrolled `layers_<i>` params."""
  params = dict(params)
  stacked = params.pop("layers")
  for i in range(num_layers):
    params[f"layers_{i}"] = jax.tree.map(lambda p: p[i], stacked)
  return params
