"""CBIS-DDSM lesion pathology: the four case-description CSVs + the TCIA DICOM download.

Files: ``mass_case_description_{train,test}_set.csv`` and ``calc_case_description_{train,test}_set.csv``
with columns ``patient_id, breast_density (calc: "breast density"), left or right breast, image
view, abnormality id, abnormality type, ..., pathology, ..., image file path, cropped image file
path, ROI mask file path``. The input image is the ROI crop (``cropped image file path``).

TCIA's downloader does not write the CSV's paths verbatim: it keeps the first component
(``Mass-Training_P_00001_LEFT_CC_1``) but names the inner folders and files differently. So the
crop is looked up (1) at the CSV path under ``cbis_ddsm/`` or ``cbis_ddsm/CBIS-DDSM/``, else
(2) among the ``.dcm`` files under that first component: the only one, or the smallest (the crop;
the ROI mask is full-size). Record: CbisDdsmRecord; ``abnormality="mass"|"calcification"|None``
(both).
"""

from __future__ import annotations

import pathlib
import sys

from tasks.readers import _common
from tasks.readers._common import Collector, ReaderError, ReadResult, get_str

DATASET_DIR = "cbis_ddsm"
SPLITS = ("train", "test")
OPTIONS = ["BENIGN", "BENIGN_WITHOUT_CALLBACK", "MALIGNANT"]
ABNORMALITIES = {"mass": "mass", "calcification": "calc"}
VIEWS = ("CC", "MLO")
COLUMNS = [
    "patient_id",
    "left or right breast",
    "image view",
    "abnormality id",
    "abnormality type",
    "pathology",
    "cropped image file path",
]
LAYOUT = (
    "CBIS-DDSM (TCIA): put mass_case_description_{train,test}_set.csv and "
    "calc_case_description_{train,test}_set.csv in cbis_ddsm/ and the DICOM download "
    "(folders such as Mass-Training_P_00001_LEFT_CC_1/...) in cbis_ddsm/ or "
    "cbis_ddsm/CBIS-DDSM/."
)


def find_crop(root: pathlib.Path, csv_path: str) -> pathlib.Path | None:
  """The ROI-crop DICOM for a CSV ``cropped image file path`` (see module docstring)."""
  rel = pathlib.PurePosixPath(csv_path.strip().replace("\\", "/"))
  bases = [root, root / "CBIS-DDSM"]
  for base in bases:
    if (base / rel).is_file():
      return base / rel
  for base in bases:
    folder = base / rel.parts[0]
    if folder.is_dir():
      files = sorted(folder.rglob("*.dcm"), key=lambda p: (p.stat().st_size, str(p)))
      if files:
        return files[0]
  return None


def read(
    dataset_dir,
    split: str,
    *,
    on_error: str = "raise",
    abnormality: str | None = None,
    check_images: bool = True,
) -> ReadResult:
  """CBIS-DDSM records of ``split`` for ``abnormality`` ("mass", "calcification" or None)."""
  module = sys.modules[__name__]
  _common.check_split(module, split)
  if abnormality is not None and abnormality not in ABNORMALITIES:
    raise ValueError(f"abnormality must be 'mass', 'calcification' or None, got {abnormality!r}")
  root = _common.resolve_dataset_dir(module, dataset_dir)
  kinds = [abnormality] if abnormality else list(ABNORMALITIES)
  c = Collector(f"cbis_ddsm_{abnormality or 'all'}/{split}", on_error)
  for kind in kinds:
    path = _common.require_file(
        root / f"{ABNORMALITIES[kind]}_case_description_{split}_set.csv", module
    )
    for lineno, row in _common.iter_csv(path, COLUMNS):
      where = str(lineno)
      with c.guard():
        pathology = get_str(row, "pathology", path, where).upper()
        if pathology not in OPTIONS:
          raise ReaderError(
              path,
              where,
              "pathology",
              f"unknown label {pathology!r}; " f"expected one of {', '.join(OPTIONS)}",
          )
        view = get_str(row, "image view", path, where).upper()
        if view not in VIEWS:
          raise ReaderError(path, where, "image view", f"expected CC or MLO, got {view!r}")
        side = get_str(row, "left or right breast", path, where).upper()
        if side not in ("LEFT", "RIGHT"):
          raise ReaderError(
              path, where, "left or right breast", f"expected LEFT or RIGHT, got {side!r}"
          )
        crop_ref = get_str(row, "cropped image file path", path, where)
        crop = find_crop(root, crop_ref)
        if crop is None:
          if check_images:
            raise ReaderError(
                path,
                where,
                "cropped image file path",
                f"no DICOM found for {crop_ref} under {root}",
            )
          crop = root / crop_ref
        case = pathlib.PurePosixPath(crop_ref.replace("\\", "/")).parts[0]
        label = OPTIONS.index(pathology)
        c.add(
            {
                "id": case,
                "image_path": str(crop),
                "view": view,
                "abnormality": kind,
                "laterality": side,
                "options": list(OPTIONS),
                "label": label,
                "answer": OPTIONS[label],
            }
        )
  return c.finish()
