"""medpalm's pieces as T5X takes them, in-process: the optimizer as a `t5x.optimizers.OptimizerDef`,
the gin files' partitioning rules under T5X's `PjitPartitioner` (the vision tower sharded, every
medpalm axis named), and imports that survive a broken T5X install."""

import importlib
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from medpalm import optimizers, partitioning
from medpalm.models import configs, medpalm_m

REPO = pathlib.Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.t5x


def _t5x():
  """The imported `t5x` package, or a skip that says why it is missing."""
  try:
    import t5x.partitioning  # noqa: F401
    import t5x.utils  # noqa: F401

    import t5x
  except Exception as error:  # noqa: BLE001 - any failed import means "not usable here"
    message = f"T5X is not importable ({type(error).__name__}: {error}); see README (T5X)"
    print(message)
    pytest.skip(message)
  return t5x


@pytest.fixture
def optimizers_after_t5x():
  """medpalm.optimizers executed again with T5X already imported, as under T5X's binaries; the
  module's original objects are put back afterwards (gin has registered them, and later tests
  hold instances of its classes)."""
  _t5x()
  saved = dict(optimizers.__dict__)
  try:
    yield importlib.reload(optimizers)
  finally:
    optimizers.__dict__.clear()
    optimizers.__dict__.update(saved)


def test_adafactor_is_optax_adafactor_and_a_t5x_optimizer_def(optimizers_after_t5x):
  """One definition: the paper's Adafactor update equals optax.adafactor's step for step, and
  the same object is a t5x OptimizerDef (create / apply_gradient with T5X's per-step rate /
  state_dict round trip / derive_logical_axes)."""
  t5x = _t5x()
  optimizers = optimizers_after_t5x
  assert isinstance(optimizers.adafactor(), t5x.optimizers.OptimizerDef)
  params = {"wi": jnp.full((2, 256, 512), 0.1), "scale": jnp.ones((3,))}
  grads = jax.tree.map(
      lambda p: jnp.sin(jnp.arange(p.size, dtype=jnp.float32)).reshape(p.shape), params
  )
  schedule = optimizers.learning_rate_schedule(1e-2, warmup_steps=3)
  ours = optimizers.adafactor(schedule)
  reference = optax.adafactor(
      learning_rate=schedule,
      momentum=0.9,
      decay_rate=0.8,
      clipping_threshold=1.0,
      multiply_by_parameter_scale=False,
  )
  state, ref_state, p, ref_p = ours.init_state(params), reference.init(params), params, params
  for _ in range(5):
    p, state = ours.apply_gradient(None, p, state, grads)
    updates, ref_state = reference.update(grads, ref_state, ref_p)
    ref_p = optax.apply_updates(ref_p, updates)
  for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(ref_p)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert int(state.step) == 5

  # T5X's path: its Optimizer, the learning rate handed in per step (here the same constant).
  t5x_def = optimizers.adafactor(1e-2)
  optimizer = t5x_def.create(params)
  constant = optimizers.adafactor(1e-2)
  own_state, own_p = constant.init_state(params), params
  for _ in range(3):
    optimizer = optimizer.apply_gradient(grads, learning_rate=jnp.float32(1e-2))
    own_p, own_state = constant.apply_gradient(None, own_p, own_state, grads)
  for a, b in zip(jax.tree.leaves(optimizer.target), jax.tree.leaves(own_p)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
  # What a checkpoint stores holds no empty node (Adafactor's clip and scale steps have no
  # state); restoring puts them back.
  import flax.traverse_util

  saved = optimizer.state_dict()
  flat = flax.traverse_util.flatten_dict(saved, keep_empty_nodes=True)
  assert not any(v is flax.traverse_util.empty_node for v in flat.values())
  restored = t5x_def.create(params).restore_state(saved)
  assert int(restored.state.step) == 3
  for a, b in zip(jax.tree.leaves(restored.state), jax.tree.leaves(optimizer.state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  axes = {"wi": P("layers", "embed", "mlp"), "scale": P("embed")}
  derived = t5x_def.derive_logical_axes(optimizer, axes)
  (factored, _), (momentum, _) = derived.state.param_states
  assert factored.v_row["wi"] == P("layers", "embed") and factored.v_col["wi"] == P("layers", "mlp")
  assert momentum.ema["wi"] == P("layers", "embed", "mlp") and derived.target == axes


def _gin_rules(gin_file: str):
  import gin

  gin.clear_config()
  gin.add_config_file_search_path(str(REPO))  # the files include each other by repo path
  try:
    gin.parse_config_files_and_bindings([str(REPO / gin_file)], [])
    return [tuple(r) for r in gin.query_parameter("%PARTITIONING_RULES")], gin.query_parameter(
        "%CONFIG_NAME"
    )
  finally:
    gin.clear_config()


def _param_axis_names(name: str) -> set[str]:
  config = configs.get_config(name, scan_layers=name != "tiny")
  boxed = jax.eval_shape(lambda: medpalm_m.init(config, jax.random.key(0)))
  specs = jax.tree.leaves(
      jax.tree.map(
          lambda x: x.get_partition_spec() if hasattr(x, "get_partition_spec") else None,
          boxed,
          is_leaf=lambda x: hasattr(x, "get_partition_spec"),
      ),
      is_leaf=lambda x: isinstance(x, P),
  )
  return {a for spec in specs for a in spec if a is not None}


@pytest.mark.slow
@pytest.mark.parametrize("size", ["tiny", "12b", "84b", "562b"])
def test_gin_rules_name_every_medpalm_axis(size):
  """Every logical axis of the model's parameters, and every activation / KV-cache axis of
  medpalm's own rules, has a rule in the T5X gin file (none silently replicated)."""
  _t5x()
  rules, config_name = _gin_rules(f"gin_configs/t5x/{size}.gin")
  assert config_name == size
  named = {name for name, _ in rules}
  assert _param_axis_names(size) <= named
  assert {name for name, _ in partitioning.DEFAULT_RULES} <= named
  assert {mesh for _, mesh in rules} <= {"data", "model", None}  # T5X's mesh axes only


@pytest.mark.slow
def test_vision_tower_kernels_are_sharded_under_t5x_partitioner(request):
  """T5X's PjitPartitioner with tiny.gin's rules on the 8-device CPU mesh: the train state's
  mesh axes (T5X's TrainStateInitializer, medpalm's optimizer deriving the optimizer state's
  axes) shard vit_* kernels, and their optimizer state follows them."""
  t5x = _t5x()
  from medpalm.model import MedPalmMModel
  import seqio

  rules, _ = _gin_rules("gin_configs/t5x/tiny.gin")  # gin registers the original optimizers
  request.getfixturevalue("optimizers_after_t5x")  # T5X's OptimizerDef from here on
  config = configs.get_config("tiny", image_size=28)
  model = MedPalmMModel(
      medpalm_m.MedPalmM(config), seqio.PassThroughVocabulary(config.decoder.vocab_size)
  )
  partitioner = t5x.partitioning.PjitPartitioner(num_partitions=2, logical_axis_rules=rules)
  shapes = {
      "decoder_input_tokens": (8, 16),
      "decoder_target_tokens": (8, 16),
      "decoder_causal_attention": (8, 16),
      "decoder_loss_weights": (8, 16),
      "images": (8, 1, 28, 28, 3),
      "image_mask": (8, 1),
  }
  types = {"images": jnp.uint8, "image_mask": jnp.bool_}
  initializer = t5x.utils.TrainStateInitializer(
      optimizer_def=model.optimizer_def,
      init_fn=model.get_initial_variables,
      input_shapes=shapes,
      input_types=types,
      partitioner=partitioner,
  )
  axes = initializer.train_state_axes
  flat = {
      jax.tree_util.keystr(path): spec
      for path, spec in jax.tree_util.tree_leaves_with_path(
          axes.params, is_leaf=lambda x: isinstance(x, P)
      )
  }
  vit_kernels = {k: s for k, s in flat.items() if "vision" in k and "kernel" in k}
  assert vit_kernels
  # 'model' spans the 8 devices of the CPU mesh ('data' has size 1 there).
  sharded = {k: s for k, s in vit_kernels.items() if "model" in s}
  assert sharded, vit_kernels
  # The momentum of a sharded ViT kernel is sharded the same way.
  (_, _), (momentum, _) = axes.param_states
  ema = {
      jax.tree_util.keystr(path): spec
      for path, spec in jax.tree_util.tree_leaves_with_path(
          momentum.ema, is_leaf=lambda x: isinstance(x, P)
      )
  }
  for key, spec in sharded.items():
    assert ema[key] == spec, key
  # Materialised under the partitioner, such a kernel really is split over the devices.
  state = initializer.from_scratch(jax.random.key(0))
  key = next(iter(sharded))
  leaf = dict(
      (jax.tree_util.keystr(p), x) for p, x in jax.tree_util.tree_leaves_with_path(state.params)
  )[key]
  assert not leaf.sharding.is_fully_replicated
  assert leaf.sharding.shard_shape(leaf.shape) != leaf.shape


@pytest.mark.slow
def test_medpalm_imports_when_t5x_is_broken(tmp_path):
  """A T5X that is installed but raises on import: `medpalm.model`, `medpalm.optimizers` and
  `tasks` still import (medpalm never imports T5X itself), and the optimizer works without T5X."""
  broken = tmp_path / "site" / "t5x"
  broken.mkdir(parents=True)
  (broken / "__init__.py").write_text('raise RuntimeError("simulated broken T5X install")\n')
  code = textwrap.dedent("""
      import logging
      logging.basicConfig(level=logging.WARNING)
      import medpalm.model, medpalm.optimizers, tasks
      import jax.numpy as jnp
      opt = medpalm.optimizers.adafactor(1e-2)
      params = {"w": jnp.ones((4, 4))}
      new, state = opt.apply_gradient(None, params, opt.init_state(params), {"w": jnp.ones((4, 4))})
      assert int(state.step) == 1 and float(new["w"][0, 0]) < 1.0
      print("IMPORTED", medpalm.optimizers.OptaxOptimizerDef.__mro__[1].__module__)
      """)
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "site"), str(REPO)])
  env["JAX_PLATFORMS"] = "cpu"
  env["TF_CPP_MIN_LOG_LEVEL"] = "2"
  out = subprocess.run(
      [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert "IMPORTED medpalm.optimizers" in out.stdout
  assert "simulated broken T5X install" not in out.stderr  # nothing of medpalm imported it
