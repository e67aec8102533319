"""MultiMedBench evaluation through `seqio.Evaluator`: decoded answers, rank classification, JSON.

    results = evaluation.evaluate(model, params, "multimedbench_eval", split="test",
                                  sequence_length={"inputs": 966, "targets": 256},
                                  batch_size=8, output_dir="/tmp/run/eval", step=10000)
    # then: python -m medpalm.report --results_dir /tmp/run/eval --output docs/RESULTS.md

How model outputs reach `tasks.metrics` (the tasks' `metric_fns` are `TASK_METRICS[task]`):

* Generation metrics, ``fn(targets, predictions)``: `predict_fn` decodes every example greedily
  with `model.predict_batch_with_aux` (prompt removed, zero-padded); SeqIO decodes the tokens and
  applies the task's postprocessor to them.
* Targets: the task's postprocessor (`tasks.postprocessors.TargetFields`) turns
  ``targets_pretokenized`` plus the example's ``answer_options`` / ``answer_type`` /
  ``condition`` / ``variant_type`` features into the mapping the metrics read.
* Score metrics, ``fn(targets, scores)``: only the rank-classified tasks have them (macro-AUC of
  MIMIC-CXR conditions, PAD-UFES-20, VinDr-Mammo, CBIS-DDSM; `tasks.multimedbench.rank_options`).
  `score_fn` rank-classifies each example *here*: every class option, tokenized exactly as the
  task tokenizes its targets (``" " + option + "."`` then EOS), is scored after the example's
  prompt with `model.score_batch` (`medpalm.rank_classification`), and the example's score is the
  vector float[C] of option log-likelihoods in the task's class order; the metrics softmax it.
  The datasets keep one row per example, so decoding is not repeated per option. A task with
  score metrics but no options gets `score_batch` of its own target (one float per example).

`seqio.Evaluator` calls `score_fn` with the task's cached dataset; the score function finds the
task (and so its options) by the identity of that dataset in `evaluator.cached_model_datasets`.

Results are written per task as ``<output_dir>/<task>/step_<N>.json`` (`medpalm.report`'s layout)
under the canonical name ``multimedbench_<task>`` whatever prefix the task was registered with,
so a test registration and the paper's table line up.

Single process: batches run through `jax.jit` on the default device. A partitioned driver passes
its own `predict_batch` / `score_batch` callables (params, batch) → array to `make_predict_fn` /
`make_score_fn`, which only batch, pad and regroup.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import jax
import numpy as np
import seqio

from medpalm import rank_classification, report

BatchFn = Callable[[Any, Mapping[str, np.ndarray]], Any]  # (params, batch) -> array [B, ...]


def padded_batches(ds, batch_size: int) -> Iterator[tuple[np.ndarray, dict]]:
  """(indices int[B], batch {feature: array[B, ...]}) over an enumerated dataset of model
  features. The last batch is filled with copies of its first row at index -1, so every batch
  has one shape (one compilation); callers drop index -1."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  chunk: list = []
  for index, example in ds.as_numpy_iterator():
    chunk.append((int(index), example))
    if len(chunk) == batch_size:
      yield _stack(chunk, batch_size)
      chunk = []
  if chunk:
    yield _stack(chunk, batch_size)


def _stack(chunk, batch_size):
  indices = [i for i, _ in chunk] + [-1] * (batch_size - len(chunk))
  examples = [ex for _, ex in chunk]
  examples += [examples[0]] * (batch_size - len(examples))
  return np.asarray(indices), {k: np.stack([ex[k] for ex in examples]) for k in examples[0]}


def option_tokens(vocabulary: seqio.Vocabulary, options: Sequence[str]) -> list[list[int]]:
  """Token ids of each class option as the tasks tokenize a target: ``" " + option + "."``
  (tasks.preprocessors.TARGET_PREFIX, tasks.prompts.with_period), then EOS."""
  from tasks import preprocessors, prompts  # local: medpalm does not need tasks to import
  return [list(vocabulary.encode(preprocessors.TARGET_PREFIX + prompts.with_period(o)))
          + [vocabulary.eos_id] for o in options]


def make_predict_fn(model, params, batch_size: int, *, decoder_params: Optional[Mapping] = None,
                    predict_batch: Optional[BatchFn] = None):
  """A SeqIO ``predict_fn(ds) -> [(index, tokens int[L])]``: greedy decodes of every example.

  ``predict_batch(params, batch)`` defaults to jitted `model.predict_batch_with_aux` (first
  output, [B, L], prompt removed) with ``decoder_params``.
  """
  decoder_params = dict(decoder_params or {})
  if predict_batch is None:
    predict_batch = jax.jit(lambda p, b: model.predict_batch_with_aux(
        p, b, decoder_params=decoder_params)[0])

  def predict_fn(ds) -> list:
    out = []
    for indices, batch in padded_batches(ds, batch_size):
      decodes = np.asarray(jax.device_get(predict_batch(params, batch)))
      out += [(int(i), row.tolist()) for i, row in zip(indices, decodes) if i >= 0]
    return out

  return predict_fn


def make_score_fn(model, params, batch_size: int, options_of: Callable[[Any], Optional[list]],
                  *, score_batch: Optional[BatchFn] = None):
  """A SeqIO ``score_fn(ds) -> [(index, score)]``.

  ``options_of(ds)`` gives the option token lists of the task whose dataset ``ds`` is (None: not
  rank-classified). With options, ``score`` is float[C]: the log-likelihood of each option after
  the example's prompt (`rank_classification.rank_classify`, B·C rows per batch); without, it is
  the float log-likelihood of the example's own target. ``score_batch(params, batch) -> [B]``
  defaults to jitted `model.score_batch`.
  """
  score_batch = score_batch or jax.jit(model.score_batch)

  def score_fn(ds) -> list:
    options = options_of(ds)
    out = []
    for indices, batch in padded_batches(ds, batch_size):
      if options:
        scores, _, _ = rank_classification.rank_classify(model, params, batch, options,
                                                         score_fn=score_batch)
        rows = [r.tolist() for r in np.asarray(jax.device_get(scores), np.float64)]
      else:
        rows = np.asarray(jax.device_get(score_batch(params, batch)), np.float64).tolist()
      out += [(int(i), row) for i, row in zip(indices, rows) if i >= 0]
    return out

  return score_fn


def _result_name(task_name: str) -> str:
  """``multimedbench_<task>`` for a task registered by tasks.multimedbench, else the name."""
  from tasks import multimedbench
  try:
    return multimedbench.canonical_name(multimedbench.task_config(task_name).task)
  except KeyError:
    return task_name


def _rank_options(task_name: str) -> Optional[tuple[str, ...]]:
  from tasks import multimedbench
  try:
    return multimedbench.rank_options(task_name)
  except KeyError:
    return None


def evaluator_score_fn(evaluator: seqio.Evaluator, model, params, batch_size: int, *,
                       score_batch: Optional[BatchFn] = None):
  """`make_score_fn` for the tasks of ``evaluator``: each cached task dataset is matched to its
  task by identity, and a rank-classified task (`tasks.multimedbench.rank_options`) scores its
  class options, tokenized with the model's vocabulary. This is the ``score_fn`` a driver that
  owns a `seqio.Evaluator` passes to ``evaluator.evaluate``."""
  task_of = {id(ds): name for name, ds in evaluator.cached_model_datasets.items()}
  tokens = {t.name: option_tokens(model.output_vocabulary, options)
            for t in evaluator.eval_tasks if (options := _rank_options(t.name))}

  def options_of(ds):
    if id(ds) not in task_of:
      raise ValueError("score_fn was given a dataset that is not one of the evaluator's "
                       "cached task datasets; cannot tell which task's options to score")
    return tokens.get(task_of[id(ds)])

  return make_score_fn(model, params, batch_size, options_of, score_batch=score_batch)


def evaluate(model, params, mixture_or_task_name: str, *, split: str = "test",
             sequence_length: Optional[Mapping[str, int]] = None, batch_size: int = 8,
             output_dir: Optional[str] = None, step: int = 0,
             num_examples: Optional[int] = None, decoder_params: Optional[Mapping] = None,
             predict_batch: Optional[BatchFn] = None, score_batch: Optional[BatchFn] = None
             ) -> dict[str, dict[str, Any]]:
  """Evaluates ``params`` on every task of a mixture (or one task) with its metric_fns.

  Args:
    model: a `MedPalmMModel` (its vocabulary tokenizes the rank-classification options).
    sequence_length: task feature lengths (``inputs`` budgets the prompts; None = no budget,
      the longest example sets each length).
    batch_size: examples per batch; rank classification scores batch_size × C rows at once.
    output_dir: when given, each task's metrics go to ``<output_dir>/<task>/step_<step>.json``.
    num_examples: the first N examples of each task (None: all).
  Returns:
    {result task name: {metric: value}}: values as tasks.metrics returns them (floats, NaN for
    "not computed" with a ``<metric>_status`` sentence), keyed by ``multimedbench_<task>``.
  """
  evaluator = seqio.Evaluator(
      mixture_or_task_name=mixture_or_task_name,
      feature_converter=model.FEATURE_CONVERTER_CLS(pack=False), eval_split=split,
      sequence_length=dict(sequence_length) if sequence_length else None,
      num_examples=num_examples, shuffle=False, async_compute_metrics=False)
  if not evaluator.eval_tasks:
    raise ValueError(f"{mixture_or_task_name!r} has no task with split {split!r} and metrics")
  names = {t.name: _result_name(t.name) for t in evaluator.eval_tasks}
  clashes = sorted(n for n in set(names.values()) if list(names.values()).count(n) > 1)
  if clashes:
    raise ValueError(f"several evaluated tasks would write results as {clashes}: evaluate "
                     "one registration of each MultiMedBench task at a time")
  metrics, _ = evaluator.evaluate(
      compute_metrics=True, step=step,
      predict_fn=make_predict_fn(model, params, batch_size, decoder_params=decoder_params,
                                 predict_batch=predict_batch),
      score_fn=evaluator_score_fn(evaluator, model, params, batch_size,
                                  score_batch=score_batch))
  results = {names[task]: values for task, values in metrics.result().items()}
  if output_dir:
    for task, values in results.items():
      report.write_results(output_dir, task, step, values)
  return results
