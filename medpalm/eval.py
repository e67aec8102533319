"""Evaluation: loss on validation splits, and inference metrics through `seqio.Evaluator`.

    python -m medpalm.main --run_mode=eval --gin_file=gin_configs/runs/eval.gin \
        --gin_file=gin_configs/models/medpalm_m_tiny.gin \
        --gin.CHECKPOINT_PATH="'/tmp/run/checkpoint_500'" --gin.EVAL_OUTPUT_DIR="'/tmp/run/eval'"

Generative tasks decode greedily (`model.predict_batch`) and are scored by their metric functions
after postprocessing; classification tasks also rank every class option with `model.score_batch`
(`medpalm.evaluation.evaluator_score_fn`: class probabilities for macro-AUC). Results go to
`<output_dir>/<task>/step_<N>.json` (the layout `python -m medpalm.report` reads).

Multi-host: every process reads the whole (small) evaluation set and feeds its rows of each global
batch; outputs are replicated, so every process sees every prediction and only process 0 writes.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Mapping

import jax
import numpy as np
import seqio
import tensorflow as tf

from medpalm import data as data_lib
from medpalm import evaluation
from medpalm import report
from medpalm.partitioning import Partitioner

logger = logging.getLogger("medpalm")


def _padded_batches(ds: tf.data.Dataset, batch_size: int):
  """(indices int[B], batch dict of np arrays [B, ...]) over an enumerated dataset; the last batch
  is padded with copies of its first row and index -1 (dropped by the caller)."""
  rows = list(ds.as_numpy_iterator())
  for start in range(0, len(rows), batch_size):
    chunk = rows[start:start + batch_size]
    indices = [int(i) for i, _ in chunk] + [-1] * (batch_size - len(chunk))
    examples = [ex for _, ex in chunk]
    examples += [examples[0]] * (batch_size - len(examples))
    batch = {k: np.stack([ex[k] for ex in examples]) for k in examples[0]}
    yield np.asarray(indices), batch


def make_infer_fn(fn: Callable, batch_size: int, partitioner: Partitioner, params_axes: Any):
  """`infer(ds, params) -> [(index, output)]` running `fn(params, batch)` over global batches.

  `fn` returns an array (or a (array, aux) pair whose array is used) with leading dim B.
  """
  layout = partitioner.get_data_layout(batch_size)
  local = batch_size // layout.num_shards
  jitted = partitioner.partition(fn, in_axis_resources=(params_axes,
                                                        partitioner.data_partition_spec),
                                 out_axis_resources=None)

  def infer(ds: tf.data.Dataset, params) -> list:
    out = []
    for indices, batch in _padded_batches(ds, batch_size):
      rows = slice(layout.shard_id * local, (layout.shard_id + 1) * local)
      host = {k: v[rows] for k, v in batch.items() if not k.startswith("_")}
      result = jitted(params, partitioner.host_local_to_global(host))
      if isinstance(result, tuple):
        result = result[0]
      result = np.asarray(jax.device_get(result))
      out += [(int(i), r.tolist()) for i, r in zip(indices, result) if i >= 0]
    return out

  return infer


class InferenceEvaluator:
  """seqio.Evaluator over `infer_eval_dataset_cfg`'s tasks with the model's predict/score fns."""

  def __init__(self, infer_eval_dataset_cfg: data_lib.DatasetConfig, model, partitioner,
               params_axes: Any, log_dir: str | None = None,
               evaluator_cls=seqio.Evaluator, decoder_params: Mapping | None = None,
               num_examples: int | None = None):
    cfg = infer_eval_dataset_cfg
    if cfg.module:
      __import__(cfg.module)
    self._log_dir = log_dir
    self._evaluator = evaluator_cls(
        mixture_or_task_name=cfg.mixture_or_task_name,
        feature_converter=model.FEATURE_CONVERTER_CLS(pack=False), eval_split=cfg.split,
        use_cached=cfg.use_cached, seed=cfg.seed,
        sequence_length=dict(cfg.task_feature_lengths), shuffle=False,
        num_examples=num_examples)
    decoder_params = dict(decoder_params or {})
    predict = lambda params, batch: model.predict_batch_with_aux(
        params, batch, decoder_params=decoder_params)[0]
    self._predict = make_infer_fn(predict, cfg.batch_size, partitioner, params_axes)
    self._model, self._batch_size = model, cfg.batch_size

  @property
  def eval_tasks(self):
    return self._evaluator.eval_tasks

  def evaluate(self, params, step: int) -> dict[str, dict[str, Any]]:
    """{task: {metric: value}}; process 0 also writes `<log_dir>/<task>/step_<N>.json`."""
    metrics, _ = self._evaluator.evaluate(
        compute_metrics=jax.process_index() == 0, step=step,
        predict_fn=lambda ds: self._predict(ds, params),
        # Classification tasks rank every class option (class probabilities for macro-AUC);
        # other score-based metrics get each example's own target log-likelihood.
        score_fn=evaluation.evaluator_score_fn(self._evaluator, self._model, params,
                                               self._batch_size))
    if metrics is None:
      return {}
    results = metrics.result()
    if self._log_dir and jax.process_index() == 0:
      for task, values in results.items():
        report.write_results(self._log_dir, task, step, values)
    for task, values in results.items():
      logger.info("step %d eval %s: %s", step, task, values)
    return results


def restore_params(model, restore_cfg, partitioner: Partitioner,
                   dataset_cfg: data_lib.DatasetConfig, random_seed: int = 0):
  """(params, step, params mesh axes) from a medpalm checkpoint or an imported open one.

  `restore_cfg.path` is a `checkpoint_<step>` directory or a model dir (its latest step); with
  `restore_cfg.importer` it is an open checkpoint (step 0).
  """
  from medpalm import checkpoints, trainer  # local: keeps this module light to import
  if restore_cfg is None or not restore_cfg.path:
    raise ValueError("evaluation needs RestoreCheckpointConfig.path (gin CHECKPOINT_PATH)")
  layout = partitioner.get_data_layout(dataset_cfg.batch_size)
  ds = data_lib.get_dataset(dataset_cfg, layout.shard_id, layout.num_shards,
                            model.FEATURE_CONVERTER_CLS, num_epochs=1)
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


def evaluate(*, model, dataset_cfg: data_lib.DatasetConfig, restore_checkpoint_cfg,
             partitioner: Partitioner, output_dir: str,
             inference_evaluator_cls=seqio.Evaluator,
             decoder_params: Mapping | None = None) -> dict:
  """Evaluates the checkpoint `restore_checkpoint_cfg.path` on `dataset_cfg`'s tasks."""
  from medpalm import checkpoints
  params, step, params_axes = restore_params(model, restore_checkpoint_cfg, partitioner,
                                             dataset_cfg)
  checkpoints.ensure_writable(output_dir)
  evaluator = InferenceEvaluator(dataset_cfg, model, partitioner, params_axes,
                                 log_dir=output_dir, evaluator_cls=inference_evaluator_cls,
                                 decoder_params=decoder_params)
  results = evaluator.evaluate(params, step)
  for task, values in results.items():
    print(f"step {step} {task}: " + ", ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()),
        flush=True)
  return results
