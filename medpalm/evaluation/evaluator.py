"""Evaluation through `seqio.Evaluator`: decoded answers, scored targets, results as JSON.

    results = evaluator.evaluate(model, params, "multimedbench_eval", split="test",
                                 sequence_length={"inputs": 966, "targets": 256},
                                 batch_size=8, output_dir="/tmp/run/eval", step=10000)
    # then: python -m medpalm.evaluation.report --results_dir /tmp/run/eval --output RESULTS.md

How model outputs reach the tasks' metric functions (exactly as under T5X's evaluator):

* Generation metrics, ``fn(targets, predictions)``: `predict_fn` decodes every example with
  `model.predict_batch_with_aux` (prompt removed, zero-padded); SeqIO decodes the tokens and
  applies the task's postprocessor.
* Score metrics, ``fn(targets, scores)``: `score_fn` gives every example the log-likelihood of
  its own target (`model.score_batch`). Tasks that need a score per class option express that
  in their data (SeqIO rank classification: one example per option, grouped by the original
  example through the targets), so nothing here knows about options.

Every step runs through the batch runner (`medpalm.evaluation.runner`): compiled by the run's
partitioner (parameters in their mesh shardings), fed one padded batch at a time. Without a
partitioner the evaluation runs on the default device.

Results are written per task as ``<output_dir>/<result name>/step_<N>.json`` (the layout
`medpalm.evaluation.report` reads); the result name is the task's `TaskInfo.result_name`.
Multi-host: every process reads the whole evaluation set and feeds its rows of each batch;
outputs are replicated, and only process 0 computes metrics and writes.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import numpy as np
import seqio

from medpalm import features
from medpalm.evaluation import report
from medpalm.evaluation.runner import BatchRunner, single_device_partitioner
from medpalm.partitioning import Partitioner

logger = logging.getLogger("medpalm")


def predict_fn(runner: BatchRunner, params, step) -> Callable:
  """A SeqIO ``predict_fn(ds) -> [(index, tokens int[L])]`` from a compiled predict step."""

  def predict(ds) -> list:
    out = []
    for indices, _, decodes in runner.map(ds, params, step, name="eval predict"):
      out += [(int(i), row.tolist()) for i, row in zip(indices, decodes) if i >= 0]
    return out

  return predict


def score_fn(runner: BatchRunner, params, step) -> Callable:
  """A SeqIO ``score_fn(ds) -> [(index, float)]`` from a compiled `score_batch` step."""

  def score(ds) -> list:
    out = []
    for indices, _, scores in runner.map(ds, params, step, name="eval score"):
      out += [(int(i), float(s)) for i, s in zip(indices, np.asarray(scores, np.float64)) if i >= 0]
    return out

  return score


def _rows_per_example(mixture_or_task_name: str, split: str) -> int:
  """The rows of `split` per source example, common to every task that has the split."""
  tasks = seqio.get_subtasks(seqio.get_mixture_or_task(mixture_or_task_name))
  rows = {t.name: features.task_info(t.name).rows_per_example for t in tasks if split in t.splits}
  if len(set(rows.values())) > 1:
    listed = ", ".join(f"{name} {n}" for name, n in sorted(rows.items()))
    raise ValueError(
        f"num_examples: the tasks of {mixture_or_task_name!r} have different rows per example in "
        f"split {split!r} ({listed}: rank classification scores one row per class option), "
        "and SeqIO takes the same number of rows from each; evaluate them one at a time"
    )
  return next(iter(rows.values()), 1)


class Evaluator:
  """The tasks of a mixture (or one task), their metrics and results files, for one model.

  Args:
    model: a `MedPalmMModel`.
    mixture_or_task_name: a registered SeqIO mixture or task.
    split: the evaluation split; tasks without it are left out with a warning.
    sequence_length: task feature lengths (None: the longest example sets each length).
    batch_size: global examples per batch.
    partitioner: compiles every step (None: the default device).
    params_axes: mesh PartitionSpecs of the params under `partitioner` (None: replicated).
    output_dir: each task's metrics go to ``<output_dir>/<result name>/step_<step>.json``.
    num_examples: the first N examples of each task (None: all). A rank-classified task's
      split holds one row per class option (`TaskInfo.rows_per_example`); SeqIO takes the
      same number of rows from every task, so a mixture whose tasks have different rows per
      example is refused: evaluate those tasks one at a time.
    decoder_params: passed to `predict_batch_with_aux` (e.g. {"max_decode_length": ...}).
  """

  def __init__(
      self,
      model,
      mixture_or_task_name: str,
      *,
      split: str = "test",
      sequence_length: Optional[Mapping[str, int]] = None,
      batch_size: int = 8,
      partitioner: Optional[Partitioner] = None,
      params_axes: Any = None,
      output_dir: Optional[str] = None,
      num_examples: Optional[int] = None,
      decoder_params: Optional[Mapping] = None,
      seed: Optional[int] = None,
      use_cached: bool = False,
      evaluator_cls=seqio.Evaluator,
  ):
    self._evaluator = evaluator_cls(
        mixture_or_task_name=mixture_or_task_name,
        feature_converter=model.FEATURE_CONVERTER_CLS(pack=False),
        eval_split=split,
        sequence_length=dict(sequence_length) if sequence_length else None,
        num_examples=(
            num_examples * _rows_per_example(mixture_or_task_name, split) if num_examples else None
        ),
        shuffle=False,
        seed=seed,
        use_cached=use_cached,
        async_compute_metrics=False,
    )
    self._leave_out_empty_tasks(mixture_or_task_name, split)
    self.names = {t.name: features.task_info(t.name).result_name for t in self.eval_tasks}
    values = list(self.names.values())
    clashes = sorted({n for n in values if values.count(n) > 1})
    if clashes:
      raise ValueError(
          f"several evaluated tasks of {mixture_or_task_name!r} would write "
          f"results as {clashes}: evaluate one registration of each task at a time"
      )
    self._model, self._output_dir = model, output_dir
    self._runner = BatchRunner(
        partitioner or single_device_partitioner(),
        batch_size,
        params_axes,
        validate=getattr(model, "validate_batch", None),
    )
    decoder_params = dict(decoder_params or {})
    self._predict = self._runner.compile(
        lambda params, batch: model.predict_batch_with_aux(
            params, batch, decoder_params=decoder_params
        )[0]
    )
    self._score = self._runner.compile(model.score_batch)

  @property
  def eval_tasks(self) -> Sequence[seqio.Task]:
    return self._evaluator.eval_tasks

  def _leave_out_empty_tasks(self, mixture_or_task_name: str, split: str) -> None:
    """Drops the tasks whose split has no example (a small dataset's held-out slice can be
    empty), saying which: SeqIO would fail on them with an unpacking error in the middle of an
    evaluation. The cached datasets' cardinality is known once SeqIO has cached them."""
    cached = self._evaluator.cached_task_datasets if self.eval_tasks else {}
    empty = [t.name for t in self.eval_tasks if int(cached[t.name].cardinality()) == 0]
    if empty:
      logger.warning(
          "%s: left out %d task(s) with no example in split %r: %s",
          mixture_or_task_name,
          len(empty),
          split,
          ", ".join(empty),
      )
      # seqio.Evaluator evaluates the list its `eval_tasks` returns.
      self._evaluator.eval_tasks[:] = [t for t in self.eval_tasks if t.name not in empty]

  def evaluate(self, params, step: int = 0) -> dict[str, dict[str, Any]]:
    """{result name: {metric: value}} (values as the metric functions return them; NaN with a
    ``<metric>_status`` sentence for "not computed"). Process 0 writes the results files."""
    metrics, _ = self._evaluator.evaluate(
        compute_metrics=jax.process_index() == 0,
        step=step,
        predict_fn=predict_fn(self._runner, params, self._predict),
        score_fn=score_fn(self._runner, params, self._score),
    )
    if metrics is None:
      return {}
    results = {self.names[task]: values for task, values in metrics.result().items()}
    for task, values in results.items():
      if self._output_dir and jax.process_index() == 0:
        report.write_results(self._output_dir, task, step, values)
      logger.info("step %d eval %s: %s", step, task, values)
    return results


def evaluate(
    model, params, mixture_or_task_name: str, *, step: int = 0, **kwargs
) -> dict[str, dict[str, Any]]:
  """Evaluates ``params`` on every task of a mixture (or one task); see `Evaluator`."""
  evaluator = Evaluator(model, mixture_or_task_name, **kwargs)
  if not evaluator.eval_tasks:
    raise ValueError(
        f"{mixture_or_task_name!r} has no task with split "
        f"{kwargs.get('split', 'test')!r} and metrics"
    )
  return evaluator.evaluate(params, step)
