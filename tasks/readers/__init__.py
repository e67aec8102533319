"""Readers of the official MultiMedBench dataset files → plain Python records.

No TensorFlow in this package: readers are plain Python (json, csv, gzip, struct, the protobuf
wire format) so that preparation, tests and notebooks can use them without TF. (``import tasks``
itself registers the SeqIO tasks and does load TF; the readers never need it.)

Contract (stable; tasks/prompts.py, tasks/multimedbench.py and tasks/prepare.py code against it)
================================================================================================

Every dataset module in this package (``medqa``, ``medmcqa``, ``pubmedqa``, ``mimic_iii``,
``vqa_rad``, ``slake``, ``path_vqa``, ``mimic_cxr``, ``pad_ufes_20``, ``vindr_mammo``,
``cbis_ddsm``, ``precisionfda``, and ``montgomery`` for the zero-shot TB experiment) exposes:

* ``DATASET_DIR: str`` – the sub-directory of ``$MEDPALM_DATA_DIR`` holding the official release.
* ``LAYOUT: str`` – one paragraph saying what the official release calls its files and where they
  go; quoted by the missing-directory / missing-file error.
* ``SPLITS: tuple[str, ...]`` – the splits the reader serves, out of ``train``, ``validation``,
  ``test`` (``test`` is always the paper's evaluation split: MedMCQA's dev, PubMedQA's 500 ids).
  Without an official split: PubMedQA ``train`` = the 500 labelled non-test abstracts (exemplars
  only); MIMIC-III 80/10/10 by a hash of SUBJECT_ID; PAD-UFES-20 stratified 80/20 (seeded).
* ``read(dataset_dir: str | os.PathLike | None, split: str, *, on_error: str = "raise", **options)
  -> ReadResult`` – ``dataset_dir=None`` resolves ``$MEDPALM_DATA_DIR/<DATASET_DIR>`` (see
  :func:`resolve_dataset_dir`). ``on_error="raise"`` raises :class:`ReaderError` at the first
  invalid record, naming file, line/record and field; ``on_error="skip"`` skips it, counts it in
  ``ReadResult.skipped`` / ``skip_reasons`` and logs the count once at the end.

Options of ``read`` beyond the contract (all keyword-only, all with paper defaults):
``check_images=True`` (image datasets: each referenced image must exist; the real Slake annotation
excerpt has no images), ``slake.read(langs=("en", "zh"))``, ``mimic_iii.read(pairs="common"|"ood")``,
``mimic_cxr.read(task="report"|"classification", conditions=None)``,
``pad_ufes_20.read(seed=0)`` (the stratified 80/20 split), ``cbis_ddsm.read(abnormality=
"mass"|"calcification"|None)``, ``precisionfda.read(require_label=True, regions=None,
exclude_regions=None, sample_fraction=None)`` (``regions="paper"``: the paper's loci),
``mimic_iii.read(split_ids_dir=None)`` (Van Veen et al.'s split from id files),
``mimic_cxr.read(task="two_view")`` (one frontal + one lateral image per study),
``vindr_mammo.read(bilateral=False)`` (both breasts side by side as one image). PrecisionFDA also
streams: ``precisionfda.iter_read(...)`` (``iter_task`` by task name) yields records one by one
(the full training set is ~26 GB of pileups, too much for a list; ``tasks.prepare`` streams it).

Documented *selection filters* of the paper (MIMIC-III: only the six modality–anatomy pairs and
findings ≤ 600 tokens; MIMIC-CXR: findings ≤ 800 characters; VQA-RAD train: phrase_type ∈
{freeform, para}; Slake: the release's one row with an empty answer; ...) are not errors: what
they drop is counted in ``ReadResult.filtered``.

Records are ``dict``s (JSON-serialisable except PrecisionFDA's ``image`` array). Paths are absolute
``str``. Every record has a unique, stable ``id: str`` (used to seed exemplar choice and
augmentation). The schema per task family:

QA (MedQA, MedMCQA)                          :class:`QARecord`
    ``{"id", "question", "options": list[str] (4, in A..D order), "answer_idx": int (0..3),
    "answer": str (== options[answer_idx])}``
PubMedQA                                     :class:`PubMedQARecord`
    ``{"id" (PMID), "question", "context": str (the abstract's CONTEXTS joined by a blank line),
    "contexts": list[str], "labels": list[str] (section labels), "options": ["yes", "no", "maybe"],
    "answer_idx": int, "answer": str ("yes"|"no"|"maybe"), "long_answer": str}``
MIMIC-III report summarization               :class:`MimicIIIRecord`
    ``{"id" (ROW_ID), "findings", "impression", "modality": "CT"|"MRI", "anatomy": str (lower case:
    "head", "abdomen", "chest", "spine", "neck", "sinus", "pelvis"), "description"}``
VQA (VQA-RAD, Slake, Path-VQA)               :class:`VQARecord`
    ``{"id", "image_path", "question", "answer", "answer_type": "OPEN"|"CLOSED" (stripped, upper
    case; Path-VQA derives it: CLOSED for yes/no answers), "lang": "en"|"zh"}``
MIMIC-CXR report generation                  :class:`MimicCXRReportRecord`
    ``{"id" (dicom_id), "image_path", "study_id", "view": "AP"|"PA"|"LATERAL" (ViewPosition; LL →
    LATERAL; other views are filtered), "indication": str ("" if the report has none),
    "findings"}``
MIMIC-CXR classification                     :class:`MimicCXRClassificationRecord`
    ``{"id" (f"{dicom_id}/{condition}"), "image_path", "study_id", "view", "condition": str (lower
    case, e.g. "pleural effusion"), "options": ["No", "Yes"], "label": int (0|1), "answer": str}``
PAD-UFES-20                                  :class:`PadUfesRecord`
    ``{"id" (img_id), "image_path", "history": list[tuple[str, str]] (the 13 ``name: value`` items
    the prompt prints, in order, values already formatted, missing → "unknown"), "options":
    list[str] (6 class names), "label": int, "answer": str}``
VinDr-Mammo                                  :class:`VinDrRecord`
    ``{"id" (image_id), "study_id", "image_path", "laterality": "L"|"R", "view": "CC"|"MLO"|"XCCL"|...,
    "options": ["1".."5"], "label": int (BI-RADS − 1), "answer": str}``
CBIS-DDSM                                    :class:`CbisDdsmRecord`
    ``{"id", "image_path" (the ROI crop DICOM), "view": "CC"|"MLO", "abnormality": "mass"|
    "calcification", "laterality": "LEFT"|"RIGHT", "options": ["BENIGN", "BENIGN_WITHOUT_CALLBACK",
    "MALIGNANT"], "label": int, "answer": str}``
PrecisionFDA / DeepVariant                   :class:`GenomicsRecord`
    ``{"id" (f"{split}/{file name}:{record index}"), "image": uint8[H, W, C] (from image/shape,
    usually [100, 221, 6]), "options": ["0", "1", "2"], "label": int (0|1|2) | None (only for
    unlabelled calling examples read with require_label=False), "answer": str | None,
    "variant_type": "SNP"|"INDEL" (site level, as DeepVariant), "locus": str}``

Training-time upsampling (MIMIC-CXR positives ×2 for four conditions, VinDr BI-RADS 2–5 ×3) is not
done by the readers: ``mimic_cxr.train_repeats(record)`` / ``vindr_mammo.train_repeats(record)`` say
how often to repeat a record, and :func:`expand_repeats` applies it.

Task-level entry point: :func:`read_task` (by the suffix of a ``multimedbench_<task>`` name).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Iterator, Literal, TypedDict

from tasks.readers._common import (  # noqa: F401  (re-exported contract)
    DATA_DIR_ENV,
    MissingDatasetError,
    ReaderError,
    ReadResult,
    resolve_dataset_dir,
)


class QARecord(TypedDict):
  id: str
  question: str
  options: list[str]
  answer_idx: int
  answer: str


class PubMedQARecord(QARecord):
  context: str
  contexts: list[str]
  labels: list[str]
  long_answer: str


class MimicIIIRecord(TypedDict):
  id: str
  findings: str
  impression: str
  modality: str
  anatomy: str
  description: str


class VQARecord(TypedDict):
  id: str
  image_path: str
  question: str
  answer: str
  answer_type: str
  lang: str


class MimicCXRReportRecord(TypedDict):
  id: str
  image_path: str
  study_id: str
  view: str
  indication: str
  findings: str


class _Classification(TypedDict):
  options: list[str]
  label: int
  answer: str


class MimicCXRClassificationRecord(_Classification):
  id: str
  image_path: str
  study_id: str
  view: str
  condition: str


class PadUfesRecord(_Classification):
  id: str
  image_path: str
  history: list[tuple[str, str]]


class VinDrRecord(_Classification):
  id: str
  study_id: str
  image_path: str
  laterality: str
  view: str


class CbisDdsmRecord(_Classification):
  id: str
  image_path: str
  view: str
  abnormality: Literal["mass", "calcification"]
  laterality: str


class GenomicsRecord(TypedDict):
  id: str
  image: Any  # numpy uint8[H, W, C]
  options: list[str]
  label: int | None
  answer: str | None
  variant_type: Literal["SNP", "INDEL"]
  locus: str


# multimedbench_<task> suffix → (module, fixed keyword options of its `read`).
TASK_READERS: dict[str, tuple[str, dict[str, Any]]] = {
    "medqa": ("medqa", {}),
    "medmcqa": ("medmcqa", {}),
    "pubmedqa": ("pubmedqa", {}),
    "mimic_iii": ("mimic_iii", {}),
    "vqa_rad": ("vqa_rad", {}),
    "slake": ("slake", {}),
    "path_vqa": ("path_vqa", {}),
    "mimic_cxr_report": ("mimic_cxr", {"task": "report"}),
    "mimic_cxr_classification": ("mimic_cxr", {"task": "classification"}),
    "pad_ufes_20": ("pad_ufes_20", {}),
    "vindr_mammo": ("vindr_mammo", {}),
    "cbis_ddsm_mass": ("cbis_ddsm", {"abnormality": "mass"}),
    "cbis_ddsm_calc": ("cbis_ddsm", {"abnormality": "calcification"}),
    "precisionfda": ("precisionfda", {}),
}

# The paper's evaluation-only experiments beyond the 14 tasks (tasks.multimedbench registers
# them as multimedbench_<task> too): zero-shot tuberculosis (Table 4, Fig. 3), MIMIC-III's rare
# anatomy-modality pairs, two-view report generation (Table 5).
EXPERIMENT_READERS: dict[str, tuple[str, dict[str, Any]]] = {
    "montgomery_tb": ("montgomery", {}),
    "montgomery_tb_cot": ("montgomery", {}),
    "mimic_iii_ood": ("mimic_iii", {"pairs": "ood"}),
    "mimic_cxr_report_two_view": ("mimic_cxr", {"task": "two_view"}),
}
ALL_TASK_READERS = {**TASK_READERS, **EXPERIMENT_READERS}

DATASET_MODULES: tuple[str, ...] = (
    "medqa",
    "medmcqa",
    "pubmedqa",
    "mimic_iii",
    "vqa_rad",
    "slake",
    "path_vqa",
    "mimic_cxr",
    "pad_ufes_20",
    "vindr_mammo",
    "cbis_ddsm",
    "precisionfda",
    "montgomery",
)


def get_module(dataset: str):
  """The reader module of one of the 12 datasets (imported lazily)."""
  if dataset not in DATASET_MODULES:
    raise KeyError(f"unknown dataset {dataset!r}; known: {', '.join(DATASET_MODULES)}")
  return importlib.import_module(f"tasks.readers.{dataset}")


def read_task(
    task: str, split: str, *, data_dir=None, on_error: str = "raise", **options
) -> ReadResult:
  """Reads the records of task ``multimedbench_<task>`` (``task`` is the suffix).

  ``data_dir`` overrides ``$MEDPALM_DATA_DIR/<DATASET_DIR>`` for this dataset.
  """
  task = task.removeprefix("multimedbench_")
  if task not in ALL_TASK_READERS:
    raise KeyError(f"unknown task {task!r}; known: {', '.join(ALL_TASK_READERS)}")
  module_name, fixed = ALL_TASK_READERS[task]
  module = get_module(module_name)
  return module.read(data_dir, split, on_error=on_error, **fixed, **options)


def iter_task(
    task: str, split: str, *, data_dir=None, on_error: str = "raise", **options
) -> Iterator[dict]:
  """Streams the records of task ``multimedbench_<task>`` one at a time, for readers that can
  (``iter_read``: PrecisionFDA, whose records hold their pileup arrays)."""
  task = task.removeprefix("multimedbench_")
  if task not in ALL_TASK_READERS:
    raise KeyError(f"unknown task {task!r}; known: {', '.join(ALL_TASK_READERS)}")
  module_name, fixed = ALL_TASK_READERS[task]
  module = get_module(module_name)
  if not hasattr(module, "iter_read"):
    raise TypeError(f"the {module_name} reader reads whole splits only: use read_task")
  return module.iter_read(data_dir, split, on_error=on_error, **fixed, **options)


def expand_repeats(records: list[dict], repeats: Callable[[dict], int]) -> list[dict]:
  """Each record repeated ``repeats(record)`` times, in order (training-time upsampling)."""
  out: list[dict] = []
  for record in records:
    out.extend([record] * repeats(record))
  return out
