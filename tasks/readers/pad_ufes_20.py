"""PAD-UFES-20 skin lesions: ``metadata.csv`` (26 columns) + PNG images.

Images are found by ``img_id`` anywhere under ``pad_ufes_20/images/`` (the release spreads them
over ``imgs_part_{1,2,3}/``) or directly in ``pad_ufes_20/``. Labels (``diagnostic``): NEV, BCC,
SCC, ACK, SEK, MEL; BOD (Bowen's disease) is SCC in situ and counts as SCC, as in the release's
own 6-class setup. The 14 clinical features the paper uses become ``history``: the 13
``(name, value)`` items the prompt prints (the two diameters share one item), booleans as
``true``/``false``, missing or UNK → ``unknown``.

No official split: a stratified 80/20 train/test split by label, a fixed function of
(``img_id``, ``seed``) — it does not depend on file order. Record: PadUfesRecord.
"""

from __future__ import annotations

import pathlib
import random
import sys

from tasks.readers import _common
from tasks.readers._common import Collector, ReaderError, ReadResult, get_str

DATASET_DIR = "pad_ufes_20"
SPLITS = ("train", "test")
TEST_FRACTION = 0.2
CODES = ("NEV", "BCC", "SCC", "ACK", "SEK", "MEL")
OPTIONS = [
    "Nevus",
    "Basal Cell Carcinoma",
    "Squamous Cell Carcinoma",
    "Actinic Keratosis",
    "Seborrheic Keratosis",
    "Melanoma",
]
ALIASES = {"BOD": "SCC"}
COLUMNS = [
    "patient_id",
    "lesion_id",
    "smoke",
    "drink",
    "background_father",
    "background_mother",
    "age",
    "pesticide",
    "gender",
    "skin_cancer_history",
    "cancer_history",
    "has_piped_water",
    "has_sewage_system",
    "fitspatrick",
    "region",
    "diameter_1",
    "diameter_2",
    "diagnostic",
    "itch",
    "grew",
    "hurt",
    "changed",
    "bleed",
    "elevation",
    "img_id",
    "biopsed",
]
LAYOUT = (
    "PAD-UFES-20 (Mendeley doi:10.17632/zr7vgbcyr2): put metadata.csv in pad_ufes_20/ and the "
    "images under pad_ufes_20/images/ (e.g. images/imgs_part_1/PAT_46_881_939.png)."
)
_MISSING = ("", "UNK", "NAN", "NONE", "UNKNOWN")


def _bool(row: dict, key: str, path, where: str) -> str:
  v = (row.get(key) or "").strip().upper()
  if v in _MISSING:
    return "unknown"
  if v in ("TRUE", "FALSE"):
    return v.lower()
  raise ReaderError(path, where, key, f"expected True, False or UNK, got {row[key]!r}")


def _number(row: dict, key: str, path, where: str, *, as_int: bool = False) -> str:
  v = (row.get(key) or "").strip()
  if v.upper() in _MISSING:
    return "unknown"
  try:
    x = float(v)
  except ValueError:
    raise ReaderError(path, where, key, f"expected a number, got {v!r}") from None
  return str(int(x)) if as_int else str(x)


def history(row: dict, path, where: str) -> list[tuple[str, str]]:
  """The prompt's ``Patient History`` items, in order, values formatted as printed."""
  gender = (row.get("gender") or "").strip().lower()
  region = (row.get("region") or "").strip().lower()
  d1, d2 = (_number(row, k, path, where) for k in ("diameter_1", "diameter_2"))
  return [
      ("Age", _number(row, "age", path, where, as_int=True)),
      ("Gender", gender if gender.upper() not in _MISSING else "unknown"),
      ("Smoke", _bool(row, "smoke", path, where)),
      ("Drink", _bool(row, "drink", path, where)),
      ("Family skin cancer history", _bool(row, "skin_cancer_history", path, where)),
      ("Family any cancer history", _bool(row, "cancer_history", path, where)),
      ("Lesion region", region if region.upper() not in _MISSING else "unknown"),
      ("Lesion itch", _bool(row, "itch", path, where)),
      ("Lesion grew", _bool(row, "grew", path, where)),
      ("Lesion bled", _bool(row, "bleed", path, where)),
      ("Lesion elevation", _bool(row, "elevation", path, where)),
      ("Fitzpatrick scale", _number(row, "fitspatrick", path, where)),
      ("Diameters (mm)", "unknown" if d1 == d2 == "unknown" else f"[{d1}, {d2}]"),
  ]


def _test_ids(by_label: dict[int, list[str]], seed: int) -> set[str]:
  test: set[str] = set()
  for label in sorted(by_label):
    ids = sorted(by_label[label])
    random.Random(f"{seed}/{label}").shuffle(ids)
    test.update(ids[: round(len(ids) * TEST_FRACTION)])
  return test


def _image_index(root: pathlib.Path) -> dict[str, pathlib.Path]:
  index = {p.name: p for p in root.glob("*.png")}
  if (root / "images").is_dir():
    index.update({p.name: p for p in (root / "images").rglob("*.png")})
  return index


def read(
    dataset_dir, split: str, *, on_error: str = "raise", seed: int = 0, check_images: bool = True
) -> ReadResult:
  """PAD-UFES-20 records of ``split`` (stratified 80/20 with ``seed``)."""
  module = sys.modules[__name__]
  _common.check_split(module, split)
  root = _common.resolve_dataset_dir(module, dataset_dir)
  path = _common.require_file(root / "metadata.csv", module)
  images = _image_index(root)
  c = Collector(f"pad_ufes_20/{split}", on_error)
  records = []
  for lineno, row in _common.iter_csv(path, COLUMNS):
    where = str(lineno)
    with c.guard():
      img_id = get_str(row, "img_id", path, where)
      code = get_str(row, "diagnostic", path, where).upper()
      code = ALIASES.get(code, code)
      if code not in CODES:
        raise ReaderError(
            path,
            where,
            "diagnostic",
            f"unknown label {row['diagnostic']!r}; expected one of " f"{', '.join(CODES)} (or BOD)",
        )
      image = images.get(img_id, root / "images" / img_id)
      if check_images and not image.is_file():
        raise ReaderError(path, where, "img_id", f"image file not found under {root}: " f"{img_id}")
      label = CODES.index(code)
      records.append(
          {
              "id": img_id,
              "image_path": str(image),
              "history": history(row, path, where),
              "options": list(OPTIONS),
              "label": label,
              "answer": OPTIONS[label],
          }
      )
  by_label: dict[int, list[str]] = {}
  for r in records:
    by_label.setdefault(r["label"], []).append(r["id"])
  test = _test_ids(by_label, seed)
  for r in records:
    if (r["id"] in test) == (split == "test"):
      c.add(r)
  return c.finish()
