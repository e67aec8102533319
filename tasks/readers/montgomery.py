"""Montgomery County chest X-ray set (tuberculosis): the NLM release layout.

Layout (``montgomery/``, or ``montgomery/MontgomerySet/`` as the zip unpacks):
``CXR_png/MCUCXR_<NNNN>_<L>.png`` — 138 frontal chest X-rays; ``L`` in the file name is the
label, 0 normal, 1 tuberculosis (80 / 58 in the release) — and
``ClinicalReadings/MCUCXR_<NNNN>_<L>.txt`` (patient sex and age lines, then the radiologist's
reading, e.g. ``normal``). ``ManualMask/`` (lung masks) is not used.

The set has no split and is evaluation-only (the paper's zero-shot test, Table 4): ``test`` holds
all images. The question asked is "Is it a normal chest x-ray?", so the answer is ``Yes`` for a
normal image and ``No`` for tuberculosis. Record: ``{"id" ("MCUCXR_0001_0"), "image_path",
"label": 0 normal | 1 TB, "answer": "Yes" | "No", "options": ["Yes", "No"], "sex", "age",
"clinical_reading"}`` (``""`` where the release has no reading file or line).
"""

from __future__ import annotations

import pathlib
import re
import sys

from tasks.readers import _common
from tasks.readers._common import Collector, ReaderError, ReadResult

DATASET_DIR = "montgomery"
SPLITS = ("test",)
OPTIONS = ["Yes", "No"]  # answers to "Is it a normal chest x-ray?"
LAYOUT = (
    "Montgomery County CXR set (NLM, open): unzip NLM-MontgomeryCXRSet.zip into montgomery/ so "
    "that montgomery/MontgomerySet/CXR_png/MCUCXR_<NNNN>_<0|1>.png and "
    "montgomery/MontgomerySet/ClinicalReadings/MCUCXR_<NNNN>_<0|1>.txt exist."
)
_NAME = re.compile(r"^MCUCXR_(\d{4})_([01])\.png$", re.IGNORECASE)
_FIELD = re.compile(r"^\s*patient'?s\s+(sex|age)\s*:\s*(.*?)\s*$", re.IGNORECASE)


def _release_root(root: pathlib.Path) -> pathlib.Path:
  nested = root / "MontgomerySet"
  return nested if (nested / "CXR_png").is_dir() else root


def parse_clinical_reading(text: str) -> dict[str, str]:
  """``{"sex", "age", "clinical_reading"}`` of a ClinicalReadings file: the ``Patient's Sex:`` /
  ``Patient's Age:`` lines, and every other non-blank line joined by a space."""
  out = {"sex": "", "age": "", "clinical_reading": ""}
  rest = []
  for line in text.splitlines():
    m = _FIELD.match(line)
    if m:
      out[m.group(1).lower()] = m.group(2)
    elif line.strip():
      rest.append(line.strip())
  out["clinical_reading"] = " ".join(rest)
  return out


def read(
    dataset_dir, split: str, *, on_error: str = "raise", check_images: bool = True
) -> ReadResult:
  """All Montgomery records (``split`` must be ``test``), in file-name order."""
  del check_images  # records are built from the image files themselves
  module = sys.modules[__name__]
  _common.check_split(module, split)
  root = _release_root(_common.resolve_dataset_dir(module, dataset_dir))
  images = root / "CXR_png"
  if not images.is_dir():
    raise _common.MissingDatasetError(f"missing directory {images}; {LAYOUT}")
  c = Collector(f"montgomery/{split}", on_error)
  files = sorted(p for p in images.iterdir() if p.suffix.lower() == ".png")
  if not files:
    raise _common.MissingDatasetError(f"no PNG images in {images}; {LAYOUT}")
  for path in files:
    with c.guard():
      m = _NAME.match(path.name)
      if not m:
        raise ReaderError(
            path, None, "file name", "expected MCUCXR_<NNNN>_<0|1>.png (the label is the digit)"
        )
      label = int(m.group(2))
      reading = root / "ClinicalReadings" / (path.stem + ".txt")
      info = {"sex": "", "age": "", "clinical_reading": ""}
      if reading.is_file():
        info = parse_clinical_reading(reading.read_text(encoding="utf-8", errors="replace"))
      c.add(
          {
              "id": path.stem,
              "image_path": str(path),
              "label": label,
              "answer": OPTIONS[label],
              "options": list(OPTIONS),
              **info,
          }
      )
  return c.finish()
