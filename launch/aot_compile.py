"""Compiles medpalm's train / prefill / decode steps for a TPU slice on a CPU host (AOT, libtpu).

    python -m launch.aot_compile --config 12b --topology v5e-64 --batch_size 128 \
        --inputs_length 966 --targets_length 256 --mesh fsdp=-1,model=4 --remat full \
        --dtype bfloat16 [--steps train,prefill,decode] [--step_time 2.0] [--json]

Nothing is allocated: parameters, optimizer state, batch and PRNG key are ShapeDtypeStructs (from
`jax.eval_shape`) carrying the NamedShardings the logical rules give on the slice's abstract
devices, and `jax.jit(...).lower(...).compile()` runs XLA's TPU compiler exactly as on the slice.
For each step it prints the per-chip memory XLA plans (arguments, outputs, temporaries, aliased
donations; total = arguments + outputs + temporaries - aliased, against the chip's HBM), the
FLOPs per chip from `cost_analysis` beside the analytic model FLOPs, and the mesh. A step that
does not fit is reported as out of memory with the compiler's figures instead of raising.

`cost_analysis` counts the body of every `while` loop once: the scanned layers (one layer per
tower) and the loops XLA's TPU partitioner makes of large sharded matmuls (windowed einsums). For
FLOPs that count everything, compile a shallow copy unrolled with those loops off: `--depth 1,1
--no_scan --compiler_option xla_tpu_enable_windowed_einsum_for_all_gather=false
--compiler_option xla_tpu_enable_windowed_einsum_for_reduce_scatter=false` (docs/SCALING.md).

Needs the `tpu` extra (libtpu). Works under JAX_PLATFORMS=cpu: the TPU client is built by the
topology API, and nothing here runs eagerly on it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import time
import types
from typing import Any, Callable

# Runnable as `python launch/aot_compile.py` and as `python -m launch.aot_compile`: the
# repository on the import path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from launch import topologies
from medpalm.models import configs
from medpalm import optimizers, partitioning
from medpalm.driver import trainer as trainer_lib
from medpalm.models import medpalm_m
from medpalm.models.medpalm_m import MedPalmM

GIB = topologies.GIB
STEPS = ("train", "prefill", "decode")


# --- what is compiled -----------------------------------------------------------------------


@dataclasses.dataclass
class Plan:
  """Everything a compile needs, all abstract: trees of ShapeDtypeStructs with shardings.

  The train step is the driver's own (`Trainer`, built on the slice's partitioner): the same
  `make_train_step` program, shardings and donation as a training run on that slice.
  """

  config: configs.MedPalmMConfig
  topology: topologies.Topology
  partitioner: partitioning.Partitioner
  trainer: trainer_lib.Trainer
  state: Any  # TrainState of ShapeDtypeStructs (params, Adafactor state), sharded
  batch_size: int
  inputs_length: int  # prompt positions, image placeholders included
  targets_length: int

  @property
  def length(self) -> int:
    return self.inputs_length + self.targets_length

  @property
  def mesh(self) -> Mesh:
    return self.partitioner.mesh

  @property
  def rules(self) -> partitioning.Rules:
    return self.partitioner.logical_axis_rules

  @property
  def params(self) -> Any:
    return self.state.params

  @property
  def opt_state(self) -> Any:
    return self.state.opt_state


def _parse_mesh(text: str) -> dict[str, int]:
  """ "fsdp=-1,model=4" -> {"data": 1, "fsdp": -1, "model": 4}."""
  sizes = {"data": 1, "fsdp": 1, "model": 1}
  for item in filter(None, text.split(",")):
    name, _, value = item.partition("=")
    if name not in sizes or not re.fullmatch(r"-?\d+", value):
      raise ValueError(f"--mesh item {item!r}: expected data|fsdp|model=<int or -1>")
    sizes[name] = int(value)
  return sizes


def batch_features(
    config: configs.MedPalmMConfig, batch_size: int, length: int
) -> tuple[dict, dict]:
  """(shapes, dtypes) of a training batch, as the feature converter makes it (1 image/row)."""
  size = config.vision.image_size
  shapes = {
      name: (batch_size, length)
      for name in (
          "decoder_input_tokens",
          "decoder_target_tokens",
          "decoder_causal_attention",
          "decoder_loss_weights",
      )
  }
  shapes.update(images=(batch_size, 1, size, size, 3), image_mask=(batch_size, 1))
  types = {name: np.dtype(np.int32) for name in shapes}
  types.update(images=np.dtype(np.uint8), image_mask=np.dtype(bool))
  return shapes, types


def make_plan(
    config: configs.MedPalmMConfig,
    topology: topologies.Topology,
    *,
    batch_size: int,
    inputs_length: int,
    targets_length: int,
    mesh_sizes: dict[str, int],
    rules: partitioning.Rules = partitioning.DEFAULT_RULES,
    learning_rate: float = 5e-5,
    num_microbatches: int | None = None,
) -> Plan:
  """The trainer of `config` on `topology`'s abstract devices, and its abstract train state."""
  from medpalm import model as model_lib  # Local: pulls seqio (TensorFlow), seconds to import.

  partitioner = partitioning.Partitioner(
      **mesh_sizes, logical_axis_rules=rules, devices=topologies.tpu_devices(topology)
  )
  mesh = partitioner.mesh
  batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if batch_size % batch_shards:
    raise ValueError(
        f"batch_size {batch_size} does not divide over data x fsdp = "
        f"{batch_shards} shards of mesh {dict(mesh.shape)}"
    )
  if inputs_length < config.num_image_tokens + 1:
    raise ValueError(
        f"inputs_length {inputs_length} has no room for the "
        f"{config.num_image_tokens} image placeholders and a text token"
    )
  vocabulary = types.SimpleNamespace(eos_id=1)  # training reads nothing else from it
  model = model_lib.MedPalmMModel(
      MedPalmM(config),
      vocabulary,
      optimizer_def=optimizers.adafactor(learning_rate),
      loss_positions=targets_length,  # as gin_configs/runs/train.gin trains
  )
  shapes, dtypes = batch_features(config, batch_size, inputs_length + targets_length)
  # eval_shape, outside any TPU mesh context: no array is created on the compile-only devices.
  init = trainer_lib.TrainStateInitializer(model, shapes, dtypes, partitioner)
  trainer = trainer_lib.Trainer(
      model, partitioner, init.train_state_axes, num_microbatches=num_microbatches
  )
  return Plan(
      config,
      topology,
      partitioner,
      trainer,
      init.abstract_state(),
      batch_size,
      inputs_length,
      targets_length,
  )


def _with_shardings(tree: Any, shardings: Any) -> Any:
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
  )


def _batched(plan: Plan, shape: tuple[int, ...], dtype) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(
      shape, dtype, sharding=partitioning.data_sharding(plan.mesh, len(shape))
  )


def _images(plan: Plan) -> dict:
  size = plan.config.vision.image_size
  return {
      "images": _batched(plan, (plan.batch_size, 1, size, size, 3), jnp.uint8),
      "image_mask": _batched(plan, (plan.batch_size, 1), jnp.bool_),
  }


def train_step_args(plan: Plan) -> tuple[Callable, tuple, Any, tuple[int, ...]]:
  """(step, abstract args, out_shardings, donated argnums) of one training step.

  step(state, batch, rng) -> (state, metrics, finite): the trainer's `make_train_step` (forward,
  backward, non-finite skip, Adafactor update), with the train state donated as the trainer
  donates it, so its outputs alias its inputs.
  """
  shapes, dtypes = batch_features(plan.config, plan.batch_size, plan.length)
  batch = {k: _batched(plan, shapes[k], dtypes[k]) for k in shapes}
  replicated = NamedSharding(plan.mesh, P())
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated)  # jax.random.PRNGKey
  out_shardings = (_shardings(plan.state), replicated, replicated)
  return plan.trainer.step_fn, (plan.state, batch, rng), out_shardings, (0,)


def _shardings(tree: Any) -> Any:
  return jax.tree.map(lambda x: x.sharding, tree)


def _cache_shardings(plan: Plan, cache: Any) -> Any:
  """KV cache leaves float[L, B, S, G, K] (scanned) or [B, S, G, K]: split on the batch only."""
  axis = 1 if plan.config.decoder.scan_layers else 0

  def one(leaf):
    spec = [None] * leaf.ndim
    spec[axis] = partitioning.BATCH
    return NamedSharding(plan.mesh, P(*spec))

  return jax.tree.map(one, cache)


def _inference_model(plan: Plan):
  from medpalm import model as model_lib

  vocabulary = types.SimpleNamespace(eos_id=1)  # prefill / extend read nothing else from it
  return model_lib.MedPalmMModel(MedPalmM(plan.config), vocabulary)


def prefill_step_args(plan: Plan) -> tuple[Callable, tuple, Any, tuple[int, ...]]:
  """prefill(params, batch) -> (next-token logits float32[B, V], KV cache of `length` positions):
  `MedPalmMModel.prefill`, where the prompt (image placeholders included) and the ViT run once."""
  model, length = _inference_model(plan), plan.length

  def step(params, batch):
    prompt_lengths = jnp.sum(batch["decoder_causal_attention"], axis=1).astype(jnp.int32)
    start = model.prefill(params, batch, length, prompt_lengths)
    return start.logits, start.cache

  b, t = plan.batch_size, plan.inputs_length
  batch = {
      "decoder_input_tokens": _batched(plan, (b, t), jnp.int32),
      "decoder_causal_attention": _batched(plan, (b, t), jnp.int32),
      **_images(plan),
  }
  cache = jax.eval_shape(step, plan.params, batch)[1]
  out_shardings = (partitioning.data_sharding(plan.mesh, 2), _cache_shardings(plan, cache))
  return step, (plan.params, batch), out_shardings, ()


def decode_step_args(plan: Plan) -> tuple[Callable, tuple, Any, tuple[int, ...]]:
  """decode(params, cache, tokens int32[B, 1], positions int32[B, 1]) -> (float32[B, V], cache):
  `MedPalmMModel.extend`, one generated token per row attending to the cache (donated)."""
  model = _inference_model(plan)
  prefill, prefill_args, _, _ = prefill_step_args(plan)
  cache = jax.eval_shape(prefill, *prefill_args)[1]
  cache = _with_shardings(cache, _cache_shardings(plan, cache))
  b = plan.batch_size
  args = (plan.params, cache, _batched(plan, (b, 1), jnp.int32), _batched(plan, (b, 1), jnp.int32))
  out_shardings = (partitioning.data_sharding(plan.mesh, 2), _shardings(cache))
  return (
      lambda params, cache, tokens, positions: model.extend(params, tokens, positions, cache),
      args,
      out_shardings,
      (1,),
  )


STEP_BUILDERS = {"train": train_step_args, "prefill": prefill_step_args, "decode": decode_step_args}


# --- compiling and reporting ----------------------------------------------------------------


@dataclasses.dataclass
class StepReport:
  """Per-chip figures of one compiled step (bytes; FLOPs of one step on one chip)."""

  step: str
  status: str  # "ok", "oom" (does not fit the chip's HBM) or "error"
  hbm_bytes: int
  argument_bytes: int | None = None
  output_bytes: int | None = None
  temp_bytes: int | None = None
  alias_bytes: int | None = None
  code_bytes: int | None = None
  total_bytes: int | None = None  # arguments + outputs + temporaries - aliased
  flops_per_chip: float | None = None  # from cost_analysis (recomputation included)
  model_flops_per_chip: float | None = None  # analytic, see model_flops()
  usable_hbm_bytes: int | None = None  # what the compiler says it may use, when it says
  compile_seconds: float = 0.0
  message: str = ""  # the compiler's words for an oom / error


def sharded_bytes(tree: Any) -> int:
  """Bytes one chip holds of a tree of sharded ShapeDtypeStructs (the largest shard, unpadded)."""

  def one(x):
    shape, dtype = x.shape, x.dtype
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):  # e.g. key<fry>: uint32[..., 2]
      data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(shape, dtype))
      shape, dtype = shape + data.shape[len(shape) :], data.dtype
    shard = x.sharding.shard_shape(x.shape) + shape[len(x.shape) :]
    return math.prod(shard) * np.dtype(dtype).itemsize

  return sum(one(x) for x in jax.tree.leaves(tree))


def _is_oom(message: str) -> bool:
  lowered = message.lower()
  return "resource_exhausted" in lowered or ("hbm" in lowered and "memory" in lowered)


def _oom_figures(message: str) -> dict[str, int]:
  """Bytes the TPU compiler states when a program does not fit ("Used 25.50G of 15.75G hbm")."""
  units = {"": 1, "k": 1024, "m": 1024**2, "g": GIB, "t": 1024**4}
  number = lambda value, unit: int(float(value) * units[unit.lower()])
  figures = {}
  used = re.search(r"Used ([\d.]+)([KMGT]?) of ([\d.]+)([KMGT]?) hbm", message)
  if used:
    figures["total_bytes"] = number(*used.group(1, 2))
    figures["usable_hbm_bytes"] = number(*used.group(3, 4))
  available = re.search(r"available HBM \(([\d.]+)([KMGT]?)\)", message)
  if available:
    figures["usable_hbm_bytes"] = number(*available.group(1, 2))
  for name, key in (
      ("arguments", "argument_bytes"),
      ("HLO temp", "temp_bytes"),
      ("output", "output_bytes"),
  ):
    found = re.search(rf"{name}[^\n\d]*?([\d.]+)([KMGT]?)", message)
    if found:
      figures[key] = number(*found.group(1, 2))
  return figures


def lower_and_compile(
    plan: Plan, name: str, compiler_options: dict[str, Any] | None = None
) -> tuple[tuple, Any]:
  """(abstract args, compiled executable) of one step on the plan's mesh; raises what XLA raises.

  `compiler_options`: XLA options for this compile only, e.g. {"xla_tpu_enable_windowed_einsum_
  for_all_gather": False}.
  """
  fn, args, out_shardings, donate = STEP_BUILDERS[name](plan)
  with partitioning.using(plan.mesh, plan.rules):
    compiled = (
        jax.jit(
            fn, in_shardings=_shardings(args), out_shardings=out_shardings, donate_argnums=donate
        )
        .lower(*args)
        .compile(compiler_options=compiler_options or None)
    )
  return args, compiled


def compiled_report(plan: Plan, name: str, compiled: Any, seconds: float = 0.0) -> StepReport:
  """Per-chip memory (memory_analysis) and FLOPs (cost_analysis) of a compiled step."""
  memory = compiled.memory_analysis()
  report = StepReport(
      name,
      "ok",
      plan.topology.gen.hbm_bytes,
      argument_bytes=int(memory.argument_size_in_bytes),
      output_bytes=int(memory.output_size_in_bytes),
      temp_bytes=int(memory.temp_size_in_bytes),
      alias_bytes=int(memory.alias_size_in_bytes),
      code_bytes=int(memory.generated_code_size_in_bytes),
      model_flops_per_chip=model_flops(plan, name) / plan.topology.num_chips,
      compile_seconds=seconds,
  )
  report.total_bytes = (
      report.argument_bytes + report.output_bytes + report.temp_bytes - report.alias_bytes
  )
  if report.total_bytes > report.hbm_bytes:
    report.status = "oom"
    report.message = "compiled, but the planned memory exceeds the chip's HBM"
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  report.flops_per_chip = float(cost["flops"]) if cost and "flops" in cost else None
  return report


def compile_step(
    plan: Plan,
    name: str,
    compiler_options: dict[str, Any] | None = None,
    hlo_path: str | None = None,
) -> StepReport:
  """Compiles one step and reports it; an out-of-memory is a result, not a raise.

  `hlo_path`: where to write the optimized HLO text (gzip when it ends in .gz), for the roofline.
  """
  start = time.perf_counter()
  try:
    _, compiled = lower_and_compile(plan, name, compiler_options)
    if hlo_path:
      _write_text(hlo_path, compiled.as_text())
  except Exception as e:  # XLA reports OOM as a JaxRuntimeError (RESOURCE_EXHAUSTED)
    message = str(e)
    if not _is_oom(message):
      raise
    report = StepReport(
        name,
        "oom",
        plan.topology.gen.hbm_bytes,
        model_flops_per_chip=model_flops(plan, name) / plan.topology.num_chips,
        compile_seconds=time.perf_counter() - start,
        message=message.strip()[:4000],
    )
    # The compiler stops at the first buffer that does not fit; the arguments are known anyway.
    report.argument_bytes = sharded_bytes(STEP_BUILDERS[name](plan)[1])
    for key, value in _oom_figures(message).items():
      setattr(report, key, value)
    return report
  return compiled_report(plan, name, compiled, time.perf_counter() - start)


def _write_text(path: str, text: str) -> None:
  import gzip  # pylint: disable=g-import-not-at-top

  import os  # pylint: disable=g-import-not-at-top

  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "wt", encoding="utf-8") as f:
    f.write(text)


def model_flops(plan: Plan, step: str) -> float:
  """Analytic model FLOPs of one step on the whole slice (no recomputation counted).

  Per token of a tower, forward: 2·N for the matmuls plus 4·L·H·Q·T for QK^T and AV over a
  context of T (H query heads of width Q, the full T counted even where causal, as PaLM's MFU
  counts it); training is 3× the forward: PaLM's 6·N + 12·L·H·Q·T. The ViT runs over 256 patch
  tokens per image, the decoder over all positions. Embedding lookups are free; the shared
  embedding counts once, as the output projection, which training runs at the target positions
  only (`loss_positions`, as gin_configs/runs/train.gin trains).
  """
  c, b = plan.config, plan.batch_size
  counts = medpalm_m.parameter_counts(c)

  def tower(n_params, layers, attn_width, tokens_per_row, context):
    return b * tokens_per_row * (2 * n_params + 4 * layers * attn_width * context)

  vision_width = c.vision.num_heads * c.vision.head_dim
  decoder_width = c.decoder.num_heads * c.decoder.head_dim
  vit = tower(
      counts["vision"] + counts["projector"],
      c.vision.num_layers,
      vision_width,
      c.num_image_tokens,
      c.num_image_tokens,
  )
  if step == "train":
    head = c.decoder.vocab_size * c.decoder.d_model
    dec = tower(
        counts["decoder"] - head, c.decoder.num_layers, decoder_width, plan.length, plan.length
    )
    return 3.0 * (vit + dec + b * plan.targets_length * 2 * head)
  if step == "prefill":
    return vit + tower(
        counts["decoder"],
        c.decoder.num_layers,
        decoder_width,
        plan.inputs_length,
        plan.inputs_length,
    )
  return tower(counts["decoder"], c.decoder.num_layers, decoder_width, 1, plan.length)


def six_n_tokens(plan: Plan) -> float:
  """The rule of thumb 6·N·tokens for the train step (N all parameters, tokens = B·T)."""
  return 6.0 * medpalm_m.parameter_counts(plan.config)["total"] * plan.batch_size * plan.length


def run(
    config_name: str,
    topology_name: str,
    *,
    batch_size: int,
    inputs_length: int,
    targets_length: int,
    mesh: str = "fsdp=-1",
    remat: str = "full",
    dtype: str = "bfloat16",
    param_dtype: str = "float32",
    dropout_rate: float = 0.1,
    steps: tuple[str, ...] = STEPS,
    step_time: float | None = None,
    scan_layers: bool = True,
    depth: tuple[int, int] | None = None,
    compiler_options: dict[str, Any] | None = None,
    config: configs.MedPalmMConfig | None = None,
    hlo_dir: str | None = None,
    num_microbatches: int | None = None,
    attention: str | None = None,
) -> dict:
  """Compiles `steps` and returns a JSON-ready summary (see `format_summary`).

  `depth=(vision_layers, decoder_layers)` shortens the towers (same widths): with
  `scan_layers=False` it gives a compile whose `cost_analysis` counts every layer (XLA counts a
  scanned layer body once, whatever the trip count), to check the analytic FLOPs at full width.
  `config` overrides `config_name` with a config object (tests build small variants).
  `num_microbatches` compiles the trainer's gradient accumulation (the batch in that many
  sequential microbatches, as `trainer.Trainer.num_microbatches` trains). `attention` replaces
  both towers' attention implementation (e.g. "splash", the Pallas TPU kernel).
  """
  for s in steps:
    if s not in STEPS:
      raise ValueError(f"unknown step {s!r}; steps are {', '.join(STEPS)}")
  config = config or configs.get_config(config_name)
  if depth:
    config = dataclasses.replace(
        config,
        vision=dataclasses.replace(config.vision, num_layers=depth[0]),
        decoder=dataclasses.replace(config.decoder, num_layers=depth[1]),
    )
  if attention:
    config = dataclasses.replace(
        config,
        vision=dataclasses.replace(config.vision, attention=attention),
        decoder=dataclasses.replace(config.decoder, attention=attention),
    )
  config = config.replace(
      dtype=dtype,
      param_dtype=param_dtype,
      remat_policy=remat,
      dropout_rate=dropout_rate,
      scan_layers=scan_layers,
  )
  topology = topologies.get_topology(topology_name)
  plan = make_plan(
      config,
      topology,
      batch_size=batch_size,
      inputs_length=inputs_length,
      targets_length=targets_length,
      mesh_sizes=_parse_mesh(mesh),
      num_microbatches=num_microbatches,
  )
  counts = medpalm_m.parameter_counts(config)
  summary = {
      "config": config.name,
      "parameters": counts,
      "topology": topology.name,
      "topology_name": topology.topology_name,
      "chips": topology.num_chips,
      "device_kind": plan.mesh.devices.flat[0].device_kind,
      "hbm_bytes_per_chip": topology.gen.hbm_bytes,
      "peak_bf16_flops_per_chip": topology.gen.peak_bf16_flops,
      "mesh": dict(plan.mesh.shape),
      "batch_size": batch_size,
      "num_microbatches": num_microbatches or 1,
      "attention": config.decoder.attention,
      "inputs_length": inputs_length,
      "targets_length": targets_length,
      "remat": remat,
      "dtype": dtype,
      "param_dtype": param_dtype,
      "dropout_rate": dropout_rate,
      "scan_layers": scan_layers,
      "layers": {"vision": config.vision.num_layers, "decoder": config.decoder.num_layers},
      "compiler_options": dict(compiler_options or {}),
      "six_n_tokens_flops": six_n_tokens(plan),
      "steps": {},
  }
  for s in steps:
    hlo_path = f"{hlo_dir}/{s}.hlo.gz" if hlo_dir else None
    report = compile_step(plan, s, compiler_options, hlo_path)
    summary["steps"][s] = dataclasses.asdict(report)
  train = summary["steps"].get("train")
  if train:
    ideal = model_flops(plan, "train") / (topology.num_chips * topology.gen.peak_bf16_flops)
    summary["train_step_seconds_at_full_mfu"] = ideal
    if step_time:
      summary["target_step_seconds"] = step_time
      summary["mfu_needed"] = ideal / step_time
  return summary


def _gib(x) -> str:
  return "     ?    " if x is None else f"{x / GIB:8.2f} G"


def format_summary(s: dict) -> str:
  p = s["parameters"]
  layers = (
      "scanned: cost_analysis counts one layer body per tower" if s["scan_layers"] else "unrolled"
  )
  lines = [
      f"config {s['config']}: {p['total'] / 1e9:.2f}B parameters (decoder "
      f"{p['decoder'] / 1e9:.2f}B, vision {p['vision'] / 1e9:.2f}B); {s['dtype']} compute, "
      f"{s['param_dtype']} parameters, remat {s['remat']}, dropout {s['dropout_rate']}, "
      f"layers {s['layers']['vision']} vision + {s['layers']['decoder']} decoder "
      f"({layers})",
      f"topology {s['topology']} ({s['topology_name']}, {s['chips']} x {s['device_kind']}, "
      f"{s['hbm_bytes_per_chip'] / GIB:.0f} GiB HBM and "
      f"{s['peak_bf16_flops_per_chip'] / 1e12:.0f} bf16 TFLOP/s per chip)",
      f"mesh {s['mesh']}; batch {s['batch_size']} x ({s['inputs_length']} inputs + "
      f"{s['targets_length']} targets) positions, 1 image per example"
      + (f", {s['num_microbatches']} microbatches" if s.get("num_microbatches", 1) > 1 else ""),
      f"{'step':<8} {'status':<6} {'arguments':>10} {'outputs':>10} {'temps':>10} "
      f"{'aliased':>10} {'total':>10} {'HBM':>6} {'TFLOP/chip':>11} {'model TF/chip':>13} "
      f"{'compile':>8}",
  ]
  for name, r in s["steps"].items():
    tf = lambda x: "?" if x is None else f"{x / 1e12:.2f}"
    lines.append(
        f"{name:<8} {r['status']:<6} {_gib(r['argument_bytes'])} {_gib(r['output_bytes'])} "
        f"{_gib(r['temp_bytes'])} {_gib(r['alias_bytes'])} {_gib(r['total_bytes'])} "
        f"{r['hbm_bytes'] / GIB:4.0f} G {tf(r['flops_per_chip']):>11} "
        f"{tf(r['model_flops_per_chip']):>13} {r['compile_seconds']:7.1f}s"
    )
    if r["status"] != "ok":
      lines.append(f"  {name}: {r['status'].upper()}: {r['message'].splitlines()[0][:300]}")
  if "train" in s["steps"]:
    train = s["steps"]["train"]
    lines.append(
        f"train FLOPs on the slice: model {train['model_flops_per_chip'] * s['chips']:.3e}"
        f", 6·N·tokens {s['six_n_tokens_flops']:.3e}"
        + (
            f", cost_analysis {train['flops_per_chip'] * s['chips']:.3e} (recomputation "
            f"in, loop bodies counted once: a lower bound)"
            if train["flops_per_chip"]
            else ""
        )
    )
    lines.append(
        f"train step time at 100% MFU: {s['train_step_seconds_at_full_mfu']:.3f} s"
        + (
            f"; a {s['target_step_seconds']} s step needs {100 * s['mfu_needed']:.1f}% " f"MFU"
            if "mfu_needed" in s
            else ""
        )
    )
  return "\n".join(lines)


def _parse_option(text: str) -> tuple[str, Any]:
  """ "name=false" -> ("name", False); integers become ints, anything else stays a string."""
  name, sep, value = text.partition("=")
  if not sep or not name:
    raise ValueError(f"--compiler_option {text!r}: expected NAME=VALUE")
  if value.lower() in ("true", "false"):
    return name, value.lower() == "true"
  return name, int(value) if re.fullmatch(r"-?\d+", value) else value


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True, choices=list(configs.CONFIGS))
  parser.add_argument(
      "--topology",
      required=True,
      help="Cloud TPU slice (v5e-64, v5p-512, v4-128, v6e-256) or topology-API "
      "name (v5e:2x2); see python -m launch.topologies",
  )
  parser.add_argument("--batch_size", type=int, required=True, help="global batch")
  parser.add_argument(
      "--inputs_length",
      type=int,
      default=966,
      help="prompt positions, 256 image placeholders included",
  )
  parser.add_argument("--targets_length", type=int, default=256)
  parser.add_argument(
      "--mesh", default="fsdp=-1", help="sizes of the data/fsdp/model mesh axes, one may be -1"
  )
  parser.add_argument("--remat", default="full", choices=configs.REMAT_POLICIES)
  parser.add_argument("--dtype", default="bfloat16", help="activation / compute dtype")
  parser.add_argument("--param_dtype", default="float32")
  parser.add_argument("--dropout_rate", type=float, default=0.1, help="the paper trains at 0.1")
  parser.add_argument(
      "--attention",
      default=None,
      choices=configs.ATTENTION_IMPLEMENTATIONS,
      help="both towers' attention (default: the config's); splash is the Pallas TPU kernel",
  )
  parser.add_argument(
      "--num_microbatches",
      type=int,
      default=None,
      help="gradient accumulation: the train step runs the batch in this many microbatches",
  )
  parser.add_argument(
      "--steps", default="train,prefill,decode", help=f"comma-separated subset of {','.join(STEPS)}"
  )
  parser.add_argument(
      "--step_time",
      type=float,
      default=None,
      help="seconds per train step to reach; prints the MFU it needs",
  )
  parser.add_argument(
      "--no_scan",
      action="store_true",
      help="unroll the layers (cost_analysis then counts every layer; slow to "
      "compile at full depth)",
  )
  parser.add_argument(
      "--depth",
      default=None,
      help="VISION,DECODER layer counts replacing the config's (same widths)",
  )
  parser.add_argument(
      "--compiler_option",
      action="append",
      default=[],
      metavar="NAME=VALUE",
      help="XLA option for these compiles (repeatable), e.g. "
      "xla_tpu_enable_windowed_einsum_for_all_gather=false",
  )
  parser.add_argument("--json", action="store_true", help="print the summary as JSON")
  parser.add_argument("--hlo_dir", default=None, help="write each step's optimized HLO here")
  args = parser.parse_args(argv)
  summary = run(
      args.config,
      args.topology,
      batch_size=args.batch_size,
      inputs_length=args.inputs_length,
      targets_length=args.targets_length,
      mesh=args.mesh,
      remat=args.remat,
      dtype=args.dtype,
      param_dtype=args.param_dtype,
      dropout_rate=args.dropout_rate,
      steps=tuple(args.steps.split(",")),
      step_time=args.step_time,
      scan_layers=not args.no_scan,
      depth=tuple(int(x) for x in args.depth.split(",")) if args.depth else None,
      compiler_options=dict(_parse_option(o) for o in args.compiler_option),
      hlo_dir=args.hlo_dir,
      num_microbatches=args.num_microbatches,
      attention=args.attention,
  )
  print(json.dumps(summary, indent=1) if args.json else format_summary(summary))
  return 0 if all(r["status"] == "ok" for r in summary["steps"].values()) else 2


if __name__ == "__main__":
  sys.exit(main())
