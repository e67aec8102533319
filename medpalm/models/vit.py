"""VisionTransformer: 14×14 patches, learned position embeddings, all patch tokens out.

No class token and no pooling: PaLM-E feeds every patch token (256 at 224×224) through the
projector into the decoder. Options cover ViT-e, ViT-22B and SigLIP (see `medpalm.models.configs`).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from medpalm.models.configs import VisionConfig
from medpalm.models.blocks import VIT_AXES, Stack
from medpalm.models.layers import Array, DenseGeneral, Norm, constrain, param


def patchify(images: Array, patch: int) -> Array:
  """float[B, H, W, C] -> float[B, (H/p)·(W/p), p·p·C], patches row-major, pixels (row, col, c)."""
  b, h, w, ch = images.shape
  x = images.reshape(b, h // patch, patch, w // patch, patch, ch)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // patch) * (w // patch), patch * patch * ch)


class VisionTransformer(nn.Module):
  """uint8[B, H, W, 3] images -> float[B, num_tokens, d_model] patch tokens."""

  config: VisionConfig

  @nn.compact
  def __call__(self, images: Array, *, enable_dropout: bool = False) -> Array:
    c = self.config
    dtype, param_dtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    # uint8 -> [-1, 1], the input range of SigLIP / big_vision ViTs.
    x = images.astype(jnp.float32) / 127.5 - 1.0
    x = patchify(x, c.patch_size).astype(dtype)
    x = DenseGeneral(
        (c.patch_size**2 * 3,),
        (c.d_model,),
        ("vit_patch", "vit_embed"),
        use_bias=True,
        dtype=dtype,
        param_dtype=param_dtype,
        name="patch_embedding",
    )(x)
    pos = param(
        self,
        "pos_embedding",
        nn.initializers.normal(stddev=c.d_model**-0.5),
        (c.num_tokens, c.d_model),
        ("vit_length", "vit_embed"),
        param_dtype,
    )
    x = constrain(x + pos.astype(dtype)[None], ("batch", "length", "vit_embed"))
    x = nn.Dropout(c.dropout_rate, deterministic=not enable_dropout)(x)
    x = Stack(c, VIT_AXES, name="encoder")(x, None, None, enable_dropout)
    if c.final_norm:
      x = Norm(
          kind=c.norm,
          epsilon=c.norm_epsilon,
          use_bias=c.use_bias,
          axis_name="vit_embed",
          dtype=dtype,
          param_dtype=param_dtype,
          name="final_norm",
      )(x)
    return x
