"""Forward + backward time of the pieces of a training step whose form medpalm chose for speed.

    .venv/bin/python benchmarks/step_parts.py

Each line times two ways of computing the same value and gradient, in this process:
- a [4, 512, 512] @ [512, 2048] projection as one rank-3 `dot_general` (contracting the last
  dim) vs. the 2-D matmul `DenseGeneral` computes;
- the cross-entropy + z-loss of [4, 512, 16384] logits as `medpalm.model` computes it
  (differentiated by JAX) vs. a written-out softmax-minus-target gradient (`custom_vjp`), which
  medpalm does not use: it is faster here, but it raised the 84b train step's TPU temporaries
  by 4.9 GiB per chip (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Runnable as `python benchmarks/<name>.py` and as `python -m benchmarks.<name>`: the shared
# `common` module and the repository on the import path.
sys.path[:0] = [
    os.path.dirname(os.path.abspath(__file__)),
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from common import best_time, cpu_env, retain_freed_memory  # noqa: E402
from medpalm.losses import cross_entropy_with_logits  # noqa: E402


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def written_out_cross_entropy(logits, targets, z_loss):
  return written_out_forward(logits, targets, z_loss)[0]


def written_out_forward(logits, targets, z_loss):
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return log_z - target_logit + z_loss * jnp.square(log_z), (logits, log_z)


def written_out_backward(targets, z_loss, residuals, g):
  logits, log_z = residuals
  probs = jnp.exp(logits - log_z[..., None])
  is_target = targets[..., None] == jax.lax.broadcasted_iota(targets.dtype, logits.shape, 2)
  return ((probs * (1.0 + 2.0 * z_loss * log_z)[..., None] - is_target) * g[..., None],)


written_out_cross_entropy.defvjp(written_out_forward, written_out_backward)


def timed_grad(fn, *args) -> float:
  grad = jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a)), argnums=tuple(range(len(args)))))
  return best_time(lambda: jax.block_until_ready(grad(*args)), repeats=5)


def compare(label: str, slow, fast, *args) -> None:
  slow_s, fast_s = timed_grad(slow, *args), timed_grad(fast, *args)
  print(
      f"{label}: {slow_s * 1e3:.1f} ms vs {fast_s * 1e3:.1f} ms "
      f"-> {slow_s / fast_s:.2f}x faster"
  )


def main(argv=None):
  argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog=__doc__,
  ).parse_args(argv)
  print(cpu_env.describe())
  retain_freed_memory()
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((4, 512, 512)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((512, 2048)), jnp.float32)
  rank3 = lambda x, w: jnp.square(jax.lax.dot_general(x, w, (((2,), (0,)), ((), ()))))
  matmul_2d = lambda x, w: jnp.square((x.reshape(-1, 512) @ w).reshape(4, 512, 2048))
  compare("projection fwd+bwd, rank-3 dot_general vs 2-D matmul", rank3, matmul_2d, x, w)

  logits = jnp.asarray(rng.standard_normal((4, 512, 16384)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, 16384, (4, 512)), jnp.int32)
  ours = lambda logits: cross_entropy_with_logits(logits, targets, 1e-4)[0]
  written_out = lambda logits: written_out_cross_entropy(logits, targets, 1e-4)
  np.testing.assert_allclose(
      jax.grad(lambda x: jnp.sum(ours(x)))(logits),
      jax.grad(lambda x: jnp.sum(written_out(x)))(logits),
      atol=1e-6,
  )
  compare(
      "cross-entropy fwd+bwd, medpalm (autodiff) vs written-out gradient", ours, written_out, logits
  )


if __name__ == "__main__":
  main()
