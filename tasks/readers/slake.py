"""Slake 1.0: ``train.json``, ``validate.json`` (HF copies: ``validation.json``), ``test.json`` +
``imgs/xmlab<N>/source.jpg``.

Rows: ``{"img_id", "img_name" ("xmlab102/source.jpg"), "question", "answer", "q_lang" ("en"|"zh"),
"location", "modality", "answer_type", "base_type", "triple", "qid", "content_type"}``.
Both languages by default (the paper's counts 9,849 / 2,109 / 2,070 are those of the bilingual
release); ``langs=("en",)`` keeps English only. Rows with an empty answer (one in the official
train.json) are dropped and counted in ``filtered``. Record: VQARecord.
"""

from __future__ import annotations

import sys

from tasks.readers import _common
from tasks.readers._common import Collector, ReaderError, ReadResult, get_str
from tasks.readers._vqa import answer_type, vqa_record

DATASET_DIR = "slake"
SPLITS = ("train", "validation", "test")
FILES = {
    "train": ["train.json"],
    "validation": ["validate.json", "validation.json"],
    "test": ["test.json"],
}
LANGS = ("en", "zh")
LAYOUT = (
    "Slake: put the official Slake1.0 files train.json, validate.json, test.json in slake/ and "
    "unzip imgs.zip there so that slake/imgs/xmlab<N>/source.jpg exist."
)


def read(
    dataset_dir, split: str, *, on_error: str = "raise", langs=LANGS, check_images: bool = True
) -> ReadResult:
  """Slake records of ``split`` in the languages ``langs`` (others counted in ``filtered``)."""
  module = sys.modules[__name__]
  _common.check_split(module, split)
  root = _common.resolve_dataset_dir(module, dataset_dir)
  path = _common.find_file(root, FILES[split], module)
  rows = _common.load_json(path)
  if not isinstance(rows, list):
    raise ReaderError(path, None, None, "expected a JSON list of question objects")
  c = Collector(f"slake/{split}", on_error)
  for i, obj in enumerate(rows):
    where = f"record {i}"
    with c.guard():
      if not isinstance(obj, dict):
        raise ReaderError(path, where, None, "expected an object")
      lang = get_str(obj, "q_lang", path, where).lower()
      if lang not in LANGS:
        raise ReaderError(path, where, "q_lang", f"unknown language {lang!r}")
      if lang not in langs:
        c.filter(f"q_lang {lang}")
        continue
      if not str(obj.get("answer") or "").strip():
        # The official train.json has one (qid 1622): no target to learn, not an error.
        c.filter("empty answer")
        continue
      c.add(
          vqa_record(
              id=get_str(obj, "qid", path, where),
              image_dir=root / "imgs",
              image_rel=get_str(obj, "img_name", path, where),
              question=get_str(obj, "question", path, where),
              answer=get_str(obj, "answer", path, where),
              answer_type=answer_type(obj, "answer_type", path, where),
              lang=lang,
              path=path,
              where=where,
              image_field="img_name",
              check_images=check_images,
          )
      )
  return c.finish()
