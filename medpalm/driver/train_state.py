"""TrainState: what one training step reads and writes, and what a checkpoint holds.

A flax struct (a pytree), so the whole state is one argument of the jitted step and one orbax
item. Fields:
  step: int32[] — optimizer steps taken (skipped non-finite steps included: the batch was used).
  params: the model parameters (float32 or `param_dtype`), each sharded by its logical axes.
  opt_state: the optax state of `model.optimizer_def` (Adafactor: momentum like the params,
    factored second moments replicated).
  skipped: int32[] — steps whose update was dropped because the loss or a gradient was not finite.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  skipped: jax.Array
  optimizer_def: Any = flax.struct.field(pytree_node=False, default=None)

  @classmethod
  def create(cls, optimizer_def, params) -> "TrainState":
    return cls(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer_def.init_state(params),
        skipped=jnp.zeros((), jnp.int32),
        optimizer_def=optimizer_def,
    )

  def logical_axes(self, params_axes: Any) -> "TrainState":
    """The same tree with PartitionSpecs of logical names at the leaves.

    `params_axes` mirrors `params` with logical PartitionSpecs (see `param_specs`); optimizer
    state follows `optimizer_def.derive_logical_axes` (factored statistics are not
    param-shaped and are replicated).
    """
    return self.replace(
        step=PartitionSpec(),
        skipped=PartitionSpec(),
        params=params_axes,
        opt_state=self.optimizer_def.derive_logical_axes(
            self.opt_state, params_axes, params=self.params
        ),
    )


def param_specs(params_axes_collection: Any) -> Any:
  """T5X's `params_axes` collection (`<name>_axes` -> AxisMetadata) -> PartitionSpecs tree."""

  def walk(tree):
    out = {}
    for key, value in tree.items():
      if key.endswith("_axes") and hasattr(value, "names"):
        out[key[: -len("_axes")]] = PartitionSpec(*value.names)
      else:
        out[key] = walk(value)
    return out

  return walk(params_axes_collection)
