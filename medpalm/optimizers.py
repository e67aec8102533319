"""The optimizer definition both drivers use (medpalm's and T5X's), and the learning-rate schedule.

The paper trains with Adafactor (β1 = 0.9, no parameter scaling) at a constant learning rate.

`OptaxOptimizerDef` speaks T5X's `OptimizerDef` protocol, and *is* a `t5x.optimizers.OptimizerDef`
when T5X imports (T5X is optional; without it the same class stands alone):

  init_state(params) -> OptimizerState(step int32[], param_states)
  apply_gradient(hyper_params, params, state, grads) -> (params, state)
  create(params) -> t5x Optimizer (T5X only)
  derive_logical_axes(...)  T5X's form (optimizer, param_axes) and medpalm's (state, param_axes,
                            params=None), told apart by the first argument

The update is `before` (gradient -> direction), times the learning rate, then `after` (momentum,
sign) — Adafactor is optax's chain with the learning rate taken out, so T5X can hand in each
step's rate (`hyper_params.learning_rate`, from its gin learning-rate scheduler) while medpalm's
driver uses the definition's own schedule of the step.

Second-moment factoring is optax's (`scale_by_factored_rms`): a parameter is factored over its
two largest dimensions when both are at least 128, every other dimension (scanned `layers`,
attention `heads`) stays a batch dimension of the statistics, and any rank works. So no
per-axis factor rules are needed; `derive_logical_axes` gives each factored statistic the
logical axes of the dimensions it keeps, so it is sharded like its parameter.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import flax.core
import flax.serialization
import flax.struct
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec


def _t5x_optimizers():
  """`t5x.optimizers` when T5X is already imported, else None.

  T5X's binaries import `t5x.optimizers` before gin reaches medpalm, so under T5X the definition
  below is a T5X `OptimizerDef`. medpalm never imports T5X itself: that would pull SeqIO and
  TensorFlow (14 s) into `import medpalm.model`, and a broken T5X install into every run.
  """
  return sys.modules.get("t5x.optimizers")


_T5X = _t5x_optimizers()

if _T5X is not None:
  OptimizerState = _T5X.OptimizerState
  _Base = _T5X.OptimizerDef
else:

  @flax.struct.dataclass
  class OptimizerState:
    """T5X's optimizer state: steps taken (int32[]) and the per-parameter state tree."""

    step: Any
    param_states: Any

  class _Base:

    def __init__(self, hyper_params):
      self.hyper_params = hyper_params


@flax.struct.dataclass
class HyperParams:
  """What T5X overrides per step (`learning_rate`); None: the definition's own schedule."""

  learning_rate: Any = None


def _shape(x) -> tuple[int, ...]:
  return tuple(x.shape) if hasattr(x, "shape") else tuple(np.shape(x))


def _replicated(x) -> PartitionSpec:
  return PartitionSpec(*([None] * len(_shape(x))))


class OptaxOptimizerDef(_Base):
  """`params -= after(learning_rate × before(grads))` on optax transformations.

  Args:
    before: the optax transformation from gradients to the update direction.
    learning_rate: a float or an optax schedule of the step; None: `before` already scales
      (then T5X's per-step rate is refused rather than applied twice).
    after: the optax transformation after the learning rate (momentum, the sign); None: the
      update is subtracted as is when a learning rate applies, added when `before` scaled it.
  """

  def __init__(
      self,
      before: optax.GradientTransformation,
      learning_rate: float | optax.Schedule | None = None,
      after: optax.GradientTransformation | None = None,
  ):
    super().__init__(HyperParams())
    self.optax_optimizer = before
    self.learning_rate = learning_rate
    if after is None:
      after = optax.identity() if learning_rate is None else optax.scale(-1.0)
    self.after = after

  # -- the update --

  def init_state(self, params) -> OptimizerState:
    return OptimizerState(
        step=jnp.zeros((), jnp.int32),
        param_states=(self.optax_optimizer.init(params), self.after.init(params)),
    )

  def _rate(self, hyper_params, step) -> jax.Array | None:
    override = None if hyper_params is None else getattr(hyper_params, "learning_rate", None)
    if override is not None:
      if self.learning_rate is None:
        raise ValueError(
            "a per-step learning_rate was given, but this optimizer's transformation applies "
            "its own; build it with learning_rate= instead"
        )
      return jnp.asarray(override, jnp.float32)
    if self.learning_rate is None:
      return None
    if callable(self.learning_rate):
      return jnp.asarray(self.learning_rate(step), jnp.float32)
    return jnp.asarray(self.learning_rate, jnp.float32)

  def apply_gradient(self, hyper_params, params, state: OptimizerState, grads):
    """(new params, new OptimizerState); `hyper_params` None or T5X's (per-step rate)."""
    before_state, after_state = state.param_states
    updates, before_state = self.optax_optimizer.update(grads, before_state, params)
    rate = self._rate(hyper_params, state.step)
    if rate is not None:
      updates = jax.tree.map(lambda u: (rate * u).astype(u.dtype), updates)
    updates, after_state = self.after.update(updates, after_state, params)
    return optax.apply_updates(params, updates), OptimizerState(
        step=state.step + 1, param_states=(before_state, after_state)
    )

  # -- partitioning --

  def _param_state_axes(self, param_states, param_axes, params):
    """Logical PartitionSpecs of the (before, after) optax states.

    A leaf with its parameter's shape (momentum, unfactored second moments) gets the
    parameter's axes; a factored row/column statistic (the parameter with one dim reduced)
    keeps the axes of the dims it kept; anything else (counters, placeholders) is replicated.
    """
    shapes = jax.tree.map(lambda p: jax.ShapeDtypeStruct(_shape(p), jnp.float32), params)
    is_spec = lambda x: isinstance(x, PartitionSpec)

    def follow(leaf, axes, param):
      shape, pshape = _shape(leaf), tuple(param.shape)
      if shape == pshape:
        return axes
      dropped = [i for i in range(len(pshape)) if pshape[:i] + pshape[i + 1 :] == shape]
      if len(dropped) == 1:
        return PartitionSpec(*(a for i, a in enumerate(axes) if i != dropped[0]))
      return _replicated(leaf)

    return tuple(
        optax.tree_utils.tree_map_params(
            transform,
            follow,
            sub_state,
            param_axes,
            shapes,
            transform_non_params=_replicated,
            is_leaf=is_spec,
        )
        for transform, sub_state in zip((self.optax_optimizer, self.after), param_states)
    )

  def derive_logical_axes(self, state_or_optimizer, param_axes, params=None):
    """The state's tree with logical PartitionSpecs at the leaves.

    T5X: `derive_logical_axes(optimizer, param_logical_axes)` -> an Optimizer of axes.
    medpalm: `derive_logical_axes(state, param_axes, params)` -> an OptimizerState of axes.
    """
    if hasattr(state_or_optimizer, "target") and hasattr(state_or_optimizer, "optimizer_def"):
      optimizer = state_or_optimizer
      # The axes take the params' container type (T5X freezes its params) so the trees match.
      if isinstance(optimizer.target, flax.core.FrozenDict):
        param_axes = flax.core.freeze(flax.core.unfreeze(param_axes))
      else:
        param_axes = flax.core.unfreeze(param_axes)
      state = OptimizerState(
          step=PartitionSpec(),
          param_states=self._param_state_axes(
              optimizer.state.param_states, param_axes, optimizer.target
          ),
      )
      return optimizer.replace(target=param_axes, state=state)
    if params is None:
      raise ValueError("derive_logical_axes(state, param_axes, params) needs the params")
    return OptimizerState(
        step=PartitionSpec(),
        param_states=self._param_state_axes(state_or_optimizer.param_states, param_axes, params),
    )

  # -- checkpoints (T5X's Optimizer.state_dict / restore_state) --

  def state_dict(self, target, state) -> dict:
    """{"target", "state"} as nested dicts, without the empty nodes that stateless optax
    transformations leave (`EmptyState`, `()`): a checkpoint stores no empty dict, so with them
    the train state's own dict would not match one restored from a checkpoint."""
    flat = flax.traverse_util.flatten_dict(flax.serialization.to_state_dict(state), sep="/")
    return {
        "target": flax.serialization.to_state_dict(target),
        "state": flax.traverse_util.unflatten_dict(flat, sep="/"),
    }

  def restore_state(self, opt_target, opt_state, state_dict):
    """(target, state) with the values of `state_dict`; the empty nodes `state_dict` leaves
    out are taken from `opt_state`'s structure, any other missing entry is an error."""
    target = flax.serialization.from_state_dict(opt_target, state_dict["target"])
    empty = flax.traverse_util.empty_node
    reference = flax.traverse_util.flatten_dict(
        flax.serialization.to_state_dict(opt_state), keep_empty_nodes=True, sep="/"
    )
    given = flax.traverse_util.flatten_dict(state_dict["state"], sep="/")
    missing = [k for k, v in reference.items() if k not in given and v is not empty]
    if missing:
      raise ValueError(f"optimizer state {missing[0]!r} is missing from the state dict")
    merged = {**{k: v for k, v in reference.items() if v is empty}, **given}
    state = flax.serialization.from_state_dict(
        opt_state, flax.traverse_util.unflatten_dict(merged, sep="/")
    )
    return target, state

  if _T5X is None:

    def create(self, target):
      raise ImportError("create() builds a t5x Optimizer: T5X is not importable here")


def adafactor(
    learning_rate: float | optax.Schedule = 5e-5,
    momentum: float | None = 0.9,
    decay_rate: float = 0.8,
    clipping_threshold: float | None = 1.0,
    factored: bool = True,
    min_dim_size_to_factor: int = 128,
    epsilon: float = 1e-30,
) -> OptaxOptimizerDef:
  """Adafactor as the paper (PaLM-E) trains: β1 = 0.9, decay 0.8, update clipping 1.0, no
  parameter scaling, constant learning rate by default.

  The same update as `optax.adafactor(..., multiply_by_parameter_scale=False)` (factored RMS,
  block-RMS clipping, learning rate, momentum without bias correction), with the learning rate
  between the clipping and the momentum so that T5X can supply it per step.
  """
  before = [
      optax.scale_by_factored_rms(
          factored=factored,
          decay_rate=decay_rate,
          min_dim_size_to_factor=min_dim_size_to_factor,
          epsilon=epsilon,
      )
  ]
  if clipping_threshold is not None:
    before.append(optax.clip_by_block_rms(clipping_threshold))
  after = [optax.ema(momentum, debias=False)] if momentum is not None else []
  after.append(optax.scale(-1.0))
  return OptaxOptimizerDef(
      optax.chain(*before), learning_rate=learning_rate, after=optax.chain(*after)
  )


def learning_rate_schedule(
    base_learning_rate: float = 5e-5,
    warmup_steps: int = 0,
    decay_steps: int = 0,
    total_steps: int | None = None,
) -> Callable[[Any], Any]:
  """Constant learning rate (the paper's), optionally after a linear warm-up from 0, and
  optionally decayed linearly to 0 over the last `decay_steps` of `total_steps` (short runs,
  such as the CPU demo, end better with the rate annealed). A run shorter than warm-up + decay
  (a shrunk test run) decays from the end of its warm-up."""
  schedules, boundaries = [optax.constant_schedule(base_learning_rate)], []
  warmup_steps = max(warmup_steps, 0)
  if warmup_steps > 0:
    schedules.insert(0, optax.linear_schedule(0.0, base_learning_rate, warmup_steps))
    boundaries.append(warmup_steps)
  if decay_steps > 0:
    if total_steps is None:
      raise ValueError(f"decay_steps={decay_steps} needs total_steps (the run's TRAIN_STEPS)")
    start = max(warmup_steps, total_steps - decay_steps)
    if start < total_steps:
      schedules.append(optax.linear_schedule(base_learning_rate, 0.0, total_steps - start))
      boundaries.append(start)
  return optax.join_schedules(schedules, boundaries) if boundaries else schedules[0]
