"""Optimizer definitions in the shape T5X's trainer reads, and the learning-rate schedule.

The paper trains with Adafactor (β1 = 0.9, no parameter scaling) at a constant learning rate.
"""

from __future__ import annotations

import jax
import numpy as np
import optax


class OptaxOptimizerDef:
  """An optax transformation in the shape of T5X's `OptaxWrapper` optimizer definition.

  `init_state(params)`, `apply_gradient(hyper_params, params, state, grads)` and
  `derive_logical_axes(state, param_axes)`. Logical axes follow the parameters: a state leaf
  with its parameter's shape (momentum, unfactored second moments) gets the parameter's axes, a
  factored row/column statistic (the parameter with one dim reduced) keeps the axes of the dims
  it kept, and anything else (counters, placeholders) is replicated.
  """

  def __init__(self, optax_optimizer: optax.GradientTransformation):
    self.optax_optimizer = optax_optimizer
    self.hyper_params = None
    self._param_shapes = None

  def init_state(self, params):
    self._param_shapes = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
    return self.optax_optimizer.init(params)

  def apply_gradient(self, hyper_params, params, state, grads):
    del hyper_params
    updates, state = self.optax_optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  def derive_logical_axes(self, state, param_axes, params=None):
    """PartitionSpecs of logical names for `state`; `param_axes` mirrors the params tree."""
    shapes = (
        jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
        if params is not None
        else self._param_shapes
    )
    if shapes is None:
      raise ValueError("derive_logical_axes needs the params (or a prior init_state)")
    is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)
    replicated = lambda x: jax.sharding.PartitionSpec(*([None] * np.ndim(x)))

    def follow(leaf, axes, param):
      shape = tuple(np.shape(leaf))
      if shape == tuple(param.shape):
        return axes
      # A factored statistic is the parameter with one dim reduced away: keep the other axes.
      dropped = [
          i for i in range(len(param.shape)) if param.shape[:i] + param.shape[i + 1 :] == shape
      ]
      if len(dropped) == 1:
        return jax.sharding.PartitionSpec(*(a for i, a in enumerate(axes) if i != dropped[0]))
      return replicated(leaf)

    return optax.tree_utils.tree_map_params(
        self.optax_optimizer,
        follow,
        state,
        param_axes,
        shapes,
        transform_non_params=replicated,
        is_leaf=is_spec,
    )


def adafactor(
    learning_rate: float | optax.Schedule = 5e-5,
    momentum: float | None = 0.9,
    decay_rate: float = 0.8,
    clipping_threshold: float | None = 1.0,
    factored: bool = True,
) -> OptaxOptimizerDef:
  """Adafactor as the paper trains (β1 = 0.9, constant learning rate by default)."""
  return OptaxOptimizerDef(
      optax.adafactor(
          learning_rate=learning_rate,
          momentum=momentum,
          decay_rate=decay_rate,
          clipping_threshold=clipping_threshold,
          factored=factored,
          multiply_by_parameter_scale=False,
      )
  )


def learning_rate_schedule(
    base_learning_rate: float = 5e-5, warmup_steps: int = 0
) -> optax.Schedule:
  """Constant learning rate (the paper's), optionally after a linear warm-up from 0."""
  if warmup_steps <= 0:
    return optax.constant_schedule(base_learning_rate)
  return optax.join_schedules(
      [
          optax.linear_schedule(0.0, base_learning_rate, warmup_steps),
          optax.constant_schedule(base_learning_rate),
      ],
      [warmup_steps],
  )
