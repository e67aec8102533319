"""MedPalmMModel keeps T5X's model contract: names, signatures, losses, initial variables."""

import functools
import inspect

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import tensorflow as tf

from medpalm import losses, optimizers
from medpalm.model import MedPalmMModel
from tests.support.decoding import make_model, prompt_batch, small_config

# T5X's DecoderOnlyModel surface: method -> parameter names in order.
CONTRACT = {
    "loss_fn": ["params", "batch", "dropout_rng"],
    "eval_fn": ["params", "batch"],
    "score_batch": ["params", "batch", "return_intermediates"],
    "predict_batch": ["params", "batch", "rng"],
    "predict_batch_with_aux": [
        "params",
        "batch",
        "rng",
        "return_all_decodes",
        "num_decodes",
        "decoder_params",
    ],
    "get_initial_variables": ["rng", "input_shapes", "input_types"],
    "_compute_logits": ["params", "batch", "dropout_rng", "mutable", "other_variables"],
}


@pytest.fixture(scope="module")
def setup():
  config = small_config()
  model, params = make_model(config, z_loss=1e-3)
  return config, model, params, prompt_batch(config)


def test_method_names_and_signatures_follow_t5x():
  for name, expected in CONTRACT.items():
    params = list(inspect.signature(getattr(MedPalmMModel, name)).parameters)[1:]
    assert params == expected, name
  keyword_only = inspect.signature(MedPalmMModel.predict_batch_with_aux).parameters
  assert all(
      keyword_only[p].kind is inspect.Parameter.KEYWORD_ONLY
      for p in ("return_all_decodes", "num_decodes", "decoder_params")
  )
  init = list(inspect.signature(MedPalmMModel.__init__).parameters)[1:]
  assert init[:4] == ["module", "vocabulary", "optimizer_def", "decode_fn"]
  for prop in ("input_vocabulary", "output_vocabulary", "decode_fn"):
    assert isinstance(getattr(MedPalmMModel, prop), property)


def _reference_loss(logits, targets, weights, z_loss):
  """Plain numpy cross-entropy + z-loss, summed over weighted target tokens."""
  logits = np.asarray(logits, np.float64)
  log_z = np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1)) + logits.max(-1)
  target_logit = np.take_along_axis(logits, np.asarray(targets)[..., None], -1)[..., 0]
  per_token = (log_z - target_logit) + z_loss * log_z**2
  return float(np.sum(per_token * np.asarray(weights))), float(
      np.sum(z_loss * log_z**2 * np.asarray(weights))
  )


def test_loss_equals_a_hand_written_cross_entropy(setup):
  config, model, params, batch = setup
  loss, metrics = model.loss_fn(params, batch, None)
  logits = model._compute_logits(params, batch)
  want, want_z = _reference_loss(
      logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"], 1e-3
  )
  assert float(loss) == pytest.approx(want, rel=1e-5)
  assert float(metrics["z_loss"].compute()) == pytest.approx(want_z, rel=1e-4)
  assert float(metrics["cross_ent_loss"].compute()) == pytest.approx(want - want_z, rel=1e-5)
  assert set(metrics) >= {
      "loss",
      "accuracy",
      "z_loss",
      "cross_ent_loss",
      "loss_per_nonpadding_target_token",
      "loss_per_all_target_tokens",
  }
  assert 0.0 <= float(metrics["accuracy"].compute()) <= 1.0


def test_prompt_tokens_carry_no_loss(setup):
  config, model, params, batch = setup
  loss, _ = model.loss_fn(params, batch, None)
  prompt = batch["decoder_causal_attention"].astype(bool)
  changed = dict(batch, decoder_target_tokens=jnp.where(prompt, 7, batch["decoder_target_tokens"]))
  assert float(model.loss_fn(params, changed, None)[0]) == pytest.approx(float(loss), rel=1e-6)


def _smoothed_cross_entropy(logits, targets, z_loss, label_smoothing):
  """Textbook form, differentiated by JAX: KL(q || softmax) for the smoothed target q, + z-loss."""
  vocab = logits.shape[-1]
  q = jnp.where(
      jax.nn.one_hot(targets, vocab) > 0, 1.0 - label_smoothing, label_smoothing / (vocab - 1)
  )
  entropy = -jnp.sum(jnp.where(q > 0, q * jnp.log(q), 0.0), -1)
  log_z = jax.nn.logsumexp(logits, -1)
  z = z_loss * log_z**2
  return -jnp.sum(q * jax.nn.log_softmax(logits), -1) - entropy + z, z


@pytest.mark.parametrize("z_loss,label_smoothing", [(0.0, 0.0), (1e-3, 0.0), (1e-3, 0.1)])
def test_cross_entropy_value_and_gradient_match_the_textbook_form(z_loss, label_smoothing):
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(0, 3, (2, 5, 11)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, 11, (2, 5)), jnp.int32)
  w_loss, w_z = (jnp.asarray(rng.uniform(size=(2, 5)), jnp.float32) for _ in range(2))

  def objective(ce, x):
    loss, z = ce(x, targets, z_loss, label_smoothing)
    return jnp.sum(loss * w_loss) + 3.0 * jnp.sum(z * w_z)  # both outputs carry a gradient

  ours = losses.cross_entropy_with_logits(logits, targets, z_loss, label_smoothing)
  want = _smoothed_cross_entropy(logits, targets, z_loss, label_smoothing)
  for got, expected in zip(ours, want):
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  grad = jax.grad(functools.partial(objective, losses.cross_entropy_with_logits))(logits)
  want_grad = jax.grad(functools.partial(objective, _smoothed_cross_entropy))(logits)
  np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(want_grad).max()) > 1e-2  # the comparison is not between zeros


def test_score_batch_is_minus_the_summed_target_cross_entropy():
  config = small_config()
  model, params = make_model(config, z_loss=0.0)  # normalization None: loss is a sum
  batch = {k: v[:1] for k, v in prompt_batch(config).items()}
  loss, _ = model.loss_fn(params, batch, None)
  score = model.score_batch(params, batch)
  assert score.shape == (1,)
  assert float(score[0]) == pytest.approx(-float(loss), rel=1e-6)
  scores, intermediates = model.score_batch(params, batch, return_intermediates=True)
  assert intermediates["token_scores"].shape == batch["decoder_input_tokens"].shape


def test_loss_normalizing_factors(setup):
  config, _, params, batch = setup
  total = float(make_model(config, z_loss=0.0)[0].loss_fn(params, batch, None)[0])
  per_token, _ = make_model(config, z_loss=0.0, loss_normalizing_factor="NUM_REAL_TARGET_TOKENS")[
      0
  ].loss_fn(params, batch, None)
  assert float(per_token) == pytest.approx(
      total / float(jnp.sum(batch["decoder_loss_weights"])), rel=1e-6
  )
  constant, _ = make_model(config, z_loss=0.0, loss_normalizing_factor=4.0)[0].loss_fn(
      params, batch, None
  )
  assert float(constant) == pytest.approx(total / 4.0, rel=1e-6)
  with pytest.raises(ValueError, match="loss_normalizing_factor"):
    make_model(config, loss_normalizing_factor="PER_BANANA")


def test_dropout_rng_turns_dropout_on():
  config = small_config(dropout_rate=0.3)
  model, params = make_model(config)
  batch = prompt_batch(config)
  a = model.loss_fn(params, batch, None)[0]
  assert float(a) == float(model.loss_fn(params, batch, None)[0])
  assert float(a) != float(model.loss_fn(params, batch, jax.random.key(1))[0])


def test_initial_variables_have_axes_for_every_parameter():
  config = small_config()
  model, _ = make_model(config)
  shapes = {
      "decoder_input_tokens": (4, 24),
      "decoder_target_tokens": (4, 24),
      "decoder_causal_attention": (4, 24),
      "decoder_loss_weights": (4, 24),
      "images": (4, 1, 28, 28, 3),
      "image_mask": (4, 1),
  }
  types = {"decoder_loss_weights": jnp.float32, "images": jnp.uint8, "image_mask": jnp.bool_}
  variables = jax.eval_shape(lambda: model.get_initial_variables(jax.random.key(0), shapes, types))
  params = jax.tree_util.tree_leaves_with_path(variables["params"])
  assert {"vision", "projector", "decoder"} <= set(variables["params"])
  for path, leaf in params:
    keys = [k.key for k in path]
    node = variables["params_axes"]
    for k in keys[:-1]:
      node = node[k]
    axes = node[keys[-1] + "_axes"]
    assert len(axes.names) == leaf.ndim, keys


def test_optimizer_state_axes_follow_parameters(setup):
  config, model, params, batch = setup
  opt = optimizers.adafactor(1e-3)
  state = opt.init_state(params)
  boxed = jax.eval_shape(
      lambda: model.module.init(
          jax.random.key(0),
          batch["decoder_input_tokens"],
          images=batch["images"],
          image_mask=batch["image_mask"],
      )
  )
  axes = opt.derive_logical_axes(state, nn.get_partition_spec(boxed)["params"], params)
  flat = {
      jax.tree_util.keystr(p): a
      for p, a in jax.tree_util.tree_leaves_with_path(
          axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
      )
  }
  states = dict((jax.tree_util.keystr(p), s) for p, s in jax.tree_util.tree_leaves_with_path(state))
  assert set(flat) == set(states)
  for key, spec in flat.items():
    assert len(spec) == np.ndim(states[key]), key
  momentum = [k for k in flat if "wi_0" in k and np.ndim(states[k]) == 3]
  assert momentum and all(
      flat[k] == jax.sharding.PartitionSpec("layers", "embed", "mlp") for k in momentum
  )
  # Factored second moments (dims >= 128) keep the axes of the dims they keep.
  P = jax.sharding.PartitionSpec
  big = {"wi": jnp.zeros((2, 256, 512))}
  big_axes = opt.derive_logical_axes(opt.init_state(big), {"wi": P("layers", "embed", "mlp")}, big)
  specs = {
      jax.tree_util.keystr(p): a
      for p, a in jax.tree_util.tree_leaves_with_path(big_axes, is_leaf=lambda x: isinstance(x, P))
  }
  assert specs[".param_states[0][0].v_row['wi']"] == P("layers", "embed")
  assert specs[".param_states[0][0].v_col['wi']"] == P("layers", "mlp")
  new_params, _ = opt.apply_gradient(None, params, state, jax.tree.map(jnp.ones_like, params))
  assert not np.allclose(new_params["projector"]["kernel"], params["projector"]["kernel"])


def test_feature_converter_keeps_images_and_refuses_packing():
  with pytest.raises(ValueError, match="cannot be packed"):
    MedPalmMModel.FEATURE_CONVERTER_CLS(pack=True)
  converter = MedPalmMModel.FEATURE_CONVERTER_CLS(pack=False)
  ds = tf.data.Dataset.from_tensors(
      {
          "inputs": tf.constant([5, 6, 7], tf.int32),
          "targets": tf.constant([8, 9, 1], tf.int32),
          "images": tf.zeros((1, 28, 28, 3), tf.uint8),
          "image_mask": tf.constant([True]),
      }
  )
  # SeqIO wants a length for every feature; for images it is the number of images.
  lengths = {"inputs": 6, "targets": 4, "images": 1, "image_mask": 1}
  out = next(iter(converter(ds, lengths).as_numpy_iterator()))
  assert set(out) == {
      "decoder_input_tokens",
      "decoder_target_tokens",
      "decoder_loss_weights",
      "decoder_causal_attention",
      "images",
      "image_mask",
  }
  np.testing.assert_array_equal(out["decoder_target_tokens"], [5, 6, 7, 8, 9, 1, 0, 0, 0, 0])
  np.testing.assert_array_equal(out["decoder_input_tokens"], [0, 5, 6, 7, 8, 9, 1, 0, 0, 0])
  np.testing.assert_array_equal(out["decoder_causal_attention"], [1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(out["decoder_loss_weights"], [0, 0, 0, 1, 1, 1, 0, 0, 0, 0])
  assert out["images"].shape == (1, 28, 28, 3) and out["images"].dtype == np.uint8
  assert seqio.DecoderFeatureConverter in MedPalmMModel.FEATURE_CONVERTER_CLS.__mro__


def test_validate_batch_checks_host_batches(setup):
  config, model, params, batch = setup
  model.validate_batch({k: np.asarray(v) for k, v in batch.items()})
  broken = dict(batch, image_mask=np.array([[True], [False]]))
  with pytest.raises(ValueError, match="row 1: 4 image placeholder tokens"):
    model.validate_batch(broken)


@pytest.mark.parametrize("loss_positions", [14, 16, 24])
def test_loss_at_the_loss_positions_only_equals_the_full_loss(loss_positions):
  """`loss_positions=K` computes the logits of each row's K weighted positions only (the
  batch's rows have 14 and 9): loss, every metric and the gradient are those of the full
  computation, with dropout on as well (its masks do not depend on K)."""
  config = small_config(dropout_rate=0.2)
  full, params = make_model(config, z_loss=1e-3, loss_normalizing_factor="NUM_REAL_TARGET_TOKENS")
  fast, _ = make_model(
      config,
      z_loss=1e-3,
      loss_normalizing_factor="NUM_REAL_TARGET_TOKENS",
      loss_positions=loss_positions,
  )
  batch = prompt_batch(config)
  assert np.asarray(batch["decoder_loss_weights"]).sum(1).tolist() == [14, 9]
  rng = jax.random.key(3)
  grad = lambda model: jax.value_and_grad(model.loss_fn, has_aux=True)(params, batch, rng)
  (loss, metrics), grads = grad(full)
  (loss_k, metrics_k), grads_k = grad(fast)
  assert float(loss_k) == pytest.approx(float(loss), rel=1e-6)
  for name in metrics:
    want, got = float(metrics[name].compute()), float(metrics_k[name].compute())
    assert got == pytest.approx(want, rel=1e-5, abs=1e-7), name
  jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6), grads, grads_k)
  fast.validate_batch({k: np.asarray(v) for k, v in batch.items()})


def test_loss_positions_fewer_than_a_rows_weighted_positions_is_refused_on_the_host():
  config = small_config()
  model, _ = make_model(config, loss_positions=13)
  batch = {k: np.asarray(v) for k, v in prompt_batch(config).items()}
  with pytest.raises(
      ValueError, match="row 0 has 14 positions with a loss weight .* loss_positions=13"
  ):
    model.validate_batch(batch)
  with pytest.raises(ValueError, match="loss_positions must be >= 1"):
    make_model(config, loss_positions=0)


def test_learning_rate_schedule_warms_up_holds_and_decays_to_zero():
  """Linear warm-up over 10 steps, constant, then linear decay to 0 over the last 20 of 100."""
  schedule = optimizers.learning_rate_schedule(
      1e-2, warmup_steps=10, decay_steps=20, total_steps=100
  )
  want = {0: 0.0, 5: 5e-3, 10: 1e-2, 50: 1e-2, 80: 1e-2, 90: 5e-3, 100: 0.0}
  for step, rate in want.items():
    assert float(schedule(step)) == pytest.approx(rate, abs=1e-9), step
  assert float(optimizers.learning_rate_schedule(1e-2)(1000)) == 1e-2  # the paper's constant
  # A shrunk run (20 steps, warm-up 10): the decay starts where the warm-up ends.
  short = optimizers.learning_rate_schedule(1e-2, warmup_steps=10, decay_steps=300, total_steps=20)
  assert [float(short(t)) for t in (10, 15, 20)] == pytest.approx([1e-2, 5e-3, 0.0], abs=1e-9)
  with pytest.raises(ValueError, match="decay_steps=20 needs total_steps"):
    optimizers.learning_rate_schedule(1e-2, decay_steps=20)
