"""MedQA (USMLE, 4 options): JSON Lines of the official ``data_clean`` release.

Each line: ``{"question", "answer" (text), "options": {"A".."D"}, "answer_idx": "A".."D",
"meta_info", "metamap_phrases"}`` (some copies add ``realidx``). Record: QARecord, id =
``realidx`` when present, else ``<split>-<line>``.
"""

from __future__ import annotations

import sys

from tasks.readers import _common
from tasks.readers._common import Collector, ReadResult, get_str
from tasks.readers._qa import answer_index, check_answer_text, options_from_letter_dict

DATASET_DIR = "medqa"
SPLITS = ("train", "validation", "test")
SUBDIR = "data_clean/questions/US/4_options"
FILES = {
    "train": "phrases_no_exclude_train.jsonl",
    "validation": "phrases_no_exclude_dev.jsonl",
    "test": "phrases_no_exclude_test.jsonl",
}
LAYOUT = (
    "MedQA: unzip the release's data_clean.zip into medqa/ so that "
    f"medqa/{SUBDIR}/phrases_no_exclude_{{train,dev,test}}.jsonl exist "
    "(the 4-option USMLE questions; a flat medqa/{train,dev,test}.jsonl is also accepted)."
)


def read(dataset_dir, split: str, *, on_error: str = "raise") -> ReadResult:
  """MedQA records of ``split`` (train / validation = dev / test)."""
  module = sys.modules[__name__]
  _common.check_split(module, split)
  root = _common.resolve_dataset_dir(module, dataset_dir)
  flat = {"train": "train.jsonl", "validation": "dev.jsonl", "test": "test.jsonl"}[split]
  path = _common.find_file(root, [f"{SUBDIR}/{FILES[split]}", flat], module)
  c = Collector(f"medqa/{split}", on_error)
  for lineno, obj in _common.iter_jsonl(path, c):
    where = str(lineno)
    with c.guard():
      options = options_from_letter_dict(obj, path, where)
      idx = answer_index(obj.get("answer_idx"), path, where)
      record = {
          "id": str(obj["realidx"]) if "realidx" in obj else f"{split}-{lineno}",
          "question": get_str(obj, "question", path, where),
          "options": options,
          "answer_idx": idx,
          "answer": options[idx],
      }
      check_answer_text(record, obj, path, where)
      c.add(record)
  return c.finish()
