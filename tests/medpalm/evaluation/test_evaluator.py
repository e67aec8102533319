"""Evaluation end to end: the tiny model on every MultiMedBench task's test split (demo_data
fixtures) through seqio.Evaluator, the per-task JSON, and the report beside the paper's table."""

import json
import math
import os

import flax.linen as nn
import jax
import numpy as np
import pytest
import seqio

from medpalm import features as medpalm_features
from medpalm.models import configs
from medpalm.evaluation import evaluator as evaluation, paper_results, report
from medpalm.evaluation.runner import BatchRunner
from medpalm.model import MedPalmMModel
from medpalm.partitioning import Partitioner
from medpalm.models import medpalm_m
from medpalm.models.medpalm_m import MedPalmM
from tasks import features, metrics, multimedbench, postprocessors, prepare

PREFIX = "mmbeval"
IMAGE_SIZE = 28  # the tiny ViT's 14-pixel patches: 2 × 2 = 4 image tokens
LENGTHS = {"inputs": 128, "targets": 32, "images": 1, "image_mask": 1}
STEP = 7


@pytest.fixture(scope="module")
def setup(tasks_env):
  """The test data at 28 px, the 14 tasks under ``mmbeval``, and a randomly initialised tiny
  model sized to the test vocabulary."""
  env = tasks_env
  prepare.prepare(
      data_dir=str(env.root),
      prepared_dir=str(env.prepared),
      image_size=IMAGE_SIZE,
      progress_bar=False,
  )
  multimedbench.register_all(
      prefix=PREFIX,
      vocabulary=env.vocabulary,
      num_image_tokens=4,
      image_size=IMAGE_SIZE,
      data_dir=str(env.root),
      prepared_dir=str(env.prepared),
      shuffle_buffer_size=64,
  )
  config = configs.get_config("tiny", image_size=IMAGE_SIZE, vocab=env.vocabulary)
  assert config.num_image_tokens == 4
  model = MedPalmMModel(MedPalmM(config), env.vocabulary)
  params = nn.meta.unbox(medpalm_m.init(config, jax.random.key(0)))["params"]
  # A 2×2×2 mesh of the 8 test devices: scoring runs partitioned, as in the driver.
  runner = BatchRunner(Partitioner(2, 2, 2), batch_size=8)
  return env, model, params, runner


def _num_test_examples(name):
  """Examples in a registered task's test split (its cached example table)."""
  return len(multimedbench._table(multimedbench.task_config(name), "test").columns["id"])


def _test_examples(name):
  ds = seqio.get_mixture_or_task(name).get_dataset(LENGTHS, split="test", shuffle=False)
  return list(ds.as_numpy_iterator())


# ----------------------------------------------------------------------------- task hooks


def test_metric_fns_are_the_papers_metrics():
  for task in multimedbench.TASKS:
    assert multimedbench.metric_fns(task) == metrics.TASK_METRICS[f"multimedbench_{task}"]
  ranked = {t for t in multimedbench.TASKS if multimedbench.rank_options(f"multimedbench_{t}")}
  assert ranked == set(multimedbench.RANK_CLASSIFIED)
  # Exactly the rank-classified tasks have score-based metrics (SeqIO routes by argument name).
  for task in multimedbench.TASKS:
    objs = seqio.get_mixture_or_task(f"multimedbench_{task}").metric_objs
    has_score = any(o.model_output_type == seqio.metrics.ModelOutputType.SCORE for o in objs)
    assert has_score == (task in multimedbench.RANK_CLASSIFIED), task


def test_target_fields_postprocessor():
  post = postprocessors.TargetFields(postprocessors.OptionPostprocessor(["No", "Yes"]))
  example = {
      "answer_options": np.array([b"No", b"Yes", b""], object),
      "answer_type": b"",
      "condition": b"pleural effusion",
      "variant_type": b"",
      "id": b"x/1",
  }
  assert post(b" yes.", example=example, is_target=False) == "Yes"
  assert post(b"Yes.", example=example, is_target=True) == {
      "answer": "Yes",
      "options": ["No", "Yes"],
      "condition": "pleural effusion",
      "id": "x/1",
  }
  assert post("Yes.", is_target=True) == {"answer": "Yes"}  # train split: no fields
  vqa = postprocessors.TargetFields(postprocessors.normalize_lower)
  assert vqa(
      "Right Lung.",
      example={"answer_options": np.array([b""], object), "answer_type": b"CLOSED"},
      is_target=True,
  ) == {"answer": "right lung", "answer_type": "CLOSED"}


def test_eval_splits_carry_target_fields_train_does_not(setup):
  env = setup[0]
  cxr = _test_examples(env.name("mimic_cxr_classification"))
  post = seqio.get_mixture_or_task(env.name("mimic_cxr_classification")).postprocess_fn
  conditions = set()
  for ex in cxr:
    target = post(ex["targets_pretokenized"], example=ex, is_target=True)
    assert target["options"] == ["No", "Yes"] and target["answer"] in ("No", "Yes")
    assert target["id"].endswith("/" + target["condition"])
    conditions.add(target["condition"])
  assert conditions == set(metrics.CXR_MAJOR_CONDITIONS)
  genomics = _test_examples(env.name("precisionfda"))
  assert {ex["variant_type"].decode() for ex in genomics} <= {"snp", "indel"}
  vqa = _test_examples(env.name("vqa_rad"))
  assert {ex["answer_type"].decode() for ex in vqa} <= {"OPEN", "CLOSED"}
  medqa = _test_examples(env.name("medqa"))  # carrying the fields keeps the source order
  assert [ex["id"].decode() for ex in medqa] == list(
      multimedbench._table(multimedbench.task_config(env.name("medqa")), "test").columns["id"]
  )
  assert all(len(ex["answer_options"]) == 4 for ex in medqa)
  ds = seqio.get_mixture_or_task(env.name("medqa")).get_dataset(
      LENGTHS, split="train", shuffle=False
  )
  assert not set(postprocessors.TARGET_FIELDS) & set(ds.element_spec)
  # The fields stay out of the model batch (the feature converter drops them).
  batch = next(
      seqio.get_dataset(
          env.name("medqa"),
          LENGTHS,
          dataset_split="test",
          shuffle=False,
          feature_converter=features.feature_converter(),
          batch_size=2,
      ).as_numpy_iterator()
  )
  assert set(batch) == set(features.MODEL_FEATURES)


def test_plain_score_batch_scores_are_reported_not_computed():
  """A driver that scores only the gold target (one float per example) gets a reason, not a
  crash: class probabilities need every option scored."""
  targets = [{"answer": "Yes", "condition": "edema"}, {"answer": "No", "condition": "edema"}]
  for fn in (
      metrics.cxr_score_metrics,
      lambda t, s: metrics.classification_score_metrics(t, s, classes=("No", "Yes")),
  ):
    out = fn(targets, np.array([-1.0, -2.0]))
    assert math.isnan(out["macro_auc"]) and math.isnan(out["macro_f1"])
    assert "rank-classification rows" in metrics.status_text(out["macro_auc_status"])


# ----------------------------------------------------------------------------- rank classification


@pytest.mark.parametrize("task", ["mimic_cxr_classification", "pad_ufes_20"])
def test_rank_rows_score_every_option_after_the_same_prompt(setup, task):
  """An evaluation example becomes one row per class option (SeqIO rank classification): the
  same prompt and image, ``targets`` the option written as a target is; the gold option's row
  is token for token the example's own target (" <answer>." + EOS), so its score is the
  target's log-likelihood. The train split keeps one row per example."""
  env, model, params, _ = setup
  score = jax.jit(model.score_batch)
  name = f"{PREFIX}_{task}"
  classes = multimedbench.rank_options(name)
  rows = _test_examples(name)
  n = _num_test_examples(name)
  assert len(rows) == n * len(classes)
  vocab = env.vocabulary
  post = seqio.get_mixture_or_task(name).postprocess_fn
  for i in range(n):
    group = rows[i * len(classes) : (i + 1) * len(classes)]
    assert [tuple(r["idx"]) for r in group] == [(i, k) for k in range(len(classes))]
    gold_text = group[0]["targets_pretokenized"].decode()
    for k, row in enumerate(group):
      np.testing.assert_array_equal(row["inputs"], group[0]["inputs"])
      np.testing.assert_array_equal(row["images"], group[0]["images"])
      expected = list(vocab.encode(" " + classes[k] + ".")) + [vocab.eos_id]
      assert row["targets"].tolist() == expected
      assert bool(row["is_correct"]) == (gold_text == classes[k] + ".")
      target = post(row["targets_pretokenized"], example=row, is_target=True)
      assert (target["example_index"], target["option_index"]) == (i, k)
      assert target["answer"] == postprocessors.normalize(gold_text)
    gold = [r for r in group if r["is_correct"]]
    assert len(gold) == 1
    assert gold[0]["targets"].tolist() == list(vocab.encode(" " + gold_text)) + [vocab.eos_id]
  train = seqio.get_mixture_or_task(name).get_dataset(LENGTHS, split="train", shuffle=False)
  assert "idx" not in train.element_spec
  # Scores of the rows regroup into one float[C] per example for the score metrics.
  ds = seqio.get_dataset(
      name,
      LENGTHS,
      dataset_split="test",
      shuffle=False,
      feature_converter=model.FEATURE_CONVERTER_CLS(pack=False),
      batch_size=len(rows),
  )
  scores = np.asarray(score(params, next(ds.as_numpy_iterator())))
  targets = [post(r["targets_pretokenized"], example=r, is_target=True) for r in rows]
  grouped, matrix = metrics.option_scores(targets, list(scores))
  assert matrix.shape == (n, len(classes)) and np.isfinite(matrix).all()
  np.testing.assert_array_equal(matrix.reshape(-1), scores)
  assert len(set(np.round(matrix[0], 4))) > 1  # options really differ


# ----------------------------------------------------------------------------- end to end


def test_evaluation_writes_every_task_and_the_report(setup, tmp_path):
  _, model, params, runner = setup
  results_dir = str(tmp_path / "results")
  results = evaluation.evaluate(
      model,
      params,
      f"{PREFIX}_eval",
      split="test",
      sequence_length=LENGTHS,
      batch_size=8,
      output_dir=results_dir,
      step=STEP,
      partitioner=runner.partitioner,
  )
  assert set(results) == set(paper_results.TASKS)
  for task, values in results.items():
    suffix = task.removeprefix("multimedbench_")
    path = report.results_path(results_dir, task, STEP)
    with open(path, encoding="utf-8") as f:
      written = json.load(f)[task]
    n = _num_test_examples(f"{PREFIX}_{suffix}")
    assert n > 0
    if "num_examples" in written:
      assert written["num_examples"] == n, task
    for row in paper_results.results_for(task):  # every paper metric has a value or a reason
      assert row.metric in written, (task, row.metric)
      if written[row.metric] is None:
        assert isinstance(written.get(f"{row.metric}_status"), str), (task, row.metric)
    if suffix in multimedbench.RANK_CLASSIFIED:  # the score path ran: per-class AUC keys
      assert any(k.startswith("auc/") for k in written), task
      assert "macro_f1" in written and "macro_f1_generated" in written
  # Figures the demo data makes computable (several classes / conditions in the test split).
  for task, metric in (
      ("pad_ufes_20", "macro_auc"),
      ("mimic_cxr_classification", "macro_auc"),
      ("vqa_rad", "accuracy_closed"),
      ("mimic_cxr_report", "cider_d"),
      ("medqa", "accuracy"),
      ("precisionfda", "accuracy"),
  ):
    value = results[f"multimedbench_{task}"][metric]
    assert isinstance(value, float) and not math.isnan(value), (task, metric)
  assert 0.0 <= results["multimedbench_pad_ufes_20"]["macro_auc"] <= 100.0
  assert math.isnan(results["multimedbench_mimic_iii"]["f1_radgraph"])  # no scorer installed

  output = tmp_path / "docs" / "RESULTS.md"
  chart = tmp_path / "docs" / "RESULTS.png"
  assert (
      report.main(["--results_dir", results_dir, "--output", str(output), "--chart", str(chart)])
      == 0
  )
  markdown = output.read_text(encoding="utf-8")
  loaded = report.load_results(results_dir)
  assert set(loaded) == set(paper_results.TASKS)
  for task, (_, dataset) in paper_results.TASKS.items():
    assert dataset in markdown and loaded[task].step == STEP
    for row in paper_results.results_for(task):
      assert report.our_value(loaded, task, row.metric)[1] != report.MISSING, (task, row.metric)
  assert chart.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
  assert os.path.getsize(chart) > 1000


def test_a_task_without_examples_in_the_split_is_left_out_saying_so(setup, caplog):
  """A small dataset's held-out slice can be empty: that task is left out with a warning naming
  it, and the others are evaluated (SeqIO itself fails on an empty task mid-evaluation)."""
  _, model, params, runner = setup
  medqa = seqio.get_mixture_or_task(f"{PREFIX}_medqa")
  empty = f"{PREFIX}_medqa_without_examples"
  seqio.TaskRegistry.remove(empty)
  seqio.TaskRegistry.add(
      empty,
      source=medqa.source,
      preprocessors=[lambda ds: ds.take(0), *medqa.preprocessors],
      output_features=medqa.output_features,
      metric_fns=medqa.metric_fns,
  )
  mixture = f"{PREFIX}_with_an_empty_task"
  seqio.MixtureRegistry.remove(mixture)
  seqio.MixtureRegistry.add(mixture, [f"{PREFIX}_pubmedqa", empty], default_rate=1.0)
  with caplog.at_level("WARNING", logger="medpalm"):
    results = evaluation.evaluate(
        model,
        params,
        mixture,
        split="test",
        sequence_length=LENGTHS,
        batch_size=8,
        partitioner=runner.partitioner,
    )
  assert list(results) == ["multimedbench_pubmedqa"]
  assert results["multimedbench_pubmedqa"]["accuracy"] >= 0.0
  assert f"left out 1 task(s) with no example in split 'test': {empty}" in caplog.text


def test_num_examples_counts_whole_examples_of_a_rank_classified_task(setup):
  """`num_examples=N` scores the first N examples, though a rank-classified task's split holds
  a row per class option; a mixture whose tasks have different rows per example is refused."""
  _, model, params, runner = setup
  task = f"{PREFIX}_pad_ufes_20"
  assert medpalm_features.task_info(task).rows_per_example > 1 and _num_test_examples(task) > 3
  results = evaluation.evaluate(
      model,
      params,
      task,
      split="test",
      sequence_length=LENGTHS,
      batch_size=8,
      partitioner=runner.partitioner,
      num_examples=3,
  )
  assert results["multimedbench_pad_ufes_20"]["num_examples"] == 3
  mixture = f"{PREFIX}_ranked_and_generated"
  seqio.MixtureRegistry.remove(mixture)
  seqio.MixtureRegistry.add(mixture, [task, f"{PREFIX}_medqa"], default_rate=1.0)
  with pytest.raises(ValueError, match=rf"different rows per example.*{PREFIX}_medqa 1"):
    evaluation.Evaluator(model, mixture, sequence_length=LENGTHS, num_examples=3)
