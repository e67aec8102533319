"""PubMedQA PQA-L: ``ori_pqal.json`` (1,000 labelled abstracts) + ``test_ground_truth.json``.

``ori_pqal.json`` is a dict keyed by PMID: ``{"QUESTION", "CONTEXTS": [str], "LABELS": [str],
"MESHES", "YEAR", "LONG_ANSWER", "reasoning_required_pred", "reasoning_free_pred",
"final_decision": "yes"|"no"|"maybe"}``. ``test_ground_truth.json`` maps the 500 test PMIDs to
their decision. Splits: ``test`` = those 500 (the paper's evaluation set), ``train`` = the other
500 (only used to draw the 2-shot exemplars: PubMedQA is evaluation-only). Record: PubMedQARecord.
"""

from __future__ import annotations

import sys

from tasks.readers import _common
from tasks.readers._common import Collector, ReaderError, ReadResult, get_str

DATASET_DIR = "pubmedqa"
SPLITS = ("train", "test")
OPTIONS = ["yes", "no", "maybe"]
LAYOUT = (
    "PubMedQA: copy data/ori_pqal.json and data/test_ground_truth.json of the official "
    "repository (github pubmedqa/pubmedqa) into pubmedqa/."
)


def _str_list(obj: dict, key: str, path, where: str) -> list[str]:
  value = obj.get(key)
  if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
    raise ReaderError(path, where, key, "expected a list of strings")
  return [v.strip() for v in value]


def read(dataset_dir, split: str, *, on_error: str = "raise") -> ReadResult:
  """PubMedQA records of ``split``; a test PMID absent from ori_pqal.json is an error."""
  module = sys.modules[__name__]
  _common.check_split(module, split)
  root = _common.resolve_dataset_dir(module, dataset_dir)
  data_path = _common.require_file(root / "ori_pqal.json", module)
  truth_path = _common.require_file(root / "test_ground_truth.json", module)
  data = _common.load_json(data_path)
  truth = _common.load_json(truth_path)
  if not isinstance(data, dict):
    raise ReaderError(data_path, None, None, "expected an object keyed by PMID")
  if not isinstance(truth, dict):
    raise ReaderError(truth_path, None, None, "expected an object PMID → decision")
  c = Collector(f"pubmedqa/{split}", on_error)
  if split == "test":
    for pmid in truth:
      if pmid not in data:
        c.error(
            ReaderError(
                truth_path, f"PMID {pmid}", None, f"test PMID not found in {data_path.name}"
            )
        )
  pmids = [p for p in data if (p in truth) == (split == "test")]
  for pmid in pmids:
    obj = data[pmid]
    where = f"PMID {pmid}"
    with c.guard():
      if not isinstance(obj, dict):
        raise ReaderError(data_path, where, None, "expected an object")
      decision = get_str(obj, "final_decision", data_path, where).lower()
      if decision not in OPTIONS:
        raise ReaderError(
            data_path,
            where,
            "final_decision",
            f"unknown label {decision!r}; expected yes, no or maybe",
        )
      if split == "test" and str(truth[pmid]).strip().lower() != decision:
        raise ReaderError(
            truth_path,
            where,
            None,
            f"ground truth {truth[pmid]!r} " f"disagrees with final_decision {decision!r}",
        )
      contexts = _str_list(obj, "CONTEXTS", data_path, where)
      if not any(contexts):
        raise ReaderError(data_path, where, "CONTEXTS", "empty")
      labels = _str_list(obj, "LABELS", data_path, where) if "LABELS" in obj else []
      idx = OPTIONS.index(decision)
      c.add(
          {
              "id": pmid,
              "question": get_str(obj, "QUESTION", data_path, where),
              "context": "\n\n".join(x for x in contexts if x),
              "contexts": contexts,
              "labels": labels,
              "options": list(OPTIONS),
              "answer_idx": idx,
              "answer": decision,
              "long_answer": get_str(obj, "LONG_ANSWER", data_path, where, allow_empty=True)
              if "LONG_ANSWER" in obj
              else "",
          }
      )
  return c.finish()
