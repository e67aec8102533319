"""VinDr-Mammo breast-level BI-RADS: ``breast-level_annotations.csv`` + DICOM images.

Columns: ``study_id, series_id, image_id, laterality (L|R), view_position (CC|MLO|...), height,
width, breast_birads ("BI-RADS 1".."BI-RADS 5"), breast_density, split (training|test)``; images
``images/<study_id>/<image_id>.dicom``. Record: VinDrRecord (label = BI-RADS − 1).
``train_repeats`` gives the paper's ×3 upsampling of the minority classes BI-RADS 2–5.

The paper's prompt example says "Image view: bilateral craniocaudal", yet its counts (16,000 /
4,000) are image counts and its text says each image's laterality and view are given. Default
(``bilateral=False``): one example per image, the prompt naming its side ("left craniocaudal").
``bilateral=True``: one example per study and view holding both breasts, the right breast's
image left of the left breast's (the reading-room hanging convention), composed side by side
into one image (``image_paths`` [R, L], ``image_layout`` "side_by_side", ``laterality`` "B"), and
labelled with the higher BI-RADS of the two breasts (the more suspicious breast decides the
assessment). A study and view without both sides is counted in ``filtered``.
"""

from __future__ import annotations

import re
import sys

from tasks.readers import _common
from tasks.readers._common import Collector, ReaderError, ReadResult, get_str

DATASET_DIR = "vindr_mammo"
SPLITS = ("train", "test")
SPLIT_NAMES = {"train": "training", "test": "test"}
OPTIONS = ["1", "2", "3", "4", "5"]
LATERALITIES = ("L", "R")
VIEWS = ("CC", "MLO", "XCCL", "XCCM", "ML", "LM", "AT")
COLUMNS = ["study_id", "image_id", "laterality", "view_position", "breast_birads", "split"]
LAYOUT = (
    "VinDr-Mammo (credentialed, PhysioNet vindr-mammo 1.0.0): put "
    "breast-level_annotations.csv in vindr_mammo/ and the DICOMs under "
    "vindr_mammo/images/<study_id>/<image_id>.dicom."
)
_BIRADS = re.compile(r"^(?:BI-RADS\s*)?([1-5])$", re.IGNORECASE)


def train_repeats(record: dict) -> int:
  """3 for the minority classes BI-RADS 2–5 (label ≥ 1), else 1."""
  return 3 if record.get("label", 0) >= 1 else 1


def read(
    dataset_dir,
    split: str,
    *,
    on_error: str = "raise",
    check_images: bool = True,
    bilateral: bool = False,
) -> ReadResult:
  """VinDr-Mammo records of ``split`` (train = "training" rows, test = "test" rows); with
  ``bilateral`` one record per study and view with both breasts (module docstring)."""
  result = _read_images(dataset_dir, split, on_error, check_images)
  return _bilateral(result) if bilateral else result


def _bilateral(single: ReadResult) -> ReadResult:
  pairs: dict[tuple[str, str], dict[str, dict]] = {}
  for r in single.records:
    pairs.setdefault((r["study_id"], r["view"]), {})[r["laterality"]] = r
  out = ReadResult(records=[], skipped=single.skipped, skip_reasons=single.skip_reasons)
  out.filtered = dict(single.filtered)
  for (study, view), sides in pairs.items():
    if set(sides) != {"L", "R"}:
      reason = "study and view without both breasts"
      out.filtered[reason] = out.filtered.get(reason, 0) + 1
      continue
    label = max(sides["R"]["label"], sides["L"]["label"])
    out.records.append(
        {
            "id": f"{study}/{view}",
            "study_id": study,
            "image_paths": [sides["R"]["image_path"], sides["L"]["image_path"]],
            "image_layout": "side_by_side",
            "laterality": "B",
            "view": view,
            "options": list(OPTIONS),
            "label": label,
            "answer": OPTIONS[label],
        }
    )
  return out


def _read_images(dataset_dir, split: str, on_error: str, check_images: bool) -> ReadResult:
  module = sys.modules[__name__]
  _common.check_split(module, split)
  root = _common.resolve_dataset_dir(module, dataset_dir)
  path = _common.require_file(root / "breast-level_annotations.csv", module)
  c = Collector(f"vindr_mammo/{split}", on_error)
  for lineno, row in _common.iter_csv(path, COLUMNS):
    where = str(lineno)
    with c.guard():
      row_split = get_str(row, "split", path, where).lower()
      if row_split not in SPLIT_NAMES.values():
        raise ReaderError(path, where, "split", f"unknown split {row_split!r}")
      if row_split != SPLIT_NAMES[split]:
        continue
      birads = get_str(row, "breast_birads", path, where)
      m = _BIRADS.match(birads)
      if not m:
        raise ReaderError(
            path, where, "breast_birads", f"unknown label {birads!r}; expected BI-RADS 1..5"
        )
      laterality = get_str(row, "laterality", path, where).upper()
      if laterality not in LATERALITIES:
        raise ReaderError(path, where, "laterality", f"expected L or R, got {laterality!r}")
      view = get_str(row, "view_position", path, where).upper()
      if view not in VIEWS:
        raise ReaderError(path, where, "view_position", f"unknown view {view!r}")
      study = get_str(row, "study_id", path, where)
      image_id = get_str(row, "image_id", path, where)
      image = root / "images" / study / f"{image_id}.dicom"
      if check_images and not image.is_file():
        raise ReaderError(path, where, "image_id", f"image file not found: {image}")
      label = int(m.group(1)) - 1
      c.add(
          {
              "id": image_id,
              "study_id": study,
              "image_path": str(image),
              "laterality": laterality,
              "view": view,
              "options": list(OPTIONS),
              "label": label,
              "answer": OPTIONS[label],
          }
      )
  return c.finish()
