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

A TPU core runs its fusions one after another; only DMAs and asynchronous collectives run
beside them. So the estimate (`per_op`) sums, over the instructions of the optimized HLO, each
one's own bottleneck, max(its matmul FLOPs / peak, its HBM bytes / HBM bandwidth), HBM bytes
being its operands and results outside on-chip memory; then

  per-op step = max(that sum, communication)        (collectives hidden behind the fusions)

and MFU estimate = model FLOPs / (chips x peak x per-op step), with the serial variant
(sum + communication) beside it. (XLA's own per-instruction sum, cost_analysis'
`optimal_seconds`, comes back negative for full-size TPU programs, so it is not used.)

`cost_analysis` counts a `while` body once whatever its trip count, so layers under `nn.scan`
and the loops the TPU partitioner makes of big sharded matmuls ("windowed einsums") hide their
FLOPs. The roofline of a full-size model is therefore taken from shallow copies compiled
unrolled with windowed einsums off (the loops still left, the microbatches' accumulation or
splash attention's loop over examples, have their FLOPs and bytes from the per-op walk, which
counts trip counts): at depths
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
_INSTRUCTION = re.compile(r"^\s*(ROOT\s+)?%?([^\s=]+)\s*=\s*(.*)$")
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
  is_root: bool = False

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
      # An attribute that spans lines (a Mosaic kernel's metadata) continues the instruction.
      if computations[current] and line.strip():
        computations[current][-1].rest += " " + line.strip()
      continue
    type_text, rest = _split_type(found.group(3))
    opcode, _, rest = rest.partition("(")
    computations[current].append(
        Instruction(found.group(2), type_text, opcode.strip(), rest, bool(found.group(1)))
    )
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


# --- per-instruction time ----------------------------------------------------------------

_LAID_OUT = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([\d,]*)\](\{[^}]*\})?")
# Instructions that move no data and compute nothing, or whose time is counted elsewhere: async
# copies (prefetches into on-chip memory, beside the fusions) and collectives (ICI, above).
_FREE = {
    "parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all",
    "add-dependency", "opt-barrier", "partition-id", "replica-id", "while", "conditional", "call",
    "copy-start", "copy-done", "slice-start", "slice-done", "send", "send-done", "recv",
    "recv-done",
}  # fmt: skip
_EXECUTED_EDGES = re.compile(r"\b(body|condition|true_computation|false_computation)=%?([\w.\-]+)")


def hbm_bytes(type_text: str) -> int:
  """Bytes of the arrays of an HLO type that live in HBM: a layout's `S(n)`, n >= 1, puts an
  array in on-chip memory (VMEM, SMEM), whose traffic costs no HBM bandwidth."""
  total = 0
  for dtype, dims, layout in _LAID_OUT.findall(type_text):
    space = re.search(r"S\((\d+)\)", layout or "")
    if space and int(space.group(1)) > 0:
      continue
    total += int(math.prod(int(d) for d in dims.split(",") if d) * _DTYPE_BYTES[dtype])
  return total


def _operands(instruction: Instruction) -> list[str]:
  """Names of an instruction's operands (the text up to the parenthesis closing its list)."""
  depth = 1
  for end, ch in enumerate(instruction.rest):
    depth += {"(": 1, ")": -1}.get(ch, 0)
    if depth == 0:
      return re.findall(r"%([\w.\-]+)", instruction.rest[:end])
  return re.findall(r"%([\w.\-]+)", instruction.rest)


def _dims(type_text: str) -> list[int]:
  found = _ARRAY.search(type_text)
  return [int(d) for d in found.group(2).split(",") if d] if found else []


def _valid_positions(size_in: int, size_out: int, kernel: int, window: dict[str, int]) -> int:
  """(output, kernel) position pairs of one spatial dimension that read an input element."""
  stride, pad = window["stride"], window["pad_low"]
  base, dilation = window["lhs_dilate"], window["rhs_dilate"]
  count = 0
  for k in range(kernel):
    for o in range(size_out):
      undilated = o * stride - pad + k * dilation
      if undilated % base == 0 and 0 <= undilated // base < size_in:
        count += 1
  return count


def _window(text: str | None, rank: int) -> list[dict[str, int]]:
  """window={size=3x3 stride=2x2 pad=1_1x1_1 lhs_dilate=.. rhs_dilate=..} per spatial dim."""
  fields = dict(re.findall(r"(\w+)=([\dx_\-]+)", text or ""))
  out = []
  for d in range(rank):
    get = lambda key, default: int(fields[key].split("x")[d]) if key in fields else default
    pad = fields["pad"].split("x")[d].split("_") if "pad" in fields else ["0", "0"]
    out.append(
        dict(stride=get("stride", 1), pad_low=int(pad[0]), lhs_dilate=get("lhs_dilate", 1),
             rhs_dilate=get("rhs_dilate", 1))
    )  # fmt: skip
  return out


def matmul_flops(instruction: Instruction, types: dict[str, str]) -> float:
  """FLOPs of a `dot` or `convolution` (2 per multiply-add, as XLA's cost analysis counts).

  dot: 2 x output elements x contracted size. convolution: 2 x (input features / feature
  groups) x output features x (batch / batch groups) x the valid (output, kernel) position
  pairs of each spatial dimension: the TPU compiler writes matmuls as convolutions.
  """
  operands = _operands(instruction)
  out = _dims(instruction.type_text)
  lhs, rhs = (_dims(types.get(o, "")) for o in operands[:2])
  if instruction.opcode == "dot":
    contracting = instruction.attribute("lhs_contracting_dims") or "{}"
    reduced = math.prod(lhs[int(d)] for d in re.findall(r"\d+", contracting))
    return 2.0 * math.prod(out) * reduced
  labels = re.match(r"(\w+)_(\w+)->(\w+)", instruction.attribute("dim_labels") or "")
  if not labels:
    raise ValueError(f"convolution {instruction.name} has no dim_labels")
  lhs_l, rhs_l, out_l = labels.groups()
  groups = lambda key: int(instruction.attribute(key) or 1)
  spatial = sorted(c for c in lhs_l if c.isdigit())
  windows = _window(instruction.attribute("window"), len(spatial))
  positions = math.prod(
      _valid_positions(lhs[lhs_l.index(c)], out[out_l.index(c)], rhs[rhs_l.index(c)], w)
      for c, w in zip(spatial, windows)
  )
  fma = (
      lhs[lhs_l.index("f")]
      // groups("feature_group_count")
      * out[out_l.index("f")]
      * (lhs[lhs_l.index("b")] // groups("batch_group_count"))
      * positions
  )
  return 2.0 * fma


_SPLASH_PHASE = re.compile(r"splash_m[hq]a_(fwd|dq|dkv)")
# [block_q, block_kv] matmuls per grid step of each splash attention kernel: the forward's Q·Kᵀ
# and P·V; the dq kernel recomputes Q·Kᵀ, then dO·Vᵀ and dS·K; the dkv kernel recomputes Q·Kᵀ,
# then Pᵀ·dO, dO·Vᵀ and dSᵀ·Q (and dS·K when it is the fused backward, which writes dq too).
_SPLASH_MATMULS = {"fwd": 2, "dq": 3, "dkv": 4}
_SPLASH_DEFAULT_BLOCK = 128  # the kernel's default block size, when the metadata has none


def splash_work(instruction: Instruction, types: dict[str, str]) -> tuple[float, float] | None:
  """(FLOPs, HBM bytes beyond its operands and results) of one call of a splash attention
  kernel, from its name, operands and block sizes; None for any other instruction.

  Operands are [..., heads, length, head_dim] (queries first, then keys; leading dims are a
  batch that `vmap` gave the kernel, e.g. the ViT's static-mask call): FLOPs are 2 per
  multiply-add over the whole padded block grid, an upper bound, since the kernel skips fully
  masked blocks at run time. The kernel streams one side's blocks past each block of the other:
  keys and values past every query block (forward, dq), queries and output gradients past every
  key block (dkv), so each is read once per outer block, not once.
  """
  named = _SPLASH_PHASE.search(instruction.rest)  # the kernel's name, in its metadata
  if instruction.opcode != "custom-call" or "tpu_custom_call" not in instruction.rest or not named:
    return None
  phase = named.group(1)
  floats = [
      (dtype, [int(d) for d in dims.split(",") if d])
      for o in _operands(instruction)
      for dtype, dims in _ARRAY.findall(types.get(o, ""))[:1]
      if dtype in ("bf16", "f16", "f32") and dims.count(",") >= 2
  ]
  if len(floats) < 2:
    return None
  (q_dtype, q_dims), (_, k_dims) = floats[:2]
  batch, (heads, q_len, head_dim), kv_len = math.prod(q_dims[:-3]), q_dims[-3:], k_dims[-2]
  matmuls = _SPLASH_MATMULS[phase]
  gradients = [  # results shaped like the queries or keys (not the kernel's scratch)
      dims
      for _, dims in _ARRAY.findall(instruction.type_text)
      if [int(d) for d in dims.split(",") if d] in (q_dims, k_dims)
  ]
  if phase == "dkv" and len(gradients) >= 3:  # dq beside dk, dv: the fused backward
    matmuls += 1
  flops = matmuls * 2.0 * batch * heads * q_len * kv_len * head_dim

  def block(key: str) -> int:
    found = re.search(rf'\\?"{key}\\?":\s*(\d+)', instruction.rest)
    return int(found.group(1)) if found else _SPLASH_DEFAULT_BLOCK

  if phase == "dkv":  # queries and output gradients, once per key block
    outer = math.ceil(kv_len / block("block_kv_dkv"))
    streamed = q_len
  else:  # keys and values, once per query block
    outer = math.ceil(q_len / block("block_q" if phase == "fwd" else "block_q_dq"))
    streamed = kv_len
  reread = 2 * batch * heads * (outer - 1) * streamed * head_dim * _DTYPE_BYTES[q_dtype]
  return flops, float(reread)


def _array_size(type_text: str) -> int:
  """Bytes of the (first) array of a type, wherever it lives."""
  return (array_bytes(type_text) or [0])[0]


def _fusion_hbm_bytes(
    fusion: Instruction, fused: list[Instruction], types: dict[str, str]
) -> float:
  """HBM bytes a fusion moves, as XLA's cost analysis reads fusions: an operand read only
  through slices costs the slices; one updated in place (`dynamic-update-slice`, operand 0)
  costs nothing to read and only the update to write; a buffer the fusion only passes through
  (the compiler's async collective fusions carry their collective's buffers this way) and a
  collective's result cost nothing here; anything else reads the whole operand."""
  users: dict[str, list[tuple[Instruction, int]]] = {}
  for i in fused:
    for position, name in enumerate(_operands(i)):
      users.setdefault(name, []).append((i, position))

  def read(name: str, whole: int) -> int:
    total = 0
    for user, position in users.get(name, ()):
      if user.opcode in ("slice", "dynamic-slice") and position == 0:
        total += _array_size(user.type_text)
      elif user.opcode == "dynamic-update-slice" and position == 0:
        continue  # aliased with the result: updated in place
      elif user.opcode == "bitcast":
        total += read(user.name, whole)
      elif user.opcode == "tuple" and user.is_root:
        continue  # passed through untouched (an async collective's buffers)
      else:
        return whole
    return min(total, whole)

  params = {
      int(m.group(1)): i.name
      for i in fused
      if i.opcode == "parameter" and (m := re.match(r"\s*(\d+)\)", i.rest))
  }
  moved = 0
  for k, name in enumerate(_operands(fusion)):
    whole = hbm_bytes(types.get(name, ""))
    moved += read(params[k], whole) if whole and k in params else whole
  root = next((i for i in fused if i.is_root), None)
  by_name = {i.name: i for i in fused}
  outputs = [by_name.get(n) for n in _operands(root)] if root and root.opcode == "tuple" else [root]
  laid_out = _LAID_OUT.findall(fusion.type_text)
  if len(outputs) != len(laid_out):
    return moved + hbm_bytes(fusion.type_text)
  for out, (dtype, dims, layout) in zip(outputs, laid_out):
    written = hbm_bytes(f"{dtype}[{dims}]{layout}")
    if out is not None and (
        out.opcode == "parameter" or out.opcode.removesuffix("-start") in COLLECTIVES
    ):
      written = 0  # a buffer passed through, or a collective's result (the ICI term)
    elif written and out is not None and out.opcode == "dynamic-update-slice":
      written = _array_size(types.get(_operands(out)[1], ""))
    moved += written
  return moved


@dataclasses.dataclass
class PerOp:
  """Per chip, one step: each top-level instruction (fusion, copy, custom call, ...) timed as
  max(its matmul FLOPs / peak, its HBM bytes / bandwidth), summed."""

  seconds: float
  matmul_flops: float
  hbm_bytes: float
  compute_bound_seconds: float  # the part of `seconds` spent in compute-bound instructions
  async_copy_bytes: float  # HBM <-> on-chip prefetches (copy-start), which run beside them
  # Executions of Mosaic kernels (`tpu_custom_call`) other than splash attention's: their HBM
  # traffic is counted, their FLOPs are not (invisible to XLA's cost analysis too), so a program
  # with any is estimated too fast. Splash kernels are counted (`splash_work`).
  kernel_calls: float = 0.0
  splash_calls: float = 0.0


def per_op(hlo_text: str, peak_flops: float, hbm_bandwidth: float) -> PerOp:
  """The time of a step whose instructions run one after another, each at its own bottleneck.

  A TPU core runs its fusions in sequence; only DMAs and asynchronous collectives run beside
  them. An instruction's HBM traffic is its operands and results (what stays inside a fusion
  never reaches HBM), less what lives in on-chip memory; its FLOPs are those of the matmuls it
  holds (elementwise work runs on the vector units, hidden under its memory traffic).
  Collectives and async copies are left out: they are the communication term. A fusion that
  holds a collective beside its matmul (the compiler's async collective fusions) counts here
  for its matmul and its HBM traffic, and its collective there.
  """
  computations, entry = parse_module(hlo_text)
  times = multiplicities(computations, entry)
  types = {i.name: i.type_text for body in computations.values() for i in body}
  executed, todo = set(), [entry]
  while todo:  # entry and the loop bodies / branches it runs (not fused or reducer bodies)
    name = todo.pop()
    if name in executed or name not in computations:
      continue
    executed.add(name)
    for i in computations[name]:
      todo += [target for _, target in _EXECUTED_EDGES.findall(i.rest)]
      todo += [t.strip().lstrip("%") for g in _BRANCHES.findall(i.rest) for t in g.split(",")]
      if i.opcode == "call":
        todo.append((i.attribute("to_apply") or "").lstrip("%"))

  result = PerOp(0.0, 0.0, 0.0, 0.0, 0.0)

  def work_of(i: Instruction, n: float) -> tuple[float, float]:
    """(matmul FLOPs, HBM bytes beyond operands and results) of an instruction, fusions
    included; counts the Mosaic kernels it runs, `n` times."""
    if i.opcode in ("dot", "convolution"):
      return matmul_flops(i, types), 0.0
    if i.opcode == "fusion":
      inner = [
          work_of(f, n) for f in computations.get((i.attribute("calls") or "").lstrip("%"), ())
      ]
      return sum(f for f, _ in inner), sum(b for _, b in inner)
    if i.opcode == "custom-call" and "tpu_custom_call" in i.rest:
      splash = splash_work(i, types)
      if splash is None:
        result.kernel_calls += n
        return 0.0, 0.0
      result.splash_calls += n
      return splash
    return 0.0, 0.0

  for name in executed:
    for i in computations[name]:
      if i.opcode == "copy-start":
        result.async_copy_bytes += times[name] * max(array_bytes(i.type_text) or [0])
      kind = i.opcode.removesuffix("-start").removesuffix("-done")
      if i.opcode in _FREE or kind in COLLECTIVES or i.opcode.endswith("-done"):
        continue
      called = (i.attribute("calls") or "").lstrip("%")
      flops, streamed = work_of(i, times[name])
      if i.opcode == "fusion" and called in computations:
        moved = _fusion_hbm_bytes(i, computations[called], types)
      else:
        moved = hbm_bytes(i.type_text) + sum(hbm_bytes(types.get(o, "")) for o in _operands(i))
      moved += streamed
      compute, memory = flops / peak_flops, moved / hbm_bandwidth
      n = times[name]
      result.seconds += n * max(compute, memory)
      result.matmul_flops += n * flops
      result.hbm_bytes += n * moved
      result.compute_bound_seconds += n * compute if compute >= memory else 0.0
  return result


# --- calibration: published MaxText and PaLM runs -------------------------------------------


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
  return configs.MedPalmMConfig(
      f"maxtext_{scale}b", probe_vision(vision_width, heads=8), decoder, image_token_id=3
  )


def probe_vision(width: int, heads: int) -> Any:
  """A one-layer vision tower that turns the image into one token: its FLOPs are negligible,
  and `width` (divisible by the fsdp axis) and `heads` (by the model axis) let it shard on any
  calibration mesh."""
  from medpalm.models import configs  # pylint: disable=g-import-not-at-top

  return configs.VisionConfig(
      num_layers=1,
      d_model=width,
      num_heads=heads,
      head_dim=width // heads,
      d_ff=2 * width,
      num_kv_heads=heads,
      parallel_block=False,
      gated_mlp=False,
      mlp_activation="gelu",
      use_bias=False,
      image_size=14,
      patch_size=14,
  )


def palm_config(vision_width: int) -> Any:
  """PaLM 540B as our decoder (the `562b` config's: 118 parallel blocks, d_model 18432, 48 query
  heads of 256 and one key/value head, SwiGLU MLP of 73728, shared embeddings), with the probe
  vision tower. Its 256 000-token vocabulary is padded to 256 008 (0.003 % more head FLOPs) so
  that it splits over PaLM's 12-way model axis."""
  from medpalm.models import configs  # pylint: disable=g-import-not-at-top

  decoder = dataclasses.replace(configs.get_config("562b").decoder, vocab_size=256_008)
  width = math.lcm(vision_width, 12 * 64)  # 12 heads of 64 (and an MLP of 2 x) split 12 ways
  return configs.MedPalmMConfig(
      "palm_540b", probe_vision(width, heads=12), decoder, image_token_id=3
  )


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
    # PaLM 540B (PaLM paper, section 4 and its MFU table): 46.2 % MFU on two TPU v4 pods of
    # 3072 chips, each pod 256-way fully sharded data parallel x 12-way model parallel over
    # half of the 2048 x 2048-token batch, with rematerialisation (hardware FLOPs 1.25x the
    # model's, as remat `full` compiles here). The two pods exchange gradients over the
    # data-centre network, which this estimator does not model: the paper measured the pair at
    # 1.95x one pod's throughput, so one pod's program ran at 46.2 % / (1.95 / 2) = 47.4 %,
    # the figure the one-pod estimate is compared with.
    "palm_540b_v4_6144": dict(
        model="palm_540b", topology="v4:12x16x16", mesh="fsdp=256,model=12", batch_size=1024,
        length=2048, remat="full", published_mfu=0.462, published_mfu_one_slice=0.462 / 0.975,
    ),
}  # fmt: skip


def calibration_model(c: dict[str, Any], vision_width: int) -> Any:
  """The decoder of a published run, with the probe vision tower."""
  if c.get("model") == "palm_540b":
    return palm_config(vision_width)
  return maxtext_config(c["scale"], vision_width)


def calibration_roofline(
    name: str, attention: str = "jax", hlo_dir: str | None = None, log=print
) -> dict[str, Any]:
  from launch import topologies  # pylint: disable=g-import-not-at-top

  c = CALIBRATION[name]
  topology = topologies.get_topology(c["topology"])
  mesh = {k: int(v) for k, v in (i.split("=") for i in c["mesh"].split(","))}
  fsdp = topology.num_chips // math.prod(v for k, v in mesh.items() if k != "fsdp" and v > 0)
  config = calibration_model(c, vision_width=max(256, fsdp)).replace(
      dtype="bfloat16", remat_policy=c["remat"], dropout_rate=0.0
  )
  config = dataclasses.replace(
      config, decoder=dataclasses.replace(config.decoder, attention=attention)
  )
  result = plan_roofline(
      config,
      c["topology"],
      batch_size=c.get("batch_size") or c["per_chip_batch"] * topology.num_chips,
      # A language model's loss (and its MFU's output layer) covers every position: here all
      # but the image placeholder and the first text token, the shortest prompt we take.
      inputs_length=config.num_image_tokens + 1,
      targets_length=c["length"] - config.num_image_tokens - 1,
      mesh=c["mesh"],
      hlo_dir=hlo_dir,
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
  per_op: dict[str, float] = dataclasses.field(default_factory=dict)  # PerOp's fields

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
        mix(self.per_op, other.per_op),
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
  found = per_op(hlo_text, gen.peak_bf16_flops, gen.hbm_bandwidth)
  m = compiled.memory_analysis()
  memory = {
      "argument": float(m.argument_size_in_bytes),
      "output": float(m.output_size_in_bytes),
      "temp": float(m.temp_size_in_bytes),
      "alias": float(m.alias_size_in_bytes),
  }
  memory["total"] = memory["argument"] + memory["output"] + memory["temp"] - memory["alias"]
  terms = Terms(
      float(cost["flops"]),
      float(cost["bytes accessed"]),
      seconds,
      sent,
      counts,
      memory,
      dataclasses.asdict(found),
  )
  return _with_walk_counts(terms, while_loops(hlo_text))


def _with_walk_counts(terms: Terms, loops: int) -> Terms:
  """`cost_analysis` misses two kinds of work that the per-op walk counts: a loop body's trips
  after the first (the microbatches' accumulation loop) and the FLOPs of splash attention's
  kernels. The compute term takes the larger of the two FLOP counts (the walk's are matmul FLOPs
  only); a program that keeps a loop takes its HBM bytes from the walk too (bytes outside
  on-chip memory)."""
  if not terms.per_op:
    return terms
  return dataclasses.replace(
      terms,
      flops=max(terms.flops, terms.per_op["matmul_flops"]),
      hbm_bytes=terms.per_op["hbm_bytes"] if loops else terms.hbm_bytes,
  )


def bound(terms: Terms, gen: Any, model_flops_per_chip: float) -> dict[str, Any]:
  """Seconds of each term, the step-time lower bounds with and without overlap, MFU bounds."""
  compute = terms.flops / gen.peak_bf16_flops
  memory = terms.hbm_bytes / gen.hbm_bandwidth
  communication = sum(terms.ici_seconds.values())
  parts = {"compute": compute, "memory": memory, "communication": communication}
  overlapped, serial = max(parts.values()), sum(parts.values())
  ideal = model_flops_per_chip / gen.peak_bf16_flops
  per_op_seconds = terms.per_op.get("seconds", 0.0)
  step_per_op = max(per_op_seconds, communication)
  # The calibrated estimate: all-reduces on the critical path, the other collectives hidden.
  # Tensor parallelism all-reduces activations between dependent matmuls, so nothing can run
  # beside them; FSDP's all-gathers of the next layer's weights can be prefetched. (These
  # programs also all-reduce weight gradients, which could overlap: counted, so the estimate
  # leans low for them.)
  step_estimate = max(per_op_seconds + terms.ici_seconds["all-reduce"], communication)
  return {
      "seconds": parts,
      "bound_by": max(parts, key=parts.get),
      "step_seconds_overlapped": overlapped,
      "step_seconds_serial": serial,
      "mfu_bound": ideal / overlapped,
      "mfu_no_overlap": ideal / serial,
      "per_op": terms.per_op,
      "step_seconds_per_op": step_per_op,
      "mfu_per_op": ideal / step_per_op if per_op_seconds else None,
      "mfu_per_op_serial": ideal / (per_op_seconds + communication) if per_op_seconds else None,
      "step_seconds_estimate": step_estimate,
      "mfu_estimate": ideal / step_estimate if per_op_seconds else None,
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


def rebound(result: dict[str, Any], gen: Any, hlo_dir: str | None = None) -> dict[str, Any]:
  """A saved `plan_roofline` result with its roofline recomputed from the stored terms of its
  shallow compiles (no compile): what the current estimator says of an earlier run. With the
  run's `hlo_dir`, the per-op walk is redone on the kept HLO too."""
  import gzip  # pylint: disable=g-import-not-at-top

  points, compiles = {}, {}
  for k, c in result["compiles"].items():
    terms = Terms(**c["terms"])
    hlo = hlo_dir and os.path.join(hlo_dir, f"{k.replace(',', '_')}.hlo.gz")
    if hlo and os.path.exists(hlo):
      with gzip.open(hlo, "rt", encoding="utf-8") as f:
        found = per_op(f.read(), gen.peak_bf16_flops, gen.hbm_bandwidth)
      terms = dataclasses.replace(terms, per_op=dataclasses.asdict(found))
    compiles[k] = {**c, "terms": _terms_json(terms)}
    points[tuple(int(n) for n in k.split(","))] = _with_walk_counts(terms, c["while_loops"])
  full, _ = extrapolate(points, tuple(result["depth"]))
  roofline = bound(full, gen, result["roofline"]["model_flops_per_chip"])
  return {**result, "compiles": compiles, "roofline": roofline}


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
    hlo_dir: str | None = None,
    log=print,
) -> dict[str, Any]:
  """The train-step roofline of `config` (full depth) on a slice, from three shallow compiles.

  `config`: a MedPalmMConfig with its runtime switches (dtype, remat, dropout, attention) set.
  `hlo_dir`: where to keep each shallow compile's optimized HLO (`<vision>_<decoder>.hlo.gz`),
  so the per-op estimate can be recomputed without compiling again.
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
    if hlo_dir:
      aot_compile._write_text(f"{hlo_dir}/{layers[0]}_{layers[1]}.hlo.gz", text)  # pylint: disable=protected-access
    # Loops left (the microbatches' accumulation, splash attention's loop over examples) are
    # counted by the per-op walk, trip counts read from the program (`_with_walk_counts`).
    loops = while_loops(text)
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


@dataclasses.dataclass(frozen=True)
class Candidate:
  """One plan of a sharding search: a mesh ("fsdp=16,model=4"), remat policy, attention."""

  mesh: str
  remat: str
  attention: str = "jax"
  num_microbatches: int | None = None

  @property
  def label(self) -> str:
    micro = f" x{self.num_microbatches} microbatches" if self.num_microbatches else ""
    return f"mesh {self.mesh}, remat {self.remat}, attention {self.attention}{micro}"


def search(
    config: Any,
    topology_name: str,
    candidates: Sequence[Candidate],
    *,
    batch_size: int,
    inputs_length: int,
    targets_length: int,
    hbm_limit_bytes: int | None = None,
    compiler_options: dict[str, Any] | None = None,
    hlo_dir: str | None = None,
    log=print,
) -> list[dict[str, Any]]:
  """Every candidate's full-depth train step compiled (scanned, as it trains) for its memory; the
  roofline of those that fit; best per-op MFU estimate first, then those that do not fit.

  `hbm_limit_bytes`: what a plan may use per chip (default: the chip's HBM; the compiler's own
  out-of-memory verdict applies either way).
  """
  from launch import aot_compile, topologies  # pylint: disable=g-import-not-at-top

  limit = hbm_limit_bytes or topologies.get_topology(topology_name).gen.hbm_bytes
  rows = []
  for c in candidates:
    chosen = _with_switches(config, c.remat, c.attention)
    log(f"{c.label}: compiling the full-depth train step")
    summary = aot_compile.run(
        config.name,
        topology_name,
        config=chosen,
        batch_size=batch_size,
        inputs_length=inputs_length,
        targets_length=targets_length,
        mesh=c.mesh,
        remat=c.remat,
        dtype=chosen.decoder.dtype,
        param_dtype=chosen.decoder.param_dtype,
        dropout_rate=chosen.decoder.dropout_rate,
        steps=("train",),
        num_microbatches=c.num_microbatches,
    )
    train = summary["steps"]["train"]
    row = {"candidate": dataclasses.asdict(c), "train": train, "limit_bytes": limit}
    row["fits"] = train["status"] == "ok" and train["total_bytes"] <= limit
    if row["fits"]:
      row["roofline"] = plan_roofline(
          chosen,
          topology_name,
          batch_size=batch_size,
          inputs_length=inputs_length,
          targets_length=targets_length,
          mesh=c.mesh,
          compiler_options=compiler_options,
          num_microbatches=c.num_microbatches,
          hlo_dir=hlo_dir and os.path.join(hlo_dir, re.sub(r"[^\w.=-]+", "_", c.label)),
          log=log,
      )
    log(f"  {format_search_row(row)}")
    rows.append(row)

  def estimate(row):
    return (row["roofline"]["roofline"]["mfu_estimate"] or 0.0) if row["fits"] else -1.0

  return sorted(rows, key=estimate, reverse=True)


def format_search_row(row: dict[str, Any]) -> str:
  c, train = Candidate(**row["candidate"]), row["train"]
  used = train.get("total_bytes")
  memory = f"{used / 2**30:.2f} GiB" if used else "?"
  if not row["fits"]:
    return f"{c.label}: does not fit ({memory} of {row['limit_bytes'] / 2**30:.2f} GiB)"
  b = row["roofline"]["roofline"]
  return (
      f"{c.label}: {memory}; MFU estimate {100 * (b['mfu_estimate'] or 0):.1f} % (per-op "
      f"{100 * (b['mfu_per_op'] or 0):.1f} % collectives hidden, "
      f"{100 * (b['mfu_per_op_serial'] or 0):.1f} % serial), bound {100 * b['mfu_bound']:.1f} % "
      f"by {b['bound_by']}"
  )


def _with_switches(config: Any, remat: str, attention: str) -> Any:
  """`config` with one remat policy and one attention implementation in both towers."""
  config = config.replace(remat_policy=remat)
  return dataclasses.replace(
      config,
      vision=dataclasses.replace(config.vision, attention=attention),
      decoder=dataclasses.replace(config.decoder, attention=attention),
  )


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
  if b.get("mfu_per_op"):
    p = b["per_op"]
    lines.append(
        f"  per-op: {p['seconds']:.3f} s ({p['compute_bound_seconds']:.3f} s in compute-bound "
        f"instructions) -> MFU {100 * b['mfu_per_op']:.1f} % with collectives hidden, "
        f"{100 * b['mfu_per_op_serial']:.1f} % without"
    )
    lines.append(
        f"  MFU estimate {100 * b['mfu_estimate']:.1f} %: per-op plus the all-reduces "
        f"({b['step_seconds_estimate']:.3f} s), the other collectives hidden"
    )
    if p.get("kernel_calls"):
      lines.append(
          f"  ({p['kernel_calls']:.0f} Mosaic kernel calls: their FLOPs are not counted, so "
          "the per-op estimate is too fast)"
      )
    if p.get("splash_calls"):
      lines.append(
          f"  ({p['splash_calls']:.0f} splash attention kernel calls: their FLOPs counted from "
          "their shapes over the whole block grid, in the per-op estimate and the compute term)"
      )
  for kind, c in b["collectives"].items():
    if c["count"]:
      lines.append(
          f"    {kind:<19} x{c['count']:>6.0f}  {c['ici_bytes'] / 1e9:8.2f} GB sent  "
          f"{c['seconds']:.3f} s"
      )
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  from launch import aot_compile, topologies  # pylint: disable=g-import-not-at-top
  from medpalm.models import configs  # pylint: disable=g-import-not-at-top

  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      epilog="With --search, --mesh, --remat, --attention and --num_microbatches may each be "
      "given several times: every combination is compiled at full depth for its memory, and "
      "those that fit get a roofline, best estimate first.",
  )
  parser.add_argument("--config", choices=list(configs.CONFIGS))
  parser.add_argument(
      "--calibration", choices=list(CALIBRATION), help="a published MaxText or PaLM run instead"
  )
  parser.add_argument("--topology")
  parser.add_argument("--batch_size", type=int)
  parser.add_argument("--inputs_length", type=int, default=966)
  parser.add_argument("--targets_length", type=int, default=256)
  parser.add_argument("--mesh", action="append", help="default fsdp=-1")
  parser.add_argument("--remat", action="append", choices=configs.REMAT_POLICIES)
  parser.add_argument("--attention", action="append", choices=configs.ATTENTION_IMPLEMENTATIONS)
  parser.add_argument("--num_microbatches", type=int, action="append")
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--dropout_rate", type=float, default=0.1)
  parser.add_argument("--compiler_option", action="append", default=[], metavar="NAME=VALUE")
  parser.add_argument("--search", action="store_true", help="a sharding search (see below)")
  parser.add_argument(
      "--hbm_limit_gib", type=float, help="--search: memory a plan may use per chip (headroom)"
  )
  parser.add_argument(
      "--rebound",
      nargs="+",
      metavar="JSON",
      help="recompute the roofline figures of saved results (--out files, searches included) "
      "from their stored terms with the current estimator, in place; compiles nothing (with "
      "--hlo_dir: the run's kept HLO, the per-op walk is redone on it)",
  )
  parser.add_argument("--json", action="store_true")
  parser.add_argument("--out", default=None, help="also write the JSON here")
  parser.add_argument(
      "--hlo_dir", default=None, help="keep the shallow compiles' optimized HLO here (gzip)"
  )
  args = parser.parse_args(argv)
  log = lambda m: print(m, file=sys.stderr)
  meshes, remats = args.mesh or ["fsdp=-1"], args.remat or ["full"]
  attentions, micro = args.attention or ["jax"], args.num_microbatches or [None]
  if not args.search and max(len(meshes), len(remats), len(attentions), len(micro)) > 1:
    parser.error("several --mesh/--remat/--attention/--num_microbatches need --search")
  if args.rebound:
    for path in args.rebound:
      with open(path, encoding="utf-8") as f:
        saved = json.load(f)
      gen = lambda r: topologies.get_topology(r["topology"]).gen
      if isinstance(saved, list):  # a search: each candidate that fit has its roofline
        for row in saved:
          if row.get("roofline"):
            label = re.sub(r"[^\w.=-]+", "_", Candidate(**row["candidate"]).label)
            hlo = args.hlo_dir and os.path.join(args.hlo_dir, label)
            row["roofline"] = rebound(row["roofline"], gen(row["roofline"]), hlo)
        print(f"{path}:\n" + "\n".join(map(format_search_row, saved)))
      else:
        saved = rebound(saved, gen(saved), args.hlo_dir)
        print(f"{path}:\n{format_roofline(saved)}")
      _write(path, saved)
    return 0
  if args.calibration:
    result = calibration_roofline(args.calibration, attentions[0], args.hlo_dir, log=log)
    c = result["calibration"]
    print(json.dumps(result, indent=1) if args.json else format_roofline(result))
    print(f"published MFU {100 * c['published_mfu']:.2f} %", end="")
    one = c.get("published_mfu_one_slice")
    print(f" ({100 * one:.2f} % for one slice's program, the estimate's)" if one else "")
    _write(args.out, result)
    return 0
  if not (args.config and args.topology and args.batch_size):
    parser.error("--config, --topology and --batch_size are required (or --calibration)")
  config = configs.get_config(args.config).replace(dtype=args.dtype, dropout_rate=args.dropout_rate)
  options = dict(aot_compile._parse_option(o) for o in args.compiler_option)  # pylint: disable=protected-access
  lengths = dict(inputs_length=args.inputs_length, targets_length=args.targets_length)
  if args.search:
    candidates = [
        Candidate(m, r, a, n) for m in meshes for r in remats for a in attentions for n in micro
    ]
    limit = int(args.hbm_limit_gib * 2**30) if args.hbm_limit_gib else None
    rows = search(
        config, args.topology, candidates, batch_size=args.batch_size, hbm_limit_bytes=limit,
        compiler_options=options, hlo_dir=args.hlo_dir, log=log, **lengths,
    )  # fmt: skip
    print(json.dumps(rows, indent=1) if args.json else "\n".join(map(format_search_row, rows)))
    _write(args.out, rows)
    return 0
  result = plan_roofline(
      _with_switches(config, remats[0], attentions[0]),
      args.topology,
      batch_size=args.batch_size,
      mesh=meshes[0],
      compiler_options=options,
      num_microbatches=micro[0],
      hlo_dir=args.hlo_dir,
      log=log,
      **lengths,
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
