"""Helpers shared by the benchmarks: timing, the trainer's train step, and a matmul peak measured
in-process."""

from __future__ import annotations

import ctypes
import ctypes.util
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import seqio

from medpalm import optimizers
from medpalm.driver import trainer as trainer_lib
from medpalm.driver.train_state import TrainState
from medpalm.model import MedPalmMModel
from medpalm.models.medpalm_m import MedPalmM

# glibc mallopt() parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -2, -4, -8


def retain_freed_memory() -> bool:
  """Makes glibc keep freed memory in the process instead of returning it to the kernel.

  XLA:CPU allocates a step's scratch space (1.5-3 GiB for the MFU benchmark's step) with one
  malloc per execution. glibc serves it from a fresh mmap and unmaps it on free, so the kernel
  zero-fills and page-faults every 4 KiB page of it again on each step (~17 % of the step's
  CPU time in a `perf` profile). One heap arena, no mmap, and a 2 GiB trim threshold make the
  next step reuse the same pages. Call before JAX starts its threads; returns False where libc
  has no mallopt (not glibc).
  """
  libc = ctypes.CDLL(ctypes.util.find_library("c"))
  if not hasattr(libc, "mallopt"):
    return False
  keep = 2**31 - 1
  settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, keep), (_M_TOP_PAD, keep))
  return all(libc.mallopt(option, value) == 1 for option, value in settings)


def add_allocator_flag(parser) -> None:
  """`--system_allocator`: measure with glibc's malloc as it comes (see retain_freed_memory)."""
  parser.add_argument(
      "--system_allocator",
      action="store_true",
      help="leave glibc's malloc as it is (see common.retain_freed_memory)",
  )


def apply_allocator_flag(args) -> bool:
  """Applies `retain_freed_memory` unless `--system_allocator`; True where memory is retained."""
  return False if args.system_allocator else retain_freed_memory()


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
  return 2 * n**3 / t


def text_batch(batch: int, length: int, vocab: int, seed: int = 0) -> dict:
  """Random prefix-LM batch: first half prompt (no loss), second half target."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(2, vocab - 1, (batch, length)).astype(np.int32)
  weights = np.zeros((batch, length), np.float32)
  weights[:, length // 2 :] = 1
  return {
      "decoder_input_tokens": jnp.asarray(tokens),
      "decoder_target_tokens": jnp.asarray(np.roll(tokens, -1, 1)),
      "decoder_loss_weights": jnp.asarray(weights),
  }


RNG = jax.random.PRNGKey(0)  # the trainer's dropout key (folded with the step)


def train_step(model: MedPalmMModel):
  """The trainer's own step (`trainer.make_train_step`), jitted with the state donated:
  `step(state, batch, rng) -> (state, metrics, finite)`. Donation writes the update in place
  instead of into freshly allocated buffers every step, as in training."""
  return jax.jit(trainer_lib.make_train_step(model), donate_argnums=(0,))


def init_state(optimizer: optax.GradientTransformation, params) -> TrainState:
  """A TrainState of `params` under an optax optimizer (as the trainer holds it)."""
  return TrainState.create(optimizers.OptaxOptimizerDef(optimizer), params)


def loss_of(metrics) -> float:
  """The step's loss from its metrics (a clu Average over one batch)."""
  return float(metrics["loss"].total / metrics["loss"].count)


def train_step_fn(config):
  """`train_step` of a text-only model of `config` (z-loss 1e-4, per-token mean loss)."""
  model = MedPalmMModel(
      MedPalmM(config),
      seqio.PassThroughVocabulary(config.decoder.vocab_size, 1),
      z_loss=1e-4,
      loss_normalizing_factor="NUM_REAL_TARGET_TOKENS",
  )
  return train_step(model)
