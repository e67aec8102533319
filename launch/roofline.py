"""A lower bound on the step time of a compiled TPU program, hence an upper bound on its MFU.

    python -m launch.roofline --config 12b --topology v5e-64 --batch_size 128 \
        --mesh fsdp=-1,model=4 --remat full [--depths 1,1:2,1:1,2] [--json]

Three terms per chip, each from the compiled program and the chip's published figures
(`launch/topologies.py`):

  compute        = FLOPs (`cost_analysis`, recomputation included) / peak bf16 FLOP/s
  memory         = HBM bytes accessed (`cost_analysis`) / HBM bandwidth
  communication  = sum over the collectives of the optimized HLO of the bytes each chip sends
                   over ICI (ring algorithms: all-gather and reduce-scatter (n-1)/n of the
                   gathered size, all-reduce twice that, all-to-all (n-1)/n, collective-permute
                   the buffer) / the bandwidth of the links its replica group can use (two per
                   torus dimension the group spans, each at the per-link one-way bandwidth).

The bound assumes perfect overlap: step >= max(compute, memory, communication); the table also
prints the sum (no overlap at all). MFU bound = model FLOPs (PaLM's accounting, no
recomputation) / (chips x peak x step bound).

`cost_analysis` counts a `while` body once whatever its trip count, so layers under `nn.scan`
and the loops the TPU partitioner makes of big sharded matmuls ("windowed einsums") hide their
FLOPs. The roofline of a full-size model is therefore taken from shallow copies compiled
unrolled with windowed einsums off (no loop left: checked, `while_loops` must be 0): at depths
(1, 1), (2, 1) and (1, 2) (vision, decoder layers) every term is base + per-vision-layer +
per-decoder-layer, and the three compiles give those exactly, so the full depth is
base + (Lv - 1) x vision term + (Ld - 1) x decoder term. Collectives are counted with the trip
counts of the loops around them, so the parser is right on scanned programs as well.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
from typing import Any, Sequence

# Run as `python launch/roofline.py` too: the repository root holds the `launch` package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
NO_WINDOWED_EINSUMS = {
    "xla_tpu_enable_windowed_einsum_for_all_gather": False,
    "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False,
}

_DTYPE_BYTES = {
    "pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
    "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
    "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3b11fnuz": 1, "f8e4m3fnuz": 1, "f8e5m2fnuz": 1,
}  # fmt: skip
_ARRAY = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([\d,]*)\]")
_HEADER = re.compile(r"^(ENTRY\s+)?%?([^\s(]+)\s*\(.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([^\s=]+)\s*=\s*(.*)$")
_CALLS = re.compile(
    r"\b(calls|to_apply|body|condition|true_computation|false_computation)=%?([\w.\-]+)"
)
_BRANCHES = re.compile(r"\bbranch_computations=\{([^}]*)\}")


def array_bytes(type_text: str) -> list[int]:
  """Bytes of each array in an HLO type ("bf16[8,128]{1,0}" or a tuple of them)."""
  return [
      int(math.prod(int(d) for d in dims.split(",") if d) * _DTYPE_BYTES[dtype])
      for dtype, dims in _ARRAY.findall(type_text)
  ]


@dataclasses.dataclass
class Instruction:
  name: str
  type_text: str
  opcode: str
  rest: str  # operands and attributes

  def attribute(self, key: str) -> str | None:
    found = re.search(
        rf"\b{key}=(\{{[^=]*?\}}\}}|\{{[^}}]*\}}|[^,\s]+(?:\s*\{{[^}}]*\}})?)", self.rest
    )
    return found.group(1) if found else None


def _split_type(text: str) -> tuple[str, str]:
  """'(f32[2], bf16[3]) tuple(...)' -> ('(f32[2], bf16[3])', 'tuple(...)')."""
  if text.startswith("("):
    depth = 0
    for i, ch in enumerate(text):
      depth += {"(": 1, ")": -1}.get(ch, 0)
      if depth == 0:
        return text[: i + 1], text[i + 1 :].lstrip()
  head, _, tail = text.partition(" ")
  return head, tail


def parse_module(text: str) -> tuple[dict[str, list[Instruction]], str]:
  """(instructions per computation, name of the entry computation) of an HLO module's text."""
  computations: dict[str, list[Instruction]] = {}
  entry, current = "", None
  for line in text.splitlines():
    if current is None:
      header = _HEADER.match(line)
      if header and not line.startswith(" "):
        current = header.group(2)
        computations[current] = []
        if header.group(1):
          entry = current
      continue
    if line.strip() == "}":
      current = None
      continue
    found = _INSTRUCTION.match(line)
    if not found:
      continue
    type_text, rest = _split_type(found.group(2))
    opcode, _, rest = rest.partition("(")
    computations[current].append(Instruction(found.group(1), type_text, opcode.strip(), rest))
  if not entry:
    raise ValueError("no ENTRY computation in the HLO text")
  return computations, entry


def _trip_count(instruction: Instruction, computations: dict[str, list[Instruction]]) -> int:
  """Iterations of a `while`: the backend's known_trip_count, else `i < N` in its condition."""
  known = re.search(r'"known_trip_count":\{"n":"(\d+)"', instruction.rest)
  if known:
    return int(known.group(1))
  condition = instruction.attribute("condition")
  body = computations.get((condition or "").lstrip("%"), [])
  constants = {
      i.name: int(v.group(1))
      for i in body
      if i.opcode == "constant" and (v := re.match(r"\s*(-?\d+)\)", i.rest))
  }
  for i in body:
    if i.opcode == "compare" and "direction=LT" in i.rest:
      for name in re.findall(r"%([\w.\-]+)", i.rest.split(")")[0]):
        if name in constants:
          return constants[name]
  raise ValueError(f"cannot find the trip count of {instruction.name} (condition {condition})")


def multiplicities(computations: dict[str, list[Instruction]], entry: str) -> dict[str, int]:
  """How many times each computation runs per execution of the entry (loop trip counts in)."""
  callers: dict[str, list[tuple[str, int]]] = {}
  for name, instructions in computations.items():
    for i in instructions:
      trips = _trip_count(i, computations) if i.opcode == "while" else 1
      called = [(kind, target) for kind, target in _CALLS.findall(i.rest)]
      for group in _BRANCHES.findall(i.rest):
        called += [("branch", t.strip().lstrip("%")) for t in group.split(",") if t.strip()]
      for kind, target in called:
        callers.setdefault(target, []).append((name, trips if kind == "body" else 1))
  memo: dict[str, int] = {entry: 1}

  def count(name: str, seen: frozenset = frozenset()) -> int:
    if name not in memo:
      if name in seen:
        raise ValueError(f"recursive call graph at {name}")
      memo[name] = sum(count(c, seen | {name}) * f for c, f in callers.get(name, ()))
    return memo[name]

  return {name: count(name) for name in computations}


# --- collectives ----------------------------------------------------------------------------


@dataclasses.dataclass
class Collective:
  """One collective of the program, per chip: what it moves and among whom."""

  kind: str  # one of COLLECTIVES
  name: str
  computation: str
  count: int  # executions per step (the trip counts of the loops around it)
  buffer_bytes: int  # all-gather: the gathered result; reduce-scatter: the scattered input;
  #                    all-reduce / all-to-all / collective-permute: the buffer itself
  group_size: int
  groups: list[list[int]]  # device ids (positions in the program's device assignment)

  @property
  def ici_bytes(self) -> float:
    """Bytes one chip sends per execution under ring algorithms."""
    n = self.group_size
    if n <= 1:
      return 0.0
    share = (n - 1) / n
    if self.kind == "all-reduce":
      return 2 * share * self.buffer_bytes
    if self.kind == "collective-permute":
      return float(self.buffer_bytes)
    return share * self.buffer_bytes


def _iota_groups(text: str) -> list[list[int]] | None:
  """'[2,4]<=[8]' or '[2,2]<=[2,2]T(1,0)' (XLA's iota replica groups) -> explicit groups."""
  found = re.match(r"\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", text)
  if not found:
    return None
  shape = [int(x) for x in found.group(1).split(",")]
  dims = [int(x) for x in found.group(2).split(",")]
  ids = np.arange(math.prod(dims)).reshape(dims)
  if found.group(3):
    ids = ids.transpose([int(x) for x in found.group(3).split(",")])
  return ids.reshape(shape[0], -1).tolist()


def _mesh_groups(text: str) -> list[list[int]] | None:
  """ "mesh['a'=2,'b'=4] {'b'}": devices numbered row-major over the named axes; one group per
  combination of the axes not listed."""
  found = re.match(r"mesh\[([^\]]*)\]\s*\{([^}]*)\}", text)
  if not found:
    return None
  axes = re.findall(r"'([^']+)'=(\d+)", found.group(1))
  names, sizes = [a for a, _ in axes], [int(s) for _, s in axes]
  reduced = re.findall(r"'([^']+)'", found.group(2))
  ids = np.arange(math.prod(sizes)).reshape(sizes)
  order = [i for i, a in enumerate(names) if a not in reduced] + [names.index(a) for a in reduced]
  group = math.prod(sizes[names.index(a)] for a in reduced)
  return ids.transpose(order).reshape(-1, group).tolist()


def replica_groups(instruction: Instruction, num_devices: int) -> list[list[int]]:
  """The device groups of a collective; an empty list means all devices together."""
  found = re.search(
      r"replica_groups=(mesh\[[^\]]*\]\s*\{[^}]*\}|\[[\d,]*\]<=\[[^\]]*\](?:T\([\d,]+\))?|\{(?:\{[\d,]*\},?)*\})",
      instruction.rest,
  )
  if found:
    text = found.group(1)
    groups = _iota_groups(text) or _mesh_groups(text)
    if groups is None:
      groups = [[int(x) for x in g.split(",") if x] for g in re.findall(r"\{([\d,]*)\}", text)]
    groups = [g for g in groups if g]
    if groups:
      return groups
  return [list(range(num_devices))]


def _pairs(instruction: Instruction) -> list[tuple[int, int]]:
  found = re.search(r"source_target_pairs=\{((?:\{\d+,\d+\},?)*)\}", instruction.rest)
  return [
      (int(a), int(b)) for a, b in re.findall(r"\{(\d+),(\d+)\}", found.group(1) if found else "")
  ]


def collectives(hlo_text: str, num_devices: int) -> list[Collective]:
  """Every collective of an optimized HLO module, once per channel, with its execution count.

  The TPU compiler's async collective fusions clone one collective into the computations that
  start, continue and finish it, all with the same channel_id: it counts once. A collective
  inside a loop body counts its trip count times per step.
  """
  computations, entry = parse_module(hlo_text)
  times = multiplicities(computations, entry)
  seen: dict[str, Collective] = {}
  for computation, instructions in computations.items():
    for i in instructions:
      kind = i.opcode.removesuffix("-start")
      if kind not in COLLECTIVES or times[computation] == 0:
        continue
      arrays = array_bytes(i.type_text)
      if kind == "collective-permute":
        pairs = _pairs(i)
        groups = [[a, b] for a, b in pairs]
        moving = any(a != b for a, b in pairs)
        size = 2 if moving else 1
        buffer = max(arrays) if i.opcode.endswith("-start") else sum(arrays)
      else:
        groups = replica_groups(i, num_devices)
        size = len(groups[0])
        if kind == "all-gather":
          buffer = max(arrays)
        elif kind == "reduce-scatter":
          buffer = sum(arrays) * size
        else:  # all-reduce (possibly of a tuple of buffers), all-to-all
          buffer = sum(arrays)
      channel = i.attribute("channel_id")
      key = f"channel {channel}" if channel else f"{computation}/{i.name}"
      found = Collective(kind, i.name, computation, times[computation], buffer, size, groups)
      if key not in seen or seen[key].count < found.count:
        seen[key] = found
  return list(seen.values())


def summarize(items: Sequence[Collective]) -> dict[str, dict[str, float]]:
  """Per kind: executions per step and ICI bytes sent per chip per step."""
  out = {k: {"count": 0, "ici_bytes": 0.0} for k in COLLECTIVES}
  for c in items:
    out[c.kind]["count"] += c.count
    out[c.kind]["ici_bytes"] += c.count * c.ici_bytes
  return out


def while_loops(hlo_text: str) -> int:
  """`while` instructions in the module (0: cost_analysis counted every FLOP)."""
  computations, _ = parse_module(hlo_text)
  return sum(i.opcode == "while" for instructions in computations.values() for i in instructions)


# --- calibration: published MaxText runs ---------------------------------------------------


def maxtext_config(scale: int, vision_width: int) -> Any:
  """MaxText's `global_parameter_scale` model (configs/base.yml: embed 2048, 16 heads of 128,
  MLP 7168, 16 layers, SiLU-gated MLP, RMSNorm, sequential block, vocabulary 32000; the scale
  doubles heads+MLP, embed, layers in turn) as our decoder, with a one-layer, one-token vision
  tower of `vision_width` (divisible by the fsdp axis) whose FLOPs are negligible. Its 8 heads
  divide every `model` axis of the calibration meshes (1 to 8)."""
  from medpalm.models import configs  # pylint: disable=g-import-not-at-top

  log2 = int(math.log2(scale))
  base, rem = divmod(log2, 3)
  heads_scale, embed_scale, layer_scale = base + (rem > 0), base + (rem > 1), base
  heads = 16 * 2**heads_scale
  decoder = configs.DecoderConfig(
      num_layers=16 * 2**layer_scale,
      d_model=2048 * 2**embed_scale,
      num_heads=heads,
      head_dim=128,
      d_ff=7168 * 2**heads_scale,
      num_kv_heads=heads,
      parallel_block=False,
      gated_mlp=True,
      mlp_activation="silu",
      use_bias=False,
      norm="rmsnorm",
      vocab_size=32_000,
  )
  vision = configs.VisionConfig(
      num_layers=1,
      d_model=vision_width,
      num_heads=8,
      head_dim=vision_width // 8,
      d_ff=2 * vision_width,
      num_kv_heads=8,
      parallel_block=False,
      gated_mlp=False,
      mlp_activation="gelu",
      use_bias=False,
      image_size=14,
      patch_size=14,
  )
  return configs.MedPalmMConfig(f"maxtext_{scale}b", vision, decoder, image_token_id=3)


# Published MaxText training runs (MaxText/configs/v5e/README.md and the v5p table of its
# runtime-performance page; the scripts MaxText/configs/v5e/16b.sh and v5p/32b.sh give the
# settings): model scale, slice, mesh, per-chip batch, sequence, remat, published MFU.
CALIBRATION = {
    "maxtext_16b_v5e256": dict(
        scale=16, topology="v5e-256", mesh="fsdp=-1", per_chip_batch=6, length=2048,
        remat="full", published_mfu=0.6110,
    ),
    "maxtext_32b_v5p128": dict(
        scale=32, topology="v5p-128", mesh="fsdp=-1,model=4", per_chip_batch=7, length=2048,
        remat="dots_no_batch", published_mfu=0.7147,
    ),
}  # fmt: skip


def calibration_roofline(name: str, attention: str = "jax", log=print) -> dict[str, Any]:
  from launch import topologies  # pylint: disable=g-import-not-at-top

  c = CALIBRATION[name]
  topology = topologies.get_topology(c["topology"])
  mesh = {k: int(v) for k, v in (i.split("=") for i in c["mesh"].split(","))}
  fsdp = topology.num_chips // math.prod(v for k, v in mesh.items() if k != "fsdp" and v > 0)
  config = maxtext_config(c["scale"], vision_width=max(256, fsdp)).replace(
      dtype="bfloat16", remat_policy=c["remat"], dropout_rate=0.0
  )
  config = dataclasses.replace(
      config, decoder=dataclasses.replace(config.decoder, attention=attention)
  )
  result = plan_roofline(
      config,
      c["topology"],
      batch_size=c["per_chip_batch"] * topology.num_chips,
      # MaxText's loss (and its MFU's output layer) covers every position: here all but the
      # image placeholder and the first text token, the shortest prompt the model takes.
      inputs_length=config.num_image_tokens + 1,
      targets_length=c["length"] - config.num_image_tokens - 1,
      mesh=c["mesh"],
      log=log,
  )
  result["calibration"] = {**c, "name": name}
  return result


# --- the roofline ---------------------------------------------------------------------------


def links_used(group: Sequence[int], coords: Sequence[Sequence[int]], ports: int) -> int:
  """ICI links one chip can drive for a ring over `group`: two per torus axis the group spans."""
  if len(group) <= 1:
    return 0
  spanned = sum(len({tuple(coords[d])[axis] for d in group}) > 1 for axis in range(len(coords[0])))
  return max(2, min(ports, 2 * spanned))


@dataclasses.dataclass
class Terms:
  """Per-chip totals of one step: FLOPs, HBM bytes, ICI seconds per collective kind."""

  flops: float
  hbm_bytes: float
  ici_seconds: dict[str, float]
  ici_bytes: dict[str, float]
  counts: dict[str, float]
  memory: dict[str, float]  # memory_analysis: argument / output / temp / alias bytes, total

  def __add__(self, other: "Terms") -> "Terms":
    return self.scaled(1.0, other, 1.0)

  def scaled(self, a: float, other: "Terms", b: float) -> "Terms":
    """a * self + b * other, term by term."""
    mix = lambda x, y: {k: a * x[k] + b * y[k] for k in x}
    return Terms(
        a * self.flops + b * other.flops,
        a * self.hbm_bytes + b * other.hbm_bytes,
        mix(self.ici_seconds, other.ici_seconds),
        mix(self.ici_bytes, other.ici_bytes),
        mix(self.counts, other.counts),
        mix(self.memory, other.memory),
    )


def program_terms(compiled: Any, hlo_text: str, devices: Sequence[Any], gen: Any) -> Terms:
  """Terms of one compiled program on `devices` (its device assignment, in order)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  coords = [tuple(getattr(d, "coords", (i,))) for i, d in enumerate(devices)]
  seconds = {k: 0.0 for k in COLLECTIVES}
  sent = {k: 0.0 for k in COLLECTIVES}
  counts = {k: 0.0 for k in COLLECTIVES}
  for c in collectives(hlo_text, len(devices)):
    links = links_used(c.groups[0], coords, gen.ici_ports)
    if links:
      seconds[c.kind] += c.count * c.ici_bytes / (links * gen.ici_link_bandwidth)
    sent[c.kind] += c.count * c.ici_bytes
    counts[c.kind] += c.count
  m = compiled.memory_analysis()
  memory = {
      "argument": float(m.argument_size_in_bytes),
      "output": float(m.output_size_in_bytes),
      "temp": float(m.temp_size_in_bytes),
      "alias": float(m.alias_size_in_bytes),
  }
  memory["total"] = memory["argument"] + memory["output"] + memory["temp"] - memory["alias"]
  return Terms(float(cost["flops"]), float(cost["bytes accessed"]), seconds, sent, counts, memory)


def bound(terms: Terms, gen: Any, model_flops_per_chip: float) -> dict[str, Any]:
  """Seconds of each term, the step-time lower bounds with and without overlap, MFU bounds."""
  compute = terms.flops / gen.peak_bf16_flops
  memory = terms.hbm_bytes / gen.hbm_bandwidth
  communication = sum(terms.ici_seconds.values())
  parts = {"compute": compute, "memory": memory, "communication": communication}
  overlapped, serial = max(parts.values()), sum(parts.values())
  ideal = model_flops_per_chip / gen.peak_bf16_flops
  return {
      "seconds": parts,
      "bound_by": max(parts, key=parts.get),
      "step_seconds_overlapped": overlapped,
      "step_seconds_serial": serial,
      "mfu_bound": ideal / overlapped,
      "mfu_no_overlap": ideal / serial,
      "flops_per_chip": terms.flops,
      "model_flops_per_chip": model_flops_per_chip,
      "hbm_bytes_per_chip": terms.hbm_bytes,
      "collectives": {
          k: {"count": terms.counts[k], "ici_bytes": terms.ici_bytes[k], "seconds": s}
          for k, s in terms.ici_seconds.items()
      },
  }


def extrapolate(
    points: dict[tuple[int, int], Terms], depth: tuple[int, int]
) -> tuple[Terms, dict[str, Terms]]:
  """Terms at `depth` = (vision, decoder layers) from compiles at (1,1), (2,1), (1,2) ((2,1) is
  not needed when the vision tower has one layer).

  Returns (terms at depth, {"base", "vision_layer", "decoder_layer"}).
  """
  one = points[(1, 1)]
  vision = points[(2, 1)].scaled(1.0, one, -1.0) if (2, 1) in points else one.scaled(0, one, 0)
  decoder = points[(1, 2)].scaled(1.0, one, -1.0)
  full = one.scaled(1.0, vision, depth[0] - 1).scaled(1.0, decoder, depth[1] - 1)
  base = one.scaled(1.0, vision, -1.0).scaled(1.0, decoder, -1.0)
  return full, {"base": base, "vision_layer": vision, "decoder_layer": decoder}


def _terms_json(t: Terms) -> dict:
  return dataclasses.asdict(t)


def plan_roofline(
    config: Any,
    topology_name: str,
    *,
    batch_size: int,
    inputs_length: int,
    targets_length: int,
    mesh: str,
    compiler_options: dict[str, Any] | None = None,
    num_microbatches: int | None = None,
    log=print,
) -> dict[str, Any]:
  """The train-step roofline of `config` (full depth) on a slice, from three shallow compiles.

  `config`: a MedPalmMConfig with its runtime switches (dtype, remat, dropout, attention) set.
  """
  import time  # pylint: disable=g-import-not-at-top

  from launch import aot_compile, topologies  # pylint: disable=g-import-not-at-top

  topology = topologies.get_topology(topology_name)
  options = {**NO_WINDOWED_EINSUMS, **(compiler_options or {})}
  depth = (config.vision.num_layers, config.decoder.num_layers)
  points, compiles = {}, {}
  for layers in ((1, 1), (2, 1), (1, 2)) if depth[0] > 1 else ((1, 1), (1, 2)):
    shallow = dataclasses.replace(
        config,
        vision=dataclasses.replace(config.vision, num_layers=layers[0], scan_layers=False),
        decoder=dataclasses.replace(config.decoder, num_layers=layers[1], scan_layers=False),
    )
    plan = aot_compile.make_plan(
        shallow,
        topology,
        batch_size=batch_size,
        inputs_length=inputs_length,
        targets_length=targets_length,
        mesh_sizes=aot_compile._parse_mesh(mesh),  # pylint: disable=protected-access
        num_microbatches=num_microbatches,
    )
    start = time.perf_counter()
    _, compiled = aot_compile.lower_and_compile(plan, "train", options)
    text = compiled.as_text()
    loops = while_loops(text)
    if loops and not num_microbatches:
      raise RuntimeError(
          f"{layers} layers still compile to {loops} while loops; cost_analysis would "
          "undercount them"
      )
    points[layers] = program_terms(compiled, text, list(plan.mesh.devices.flat), topology.gen)
    compiles[f"{layers[0]},{layers[1]}"] = {
        "seconds": time.perf_counter() - start,
        "while_loops": loops,
        "terms": _terms_json(points[layers]),
    }
    log(f"  compiled {layers} layers in {time.perf_counter() - start:.0f} s")
  full, parts = extrapolate(points, depth)
  full_plan = aot_compile.make_plan(
      config,
      topology,
      batch_size=batch_size,
      inputs_length=inputs_length,
      targets_length=targets_length,
      mesh_sizes=aot_compile._parse_mesh(mesh),  # pylint: disable=protected-access
      num_microbatches=num_microbatches,
  )
  model = aot_compile.model_flops(full_plan, "train") / topology.num_chips
  return {
      "config": config.name,
      "topology": topology.name,
      "chips": topology.num_chips,
      "mesh": dict(full_plan.mesh.shape),
      "batch_size": batch_size,
      "length": inputs_length + targets_length,
      "remat": config.decoder.remat_policy,
      "attention": config.decoder.attention,
      "num_microbatches": num_microbatches,
      "depth": list(depth),
      "compiler_options": options,
      "compiles": compiles,
      "per_layer": {k: _terms_json(v) for k, v in parts.items()},
      "roofline": bound(full, topology.gen, model),
  }


def format_roofline(r: dict[str, Any]) -> str:
  b = r["roofline"]
  s = b["seconds"]
  lines = [
      f"{r['config']} on {r['topology']} mesh {r['mesh']} batch {r['batch_size']} x "
      f"{r['length']} remat {r['remat']} attention {r['attention']}",
      f"  per chip: {b['flops_per_chip'] / 1e12:.1f} TFLOP compiled ({b['model_flops_per_chip'] / 1e12:.1f} "
      f"model), {b['hbm_bytes_per_chip'] / 1e9:.1f} GB HBM traffic",
      f"  compute {s['compute']:.3f} s, memory {s['memory']:.3f} s, communication "
      f"{s['communication']:.3f} s -> step >= {b['step_seconds_overlapped']:.3f} s (overlap), "
      f"{b['step_seconds_serial']:.3f} s (none)",
      f"  MFU <= {100 * b['mfu_bound']:.1f} % (bound by {b['bound_by']}); "
      f"{100 * b['mfu_no_overlap']:.1f} % without overlap",
  ]
  for kind, c in b["collectives"].items():
    if c["count"]:
      lines.append(
          f"    {kind:<19} x{c['count']:>6.0f}  {c['ici_bytes'] / 1e9:8.2f} GB sent  "
          f"{c['seconds']:.3f} s"
      )
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  from launch import aot_compile  # pylint: disable=g-import-not-at-top
  from medpalm.models import configs  # pylint: disable=g-import-not-at-top

  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", choices=list(configs.CONFIGS))
  parser.add_argument(
      "--calibration", choices=list(CALIBRATION), help="a published MaxText run instead"
  )
  parser.add_argument("--topology")
  parser.add_argument("--batch_size", type=int)
  parser.add_argument("--inputs_length", type=int, default=966)
  parser.add_argument("--targets_length", type=int, default=256)
  parser.add_argument("--mesh", default="fsdp=-1")
  parser.add_argument("--remat", default="full", choices=configs.REMAT_POLICIES)
  parser.add_argument("--attention", default="jax", choices=configs.ATTENTION_IMPLEMENTATIONS)
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--dropout_rate", type=float, default=0.1)
  parser.add_argument("--num_microbatches", type=int, default=None)
  parser.add_argument("--compiler_option", action="append", default=[], metavar="NAME=VALUE")
  parser.add_argument("--json", action="store_true")
  parser.add_argument("--out", default=None, help="also write the JSON here")
  args = parser.parse_args(argv)
  log = lambda m: print(m, file=sys.stderr)
  if args.calibration:
    result = calibration_roofline(args.calibration, args.attention, log=log)
    published = result["calibration"]["published_mfu"]
    print(json.dumps(result, indent=1) if args.json else format_roofline(result))
    print(f"published MFU {100 * published:.2f} %")
    _write(args.out, result)
    return 0
  if not (args.config and args.topology and args.batch_size):
    parser.error("--config, --topology and --batch_size are required (or --calibration)")
  config = configs.get_config(args.config).replace(
      dtype=args.dtype, remat_policy=args.remat, dropout_rate=args.dropout_rate
  )
  config = dataclasses.replace(
      config,
      vision=dataclasses.replace(config.vision, attention=args.attention),
      decoder=dataclasses.replace(config.decoder, attention=args.attention),
  )
  result = plan_roofline(
      config,
      args.topology,
      batch_size=args.batch_size,
      inputs_length=args.inputs_length,
      targets_length=args.targets_length,
      mesh=args.mesh,
      compiler_options=dict(aot_compile._parse_option(o) for o in args.compiler_option),  # pylint: disable=protected-access
      num_microbatches=args.num_microbatches,
      log=log,
  )
  print(json.dumps(result, indent=1) if args.json else format_roofline(result))
  _write(args.out, result)
  return 0


def _write(path: str | None, result: dict) -> None:
  if path:
    with open(path, "w", encoding="utf-8") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  sys.exit(main())
