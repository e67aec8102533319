"""MultiMedBench task metrics as SeqIO metric functions.

Every task gets the metrics of the paper's Table 2 (Tu et al., arXiv:2307.14334), computed with
the libraries the field uses, plus a few diagnostics (counts, per-class figures).

Conventions (read these once; every function below follows them)
----------------------------------------------------------------
* **Signatures.** Generation metrics are ``fn(targets, predictions) -> dict``; scoring metrics
  are ``fn(targets, scores) -> dict``. SeqIO routes a metric function by the names of its
  positional arguments, so ``TASK_METRICS[task]`` can be passed to ``seqio.Task(metric_fns=...)``
  as is: the score-based ones run on ``score_batch`` output, the others on decoded text.
* **Predictions** are the decoded, post-processed answer strings (``bytes`` are decoded as UTF-8).
* **Targets** are either the reference string, or a mapping (what a SeqIO target postprocessor
  returns when it is given the example) with these keys:

  ``answer`` (str, required)      reference answer / class label / report text.
  ``options`` (list[str])         the answer options of a multiple-choice question.
  ``answer_type`` (str)           VQA question type, e.g. ``"CLOSED"`` / ``"OPEN"``.
  ``condition`` (str)             MIMIC-CXR classification: the condition asked about.
  ``variant_type`` (str)          genomics: ``"snp"`` or ``"indel"`` (see :func:`variant_type`).
  ``example_index``, ``option_index`` (int), ``is_correct`` (bool)
                                  rank-classification layout: one row per (example, option);
                                  generation metrics read the option-0 row of each example.

* **Scores** (score-based metrics) are per-option log-likelihoods of the option texts, as
  ``score_batch`` returns them: either ``float[N, C]`` (row = example, column = option in the
  task's class order) or one float per row in the rank-classification layout above. They become
  class probabilities by a softmax over the options of each example.
* **Scale.** Headline values are percentages (0-100), like the paper's tables; counts are counts.
* **Not computed.** A value that cannot be computed is ``float('nan')`` and comes with a key
  ``<metric>_status`` holding a sentence that says why (no examples, AUC undefined because a
  class has no positives or no negatives, no RadGraph scorer configured, ...). The status is a
  ``seqio.metrics.Text`` when SeqIO is loaded (so every SeqIO logger accepts it), else a ``str``.
  NaN is never a valid score, so it cannot be mistaken for a number.

Text handling is defined once:
* :func:`normalize_answer` — for matching an answer to an option (NFKC, case-folded, whitespace
  collapsed, trailing periods and wrapping quotes removed).
* :func:`tokenize` — for VQA BLEU-1 / token F1 and the report-generation BLEU-1/4 and CIDEr-D:
  NFKC, case-folded; tokens are runs of letters/digits (decimal numbers like ``1.5`` kept whole),
  every CJK / kana / hangul character is its own token, punctuation is dropped.
* ROUGE-L uses rouge-score's own tokenizer (ASCII letters and digits only, Porter stemming);
  corpus BLEU for summarization uses sacrebleu's default ``13a`` tokenizer.

Per task (``TASK_METRICS``; the paper leaves these definitions open, so they are ours):
* MedQA / MedMCQA / PubMedQA — :func:`qa_accuracy`: the answer is matched to an option
  (:func:`match_option`); one naming no option is wrong and counted in ``no_option_count``.
* MIMIC-III — :func:`summarization_metrics` (mean ROUGE-L F, corpus sacreBLEU) and
  :func:`f1_radgraph` (pluggable).
* VQA-RAD / Slake / Path-VQA — :func:`vqa_metrics`: mean sentence BLEU-1 and mean token F1,
  exact-match accuracy per ``answer_type``.
* MIMIC-CXR reports — :func:`report_generation_metrics` (pycocoevalcap corpus BLEU-1/4,
  CIDEr-D; mean ROUGE-L), :func:`f1_radgraph` and :func:`chexbert_f1` (pluggable).
* Classification — :func:`classification_score_metrics` (macro-AUC of softmax-normalized option
  scores, one-vs-rest; macro-F1 of the argmax class) and :func:`classification_text_metrics`
  (accuracy, macro-F1 of the generated answer). MIMIC-CXR: one Yes/No question per condition;
  AUC of P(Yes) and F1 of "Yes" per condition, averaged over the five major conditions.
* PrecisionFDA — :func:`genomics_metrics`: genotype accuracy; hap.py-style F1 per variant type
  (genotype 0 = no variant; a wrong non-zero genotype is one FN and one FP).
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import re
import sys
import unicodedata
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU
from sklearn import metrics as sk_metrics

NAN = float("nan")
Metrics = dict[str, Any]


# ----------------------------------------------------------------------------- status values


def _status(text: str):
  """A human-readable status value (``seqio.metrics.Text`` when SeqIO is already loaded)."""
  seqio_metrics = sys.modules.get("seqio.metrics")
  if seqio_metrics is not None and hasattr(seqio_metrics, "Text"):
    return seqio_metrics.Text(textdata=text)
  return text


def status_text(value) -> Optional[str]:
  """The sentence inside a status value (``str`` or ``seqio.metrics.Text``), else None."""
  if isinstance(value, str):
    return value
  return getattr(value, "textdata", None)


def not_computed(name: str, why: str) -> Metrics:
  """``{name: nan, name_status: why}`` — the one way a metric says it has no value."""
  return {name: NAN, f"{name}_status": _status(why)}


def _no_examples(*names: str) -> Metrics:
  out: Metrics = {}
  for name in names:
    out.update(not_computed(name, "not computed: no examples"))
  return out


# ----------------------------------------------------------------------------- target access


def _text(value) -> str:
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.ndarray) and value.shape == ():
    return _text(value.item())
  return "" if value is None else str(value)


def answer_of(target) -> str:
  """The reference text of a target (a string, or a mapping with ``answer``)."""
  if isinstance(target, Mapping):
    return _text(target["answer"])
  return _text(target)


def field_of(target, key: str, default=None):
  """An optional field of a mapping target (``default`` for string targets)."""
  if isinstance(target, Mapping):
    value = target.get(key, default)
    if isinstance(value, np.ndarray):
      return _text(value) if value.shape == () else value.tolist()
    return _text(value) if isinstance(value, bytes) else value
  return default


def _options(target) -> list[str]:
  """The ``options`` of a mapping target as strings ([] when there are none)."""
  options = field_of(target, "options")
  return [] if options is None else [_text(o) for o in options]


def _slug(name: str) -> str:
  """A metric-key-safe class name: ``"Basal Cell Carcinoma"`` → ``basal_cell_carcinoma``."""
  return re.sub(r"\W+", "_", str(name).strip().casefold()).strip("_") or "_"


def _check_lengths(targets, predictions) -> int:
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions/scores.")
  return len(targets)


def one_row_per_example(targets, predictions) -> tuple[list, list]:
  """Rank-classification rows (targets with ``option_index``: one row per class option, all
  with the example's prompt, so the same decode) → the row of option 0 of each example; other
  targets pass as they are. Generation metrics count each example once."""
  _check_lengths(targets, predictions)
  targets, predictions = list(targets), list(predictions)
  if not targets or field_of(targets[0], "option_index") is None:
    return targets, predictions
  keep = [i for i, t in enumerate(targets) if int(field_of(t, "option_index")) == 0]
  return [targets[i] for i in keep], [predictions[i] for i in keep]


# ----------------------------------------------------------------------------- text handling

_TRAILING = " \t\n.。．"
_QUOTES = "\"'`“”‘’«»"
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_TOKEN_RE = re.compile(rf"[{_CJK}]|\d+(?:[.,]\d+)+|[^\W_{_CJK}]+")


def normalize_answer(text) -> str:
  """Canonical form for option matching: NFKC, case-folded, single spaces, no trailing period.

  ``"  Basal Cell  Carcinoma. "`` and ``"basal cell carcinoma"`` normalize to the same string;
  inner punctuation (``BENIGN_WITHOUT_CALLBACK``, ``1.5``) is kept because it distinguishes
  options.
  """
  text = unicodedata.normalize("NFKC", _text(text)).casefold()
  text = " ".join(text.split())
  previous = None
  while previous != text:
    previous = text
    text = text.strip(_QUOTES).rstrip(_TRAILING).strip()
  return text


def tokenize(text) -> list[str]:
  """The one tokenization of VQA BLEU-1 / token F1 and report BLEU-1/4 / CIDEr-D (module doc)."""
  return _TOKEN_RE.findall(unicodedata.normalize("NFKC", _text(text)).casefold())


_LETTER_RE = re.compile(r"^\(\s*([a-z])\s*\)\s*(.*)$")


def match_option(prediction, options: Sequence[str]) -> Optional[int]:
  """Index of the option a free-text answer names, or None when it names none (or several).

  Rules, in order, all on :func:`normalize_answer` forms:
    1. the answer equals an option's text;
    2. the answer is an option letter, ``"(B)"`` / ``"B"``, optionally followed by the option
       text (``"(B) Prilocaine"``; when that text is another option's, the text wins);
    3. exactly one option appears in the answer as whole words (``"The answer is Atrophy"``);
       an option contained in a longer matching option (``benign`` in
       ``benign_without_callback``) does not count. Two different options → no match.
  """
  pred = normalize_answer(prediction)
  norm = [normalize_answer(o) for o in options]
  if not pred:
    return None
  if pred in norm:
    return norm.index(pred)
  letter = _LETTER_RE.match(pred)
  if letter or (len(pred) == 1 and "a" <= pred <= "z"):
    index = ord((letter.group(1) if letter else pred)) - ord("a")
    rest = normalize_answer(letter.group(2)) if letter else ""
    if rest and rest in norm:
      return norm.index(rest)
    if index < len(options):
      return index
  hits = [i for i, o in enumerate(norm) if o and re.search(rf"(?<!\w){re.escape(o)}(?!\w)", pred)]
  hits = [i for i in hits if not any(norm[i] != norm[j] and norm[i] in norm[j] for j in hits)]
  if hits and len({norm[i] for i in hits}) == 1:
    return hits[0]
  return None


def _class_index(target, classes: Sequence[str]) -> int:
  """Gold class of a target; a target that is not one of the classes is a data error."""
  index = match_option(answer_of(target), classes)
  if index is None or normalize_answer(answer_of(target)) != normalize_answer(classes[index]):
    raise ValueError(f"Target {answer_of(target)!r} is not one of the classes {list(classes)}.")
  return index


# ----------------------------------------------------------------------------- question answering


def qa_accuracy(
    targets, predictions, *, default_options: Optional[Sequence[str]] = None
) -> Metrics:
  """Multiple-choice accuracy: the answer is matched to an option (:func:`match_option`).

  Options come from each target's ``options``, else ``default_options`` (PubMedQA: yes / no /
  maybe). An answer that names no option is wrong and also counted in ``no_option_count``. When
  no target carries options, accuracy is exact match after normalization and the no-option count
  is reported as not computed.
  """
  n = _check_lengths(targets, predictions)
  if n == 0:
    return {**_no_examples("accuracy", "no_option_count"), "num_examples": 0.0}
  correct = no_option = with_options = 0
  for target, prediction in zip(targets, predictions):
    options = _options(target) or default_options
    if options:
      with_options += 1
      got = match_option(prediction, options)
      if got is None:
        no_option += 1
      elif got == _class_index(target, options):
        correct += 1
    elif normalize_answer(prediction) == normalize_answer(answer_of(target)):
      correct += 1
  out: Metrics = {"accuracy": 100.0 * correct / n, "num_examples": float(n)}
  if with_options:
    out["no_option_count"] = float(no_option)
    if with_options < n:
      out["no_option_count_status"] = _status(
          f"counted over the {with_options} of {n} examples that carry options"
      )
  else:
    out.update(not_computed("no_option_count", "not computed: targets carry no options"))
  return out


def tb_accuracy(targets, predictions) -> Metrics:
  """Zero-shot tuberculosis accuracy (Table 4): the Yes/No answer to "Is it a normal chest
  x-ray?" is extracted from the free-text prediction by tasks.postprocessors.extract_yes_no
  (chain-of-thought text included) and compared with the target's. A prediction without an
  answer is wrong and counted in ``no_answer_count``; its status gives the count per reason."""
  from tasks.postprocessors import extract_yes_no  # pylint: disable=g-import-not-at-top

  n = _check_lengths(targets, predictions)
  if n == 0:
    return {**_no_examples("accuracy", "no_answer_count"), "num_examples": 0.0}
  correct, reasons = 0, collections.Counter()
  for target, prediction in zip(targets, predictions):
    answer, why = extract_yes_no(prediction)
    if answer is None:
      reasons[why] += 1
    elif answer.lower() == normalize_answer(answer_of(target)):
      correct += 1
  out: Metrics = {
      "accuracy": 100.0 * correct / n,
      "num_examples": float(n),
      "no_answer_count": float(sum(reasons.values())),
  }
  if reasons:
    out["no_answer_count_status"] = _status(
        "counted as wrong: " + "; ".join(f"{k} ({v})" for k, v in sorted(reasons.items()))
    )
  return out


# ----------------------------------------------------------------------------- generated text

_ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(targets, predictions) -> Metrics:
  """Mean ROUGE-L F-measure (rouge-score, Porter stemming) over examples, in %."""
  n = _check_lengths(targets, predictions)
  if n == 0:
    return _no_examples("rougeL")
  scores = [
      _ROUGE.score(answer_of(t), _text(p))["rougeL"].fmeasure for t, p in zip(targets, predictions)
  ]
  return {"rougeL": 100.0 * float(np.mean(scores))}


def sacrebleu_corpus(targets, predictions) -> Metrics:
  """Corpus BLEU (sacrebleu defaults: 4-grams, ``13a`` tokenizer, case-sensitive), in %."""
  n = _check_lengths(targets, predictions)
  if n == 0:
    return _no_examples("bleu")
  score = BLEU().corpus_score([_text(p) for p in predictions], [[answer_of(t) for t in targets]])
  return {"bleu": float(score.score)}


def _coco_inputs(targets, predictions):
  refs = {i: [" ".join(tokenize(answer_of(t)))] for i, t in enumerate(targets)}
  hyps = {i: [" ".join(tokenize(p))] for i, p in enumerate(predictions)}
  return refs, hyps


def coco_bleu(targets, predictions) -> Metrics:
  """Corpus BLEU-1 and BLEU-4 of pycocoevalcap (closest reference length), in %.

  This is the report-generation convention (the same scorer as CIDEr-D); text is tokenized by
  :func:`tokenize` instead of the Java PTB tokenizer.
  """
  from pycocoevalcap.bleu.bleu import Bleu  # pylint: disable=g-import-not-at-top

  n = _check_lengths(targets, predictions)
  if n == 0:
    return _no_examples("bleu1", "bleu4")
  refs, hyps = _coco_inputs(targets, predictions)
  scores, _ = Bleu(4).compute_score(refs, hyps, verbose=0)
  return {"bleu1": 100.0 * float(scores[0]), "bleu4": 100.0 * float(scores[3])}


def cider_d(targets, predictions) -> Metrics:
  """CIDEr-D of pycocoevalcap (its ``Cider`` class: tf-idf n-grams 1-4, clipping, Gaussian
  length penalty σ=6), ×100 so that it reads like the paper's table (0.2617 → 26.17).

  The idf comes from the evaluated references themselves, so a single example always scores 0:
  that case is flagged in ``cider_d_status``.
  """
  from pycocoevalcap.cider.cider import Cider  # pylint: disable=g-import-not-at-top

  n = _check_lengths(targets, predictions)
  if n == 0:
    return _no_examples("cider_d")
  refs, hyps = _coco_inputs(targets, predictions)
  if not any(r[0] for r in refs.values()):
    return not_computed("cider_d", "not computed: every reference is empty")
  score, _ = Cider().compute_score(refs, hyps)
  out: Metrics = {"cider_d": 100.0 * float(score)}
  if n == 1:
    out["cider_d_status"] = _status("one example: the idf of CIDEr-D is 0, so the score is 0")
  return out


def summarization_metrics(targets, predictions) -> Metrics:
  """MIMIC-III findings → impression: ROUGE-L and BLEU (sacrebleu)."""
  return {**rouge_l(targets, predictions), **sacrebleu_corpus(targets, predictions)}


def report_generation_metrics(targets, predictions) -> Metrics:
  """MIMIC-CXR findings generation: BLEU-1, BLEU-4, ROUGE-L, CIDEr-D."""
  return {
      **coco_bleu(targets, predictions),
      **rouge_l(targets, predictions),
      **cider_d(targets, predictions),
  }


# ----------------------------------------------------------------------------- VQA

_BLEU1 = BLEU(max_ngram_order=1, tokenize="none", smooth_method="none", effective_order=True)


def token_f1(reference, prediction) -> float:
  """Token-level F1 (fraction) of two answers under :func:`tokenize`, counting repeats.

  Both empty → 1; one empty → 0. ``token_f1("left lung", "the left lung")`` = 0.8.
  """
  ref, pred = tokenize(reference), tokenize(prediction)
  if not ref or not pred:
    return float(ref == pred)
  same = sum((collections.Counter(ref) & collections.Counter(pred)).values())
  if same == 0:
    return 0.0
  precision, recall = same / len(pred), same / len(ref)
  return 2 * precision * recall / (precision + recall)


def bleu1(reference, prediction) -> float:
  """Sentence BLEU-1 in % (clipped unigram precision × brevity penalty, no smoothing) of two
  answers under :func:`tokenize`, computed by sacrebleu."""
  hyp, ref = " ".join(tokenize(prediction)), " ".join(tokenize(reference))
  return float(_BLEU1.sentence_score(hyp, [ref]).score)


def vqa_metrics(targets, predictions) -> Metrics:
  """VQA-RAD / Slake / Path-VQA: mean sentence BLEU-1 and mean token F1 (both in %), exact-match
  accuracy overall and per ``answer_type`` (``accuracy_closed``, ``accuracy_open``, ...)."""
  n = _check_lengths(targets, predictions)
  if n == 0:
    return {**_no_examples("bleu1", "token_f1", "accuracy"), "num_examples": 0.0}
  by_type: dict[str, list[bool]] = collections.defaultdict(list)
  bleu, f1, exact = [], [], []
  for target, prediction in zip(targets, predictions):
    reference = answer_of(target)
    bleu.append(bleu1(reference, prediction))
    f1.append(token_f1(reference, prediction))
    exact.append(normalize_answer(reference) == normalize_answer(prediction))
    answer_type = field_of(target, "answer_type")
    if answer_type:
      by_type[_slug(answer_type)].append(exact[-1])
  out: Metrics = {
      "bleu1": float(np.mean(bleu)),
      "token_f1": 100.0 * float(np.mean(f1)),
      "accuracy": 100.0 * float(np.mean(exact)),
      "num_examples": float(n),
  }
  for answer_type, hits in sorted(by_type.items()):
    out[f"accuracy_{answer_type}"] = 100.0 * float(np.mean(hits))
    out[f"num_{answer_type}"] = float(len(hits))
  if "closed" not in by_type:
    out.update(not_computed("accuracy_closed", "not computed: no target has answer_type CLOSED"))
  return out


# ----------------------------------------------------------------------------- classification


def softmax(scores) -> np.ndarray:
  """Row-wise softmax: per-option log-likelihoods float[N, C] → probabilities float[N, C]."""
  scores = np.asarray(scores, dtype=np.float64)
  shifted = np.exp(scores - scores.max(axis=-1, keepdims=True))
  return shifted / shifted.sum(axis=-1, keepdims=True)


def option_scores(targets, scores) -> tuple[list, np.ndarray]:
  """Per-example targets and a ``float[N, C]`` score matrix from either score layout.

  ``scores`` float[N, C] is returned as is. One float per row, with targets carrying
  ``example_index`` and ``option_index`` (one row per option), is regrouped: the first row of
  each example supplies its target; examples are ordered by ``example_index``.
  """
  scores_list = list(scores)
  _check_lengths(targets, scores_list)
  if not scores_list:
    return [], np.zeros((0, 0))
  if np.ndim(scores_list[0]) == 1:
    return list(targets), np.asarray(scores_list, dtype=np.float64)
  rows: dict[int, dict[int, float]] = collections.defaultdict(dict)
  first: dict[int, Any] = {}
  for target, score in zip(targets, scores_list):
    if field_of(target, "example_index") is None or field_of(target, "option_index") is None:
      raise ValueError(
          "One score per row needs targets with 'example_index' and "
          "'option_index'; otherwise pass float[N, C] scores."
      )
    example = int(field_of(target, "example_index"))
    rows[example][int(field_of(target, "option_index"))] = float(score)
    first.setdefault(example, target)
  width = max(len(r) for r in rows.values())
  matrix = np.full((len(rows), width), np.nan)
  for row, example in enumerate(sorted(rows)):
    if sorted(rows[example]) != list(range(width)):
      raise ValueError(
          f"Example {example} has scores for options {sorted(rows[example])}, "
          f"expected 0..{width - 1}."
      )
    matrix[row] = [rows[example][k] for k in range(width)]
  return [first[e] for e in sorted(rows)], matrix


def _without_option_scores(targets, scores) -> Optional[Metrics]:
  """``not computed`` macro-AUC / macro-F1 when ``scores`` hold one float per example and the
  targets carry no rank-classification layout, i.e. the score of the gold answer alone (what a
  plain ``score_batch`` pass gives): no class probabilities can come from that. None otherwise.
  """
  scores_list = list(scores)
  if (
      not scores_list
      or np.ndim(scores_list[0]) != 0
      or field_of(targets[0], "option_index") is not None
  ):
    return None
  why = (
      "not computed: needs one log-likelihood per class option (rank-classification rows, "
      "tasks.multimedbench.rank_classification), got one score per example"
  )
  return {**not_computed("macro_auc", why), **not_computed("macro_f1", why)}


def macro_auc(labels, probabilities, class_names: Sequence[str]) -> Metrics:
  """One-vs-rest ROC AUC per class (scikit-learn) and their mean over the classes where it is
  defined, in %.

  Args:
    labels: int[N], gold class indices into ``class_names``.
    probabilities: float[N, C], class probabilities (rows need not sum to 1).
    class_names: the C class names; per-class keys are ``auc/<slug of the name>``.
  A class whose targets are all positive or all negative has no AUC: it is NaN, left out of the
  mean, and named in ``macro_auc_status``; with no class defined, macro-AUC is not computed.
  """
  labels = np.asarray(labels)
  probabilities = np.asarray(probabilities, dtype=np.float64)
  if labels.size == 0:
    return _no_examples("macro_auc")
  out: Metrics = {}
  defined, undefined = [], []
  for c, name in enumerate(map(_slug, class_names)):
    positive = labels == c
    if positive.all() or not positive.any():
      out[f"auc/{name}"] = NAN
      undefined.append(name)
    else:
      out[f"auc/{name}"] = 100.0 * float(sk_metrics.roc_auc_score(positive, probabilities[:, c]))
      defined.append(out[f"auc/{name}"])
  if not defined:
    out.update(
        not_computed(
            "macro_auc",
            "undefined: only one class present in targets, AUC needs both "
            "positives and negatives",
        )
    )
    return out
  out["macro_auc"] = float(np.mean(defined))
  if undefined:
    out["macro_auc_status"] = _status(
        f"averaged over {len(defined)} classes; AUC undefined (no positives or no negatives in "
        f"targets) for: {', '.join(undefined)}"
    )
  return out


def macro_f1(labels, predicted, class_names: Sequence[str], *, name: str = "macro_f1") -> Metrics:
  """Per-class F1 (scikit-learn, zero_division=0) and their unweighted mean, in %.

  Args:
    labels: int[N] gold class indices. predicted: int[N] predicted indices, -1 = no option.
  The mean runs over classes that occur in the targets or the predictions (classes absent from
  both carry no information). A -1 prediction is a miss for the gold class and a false positive
  for no class.
  """
  labels, predicted = np.asarray(labels), np.asarray(predicted)
  if labels.size == 0:
    return _no_examples(name)
  present = sorted((set(labels.tolist()) | set(predicted.tolist())) - {-1})
  per_class = sk_metrics.f1_score(labels, predicted, labels=present, average=None, zero_division=0)
  out: Metrics = {name: 100.0 * float(np.mean(per_class))}
  prefix = "f1" if name == "macro_f1" else name.replace("macro_", "")
  for c, value in zip(present, per_class):
    out[f"{prefix}/{_slug(class_names[c])}"] = 100.0 * float(value)
  return out


def classification_text_metrics(targets, predictions, *, classes: Sequence[str]) -> Metrics:
  """Classification from the generated answer: accuracy, answers naming no class
  (``no_option_count``), and macro-F1 of the generated classes (``macro_f1_generated``)."""
  targets, predictions = one_row_per_example(targets, predictions)
  n = _check_lengths(targets, predictions)
  if n == 0:
    return {**_no_examples("accuracy", "macro_f1_generated"), "num_examples": 0.0}
  labels = [_class_index(t, classes) for t in targets]
  predicted = [-1 if (i := match_option(p, classes)) is None else i for p in predictions]
  out: Metrics = {
      "accuracy": 100.0 * float(np.mean(np.equal(labels, predicted))),
      "no_option_count": float(predicted.count(-1)),
      "num_examples": float(n),
  }
  out.update(macro_f1(labels, predicted, classes, name="macro_f1_generated"))
  return out


def classification_score_metrics(targets, scores, *, classes: Sequence[str]) -> Metrics:
  """Classification from rank-scoring every option: macro-AUC of the softmax probabilities and
  macro-F1 of the argmax class (``macro_f1``), with per-class figures."""
  _check_lengths(targets, list(scores))
  if (missing := _without_option_scores(targets, scores)) is not None:
    return missing
  targets, matrix = option_scores(targets, scores)
  if not targets:
    return _no_examples("macro_auc", "macro_f1")
  if matrix.shape[1] != len(classes):
    raise ValueError(f"Scores have {matrix.shape[1]} options, the task has {len(classes)}.")
  labels = [_class_index(t, classes) for t in targets]
  probabilities = softmax(matrix)
  return {
      **macro_auc(labels, probabilities, classes),
      **macro_f1(labels, probabilities.argmax(axis=1), classes),
  }


# MIMIC-CXR classification: one binary (No/Yes) question per condition; the paper averages over
# the five major conditions. Per-condition F1 is the F1 of the positive answer.
CXR_ANSWERS = ("No", "Yes")
CXR_MAJOR_CONDITIONS = ("atelectasis", "cardiomegaly", "consolidation", "edema", "pleural effusion")


def _condition(target) -> str:
  return " ".join(_text(field_of(target, "condition", "all")).casefold().replace("_", " ").split())


def _per_condition(targets, values, fn) -> tuple[dict[str, float], list[str]]:
  """Runs ``fn(labels, values)`` per condition (targets without ``condition`` form one group,
  ``all``); the caller averages the 5 major ones, or every group if the targets name none."""
  groups: dict[str, list[int]] = collections.defaultdict(list)
  for i, target in enumerate(targets):
    groups[_condition(target)].append(i)
  major = [c for c in CXR_MAJOR_CONDITIONS if c in groups] or sorted(groups)
  return {
      c: fn(
          np.asarray([_class_index(targets[i], CXR_ANSWERS) for i in idx]), [values[i] for i in idx]
      )
      for c, idx in groups.items()
  }, major


def _binary_f1(labels, predicted) -> float:
  predicted = (np.asarray(predicted) == 1).astype(int)
  return 100.0 * float(
      sk_metrics.f1_score(
          np.asarray(labels, dtype=int), predicted, labels=[1], average="macro", zero_division=0
      )
  )


def _mean_over(per_condition, major, key, out_key) -> Metrics:
  values = [per_condition[c] for c in major if not math.isnan(per_condition[c])]
  if not values:
    return not_computed(out_key, f"undefined for every condition of {major}")
  out: Metrics = {out_key: float(np.mean(values))}
  missing = [c for c in major if math.isnan(per_condition[c])]
  if missing:
    out[f"{out_key}_status"] = _status(f"{key} undefined for {missing}; averaged over the rest")
  return out


def cxr_text_metrics(targets, predictions) -> Metrics:
  """MIMIC-CXR condition classification from generated Yes/No answers: accuracy, no-option
  count, positive-class F1 per condition and its mean over the major conditions."""
  targets, predictions = one_row_per_example(targets, predictions)
  n = _check_lengths(targets, predictions)
  if n == 0:
    return {**_no_examples("accuracy", "macro_f1_generated"), "num_examples": 0.0}
  predicted = [-1 if (i := match_option(p, CXR_ANSWERS)) is None else i for p in predictions]
  labels = [_class_index(t, CXR_ANSWERS) for t in targets]
  per_condition, major = _per_condition(targets, predicted, _binary_f1)
  out: Metrics = {
      "accuracy": 100.0 * float(np.mean(np.equal(labels, predicted))),
      "no_option_count": float(predicted.count(-1)),
      "num_examples": float(n),
  }
  out.update({f"f1_generated/{_slug(c)}": v for c, v in sorted(per_condition.items())})
  out.update(_mean_over(per_condition, major, "F1", "macro_f1_generated"))
  return out


def cxr_score_metrics(targets, scores) -> Metrics:
  """MIMIC-CXR condition classification from rank scores of (No, Yes): per-condition AUC of
  P(Yes) and F1 of the argmax answer; ``macro_auc`` / ``macro_f1`` average the major ones."""
  _check_lengths(targets, list(scores))
  if (missing := _without_option_scores(targets, scores)) is not None:
    return missing
  targets, matrix = option_scores(targets, scores)
  if not targets:
    return _no_examples("macro_auc", "macro_f1")
  p_yes = list(softmax(matrix)[:, 1])

  def auc(labels, values):
    if labels.all() or not labels.any():
      return NAN
    return 100.0 * float(sk_metrics.roc_auc_score(labels, values))

  aucs, major = _per_condition(targets, p_yes, auc)
  f1s, _ = _per_condition(targets, [int(p > 0.5) for p in p_yes], _binary_f1)
  out: Metrics = {f"auc/{_slug(c)}": v for c, v in sorted(aucs.items())}
  out.update({f"f1/{_slug(c)}": v for c, v in sorted(f1s.items())})
  out.update(_mean_over(aucs, major, "AUC", "macro_auc"))
  out.update(_mean_over(f1s, major, "F1", "macro_f1"))
  return out


# ----------------------------------------------------------------------------- genomics

GENOTYPES = ("0", "1", "2")  # copies of the alternate allele: hom-ref, het, hom-alt


def variant_type(reference_bases: str, alternate_bases: Sequence[str]) -> str:
  """``"snp"`` when the reference and every alternate allele are one base, else ``"indel"``."""
  alleles = [reference_bases, *alternate_bases]
  return "snp" if all(len(a) == 1 for a in alleles) else "indel"


def variant_counts(truth, called) -> dict[str, int]:
  """hap.py-style TP / FP / FN of genotype calls (0 = no variant, -1 = no call ≡ 0).

  truth > 0 and called == truth → TP; truth > 0, called ≠ truth → FN, and also FP when a
  variant was called (a genotype mismatch counts twice, as hap.py does); truth == 0 and
  called > 0 → FP. Hom-ref sites called hom-ref are true negatives and are not counted.
  """
  tp = fp = fn = 0
  for t, c in zip(truth, called):
    c = max(int(c), 0)
    if t > 0 and c == t:
      tp += 1
    elif t > 0:
      fn += 1
      fp += int(c > 0)
    elif c > 0:
      fp += 1
  return {"tp": tp, "fp": fp, "fn": fn}


def _f1_from_counts(prefix: str, counts: Mapping[str, int]) -> Metrics:
  tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
  out: Metrics = {f"{prefix}_{k}": float(v) for k, v in counts.items()}
  if tp + fp + fn == 0:
    out.update(not_computed(f"{prefix}_f1", "not computed: no variant in truth or calls"))
    return out
  precision = tp / (tp + fp) if tp + fp else 0.0
  recall = tp / (tp + fn) if tp + fn else 0.0
  f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
  out.update(
      {
          f"{prefix}_precision": 100.0 * precision,
          f"{prefix}_recall": 100.0 * recall,
          f"{prefix}_f1": 100.0 * f1,
      }
  )
  return out


def genomics_metrics(targets, predictions) -> Metrics:
  """PrecisionFDA variant calling: genotype accuracy and hap.py-style F1 for SNPs, for indels
  and for all variants together (``all_f1``).

  The target's ``answer`` is the genotype (0/1/2) and ``variant_type`` is ``snp``/``indel``
  (from the DeepVariant record, :func:`variant_type`). An answer that names no genotype is a
  no-call (counted in ``no_option_count``); counting rules in :func:`variant_counts`.
  """
  n = _check_lengths(targets, predictions)
  if n == 0:
    return {**_no_examples("accuracy", "snp_f1", "indel_f1"), "num_examples": 0.0}
  truth = [_class_index(t, GENOTYPES) for t in targets]
  called = [-1 if (i := match_option(p, GENOTYPES)) is None else i for p in predictions]
  kinds = [_text(field_of(t, "variant_type", "")).casefold() for t in targets]
  out: Metrics = {
      "accuracy": 100.0 * float(np.mean(np.equal(truth, called))),
      "no_option_count": float(called.count(-1)),
      "num_examples": float(n),
  }
  out.update(_f1_from_counts("all", variant_counts(truth, called)))
  unknown = sum(k not in ("snp", "indel") for k in kinds)
  for kind in ("snp", "indel"):
    if unknown == n:
      out.update(
          not_computed(
              f"{kind}_f1",
              "not computed: targets carry no variant_type "
              "(snp/indel); see all_f1 for every variant",
          )
      )
      continue
    idx = [i for i, k in enumerate(kinds) if k == kind]
    out.update(
        _f1_from_counts(kind, variant_counts([truth[i] for i in idx], [called[i] for i in idx]))
    )
  if unknown:
    out["unknown_variant_type_count"] = float(unknown)
  return out


# ----------------------------------------------------------------------------- pluggable scorers

# F1-RadGraph and CheXbert need models that are not shipped. A user plugs them in; without one
# the metric is reported as not computed.
RadGraphScorer = Callable[[Sequence[str], Sequence[str]], Any]
CheXbertLabeler = Callable[[Sequence[str]], Any]
CHEXBERT_CONDITIONS = (
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
    "No Finding",
)
CHEXBERT_FIVE = ("Cardiomegaly", "Edema", "Consolidation", "Atelectasis", "Pleural Effusion")
_PLUGINS: dict[str, Any] = {"radgraph": None, "chexbert": None}


def set_radgraph_scorer(scorer: Optional[RadGraphScorer]) -> None:
  """Installs ``scorer(references, predictions)`` → F1-RadGraph as a fraction in [0, 1] (one
  float for the set, or one per example, which are averaged). None uninstalls it."""
  _PLUGINS["radgraph"] = scorer


def set_chexbert_labeler(labeler: Optional[CheXbertLabeler]) -> None:
  """Installs ``labeler(texts)`` → int[N, 14] positive-mention indicators in
  ``CHEXBERT_CONDITIONS`` order (the labeler decides how uncertain mentions count). None
  uninstalls it."""
  _PLUGINS["chexbert"] = labeler


def _plugin_failed(name: str, error: Exception) -> str:
  logging.warning("%s scorer failed: %r", name, error)
  return f"not computed: the {name} scorer raised {type(error).__name__}: {error}"


def f1_radgraph(targets, predictions, *, scorer: Optional[RadGraphScorer] = None) -> Metrics:
  """F1-RadGraph in % from a user-provided scorer (argument, or :func:`set_radgraph_scorer`)."""
  n = _check_lengths(targets, predictions)
  scorer = scorer or _PLUGINS["radgraph"]
  if scorer is None:
    return not_computed(
        "f1_radgraph",
        "not computed: no RadGraph scorer installed " "(tasks.metrics.set_radgraph_scorer)",
    )
  if n == 0:
    return _no_examples("f1_radgraph")
  try:
    value = float(np.mean(scorer([answer_of(t) for t in targets], [_text(p) for p in predictions])))
  except Exception as error:  # a broken plug-in must not lose the other metrics of a long run
    return not_computed("f1_radgraph", _plugin_failed("RadGraph", error))
  return {"f1_radgraph": 100.0 * value}


def chexbert_f1(targets, predictions, *, labeler: Optional[CheXbertLabeler] = None) -> Metrics:
  """CheXbert clinical-efficacy F1: micro/macro over the 14 observations and over the 5 major
  ones (``CHEXBERT_FIVE``), in %, comparing labels of the generated and the reference reports.

  The user-provided ``labeler`` (argument, or :func:`set_chexbert_labeler`) labels texts; the F1
  is scikit-learn's multilabel ``f1_score`` with zero_division=0.
  """
  names = ("micro_f1_14", "macro_f1_14", "micro_f1_5", "macro_f1_5")
  n = _check_lengths(targets, predictions)
  labeler = labeler or _PLUGINS["chexbert"]
  if labeler is None:
    out: Metrics = {}
    for name in names:
      out.update(
          not_computed(
              name,
              "not computed: no CheXbert labeler installed " "(tasks.metrics.set_chexbert_labeler)",
          )
      )
    return out
  if n == 0:
    return _no_examples(*names)
  try:
    gold = np.asarray(labeler([answer_of(t) for t in targets])).astype(int) > 0
    pred = np.asarray(labeler([_text(p) for p in predictions])).astype(int) > 0
    if gold.shape != (n, len(CHEXBERT_CONDITIONS)) or pred.shape != gold.shape:
      raise ValueError(
          f"labels have shapes {gold.shape}, {pred.shape}; expected "
          f"{(n, len(CHEXBERT_CONDITIONS))}"
      )
  except Exception as error:  # a broken plug-in must not lose the other metrics of a long run
    out = {}
    for name in names:
      out.update(not_computed(name, _plugin_failed("CheXbert", error)))
    return out
  five = [CHEXBERT_CONDITIONS.index(c) for c in CHEXBERT_FIVE]
  out = {}
  for suffix, cols in (("14", slice(None)), ("5", five)):
    for average in ("micro", "macro"):
      out[f"{average}_f1_{suffix}"] = 100.0 * float(
          sk_metrics.f1_score(gold[:, cols], pred[:, cols], average=average, zero_division=0)
      )
  return out


# ----------------------------------------------------------------------------- per-task table

PAD_UFES_20_CLASSES = (
    "Nevus",
    "Basal Cell Carcinoma",
    "Squamous Cell Carcinoma",
    "Actinic Keratosis",
    "Seborrheic Keratosis",
    "Melanoma",
)
VINDR_MAMMO_CLASSES = ("1", "2", "3", "4", "5")
CBIS_DDSM_CLASSES = ("BENIGN", "BENIGN_WITHOUT_CALLBACK", "MALIGNANT")
PUBMEDQA_OPTIONS = ("yes", "no", "maybe")


def _classification(classes: Sequence[str]) -> list[Callable]:
  return [
      functools.partial(classification_text_metrics, classes=tuple(classes)),
      functools.partial(classification_score_metrics, classes=tuple(classes)),
  ]


# task name → SeqIO metric_fns. Generation and scoring metrics are mixed; SeqIO tells them apart
# by their argument names. The output keys of each task are disjoint.
TASK_METRICS: dict[str, list[Callable]] = {
    "multimedbench_medqa": [qa_accuracy],
    "multimedbench_medmcqa": [qa_accuracy],
    "multimedbench_pubmedqa": [functools.partial(qa_accuracy, default_options=PUBMEDQA_OPTIONS)],
    "multimedbench_mimic_iii": [summarization_metrics, f1_radgraph],
    "multimedbench_vqa_rad": [vqa_metrics],
    "multimedbench_slake": [vqa_metrics],
    "multimedbench_path_vqa": [vqa_metrics],
    "multimedbench_mimic_cxr_report": [report_generation_metrics, f1_radgraph, chexbert_f1],
    "multimedbench_mimic_cxr_classification": [cxr_text_metrics, cxr_score_metrics],
    "multimedbench_pad_ufes_20": _classification(PAD_UFES_20_CLASSES),
    "multimedbench_vindr_mammo": _classification(VINDR_MAMMO_CLASSES),
    "multimedbench_cbis_ddsm_mass": _classification(CBIS_DDSM_CLASSES),
    "multimedbench_cbis_ddsm_calc": _classification(CBIS_DDSM_CLASSES),
    "multimedbench_precisionfda": [genomics_metrics],
}

# The paper's evaluation-only experiments (tasks.multimedbench.EXPERIMENTS): Table 4 (zero-shot
# TB, classification and chain-of-thought prompts), MIMIC-III's rare pairs, Table 5 (two-view).
EXPERIMENT_METRICS: dict[str, list[Callable]] = {
    "multimedbench_montgomery_tb": [tb_accuracy],
    "multimedbench_montgomery_tb_cot": [tb_accuracy],
    "multimedbench_mimic_iii_ood": [summarization_metrics, f1_radgraph],
    "multimedbench_mimic_cxr_report_two_view": [
        report_generation_metrics,
        f1_radgraph,
        chexbert_f1,
    ],
}

# The class options a classification task's answers are matched against (its rank-scoring order).
TASK_CLASSES: dict[str, tuple[str, ...]] = {
    "multimedbench_mimic_cxr_classification": CXR_ANSWERS,
    "multimedbench_pad_ufes_20": PAD_UFES_20_CLASSES,
    "multimedbench_vindr_mammo": VINDR_MAMMO_CLASSES,
    "multimedbench_cbis_ddsm_mass": CBIS_DDSM_CLASSES,
    "multimedbench_cbis_ddsm_calc": CBIS_DDSM_CLASSES,
    "multimedbench_precisionfda": GENOTYPES,
}
