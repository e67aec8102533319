"""AOT compilation for TPU slices on this CPU host (libtpu, compile-only): launch/aot_compile.py.

The tiny model's train step compiles for two TPU generations, and the per-chip argument memory
XLA reports equals what we compute from our own shardings: every parameter, optimizer-state and
batch shard, padded to the TPU tile layout the compiler chose. A step that cannot fit comes back
as an out-of-memory result with the compiler's figures.
"""

import json
import math

import jax
import numpy as np
import pytest

from launch import aot_compile, topologies
from medpalm import partitioning
from medpalm.driver import trainer as trainer_lib
from medpalm.models import configs

pytestmark = pytest.mark.tpu_backend

MESH = {"data": 1, "fsdp": 2, "model": 2}


def _shard_bytes(arg: jax.ShapeDtypeStruct, layout) -> int:
  """Bytes of one device's shard of `arg` in `layout` (None: XLA pruned the unused argument).

  TPU stores arrays in tiles: the minor dims (in the layout's major-to-minor order) round up to
  the first tile, e.g. float32 (8, 128); a scalar takes a whole rank-1 tile.
  """
  if layout is None:
    return 0
  shape, dtype = tuple(arg.sharding.shard_shape(arg.shape)), arg.dtype
  if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):  # key<fry>() is uint32[2]
    data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(arg.shape, dtype))
    shape, dtype = shape + data.shape[len(arg.shape) :], data.dtype
  dims = [shape[i] for i in layout.major_to_minor] or [1]
  tile = layout.tiling[0] if layout.tiling else ()
  for k, t in enumerate(reversed(tile)):
    if k < len(dims):
      dims[-1 - k] = -(-dims[-1 - k] // t) * t
  return math.prod(dims) * np.dtype(dtype).itemsize


@pytest.fixture(scope="module")
def tiny():
  return configs.get_config("tiny", dtype="float32", remat_policy="full", dropout_rate=0.1)


@pytest.mark.parametrize("topology", ["v5e:2x2", "v4:2x2x1"])
def test_tiny_train_step_compiles_and_argument_memory_is_our_shards(tiny, topology):
  topology = topologies.get_topology(topology)
  plan = aot_compile.make_plan(
      tiny, topology, batch_size=8, inputs_length=264, targets_length=8, mesh_sizes=MESH
  )
  assert plan.mesh.devices.flat[0].platform == "tpu"
  assert dict(plan.mesh.shape) == MESH

  args, compiled = aot_compile.lower_and_compile(plan, "train")
  report = aot_compile.compiled_report(plan, "train", compiled)
  assert report.status == "ok", report.message
  assert report.hbm_bytes == topology.gen.hbm_bytes
  assert report.total_bytes == (
      report.argument_bytes + report.output_bytes + report.temp_bytes - report.alias_bytes
  )
  # Parameters and optimizer state are donated: their outputs reuse the argument buffers.
  assert report.alias_bytes > 0
  assert report.flops_per_chip > 0 and report.model_flops_per_chip > 0

  layouts = [f.layout for f in jax.tree.leaves(compiled.input_formats)]
  leaves = jax.tree.leaves(args)
  assert len(layouts) == len(leaves)
  ours = sum(_shard_bytes(a, l) for a, l in zip(leaves, layouts))
  assert report.argument_bytes == ours

  # The parameters + optimizer state (the bulk) are really split four ways: a replicated
  # layout would hold about 4x the bytes of the largest kernels on every chip.
  state = jax.tree.leaves(args[0])  # the TrainState: step, params, optimizer state, skipped
  state_layouts = layouts[: len(state)]
  sharded = sum(_shard_bytes(a, l) for a, l in zip(state, state_layouts))
  whole = sum(
      _shard_bytes(
          jax.ShapeDtypeStruct(
              a.shape,
              a.dtype,
              sharding=jax.sharding.NamedSharding(plan.mesh, jax.sharding.PartitionSpec()),
          ),
          l,
      )
      for a, l in zip(state, state_layouts)
  )
  assert sharded < 0.5 * whole
  embedding = args[0].params["decoder"]["embedding"]
  assert embedding.sharding.shard_shape(embedding.shape) == (512, 32)  # [vocab/model, embed/fsdp]


def test_prefill_and_decode_compile(tiny):
  summary = aot_compile.run(
      "tiny",
      "v5e:2x2",
      batch_size=4,
      inputs_length=264,
      targets_length=8,
      mesh="fsdp=-1,model=2",
      dtype="float32",
      steps=("prefill", "decode"),
      config=tiny,
  )
  assert summary["mesh"] == {"data": 1, "fsdp": 2, "model": 2}
  for step in ("prefill", "decode"):
    report = summary["steps"][step]
    assert report["status"] == "ok", report["message"]
    assert 0 < report["argument_bytes"] <= report["total_bytes"] + report["alias_bytes"]
  # decode donates the KV cache and returns it updated in place.
  assert summary["steps"]["decode"]["alias_bytes"] > 0
  assert "train" not in summary["steps"]
  assert "prefill" in aot_compile.format_summary(summary)


def test_out_of_memory_is_a_result_with_the_compilers_figures(capsys):
  # 8192 × 1222 positions of float32 logits over a 1024 vocabulary: ~10 GiB per chip before
  # their gradients, far beyond a v5e chip's 16 GiB once softmax and backward temporaries count.
  status = aot_compile.main(
      [
          "--config",
          "tiny",
          "--topology",
          "v5e:2x2",
          "--batch_size",
          "8192",
          "--inputs_length",
          "966",
          "--targets_length",
          "256",
          "--mesh",
          "fsdp=-1",
          "--remat",
          "none",
          "--dtype",
          "float32",
          "--steps",
          "train",
          "--json",
      ]
  )
  assert status == 2  # the exit status says it does not fit
  summary = json.loads(capsys.readouterr().out)
  report = summary["steps"]["train"]
  assert report["status"] == "oom"
  assert "RESOURCE_EXHAUSTED" in report["message"]
  assert report["temp_bytes"] > report["hbm_bytes"]
  assert report["usable_hbm_bytes"] <= report["hbm_bytes"]
  assert report["argument_bytes"] > 0  # from our shardings: the compiler stopped before
  assert "OOM" in aot_compile.format_summary(summary)


def test_topology_table():
  assert topologies.get_topology("v5p-512").topology_name == "v5:4x8x8"
  assert topologies.get_topology("v5p-512").num_chips == 256
  assert topologies.get_topology("v5e-64").topology_name == "v5e:8x8"
  assert topologies.get_topology("v4-8").num_chips == 4
  assert topologies.get_topology("v6e-256").gen.hbm_bytes == 32 * topologies.GIB
  with pytest.raises(ValueError, match="unknown topology"):
    topologies.get_topology("v5e-3")
  with pytest.raises(ValueError, match="3-D"):
    topologies.get_topology("v4:2x2")


def test_bad_mesh_and_batch_are_refused(tiny):
  with pytest.raises(ValueError, match="data\\|fsdp\\|model"):
    aot_compile._parse_mesh("tensor=2")
  with pytest.raises(ValueError, match="NAME=VALUE"):
    aot_compile._parse_option("xla_flag")
  assert aot_compile._parse_option("a=false") == ("a", False)
  assert aot_compile._parse_option("b=12") == ("b", 12)
  with pytest.raises(ValueError, match="batch_size 5 does not divide"):
    aot_compile.make_plan(
        tiny,
        topologies.get_topology("v5e:2x2"),
        batch_size=5,
        inputs_length=264,
        targets_length=8,
        mesh_sizes=MESH,
    )


def test_the_compiled_train_step_is_the_trainers(tiny):
  """AOT compiles the program training runs: the trainer's `make_train_step`, lowered with the
  trainer's shardings and donation, gives the same StableHLO text as the trainer's own jit, with
  gradient accumulation too (`--num_microbatches`: one more loop, over the microbatches)."""
  texts = {}
  for num_microbatches in (None, 2):
    plan = aot_compile.make_plan(
        tiny,
        topologies.get_topology("v5e:2x2"),
        batch_size=8,
        inputs_length=264,
        targets_length=8,
        mesh_sizes=MESH,
        num_microbatches=num_microbatches,
    )
    assert plan.trainer.num_microbatches == (num_microbatches or 1)
    fn, args, out_shardings, donate = aot_compile.train_step_args(plan)
    assert fn is plan.trainer.step_fn
    assert fn.__code__ is trainer_lib.make_train_step(plan.trainer.model).__code__
    with partitioning.using(plan.mesh, plan.rules):
      ours = jax.jit(
          fn,
          in_shardings=aot_compile._shardings(args),
          out_shardings=out_shardings,
          donate_argnums=donate,
      ).lower(*args)
    theirs = plan.trainer.lower_train_step(args[0], args[1])
    assert ours.as_text() == theirs.as_text()
    texts[num_microbatches] = ours.as_text()
  assert texts[2].count("stablehlo.while") > texts[None].count("stablehlo.while")


@pytest.mark.parametrize("topology", ["v5e:2x2", "v4:2x2x1", "v5e:4x4"])
def test_driver_and_aot_put_the_same_devices_at_the_same_coordinates(tiny, topology):
  """The memory plans assume the device order training uses: both build their mesh with
  `partitioning.make_mesh`, which lays TPU devices on the physical torus."""
  topology = topologies.get_topology(topology)
  devices = topologies.tpu_devices(topology)
  sizes = {"data": 1, "fsdp": -1, "model": 2}
  driver = partitioning.Partitioner(**sizes, devices=devices).mesh
  plan = aot_compile.make_plan(
      tiny,
      topology,
      batch_size=len(devices),
      inputs_length=264,
      targets_length=8,
      mesh_sizes=sizes,
  )
  ids = lambda mesh: np.vectorize(lambda d: d.id)(mesh.devices)
  np.testing.assert_array_equal(ids(driver), ids(plan.mesh))
  assert driver.axis_names == plan.mesh.axis_names == partitioning.MESH_AXES
  from jax.experimental import mesh_utils

  physical = mesh_utils.create_device_mesh(
      driver.devices.shape, devices, allow_split_physical_axes=True
  )
  np.testing.assert_array_equal(ids(driver), np.vectorize(lambda d: d.id)(physical))


def test_attention_flag_compiles_the_splash_kernel_into_the_plan(tmp_path):
  """`--attention splash` puts the Pallas TPU kernel (a Mosaic custom call) in the compiled
  train step; the tiny ViT's key/value heads (as many as its query heads) split over `model`
  like the queries."""
  import gzip

  # tests/conftest.py asks for float32 matmuls (CPU oracles); Mosaic has no float32 contraction
  # of bfloat16 operands, and training runs at the default precision.
  with jax.default_matmul_precision("default"):
    summary = aot_compile.run(
        "tiny",
        "v5e:2x2",
        batch_size=8,
        inputs_length=264,
        targets_length=8,
        mesh="fsdp=2,model=2",
        steps=("train",),
        attention="splash",
        hlo_dir=str(tmp_path),
    )
  assert summary["attention"] == "splash" and summary["steps"]["train"]["status"] == "ok"
  text = gzip.open(tmp_path / "train.hlo.gz", "rt").read()
  assert 'custom_call_target="tpu_custom_call"' in text
