"""PrecisionFDA Truth Challenge V2 genotyping: DeepVariant ``make_examples`` pileups.

Layout: ``precisionfda/train/`` and ``precisionfda/test/`` holding TFRecord files (any name with
``tfrecord`` in it: ``*.tfrecord``, ``*.tfrecord.gz``, ``*.tfrecord-00000-of-00016.gz``; GZIP is
detected from the content). Each record is a ``tf.train.Example`` with

* ``image/encoded``: raw uint8 pileup, row-major, of shape ``image/shape`` (read, never assumed:
  DeepVariant 1.5 writes [100, 221, 6], other versions differ); ``image/format`` if present must be
  ``raw``;
* ``label``: genotype class 0 hom-ref / 1 het / 2 hom-alt = copies of the alternate allele;
* ``locus``: e.g. ``chr20:10001019-10001019``;
* ``variant/encoded``: a serialized nucleus ``Variant`` (reference_bases = field 6,
  alternate_bases = field 7): SNP when the reference and every alternate allele are single bases,
  otherwise INDEL (DeepVariant's own site-level definition; kept for the paper's SNP / indel F1).

Record: GenomicsRecord, ``image`` uint8[H, W, C]. Parsing is pure Python (see ``tfrecord.py``).
"""

from __future__ import annotations

import pathlib
import sys
from typing import Iterator

import numpy as np

from tasks.readers import _common
from tasks.readers._common import Collector, ReaderError, ReadResult
from tasks.readers.tfrecord import TFRecordError, iter_examples, iter_fields

DATASET_DIR = "precisionfda"
SPLITS = ("train", "test")
OPTIONS = ["0", "1", "2"]
LAYOUT = (
    "PrecisionFDA: put DeepVariant make_examples outputs (GZIP TFRecords of tf.train.Example "
    "with image/encoded, image/shape, label, locus, variant/encoded) in precisionfda/train/ "
    "and precisionfda/test/ (files named *.tfrecord or *.tfrecord.gz)."
)


def _one(ex: dict, key: str, path, where: str):
  values = ex.get(key)
  if not values:
    raise ReaderError(path, where, key, "missing")
  if len(values) != 1:
    raise ReaderError(path, where, key, f"expected one value, got {len(values)}")
  return values[0]


def _variant_type(ex: dict, path, where: str) -> str:
  """SNP | INDEL of the candidate site, as DeepVariant defines it: SNP when the reference and
  every alternate allele of the Variant are single bases (so a multi-allelic site with any
  indel allele is INDEL); DeepVariant 1.5 stores the same as ``variant_type`` 1 / 2."""
  encoded = _one(ex, "variant/encoded", path, where)
  ref, alts = None, []
  try:
    for field, wire, value in iter_fields(encoded):
      if field == 6 and wire == 2:
        ref = bytes(value).decode()
      elif field == 7 and wire == 2:
        alts.append(bytes(value).decode())
  except (ValueError, UnicodeDecodeError) as e:
    raise ReaderError(path, where, "variant/encoded", f"malformed Variant proto: {e}") from None
  if not ref or not alts:
    raise ReaderError(path, where, "variant/encoded", "no reference_bases / alternate_bases")
  return "SNP" if len(ref) == 1 and all(len(a) == 1 for a in alts) else "INDEL"


def _record(ex: dict, path: pathlib.Path, index: int, require_label: bool, split: str) -> dict:
  where = f"record {index}"
  shape = ex.get("image/shape")
  if not shape or len(shape) != 3 or any(d <= 0 for d in shape):
    raise ReaderError(path, where, "image/shape", f"expected 3 positive dims, got {shape}")
  fmt = ex.get("image/format")
  if fmt and fmt[0] not in (b"raw", b""):
    raise ReaderError(path, where, "image/format", f"unsupported format {fmt[0]!r}; want raw")
  raw = _one(ex, "image/encoded", path, where)
  if len(raw) != int(np.prod(shape)):
    raise ReaderError(
        path, where, "image/encoded", f"{len(raw)} bytes do not fill image/shape {shape}"
    )
  image = np.frombuffer(raw, np.uint8).reshape(shape)
  label = None
  if ex.get("label"):
    label = _one(ex, "label", path, where)
    if label not in (0, 1, 2):
      raise ReaderError(path, where, "label", f"unknown label {label}; expected 0, 1 or 2")
  elif require_label:
    raise ReaderError(
        path, where, "label", "missing (unlabelled calling examples need " "require_label=False)"
    )
  locus = _one(ex, "locus", path, where)
  return {
      "id": f"{split}/{path.name}:{index}",
      "image": image,
      "options": list(OPTIONS),
      "label": label,
      "answer": None if label is None else OPTIONS[label],
      "variant_type": _variant_type(ex, path, where),
      "locus": locus.decode() if isinstance(locus, bytes) else str(locus),
  }


def list_files(root: pathlib.Path, split: str, module) -> list[pathlib.Path]:
  directory = root / split
  files = sorted(
      p
      for p in directory.glob("*")
      if p.is_file() and "tfrecord" in p.name and not p.name.endswith(".json")
  )
  if not files:
    raise _common.MissingDatasetError(f"no TFRecord files in {directory}; {module.LAYOUT}")
  return files


def iter_read(
    dataset_dir,
    split: str,
    *,
    on_error: str = "raise",
    require_label: bool = True,
    result: ReadResult | None = None,
) -> Iterator[dict]:
  """Streams the records of ``split`` one at a time (all files of ``<dataset_dir>/<split>/``, in
  name order). The full PrecisionFDA training set is ~200k pileups × 130 kB ≈ 26 GB, too much
  for a list: preparation should stream. Skips and their reasons are added to ``result``."""
  module = sys.modules[__name__]
  _common.check_split(module, split)
  root = _common.resolve_dataset_dir(module, dataset_dir)
  c = Collector(f"precisionfda/{split}", on_error)
  if result is not None:
    c.result = result
  count = 0
  for path in list_files(root, split, module):
    try:
      for index, ex in iter_examples(path):
        record = None
        with c.guard():
          record = _record(ex, path, index, require_label, split)
        if record is not None:
          count += 1
          yield record
    except TFRecordError as e:  # the rest of this file cannot be framed
      c.error(ReaderError(path, None, None, str(e).removeprefix(f"{path}: ")))
  c.finish(count)


def read(
    dataset_dir, split: str, *, on_error: str = "raise", require_label: bool = True
) -> ReadResult:
  """All pileup records of ``split`` in a list (small sets; see :func:`iter_read` for large)."""
  result = ReadResult(records=[])
  result.records.extend(
      iter_read(dataset_dir, split, on_error=on_error, require_label=require_label, result=result)
  )
  return result
