"""Every parameter maps to a mesh sharding; sharded init computes what unsharded init computes."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medpalm.models import configs
from medpalm import partitioning
from medpalm.models import medpalm_m
from medpalm.models.medpalm_m import MedPalmM


def _abstract(config):
  return jax.eval_shape(lambda: medpalm_m.init(config, jax.random.key(0)))


@pytest.mark.parametrize("name", list(configs.CONFIGS))
def test_every_parameter_maps_to_a_sharding(name):
  """Run against a mesh of the paper sizes' shape (fsdp 4 × model 2) without allocating."""
  mesh = partitioning.make_mesh(data=1, fsdp=4, model=2)
  shardings = partitioning.mesh_shardings(_abstract(configs.get_config(name)), mesh)
  leaves = jax.tree.leaves(shardings)
  assert leaves and all(isinstance(s, jax.sharding.NamedSharding) for s in leaves)
  # Every MLP input kernel [layers, embed, mlp]: one per block of a repeating local/global layer
  # pattern (Gemma 2 / 3), and the remainder's blocks where the depth is no multiple of it.
  kernels = {
      jax.tree_util.keystr(path): s
      for path, s in jax.tree_util.tree_leaves_with_path(shardings["params"]["decoder"])
      if jax.tree_util.keystr(path).endswith("['mlp']['wi_0']['kernel']")
  }
  assert kernels
  for key, big in kernels.items():
    assert big.spec == jax.sharding.PartitionSpec(None, "fsdp", "model"), key


def test_unmapped_logical_axis_names_the_parameter():
  rules = tuple(r for r in partitioning.DEFAULT_RULES if r[0] != "mlp")
  mesh = partitioning.make_mesh(2, 2, 2)
  with pytest.raises(ValueError, match=r"params/decoder/stack/layers/mlp/wi_0/kernel.*'mlp'"):
    partitioning.mesh_shardings(_abstract(configs.get_config("tiny")), mesh, rules)


def test_indivisible_dimension_names_the_parameter():
  config = configs.get_config("tiny")
  config = dataclasses.replace(config, decoder=dataclasses.replace(config.decoder, d_ff=255))
  with pytest.raises(ValueError, match=r"mlp/wi_0/kernel: dimension 255"):
    partitioning.mesh_shardings(_abstract(config), partitioning.make_mesh(2, 2, 2))


def test_mesh_that_does_not_divide_the_devices_is_refused():
  with pytest.raises(ValueError, match="does not divide the 8 devices"):
    partitioning.make_mesh(data=3, fsdp=-1)
  assert partitioning.make_mesh(data=2, fsdp=-1, model=2).shape == {
      "data": 2,
      "fsdp": 2,
      "model": 2,
  }


def test_sharded_init_matches_unsharded_and_is_really_split():
  config = configs.get_config("tiny")
  mesh = partitioning.make_mesh(2, 2, 2)
  rng = jax.random.key(0)
  variables = partitioning.sharded_init(lambda: medpalm_m.init(config, rng), mesh)
  reference = nn.meta.unbox(medpalm_m.init(config, rng))
  for (path, ours), theirs in zip(
      jax.tree_util.tree_leaves_with_path(variables), jax.tree.leaves(reference)
  ):
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs), err_msg=str(path))

  params = variables["params"]
  embedding = params["decoder"]["embedding"]  # [vocab, embed] -> (model, fsdp)
  assert embedding.sharding.shard_shape(embedding.shape) == (512, 32)
  wi = params["decoder"]["stack"]["layers"]["mlp"]["wi_0"]["kernel"]  # [L, embed, mlp]
  assert wi.sharding.shard_shape(wi.shape) == (2, 32, 128)
  assert len({d for s in wi.addressable_shards for d in [s.device]}) == 8

  batch = medpalm_m.dummy_inputs(config, batch=8)
  batch["decoder_input_tokens"] = batch["decoder_input_tokens"].at[:, -7:].set(jnp.arange(1, 8))
  want = MedPalmM(config).apply(reference, **batch)
  with partitioning.using(mesh):
    batch = {
        k: jax.device_put(v, partitioning.data_sharding(mesh, v.ndim)) for k, v in batch.items()
    }
    got = jax.jit(MedPalmM(config).apply)(variables, **batch)
  assert got.sharding.spec[0] == ("data", "fsdp")
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


def test_the_driver_mesh_is_make_mesh_over_all_devices_in_order():
  """On devices without a physical topology (the fake CPU devices) the one mesh builder keeps
  their order; the partitioner of the driver uses it (AOT: tests/launch/test_aot.py)."""
  mesh = partitioning.Partitioner(data=2, fsdp=-1, model=2).mesh
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "model": 2}
  ids = np.vectorize(lambda d: d.id)
  np.testing.assert_array_equal(ids(mesh.devices), ids(partitioning.make_mesh(2, 2, 2).devices))
  np.testing.assert_array_equal(ids(mesh.devices).ravel(), [d.id for d in jax.devices()])


def test_multi_slice_mesh_needs_that_many_slices():
  """dcn_data spans slices (or processes); one process of fake CPU devices is one slice."""
  with pytest.raises(ValueError, match="do not form 2 slices"):
    partitioning.make_mesh(data=2, fsdp=2, model=2, dcn_data=2)
  with pytest.raises(ValueError, match="does not split over dcn_data=4"):
    partitioning.make_mesh(data=2, fsdp=2, model=2, dcn_data=4)
