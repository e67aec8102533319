"""Shared machinery of the readers: results, errors, dataset-root resolution, file iteration.

Kept separate from ``tasks/readers/__init__.py`` so that dataset modules can import it without
importing the package's registry.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import gzip
import importlib
import io
import json
import logging
import os
import pathlib
import zlib
from typing import Any, Iterator

DATA_DIR_ENV = "MEDPALM_DATA_DIR"
ON_ERROR_CHOICES = ("raise", "skip")

log = logging.getLogger("tasks.readers")


class ReaderError(ValueError):
  """An invalid record or file. The message names file, line/record and field."""

  def __init__(self, file, where: str | None, field: str | None, problem: str):
    self.file = str(file)
    self.where = where
    self.field = field
    self.problem = problem
    loc = self.file + (f":{where}" if where else "")
    super().__init__(f"{loc}: " + (f"field {field!r}: " if field else "") + problem)


class MissingDatasetError(FileNotFoundError):
  """A dataset directory or one of its official files is not there."""


@dataclasses.dataclass
class ReadResult:
  """What a reader returns.

  records: the valid, selected records, in file order (see tasks/readers/__init__.py for schemas).
  skipped: number of invalid records skipped under ``on_error="skip"``.
  skip_reasons: one message per skipped record (file:line: field: problem).
  filtered: count per reason of records the paper's selection rules drop (not errors).
  """

  records: list[dict]
  skipped: int = 0
  skip_reasons: list[str] = dataclasses.field(default_factory=list)
  filtered: dict[str, int] = dataclasses.field(default_factory=dict)

  def __len__(self) -> int:
    return len(self.records)

  def __iter__(self):
    return iter(self.records)


class Collector:
  """Accumulates records and applies the ``on_error`` policy.

  Usage: ``with c.guard(): ...build record...; c.add(record)`` — a ReaderError raised inside the
  guard is re-raised (``raise``) or counted (``skip``).
  """

  def __init__(self, name: str, on_error: str):
    if on_error not in ON_ERROR_CHOICES:
      raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
    self.name = name
    self.on_error = on_error
    self.result = ReadResult(records=[])

  def add(self, record: dict) -> None:
    self.result.records.append(record)

  def filter(self, reason: str) -> None:
    self.result.filtered[reason] = self.result.filtered.get(reason, 0) + 1

  def error(self, err: ReaderError) -> None:
    if self.on_error == "raise":
      raise err
    self.result.skipped += 1
    self.result.skip_reasons.append(str(err))

  def guard(self):
    return _Guard(self)

  def finish(self, count: int | None = None) -> ReadResult:
    """Logs the counts (``count``: records streamed, when they were not collected)."""
    log.info(
        "%s: %d record(s); filtered %s",
        self.name,
        len(self.result.records) if count is None else count,
        self.result.filtered or "none",
    )
    if self.result.skipped:
      log.warning(
          "%s: skipped %d invalid record(s); first: %s",
          self.name,
          self.result.skipped,
          self.result.skip_reasons[0],
      )
    return self.result


class _Guard:

  def __init__(self, collector: Collector):
    self.collector = collector

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, tb):
    if exc_type is None or not issubclass(exc_type, ReaderError):
      return False
    if self.collector.on_error == "raise":
      return False  # the original ReaderError propagates
    self.collector.error(exc)
    return True


def resolve_dataset_dir(module, dataset_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """The directory of one dataset's official release.

  ``module`` is a reader module or its name ("medqa", ...). ``dataset_dir`` (a per-dataset
  override, e.g. a gin binding) wins; otherwise ``$MEDPALM_DATA_DIR/<module.DATASET_DIR>``.
  Raises MissingDatasetError, quoting ``module.LAYOUT``, when the directory is absent.
  """
  if isinstance(module, str):
    module = importlib.import_module(f"tasks.readers.{module}")
  if dataset_dir is None:
    root = os.environ.get(DATA_DIR_ENV)
    if not root:
      raise MissingDatasetError(
          f"no directory given for dataset {module.DATASET_DIR!r} and ${DATA_DIR_ENV} is not "
          f"set; point {DATA_DIR_ENV} at the root holding {module.DATASET_DIR}/. "
          f"{module.LAYOUT}"
      )
    path = pathlib.Path(root) / module.DATASET_DIR
  else:
    path = pathlib.Path(dataset_dir)
  if not path.is_dir():
    raise MissingDatasetError(
        f"expected dataset directory {path} ({module.DATASET_DIR}); {module.LAYOUT}"
    )
  return path.resolve()


def check_split(module, split: str) -> None:
  if split not in module.SPLITS:
    raise ValueError(
        f"{module.DATASET_DIR}: unknown split {split!r}; "
        f"this dataset has {', '.join(module.SPLITS)}"
    )


def require_file(path: pathlib.Path, module) -> pathlib.Path:
  """``path`` if it is a file, else MissingDatasetError naming it and the official layout."""
  if not path.is_file():
    raise MissingDatasetError(f"missing file {path}; {module.LAYOUT}")
  return path


def find_file(directory: pathlib.Path, names: list[str], module) -> pathlib.Path:
  """The first of ``names`` (relative to ``directory``) that exists, else MissingDatasetError."""
  for name in names:
    if (directory / name).is_file():
      return directory / name
  raise MissingDatasetError(
      f"missing file {directory / names[0]}"
      + (f" (also looked for {', '.join(names[1:])})" if len(names) > 1 else "")
      + f"; {module.LAYOUT}"
  )


@contextlib.contextmanager
def file_errors(path: pathlib.Path, where: str | None = None):
  """Turns decoding failures of a whole file (bad gzip, not UTF-8, broken CSV quoting) into a
  ReaderError naming the file."""
  try:
    yield
  except (UnicodeDecodeError, EOFError, gzip.BadGzipFile, zlib.error, csv.Error) as e:
    raise ReaderError(path, where, None, f"cannot read file: {type(e).__name__}: {e}") from None


def open_text(path: pathlib.Path) -> io.TextIOBase:
  """Text handle on ``path``, gunzipping ``*.gz``; UTF-8 (BOM tolerated)."""
  if path.suffix == ".gz":
    return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
  return open(path, encoding="utf-8-sig", newline="")


def load_json(path: pathlib.Path) -> Any:
  """A whole JSON document; a syntax error becomes a ReaderError with file:line:column."""
  with file_errors(path), open_text(path) as f:
    text = f.read()
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise ReaderError(path, f"{e.lineno}:{e.colno}", None, f"invalid JSON: {e.msg}") from None


def iter_jsonl(path: pathlib.Path, collector: Collector) -> Iterator[tuple[int, dict]]:
  """(line number, object) of each non-blank line; bad lines go through the collector."""
  with file_errors(path), open_text(path) as f:
    for lineno, line in enumerate(f, start=1):
      if not line.strip():
        continue
      with collector.guard():
        try:
          obj = json.loads(line)
        except json.JSONDecodeError as e:
          raise ReaderError(
              path, str(lineno), None, f"malformed JSON line: {e.msg} (column {e.colno})"
          ) from None
        if not isinstance(obj, dict):
          raise ReaderError(
              path, str(lineno), None, f"expected a JSON object, got {type(obj).__name__}"
          )
        yield lineno, obj


def iter_csv(path: pathlib.Path, required: list[str]) -> Iterator[tuple[int, dict[str, str]]]:
  """(line number, row) of a CSV file with a header; the header must hold ``required``.

  Line numbers are those of the row's first physical line (quoted cells may span lines).
  """
  # MIMIC-III note TEXT cells can exceed csv's default 128 KiB cell limit.
  csv.field_size_limit(max(csv.field_size_limit(), 1 << 24))
  with file_errors(path), open_text(path) as f:
    reader = csv.DictReader(f)
    header = reader.fieldnames or []
    missing = [c for c in required if c not in header]
    if missing:
      raise ReaderError(path, "1", missing[0], f"missing column(s) {missing}; header is {header}")
    start = reader.line_num + 1
    for row in reader:
      yield start, row
      start = reader.line_num + 1


def get_str(obj: dict, key: str, path, where: str, *, allow_empty: bool = False) -> str:
  """``obj[key]`` as a stripped str; a missing/non-str/empty value is a ReaderError."""
  if key not in obj or obj[key] is None:
    raise ReaderError(path, where, key, "missing")
  value = obj[key]
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    value = str(value)
  if not isinstance(value, str):
    raise ReaderError(path, where, key, f"expected a string, got {type(value).__name__}")
  value = value.strip()
  if not value and not allow_empty:
    raise ReaderError(path, where, key, "empty")
  return value


def image_path(directory: pathlib.Path, rel: str, path, where: str, field: str) -> str:
  """Absolute path of an image referenced by a record; a missing image is a ReaderError."""
  full = directory / rel
  if not full.is_file():
    raise ReaderError(path, where, field, f"image file not found: {full}")
  return str(full)
