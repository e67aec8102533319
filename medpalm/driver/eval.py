"""`--run_mode=eval`: the inference metrics of a checkpoint, through `seqio.Evaluator`.

    python -m medpalm.main --run_mode=eval --gin_file=gin_configs/runs/eval.gin \
        --gin_file=gin_configs/models/medpalm_m_tiny.gin \
        --gin.CHECKPOINT_PATH="'/tmp/run/checkpoint_500'" --gin.EVAL_OUTPUT_DIR="'/tmp/run/eval'"

Generative tasks decode greedily (`model.predict_batch`) and are scored by their metric functions
after postprocessing; classification tasks also rank every class option with `model.score_batch`
(`medpalm.evaluation.evaluator`: class probabilities for macro-AUC). Results go to
`<output_dir>/<task>/step_<N>.json` (the layout `python -m medpalm.evaluation.report` reads).

Multi-host: every process reads the whole (small) evaluation set and feeds its rows of each global
batch; outputs are replicated, so every process sees every prediction and only process 0 writes.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import seqio

from medpalm.driver import checkpoints
from medpalm.driver import data as data_lib
from medpalm.driver import trainer
from medpalm.evaluation.evaluator import Evaluator
from medpalm.partitioning import Partitioner


def make_evaluator(
    cfg: data_lib.DatasetConfig,
    model,
    partitioner: Partitioner,
    params_axes: Any,
    output_dir: str | None = None,
    evaluator_cls=seqio.Evaluator,
    decoder_params: Mapping | None = None,
    num_examples: int | None = None,
) -> Evaluator:
  """The evaluation library's `Evaluator` for the tasks of a driver `DatasetConfig`."""
  if cfg.module:
    __import__(cfg.module)
  evaluator = Evaluator(
      model,
      cfg.mixture_or_task_name,
      split=cfg.split,
      sequence_length=cfg.task_feature_lengths,
      batch_size=cfg.batch_size,
      partitioner=partitioner,
      params_axes=params_axes,
      output_dir=output_dir,
      num_examples=num_examples,
      decoder_params=decoder_params,
      seed=cfg.seed,
      use_cached=cfg.use_cached,
      evaluator_cls=evaluator_cls,
  )
  missing = [
      t.name
      for t in seqio.get_subtasks(seqio.get_mixture_or_task(cfg.mixture_or_task_name))
      if t.name not in {e.name for e in evaluator.eval_tasks}
  ]
  if missing:
    # seqio leaves out a task without the split (or without metrics) with only a log line: a
    # silently shorter evaluation reads as a complete one.
    raise ValueError(
        f"evaluating {cfg.mixture_or_task_name!r} on split {cfg.split!r}: task(s) {missing} have "
        f"no such split or no metrics; choose a split every task has (e.g. each task's "
        f"train-eval split) or evaluate the tasks that have it"
    )
  return evaluator


def restore_params(
    model,
    restore_cfg,
    partitioner: Partitioner,
    dataset_cfg: data_lib.DatasetConfig,
    random_seed: int = 0,
    dtype=None,
    report_dir: str | None = None,
):
  """(params, step, params mesh axes) from a medpalm checkpoint or an imported open one.

  Only the parameters are read (never the optimizer state), straight into their shardings and
  cast to `dtype` when given; their shapes come from the model config and the feature lengths,
  so no dataset is read. `restore_cfg.path` is a `checkpoint_<step>` directory or a model dir
  (its latest step), local or gs://; with `restore_cfg.importer` it is an open checkpoint
  (step 0; the import report goes to `report_dir`).
  """
  if restore_cfg is None or not restore_cfg.path:
    raise ValueError("evaluation needs RestoreCheckpointConfig.path (gin CHECKPOINT_PATH)")
  shapes, types = data_lib.model_input_shapes(
      model, dataset_cfg.task_feature_lengths, dataset_cfg.batch_size
  )
  init = trainer.TrainStateInitializer(model, shapes, types, partitioner)
  axes = init.train_state_axes.params
  if restore_cfg.importer is not None:
    params = init.params_from_scratch(jax.random.PRNGKey(random_seed))
    params, _ = checkpoints.import_into(
        params, restore_cfg, partitioner.shardings(axes), report_dir=report_dir
    )
    if dtype is not None:
      params = jax.tree.map(lambda x: x.astype(dtype), params)
    return params, 0, axes
  model_dir, step = checkpoints.find_checkpoint(restore_cfg.path, restore_cfg.mode)
  manager = checkpoints.CheckpointManager(model_dir, read_only=True)
  params = manager.restore_params(step, init.abstract_params(), dtype)
  manager.close()
  return params, step, axes


def evaluate(
    *,
    model,
    dataset_cfg: data_lib.DatasetConfig,
    restore_checkpoint_cfg,
    partitioner: Partitioner,
    output_dir: str,
    inference_evaluator_cls=seqio.Evaluator,
    decoder_params: Mapping | None = None,
    params_dtype=None,
) -> dict:
  """Evaluates the checkpoint `restore_checkpoint_cfg.path` on `dataset_cfg`'s tasks.

  `params_dtype`: cast the restored parameters (e.g. "bfloat16"; None keeps them as saved).
  """
  checkpoints.ensure_writable(output_dir, "output_dir")
  params, step, params_axes = restore_params(
      model,
      restore_checkpoint_cfg,
      partitioner,
      dataset_cfg,
      dtype=params_dtype,
      report_dir=output_dir,
  )
  evaluator = make_evaluator(
      dataset_cfg,
      model,
      partitioner,
      params_axes,
      output_dir,
      evaluator_cls=inference_evaluator_cls,
      decoder_params=decoder_params,
  )
  results = evaluator.evaluate(params, step)
  for task, values in results.items():
    print(
        f"step {step} {task}: "
        + ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()
        ),
        flush=True,
    )
  return results
