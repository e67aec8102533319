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
    return roofline.Terms(
        value, 2 * value, kinds, kinds, kinds, {"total": value}, {"seconds": 3 * value}
    )

  args = (5.0, 3.0, 7.0)
  points = {d: terms(*args, d) for d in ((1, 1), (2, 1), (1, 2))}
  full, parts = roofline.extrapolate(points, (56, 32))
  assert full.flops == terms(*args, (56, 32)).flops == 5 + 56 * 3 + 32 * 7
  assert full.memory["total"] == full.flops and full.hbm_bytes == 2 * full.flops
  assert (parts["base"].flops, parts["vision_layer"].flops) == (5.0, 3.0)
  assert parts["decoder_layer"].ici_seconds["all-gather"] == 7.0
  assert full.per_op["seconds"] == 3 * full.flops


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


# A matmul fusion, an elementwise fusion, a convolution written the TPU compiler's way (a batched
# matmul: spatial dim 0 as the batch, window 1), an async prefetch and an all-gather.
PER_OP_HLO = """\
HloModule per_op, entry_computation_layout={()->f32[]}

%matmul (p0: bf16[512,1024], p1: bf16[1024,2048]) -> bf16[512,2048] {
  %p0 = bf16[512,1024]{1,0} parameter(0)
  %p1 = bf16[1024,2048]{1,0} parameter(1)
  ROOT %dot.1 = bf16[512,2048]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%scale (p2: f32[4194304]) -> f32[4194304] {
  %p2 = f32[4194304]{0} parameter(0)
  %two = f32[] constant(2)
  %b = f32[4194304]{0} broadcast(%two), dimensions={}
  ROOT %m = f32[4194304]{0} multiply(%p2, %b)
}

%batched (p3: bf16[4,256,128], p4: bf16[128,256,1]) -> bf16[4,256,256] {
  %p3 = bf16[4,256,128]{2,1,0:T(8,128)(2,1)} parameter(0)
  %p4 = bf16[128,256,1]{1,0,2:T(8,128)(2,1)} parameter(1)
  ROOT %convolution.7 = bf16[4,256,256]{2,1,0:T(8,128)(2,1)} convolution(%p3, %p4), window={size=1}, dim_labels=0bf_io0->0bf
}

%inplace (p5: f32[1024,1024], p6: f32[8,1024]) -> f32[1024,1024] {
  %p5 = f32[1024,1024]{1,0} parameter(0)
  %p6 = f32[8,1024]{1,0} parameter(1)
  %zero = s32[] constant(0)
  ROOT %dus = f32[1024,1024]{1,0} dynamic-update-slice(%p5, %p6, %zero, %zero)
}

%sliced (p8: f32[4096,1024]) -> f32[16,1024] {
  %p8 = f32[4096,1024]{1,0} parameter(0)
  ROOT %first = f32[16,1024]{1,0} slice(%p8), slice={[0:16], [0:1024]}
}

%carry (p9: f32[1000], p10: bf16[256]) -> (bf16[256], f32[1000]) {
  %p9 = f32[1000]{0} parameter(0)
  %p10 = bf16[256]{0} parameter(1)
  %neg = bf16[256]{0} negate(%p10)
  ROOT %out = (bf16[256]{0}, f32[1000]{0}) tuple(%neg, %p9)
}

ENTRY %main (x: bf16[512,1024], w: bf16[1024,2048], v: f32[4194304], a: bf16[4,256,128], k: bf16[128,256,1], s: f32[256,256]) -> f32[] {
  %x = bf16[512,1024]{1,0} parameter(0)
  %w = bf16[1024,2048]{1,0} parameter(1)
  %v = f32[4194304]{0} parameter(2)
  %a = bf16[4,256,128]{2,1,0:T(8,128)(2,1)S(1)} parameter(3)
  %k = bf16[128,256,1]{1,0,2:T(8,128)(2,1)} parameter(4)
  %s = f32[256,256]{1,0} parameter(5)
  %r0 = f32[] constant(0)
  %x1 = f32[256]{0} broadcast(%r0), dimensions={}
  %y = bf16[512,2048]{1,0} fusion(%x, %w), kind=kOutput, calls=%matmul
  %z = f32[4194304]{0} fusion(%v), kind=kLoop, calls=%scale
  %c = bf16[4,256,256]{2,1,0:T(8,128)(2,1)} fusion(%a, %k), kind=kOutput, calls=%batched
  %cs = (f32[256,256]{1,0:S(1)}, f32[256,256]{1,0}, u32[]{:S(2)}) copy-start(%s)
  %cd = f32[256,256]{1,0:S(1)} copy-done(%cs)
  %kernel = bf16[512,1024]{1,0} custom-call(%x), custom_call_target="tpu_custom_call"
  %big = f32[1024,1024]{1,0} broadcast(%r0), dimensions={}
  %rows = f32[8,1024]{1,0} broadcast(%r0), dimensions={}
  %u = f32[1024,1024]{1,0} fusion(%big, %rows), kind=kLoop, calls=%inplace
  %table = f32[4096,1024]{1,0} broadcast(%r0), dimensions={}
  %head = f32[16,1024]{1,0} fusion(%table), kind=kLoop, calls=%sliced
  %buffer = f32[1000]{0} broadcast(%r0), dimensions={}
  %h = bf16[256]{0} convert(%x1)
  %t = (bf16[256]{0}, f32[1000]{0}) fusion(%buffer, %h), kind=kLoop, calls=%carry
  %g = bf16[2048,2048]{1,0} all-gather(%w), channel_id=1, replica_groups=[1,2]<=[2], dimensions={0}, use_global_device_ids=true
  ROOT %r = f32[] constant(0)
}
"""


def test_per_op_time_adds_each_instructions_own_bottleneck():
  peak, bandwidth = 197e12, 819e9  # v5e
  found = roofline.per_op(PER_OP_HLO, peak, bandwidth)

  matmul_flops, matmul_bytes = 2 * 512 * 2048 * 1024, 2 * (512 * 1024 + 1024 * 2048 + 512 * 2048)
  scale_bytes = 2 * 4 * 4194304
  kernel_bytes = 2 * 2 * 512 * 1024  # a Mosaic kernel: its traffic counts, its FLOPs cannot
  # Fusions read and write only what they touch: an in-place update its rows (twice), a slice
  # its rows (twice); a buffer passed through costs nothing, the negated bf16[256] 2 x 512 bytes.
  fused_bytes = 2 * 8 * 1024 * 4 + 2 * 16 * 1024 * 4 + 2 * 256 * 2
  # The five broadcasts that build those operands read a scalar and write their results; the
  # convert reads and writes.
  built_bytes = 4 * (1024 * 1024 + 8 * 1024 + 4096 * 1024 + 1000 + 256 + 5) + 256 * (4 + 2)
  # The batched matmul: 4 x [256, 128] @ [128, 256]; its input `a` lives in on-chip memory
  # (layout S(1)), so only the kernel and the result cross HBM.
  conv_flops, conv_bytes = 2 * 4 * 256 * 128 * 256, 2 * (128 * 256 + 4 * 256 * 256)
  assert found.matmul_flops == matmul_flops + conv_flops
  assert found.hbm_bytes == (
      matmul_bytes + scale_bytes + conv_bytes + kernel_bytes + fused_bytes + built_bytes
  )
  assert found.kernel_calls == 1
  # The all-gather is communication; the prefetch runs beside the fusions and is only recorded.
  assert found.async_copy_bytes == 4 * 256 * 256
  each = [
      max(matmul_flops / peak, matmul_bytes / bandwidth),  # compute-bound: 10.9 us vs 9.0 us
      scale_bytes / bandwidth,  # memory-bound: 41 us
      max(conv_flops / peak, conv_bytes / bandwidth),
      kernel_bytes / bandwidth,
      (fused_bytes + built_bytes) / bandwidth,  # each memory-bound: their sum is exact
  ]
  assert found.seconds == pytest.approx(sum(each), rel=1e-12)
  assert found.compute_bound_seconds == pytest.approx(matmul_flops / peak, rel=1e-12)
  # The overlapped bound hides the matmuls under the elementwise op's memory traffic.
  assert found.seconds > max(found.matmul_flops / peak, found.hbm_bytes / bandwidth)

  # The roofline carries it into the per-op MFU estimate, collectives hidden or not.
  kinds = {k: 0.0 for k in roofline.COLLECTIVES}
  per_op = dataclasses.asdict(found)
  ici = {**kinds, "all-gather": 1e-5, "all-reduce": 2e-5}
  terms = roofline.Terms(found.matmul_flops, found.hbm_bytes, ici, kinds, kinds, {}, per_op)
  gen = topologies.get_topology("v5e:2x2").gen
  result = roofline.bound(terms, gen, model_flops_per_chip=matmul_flops)
  ideal = matmul_flops / gen.peak_bf16_flops
  assert result["mfu_per_op"] == pytest.approx(ideal / found.seconds)
  assert result["mfu_per_op_serial"] == pytest.approx(ideal / (found.seconds + 3e-5))
  # The calibrated estimate: all-reduces (tensor parallelism's, between dependent matmuls) on
  # the critical path, the all-gather (a prefetchable weight) hidden.
  assert result["mfu_estimate"] == pytest.approx(ideal / (found.seconds + 2e-5))
  assert result["mfu_per_op_serial"] < result["mfu_estimate"] < result["mfu_per_op"]
  assert result["mfu_per_op"] < result["mfu_bound"]


@pytest.mark.tpu_backend
def test_per_op_matmul_flops_equal_xlas_count_on_compiled_matmuls():
  """Whatever dots and convolutions the TPU compiler makes of these contractions (batched,
  transposed, a weight gradient over the batch, sharded over 4 chips), their FLOPs by our
  parser equal XLA's own count."""
  devices = topologies.tpu_devices(topologies.get_topology("v5e:2x2"))
  mesh = Mesh(np.asarray(devices).reshape(2, 2), ("fsdp", "model"))
  spec = lambda *axes: NamedSharding(mesh, P(*axes))

  def step(q, k, x, w):
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k)
    out = jnp.einsum("bhqk,bkhd->bqhd", scores, k)
    grad_w = jnp.einsum("btd,btf->df", x, x @ w)  # contracts batch and time
    return out, grad_w

  args = (
      jax.ShapeDtypeStruct((8, 256, 4, 128), jnp.bfloat16, sharding=spec("fsdp", None, "model")),
      jax.ShapeDtypeStruct((8, 256, 4, 128), jnp.bfloat16, sharding=spec("fsdp", None, "model")),
      jax.ShapeDtypeStruct((8, 512, 1024), jnp.bfloat16, sharding=spec("fsdp")),
      jax.ShapeDtypeStruct((1024, 2048), jnp.bfloat16, sharding=spec("fsdp", "model")),
  )
  compiled = jax.jit(step).lower(*args).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  found = roofline.per_op(compiled.as_text(), 197e12, 819e9)
  assert found.matmul_flops == pytest.approx(cost["flops"], rel=0.01)
  assert (
      found.matmul_flops
      > 0.99 * (2 * 8 * 4 * 256 * 256 * 128 * 2 + 2 * 8 * 512 * 1024 * 2048 * 2) / 4
  )


@pytest.mark.tpu_backend
@pytest.mark.slow
def test_per_op_counts_splash_attention_like_xla_counts_the_reference_path():
  """The splash kernels' FLOPs, invisible to XLA, come from their names, operands and blocks:
  forward 2 matmuls, dq 3, dkv 4 per head and example over the padded block grid. The reference
  path's 6 (forward 2, backward 4), as XLA counts them, scaled to 9 matmuls and the padded
  lengths, must give the same figure."""
  from medpalm import partitioning
  from medpalm.models import layers, multimodal

  devices = topologies.tpu_devices(topologies.get_topology("v5e:2x2"))
  mesh = partitioning.make_mesh(data=1, fsdp=2, model=2, devices=devices)
  b, t, h, k = 4, 1222, 8, 128  # padded to 1280 (5 blocks of 256) inside the kernel
  spec = lambda names: NamedSharding(mesh, P(*names))
  q = jax.ShapeDtypeStruct(
      (b, t, h, k), jnp.bfloat16, sharding=spec((("data", "fsdp"), None, "model"))
  )
  kv = jax.ShapeDtypeStruct((b, t, 1, k), jnp.bfloat16, sharding=spec((("data", "fsdp"),)))
  prefix = jax.ShapeDtypeStruct((b, t), jnp.int32, sharding=spec((("data", "fsdp"),)))

  def compiled(implementation):
    def step(q, k, v, prefix, cotangent):  # a cotangent that is not all ones: dO·Vᵀ is a matmul
      mask = multimodal.attention_mask(t, prefix)
      out = lambda q, k, v: jnp.sum(
          layers.dot_product_attention(q, k, v, mask, jnp.bfloat16, implementation) * cotangent
      )
      return jax.value_and_grad(out, argnums=(0, 1, 2))(q, k, v)  # the output needs P·V

    with partitioning.using(mesh), jax.default_matmul_precision("default"):
      return jax.jit(step).lower(q, kv, kv, prefix, q).compile()

  splash = roofline.per_op(compiled("splash").as_text(), 197e12, 819e9)
  per_chip = (b // 2) * (h // 2)  # examples over fsdp, heads over model
  assert splash.splash_calls == 3 * (b // 2) and splash.kernel_calls == 0
  assert splash.matmul_flops == 9 * 2 * per_chip * 1280 * 1280 * k
  reference = compiled("reference").cost_analysis()
  reference = reference[0] if isinstance(reference, (list, tuple)) else reference
  assert splash.matmul_flops == pytest.approx(
      reference["flops"] * 9 / 6 * (1280 / t) ** 2, rel=0.02
  )
  # The ViT's 256 patches need no padding and no mask: the kernel's static full mask, vmapped
  # over the examples (a leading batch dimension on its operands, no loop), counted the same way.
  patches = jax.ShapeDtypeStruct((b, 256, h, k), jnp.bfloat16, sharding=q.sharding)
  with partitioning.using(mesh), jax.default_matmul_precision("default"):
    attend = lambda q: jnp.sum(layers.dot_product_attention(q, q, q, None, jnp.bfloat16, "splash"))
    text = jax.jit(jax.value_and_grad(attend)).lower(patches).compile().as_text()
  full = roofline.per_op(text, 197e12, 819e9)
  assert full.kernel_calls == 0 and full.splash_calls > 0
  assert full.matmul_flops == 9 * 2 * per_chip * 256 * 256 * k


def _one_layer_per_tower():
  """One layer per tower (the scan of one layer leaves no loop, so cost_analysis sees it all),
  wide enough that matmuls dominate the elementwise FLOPs as they do at full size."""
  from medpalm.models import configs

  tiny = configs.get_config("tiny", dtype="bfloat16", remat_policy="none", dropout_rate=0.0)
  return dataclasses.replace(
      tiny,
      vision=dataclasses.replace(
          tiny.vision, num_layers=1, d_model=128, num_heads=2, num_kv_heads=2, head_dim=64, d_ff=512
      ),
      decoder=dataclasses.replace(
          tiny.decoder, num_layers=1, d_model=256, num_heads=4, head_dim=64, d_ff=1024
      ),
  )


@pytest.mark.tpu_backend
@pytest.mark.slow
def test_roofline_of_a_small_step_counts_the_analytic_flops():
  from launch import aot_compile
  from medpalm.models import medpalm_m

  config = _one_layer_per_tower()
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
  # The matmuls hold all but the elementwise FLOPs, and each instruction at its own bottleneck
  # takes at least as long as the matmuls at the peak.
  assert 0.9 * terms.flops < terms.per_op["matmul_flops"] <= terms.flops
  assert terms.per_op["seconds"] >= terms.per_op["matmul_flops"] / 197e12
  # (Not below the bound here: cost_analysis' bytes, the bound's memory term, count traffic to
  # on-chip memory too, where this small model keeps most of its activations.)
  assert 0 < result["mfu_per_op"] < 1
  # FSDP over 2 chips: weights are gathered, and the traffic is costed.
  assert result["collectives"]["all-gather"]["count"] > 0
  assert seconds["communication"] > 0


@pytest.mark.tpu_backend
@pytest.mark.parametrize("name", sorted(roofline.CALIBRATION))
def test_calibration_models_lay_out_on_their_published_meshes(name):
  """Each published run's model builds and shards on its slice and mesh (no compile): MaxText's
  decoder at its scale or PaLM 540B, with a stub vision tower that divides over every mesh
  axis."""
  from launch import aot_compile

  c = roofline.CALIBRATION[name]
  topology = topologies.get_topology(c["topology"])
  config = roofline.calibration_model(c, vision_width=256)
  decoder = config.decoder
  assert (decoder.d_model, decoder.num_layers, decoder.vocab_size) == {
      "maxtext_16b_v5e256": (4096, 32, 32_000),
      "maxtext_32b_v5p128": (8192, 32, 32_000),
      "palm_540b_v4_6144": (18432, 118, 256_008),  # PaLM's 256k, padded to split 12 ways
  }[name]
  mesh = aot_compile._parse_mesh(c["mesh"])
  plan = aot_compile.make_plan(
      config.replace(remat_policy=c["remat"]),
      topology,
      batch_size=c.get("batch_size") or c["per_chip_batch"] * topology.num_chips,
      inputs_length=2,
      targets_length=c["length"] - 2,
      mesh_sizes=mesh,
  )
  assert plan.mesh.size == topology.num_chips


@pytest.mark.tpu_backend
@pytest.mark.slow
def test_sharding_search_keeps_the_plans_that_fit_best_estimate_first():
  config = _one_layer_per_tower()
  shape = dict(batch_size=8, inputs_length=264, targets_length=8)
  candidates = [roofline.Candidate("fsdp=2,model=2", "none"), roofline.Candidate("fsdp=4", "full")]
  rows = roofline.search(config, "v5e:2x2", candidates, log=lambda m: None, **shape)

  assert sorted(r["candidate"]["mesh"] for r in rows) == ["fsdp=2,model=2", "fsdp=4"]
  assert all(r["fits"] and r["train"]["status"] == "ok" for r in rows)
  estimates = [r["roofline"]["roofline"]["mfu_estimate"] for r in rows]
  assert estimates == sorted(estimates, reverse=True) and all(0 < e < 1 for e in estimates)
  by_remat = {r["candidate"]["remat"]: r["roofline"] for r in rows}
  # Each candidate's own choices were compiled: its mesh, and remat `full` recomputes the
  # forward pass: its matmuls cost 4/3 of `none`'s, diluted here by the elementwise work and the
  # optimizer, which it does not repeat (measured 1.16x).
  assert by_remat["none"]["mesh"] == {"data": 1, "fsdp": 2, "model": 2}
  assert by_remat["full"]["mesh"] == {"data": 1, "fsdp": 4, "model": 1}
  flops = {k: v["roofline"]["flops_per_chip"] for k, v in by_remat.items()}
  assert flops["full"] > 1.1 * flops["none"]

  # Under a limit below its memory a plan does not fit, and no roofline is compiled for it.
  used = min(r["train"]["total_bytes"] for r in rows)
  (row,) = roofline.search(
      config, "v5e:2x2", candidates[:1], hbm_limit_bytes=used - 1, log=lambda m: None, **shape
  )
  assert not row["fits"] and "roofline" not in row
  assert "does not fit" in roofline.format_search_row(row)


def test_rebound_recomputes_a_saved_roofline_from_its_terms(tmp_path):
  """`--rebound` rebuilds the full-depth terms from the stored shallow compiles: on a saved
  plan (the `12b` one in docs/) it reproduces every stored figure and adds the current ones."""
  import json
  import pathlib
  import shutil

  saved = pathlib.Path(__file__).parents[2] / "docs" / "roofline" / "12b_v5e64.json"
  before = json.loads(saved.read_text())
  copy = tmp_path / "plan.json"
  shutil.copy(saved, copy)
  assert roofline.main(["--rebound", str(copy)]) == 0
  after = json.loads(copy.read_text())["roofline"]
  for key, value in before["roofline"].items():
    if isinstance(value, float):
      assert after[key] == pytest.approx(value, rel=1e-9), key
  b = after
  all_reduce = b["collectives"]["all-reduce"]["seconds"]
  assert b["step_seconds_estimate"] == pytest.approx(b["per_op"]["seconds"] + all_reduce)
  assert b["mfu_per_op_serial"] <= b["mfu_estimate"] <= b["mfu_per_op"]


def test_work_that_cost_analysis_misses_comes_from_the_per_op_walk():
  """`cost_analysis` counts a loop body once (the microbatches' accumulation stays a loop) and
  cannot see inside Mosaic kernels (splash attention); the per-op walk counts both, so the
  compute term takes the larger FLOP count, and a program with a loop the walk's HBM bytes."""
  kinds = {k: 0.0 for k in roofline.COLLECTIVES}
  terms = lambda flops, matmul: roofline.Terms(
      flops,
      2e9,
      kinds,
      kinds,
      kinds,
      {},
      {"seconds": 1.0, "matmul_flops": matmul, "hbm_bytes": 3e9},
  )
  counted = lambda t, loops: (
      roofline._with_walk_counts(t, loops).flops,
      roofline._with_walk_counts(t, loops).hbm_bytes,
  )
  assert counted(terms(4e12, 3.9e12), 0) == (4e12, 2e9)  # elementwise FLOPs on top of matmuls
  assert counted(terms(4e12, 8e12), 1) == (8e12, 3e9)  # the loop's second trip
  assert counted(terms(4e12, 5e12), 0) == (5e12, 2e9)  # a splash kernel's matmuls
