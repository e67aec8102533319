"""Task metrics: equal to the reference libraries, right on hand-computed cases, and degenerate
inputs reported instead of crashing."""

import inspect
import math

import numpy as np
import pytest
import sacrebleu
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from rouge_score import rouge_scorer
from sklearn import metrics as sk

from medpalm.evaluation import paper_results
from tasks import metrics as m

REPORTS_REF = [
    "No acute cardiopulmonary process.",
    "Mild cardiomegaly with small bilateral pleural effusions.",
    "Right lower lobe opacity may reflect pneumonia in the appropriate clinical setting.",
    "Endotracheal tube terminates 4.5 cm above the carina. No pneumothorax.",
]
REPORTS_PRED = [
    "No acute cardiopulmonary abnormality.",
    "Cardiomegaly with small bilateral pleural effusions.",
    "Opacity at the right lung base, possibly pneumonia.",
    "",
]


def is_not_computed(out, key):
  return math.isnan(out[key]) and "not computed" in m.status_text(out[f"{key}_status"])


# ----------------------------------------------------------------------------- text helpers


def test_tokenize_and_normalize():
  assert m.tokenize("The 1.5 cm CT-scan, X-ray!") == ["the", "1.5", "cm", "ct", "scan", "x", "ray"]
  assert m.tokenize("肺部 CT扫描") == ["肺", "部", "ct", "扫", "描"]
  assert m.tokenize("  ") == []
  assert m.normalize_answer("  Basal Cell  Carcinoma. ") == "basal cell carcinoma"
  assert m.normalize_answer("Ｎｅｖｕｓ。") == "nevus"  # full-width letters and stop (NFKC)
  assert m.normalize_answer('"Yes."') == "yes"


@pytest.mark.parametrize(
    "prediction, expected",
    [
        ("Atrophy.", 2),
        ("atrophy", 2),
        ("(C)", 2),
        ("C", 2),
        ("(c) Atrophy", 2),
        ("(A) Atrophy", 2),  # the option text wins over a wrong letter
        ("The answer is Atrophy.", 2),  # exactly one option named
        ("Atrophy or Dysplasia", None),  # two options named: ambiguous
        ("Necrosis", None),
        ("", None),
        ("(Z)", None),
    ],
)
def test_match_option(prediction, expected):
  options = ["Hyperplasia", "Hypertrophy", "Atrophy", "Dysplasia"]
  assert m.match_option(prediction, options) == expected


def test_match_option_prefers_the_longer_option_it_contains():
  classes = m.CBIS_DDSM_CLASSES
  assert m.match_option("BENIGN_WITHOUT_CALLBACK.", classes) == 1
  assert m.match_option("it is benign_without_callback", classes) == 1
  assert m.match_option("likely benign", classes) == 0


# ----------------------------------------------------------------------------- QA


def test_qa_accuracy_counts_answers_matching_no_option():
  options = ["Procaine", "Prilocaine", "Etidocaine", "Ropivacaine"]
  targets = [{"answer": "Prilocaine", "options": options}] * 4
  out = m.qa_accuracy(targets, ["Prilocaine.", "(B)", "Procaine", "I am not sure"])
  assert out["accuracy"] == pytest.approx(50.0)
  assert out["no_option_count"] == 1
  assert out["num_examples"] == 4


def test_qa_accuracy_without_options_reports_the_count_as_not_computed():
  out = m.qa_accuracy(["Atrophy", "Atrophy"], ["atrophy.", "Dysplasia"])
  assert out["accuracy"] == pytest.approx(50.0)
  assert is_not_computed(out, "no_option_count")


def test_pubmedqa_default_options():
  fn = m.TASK_METRICS["multimedbench_pubmedqa"][0]
  out = fn(["yes", "no", "maybe"], ["Yes.", "perhaps", "maybe"])
  assert out["accuracy"] == pytest.approx(200 / 3)
  assert out["no_option_count"] == 1


def test_qa_target_outside_its_options_is_a_data_error():
  with pytest.raises(ValueError, match="not one of the classes"):
    m.qa_accuracy([{"answer": "Other", "options": ["A1", "B1"]}], ["A1"])


# ----------------------------------------------------------------------------- generated text


def test_rouge_l_equals_rouge_score_with_stemming():
  out = m.rouge_l(REPORTS_REF, REPORTS_PRED)
  scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
  expected = np.mean(
      [scorer.score(r, p)["rougeL"].fmeasure for r, p in zip(REPORTS_REF, REPORTS_PRED)]
  )
  assert out["rougeL"] == pytest.approx(100 * expected)
  # Hand-computed: LCS 5 of 6 reference and 5 predicted tokens → F = 10/11.
  assert m.rouge_l(["the cat sat on the mat"], ["the cat on the mat"])["rougeL"] == (
      pytest.approx(100 * 10 / 11)
  )
  assert m.rouge_l(["effusions"], ["effusion"])["rougeL"] == pytest.approx(100.0)  # stemming


def test_summarization_bleu_equals_sacrebleu_corpus_bleu():
  out = m.summarization_metrics(REPORTS_REF, REPORTS_PRED)
  assert out["bleu"] == pytest.approx(sacrebleu.corpus_bleu(REPORTS_PRED, [REPORTS_REF]).score)
  assert 0 < out["bleu"] < 100


def test_report_generation_equals_pycocoevalcap():
  out = m.report_generation_metrics(REPORTS_REF, REPORTS_PRED)
  refs = {i: [" ".join(m.tokenize(r))] for i, r in enumerate(REPORTS_REF)}
  hyps = {i: [" ".join(m.tokenize(p))] for i, p in enumerate(REPORTS_PRED)}
  bleu, _ = Bleu(4).compute_score(refs, hyps, verbose=0)
  cider, _ = Cider().compute_score(refs, hyps)
  assert out["bleu1"] == pytest.approx(100 * bleu[0])
  assert out["bleu4"] == pytest.approx(100 * bleu[3])
  assert out["cider_d"] == pytest.approx(100 * cider)
  assert out["cider_d"] > 0 and out["bleu4"] > 0


def test_report_generation_bleu_hand_computed():
  # One sentence: all 5 hypothesis unigrams match, 5 vs 8 tokens → BLEU-1 = e^(1-8/5).
  out = m.coco_bleu(
      ["heart size is normal and lungs are clear"], ["Heart size normal, lungs clear."]
  )
  bp = math.exp(1 - 8 / 5)
  assert out["bleu1"] == pytest.approx(100 * bp, rel=1e-6)
  assert m.coco_bleu(["No acute disease."], ["no acute disease"])["bleu1"] == pytest.approx(100)


# ----------------------------------------------------------------------------- VQA


def test_token_f1_hand_computed():
  assert m.token_f1("left lung", "the left lung") == pytest.approx(0.8)
  assert m.token_f1("a a b", "a b b") == pytest.approx(2 / 3)  # repeats are clipped
  assert m.token_f1("Yes", "yes.") == 1.0
  assert m.token_f1("yes", "no") == 0.0
  assert m.token_f1("", "") == 1.0
  assert m.token_f1("yes", "") == 0.0
  assert m.token_f1("肺部", "肺") == pytest.approx(2 / 3)  # CJK: one token per character


def test_bleu1_hand_computed_and_equal_to_sacrebleu():
  # 2 of 3 unigrams clipped-match; hypothesis 3 tokens vs reference 5 → BP = e^(1-5/3).
  assert m.bleu1("the cat sat on mat", "the cat the") == pytest.approx(
      100 * 2 / 3 * math.exp(1 - 5 / 3)
  )
  assert m.bleu1("yes", "no") == 0.0  # no smoothing: a wrong one-word answer scores 0
  expected = sacrebleu.sentence_bleu(
      "left lung", ["the left lung"], tokenize="none", smooth_method="none"
  ).precisions[0]
  assert m.bleu1("the left lung", "left lung") == pytest.approx(expected * math.exp(1 - 3 / 2))


def test_vqa_metrics_per_answer_type():
  targets = [
      {"answer": "Yes", "answer_type": "CLOSED "},
      {"answer": "no", "answer_type": "CLOSED"},
      {"answer": "left lung", "answer_type": "OPEN"},
      {"answer": "肺部", "answer_type": "OPEN"},
  ]
  predictions = ["yes.", "yes", "the left lung", "肺"]
  out = m.vqa_metrics(targets, predictions)
  assert out["accuracy_closed"] == pytest.approx(50.0)
  assert out["accuracy_open"] == pytest.approx(0.0)
  assert out["num_closed"] == 2 and out["num_open"] == 2
  assert out["token_f1"] == pytest.approx(100 * (1 + 0 + 0.8 + 2 / 3) / 4)
  assert out["bleu1"] == pytest.approx(
      np.mean([m.bleu1(t["answer"], p) for t, p in zip(targets, predictions)])
  )


def test_vqa_without_answer_types_reports_closed_accuracy_not_computed():
  out = m.vqa_metrics(["yes"], ["yes"])
  assert out["accuracy"] == 100.0
  assert is_not_computed(out, "accuracy_closed")


# ----------------------------------------------------------------------------- classification


def _random_case(n=40, c=4, seed=0):
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % c
  logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[labels]
  return labels, logits


def test_macro_auc_equals_sklearn():
  labels, logits = _random_case()
  probs = m.softmax(logits)
  names = ["a", "b", "c", "d"]
  out = m.macro_auc(labels, probs, names)
  assert out["macro_auc"] == pytest.approx(
      100 * sk.roc_auc_score(labels, probs, multi_class="ovr", average="macro")
  )
  for k, name in enumerate(names):
    assert out[f"auc/{name}"] == pytest.approx(100 * sk.roc_auc_score(labels == k, probs[:, k]))
  assert "macro_auc_status" not in out


def test_macro_f1_equals_sklearn():
  labels, logits = _random_case(seed=1)
  predicted = logits.argmax(1)
  out = m.macro_f1(labels, predicted, ["a", "b", "c", "d"])
  assert out["macro_f1"] == pytest.approx(100 * sk.f1_score(labels, predicted, average="macro"))
  per_class = sk.f1_score(labels, predicted, average=None)
  assert [out[f"f1/{n}"] for n in "abcd"] == pytest.approx(list(100 * per_class))


def test_classification_from_scores_uses_softmax_probabilities():
  classes = m.CBIS_DDSM_CLASSES
  labels, logits = _random_case(n=30, c=3, seed=2)
  targets = [classes[k] + "." for k in labels]
  out = m.classification_score_metrics(targets, logits, classes=classes)
  probs = m.softmax(logits)
  assert out["macro_auc"] == pytest.approx(100 * sk.roc_auc_score(labels, probs, multi_class="ovr"))
  assert out["macro_f1"] == pytest.approx(
      100 * sk.f1_score(labels, logits.argmax(1), average="macro")
  )
  # The same scores in the rank-classification layout (one row per option) give the same result.
  rows = [
      ({"answer": targets[i], "example_index": i, "option_index": j}, logits[i, j])
      for i in range(len(targets))
      for j in range(3)
  ][::-1]
  flat = m.classification_score_metrics([r[0] for r in rows], [r[1] for r in rows], classes=classes)
  assert flat["macro_auc"] == pytest.approx(out["macro_auc"])
  assert flat["macro_f1"] == pytest.approx(out["macro_f1"])


def test_classification_from_text_counts_unmatched_answers():
  classes = m.PAD_UFES_20_CLASSES
  targets = ["Nevus", "Melanoma", "Nevus", "Basal Cell Carcinoma"]
  predictions = ["nevus.", "I cannot tell", "Melanoma", "Basal Cell Carcinoma"]
  out = m.classification_text_metrics(targets, predictions, classes=classes)
  assert out["accuracy"] == pytest.approx(50.0)
  assert out["no_option_count"] == 1
  y = [0, 5, 0, 1]
  p = [0, -1, 5, 1]
  assert out["macro_f1_generated"] == pytest.approx(
      100 * sk.f1_score(y, p, labels=[0, 1, 5], average="macro")
  )
  assert out["f1_generated/basal_cell_carcinoma"] == pytest.approx(100.0)  # key-safe class names


def test_auc_undefined_with_a_single_class_in_targets():
  classes = m.CBIS_DDSM_CLASSES
  out = m.classification_score_metrics(
      ["MALIGNANT"] * 3, np.log([[0.2, 0.3, 0.5]] * 3), classes=classes
  )
  assert math.isnan(out["macro_auc"])
  assert "only one class present" in m.status_text(out["macro_auc_status"])
  assert out["macro_f1"] == pytest.approx(100.0)  # F1 is still defined


def test_auc_averages_defined_classes_and_names_the_others():
  labels = [0, 1, 0, 1]
  probs = np.array([[0.9, 0.1, 0], [0.2, 0.8, 0], [0.6, 0.4, 0], [0.3, 0.7, 0]])
  out = m.macro_auc(labels, probs, ["x", "y", "z"])
  assert out["macro_auc"] == pytest.approx(100.0)
  assert math.isnan(out["auc/z"])
  assert "z" in m.status_text(out["macro_auc_status"])


def test_cxr_classification_averages_major_conditions():
  rng = np.random.default_rng(3)
  conditions = ["edema"] * 10 + ["cardiomegaly"] * 10 + ["fracture"] * 6
  answers = ["Yes", "No"] * 13
  targets = [{"answer": a, "condition": c} for a, c in zip(answers, conditions)]
  logits = rng.normal(size=(26, 2))
  out = m.cxr_score_metrics(targets, logits)
  p_yes = m.softmax(logits)[:, 1]
  y = np.array([a == "Yes" for a in answers])
  expected = [sk.roc_auc_score(y[s], p_yes[s]) for s in (slice(0, 10), slice(10, 20))]
  assert out["auc/edema"] == pytest.approx(100 * expected[0])
  assert out["macro_auc"] == pytest.approx(100 * np.mean(expected))  # fracture is not major
  f1 = [sk.f1_score(y[s], p_yes[s] > 0.5) for s in (slice(0, 10), slice(10, 20))]
  assert out["macro_f1"] == pytest.approx(100 * np.mean(f1))
  text = m.cxr_text_metrics(targets, ["yes"] * 20 + ["maybe"] * 6)
  assert text["no_option_count"] == 6
  assert text["f1_generated/edema"] == pytest.approx(100 * sk.f1_score(y[:10], [1] * 10))


# ----------------------------------------------------------------------------- genomics


def test_variant_type():
  assert m.variant_type("A", ["G"]) == "snp"
  assert m.variant_type("A", ["G", "T"]) == "snp"
  assert m.variant_type("A", ["AT"]) == "indel"
  assert m.variant_type("ACG", ["A"]) == "indel"


def test_snp_and_indel_f1_on_a_hand_made_confusion():
  # (truth, called, type, how many)
  cases = [
      ("1", "1", "snp", 3),
      ("2", "2", "snp", 1),  # 4 TP
      ("1", "2", "snp", 1),  # genotype error: 1 FN + 1 FP
      ("2", "0", "snp", 2),  # 2 FN
      ("0", "1", "snp", 1),  # 1 FP
      ("0", "0", "snp", 5),  # true negatives, not counted
      ("1", "1", "indel", 1),  # 1 TP
      ("0", "2", "indel", 2),  # 2 FP
      ("1", "no idea", "indel", 1),
  ]  # no-call: 1 FN
  targets, predictions = [], []
  for truth, called, kind, count in cases:
    targets += [{"answer": truth, "variant_type": kind}] * count
    predictions += [called] * count
  out = m.genomics_metrics(targets, predictions)
  assert (out["snp_tp"], out["snp_fp"], out["snp_fn"]) == (4, 2, 3)
  assert out["snp_precision"] == pytest.approx(100 * 4 / 6)
  assert out["snp_recall"] == pytest.approx(100 * 4 / 7)
  assert out["snp_f1"] == pytest.approx(100 * 8 / 13)
  assert (out["indel_tp"], out["indel_fp"], out["indel_fn"]) == (1, 2, 1)
  assert out["indel_f1"] == pytest.approx(100 * 0.4)
  assert out["accuracy"] == pytest.approx(100 * (4 + 5 + 1) / 17)
  assert out["no_option_count"] == 1
  assert (out["all_tp"], out["all_fp"], out["all_fn"]) == (5, 4, 4)


def test_genomics_without_variant_types():
  out = m.genomics_metrics(["1", "0", "2"], ["1", "1", "2"])
  assert out["all_f1"] == pytest.approx(100 * 2 * 2 / (2 * 2 + 1))
  assert is_not_computed(out, "snp_f1") and is_not_computed(out, "indel_f1")
  assert "variant_type" in m.status_text(out["snp_f1_status"])


def test_genomics_without_indels_reports_indel_f1_not_computed():
  out = m.genomics_metrics([{"answer": "1", "variant_type": "snp"}], ["1"])
  assert out["snp_f1"] == pytest.approx(100.0)
  assert is_not_computed(out, "indel_f1")


# ----------------------------------------------------------------------------- pluggable scorers


def test_pluggable_scorers_report_not_computed_without_a_scorer():
  out = m.f1_radgraph(["a"], ["b"])
  assert is_not_computed(out, "f1_radgraph")
  out = m.chexbert_f1(["a"], ["b"])
  for key in ("micro_f1_14", "macro_f1_14", "micro_f1_5", "macro_f1_5"):
    assert is_not_computed(out, key)


def _keyword_labeler(texts):
  return np.array([[int(c.lower() in t.lower()) for c in m.CHEXBERT_CONDITIONS] for t in texts])


def test_pluggable_scorers_use_the_installed_scorer():
  out = m.f1_radgraph(REPORTS_REF, REPORTS_PRED, scorer=lambda refs, preds: [0.5, 0.25, 0, 0.25])
  assert out["f1_radgraph"] == pytest.approx(25.0)
  m.set_chexbert_labeler(_keyword_labeler)
  try:
    out = m.chexbert_f1(REPORTS_REF, REPORTS_PRED)
  finally:
    m.set_chexbert_labeler(None)
  gold, pred = _keyword_labeler(REPORTS_REF), _keyword_labeler(REPORTS_PRED)
  five = [m.CHEXBERT_CONDITIONS.index(c) for c in m.CHEXBERT_FIVE]
  assert out["micro_f1_14"] == pytest.approx(100 * sk.f1_score(gold, pred, average="micro"))
  assert out["macro_f1_14"] == pytest.approx(
      100 * sk.f1_score(gold, pred, average="macro", zero_division=0)
  )
  assert out["micro_f1_5"] == pytest.approx(
      100 * sk.f1_score(gold[:, five], pred[:, five], average="micro")
  )
  assert out["micro_f1_5"] > 0
  assert is_not_computed(m.chexbert_f1(["a"], ["b"]), "micro_f1_14")  # uninstalled again


def test_a_failing_scorer_is_reported_not_raised():
  def broken(refs, preds):
    raise RuntimeError("model file not found")

  out = m.f1_radgraph(["a"], ["b"], scorer=broken)
  assert math.isnan(out["f1_radgraph"])
  assert "model file not found" in m.status_text(out["f1_radgraph_status"])


# ----------------------------------------------------------------------------- degenerate inputs


def test_no_examples_are_reported_for_every_task():
  for task, fns in m.TASK_METRICS.items():
    for fn in fns:
      out = fn([], [])
      numbers = {
          k: v for k, v in out.items() if not k.endswith("_status") and not k.startswith("num_")
      }
      assert numbers, (task, out)
      for key, value in numbers.items():
        assert math.isnan(value), (task, key)
        assert m.status_text(out[f"{key}_status"]), (task, key)


def test_empty_strings_and_non_ascii_text_do_not_crash():
  refs = ["肺部正常。", "Épanchement pleural", ""]
  preds = ["", "épanchement pleural", "肺"]
  for fn in (m.summarization_metrics, m.report_generation_metrics, m.vqa_metrics):
    out = fn(refs, preds)
    assert all(not isinstance(v, float) or 0 <= v or math.isnan(v) for v in out.values())
  assert m.vqa_metrics(refs, preds)["token_f1"] == pytest.approx(100 / 3)
  out = m.cider_d([""], [""])
  assert is_not_computed(out, "cider_d")


def test_mismatched_lengths_are_an_error():
  with pytest.raises(ValueError, match="2 targets but 1"):
    m.vqa_metrics(["a", "b"], ["a"])


# ----------------------------------------------------------------------------- task table


def _example_inputs(task):
  """Four targets, predictions and option scores shaped like each task's evaluation data."""
  classes = m.TASK_CLASSES.get(task)
  if task == "multimedbench_mimic_cxr_classification":
    targets = [
        {"answer": a, "condition": c}
        for a, c in [
            ("Yes", "edema"),
            ("No", "edema"),
            ("Yes", "atelectasis"),
            ("No", "atelectasis"),
        ]
    ]
  elif task == "multimedbench_precisionfda":
    targets = [
        {"answer": g, "variant_type": v}
        for g, v in [("1", "snp"), ("0", "snp"), ("2", "indel"), ("1", "indel")]
    ]
  elif classes:
    targets = [classes[i % len(classes)] for i in range(4)]
  elif task in ("multimedbench_medqa", "multimedbench_medmcqa", "multimedbench_pubmedqa"):
    targets = [{"answer": "yes", "options": ["yes", "no", "maybe"]}] * 4
  elif task in ("multimedbench_vqa_rad", "multimedbench_slake", "multimedbench_path_vqa"):
    targets = [
        {"answer": "yes", "answer_type": "CLOSED"},
        {"answer": "brain", "answer_type": "OPEN"},
    ] * 2
  else:
    targets = REPORTS_REF
  predictions = [m.answer_of(t) for t in targets[:3]] + ["something else"]
  width = len(classes) if classes else 2
  scores = np.random.default_rng(0).normal(size=(4, width))
  return targets, predictions, scores


@pytest.mark.parametrize("task", list(paper_results.TASKS))
def test_task_metrics_produce_every_paper_metric(task):
  out = {}
  for fn in m.TASK_METRICS[task]:
    names = [
        k
        for k, p in inspect.signature(fn).parameters.items()
        if p.default is inspect.Parameter.empty
        and p.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD
    ]
    assert names in (["targets", "predictions"], ["targets", "scores"])  # SeqIO's routing rule
    targets, predictions, scores = _example_inputs(task)
    result = fn(targets, scores if names[1] == "scores" else predictions)
    assert not set(result) & set(out), "metric keys must be unique within a task"
    out.update(result)
  for row in paper_results.results_for(task):
    value = out[row.metric]
    assert isinstance(value, float)
    assert math.isnan(value) == (
        f"{row.metric}_status" in out
        and row.metric in ("f1_radgraph", "micro_f1_14", "macro_f1_14", "micro_f1_5", "macro_f1_5")
    )


def test_task_metrics_cover_exactly_the_fourteen_tasks():
  assert set(m.TASK_METRICS) == set(paper_results.TASKS)
  assert len(m.TASK_METRICS) == 14


def test_seqio_routes_the_metric_functions_and_accepts_status_text():
  import seqio  # pylint: disable=g-import-not-at-top  (imports TensorFlow: a few seconds)

  task = seqio.Task(
      "metrics_test_cbis",
      source=seqio.FunctionDataSource(lambda split, shuffle_files: None, splits=["test"]),
      output_features={},
      metric_fns=m.TASK_METRICS["multimedbench_cbis_ddsm_mass"],
  )
  assert len(task.predict_metric_fns) == 1 and len(task.score_metric_fns) == 1
  out = m.f1_radgraph(["a"], ["b"])
  assert isinstance(out["f1_radgraph_status"], seqio.metrics.Text)
  assert "not computed" in m.status_text(out["f1_radgraph_status"])


def test_cxr_condition_with_a_single_answer_is_left_out_and_named():
  targets = [{"answer": "Yes", "condition": "edema"}] * 3 + [
      {"answer": a, "condition": "cardiomegaly"} for a in ("Yes", "No", "No")
  ]
  logits = np.log([[0.3, 0.7], [0.6, 0.4], [0.2, 0.8], [0.1, 0.9], [0.5, 0.5], [0.8, 0.2]])
  out = m.cxr_score_metrics(targets, logits)
  assert math.isnan(out["auc/edema"])
  assert out["macro_auc"] == pytest.approx(out["auc/cardiomegaly"])
  assert "edema" in m.status_text(out["macro_auc_status"])
  only_edema = m.cxr_score_metrics(targets[:3], logits[:3])
  assert math.isnan(only_edema["macro_auc"]) and "undefined" in m.status_text(
      only_edema["macro_auc_status"]
  )
