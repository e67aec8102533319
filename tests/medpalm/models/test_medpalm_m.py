"""MedPalmM behaviour: layer stacking modes, dtypes, image placement, attention modes, checks."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medpalm.models import configs
from medpalm.models import blocks, multimodal
from medpalm.models.medpalm_m import MedPalmM


def small(**runtime):
  """tiny with 56-pixel images (16 image tokens) so that tests stay fast."""
  c = configs.get_config("tiny", **runtime)
  return dataclasses.replace(c, vision=dataclasses.replace(c.vision, image_size=56))


def batch_with_images(config, starts=(3, 7), length=40, num_images=1, seed=0):
  rng = np.random.default_rng(seed)
  m = config.num_image_tokens
  tokens = rng.integers(2, 500, (len(starts), length)).astype(np.int32)
  for row, start in enumerate(starts):
    tokens[row, start : start + m * num_images] = config.image_token_id
  size = config.vision.image_size
  images = rng.integers(0, 256, (len(starts), num_images, size, size, 3), dtype=np.uint8)
  return {
      "decoder_input_tokens": jnp.asarray(tokens),
      "images": jnp.asarray(images),
      "image_mask": jnp.ones((len(starts), num_images), bool),
  }


@pytest.fixture(scope="module")
def model():
  config = small()
  return config, nn.meta.unbox(
      MedPalmM(config).init(jax.random.key(0), **batch_with_images(config))
  )


def test_scan_and_unrolled_layers_give_identical_logits(model):
  config, variables = model
  batch = batch_with_images(config)
  unrolled = small(scan_layers=False)
  params = dict(variables["params"])
  params["decoder"] = dict(
      params["decoder"], stack=blocks.unstack_layers(params["decoder"]["stack"], 2)
  )
  params["vision"] = dict(
      params["vision"], encoder=blocks.unstack_layers(params["vision"]["encoder"], 2)
  )
  want = MedPalmM(config).apply(variables, **batch)
  got = MedPalmM(unrolled).apply({"params": params}, **batch)
  # Same arithmetic; XLA fuses a loop body and a straight line differently (float32 ulps).
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=2e-6)
  # The unrolled model creates exactly these parameter names.
  fresh = jax.eval_shape(lambda: MedPalmM(unrolled).init(jax.random.key(0), **batch))
  assert jax.tree.structure(nn.meta.unbox(fresh)["params"]) == jax.tree.structure(params)


@pytest.mark.parametrize("policy", ["full", "save_attention_out"])
def test_remat_changes_memory_not_values(model, policy):
  config, variables = model
  batch = batch_with_images(config)

  def loss(params, cfg):
    return jnp.mean(MedPalmM(cfg).apply({"params": params}, **batch) ** 2)

  want = jax.grad(loss)(variables["params"], config)
  got = jax.jit(jax.grad(loss), static_argnums=1)(variables["params"], small(remat_policy=policy))
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_stays_close_to_float32(model):
  """bf16 keeps 8 bits of mantissa: logits (of order 1) agree to 0.1 absolute at worst and 2% of
  their mean magnitude on average."""
  config, variables = model
  batch = batch_with_images(config)
  want = np.asarray(MedPalmM(config).apply(variables, **batch))
  got = MedPalmM(small(dtype="bfloat16")).apply(variables, **batch)
  assert got.dtype == jnp.float32  # logits are accumulated in float32
  err = np.abs(np.asarray(got) - want)
  assert err.max() <= 0.1 and err.mean() <= 0.02 * np.abs(want).mean()


def test_image_rows_reuse_text_positions_and_move_with_placeholders(model):
  """Two rows with the same text and different images: identical before the image (causal),
  different from the image on (the model reads it)."""
  config, variables = model
  batch = batch_with_images(config, starts=(3, 3))
  tokens = batch["decoder_input_tokens"]
  batch["decoder_input_tokens"] = jnp.stack([tokens[0], tokens[0]])
  logits = np.asarray(MedPalmM(config).apply(variables, **batch))
  np.testing.assert_allclose(logits[0, :3], logits[1, :3], atol=1e-6)
  assert np.abs(logits[0, 3:] - logits[1, 3:]).max() > 1e-3


def test_invalid_images_are_skipped_in_order(model):
  """image_mask [False, True] with placeholders for one image == that image alone."""
  config, variables = model
  one = batch_with_images(config, starts=(4,))
  two = dict(
      one,
      images=jnp.concatenate([jnp.zeros_like(one["images"]), one["images"]], 1),
      image_mask=jnp.array([[False, True]]),
  )
  np.testing.assert_allclose(
      MedPalmM(config).apply(variables, **two), MedPalmM(config).apply(variables, **one), atol=1e-6
  )


def test_two_images_fill_their_placeholders_in_order(model):
  config, variables = model
  batch = batch_with_images(config, starts=(2,), num_images=2, length=48)
  swapped = dict(batch, images=batch["images"][:, ::-1])
  a = MedPalmM(config).apply(variables, **batch)
  b = MedPalmM(config).apply(variables, **swapped)
  assert np.abs(np.asarray(a - b)[:, 2 + config.num_image_tokens :]).max() > 1e-3


def test_prefix_bidirectional_attention_only_changes_the_prefix_view(model):
  config, variables = model
  batch = batch_with_images(config)
  causal = MedPalmM(config).apply(variables, **batch)
  prefix = jnp.zeros((2, 40), jnp.int32).at[:, :30].set(1)
  bidi = MedPalmM(config).apply(variables, **batch, decoder_causal_attention=prefix)
  assert np.abs(np.asarray(bidi - causal)[:, :29]).max() > 1e-3  # prefix sees its future


def test_attention_mask_is_causal_plus_bidirectional_prefix_minus_padding():
  prefix = jnp.array([[1, 1, 0, 0, 0]])
  targets = jnp.array([[5, 6, 7, 8, 0]])
  mask = np.asarray(multimodal.attention_mask(5, prefix, targets))[0, 0].astype(int)
  np.testing.assert_array_equal(
      mask, [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [0, 0, 0, 0, 0]]
  )


def test_dropout_is_active_only_when_enabled():
  config = small(dropout_rate=0.5)
  batch = batch_with_images(config)
  variables = MedPalmM(config).init(jax.random.key(0), **batch)
  a = MedPalmM(config).apply(variables, **batch)
  np.testing.assert_array_equal(a, MedPalmM(config).apply(variables, **batch))
  b = MedPalmM(config).apply(
      variables, **batch, enable_dropout=True, rngs={"dropout": jax.random.key(1)}
  )
  assert np.abs(np.asarray(a - b)).max() > 1e-3


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda b: dict(b, images=b["images"].astype(jnp.float32)), "must be uint8"),
        (lambda b: dict(b, images=b["images"][:, 0]), "rank 5"),
        (lambda b: dict(b, images=b["images"][:, :, :28]), r"\[B, N, 56, 56, 3\] for config"),
        (
            lambda b: dict(b, decoder_input_tokens=b["decoder_input_tokens"].at[0, 3].set(5)),
            "row 0: 15 image placeholder tokens .* 16 expected",
        ),
        (
            lambda b: dict(b, image_mask=jnp.array([[True], [False]])),
            "row 1: 16 image placeholder tokens .* 0 valid image",
        ),
        (lambda b: {"decoder_input_tokens": b["decoder_input_tokens"]}, "but no images were given"),
    ],
)
def test_bad_inputs_are_clear_errors(model, change, message):
  config, variables = model
  with pytest.raises(ValueError, match=message):
    MedPalmM(config).apply(variables, **change(batch_with_images(config)))


def test_shape_errors_are_caught_under_jit_too(model):
  config, variables = model
  batch = batch_with_images(config)
  batch["images"] = batch["images"].astype(jnp.int32)
  with pytest.raises(ValueError, match="must be uint8"):
    jax.jit(MedPalmM(config).apply)(variables, **batch)


def test_a_few_training_steps_fit_a_fixed_batch(model):
  """Sanity: gradients flow through decoder, projector and ViT; loss falls on one batch."""
  import optax

  config, variables = model
  batch = batch_with_images(config)
  targets = jnp.roll(batch["decoder_input_tokens"], -1, axis=1)
  weights = (jnp.arange(40) >= 25).astype(jnp.float32)[None]  # loss on the suffix only

  def loss_fn(params):
    logits = MedPalmM(config).apply({"params": params}, **batch)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return jnp.sum(ce * weights) / jnp.sum(weights * jnp.ones_like(ce))

  opt = optax.adam(1e-2)
  params, state = variables["params"], opt.init(variables["params"])

  @jax.jit
  def step(params, state):
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, state = opt.update(grads, state)
    return optax.apply_updates(params, updates), state, loss, grads

  losses = []
  for _ in range(8):
    params, state, loss, grads = step(params, state)
    losses.append(float(loss))
  assert losses[-1] < 0.5 * losses[0]
  for part in ("vision", "projector", "decoder"):
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads[part])) > 0, part


def _attention_inputs(kv_heads):
  """q, k, v and a causal + prefix + padding mask with fully masked (padding) rows."""
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.standard_normal((2, 6, 4, 8)), jnp.float32)
  k, v = (jnp.asarray(rng.standard_normal((2, 6, kv_heads, 8)), jnp.float32) for _ in range(2))
  mask = multimodal.attention_mask(
      6, jnp.array([[1, 1, 0, 0, 0, 0]] * 2), jnp.array([[3, 4, 5, 6, 0, 0], [3, 4, 5, 6, 7, 8]])
  )
  return q, k, v, mask


@pytest.mark.parametrize("implementation", ["jax", "recompute"])
@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_attention_paths_match_the_reference_path(implementation, kv_heads):
  """`jax.nn.dot_product_attention` and the recomputing path against our einsum definition:
  grouped K/V heads, padding rows, float32 and bfloat16."""
  from medpalm.models import layers

  q, k, v, mask = _attention_inputs(kv_heads)
  for dtype, tol in ((jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)):
    fused = layers.dot_product_attention(q, k, v, mask, dtype, implementation)
    reference = layers.dot_product_attention(q, k, v, mask, dtype, "reference")
    assert fused.dtype == dtype
    assert np.all(np.isfinite(np.asarray(fused, np.float32)))
    np.testing.assert_allclose(
        np.asarray(fused, np.float32), np.asarray(reference, np.float32), atol=tol, rtol=tol
    )


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_recomputing_attention_gradient_matches_autodiff_of_the_reference(kv_heads):
  from medpalm.models import layers

  q, k, v, mask = _attention_inputs(kv_heads)
  probe = jnp.asarray(np.random.default_rng(1).standard_normal(q.shape), jnp.float32)

  def grads(implementation):
    objective = lambda q, k, v: jnp.sum(
        probe * layers.dot_product_attention(q, k, v, mask, jnp.float32, implementation)
    )
    return jax.grad(objective, argnums=(0, 1, 2))(q, k, v)

  for name, got, want in zip("qkv", grads("recompute"), grads("reference")):
    assert float(jnp.abs(want).max()) > 1e-2, name
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5, err_msg=f"d{name}")
