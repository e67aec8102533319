"""Trainer: the jitted, partitioned train and eval steps around a `MedPalmMModel`.

Shapes follow T5X's trainer: `train_step(train_state, batch) -> (train_state, metrics)` with the
state donated and laid out by `train_state_axes`, the batch split over the partitioner's
`data_partition_spec`. What a step does:
  1. dropout rng = fold_in(rng, step) — a pure function of the step, so a resumed run draws the
     same dropout masks as an uninterrupted one;
  2. gradients of `model.loss_fn`, accumulated over `num_microbatches` slices of the batch. The
     model normalizes each slice by its own factor (e.g. its real target tokens), so each
     slice's loss and gradient are rescaled by its factor over the whole batch's: the result is
     the whole-batch loss and gradient whatever the number of microbatches. Frozen parts
     (`freeze`) get no gradient and keep their values;
  3. the optimizer update — unless the loss or any gradient is not finite: then parameters and
     optimizer state stay as they were, `skipped` counts it and the returned `finite` flag is
     False (the train loop stops the run after `max_nonfinite_in_a_row` such steps).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from medpalm import losses, partitioning
from medpalm.driver import train_state as train_state_lib
from medpalm.partitioning import Partitioner
from medpalm.driver.train_state import TrainState

FREEZABLE = ("vision", "projector", "decoder")
# Metrics the model reports once per batch (clu Average with count 1): summed, not averaged,
# over microbatches, so that they mean the same with and without gradient accumulation.
PER_BATCH_METRICS = ("loss", "z_loss", "cross_ent_loss")


# --- the train state, created directly sharded -----------------------------------------------


def _check_divisible(shapes: Any, mesh_axes: Any, mesh) -> None:
  """Raises ValueError naming the first state leaf whose sharded dim does not divide its axes."""
  is_spec = lambda x: isinstance(x, PartitionSpec)
  flat_axes = jax.tree.leaves(mesh_axes, is_leaf=is_spec)
  flat_shapes = jax.tree_util.tree_leaves_with_path(shapes)
  for (path, leaf), spec in zip(flat_shapes, flat_axes):
    partitioning.check_divisible(
        f"train state {jax.tree_util.keystr(path)}", leaf.shape, spec, mesh
    )


class TrainStateInitializer:
  """Abstract shape, logical / mesh axes, and a sharded from-scratch init of the TrainState.

  `input_shapes` / `input_types` are the global batch's feature shapes and dtypes (every model
  feature, `images` included), as T5X derives them from the dataset's element_spec.
  """

  def __init__(self, model, input_shapes: dict, input_types: dict | None, partitioner: Partitioner):
    self._model, self._partitioner = model, partitioner

    def init(rng):
      variables = model.get_initial_variables(rng, input_shapes, input_types)
      return TrainState.create(model.optimizer_def, variables["params"]), variables["params_axes"]

    self._init, self._init_fn = init, None
    self.global_train_state_shape, axes_collection = jax.eval_shape(init, jax.random.key(0))
    self.params_axes = train_state_lib.param_specs(axes_collection)
    self.train_state_logical_axes = self.global_train_state_shape.logical_axes(self.params_axes)
    self.train_state_axes = partitioner.get_mesh_axes(self.train_state_logical_axes)
    _check_divisible(self.global_train_state_shape, self.train_state_axes, partitioner.mesh)

  def abstract_state(self) -> TrainState:
    """ShapeDtypeStructs carrying their NamedShardings (what a sharded restore needs)."""
    shardings = self._partitioner.shardings(self.train_state_axes)
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        self.global_train_state_shape,
        shardings,
    )

  def abstract_params(self) -> Any:
    """The params' ShapeDtypeStructs with their NamedShardings (a params-only restore)."""
    return self.abstract_state().params

  def params_from_scratch(self, rng: jax.Array) -> Any:
    """The params alone, each leaf in its sharding (eval / infer: no optimizer state)."""
    fn = self._partitioner.partition(
        lambda r: self._init(r)[0].params,
        in_axis_resources=None,
        out_axis_resources=self.train_state_axes.params,
    )
    return fn(rng)

  def from_scratch(self, rng: jax.Array) -> TrainState:
    """Initializes every leaf in its own sharding (never whole on one device)."""
    if self._init_fn is None:
      self._init_fn = self._partitioner.partition(
          lambda r: self._init(r)[0],
          in_axis_resources=None,
          out_axis_resources=self.train_state_axes,
      )
    return self._init_fn(rng)


# --- the train step --------------------------------------------------------------------------


def _split_microbatches(batch: dict, num: int) -> dict:
  """[B, ...] -> [num, B/num, ...]; row r goes to microbatch r % num so each device's local
  rows feed every microbatch (no resharding of the batch)."""

  def split(x):
    return jnp.swapaxes(x.reshape(x.shape[0] // num, num, *x.shape[1:]), 0, 1)

  return jax.tree.map(split, batch)


def loss_normalizing_factor(model):
  """The model's T5X loss normalizing factor (None, a number or a NORMALIZING_FACTORS name)."""
  return getattr(model, "loss_normalizing_factor", None)


def _normalizer(factor, batch: dict) -> jax.Array:
  """float32[]: what the model divides a batch's summed loss by (1 for a sum or a constant)."""
  if factor == "NUM_REAL_TARGET_TOKENS":
    return jnp.maximum(jnp.sum(losses.loss_weights(batch)), 1.0)
  if factor == "NUM_TOTAL_TARGET_TOKENS":
    return jnp.float32(np.prod(batch["decoder_target_tokens"].shape))
  return jnp.float32(1.0)


def make_train_step(model, *, freeze: Sequence[str] = (), num_microbatches: int = 1):
  """The training step: `step(state, batch, rng) -> (new state, metrics, finite bool[])`.

  This one function is what the trainer compiles, what `launch/aot_compile.py` compiles for TPU
  slices and what the benchmarks time, so memory plans and speed figures describe the program
  that trains. `state` is a `TrainState`, `batch` the model features with leading dim B (a
  multiple of `num_microbatches`), `rng` a PRNG key (dropout: folded with the step). Metrics are
  clu `Average`s (on device).
  """
  unknown = sorted(set(freeze) - set(FREEZABLE))
  if unknown:
    raise ValueError(f"freeze: unknown part(s) {unknown}; choose from {FREEZABLE}")
  if num_microbatches < 1:
    raise ValueError(f"num_microbatches must be >= 1, got {num_microbatches}")
  freeze = tuple(freeze)

  def frozen(params):
    return {k: jax.lax.stop_gradient(v) if k in freeze else v for k, v in params.items()}

  def loss_fn(params, batch, rng):
    return model.loss_fn(frozen(params), batch, rng)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  factor = loss_normalizing_factor(model)

  def grads_of(params, batch, rng):
    """Whole-batch loss, gradients and merged metrics over the microbatches."""
    if num_microbatches == 1:
      (loss, metrics), grads = grad_fn(params, batch, rng)
      return loss, grads, metrics
    micro = _split_microbatches(batch, num_microbatches)
    whole = _normalizer(factor, batch)

    def one(index, mb):
      (loss, metrics), grads = grad_fn(params, mb, jax.random.fold_in(rng, index))
      # The model divides each microbatch by its own normalizer; rescaling by its share of the
      # whole batch's makes the sum over microbatches the whole batch's loss and gradient.
      scale = _normalizer(factor, mb) / whole
      loss, grads = loss * scale, jax.tree.map(lambda g: g * scale.astype(g.dtype), grads)
      metrics = dict(metrics)
      for name in PER_BATCH_METRICS:
        if name in metrics:
          metrics[name] = metrics[name].replace(total=metrics[name].total * scale)
      return loss, grads, metrics

    def body(carry, inputs):
      return jax.tree.map(jnp.add, carry, one(*inputs)), None

    # Every microbatch runs in the one loop body from a zero carry (gradients shaped and
    # sharded like the parameters): a first microbatch computed outside the loop would be a
    # second copy of the forward and backward program, whose temporaries XLA plans apart.
    loss_shape, _, metrics_shape = jax.eval_shape(one, 0, jax.tree.map(lambda x: x[0], micro))
    zeros = lambda tree: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)
    init = (zeros(loss_shape), jax.tree.map(jnp.zeros_like, params), zeros(metrics_shape))
    (loss, grads, metrics), _ = jax.lax.scan(body, init, (jnp.arange(num_microbatches), micro))
    for name in PER_BATCH_METRICS:
      if name in metrics:
        metrics[name] = metrics[name].replace(count=metrics[name].count // num_microbatches)
    return loss, grads, metrics

  def train_step(state: TrainState, batch: dict, rng: jax.Array):
    dropout_rng = jax.random.fold_in(rng, state.step)
    loss, grads, metrics = grads_of(state.params, batch, dropout_rng)
    finite = jnp.isfinite(loss) & jnp.all(
        jnp.asarray([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)])
    )
    params, opt_state = state.optimizer_def.apply_gradient(
        None, state.params, state.opt_state, grads
    )
    params = {k: state.params[k] if k in freeze else v for k, v in params.items()}
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = state.replace(
        step=state.step + 1,
        params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state),
        skipped=state.skipped + (~finite).astype(jnp.int32),
    )
    return new_state, metrics, finite

  return train_step


# --- the trainer -----------------------------------------------------------------------------


class Trainer:
  """Partitioned train / eval steps. Keyword arguments are gin-bindable (`trainer.Trainer.*`).

  Args:
    model: a `MedPalmMModel` (T5X model contract).
    partitioner: the run's `Partitioner`.
    train_state_axes: mesh PartitionSpecs mirroring the TrainState.
    rng_seed: seed of the dropout rng (folded with the step).
    num_microbatches: gradient accumulation; the global batch must divide by it.
    freeze: top-level parts to keep fixed, among ("vision", "projector", "decoder").
    max_nonfinite_in_a_row: the train loop stops after this many consecutive skipped steps.
  """

  def __init__(
      self,
      model,
      partitioner: Partitioner,
      train_state_axes: Any,
      *,
      rng_seed: int = 0,
      num_microbatches: int | None = None,
      freeze: Sequence[str] = (),
      max_nonfinite_in_a_row: int = 5,
  ):
    if num_microbatches is not None and num_microbatches < 1:
      raise ValueError(f"Trainer.num_microbatches must be >= 1, got {num_microbatches}")
    self.model, self.partitioner = model, partitioner
    self.train_state_axes = train_state_axes
    self.freeze = tuple(freeze)
    self.num_microbatches = num_microbatches or 1
    self.max_nonfinite_in_a_row = max_nonfinite_in_a_row
    self._rng = jax.random.PRNGKey(rng_seed)
    self.step_fn = make_train_step(
        model, freeze=self.freeze, num_microbatches=self.num_microbatches
    )
    data = partitioner.data_partition_spec
    self._train_step = partitioner.partition(
        self.step_fn,
        in_axis_resources=(train_state_axes, data, None),
        out_axis_resources=(train_state_axes, None, None),
        donate_argnums=(0,),
    )
    self._eval_step = partitioner.partition(
        lambda params, batch: model.eval_fn(params, batch)[1],
        in_axis_resources=(train_state_axes.params, data),
        out_axis_resources=None,
    )

  def train_step(self, state: TrainState, batch: dict):
    """(new state, metrics {name: clu Average}, finite bool[]) — all still on device."""
    return self._train_step(state, batch, self._rng)

  def lower_train_step(self, state: Any, batch: Any):
    """The train step lowered for abstract arguments (ShapeDtypeStructs with shardings), as
    `launch/aot_compile.py` compiles it for a TPU slice; the rng stays abstract too."""
    rng = jax.ShapeDtypeStruct(
        self._rng.shape, self._rng.dtype, sharding=self.partitioner.sharding(None)
    )
    return self._train_step.lower(state, batch, rng)

  def eval_step(self, params, batch: dict) -> dict:
    return self._eval_step(params, batch)

  def check_batch(self, global_batch_size: int) -> None:
    if global_batch_size % self.num_microbatches:
      raise ValueError(
          f"batch size {global_batch_size} does not split into "
          f"{self.num_microbatches} microbatches"
      )
