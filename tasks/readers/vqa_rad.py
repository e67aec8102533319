"""VQA-RAD: the MEVF split (``trainset.json`` / ``testset.json`` + ``images/``) or the official
``VQA_RAD Dataset Public.json`` + ``VQA_RAD Image Folder/``.

MEVF rows: ``{"qid", "image_name", "image_organ", "answer", "answer_type" ("OPEN"|"CLOSED", with
stray trailing spaces), "question_type", "question", "phrase_type"}``. The official JSON has the
same keys plus ``qid_linked_id``, ``question_rephrase``, ... and marks test questions with
``phrase_type`` ``test_freeform`` / ``test_para``.

Selection (the paper's counts): train keeps ``phrase_type`` ∈ {freeform, para} (1,797 of 3,064;
the rest are counted in ``filtered``), test keeps all 451. Record: VQARecord, ``lang="en"``.
"""

from __future__ import annotations

import sys

from tasks.readers import _common
from tasks.readers._common import Collector, ReaderError, ReadResult, get_str
from tasks.readers._vqa import answer_type, vqa_record

DATASET_DIR = "vqa_rad"
SPLITS = ("train", "test")
OFFICIAL_JSON = "VQA_RAD Dataset Public.json"
OFFICIAL_IMAGES = "VQA_RAD Image Folder"
TRAIN_PHRASE_TYPES = ("freeform", "para")
LAYOUT = (
    "VQA-RAD: put the MEVF split files trainset.json and testset.json with the 315 images in "
    f"vqa_rad/images/, or the official OSF release files '{OFFICIAL_JSON}' and "
    f"'{OFFICIAL_IMAGES}/' in vqa_rad/."
)


def read(
    dataset_dir, split: str, *, on_error: str = "raise", check_images: bool = True
) -> ReadResult:
  """VQA-RAD records of ``split``; ``check_images`` requires each referenced image to exist."""
  module = sys.modules[__name__]
  _common.check_split(module, split)
  root = _common.resolve_dataset_dir(module, dataset_dir)
  mevf = root / ("trainset.json" if split == "train" else "testset.json")
  if mevf.is_file():
    path, image_dir, official = mevf, root / "images", False
  else:
    path = _common.find_file(root, [mevf.name, OFFICIAL_JSON], module)
    image_dir, official = root / OFFICIAL_IMAGES, True
  rows = _common.load_json(path)
  if not isinstance(rows, list):
    raise ReaderError(path, None, None, "expected a JSON list of question objects")
  c = Collector(f"vqa_rad/{split}", on_error)
  for i, obj in enumerate(rows):
    where = f"record {i}"
    with c.guard():
      if not isinstance(obj, dict):
        raise ReaderError(path, where, None, "expected an object")
      phrase = get_str(obj, "phrase_type", path, where).lower()
      if official:
        is_test = phrase.startswith("test_")
        if is_test != (split == "test"):
          continue
        phrase = phrase.removeprefix("test_")
      if split == "train" and phrase not in TRAIN_PHRASE_TYPES:
        c.filter(f"phrase_type {phrase} (train keeps freeform, para)")
        continue
      c.add(
          vqa_record(
              id=str(get_str(obj, "qid", path, where)),
              image_dir=image_dir,
              image_rel=get_str(obj, "image_name", path, where),
              question=get_str(obj, "question", path, where),
              answer=get_str(obj, "answer", path, where),
              answer_type=answer_type(obj, "answer_type", path, where),
              lang="en",
              path=path,
              where=where,
              image_field="image_name",
              check_images=check_images,
          )
      )
  return c.finish()
