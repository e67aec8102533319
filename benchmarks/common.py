"""Helpers shared by the benchmarks: timing, the trainer's train step, and a matmul peak measured
in-process."""

from __future__ import annotations

import time

# XLA reads XLA_FLAGS when its backend starts (below, at RNG): the benchmarks get the driver's
# CPU flags first, so they time what training runs.
from medpalm.driver import cpu_env

cpu_env.configure(allocator=False)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import seqio  # noqa: E402

from medpalm import optimizers  # noqa: E402
from medpalm.driver import trainer as trainer_lib  # noqa: E402
from medpalm.driver.train_state import TrainState  # noqa: E402
from medpalm.model import MedPalmMModel  # noqa: E402
from medpalm.models.medpalm_m import MedPalmM  # noqa: E402

retain_freed_memory = cpu_env.retain_freed_memory  # the driver's allocator setting


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
  """FLOP/s of XLA's GEMM on one large square matmul on this machine, now."""
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype)
  f = jax.jit(lambda x: x @ x)
  t = best_time(lambda: jax.block_until_ready(f(a)), repeats)
  return 2 * n**3 / t


def gemm_peaks(n: int = 2048, dtype: str = "float32", repeats: int = 5) -> dict[str, float]:
  """FLOP/s of an n×n @ n×n matmul through XLA, numpy (its BLAS) and torch (where installed),
  each the best of `repeats`, in this process: the fastest GEMM available here, now."""
  peaks = {"XLA": matmul_peak(n, jnp.dtype(dtype), repeats)}
  if dtype == "float32":
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    peaks["numpy"] = 2 * n**3 / best_time(lambda: a @ a, repeats)
    try:
      import torch
    except ImportError:
      return peaks
    t = torch.from_numpy(a)
    with torch.no_grad():
      peaks["torch"] = 2 * n**3 / best_time(lambda: t @ t, repeats)
  return peaks


def matmul_flops(compiled) -> float:
  """Matmul and convolution FLOPs one call of a compiled XLA program executes, from its HLO:
  loop bodies counted once per trip (the layer scan's), unlike `cost_analysis`, which counts a
  loop body once. (Imported here: not every script puts the repository root on the path.)"""
  from launch import roofline

  return roofline.per_op(compiled.as_text(), peak_flops=1.0, hbm_bandwidth=1.0).matmul_flops


def torch_settings() -> str:
  """torch's kernel ISA and threads, where torch is installed (it reads ATEN_CPU_CAPABILITY)."""
  try:
    import torch
  except ImportError:
    return "torch not installed"
  return (
      f"torch {torch.__version__}: kernels {torch.backends.cpu.get_cpu_capability()}, "
      f"{torch.get_num_threads()} threads"
  )


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
