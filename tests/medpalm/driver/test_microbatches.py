"""Microbatching leaves the loss and the gradient of a batch unchanged, whatever the model's
loss normalization: each microbatch is normalized by the whole batch's factor."""

import jax
import numpy as np
import optax
import pytest
import seqio

from medpalm.driver import trainer as trainer_lib
from medpalm.driver.train_state import TrainState
from medpalm.model import MedPalmMModel
from medpalm.models import configs
from medpalm.models.medpalm_m import MedPalmM
from medpalm.optimizers import OptaxOptimizerDef
from tests.support import driver as driver_setup


def _batch():
  """8 rows whose real target tokens differ between the 4 microbatches (rows r % 4)."""
  records = driver_setup._records(8, 0)
  tokens = np.concatenate([records["inputs"], records["targets"], np.ones((8, 1), np.int32)], 1)
  causal = np.zeros_like(tokens)
  causal[:, :8] = 1
  weights = np.zeros(tokens.shape, np.float32)
  weights[:, 7] = 1
  weights[[0, 1, 5], 8] = 1  # microbatch 0 has 3 real tokens, 1 has 4, 2 and 3 have 2
  return {
      "decoder_input_tokens": tokens,
      "decoder_target_tokens": np.roll(tokens, -1, 1),
      "decoder_causal_attention": causal,
      "decoder_loss_weights": weights,
      "images": records["images"],
      "image_mask": records["image_mask"],
  }


@pytest.mark.slow
@pytest.mark.parametrize("factor", ["NUM_REAL_TARGET_TOKENS", "NUM_TOTAL_TARGET_TOKENS"])
def test_one_and_four_microbatches_give_the_same_loss_and_gradients(factor):
  config = configs.get_config("tiny", image_size=28)
  vocab = seqio.PassThroughVocabulary(config.decoder.vocab_size, eos_id=1)
  # Plain SGD with rate 1: the parameter update is minus the gradient.
  model = MedPalmMModel(
      MedPalmM(config),
      vocab,
      optimizer_def=OptaxOptimizerDef(optax.sgd(1.0)),
      loss_normalizing_factor=factor,
  )
  batch = _batch()
  params = model.get_initial_variables(
      jax.random.key(0),
      {k: v.shape for k, v in batch.items()},
      {k: v.dtype for k, v in batch.items()},
  )["params"]
  state = TrainState.create(model.optimizer_def, params)
  rng = jax.random.key(1)
  results = {}
  for num in (1, 4):
    step = jax.jit(trainer_lib.make_train_step(model, num_microbatches=num))
    new, metrics, finite = step(state, batch, rng)
    assert bool(finite)
    grads = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), params, new.params)
    results[num] = (float(metrics["loss"].compute()), grads)
  (loss1, grads1), (loss4, grads4) = results[1], results[4]
  direct, _ = model.loss_fn(params, batch, None)
  np.testing.assert_allclose(loss1, float(direct), rtol=1e-5)
  np.testing.assert_allclose(loss4, loss1, rtol=1e-5)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(grads1), jax.tree.leaves(grads4)):
    np.testing.assert_allclose(b, a, atol=1e-5, err_msg=jax.tree_util.keystr(path))
  assert max(np.abs(g).max() for g in jax.tree.leaves(grads1)) > 1e-3
