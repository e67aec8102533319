"""The training loop (T5X's `train.train` shape, keyword-only, gin-configured).

    python -m medpalm.main --run_mode=train \
        --gin_file=gin_configs/experiments/multimedbench_12b.gin --gin.MODEL_DIR="'/tmp/run'"

Order of events: data layout -> this host's dataset -> train state shape and axes -> resume from
the latest complete `MODEL_DIR/checkpoint_<step>` (state + input position), else import or init
from scratch -> steps, with a log line every `log_period`, a checkpoint every
`checkpoint_cfg.save.period` (and at the end), loss on `train_eval_dataset_cfg` and inference
metrics on `infer_eval_dataset_cfg` every `eval_period`.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import gin
import jax

from medpalm.driver import checkpoints as ckpt_lib
from medpalm.driver import data as data_lib
from medpalm.driver import eval as eval_lib
from medpalm.driver import summaries
from medpalm.driver import trainer as trainer_lib
from medpalm.partitioning import Partitioner

logger = logging.getLogger("medpalm")


class NonFiniteError(RuntimeError):
  """Too many consecutive steps with a non-finite loss or gradient."""


def write_operative_config(model_dir: str) -> None:
  """Saves the gin config in force (`MODEL_DIR/config.gin`, local or gs://), process 0 only."""
  if jax.process_index() != 0:
    return
  ckpt_lib.write_text(os.path.join(model_dir, "config.gin"), gin.operative_config_str())


def _subtasks(name: str):
  import seqio

  return seqio.get_subtasks(seqio.get_mixture_or_task(name))


def _train_eval(
    trainer,
    params,
    cfg: data_lib.DatasetConfig,
    partitioner: Partitioner,
    eval_steps: int,
    writers: dict,
    step: int,
) -> dict[str, dict[str, float]]:
  """Loss metrics of each task of `cfg` over at most `eval_steps` batches of its split (the
  last one padded with zero-weight rows, so a split smaller than a batch still counts)."""
  import dataclasses

  results = {}
  layout = partitioner.get_data_layout(cfg.batch_size)
  for task in _subtasks(cfg.mixture_or_task_name):
    task_cfg = dataclasses.replace(cfg, mixture_or_task_name=task.name)
    ds = data_lib.get_dataset(
        task_cfg,
        layout.shard_id,
        layout.num_shards,
        trainer.model.FEATURE_CONVERTER_CLS,
        num_epochs=1,
        pad_remainder=True,
    )
    total = None
    batches = data_lib.BatchIterator(
        ds.take(eval_steps), partitioner, validate=trainer.model.validate_batch
    )
    for batch in batches:
      total = summaries.accumulate(total, trainer.eval_step(params, batch))
    if total is None:
      logger.warning(
          "train_eval: %s has no full batch of %d in split %s", task.name, cfg.batch_size, cfg.split
      )
      continue
    values = summaries.compute(total)
    writer = writers.setdefault(
        task.name, summaries.SummaryWriter(os.path.join(writers["_root"], task.name))
    )
    writer.write_scalars(step, values)
    writer.flush()
    results[task.name] = values
    if jax.process_index() == 0:
      print(
          f"step {step} eval {task.name}: loss {values['loss']:.4f} "
          f"accuracy {100 * values['accuracy']:.2f}%",
          flush=True,
      )
  return results


def train(
    *,
    model,
    train_dataset_cfg: data_lib.DatasetConfig,
    train_eval_dataset_cfg: data_lib.DatasetConfig | None = None,
    infer_eval_dataset_cfg: data_lib.DatasetConfig | None = None,
    checkpoint_cfg: ckpt_lib.CheckpointConfig = ckpt_lib.CheckpointConfig(),
    partitioner: Partitioner,
    trainer_cls=trainer_lib.Trainer,
    model_dir: str,
    total_steps: int,
    eval_steps: int = 10,
    eval_period: int | None = None,
    log_period: int = 10,
    random_seed: int = 0,
    run_eval_before_training: bool = False,
    decoder_params: Mapping | None = None,
    stop_after_steps: int | None = None,
) -> tuple[Any, dict[str, float]]:
  """Trains to `total_steps`; returns (final TrainState, metrics of the last step).

  `stop_after_steps` ends this invocation early (a pre-emption drill: the run resumes later);
  the last step of an invocation is always checkpointed, whatever the checkpoint period.
  Raises `NonFiniteError` after `trainer_cls`'s `max_nonfinite_in_a_row` skipped steps in a row.
  `model_dir` may be local or gs:// (every output goes through etils.epath).
  """
  if total_steps < 0:
    raise ValueError(f"total_steps must be >= 0, got {total_steps}")
  if stop_after_steps is not None and stop_after_steps < 1:
    raise ValueError(f"stop_after_steps must be >= 1 or None, got {stop_after_steps}")
  ckpt_lib.ensure_writable(model_dir, "MODEL_DIR")
  batch_size = train_dataset_cfg.batch_size
  layout = partitioner.get_data_layout(batch_size)
  ds = data_lib.get_dataset(
      train_dataset_cfg, layout.shard_id, layout.num_shards, model.FEATURE_CONVERTER_CLS
  )
  iterator = data_lib.BatchIterator(ds, partitioner, validate=model.validate_batch)
  shapes, types = data_lib.input_shapes_and_types(ds, batch_size)
  init = trainer_lib.TrainStateInitializer(model, shapes, types, partitioner)
  trainer = trainer_cls(
      model=model,
      partitioner=partitioner,
      train_state_axes=init.train_state_axes,
      rng_seed=random_seed,
  )
  trainer.check_batch(batch_size)

  save_cfg = checkpoint_cfg.save
  manager = ckpt_lib.CheckpointManager(model_dir, save_cfg)
  step = manager.latest_step()
  if step is not None:
    print(f"resuming from {manager.step_dir(step)}", flush=True)
    state = manager.restore(
        step, init.abstract_state(), iterator if save_cfg is None or save_cfg.save_dataset else None
    )
  else:
    state = init.from_scratch(jax.random.PRNGKey(random_seed))
    restore = checkpoint_cfg.restore
    if restore is not None and restore.path and restore.importer is not None:
      state, _ = ckpt_lib.import_into(
          state, restore, partitioner.shardings(init.train_state_axes.params), report_dir=model_dir
      )
    elif restore is not None and restore.path:
      other_dir, other_step = ckpt_lib.find_checkpoint(restore.path, restore.mode)
      other = ckpt_lib.CheckpointManager(other_dir, read_only=True)
      state = other.restore(
          other_step, init.abstract_state(), iterator if restore.restore_dataset else None
      )
      other.close()
  step = int(jax.device_get(state.step))
  write_operative_config(model_dir)

  inference = None
  if infer_eval_dataset_cfg is not None and eval_period:
    inference = eval_lib.make_evaluator(
        infer_eval_dataset_cfg,
        model,
        partitioner,
        init.train_state_axes.params,
        output_dir=os.path.join(model_dir, "inference_eval"),
        decoder_params=decoder_params,
    )
  writers = {"_root": os.path.join(model_dir, "train_eval")}

  def run_evals(state, step):
    if train_eval_dataset_cfg is not None:
      _train_eval(
          trainer, state.params, train_eval_dataset_cfg, partitioner, eval_steps, writers, step
      )
    if inference is not None:
      inference.evaluate(state.params, step)

  if run_eval_before_training and eval_period:
    run_evals(state, step)

  log = summaries.TrainLogger(model_dir, total_steps, batch_size)
  log.start(step)
  last_step = min(total_steps, step + stop_after_steps) if stop_after_steps else total_steps
  period_metrics, pending, in_a_row, last_values = None, None, 0, {}

  def check(finite, at_step):
    nonlocal in_a_row
    if bool(jax.device_get(finite)):
      in_a_row = 0
      return
    in_a_row += 1
    logger.warning(
        "step %d: non-finite loss or gradient, update skipped (%d in a row)", at_step, in_a_row
    )
    print(
        f"step {at_step}: non-finite loss or gradient; update skipped ({in_a_row} in a row)",
        flush=True,
    )
    if in_a_row >= trainer.max_nonfinite_in_a_row:
      raise NonFiniteError(
          f"{in_a_row} steps in a row (up to step {at_step}) had a non-finite loss or gradient; "
          f"stopping. The last checkpoint in {model_dir} holds finite parameters: lower the "
          f"learning rate or check the data, then restart"
      )

  try:
    while step < last_step:
      batch = next(iterator)
      state, step_metrics, finite = trainer.train_step(state, batch)
      step += 1
      if pending is not None:
        check(*pending)  # the previous step's flag: reading it now keeps dispatch ahead
      pending = (finite, step)
      period_metrics = summaries.accumulate(period_metrics, step_metrics)
      if step == 1:
        write_operative_config(model_dir)
      if step % log_period == 0 or step == last_step:
        check(*pending)
        pending = None
        last_values = summaries.compute(step_metrics)
        log.log(step, period_metrics, skipped=int(jax.device_get(state.skipped)))
        period_metrics = None
      if save_cfg is not None and (step % save_cfg.period == 0 or step == last_step):
        if pending is not None:
          check(*pending)
          pending = None
        manager.save(step, state, iterator)
      if eval_period and (step % eval_period == 0 or step == total_steps):
        run_evals(state, step)
    if pending is not None:
      check(*pending)
  finally:
    manager.wait_until_finished()
    manager.close()
    log.writer.close()
  return state, last_values
