"""MIMIC-CXR(-JPG): report generation and per-condition classification.

Layout (``mimic_cxr/``, the mimic-cxr-jpg 2.0.0 release plus the reports of mimic-cxr 2.0.0):
``mimic-cxr-2.0.0-split.csv.gz`` (dicom_id, study_id, subject_id, split ∈ train/validate/test),
``mimic-cxr-2.0.0-metadata.csv.gz`` (dicom_id, ..., ViewPosition, ...),
``mimic-cxr-2.0.0-chexpert.csv.gz`` (subject_id, study_id + 14 CheXpert labels: 1.0 / 0.0 /
-1.0 uncertain / blank), images ``files/p1X/p<subject>/s<study>/<dicom_id>.jpg`` and reports
``files/p1X/p<subject>/s<study>.txt`` (from mimic-cxr-reports.zip; ``mimic-cxr-reports/files/``
also works). Uncompressed ``.csv`` copies are accepted, and ``<dicom_id>.dcm`` of the DICOM
release where no ``.jpg`` exists.

``task="report"`` (MimicCXRReportRecord): every image of a study is its own example with the
study's INDICATION and FINDINGS; reports without findings and findings over 800 characters are
counted in ``filtered``; an empty FINDINGS heading is an invalid record.
``task="classification"`` (MimicCXRClassificationRecord): one example per image and condition —
11 conditions in train/validation, the 5 major ones in test (``conditions=`` overrides);
uncertain (-1) and blank count as negative. ``train_repeats`` gives the paper's ×2 upsampling
of positives for consolidation, enlarged cardiomediastinum, fracture and pneumonia.

``task="two_view"`` (the paper's zero-shot two-view evaluation, Table 5): one example per study
that has a frontal (PA preferred, else AP) and a lateral image, with the study's indication and
findings: ``{"id" (study_id), "study_id", "image_paths": [frontal, lateral], "views": [PA|AP,
LATERAL], "indication", "findings"}``; within a view the first image in the split file is used.
Studies without both views are counted in ``filtered``.

Only AP, PA and lateral images are kept (``LL`` counts as LATERAL); other views are filtered.
"""

from __future__ import annotations

import pathlib
import sys

from tasks.readers import _common
from tasks.readers._common import Collector, ReaderError, ReadResult, get_str
from tasks.readers.report_sections import split_sections

DATASET_DIR = "mimic_cxr"
SPLITS = ("train", "validation", "test")
SPLIT_NAMES = {"train": "train", "validation": "validate", "test": "test"}
MAX_FINDINGS_CHARS = 800
VIEWS = {"AP": "AP", "PA": "PA", "LATERAL": "LATERAL", "LL": "LATERAL"}
# CheXpert column → condition as the prompt says it.
CONDITIONS = {
    "No Finding": "no finding",
    "Atelectasis": "atelectasis",
    "Cardiomegaly": "cardiomegaly",
    "Consolidation": "consolidation",
    "Edema": "edema",
    "Pleural Effusion": "pleural effusion",
    "Lung Opacity": "lung opacity",
    "Enlarged Cardiomediastinum": "enlarged cardiomediastinum",
    "Fracture": "fracture",
    "Pneumonia": "pneumonia",
    "Support Devices": "support devices",
}
MAJOR_CONDITIONS = ("atelectasis", "cardiomegaly", "consolidation", "edema", "pleural effusion")
UPSAMPLED_CONDITIONS = ("consolidation", "enlarged cardiomediastinum", "fracture", "pneumonia")
OPTIONS = ["No", "Yes"]
PREFIX = "mimic-cxr-2.0.0-"
LAYOUT = (
    "MIMIC-CXR (credentialed, PhysioNet mimic-cxr-jpg 2.0.0 + mimic-cxr 2.0.0 reports): put "
    f"{PREFIX}split.csv.gz, {PREFIX}metadata.csv.gz and {PREFIX}chexpert.csv.gz in "
    "mimic_cxr/, the JPEGs under mimic_cxr/files/p1X/p<subject>/s<study>/<dicom_id>.jpg "
    "and unzip mimic-cxr-reports.zip there (files/p1X/p<subject>/s<study>.txt)."
)


def _csv(root: pathlib.Path, name: str, module) -> pathlib.Path:
  return _common.find_file(root, [f"{PREFIX}{name}.csv.gz", f"{PREFIX}{name}.csv"], module)


def _study_dir(subject: str, study: str) -> pathlib.Path:
  return pathlib.Path("files") / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"


def _report_path(root: pathlib.Path, subject: str, study: str) -> pathlib.Path:
  rel = _study_dir(subject, study).with_suffix(".txt")
  for base in (root, root / "mimic-cxr-reports"):
    if (base / rel).is_file():
      return base / rel
  return root / rel


def _label(value: str, path, where: str, column: str) -> int:
  v = (value or "").strip()
  if v in ("", "0", "0.0", "-1", "-1.0"):
    return 0
  if v in ("1", "1.0"):
    return 1
  raise ReaderError(path, where, column, f"unknown label {v!r}; expected 1.0, 0.0, -1.0 or blank")


def train_repeats(record: dict) -> int:
  """2 for a positive classification record of an upsampled condition, else 1."""
  return 2 if record.get("label") == 1 and record.get("condition") in UPSAMPLED_CONDITIONS else 1


def read(
    dataset_dir,
    split: str,
    *,
    on_error: str = "raise",
    task: str = "report",
    conditions=None,
    check_images: bool = True,
) -> ReadResult:
  """MIMIC-CXR records of ``split`` for ``task`` ("report", "classification", "two_view")."""
  module = sys.modules[__name__]
  _common.check_split(module, split)
  if task == "two_view":
    return _two_view(
        read(dataset_dir, split, on_error=on_error, task="report", check_images=check_images)
    )
  if task not in ("report", "classification"):
    raise ValueError(f"task must be 'report', 'classification' or 'two_view', got {task!r}")
  root = _common.resolve_dataset_dir(module, dataset_dir)
  c = Collector(f"mimic_cxr_{task}/{split}", on_error)

  meta_path = _csv(root, "metadata", module)
  views: dict[str, str] = {}
  for lineno, row in _common.iter_csv(meta_path, ["dicom_id", "ViewPosition"]):
    views[row["dicom_id"].strip()] = (row["ViewPosition"] or "").strip().upper()

  labels: dict[str, dict[str, int]] = {}
  if task == "classification":
    if conditions is None:
      conditions = MAJOR_CONDITIONS if split == "test" else tuple(CONDITIONS.values())
    unknown = [x for x in conditions if x not in CONDITIONS.values()]
    if unknown:
      raise ValueError(f"unknown condition(s) {unknown}; known: {list(CONDITIONS.values())}")
    columns = [col for col, name in CONDITIONS.items() if name in conditions]
    chex_path = _csv(root, "chexpert", module)
    for lineno, row in _common.iter_csv(chex_path, ["subject_id", "study_id", *columns]):
      with c.guard():
        where = str(lineno)
        study = get_str(row, "study_id", chex_path, where)
        labels[study] = {
            CONDITIONS[col]: _label(row[col], chex_path, where, col) for col in columns
        }

  split_path = _csv(root, "split", module)
  reports: dict[str, dict | None] = {}  # study → sections (None: no findings), read once
  for lineno, row in _common.iter_csv(split_path, ["dicom_id", "study_id", "subject_id", "split"]):
    where = str(lineno)
    with c.guard():
      if get_str(row, "split", split_path, where) != SPLIT_NAMES[split]:
        continue
      dicom = get_str(row, "dicom_id", split_path, where)
      study = get_str(row, "study_id", split_path, where)
      subject = get_str(row, "subject_id", split_path, where)
      if dicom not in views:
        raise ReaderError(split_path, where, "dicom_id", f"{dicom} has no row in {meta_path.name}")
      view = VIEWS.get(views[dicom])
      if view is None:
        c.filter(f"view {views[dicom] or '(blank)'} not AP/PA/LATERAL")
        continue
      image = root / _study_dir(subject, study) / f"{dicom}.jpg"
      if not image.is_file() and image.with_suffix(".dcm").is_file():
        image = image.with_suffix(".dcm")  # the DICOM release (mimic-cxr 2.0.0)
      if check_images and not image.is_file():
        raise ReaderError(split_path, where, "dicom_id", f"image file not found: {image}")
      base = {"image_path": str(image), "study_id": study, "view": view}
      if task == "classification":
        if study not in labels:
          c.filter("study without CheXpert labels")
          continue
        for condition, label in labels[study].items():
          c.add(
              {
                  "id": f"{dicom}/{condition}",
                  **base,
                  "condition": condition,
                  "options": list(OPTIONS),
                  "label": label,
                  "answer": OPTIONS[label],
              }
          )
        continue
      if study not in reports:
        report = _report_path(root, subject, study)
        if not report.is_file():
          reports[study] = None
          c.filter("no report")
          continue
        sections = split_sections(report.read_text(encoding="utf-8", errors="replace"))
        if "findings" in sections and not sections["findings"]:
          reports[study] = None
          raise ReaderError(report, None, "FINDINGS", "empty FINDINGS section")
        reports[study] = sections if "findings" in sections else None
      sections = reports[study]
      if sections is None:
        c.filter("report without findings")
        continue
      if len(sections["findings"]) > MAX_FINDINGS_CHARS:
        c.filter(f"findings over {MAX_FINDINGS_CHARS} characters")
        continue
      c.add(
          {
              "id": dicom,
              **base,
              "indication": sections.get("indication", ""),
              "findings": sections["findings"],
          }
      )
  return c.finish()


FRONTAL = ("PA", "AP")


def _two_view(single: ReadResult) -> ReadResult:
  """Report records (one per image) → one record per study with a frontal and a lateral image."""
  studies: dict[str, list[dict]] = {}
  for r in single.records:
    studies.setdefault(r["study_id"], []).append(r)
  out = ReadResult(records=[], skipped=single.skipped, skip_reasons=single.skip_reasons)
  out.filtered = dict(single.filtered)
  for study, images in studies.items():
    by_view: dict[str, dict] = {}
    for r in images:
      by_view.setdefault(r["view"], r)
    frontal = next((by_view[v] for v in FRONTAL if v in by_view), None)
    lateral = by_view.get("LATERAL")
    if frontal is None or lateral is None:
      out.filtered["study without a frontal and a lateral image"] = (
          out.filtered.get("study without a frontal and a lateral image", 0) + 1
      )
      continue
    out.records.append(
        {
            "id": study,
            "study_id": study,
            "image_paths": [frontal["image_path"], lateral["image_path"]],
            "views": [frontal["view"], "LATERAL"],
            "indication": frontal["indication"],
            "findings": frontal["findings"],
        }
    )
  return out
