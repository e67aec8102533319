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
  return Evaluator(
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


def restore_params(
    model,
    restore_cfg,
    partitioner: Partitioner,
    dataset_cfg: data_lib.DatasetConfig,
    random_seed: int = 0,
):
  """(params, step, params mesh axes) from a medpalm checkpoint or an imported open one.

  `restore_cfg.path` is a `checkpoint_<step>` directory or a model dir (its latest step); with
  `restore_cfg.importer` it is an open checkpoint (step 0).
  """
  if restore_cfg is None or not restore_cfg.path:
    raise ValueError("evaluation needs RestoreCheckpointConfig.path (gin CHECKPOINT_PATH)")
  layout = partitioner.get_data_layout(dataset_cfg.batch_size)
  ds = data_lib.get_dataset(
      dataset_cfg, layout.shard_id, layout.num_shards, model.FEATURE_CONVERTER_CLS, num_epochs=1
  )
  shapes, types = data_lib.input_shapes_and_types(ds, dataset_cfg.batch_size)
  init = trainer.TrainStateInitializer(model, shapes, types, partitioner)
  if restore_cfg.importer is not None:
    state = init.from_scratch(jax.random.PRNGKey(random_seed))
    shardings = partitioner.shardings(init.train_state_axes.params)
    state, _ = checkpoints.import_into(state, restore_cfg, shardings)
    return state.params, 0, init.train_state_axes.params
  model_dir, step = checkpoints.find_checkpoint(restore_cfg.path, restore_cfg.mode)
  manager = checkpoints.CheckpointManager(model_dir, read_only=True)
  state = manager.restore(step, init.abstract_state())
  manager.close()
  return state.params, step, init.train_state_axes.params


def evaluate(
    *,
    model,
    dataset_cfg: data_lib.DatasetConfig,
    restore_checkpoint_cfg,
    partitioner: Partitioner,
    output_dir: str,
    inference_evaluator_cls=seqio.Evaluator,
    decoder_params: Mapping | None = None,
) -> dict:
  """Evaluates the checkpoint `restore_checkpoint_cfg.path` on `dataset_cfg`'s tasks."""
  params, step, params_axes = restore_params(
      model, restore_checkpoint_cfg, partitioner, dataset_cfg
  )
  checkpoints.ensure_writable(output_dir)
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
