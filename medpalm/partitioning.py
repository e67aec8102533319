"""Mesh builder and the logical-axis rules that lay medpalm out on a `('data', 'fsdp', 'model')` mesh.

`data` replicates parameters (pure data parallelism), `fsdp` shards parameters and optimizer state
on their embed dimension (ZeRO-3) while also splitting the batch, and `model` is tensor
parallelism over heads / mlp / vocab. Modules only name their axes; this file alone maps names to
mesh axes. Flax resolves the rules in order and never uses a mesh axis twice in one array, so an
activation `[batch, length, embed]` takes `(data, fsdp)` for the batch and leaves embed whole,
while a kernel `[embed, mlp]` takes `(fsdp, model)`.

Always enter a mesh with `jax.set_mesh(mesh)` and `nn.logical_axis_rules(rules)` (`with mesh:`
silently drops the logical constraints).
"""
from __future__ import annotations

import contextlib
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "model")
BATCH = ("data", "fsdp")

Rules = tuple[tuple[str, Any], ...]

DEFAULT_RULES: Rules = (
    # activations and the KV cache
    ("batch", BATCH),
    ("cache_batch", BATCH),
    ("length", None),
    ("cache_length", None),
    ("cache_heads", "model"),
    ("cache_kv", None),
    # decoder
    ("vocab", "model"),
    ("embed", "fsdp"),
    ("heads", "model"),
    ("kv_heads", None),  # one K/V head under multi-query attention: replicated
    ("kv", None),
    ("mlp", "model"),
    ("layers", None),
    # vision tower
    ("vit_embed", "fsdp"),
    ("vit_heads", "model"),
    ("vit_kv", None),
    ("vit_mlp", "model"),
    ("vit_patch", None),
    ("vit_length", None),
    ("vit_layers", None),
)


def make_mesh(data: int = 1, fsdp: int = -1, model: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A `('data', 'fsdp', 'model')` mesh over `devices` (default: all); one size may be -1."""
  devices = list(jax.devices() if devices is None else devices)
  shape = [data, fsdp, model]
  if shape.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got data={data} fsdp={fsdp} "
                     f"model={model}")
  known = int(np.prod([s for s in shape if s != -1]))
  if known <= 0 or len(devices) % known:
    raise ValueError(f"mesh data={data} fsdp={fsdp} model={model} does not divide the "
                     f"{len(devices)} devices")
  shape = [len(devices) // known if s == -1 else s for s in shape]
  if int(np.prod(shape)) != len(devices):
    raise ValueError(f"mesh {dict(zip(MESH_AXES, shape))} needs {int(np.prod(shape))} devices, "
                     f"{len(devices)} available")
  return Mesh(np.asarray(devices, dtype=object).reshape(shape), MESH_AXES)


@contextlib.contextmanager
def using(mesh: Mesh, rules: Rules = DEFAULT_RULES):
  """Context in which logical constraints resolve against `mesh` under `rules`."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def _path(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def logical_specs(boxed_tree: Any) -> Any:
  """PartitionSpecs of logical names for every leaf of a tree of `nn.LogicallyPartitioned`."""
  return nn.get_partition_spec(boxed_tree)


def unbox(tree: Any) -> Any:
  """Values of a boxed tree, without the sharding constraint `nn.meta.unbox` adds under a mesh
  (which fails on the ShapeDtypeStructs of an abstract tree)."""
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
  return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, tree,
                      is_leaf=is_box)


def mesh_shardings(boxed_tree: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
  """NamedShardings for a boxed (abstract or concrete) variable tree.

  Raises ValueError naming the parameter path when a leaf has no logical names, a name has no
  rule, or a sharded dimension does not divide over its mesh axes.
  """
  known = {name for name, _ in rules}

  def one(path, leaf, spec: PartitionSpec) -> NamedSharding:
    where = _path(path)
    if len(spec) != leaf.ndim:
      raise ValueError(f"parameter {where}: shape {leaf.shape} carries logical names {spec}")
    for name in spec:
      if name is not None and name not in known:
        raise ValueError(f"parameter {where}: logical axis {name!r} has no partitioning rule")
    mesh_spec = nn.logical_to_mesh_axes(spec, rules)
    for dim, axes in zip(leaf.shape, mesh_spec):
      axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
      size = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
      if dim % size:
        raise ValueError(f"parameter {where}: dimension {dim} of {leaf.shape} does not divide "
                         f"over mesh axes {axes} of size {size}")
    return NamedSharding(mesh, mesh_spec)

  return jax.tree_util.tree_map_with_path(one, unbox(boxed_tree), logical_specs(boxed_tree))


def data_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Batch-leading arrays split over `('data', 'fsdp')`, other dims whole."""
  return NamedSharding(mesh, PartitionSpec(BATCH, *([None] * (ndim - 1))))


def sharded_init(init_fn, mesh: Mesh, rules: Rules = DEFAULT_RULES):
  """Runs `init_fn() -> boxed variables` directly into its shardings (never whole on one device).

  eval_shape gives the logical layout, the rules give NamedShardings, and a jit with those output
  shardings materialises each shard where it lives. Returns unboxed variables.
  """
  with using(mesh, rules):
    shardings = mesh_shardings(jax.eval_shape(init_fn), mesh, rules)
    return jax.jit(lambda: nn.meta.unbox(init_fn()), out_shardings=shardings)()
