"""Study set-up: cases + model outputs + a config → a study in the database, and rater links.

The config is JSON (paths relative to the config file)::

  {"name": "cxr-2026", "cases": "cases.jsonl",
   "models": {"medpalm-12b": "infer/12b.jsonl", "medpalm-84b": "infer/84b.jsonl"},
   "raters": ["radiologist-1", "radiologist-2"],
   "pilot_cases": ["case-001"], "overlap_cases": 1, "cases_per_rater": null,
   "independent": "all", "seed": 0, "check_targets": true}

Cases: a JSONL of {"id", "image" (a path or a list of paths; DICOM, PNG or JPEG), "indication",
"findings" (the reference report)}. Model outputs: the `--run_mode=infer` JSONL files, whose lines
are {"index", "inputs", "prediction", "target", "score"}; "index" is the 0-based line of the case
in the cases file (infer runs over the same file or the same test split). Where "target" is set it
must equal the case's findings (whitespace aside), which catches misaligned files.

Assignment, as in the paper's study: every rater first does the pilot cases (calibration; not
analysed). Of the other cases, `overlap_cases` are ranked side by side by every rater (for
inter-rater agreement) and the rest by one rater each, balanced; `cases_per_rater` optionally
limits that rest to so many per rater. Independent grading covers every non-pilot case for every
rater (`"all"`, the paper's design) or only the rater's side-by-side cases (`"assigned"`). The order
of the reports is randomised per case, rater and page.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import pathlib
import random
import secrets
from collections.abc import Sequence

import sqlalchemy as sa

from medpalm.rater import db

MAX_IMAGES = 8


@dataclasses.dataclass(frozen=True)
class CaseRecord:
  key: str
  line: int
  images: tuple[str, ...]
  indication: str
  findings: str


@dataclasses.dataclass(frozen=True)
class StudyConfig:
  name: str
  cases: str
  models: dict[str, str]
  raters: tuple[str, ...]
  pilot_cases: tuple[str, ...] = ()
  overlap_cases: int = 0
  cases_per_rater: int | None = None
  independent: str = "all"
  seed: int = 0
  check_targets: bool = True


def _fail(where: str, message: str):
  raise ValueError(f"{where}: {message}")


def load_config(path: str | pathlib.Path) -> StudyConfig:
  """Reads and checks the study config; paths become absolute (relative to the config file)."""
  path = pathlib.Path(path)
  try:
    raw = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: cannot read the study config: {e}") from None
  if not isinstance(raw, dict):
    _fail(str(path), "the study config must be a JSON object")
  known = {f.name for f in dataclasses.fields(StudyConfig)}
  unknown = sorted(set(raw) - known)
  if unknown:
    _fail(str(path), f"unknown field(s) {unknown}; known: {sorted(known)}")
  for field in ("name", "cases", "models", "raters"):
    if field not in raw:
      _fail(str(path), f"missing field {field!r}")
  models = raw["models"]
  if not isinstance(models, dict) or not models:
    _fail(f"{path}: field 'models'", "must map model names to infer JSONL paths")
  for name in models:
    if not isinstance(name, str) or not name or name.lower() == db.REFERENCE:
      _fail(f"{path}: field 'models'", f"{name!r} is not a usable model name")
  raters = raw["raters"]
  if (
      not isinstance(raters, list)
      or not raters
      or len(set(raters)) != len(raters)
      or not all(isinstance(r, str) and r for r in raters)
  ):
    _fail(f"{path}: field 'raters'", "must be a non-empty list of distinct names")
  if raw.get("independent", "all") not in ("all", "assigned"):
    _fail(f"{path}: field 'independent'", "must be 'all' or 'assigned'")
  base = path.resolve().parent
  cfg = dict(raw)
  cfg["cases"] = str(base / raw["cases"])
  cfg["models"] = {m: str(base / p) for m, p in models.items()}
  cfg["raters"] = tuple(raters)
  cfg["pilot_cases"] = tuple(raw.get("pilot_cases", ()))
  for field in ("overlap_cases", "seed"):
    if not isinstance(cfg.get(field, 0), int) or cfg.get(field, 0) < 0:
      _fail(f"{path}: field {field!r}", "must be a non-negative integer")
  cpr = cfg.get("cases_per_rater")
  if cpr is not None and (not isinstance(cpr, int) or cpr < 1):
    _fail(f"{path}: field 'cases_per_rater'", "must be a positive integer or null")
  return StudyConfig(**cfg)


def _read_jsonl(path: str) -> list[tuple[int, dict]]:
  try:
    lines = pathlib.Path(path).read_text(encoding="utf-8").splitlines()
  except OSError as e:
    raise ValueError(f"{path}: cannot read: {e}") from None
  out = []
  for n, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{n}: not JSON: {e}") from None
    if not isinstance(record, dict):
      _fail(f"{path}:{n}", "a record must be a JSON object")
    out.append((n, record))
  return out


def load_cases(path: str) -> list[CaseRecord]:
  """The cases JSONL; each bad record raises ValueError naming the file, line and field."""
  cases, seen = [], set()
  base = pathlib.Path(path).resolve().parent
  for index, (n, rec) in enumerate(_read_jsonl(path)):
    where = f"{path}:{n}"
    for field in ("id", "image", "indication", "findings"):
      if field not in rec:
        _fail(where, f"missing field {field!r}")
    for field in ("id", "indication", "findings"):
      if not isinstance(rec[field], str):
        _fail(f"{where}: field {field!r}", "must be a string")
    if rec["id"] in seen:
      _fail(f"{where}: field 'id'", f"duplicate case id {rec['id']!r}")
    seen.add(rec["id"])
    images = rec["image"] if isinstance(rec["image"], list) else [rec["image"]]
    if not images or len(images) > MAX_IMAGES or not all(isinstance(i, str) for i in images):
      _fail(f"{where}: field 'image'", f"must be a path or a list of 1-{MAX_IMAGES} paths")
    images = tuple(str(base / i) for i in images)
    cases.append(CaseRecord(rec["id"], index, images, rec["indication"], rec["findings"]))
  if not cases:
    _fail(path, "holds no cases")
  return cases


def load_predictions(path: str, cases: Sequence[CaseRecord], check_targets: bool) -> dict[int, str]:
  """One model's infer JSONL → {case line: prediction}."""
  out = {}
  for n, rec in _read_jsonl(path):
    where = f"{path}:{n}"
    index = rec.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(cases):
      _fail(f"{where}: field 'index'", f"must be a case line in 0..{len(cases) - 1}, got {index!r}")
    if index in out:
      _fail(f"{where}: field 'index'", f"duplicate index {index}")
    if not isinstance(rec.get("prediction"), str):
      _fail(f"{where}: field 'prediction'", "missing or not a string")
    target = rec.get("target")
    if check_targets and target is not None:
      if " ".join(str(target).split()) != " ".join(cases[index].findings.split()):
        _fail(
            f"{where}: field 'target'",
            f"differs from the findings of case {cases[index].key!r}: the file does not belong to "
            "this cases file (or set check_targets to false)",
        )
    out[index] = rec["prediction"]
  return out


def render_png(path: str, where: str) -> tuple[bytes, int, int]:
  """Decodes one image (DICOM, PNG, JPEG, ...) at native size → (PNG bytes, width, height)."""
  from PIL import Image as PILImage

  from tasks import images as images_lib

  if not pathlib.Path(path).is_file():
    _fail(f"{where}: field 'image'", f"image file {path} does not exist")
  try:
    pixels = images_lib.decode_image(path)
  except ValueError as e:
    raise ValueError(f"{where}: field 'image': {e}") from None
  if (pixels[..., :1] == pixels).all():  # grey stored as RGB: a third of the bytes as "L"
    pixels = pixels[..., 0]
  buf = io.BytesIO()
  PILImage.fromarray(pixels).save(buf, format="PNG", optimize=False)
  return buf.getvalue(), int(pixels.shape[1]), int(pixels.shape[0])


def _sha256(token: str) -> str:
  return hashlib.sha256(token.encode()).hexdigest()


def _shuffled(items: Sequence, *key) -> list:
  """A shuffle that depends only on `key` (seed, rater, case, page): reproducible studies."""
  seed = int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:8], "big")
  out = list(items)
  random.Random(seed).shuffle(out)
  return out


def plan(cfg: StudyConfig, cases: Sequence[CaseRecord]) -> dict[str, list[tuple[str, str]]]:
  """Each rater's queue: [(case key, kind)], pilot cases first, then main cases shuffled."""
  keys = [c.key for c in cases]
  for key in cfg.pilot_cases:
    if key not in keys:
      _fail(f"{cfg.cases}", f"pilot case {key!r} is not in the cases file")
  main = [k for k in keys if k not in cfg.pilot_cases]
  main = _shuffled(main, cfg.seed, "main")
  if cfg.overlap_cases > len(main):
    _fail("config field 'overlap_cases'", f"{cfg.overlap_cases} > {len(main)} non-pilot cases")
  overlap, rest = main[: cfg.overlap_cases], main[cfg.overlap_cases :]
  n_raters = len(cfg.raters)
  if cfg.cases_per_rater is not None:
    need = cfg.cases_per_rater * n_raters
    if need > len(rest):
      _fail(
          "config field 'cases_per_rater'",
          f"{cfg.cases_per_rater} × {n_raters} raters > {len(rest)} cases left after overlap",
      )
    rest = rest[:need]
  sbs = {r: list(overlap) for r in cfg.raters}
  for i, key in enumerate(rest):
    sbs[cfg.raters[i % n_raters]].append(key)
  used = overlap + rest
  queues = {}
  for rater in cfg.raters:
    indep = set(used) if cfg.independent == "all" else set(sbs[rater])
    mine = [k for k in used if k in indep or k in sbs[rater]]
    queue = []
    for key in list(cfg.pilot_cases) + _shuffled(mine, cfg.seed, rater, "queue"):
      if key in cfg.pilot_cases or key in sbs[rater]:
        queue.append((key, db.SBS))
      if key in cfg.pilot_cases or key in indep:
        queue.append((key, db.INDEPENDENT))
    queues[rater] = queue
  return queues


def create_study(engine: sa.Engine, cfg: StudyConfig) -> dict[str, str]:
  """Validates every input, then writes the study in one transaction.

  Returns {"admin": admin token, rater name: rater token}; only their hashes are stored.
  """
  cases = load_cases(cfg.cases)
  predictions = {m: load_predictions(p, cases, cfg.check_targets) for m, p in cfg.models.items()}
  queues = plan(cfg, cases)
  used = {key for queue in queues.values() for key, _ in queue}
  by_key = {c.key: c for c in cases}
  for model, preds in predictions.items():
    missing = sorted(by_key[k].line for k in used if by_key[k].line not in preds)
    if missing:
      _fail(cfg.models[model], f"no prediction for case lines {missing[:10]} (model {model!r})")
  rendered = {}
  for key in sorted(used):
    case = by_key[key]
    rendered[key] = [
        render_png(p, f"{cfg.cases}:{case.line + 1} (case {key!r})") for p in case.images
    ]
  tokens = {"admin": secrets.token_urlsafe(24)}
  tokens.update({r: secrets.token_urlsafe(24) for r in cfg.raters})
  with db.sessionmaker(engine).begin() as session:
    if session.scalar(sa.select(db.Study).where(db.Study.name == cfg.name)) is not None:
      raise ValueError(f"a study named {cfg.name!r} already exists in this database")
    study = db.Study(
        name=cfg.name,
        seed=cfg.seed,
        secret=secrets.token_hex(32),
        admin_token_hash=_sha256(tokens["admin"]),
        config_json=json.dumps(dataclasses.asdict(cfg)),
    )
    session.add(study)
    session.flush()
    case_rows, reports = {}, {}
    for key in sorted(used, key=lambda k: by_key[k].line):
      rec = by_key[key]
      row = db.Case(
          study_id=study.id,
          key=key,
          line=rec.line,
          indication=rec.indication,
          pilot=key in cfg.pilot_cases,
      )
      row.images = [
          db.Image(position=i, png=png, width=w, height=h)
          for i, (png, w, h) in enumerate(rendered[key])
      ]
      session.add(row)
      session.flush()
      case_rows[key] = row
      texts = {db.REFERENCE: rec.findings}
      texts.update({m: predictions[m][rec.line] for m in cfg.models})
      reports[key] = []
      for source, text in texts.items():
        report = db.Report(case_id=row.id, source=source, text=text)
        session.add(report)
        reports[key].append(report)
    session.flush()
    for rater_name in cfg.raters:
      rater = db.Rater(study_id=study.id, name=rater_name, token_hash=_sha256(tokens[rater_name]))
      session.add(rater)
      session.flush()
      for position, (key, kind) in enumerate(queues[rater_name]):
        shown = [r for r in reports[key] if kind == db.SBS or r.source != db.REFERENCE]
        order = [r.id for r in _shuffled(shown, cfg.seed, rater_name, key, kind)]
        session.add(
            db.Assignment(
                rater_id=rater.id,
                case_id=case_rows[key].id,
                kind=kind,
                position=position,
                order_json=json.dumps(order),
            )
        )
  return tokens
