"""MIMIC-III radiology report summarization (findings → impression), from ``NOTEEVENTS.csv(.gz)``.

Rows with ``CATEGORY == "Radiology"`` (others skipped silently), ``ISERROR`` not set. ``TEXT`` is
split into FINDINGS / IMPRESSION (``report_sections``); modality and anatomy come from
``DESCRIPTION`` (e.g. ``CT HEAD W/O CONTRAST`` → CT / head). Selection, as the paper: the six
common modality–anatomy pairs (CT head, CT abdomen, CT chest, MRI head, CT spine, CT neck), or
with ``pairs="ood"`` the five rare ones (MRI spine, CT sinus, MRI abdomen, MRI pelvis, MRI neck);
findings of at most 600 whitespace tokens. Reports without a FINDINGS or IMPRESSION heading, or
outside the pairs, are counted in ``filtered``; a heading that is present but empty is an invalid
record (ReaderError / skip).

Splits: MIMIC-III has none. The paper uses Van Veen et al.'s split of 78,875 reports (58,405 /
7,413 / 13,057), which is not distributed with MIMIC-III: whoever has it passes
``split_ids_dir``, a directory with ``train.txt``, ``validation.txt`` (or ``val.txt`` /
``dev.txt``) and ``test.txt`` holding one note ``ROW_ID`` per line (blank lines and ``#``
comments ignored; a first line ``ROW_ID`` is a header). Then a report's split is the file
listing its ROW_ID, reports listed nowhere are counted in ``filtered``, and a ROW_ID listed in
two files is an error; the pair and length selections still apply (what they drop is counted).
Without it the split is a stable function of ``SUBJECT_ID`` (patient-level, no leakage):
sha1(subject) mod 100 < 80 → train, < 90 → validation, else test.
Record: MimicIIIRecord.
"""

from __future__ import annotations

import hashlib
import pathlib
import re
import sys

from tasks.readers import _common
from tasks.readers._common import Collector, ReaderError, ReadResult, get_str
from tasks.readers.report_sections import split_sections

DATASET_DIR = "mimic_iii"
SPLITS = ("train", "validation", "test")
MAX_FINDINGS_TOKENS = 600
COMMON_PAIRS = (
    ("CT", "head"),
    ("CT", "abdomen"),
    ("CT", "chest"),
    ("MRI", "head"),
    ("CT", "spine"),
    ("CT", "neck"),
)
OOD_PAIRS = (
    ("MRI", "spine"),
    ("CT", "sinus"),
    ("MRI", "abdomen"),
    ("MRI", "pelvis"),
    ("MRI", "neck"),
)
COLUMNS = ["ROW_ID", "SUBJECT_ID", "CATEGORY", "DESCRIPTION", "TEXT"]
LAYOUT = (
    "MIMIC-III (credentialed, PhysioNet mimiciii 1.4): put NOTEEVENTS.csv.gz (or the "
    "unzipped NOTEEVENTS.csv) in mimic_iii/."
)

# DESCRIPTION keyword → anatomy; the keyword occurring first in the description wins.
_ANATOMY = [
    (re.compile(p), a)
    for p, a in [
        (r"\b(HEAD|BRAIN)\b", "head"),
        (r"\b(ABD|ABDOMEN|ABDOMINAL)\b", "abdomen"),
        (r"\b(CHEST|THORAX|THORACIC)\b", "chest"),
        (r"\b([CTL]-SPINE|SPINE|CERVICAL|LUMBAR|[CTL]SPINE)\b", "spine"),
        (r"\bNECK\b", "neck"),
        (r"\b(SINUS|SINUSES|MAXILLOFACIAL|FACIAL|ORBIT|ORBITS)\b", "sinus"),
        (r"\bPELVIS\b", "pelvis"),
    ]
]
_MODALITY = re.compile(r"^\s*(CTA|CT|MRA|MRI|MR|MRV)\b")


def modality_anatomy(description: str) -> tuple[str | None, str | None]:
  """("CT"|"MRI"|None, anatomy|None) of a DESCRIPTION such as ``MR HEAD W & W/O CONTRAST``."""
  d = description.upper()
  m = _MODALITY.match(d)
  modality = None if m is None else ("CT" if m.group(1).startswith("CT") else "MRI")
  hits = [(mm.start(), a) for pat, a in _ANATOMY for mm in [pat.search(d)] if mm]
  anatomy = min(hits)[1] if hits else None
  return modality, anatomy


def split_of(subject_id: str) -> str:
  bucket = int(hashlib.sha1(subject_id.strip().encode()).hexdigest(), 16) % 100
  return "train" if bucket < 80 else "validation" if bucket < 90 else "test"


SPLIT_FILES = {
    "train": ("train.txt",),
    "validation": ("validation.txt", "val.txt", "dev.txt"),
    "test": ("test.txt",),
}


def load_split_ids(split_ids_dir) -> dict[str, str]:
  """ROW_ID → split from a directory of id files (see the module docstring)."""
  root = pathlib.Path(split_ids_dir)
  out: dict[str, str] = {}
  for split, names in SPLIT_FILES.items():
    path = next((root / n for n in names if (root / n).is_file()), None)
    if path is None:
      raise _common.MissingDatasetError(
          f"missing split id file {root / names[0]}"
          + (f" (or {', '.join(names[1:])})" if len(names) > 1 else "")
          + "; split_ids_dir needs train.txt, validation.txt and test.txt with one ROW_ID a line"
      )
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
      value = line.split("#", 1)[0].strip()
      if not value or (lineno == 1 and value.upper() == "ROW_ID"):
        continue
      if not value.isdigit():
        raise ReaderError(path, str(lineno), "ROW_ID", f"expected an integer, got {value!r}")
      if value in out:
        raise ReaderError(path, str(lineno), "ROW_ID", f"{value} is also in the {out[value]} split")
      out[value] = split
  return out


def read(
    dataset_dir,
    split: str,
    *,
    on_error: str = "raise",
    pairs: str = "common",
    split_ids_dir=None,
) -> ReadResult:
  """Summarization records of ``split``; ``pairs`` is "common" (train/eval) or "ood";
  ``split_ids_dir``: Van Veen et al.'s split as id files (module docstring)."""
  module = sys.modules[__name__]
  _common.check_split(module, split)
  split_ids = load_split_ids(split_ids_dir) if split_ids_dir else None
  if pairs not in ("common", "ood"):
    raise ValueError(f"pairs must be 'common' or 'ood', got {pairs!r}")
  keep = COMMON_PAIRS if pairs == "common" else OOD_PAIRS
  root = _common.resolve_dataset_dir(module, dataset_dir)
  path = _common.find_file(root, ["NOTEEVENTS.csv.gz", "NOTEEVENTS.csv"], module)
  c = Collector(f"mimic_iii/{split}", on_error)
  for lineno, row in _common.iter_csv(path, COLUMNS):
    where = str(lineno)
    if (row.get("CATEGORY") or "").strip() != "Radiology":
      continue
    with c.guard():
      subject = get_str(row, "SUBJECT_ID", path, where)
      if split_ids is not None:
        row_split = split_ids.get(get_str(row, "ROW_ID", path, where))
        if row_split is None:
          c.filter("ROW_ID not in the supplied split")
          continue
      else:
        row_split = split_of(subject)
      if row_split != split:
        continue
      if (row.get("ISERROR") or "").strip() not in ("", "0"):
        c.filter("ISERROR set")
        continue
      modality, anatomy = modality_anatomy(get_str(row, "DESCRIPTION", path, where))
      if (modality, anatomy) not in keep:
        c.filter("modality/anatomy pair not selected")
        continue
      sections = split_sections(row.get("TEXT") or "")
      if "findings" not in sections or "impression" not in sections:
        c.filter("no FINDINGS or IMPRESSION section")
        continue
      for name in ("findings", "impression"):
        if not sections[name]:
          raise ReaderError(path, where, "TEXT", f"empty {name.upper()} section")
      if len(sections["findings"].split()) > MAX_FINDINGS_TOKENS:
        c.filter(f"findings over {MAX_FINDINGS_TOKENS} tokens")
        continue
      c.add(
          {
              "id": get_str(row, "ROW_ID", path, where),
              "findings": sections["findings"],
              "impression": sections["impression"],
              "modality": modality,
              "anatomy": anatomy,
              "description": row["DESCRIPTION"].strip(),
          }
      )
  return c.finish()
