"""The batch runner: padded batches, and params from anywhere placed where its steps want them."""

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
from jax.sharding import PartitionSpec as P

from medpalm.evaluation.runner import BatchRunner, padded_batches
from medpalm.partitioning import Partitioner


def _dataset(n):
  x = np.arange(n * 4, dtype=np.float32).reshape(n, 4)
  return tf.data.Dataset.from_tensor_slices({"x": x}).enumerate(), x


def test_padded_batches_fill_the_last_batch_with_index_minus_one():
  ds, x = _dataset(5)
  batches = list(padded_batches(ds, 4))
  assert [b[0].tolist() for b in batches] == [[0, 1, 2, 3], [4, -1, -1, -1]]
  np.testing.assert_array_equal(batches[1][1]["x"], np.stack([x[4]] * 4))


def test_params_on_another_device_or_mesh_are_placed_in_the_steps_shardings():
  """Params restored elsewhere (committed to one device, or numpy) run through a step compiled
  for a 2×2×2 mesh with sharded params, instead of failing jit's sharding check."""
  partitioner = Partitioner(2, 2, 2)
  runner = BatchRunner(partitioner, batch_size=8, params_axes={"w": P(None, "model")})
  step = runner.compile(lambda params, batch: batch["x"] @ params["w"])
  w = np.arange(16, dtype=np.float32).reshape(4, 4)
  ds, x = _dataset(11)
  for params in ({"w": jax.device_put(jnp.asarray(w), jax.devices()[5])}, {"w": w}):
    outputs = [(i, out) for i, _, out in runner.map(ds, params, step)]
    got = np.concatenate([out[i >= 0] for i, out in outputs])
    np.testing.assert_allclose(got, x @ w)
  placed = runner.place({"w": w})["w"]
  assert placed.sharding.spec == P(None, "model") and placed.sharding.mesh == partitioner.mesh
