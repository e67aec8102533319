"""Building blocks with logical axis names on every parameter and major activation.

Modules here map arrays to arrays and never see a mesh: each parameter is created through
`nn.with_logical_partitioning`, and activations are tagged with `constrain`, so one rules table
(`medpalm.partitioning`) decides how everything is laid out on the devices.

Kernels keep the head structure explicit (`[embed, heads, head_dim]`) so that tensor parallelism
splits heads, and so that imported checkpoints map onto them with a reshape.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
DType = Any
Initializer = Callable[..., Array]
AxisNames = tuple[str | None, ...]


def constrain(x: Array, names: AxisNames) -> Array:
  """Tags an activation with logical axis names (a no-op without rules or mesh)."""
  return nn.with_logical_constraint(x, names)


def fan_in_init(in_axes: Sequence[int] = (0,)) -> Initializer:
  """Truncated-normal fan-in variance scaling, fan-in read from `in_axes` (PaLM's init)."""
  return nn.initializers.variance_scaling(
      1.0, "fan_in", "truncated_normal", in_axis=tuple(in_axes), out_axis=-1
  )


def param(
    module: nn.Module,
    name: str,
    init: Initializer,
    shape: Sequence[int],
    names: AxisNames,
    dtype: DType,
) -> Array:
  """Creates a parameter carrying logical axis names; one name per dimension."""
  if len(names) != len(shape):
    raise ValueError(f"{module.name}/{name}: {len(shape)} dims but axis names {names}")
  return module.param(name, nn.with_logical_partitioning(init, names), tuple(shape), dtype)


class DenseGeneral(nn.Module):
  """`y = x @ W (+ b)` contracting the trailing `len(in_shape)` dims of x.

  The product is computed as one 2-D matmul `[batch..., prod(in_shape)] @ [prod(in_shape),
  prod(out_shape)]` (both reshapes are free on row-major arrays). A rank-3 `dot_general` gives
  the same forward pass, but its weight gradient contracts two dims at once, and XLA:CPU lowers
  that with a transposed copy of the output gradient and a slower GEMM: 2.1x the fwd+bwd time of
  the 2-D form for a [4, 512, 512] @ [512, 2048] layer (`benchmarks/step_parts.py`).

  Attributes:
    in_shape / out_shape: kernel is `[*in_shape, *out_shape]`.
    kernel_axes: logical names of the kernel's dims (in, then out).
  """

  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  kernel_axes: AxisNames
  use_bias: bool = False
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32
  kernel_init: Initializer | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    n_in = len(self.in_shape)
    init = self.kernel_init or fan_in_init(tuple(range(n_in)))
    kernel = param(
        self, "kernel", init, (*self.in_shape, *self.out_shape), self.kernel_axes, self.param_dtype
    )
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    if x.shape[x.ndim - n_in :] != tuple(self.in_shape):
      raise ValueError(
          f"{self.name}: input trailing dims {x.shape[x.ndim - n_in:]} do not "
          f"match the kernel's in_shape {tuple(self.in_shape)}"
      )
    batch = x.shape[: x.ndim - n_in]
    fan_in, fan_out = math.prod(self.in_shape), math.prod(self.out_shape)
    y = x.reshape(-1, fan_in) @ kernel.reshape(fan_in, fan_out)
    y = y.reshape(*batch, *self.out_shape)
    if self.use_bias:
      bias = param(
          self,
          "bias",
          nn.initializers.zeros,
          self.out_shape,
          self.kernel_axes[n_in:],
          self.param_dtype,
      )
      y = y + bias.astype(self.dtype)
    return y


class Norm(nn.Module):
  """LayerNorm or RMSNorm over the last dim, always computed in float32.

  Attributes:
    kind: "layernorm" (mean-centred) or "rmsnorm".
    use_scale / use_bias: learned scale and offset (PaLM: scale only).
    scale_plus_one: the scale is stored as `w` and applied as `1 + w` (Gemma's convention).
    axis_name: logical name of the normed dim.
  """

  kind: str = "layernorm"
  epsilon: float = 1e-6
  use_scale: bool = True
  use_bias: bool = False
  scale_plus_one: bool = False
  axis_name: str = "embed"
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.kind not in ("layernorm", "rmsnorm"):
      raise ValueError(f"Norm.kind must be 'layernorm' or 'rmsnorm', got {self.kind!r}")
    dim = x.shape[-1]
    y = x.astype(jnp.float32)
    if self.kind == "layernorm":
      y = y - jnp.mean(y, axis=-1, keepdims=True)
    y = y * jax.lax.rsqrt(jnp.mean(jnp.square(y), axis=-1, keepdims=True) + self.epsilon)
    if self.use_scale:
      init = nn.initializers.zeros if self.scale_plus_one else nn.initializers.ones
      scale = param(self, "scale", init, (dim,), (self.axis_name,), self.param_dtype)
      scale = scale.astype(jnp.float32)
      y = y * (1.0 + scale if self.scale_plus_one else scale)
    if self.use_bias:
      bias = param(self, "bias", nn.initializers.zeros, (dim,), (self.axis_name,), self.param_dtype)
      y = y + bias.astype(jnp.float32)
    return y.astype(self.dtype)


def rotary_embedding(x: Array, positions: Array, base: float, scale: float = 1.0) -> Array:
  """Applies RoPE with the "half-split" pairing (dim i rotates with dim i + head_dim/2).

  Args:
    x: float[B, T, H, K] queries or keys.
    positions: int32[B, T] absolute positions (images reuse text positions, as in PaLM-E).
    base: wavelength base (10,000 for PaLM and Gemma).
    scale: positions are divided by it (linear RoPE scaling, Gemma 3's global layers).
  """
  half = x.shape[-1] // 2
  inv_freq = 1.0 / base ** (jnp.arange(half, dtype=jnp.float32) / half) / scale
  angles = positions.astype(jnp.float32)[:, :, None, None] * inv_freq  # [B, T, 1, K/2]
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


def dot_product_attention(
    q: Array,
    k: Array,
    v: Array,
    mask: Array | None,
    dtype: DType,
    implementation: str = "jax",
    softcap: float | None = None,
) -> Array:
  """Softmax attention with grouped (multi-query) keys and values.

  implementation: "jax" goes through `jax.nn.dot_product_attention` (fused kernels on GPU/TPU,
  XLA elsewhere); "recompute" is `recompute_attention` (keeps no [T, S] array for the backward
  pass); "reference" is the plain einsum path below, softmax in float32, kept as the definition
  the others are tested against.

  Args:
    q: [B, T, H, K] queries, already scaled.
    k, v: [B, S, G, K] with G dividing H (G = 1 is PaLM's multi-query attention).
    mask: bool[B, 1, T, S] (True = may attend) or None.
    softcap: logits become softcap * tanh(logits / softcap) before the mask (Gemma 2). Neither
      fused path has the cap, so capped attention always takes the reference path.
  Returns:
    [B, T, H, K].
  """
  if softcap is not None:
    implementation = "reference"
  if implementation == "jax":
    return jax.nn.dot_product_attention(
        q.astype(dtype), k.astype(dtype), v.astype(dtype), mask=mask, scale=1.0
    ).astype(dtype)
  if implementation == "recompute":
    return recompute_attention(q.astype(dtype), k.astype(dtype), v.astype(dtype), mask)
  if implementation == "splash":  # the Pallas TPU kernel, see splash_attention below
    return splash_attention(q.astype(dtype), k.astype(dtype), v.astype(dtype), mask)
  if implementation != "reference":
    raise ValueError(
        f"attention implementation {implementation!r}: 'jax', 'recompute', 'splash' or "
        "'reference'"
    )
  b, t, h, d = q.shape
  g = k.shape[2]
  q = q.reshape(b, t, g, h // g, d)
  logits = jnp.einsum("btgrk,bsgk->bgrts", q, k, preferred_element_type=jnp.float32)
  if softcap is not None:
    logits = softcap * jnp.tanh(logits / softcap)
  if mask is not None:
    big_neg = jnp.finfo(jnp.float32).min
    logits = jnp.where(mask[:, :, None], logits, big_neg)
  probs = jax.nn.softmax(logits, axis=-1).astype(dtype)
  out = jnp.einsum("bgrts,bsgk->btgrk", probs, v)
  return out.reshape(b, t, h, d)


def _grouped(x: Array, groups: int) -> Array:
  """[B, T, H, K] -> [B, T, G, H/G, K]: the query heads that share one key/value head."""
  b, t, h, d = x.shape
  return x.reshape(b, t, groups, h // groups, d)


def _masked_logits(q: Array, k: Array, mask: Array | None) -> Array:
  """float32[B, G, T, R, S] logits of grouped queries [B, T, G, R, K] against keys [B, S, G, K]."""
  logits = jnp.einsum("btgrk,bsgk->bgtrs", q, k, preferred_element_type=jnp.float32)
  if mask is None:
    return logits
  return jnp.where(mask[:, :, :, None, :], logits, jnp.finfo(jnp.float32).min)


def _probs(logits: Array, row_max: Array, log_z: Array) -> Array:
  """softmax(logits) from its row max and log-normalizer of the shifted logits, both [..., 1].

  The two are kept apart because a fully masked row has max = finfo.min, where max + log_z
  would round back to finfo.min and turn the uniform row the reference computes into all ones.
  """
  return jnp.exp(logits - row_max - log_z)


def _recompute_forward(q, k, v, mask):
  g = k.shape[2]
  logits = _masked_logits(_grouped(q, g), k, mask)
  row_max = jnp.max(logits, axis=-1, keepdims=True)  # float32[B, G, T, R, 1]
  log_z = jnp.log(jnp.sum(jnp.exp(logits - row_max), axis=-1, keepdims=True))
  probs = _probs(logits, row_max, log_z).astype(q.dtype)
  out = jnp.einsum("bgtrs,bsgk->btgrk", probs, v).reshape(q.shape)
  return out, (q, k, v, mask, row_max, log_z, out)


def _recompute_backward(residuals, d_out):
  q, k, v, mask, row_max, log_z, out = residuals
  g = k.shape[2]
  f32 = lambda x: x.astype(jnp.float32)
  q5, d_out5, out5 = (f32(_grouped(x, g)) for x in (q, d_out, out))
  probs = _probs(_masked_logits(q5, f32(k), mask), row_max, log_z)  # [B, G, T, R, S]
  d_probs = jnp.einsum("btgrk,bsgk->bgtrs", d_out5, f32(v))
  # Softmax backward: dS = P * (dP - sum_s P dP), and sum_s P dP = <dO, O> per query.
  d_logits = probs * (d_probs - jnp.einsum("btgrk,btgrk->bgtr", d_out5, out5)[..., None])
  if mask is not None:  # masked logits are constants (a fully masked row's probs are not 0)
    d_logits = jnp.where(mask[:, :, :, None, :], d_logits, 0.0)
  d_q = jnp.einsum("bgtrs,bsgk->btgrk", d_logits, f32(k)).reshape(q.shape)
  d_k = jnp.einsum("bgtrs,btgrk->bsgk", d_logits, q5)
  d_v = jnp.einsum("bgtrs,btgrk->bsgk", probs, d_out5)
  return d_q.astype(q.dtype), d_k.astype(k.dtype), d_v.astype(v.dtype), None


@jax.custom_vjp
def recompute_attention(q: Array, k: Array, v: Array, mask: Array | None) -> Array:
  """Softmax attention that keeps only the softmax normalizer for its backward pass.

  Same value as the reference path (float32 logits and softmax; probabilities in q's dtype
  before the value product). The backward pass recomputes the probabilities from q, k and the
  saved float32[B, G, T, R] row max and log-normalizer, as flash attention does, instead of
  storing the [B, H, T, S] probabilities, at the cost of one more QK^T matmul. Under `nn.scan`
  every saved array is stacked over the layers: without remat this cuts the MFU benchmark's
  scratch space from 3.07 to 2.36 GiB (docs/PERFORMANCE.md). Remat `dots` gets the same saving
  by recomputing, and there this path adds nothing.

  q: [B, T, H, K]; k, v: [B, S, G, K]; mask: bool[B, 1, T, S] or None. Returns [B, T, H, K].
  """
  return _recompute_forward(q, k, v, mask)[0]


recompute_attention.defvjp(_recompute_forward, _recompute_backward)


# --- splash attention (Pallas TPU kernel) ---------------------------------------------------

_SPLASH_BLOCK = 128  # the kernel's smallest q / kv block; lengths are padded to a multiple of it
_SPLASH_MAX_BLOCK = 512  # as MaxText's defaults; the blocks' scores stay in on-chip memory


def splash_block(length: int) -> int:
  """The kernel's block along a padded length: the largest multiple of 128, up to 512, that
  divides it (1280 -> 256, 1024 -> 512). The kernel reads the keys and values once per query
  block (and the queries once per key block, backward), so larger blocks cut that traffic: at
  128, a v5e chip would wait on HBM rather than on its matrix units."""
  return max(
      b for b in range(_SPLASH_BLOCK, _SPLASH_MAX_BLOCK + 1, _SPLASH_BLOCK) if length % b == 0
  )


def splash_attention(
    q: Array, k: Array, v: Array, mask: Array | None, interpret: bool | None = None
) -> Array:
  """Attention through the splash kernel of `jax.experimental.pallas.ops.tpu` (flash attention
  that also skips fully masked blocks), as MaxText runs it on TPU.

  The kernel never writes the [T, S] probabilities to HBM, forward or backward. Our masks differ
  per example (prefix LM, padding), so each example gets the kernel's dynamic mask; a missing
  mask (the ViT) is the kernel's static full mask. Lengths are padded to a multiple of 128 with
  keys nobody sees. A query row with no visible key (a padding position) attends to itself
  instead of averaging every value as the reference path does: the kernel would otherwise
  divide by zero there, and such rows carry no loss. Under a mesh the kernel runs per shard
  (`shard_map`, batch over the rules' "batch" axes, heads over "heads"), since XLA cannot split
  a custom kernel by itself.

  Args:
    q: [B, T, H, K] queries, already scaled; k, v: [B, S, G, K] with G dividing H.
    mask: bool[B or 1, 1, T, S] (True = may attend) or None.
    interpret: run the kernel in Pallas' interpreter (any platform; slow). Default: unless the
      program is built for TPUs (the devices of the mesh in context, else JAX's default backend),
      so an AOT compile for a TPU slice on a CPU host gets the real kernel.
  Returns:
    [B, T, H, K] in q's dtype.
  """
  mesh = jax.sharding.get_abstract_mesh()
  mesh = None if mesh is None or mesh.empty else mesh
  if interpret is None:
    platform = mesh.abstract_device.platform if mesh is not None else jax.default_backend()
    interpret = platform != "tpu"
  b, t, h, _ = q.shape
  s = k.shape[1]
  if mask is not None:
    mask = jnp.broadcast_to(mask.astype(bool), (b, 1, t, s))
  pad_t, pad_s = -t % _SPLASH_BLOCK, -s % _SPLASH_BLOCK
  if pad_t or pad_s:
    pad = lambda x, n: jnp.pad(x, ((0, 0), (0, n), (0, 0), (0, 0)))
    q, k, v = pad(q, pad_t), pad(k, pad_s), pad(v, pad_s)
    if mask is None:
      mask = jnp.ones((b, 1, t, s), bool)
    mask = jnp.pad(mask, ((0, 0), (0, 0), (0, pad_t), (0, pad_s)))
  if mask is not None:  # rows that see nothing (padding) see themselves
    eye = jnp.eye(t + pad_t, s + pad_s, dtype=bool)[None, None]
    mask = mask | (eye & ~jnp.any(mask, axis=-1, keepdims=True))

  def local(q, k, v, mask):
    from jax.experimental.pallas.ops.tpu.splash_attention import (  # pylint: disable=g-import-not-at-top
        splash_attention_kernel as splash,
        splash_attention_mask as masks,
    )

    heads = q.shape[2]
    to_heads = lambda x: jnp.swapaxes(x, 1, 2)  # [B, T, H, K] -> [B, H, T, K]

    def one(q, k, v, m):  # q [H, T, K], k/v [G, S, K], m bool[T, S] or None
      shape = (q.shape[1], k.shape[1])
      # One mask for every head: the kernel then builds its block tables (and the int32 copy of
      # each partial block) once per example instead of once per head.
      kernel_mask = masks.MultiHeadMask([masks.FullMask(shape)] * heads) if m is None else m[None]
      bq, bkv = splash_block(shape[0]), splash_block(shape[1])
      blocks = splash.BlockSizes(
          block_q=bq, block_kv=bkv, block_q_dkv=bq, block_kv_dkv=bkv, block_q_dq=bq, block_kv_dq=bkv
      )
      kernel = splash.make_splash_mha(
          kernel_mask, block_sizes=blocks, head_shards=1, q_seq_shards=1, interpret=interpret
      )
      # Built under vmap / shard_map, the kernel's "is this mask dynamic" flag becomes a traced
      # array that its Python `if`s cannot read; we know the answer.
      fix = lambda info: None if info is None else info._replace(is_dynamic_mask=m is not None)
      kernel.fwd_mask_info = fix(kernel.fwd_mask_info)
      kernel.dq_mask_info = fix(kernel.dq_mask_info)
      kernel.dkv_mask_info = fix(kernel.dkv_mask_info)
      return kernel(q, k, v)

    if mask is None:
      out = jax.vmap(lambda q, k, v: one(q, k, v, None))(to_heads(q), to_heads(k), to_heads(v))
    else:
      out = jax.vmap(one)(to_heads(q), to_heads(k), to_heads(v), mask[:, 0])
    return to_heads(out)

  if mesh is None:
    out = local(q, k, v, mask)
  else:
    spec = lambda names: nn.logical_to_mesh_axes(names)
    qs = spec(("batch", None, "heads", None))
    # Key/value heads split like the query heads when they divide over the same shards (MHA,
    # GQA: each shard keeps its queries' groups); one shared head (MQA) is replicated.
    head_axes = qs[2] if isinstance(qs[2], tuple) else (qs[2],) if qs[2] else ()
    shards = math.prod(mesh.shape[a] for a in head_axes)
    groups = k.shape[2]
    if groups > 1 and groups % shards:
      raise ValueError(
          f"splash attention: {groups} key/value heads do not split over the {shards} shards "
          f"of the heads' mesh axes {head_axes}"
      )
    kvs = qs if groups > 1 else spec(("batch", None, None, None))
    in_specs = (qs, kvs, kvs) + (() if mask is None else (spec(("batch", None, None, None)),))
    body = local if mask is not None else (lambda q, k, v: local(q, k, v, None))
    args = (q, k, v) if mask is None else (q, k, v, mask)
    out = jax.shard_map(body, in_specs=in_specs, out_specs=qs, check_vma=False)(*args)
  return out[:, :t]
