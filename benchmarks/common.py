"""Helpers shared by the benchmarks: timing, a train step, and a matmul peak measured in-process."""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import seqio

from medpalm.model import MedPalmMModel
from medpalm.models.medpalm_m import MedPalmM


def best_time(fn, repeats: int = 3) -> float:
  """Minimum wall time of `fn()` over `repeats` runs after one warm-up (compilation) run."""
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def matmul_peak(n: int = 2048, dtype=jnp.float32, repeats: int = 5) -> float:
  """FLOP/s of one large square matmul on this machine, now (the ceiling a step can reach)."""
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype)
  f = jax.jit(lambda x: x @ x)
  t = best_time(lambda: jax.block_until_ready(f(a)), repeats)
  return 2 * n ** 3 / t


def text_batch(batch: int, length: int, vocab: int, seed: int = 0) -> dict:
  """Random prefix-LM batch: first half prompt (no loss), second half target."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(2, vocab - 1, (batch, length)).astype(np.int32)
  weights = np.zeros((batch, length), np.float32)
  weights[:, length // 2:] = 1
  return {"decoder_input_tokens": jnp.asarray(tokens),
          "decoder_target_tokens": jnp.asarray(np.roll(tokens, -1, 1)),
          "decoder_loss_weights": jnp.asarray(weights)}


def train_step_fn(config, optimizer: optax.GradientTransformation):
  """A jitted (params, opt_state, batch) -> (params, opt_state, loss) through loss_fn."""
  model = MedPalmMModel(MedPalmM(config), seqio.PassThroughVocabulary(config.decoder.vocab_size,
                                                                      1),
                        z_loss=1e-4, loss_normalizing_factor="NUM_REAL_TARGET_TOKENS")

  @jax.jit
  def step(params, opt_state, batch):
    (loss, _), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(params, batch, None)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step
