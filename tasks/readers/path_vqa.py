"""Path-VQA: the release's ``pvqa`` layout, or a JSON / parquet export.

Release layout (``path_vqa/`` or ``path_vqa/pvqa/``): ``qas/{train,val,test}_vqa.pkl`` +
``images/{train,val,test}/<img_id>.jpg``. Each pickle is a list of dicts, either
``{"img_id", "sent" (question), "label": {answer: score}, "question_id", "answer_type", ...}`` or
``{"image", "question", "answer"}``. Pickles are read by :mod:`tasks.readers.safe_pickle`, which
refuses any import, so a malicious file cannot execute anything.

Exports: ``{train,val,test}.json`` (a list of ``{"image", "question", "answer"}``, ``image`` a path
relative to the dataset directory or an image id under ``images/<split>/``), or
``{train,validation,test}.parquet`` with the same columns (``image`` a path string, or the Hugging
Face struct ``{"bytes", "path"}``, whose bytes are written once under ``extracted/<split>/``).

``answer_type`` is not reliable across copies, so it is derived: CLOSED for yes/no answers, else
OPEN. Record: VQARecord, ``lang="en"``.
"""

from __future__ import annotations

import hashlib
import pathlib
import sys

from tasks.readers import _common
from tasks.readers._common import Collector, ReaderError, ReadResult, get_str
from tasks.readers.safe_pickle import load_data_pickle

DATASET_DIR = "path_vqa"
SPLITS = ("train", "validation", "test")
RELEASE_SPLIT = {"train": "train", "validation": "val", "test": "test"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
LAYOUT = (
    "Path-VQA: unzip the release (github UCSD-AI4H/PathVQA → pvqa) into path_vqa/ so that "
    "path_vqa/qas/{train,val,test}_vqa.pkl and path_vqa/images/{train,val,test}/*.jpg "
    "exist; a JSON export {train,val,test}.json or parquet export "
    "{train,validation,test}.parquet with columns image, question, answer also works."
)


def _qa(obj, path, where: str) -> tuple[str, str, str]:
  """(image ref, question, answer) of one row in any of the accepted forms."""
  if not isinstance(obj, dict):
    raise ReaderError(path, where, None, f"expected a dict, got {type(obj).__name__}")
  if "sent" in obj or "img_id" in obj:
    image = get_str(obj, "img_id", path, where)
    question = get_str(obj, "sent", path, where)
    label = obj.get("label")
    if not isinstance(label, dict) or not label:
      raise ReaderError(path, where, "label", "expected a non-empty {answer: score} dict")
    answer = max(label, key=lambda a: (label[a], a))
    if not isinstance(answer, str) or not answer.strip():
      raise ReaderError(path, where, "label", f"answer {answer!r} is not a non-empty string")
    return image, question, answer.strip()
  return (
      get_str(obj, "image", path, where),
      get_str(obj, "question", path, where),
      get_str(obj, "answer", path, where),
  )


def _resolve_image(root: pathlib.Path, split: str, ref: str) -> pathlib.Path:
  direct = root / ref
  if direct.suffix.lower() in IMAGE_SUFFIXES:
    return direct if direct.is_file() else root / "images" / RELEASE_SPLIT[split] / ref
  for suffix in IMAGE_SUFFIXES:
    candidate = root / "images" / RELEASE_SPLIT[split] / (ref + suffix)
    if candidate.is_file():
      return candidate
  return root / "images" / RELEASE_SPLIT[split] / (ref + ".jpg")


def _parquet_rows(path: pathlib.Path, root: pathlib.Path, split: str) -> list[dict]:
  import pyarrow.parquet as pq  # only needed for this export form

  rows = pq.read_table(path).to_pylist()
  for i, row in enumerate(rows):
    image = row.get("image")
    if isinstance(image, dict):
      data = image.get("bytes")
      if data:
        name = pathlib.Path(image.get("path") or f"{i}.jpg").name
        digest = hashlib.sha1(data).hexdigest()[:10]
        out = root / "extracted" / split / f"{digest}_{name}"
        if not out.is_file():
          out.parent.mkdir(parents=True, exist_ok=True)
          out.write_bytes(data)
        row["image"] = str(out.relative_to(root))
      else:
        row["image"] = image.get("path")
  return rows


def _load_rows(root: pathlib.Path, split: str, module) -> tuple[pathlib.Path, list]:
  base = root / "pvqa" if (root / "pvqa").is_dir() else root
  rel = RELEASE_SPLIT[split]
  candidates = [
      base / "qas" / f"{rel}_vqa.pkl",
      base / f"{rel}.json",
      base / f"{split}.json",
      base / f"{split}.parquet",
      base / f"{rel}.parquet",
  ]
  for path in candidates:
    if path.is_file():
      break
  else:
    raise _common.MissingDatasetError(
        f"missing file {candidates[0]} (also looked for "
        f"{', '.join(p.name for p in candidates[1:])}); {module.LAYOUT}"
    )
  if path.suffix == ".pkl":
    rows = load_data_pickle(path)
  elif path.suffix == ".json":
    rows = _common.load_json(path)
  else:
    rows = _parquet_rows(path, base, split)
  if not isinstance(rows, list):
    raise ReaderError(path, None, None, f"expected a list of QA rows, got {type(rows).__name__}")
  return path, rows


def read(
    dataset_dir, split: str, *, on_error: str = "raise", check_images: bool = True
) -> ReadResult:
  """Path-VQA records of ``split``; a pickle needing any import raises UnsafePickleError."""
  module = sys.modules[__name__]
  _common.check_split(module, split)
  root = _common.resolve_dataset_dir(module, dataset_dir)
  path, rows = _load_rows(root, split, module)
  base = path.parent.parent if path.parent.name == "qas" else path.parent
  c = Collector(f"path_vqa/{split}", on_error)
  for i, obj in enumerate(rows):
    where = f"record {i}"
    with c.guard():
      image_ref, question, answer = _qa(obj, path, where)
      image = _resolve_image(base, split, image_ref)
      if check_images and not image.is_file():
        raise ReaderError(path, where, "image", f"image file not found: {image}")
      qid = obj.get("question_id", i) if isinstance(obj, dict) else i
      c.add(
          {
              "id": f"{RELEASE_SPLIT[split]}-{qid}",
              "image_path": str(image),
              "question": question,
              "answer": answer,
              "answer_type": "CLOSED" if answer.lower() in ("yes", "no") else "OPEN",
              "lang": "en",
          }
      )
  return c.finish()
