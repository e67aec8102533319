"""launch/roofline.py: collectives parsed from optimized HLO, and the roofline of a compiled step.

The parser is checked on a hand-written HLO module of an FSDP-sharded matmul under a scanned
loop (every count and byte known by construction), then on what XLA's TPU compiler makes of the
same matmul. The roofline of a small model compiled for a TPU topology must count the FLOPs that
PaLM's accounting gives (6·N per token + attention) within 5 %.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from launch import roofline, topologies

# An FSDP matmul y = x @ w in a loop of 3 layers over 4 chips: each layer all-gathers its weight
# shard bf16[256, 512] into bf16[1024, 512] and reduce-scatters the float32 weight gradient
# [1024, 512] back to [256, 512]. The TPU compiler's async collective fusions clone the
# all-gather (same channel_id) into a second computation: it must count once per iteration. The
# loss is all-reduced once, outside the loop, over iota groups {0,2},{1,3}.
FSDP_HLO = """\
HloModule fsdp_matmul, entry_computation_layout={()->f32[]}

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %sum = f32[] add(%a, %b)
}

%gather_clone (p: bf16[256,512]) -> bf16[1024,512] {
  %p = bf16[256,512]{1,0} parameter(0)
  ROOT %all-gather.7 = bf16[1024,512]{1,0:T(8,128)(2,1)} all-gather(%p), channel_id=7, replica_groups=[1,4]<=[4], dimensions={0}, use_global_device_ids=true
}

%cond (s: (s32[], bf16[256,512], f32[256,512])) -> pred[] {
  %s = (s32[], bf16[256,512], f32[256,512]) parameter(0)
  %i = s32[] get-tuple-element(%s), index=0
  %three = s32[] constant(3)
  ROOT %lt = pred[] compare(%i, %three), direction=LT
}

%body (s.1: (s32[], bf16[256,512], f32[256,512])) -> (s32[], bf16[256,512], f32[256,512]) {
  %s.1 = (s32[], bf16[256,512], f32[256,512]) parameter(0)
  %i.1 = s32[] get-tuple-element(%s.1), index=0
  %w = bf16[256,512]{1,0} get-tuple-element(%s.1), index=1
  %all-gather.7 = bf16[1024,512]{1,0:T(8,128)(2,1)} all-gather(%w), channel_id=7, replica_groups=[1,4]<=[4], dimensions={0}, use_global_device_ids=true
  %clone = bf16[1024,512]{1,0} fusion(%w), kind=kCustom, calls=%gather_clone
  %g = f32[1024,512]{1,0} convert(%all-gather.7)
  %reduce-scatter.9 = f32[256,512]{1,0} reduce-scatter(%g), channel_id=9, replica_groups={{0,1,2,3}}, dimensions={0}, to_apply=%add
  %one = s32[] constant(1)
  %next = s32[] add(%i.1, %one)
  ROOT %t = (s32[], bf16[256,512], f32[256,512]) tuple(%next, %w, %reduce-scatter.9)
}

ENTRY %main (w0: bf16[256,512]) -> f32[] {
  %w0 = bf16[256,512]{1,0} parameter(0)
  %zero = s32[] constant(0)
  %g0 = f32[256,512]{1,0} broadcast(f32[] constant(0)), dimensions={}
  %init = (s32[], bf16[256,512], f32[256,512]) tuple(%zero, %w0, %g0)
  %while.1 = (s32[], bf16[256,512], f32[256,512]) while(%init), condition=%cond, body=%body
  %loss = f32[] constant(1)
  ROOT %all-reduce.3 = f32[] all-reduce(%loss), channel_id=3, replica_groups=[2,2]<=[2,2]T(1,0), use_global_device_ids=true, to_apply=%add
}
"""


def test_collective_parser_counts_a_hand_written_fsdp_matmul():
  found = {c.kind: c for c in roofline.collectives(FSDP_HLO, num_devices=4)}
  assert sorted(found) == ["all-gather", "all-reduce", "reduce-scatter"]

  gather, scatter, reduce = found["all-gather"], found["reduce-scatter"], found["all-reduce"]
  assert (gather.count, gather.group_size, gather.groups) == (3, 4, [[0, 1, 2, 3]])
  assert gather.buffer_bytes == 1024 * 512 * 2  # the gathered bf16 weight
  assert gather.ici_bytes == 0.75 * 1024 * 512 * 2  # ring: 3 of 4 shards pass through a chip
  assert (scatter.count, scatter.group_size) == (3, 4)
  assert scatter.buffer_bytes == 1024 * 512 * 4  # the float32 gradient before scattering
  assert scatter.ici_bytes == 0.75 * 1024 * 512 * 4
  assert (reduce.count, reduce.groups) == (1, [[0, 2], [1, 3]])
  assert reduce.ici_bytes == 2 * 0.5 * 4  # all-reduce: reduce-scatter + all-gather of 4 bytes

  summary = roofline.summarize(roofline.collectives(FSDP_HLO, 4))
  assert summary["all-gather"] == {"count": 3, "ici_bytes": 3 * 0.75 * 1024 * 512 * 2}
  assert summary["reduce-scatter"]["count"] == 3
  assert roofline.while_loops(FSDP_HLO) == 1


def test_replica_group_formats():
  groups = lambda text: roofline.replica_groups(
      roofline.Instruction("x", "f32[]", "all-reduce", text), 4
  )
  assert groups("replica_groups=[2,2]<=[2,2]T(1,0), to_apply=%a") == [[0, 2], [1, 3]]
  assert groups("replica_groups=[2,2]<=[4], to_apply=%a") == [[0, 1], [2, 3]]
  assert groups("replica_groups=mesh['axis_0'=2,'axis_1'=2] {'axis_0'}, x=1") == [[0, 2], [1, 3]]
  assert groups("replica_groups=mesh['a'=2,'b'=2] {'a','b'}, x=1") == [[0, 1, 2, 3]]
  assert groups("replica_groups={{0,3},{1,2}}, to_apply=%a") == [[0, 3], [1, 2]]
  assert groups("replica_groups={}, to_apply=%a") == [[0, 1, 2, 3]]


def test_extrapolation_from_shallow_compiles_is_exact_for_linear_terms():
  def terms(base, vision, decoder, depth):
    value = base + depth[0] * vision + depth[1] * decoder
    kinds = {k: value for k in roofline.COLLECTIVES}
    return roofline.Terms(value, 2 * value, kinds, kinds, kinds, {"total": value})

  args = (5.0, 3.0, 7.0)
  points = {d: terms(*args, d) for d in ((1, 1), (2, 1), (1, 2))}
  full, parts = roofline.extrapolate(points, (56, 32))
  assert full.flops == terms(*args, (56, 32)).flops == 5 + 56 * 3 + 32 * 7
  assert full.memory["total"] == full.flops and full.hbm_bytes == 2 * full.flops
  assert (parts["base"].flops, parts["vision_layer"].flops) == (5.0, 3.0)
  assert parts["decoder_layer"].ici_seconds["all-gather"] == 7.0


def test_links_follow_the_torus_axes_a_group_spans():
  coords = [(x, y, 0) for y in range(4) for x in range(4)]  # a 4x4 slice, device i at coords[i]
  assert roofline.links_used([0, 1, 2, 3], coords, ports=4) == 2  # one row: a ring on one axis
  assert roofline.links_used(list(range(16)), coords, ports=4) == 4  # both axes
  assert roofline.links_used([0], coords, ports=4) == 0


@pytest.mark.tpu_backend
def test_collective_parser_on_a_compiled_fsdp_matmul():
  devices = topologies.tpu_devices(topologies.get_topology("v5e:2x2"))
  mesh = Mesh(np.asarray(devices).reshape(4), ("fsdp",))
  fsdp = NamedSharding(mesh, P("fsdp", None))

  def loss(w, x):
    return jnp.sum(jnp.tanh(x @ w) ** 2)

  step = jax.jit(jax.value_and_grad(loss), out_shardings=(NamedSharding(mesh, P()), fsdp))
  w = jax.ShapeDtypeStruct((1024, 2048), jnp.bfloat16, sharding=fsdp)
  x = jax.ShapeDtypeStruct((64, 1024), jnp.bfloat16, sharding=fsdp)
  text = step.lower(w, x).compile().as_text()
  found = roofline.collectives(text, 4)
  weight = 1024 * 2048 * 2
  gathers = [c for c in found if c.kind == "all-gather"]
  # Forward: the weight is gathered once, whole, over the 4 chips.
  assert [(c.count, c.buffer_bytes, c.group_size) for c in gathers] == [(1, weight, 4)]
  # Backward: the weight gradient is reduced over the 4 chips exactly once, as a reduce-scatter
  # or (what this compiler emits for a 4 MiB gradient) an all-reduce of the whole gradient.
  grads = [c for c in found if c.kind in ("reduce-scatter", "all-reduce") and c.buffer_bytes > 4]
  assert [(c.count, c.buffer_bytes, c.group_size) for c in grads] == [(1, weight, 4)]
  assert roofline.while_loops(text) == 0


@pytest.mark.tpu_backend
@pytest.mark.slow
def test_roofline_of_a_small_step_counts_the_analytic_flops():
  from launch import aot_compile
  from medpalm.models import configs, medpalm_m

  tiny = configs.get_config("tiny", dtype="bfloat16", remat_policy="none", dropout_rate=0.0)
  # One layer per tower (the scan of one layer leaves no loop, so cost_analysis sees it all),
  # wide enough that matmuls dominate the elementwise FLOPs as they do at full size.
  config = dataclasses.replace(
      tiny,
      vision=dataclasses.replace(
          tiny.vision, num_layers=1, d_model=128, num_heads=2, num_kv_heads=2, head_dim=64, d_ff=512
      ),
      decoder=dataclasses.replace(
          tiny.decoder, num_layers=1, d_model=256, num_heads=4, head_dim=64, d_ff=1024
      ),
  )
  topology = topologies.get_topology("v5e:2x2")
  batch, inputs, targets = 8, 264, 8
  plan = aot_compile.make_plan(
      config,
      topology,
      batch_size=batch,
      inputs_length=inputs,
      targets_length=targets,
      mesh_sizes={"data": 1, "fsdp": 2, "model": 2},
  )
  _, compiled = aot_compile.lower_and_compile(plan, "train")
  text = compiled.as_text()
  assert roofline.while_loops(text) == 0
  terms = roofline.program_terms(compiled, text, list(plan.mesh.devices.flat), topology.gen)

  # PaLM's accounting, by hand: 6·N per token of each tower (the ViT sees its 256 patch tokens,
  # the decoder every position) + 12·L·H·Q·T per token for attention; the tied output head runs
  # at the target positions only (training's loss positions).
  n = medpalm_m.parameter_counts(config)
  length, patches = inputs + targets, config.num_image_tokens
  head = config.decoder.vocab_size * config.decoder.d_model
  vit = (6 * (n["vision"] + n["projector"]) + 12 * 1 * 2 * 64 * patches) * batch * patches
  dec = (6 * (n["decoder"] - head) + 12 * 1 * 4 * 64 * length) * batch * length
  dec += 6 * head * batch * targets
  analytic_per_chip = (vit + dec) / topology.num_chips
  assert terms.flops == pytest.approx(analytic_per_chip, rel=0.05)

  result = roofline.bound(terms, topology.gen, analytic_per_chip)
  seconds = result["seconds"]
  assert seconds["compute"] == pytest.approx(terms.flops / 197e12)
  assert seconds["memory"] == pytest.approx(terms.hbm_bytes / 819e9)
  assert result["step_seconds_overlapped"] == max(seconds.values())
  assert result["step_seconds_serial"] == pytest.approx(sum(seconds.values()))
  assert 0 < result["mfu_no_overlap"] <= result["mfu_bound"] <= 1.0 / 0.95
  # FSDP over 2 chips: weights are gathered, and the traffic is costed.
  assert result["collectives"]["all-gather"]["count"] > 0
  assert seconds["communication"] > 0


@pytest.mark.tpu_backend
@pytest.mark.parametrize("name", sorted(roofline.CALIBRATION))
def test_calibration_models_lay_out_on_their_published_meshes(name):
  """Each published run's model builds and shards on its slice and mesh (no compile): MaxText's
  decoder at its scale, with a stub vision tower that divides over every mesh axis."""
  from launch import aot_compile

  c = roofline.CALIBRATION[name]
  topology = topologies.get_topology(c["topology"])
  config = roofline.maxtext_config(c["scale"], vision_width=256)
  decoder = config.decoder
  assert (decoder.d_model, decoder.num_layers, decoder.vocab_size) == {
      16: (4096, 32, 32_000),
      32: (8192, 32, 32_000),
  }[c["scale"]]
  mesh = aot_compile._parse_mesh(c["mesh"])
  plan = aot_compile.make_plan(
      config.replace(remat_policy=c["remat"]),
      topology,
      batch_size=c["per_chip_batch"] * topology.num_chips,
      inputs_length=2,
      targets_length=c["length"] - 2,
      mesh_sizes=mesh,
  )
  assert plan.mesh.size == topology.num_chips
