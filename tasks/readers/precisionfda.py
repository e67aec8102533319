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

Regions (reader options): ``regions`` keeps only candidates inside any of the given regions,
``exclude_regions`` drops those inside any of them, ``sample_fraction`` keeps a deterministic
fraction (by a hash of the locus; the same candidates on every read). A region is ``chr20`` (the
whole contig) or ``chr20:3,000,001-9,444,417`` (1-based, both ends included, as DeepVariant's
``--regions``); a candidate is inside when its locus start lies in the region. ``regions="paper"``
selects the paper's examples: train = 4 % of the candidates outside chr20, chr21 and chr22
(197,038 examples of HG002 in the paper), test = chr20:3,000,001-9,444,417 (13,030). Contigs named
without ``chr`` (GRCh37: ``20``) match too. What the selection drops is counted in ``filtered``.
"""

from __future__ import annotations

import hashlib
import pathlib
import re
import sys
from typing import Iterator, Sequence

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


PAPER_REGIONS = {
    "train": {"exclude_regions": ("chr20", "chr21", "chr22"), "sample_fraction": 0.04},
    "test": {"regions": ("chr20:3,000,001-9,444,417",)},
}
_REGION = re.compile(r"^([^:\s]+)(?::([\d,]+)-([\d,]+))?$")
_LOCUS = re.compile(r"^([^:\s]+):(\d+)(?:-(\d+))?$")


def _contig(name: str) -> str:
  return name[3:] if name.lower().startswith("chr") else name


def parse_region(text: str) -> tuple[str, int, float]:
  """``chr20:3,000,001-9,444,417`` → ("20", 3000001, 9444417); ``chr20`` → ("20", 1, inf)."""
  m = _REGION.match(text.strip())
  if not m:
    raise ValueError(f"region {text!r}: expected CONTIG or CONTIG:START-END (1-based)")
  if m.group(2) is None:
    return _contig(m.group(1)), 1, float("inf")
  start, end = (int(m.group(i).replace(",", "")) for i in (2, 3))
  if start < 1 or end < start:
    raise ValueError(f"region {text!r}: need 1 <= START <= END")
  return _contig(m.group(1)), start, end


def parse_locus(text: str) -> tuple[str, int]:
  """A record's ``locus`` (``chr20:10001019-10001019``) → ("20", 10001019)."""
  m = _LOCUS.match(text.strip())
  if not m:
    raise ValueError(f"locus {text!r}: expected CONTIG:START-END")
  return _contig(m.group(1)), int(m.group(2))


def in_regions(locus: tuple[str, int], regions: Sequence[tuple[str, int, float]]) -> bool:
  contig, pos = locus
  return any(contig == c and start <= pos <= end for c, start, end in regions)


def sampled(locus_text: str, fraction: float) -> bool:
  """Whether a candidate is in the deterministic ``fraction`` sample (hash of its locus)."""
  digest = hashlib.sha1(locus_text.encode()).digest()
  return int.from_bytes(digest[:8], "little") < fraction * 2.0**64


def _region_list(value) -> list[tuple[str, int, float]]:
  return [parse_region(r) for r in ([value] if isinstance(value, str) else value or [])]


def region_filter(split: str, regions=None, exclude_regions=None, sample_fraction=None):
  """``fn(record) -> reason | None`` (None: keep) for the reader options above, or None when
  there is nothing to select."""
  if regions == "paper":
    paper = PAPER_REGIONS[split]
    regions = paper.get("regions")
    exclude_regions = exclude_regions or paper.get("exclude_regions")
    sample_fraction = paper.get("sample_fraction") if sample_fraction is None else sample_fraction
  keep, drop = _region_list(regions), _region_list(exclude_regions)
  if sample_fraction is not None and not 0 < sample_fraction <= 1:
    raise ValueError(f"sample_fraction must be in (0, 1], got {sample_fraction}")
  if not keep and not drop and sample_fraction is None:
    return None

  def reason(record: dict) -> str | None:
    locus = parse_locus(record["locus"])
    if keep and not in_regions(locus, keep):
      return "outside regions"
    if drop and in_regions(locus, drop):
      return "inside exclude_regions"
    if sample_fraction is not None and not sampled(record["locus"], sample_fraction):
      return f"not in the {sample_fraction:g} sample"
    return None

  return reason


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
    regions=None,
    exclude_regions=None,
    sample_fraction: float | None = None,
) -> Iterator[dict]:
  """Streams the records of ``split`` one at a time (all files of ``<dataset_dir>/<split>/``, in
  name order). The full PrecisionFDA training set is ~200k pileups × 130 kB ≈ 26 GB, too much
  for a list: preparation should stream. Skips and their reasons are added to ``result``."""
  module = sys.modules[__name__]
  _common.check_split(module, split)
  select = region_filter(split, regions, exclude_regions, sample_fraction)
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
          if select is not None:
            try:
              why = select(record)
            except ValueError as e:
              raise ReaderError(path, f"record {index}", "locus", str(e)) from None
            if why is not None:
              c.filter(why)
              record = None
        if record is not None:
          count += 1
          yield record
    except TFRecordError as e:  # the rest of this file cannot be framed
      c.error(ReaderError(path, None, None, str(e).removeprefix(f"{path}: ")))
  c.finish(count)


def read(
    dataset_dir,
    split: str,
    *,
    on_error: str = "raise",
    require_label: bool = True,
    regions=None,
    exclude_regions=None,
    sample_fraction: float | None = None,
) -> ReadResult:
  """All pileup records of ``split`` in a list (small sets; see :func:`iter_read` for large)."""
  result = ReadResult(records=[])
  result.records.extend(
      iter_read(
          dataset_dir,
          split,
          on_error=on_error,
          require_label=require_label,
          result=result,
          regions=regions,
          exclude_regions=exclude_regions,
          sample_fraction=sample_fraction,
      )
  )
  return result
