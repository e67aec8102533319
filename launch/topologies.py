"""Named TPU slices -> the arguments of `jax.experimental.topologies.get_topology_desc`.

    python -m launch.topologies            # prints the table

Slice names follow Cloud TPU: v4-N and v5p-N count TensorCores (two per chip, fused into one
"megacore" device), v5e-N and v6e-N count chips (one TensorCore each). A name in the form the
topology API takes (`v5e:2x2`, `v4:2x2x1`, `v5:4x8x8`, `v6e:4x4`) is accepted as well, so tests can
ask for small slices that Cloud TPU does not sell. With libtpu installed this works on a CPU host:
the devices are abstract, good for compiling, never for running.

Per-chip figures are the published ones (Cloud TPU's pages for v4, v5e, v5p and v6e: peak bf16
FLOP/s, HBM capacity and bandwidth, bidirectional ICI bandwidth per chip and its ports; v4's
per-link figure, 400 Gb/s each way, is not on its Cloud page and comes from the ISCA 2023 TPU v4
paper's description). They turn compiled bytes into "fits or not", model FLOPs into the
utilisation a step time needs, and compiled programs into a roofline (`launch/roofline.py`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class Generation:
  """One TPU generation: its name in the topology API, chip config, and per-chip figures."""

  api_name: str  # prefix of `topology_name` ("v5e", "v4", "v5" for v5p, "v6e")
  chip_config: str  # "default" (one core per chip) or "megacore" (two cores as one device)
  cores_per_chip: int  # how Cloud TPU slice names count (v4-8 = 4 chips)
  dims: int  # 2-D (v5e, v6e) or 3-D (v4, v5p) torus
  hbm_bytes: int  # per chip
  peak_bf16_flops: float  # per chip, dense
  accelerator_type: str  # what libtpu expects in TPU_ACCELERATOR_TYPE for a 4-chip slice
  hbm_bandwidth: float  # bytes/s per chip
  ici_ports: int  # ICI links per chip
  ici_link_bandwidth: float  # bytes/s one way on one link (bidirectional per-chip / ports / 2)


GENERATIONS: dict[str, Generation] = {
    # HBM 1200 GB/s; 6 ICI links of 400 Gb/s (50 GB/s) each way.
    "v4": Generation("v4", "megacore", 2, 3, 32 * GIB, 275e12, "v4-8", 1200e9, 6, 50e9),
    # HBM 819 GB/s; ICI 400 GB/s bidirectional over 4 ports.
    "v5e": Generation("v5e", "default", 1, 2, 16 * GIB, 197e12, "v5litepod-4", 819e9, 4, 50e9),
    # HBM 2765 GB/s; ICI 1200 GB/s bidirectional over 6 ports (3-D torus).
    "v5p": Generation("v5", "megacore", 2, 3, 95 * GIB, 459e12, "v5p-8", 2765e9, 6, 100e9),
    # HBM 1638 GB/s; ICI 800 GB/s bidirectional over 4 ports.
    "v6e": Generation("v6e", "default", 1, 2, 32 * GIB, 918e12, "v6e-4", 1638e9, 4, 100e9),
}
_BY_API_NAME = {g.api_name: name for name, g in GENERATIONS.items()}


@dataclasses.dataclass(frozen=True)
class Topology:
  """A slice: `get_topology_desc(platform="tpu", topology_name=..., chip_config_name=...,
  chips_per_host_bounds=(2, 2, 1), num_slices=1, wrap=...)` gives its `num_chips` devices."""

  name: str
  generation: str
  shape: tuple[int, ...]  # chips along each torus axis

  @property
  def gen(self) -> Generation:
    return GENERATIONS[self.generation]

  @property
  def num_chips(self) -> int:
    return math.prod(self.shape)

  @property
  def topology_name(self) -> str:
    return f"{self.gen.api_name}:{'x'.join(map(str, self.shape))}"

  @property
  def wrap(self) -> tuple[bool, bool, bool]:
    """Wrap-around links: 3-D slices of whole 4x4x4 cubes are tori; smaller ones are meshes."""
    torus = self.gen.dims == 3 and all(s % 4 == 0 for s in self.shape)
    return (torus,) * 3


# Cloud TPU slice shapes (chips per axis) for the names people ask for.
_SHAPES: dict[str, dict[int, tuple[int, ...]]] = {
    "v5e": {4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)},
    "v6e": {4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)},
    "v4": {
        4: (2, 2, 1),
        8: (2, 2, 2),
        16: (2, 2, 4),
        32: (2, 4, 4),
        64: (4, 4, 4),
        128: (4, 4, 8),
        256: (4, 8, 8),
        512: (8, 8, 8),
        1024: (8, 8, 16),
        2048: (8, 16, 16),
        4096: (16, 16, 16),
    },
    "v5p": {
        4: (2, 2, 1),
        8: (2, 2, 2),
        16: (2, 2, 4),
        32: (2, 4, 4),
        64: (4, 4, 4),
        128: (4, 4, 8),
        256: (4, 8, 8),
        512: (8, 8, 8),
        1024: (8, 8, 16),
        2048: (8, 16, 16),
        4096: (16, 16, 16),
    },
}
TOPOLOGIES: dict[str, Topology] = {
    f"{gen}-{chips * GENERATIONS[gen].cores_per_chip}": Topology(
        f"{gen}-{chips * GENERATIONS[gen].cores_per_chip}", gen, shape
    )
    for gen, shapes in _SHAPES.items()
    for chips, shape in shapes.items()
}


def get_topology(name: str) -> Topology:
  """A slice by Cloud TPU name (`v5e-64`, `v5p-512`) or topology-API name (`v5e:2x2`)."""
  if name in TOPOLOGIES:
    return TOPOLOGIES[name]
  match = re.fullmatch(r"(v4|v5e|v5|v5p|v6e):(\d+(?:x\d+)*)", name)
  if match:
    api, shape = match.group(1), tuple(int(s) for s in match.group(2).split("x"))
    generation = "v5p" if api in ("v5", "v5p") else _BY_API_NAME[api]
    if len(shape) != GENERATIONS[generation].dims:
      raise ValueError(
          f"topology {name!r}: {generation} slices are "
          f"{GENERATIONS[generation].dims}-D, got shape {shape}"
      )
    return Topology(name, generation, shape)
  raise ValueError(
      f"unknown topology {name!r}; use a Cloud TPU slice name "
      f"({', '.join(TOPOLOGIES)}) or the topology API's form, e.g. v5e:2x2, "
      f"v4:2x2x1, v5:4x8x8, v6e:4x4"
  )


def tpu_devices(topology: Topology) -> list:
  """Abstract (compile-only) TPU devices of `topology`; works on a CPU-only host with libtpu.

  libtpu looks for TPU metadata at start-up; the environment below tells it that there is none to
  look for (otherwise it logs errors and waits on a metadata server). libtpu also takes a
  machine-wide lock (/tmp/libtpu_lockfile) so that two processes never drive one TPU; with no TPU
  to drive, ALLOW_MULTIPLE_LIBTPU_LOAD lets several compiling processes (parallel tests, two
  engineers) coexist. JAX_PLATFORMS=cpu is fine: the topology API builds its own TPU client.
  """
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", topology.gen.accelerator_type)
  try:
    from jax.experimental import topologies
  except ImportError as e:  # pragma: no cover - part of jax
    raise RuntimeError("jax.experimental.topologies is missing from this jax") from e
  try:
    description = topologies.get_topology_desc(
        platform="tpu",
        topology_name=topology.topology_name,
        chip_config_name=topology.gen.chip_config,
        chips_per_host_bounds=(2, 2, 1),
        num_slices=1,
        wrap=topology.wrap,
    )
  except Exception as e:  # libtpu missing or unable to build this slice
    raise RuntimeError(
        f"cannot build TPU topology {topology.topology_name} ({topology.name}): {e}. "
        f"Compiling for TPU on a CPU host needs libtpu: pip install -e '.[tpu]'"
    ) from e
  devices = list(description.devices)
  if len(devices) != topology.num_chips:
    raise RuntimeError(
        f"topology {topology.name} gave {len(devices)} devices, expected " f"{topology.num_chips}"
    )
  return devices


def main(argv=None) -> None:
  import argparse

  argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
  print(f"{'slice':<10} {'topology_name':<14} {'chips':>5} {'HBM/chip':>9} {'bf16 TF/chip':>12}")
  for t in TOPOLOGIES.values():
    print(
        f"{t.name:<10} {t.topology_name:<14} {t.num_chips:>5} "
        f"{t.gen.hbm_bytes / GIB:>7.0f} G {t.gen.peak_bf16_flops / 1e12:>12.0f}"
    )


if __name__ == "__main__":
  main()
