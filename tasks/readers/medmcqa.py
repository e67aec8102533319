"""MedMCQA: JSON Lines (despite the ``.json`` extension) of the official release.

Official line: ``{"id", "question", "opa", "opb", "opc", "opd", "cop": 1..4 (1 = opa),
"choice_type", "exp", "subject_name", "topic_name"}``. Also accepted, line by line, the re-keyed
form ``{"question", "realidx", "options": {"A".."D"}, "answer_idx": "A".."D", "answer"}`` in which
some benchmark copies of the dev split circulate. Record: QARecord.

Splits: ``train`` = train.json; ``test`` = dev.json (the paper evaluates on dev; the official
test.json has no labels).
"""

from __future__ import annotations

import sys

from tasks.readers import _common
from tasks.readers._common import Collector, ReaderError, ReadResult, get_str
from tasks.readers._qa import answer_index, check_answer_text, options_from_letter_dict

DATASET_DIR = "medmcqa"
SPLITS = ("train", "test")
FILES = {
    "train": ["train.json", "train.jsonl"],
    "test": ["dev.json", "dev.jsonl", "dev_subset.jsonl"],
}
LAYOUT = (
    "MedMCQA: unzip the official release into medmcqa/ so that medmcqa/train.json and "
    "medmcqa/dev.json exist (JSON Lines with id, question, opa..opd, cop 1..4; dev.json "
    "is the evaluation split)."
)


def _official(obj: dict, path, where: str) -> dict:
  options = [get_str(obj, k, path, where) for k in ("opa", "opb", "opc", "opd")]
  cop = obj.get("cop")
  if isinstance(cop, str) and cop.strip().isdigit():
    cop = int(cop)
  if isinstance(cop, bool) or not isinstance(cop, int) or not 1 <= cop <= 4:
    raise ReaderError(
        path, where, "cop", f"unknown label {cop!r}; expected 1, 2, 3 or 4 " "(1 = opa)"
    )
  return {
      "id": get_str(obj, "id", path, where),
      "question": get_str(obj, "question", path, where),
      "options": options,
      "answer_idx": cop - 1,
      "answer": options[cop - 1],
  }


def _rekeyed(obj: dict, path, where: str) -> dict:
  options = options_from_letter_dict(obj, path, where)
  idx = answer_index(obj.get("answer_idx"), path, where)
  record = {
      "id": get_str(obj, "realidx", path, where),
      "question": get_str(obj, "question", path, where),
      "options": options,
      "answer_idx": idx,
      "answer": options[idx],
  }
  check_answer_text(record, obj, path, where)
  return record


def read(dataset_dir, split: str, *, on_error: str = "raise") -> ReadResult:
  """MedMCQA records of ``split`` (train / test = dev)."""
  module = sys.modules[__name__]
  _common.check_split(module, split)
  root = _common.resolve_dataset_dir(module, dataset_dir)
  path = _common.find_file(root, FILES[split], module)
  c = Collector(f"medmcqa/{split}", on_error)
  for lineno, obj in _common.iter_jsonl(path, c):
    where = str(lineno)
    with c.guard():
      if "opa" in obj:
        c.add(_official(obj, path, where))
      elif "options" in obj:
        c.add(_rekeyed(obj, path, where))
      else:
        raise ReaderError(
            path,
            where,
            "opa",
            "neither the official (opa..opd, cop) nor the re-keyed " "(options, answer_idx) form",
        )
  return c.finish()
