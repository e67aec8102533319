"""attention="splash": the Pallas TPU kernel behind `medpalm.models.layers.splash_attention`.

On this CPU host the kernel runs in Pallas' interpreter and must equal the reference attention
(values and gradients) on a prefix-LM mask whose length is not a multiple of the kernel's block;
for a TPU topology it must lower to the Mosaic kernel under the mesh (compile-only, libtpu).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding

from launch import topologies
from medpalm import partitioning
from medpalm.models import configs, layers, multimodal


def _qkv(b=2, t=200, h=4, g=1, k=32, seed=0):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.normal(size=(b, t, h, k)), jnp.float32) * k**-0.5
  kv = [jnp.asarray(rng.normal(size=(b, t, g, k)), jnp.float32) for _ in range(2)]
  return q, *kv


def test_splash_blocks_are_the_largest_that_divide_the_padded_length():
  assert [layers.splash_block(n) for n in (128, 256, 640, 1024, 1280, 1536, 4096)] == [
      128,
      256,
      128,
      512,
      256,
      512,
      512,
  ]


@pytest.mark.slow
@pytest.mark.parametrize("t", [200, 1000])  # one block of 256; two blocks of 512 each way
def test_interpreted_splash_equals_the_reference_path(t):
  q, k, v = _qkv(t=t)
  prefix = jnp.asarray(np.arange(t)[None] < np.array([[50], [t - 80]]), jnp.int32)
  reference = lambda q, k, v, m: layers.dot_product_attention(q, k, v, m, jnp.float32, "reference")
  splash = lambda q, k, v, m: layers.splash_attention(q, k, v, m, interpret=True)
  for mask in (multimodal.attention_mask(t, prefix), None):  # prefix LM (decoder); full (ViT)
    np.testing.assert_allclose(splash(q, k, v, mask), reference(q, k, v, mask), atol=1e-5)
  mask = multimodal.attention_mask(t, prefix)
  loss = lambda f: lambda q, k, v: jnp.sum(f(q, k, v, mask) ** 2)
  ours = jax.grad(loss(splash), argnums=(0, 1, 2))(q, k, v)
  theirs = jax.grad(loss(reference), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(ours, theirs):
    np.testing.assert_allclose(a, b, atol=2e-5)


def test_splash_is_a_configurable_attention():
  config = configs.get_config("tiny", attention="splash")
  assert config.decoder.attention == config.vision.attention == "splash"
  with pytest.raises(ValueError, match="'splash'"):
    layers.dot_product_attention(*_qkv(t=8), None, jnp.float32, "flash")


@pytest.mark.tpu_backend
def test_splash_lowers_to_the_tpu_kernel_under_a_mesh():
  devices = topologies.tpu_devices(topologies.get_topology("v5e:2x2"))
  mesh = partitioning.make_mesh(data=1, fsdp=2, model=2, devices=devices)
  b, t, h, k = 4, 1222, 8, 128  # the paper's 1222 positions: padded to 1280 inside
  spec = lambda names: NamedSharding(mesh, jax.sharding.PartitionSpec(*names))
  q = jax.ShapeDtypeStruct(
      (b, t, h, k), jnp.bfloat16, sharding=spec((("data", "fsdp"), None, "model"))
  )
  kv = jax.ShapeDtypeStruct((b, t, 1, k), jnp.bfloat16, sharding=spec((("data", "fsdp"),)))
  causal = jax.ShapeDtypeStruct((b, t), jnp.int32, sharding=spec((("data", "fsdp"),)))

  def step(q, k, v, prefix):
    mask = multimodal.attention_mask(t, prefix)
    out = lambda q, k, v: jnp.sum(
        layers.dot_product_attention(q, k, v, mask, jnp.bfloat16, "splash").astype(jnp.float32)
    )
    return jax.grad(out, argnums=(0, 1, 2))(q, k, v)

  # tests/conftest.py asks for float32 matmuls everywhere (CPU oracles); Mosaic has no float32
  # contraction of bfloat16 operands, and training runs at the default precision.
  with partitioning.using(mesh), jax.default_matmul_precision("default"):
    compiled = jax.jit(step).lower(q, kv, kv, causal).compile()
  text = compiled.as_text()
  assert 'custom_call_target="tpu_custom_call"' in text  # the Mosaic kernel, not an emulation
  # Flash-style: no float [T, S] scores or probabilities (padded 1280 x 1280) in HBM, forward
  # or backward; only the boolean mask is that shape.
  assert not re.search(r"(f32|bf16)\[[\d,]*1280,1280\]", text)


@pytest.mark.slow
@pytest.mark.parametrize("groups", [1, 2, 4])  # MQA, GQA, MHA: key/value heads of 4 queries
def test_interpreted_splash_under_a_mesh_equals_the_reference_path(groups):
  """Under the 8-device CPU mesh (heads over `model` = 2) each shard keeps its queries' key/value
  heads: the result equals the unsharded reference."""
  q, k, v = _qkv(b=4, t=136, h=4, g=groups)
  t = q.shape[1]
  prefix = jnp.asarray(np.arange(t)[None] < np.array([[40], [90], [1], [136]]), jnp.int32)
  mask = multimodal.attention_mask(t, prefix)
  expected = layers.dot_product_attention(q, k, v, mask, jnp.float32, "reference")
  mesh = partitioning.make_mesh(data=1, fsdp=4, model=2, devices=jax.devices()[:8])
  with partitioning.using(mesh):
    got = jax.jit(lambda q, k, v, m: layers.splash_attention(q, k, v, m, interpret=True))(
        q, k, v, mask
    )
  np.testing.assert_allclose(got, expected, atol=1e-5)
