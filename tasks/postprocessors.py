"""Postprocessors: decoded model output (or target text) → the string the metrics compare.

seqio calls ``postprocess_fn(text, example=..., is_target=...)`` on both predictions and
``targets_pretokenized``, so targets and predictions go through the same normalisation. Targets
are "answer." (tasks.prompts.with_period); the period is a format marker, not part of the answer.
"""

from __future__ import annotations

import re
from typing import Sequence

_SPACE = re.compile(r"\s+")


def _as_str(text) -> str:
  if isinstance(text, bytes):
    return text.decode("utf-8", errors="replace")
  return str(text)


def normalize(text, example=None, is_target: bool = False) -> str:
  """Strip, collapse whitespace runs to one space, drop one trailing period."""
  del example, is_target
  text = _SPACE.sub(" ", _as_str(text)).strip()
  if text.endswith("."):
    text = text[:-1].rstrip()
  return text


def normalize_lower(text, example=None, is_target: bool = False) -> str:
  """normalize() then lower case: free-text VQA answers ("Yes" == "yes")."""
  return normalize(text, example, is_target).lower()


class OptionPostprocessor:
  """normalize(), then map a case-insensitive match of one of the task's options (or of its
  letter, "(B)" / "B") to that option's canonical text, so accuracy / F1 compare labels.
  Anything else is returned normalised, and counts as wrong."""

  def __init__(self, options: Sequence[str]):
    self.options = list(options)
    self._lookup = {o.lower(): o for o in self.options}
    for i, o in enumerate(self.options):
      letter = chr(ord("A") + i)
      self._lookup.setdefault(f"({letter.lower()})", o)
      self._lookup.setdefault(letter.lower(), o)
    self.__name__ = "option_postprocessor"

  def __call__(self, text, example=None, is_target: bool = False) -> str:
    text = normalize(text, example, is_target)
    key = text.lower()
    if key in self._lookup:
      return self._lookup[key]
    match = re.match(r"^\(([a-j])\)\s*(.*)$", key)  # "(B) Prilocaine"
    if match and match.group(2) in self._lookup:
      return self._lookup[match.group(2)]
    return text

  def __repr__(self) -> str:
    return f"OptionPostprocessor({self.options})"


# Per-example features the evaluation splits carry for the metrics (tasks.multimedbench adds them
# to every split but ``train``; the feature converter leaves them out of the model batch).
# ``answer_options`` is string[C] padded with "" (C is the task's widest option list; tasks
# without options carry one "").
TARGET_FIELDS = {
    "answer_options": "options",
    "answer_type": "answer_type",
    "condition": "condition",
    "variant_type": "variant_type",
}


class TargetFields:
  """A task's postprocessor that hands the metrics a structured target.

  Predictions (``is_target=False``) go through ``postprocess`` unchanged (a string). Targets
  (``is_target=True``) become the mapping ``tasks.metrics`` reads: ``{"answer":
  postprocess(text)}`` plus, from the example, ``options`` (list[str], padding dropped),
  ``answer_type``, ``condition``, ``variant_type`` (str) where the example has a non-empty
  value, and ``id``; a rank-classification row (tasks.multimedbench.rank_classification) adds
  ``example_index``, ``option_index`` (int) and ``is_correct`` (bool). Without an example (or on the train split, which carries no such
  features) the target is just ``{"answer": ...}``, which every metric accepts.
  """

  def __init__(self, postprocess):
    self.postprocess = postprocess
    self.__name__ = "target_fields"

  def __call__(self, text, example=None, is_target: bool = False):
    answer = self.postprocess(text, example, is_target)
    if not is_target:
      return answer
    target = {"answer": answer}
    for feature, key in TARGET_FIELDS.items():
      if example is None or feature not in example:
        continue
      value = example[feature]
      if key == "options":
        options = [_as_str(o) for o in list(value)]
        if any(options):
          target[key] = [o for o in options if o]
      elif _as_str(value):
        target[key] = _as_str(value)
    if example is not None and "id" in example:
      target["id"] = _as_str(example["id"])
    if example is not None and "idx" in example:  # a rank-classification row
      target["example_index"], target["option_index"] = (int(i) for i in example["idx"])
      target["is_correct"] = bool(example["is_correct"])
    return target

  def __repr__(self) -> str:
    return f"TargetFields({self.postprocess!r})"


# --------------------------------------------------------------------------------------------
# Yes/No answers in free text (the zero-shot tuberculosis tasks, chain of thought included)

_CUE = re.compile(r"^\s*(?:a|answer)\s*:\s*", re.IGNORECASE)
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_NOT_NORMAL = re.compile(
    r"\b(?:not|isn't|is\s+not|no\s+longer)\s+(?:a\s+|an\s+|completely\s+|entirely\s+)?normal\b"
    r"|\babnormal(?:ity|ities)?\b"
)
_NORMAL = re.compile(
    r"\b(?:is|are|appears?|looks?|seems?|within)\s+(?:a\s+|to\s+be\s+(?:a\s+)?)?normal\b"
)
_ANSWER_IS = re.compile(r"\banswer\s*(?:is|:)\s*(yes|no)\b")


def extract_yes_no(text) -> tuple[str | None, str]:
  """(``"Yes"`` | ``"No"`` | None, the rule that decided) for an answer to "Is it a normal chest
  x-ray?", written freely (a chain of thought included). The rule, in order:

  1. a leading ``A:`` / ``Answer:`` cue is dropped;
  2. the first word is ``yes`` or ``no`` → that answer ("No, there is a cavity ...");
  3. otherwise a conclusion: the last "answer is yes/no" / "answer: yes/no", else a ``yes`` /
     ``no`` that is the text's last word ("... so, no"). A "no" inside a sentence ("there is
     no effusion") is a finding, not an answer, and is not read as one;
  4. otherwise a statement about normality: "not normal" / "abnormal" → No, "is / appears /
     looks normal" → Yes (negation checked first);
  5. otherwise None: no answer found; the example counts as wrong (``reason`` says why).
  """
  text = _CUE.sub("", _as_str(text)).strip().lower()
  words = _WORD.findall(text)
  if not words:
    return None, "empty answer"
  if words[0] in ("yes", "no"):
    return words[0].capitalize(), "leading yes/no"
  stated = _ANSWER_IS.findall(text)
  if stated:
    return stated[-1].capitalize(), "concluding 'answer is yes/no'"
  if words[-1] in ("yes", "no"):
    return words[-1].capitalize(), "yes/no at the end"
  if _NOT_NORMAL.search(text):
    return "No", "states the image is not normal"
  if _NORMAL.search(text):
    return "Yes", "states the image is normal"
  return None, "no yes/no answer and no statement about normality"
