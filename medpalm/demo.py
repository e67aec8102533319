"""The demo: the tiny Med-PaLM M on this machine's CPU, sharded over a fake 8-device mesh.

    make demo          # or: JAX_PLATFORMS=cpu python -m medpalm.demo

Builds the tiny model directly sharded on a ('data', 'fsdp', 'model') = 2×2×2 mesh, runs a
forward pass over a multimodal batch (an image written into the middle of each prompt), then a
few Adafactor steps on that fixed batch, printing the loss as it falls.
"""
from __future__ import annotations

import os
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (after the environment above)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from medpalm import configs, partitioning  # noqa: E402
from medpalm.models import medpalm_m  # noqa: E402
from medpalm.models.medpalm_m import MedPalmM  # noqa: E402


def random_batch(config, batch: int, length: int, seed: int = 0) -> dict:
  """Random text with one image's placeholders at position 5; loss on the last quarter."""
  rng = np.random.default_rng(seed)
  m, size = config.num_image_tokens, config.vision.image_size
  tokens = rng.integers(3, config.image_token_id, (batch, length)).astype(np.int32)
  tokens[:, 5:5 + m] = config.image_token_id
  weights = np.zeros((batch, length), np.float32)
  weights[:, -length // 4:] = 1.0
  return {"decoder_input_tokens": tokens,
          "decoder_target_tokens": np.roll(tokens, -1, axis=1),
          "decoder_loss_weights": weights,
          "images": rng.integers(0, 256, (batch, 1, size, size, 3), dtype=np.uint8),
          "image_mask": np.ones((batch, 1), bool)}


def main(steps: int = 5, batch_size: int = 8) -> None:
  config = configs.get_config("tiny")
  mesh = partitioning.make_mesh(data=2, fsdp=-1, model=2)
  model = MedPalmM(config)
  length = config.num_image_tokens + 64
  host_batch = random_batch(config, batch_size, length)
  print(f"config tiny: {configs.parameter_counts(config)['total']:,} parameters; mesh "
        f"{dict(mesh.shape)}; batch {batch_size} × {length} tokens "
        f"({config.num_image_tokens} image tokens per example)")
  medpalm_m.multimodal.validate_inputs(config, host_batch["decoder_input_tokens"],
                                       host_batch["images"], host_batch["image_mask"])
  rng = jax.random.key(0)
  params = partitioning.sharded_init(lambda: medpalm_m.init(config, rng), mesh)["params"]
  optimizer = optax.adafactor(1e-2, momentum=0.9)

  def loss_fn(params, batch):
    logits = model.apply({"params": params}, batch["decoder_input_tokens"],
                         images=batch["images"], image_mask=batch["image_mask"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["decoder_target_tokens"])
    w = batch["decoder_loss_weights"]
    return jnp.sum(ce * w) / jnp.sum(w)

  @jax.jit
  def train_step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  with partitioning.using(mesh):
    batch = {k: jax.device_put(v, partitioning.data_sharding(mesh, v.ndim))
             for k, v in host_batch.items()}
    logits = jax.jit(model.apply)({"params": params}, batch["decoder_input_tokens"],
                                  images=batch["images"], image_mask=batch["image_mask"])
    print(f"forward: logits {logits.shape} {logits.dtype}, sharded {logits.sharding.spec}")
    opt_state = optimizer.init(params)
    for step in range(1, steps + 1):
      start = time.perf_counter()
      params, opt_state, loss = train_step(params, opt_state, batch)
      loss = float(loss)
      print(f"step {step}: loss {loss:.4f} ({time.perf_counter() - start:.2f} s)")


if __name__ == "__main__":
  main()
