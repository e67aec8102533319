"""The rater study's tables (SQLAlchemy 2 ORM) and the engine factory.

One study = its cases (indication + rendered images), the reports to judge (the reference findings
and one per model, each a `Report` with a `source`), its raters, and each rater's assignments
(case × kind, with the display order of the reports fixed at creation). Answers are immutable and
timestamped: one `Answer` per assignment (a unique constraint, so a double submit stores one), with
its ranks (side-by-side) or its error marks and omission counts (independent grading).

SQLite by default: one file in WAL mode with synchronous=FULL, so an answer whose response reached
the browser survives a SIGKILL of the server. PostgreSQL through the same layer with a URL such as
``postgresql+psycopg://user:password@host/dbname``.
"""

from __future__ import annotations

import datetime as dt
import os

import sqlalchemy as sa
from sqlalchemy import orm

DB_ENV = "MEDPALM_RATER_DB"
DEFAULT_DB = "sqlite:///rater.db"
REFERENCE = "reference"  # the `source` of the reference findings; no model may use this name
SBS, INDEPENDENT = "sbs", "independent"
ERROR_TYPES = ("finding", "location", "severity", "other")
# Table A.8 separates clinically significant errors, clinical errors, and all errors (these
# include non-clinical ones such as references to views or priors the rater cannot see).
SIGNIFICANCES = ("significant", "insignificant", "nonclinical")


def utcnow() -> dt.datetime:
  return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(orm.DeclarativeBase):
  pass


class Study(Base):
  __tablename__ = "study"
  id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
  name: orm.Mapped[str] = orm.mapped_column(sa.String(200), unique=True)
  seed: orm.Mapped[int]
  secret: orm.Mapped[str] = orm.mapped_column(sa.String(128))  # keys the CSRF tokens
  admin_token_hash: orm.Mapped[str] = orm.mapped_column(sa.String(64))
  config_json: orm.Mapped[str] = orm.mapped_column(sa.Text)
  created_at: orm.Mapped[dt.datetime] = orm.mapped_column(default=utcnow)


class Case(Base):
  __tablename__ = "case"
  __table_args__ = (sa.UniqueConstraint("study_id", "key"),)
  id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
  study_id: orm.Mapped[int] = orm.mapped_column(sa.ForeignKey("study.id"), index=True)
  key: orm.Mapped[str] = orm.mapped_column(sa.String(300))  # the cases file's "id"
  line: orm.Mapped[int]  # 0-based line in the cases file = the infer JSONL's "index"
  indication: orm.Mapped[str] = orm.mapped_column(sa.Text)
  pilot: orm.Mapped[bool] = orm.mapped_column(default=False)
  images: orm.Mapped[list[Image]] = orm.relationship(order_by="Image.position")


class Image(Base):
  __tablename__ = "image"
  id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
  case_id: orm.Mapped[int] = orm.mapped_column(sa.ForeignKey("case.id"), index=True)
  position: orm.Mapped[int]
  width: orm.Mapped[int]
  height: orm.Mapped[int]
  png: orm.Mapped[bytes] = orm.mapped_column(sa.LargeBinary, deferred=True)


class Report(Base):
  __tablename__ = "report"
  __table_args__ = (sa.UniqueConstraint("case_id", "source"),)
  id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
  case_id: orm.Mapped[int] = orm.mapped_column(sa.ForeignKey("case.id"), index=True)
  source: orm.Mapped[str] = orm.mapped_column(sa.String(200))  # REFERENCE or a model name
  text: orm.Mapped[str] = orm.mapped_column(sa.Text)


class Rater(Base):
  __tablename__ = "rater"
  __table_args__ = (sa.UniqueConstraint("study_id", "name"),)
  id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
  study_id: orm.Mapped[int] = orm.mapped_column(sa.ForeignKey("study.id"), index=True)
  name: orm.Mapped[str] = orm.mapped_column(sa.String(200))
  token_hash: orm.Mapped[str] = orm.mapped_column(sa.String(64))  # sha256 hex of the link token


class Assignment(Base):
  __tablename__ = "assignment"
  __table_args__ = (
      sa.UniqueConstraint("rater_id", "case_id", "kind"),
      sa.UniqueConstraint("rater_id", "position"),
  )
  id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
  rater_id: orm.Mapped[int] = orm.mapped_column(sa.ForeignKey("rater.id"), index=True)
  case_id: orm.Mapped[int] = orm.mapped_column(sa.ForeignKey("case.id"), index=True)
  kind: orm.Mapped[str] = orm.mapped_column(sa.String(20))  # SBS or INDEPENDENT
  position: orm.Mapped[int]  # place in the rater's queue (pilot cases first)
  order_json: orm.Mapped[str] = orm.mapped_column(sa.Text)  # report ids in display order
  case: orm.Mapped[Case] = orm.relationship()


class Answer(Base):
  __tablename__ = "answer"
  id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
  assignment_id: orm.Mapped[int] = orm.mapped_column(sa.ForeignKey("assignment.id"), unique=True)
  submitted_at: orm.Mapped[dt.datetime] = orm.mapped_column(default=utcnow)
  ranks: orm.Mapped[list[Rank]] = orm.relationship(cascade="all")
  grades: orm.Mapped[list[Grade]] = orm.relationship(cascade="all")
  errors: orm.Mapped[list[ErrorMark]] = orm.relationship(cascade="all")


class Rank(Base):
  """Side-by-side: `rank` 1 = best."""

  __tablename__ = "rank"
  __table_args__ = (sa.UniqueConstraint("answer_id", "report_id"),)
  id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
  answer_id: orm.Mapped[int] = orm.mapped_column(sa.ForeignKey("answer.id"), index=True)
  report_id: orm.Mapped[int] = orm.mapped_column(sa.ForeignKey("report.id"))
  rank: orm.Mapped[int]


class Grade(Base):
  """Independent grading of one model report: its omissions (errors are `ErrorMark` rows)."""

  __tablename__ = "grade"
  __table_args__ = (sa.UniqueConstraint("answer_id", "report_id"),)
  id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
  answer_id: orm.Mapped[int] = orm.mapped_column(sa.ForeignKey("answer.id"), index=True)
  report_id: orm.Mapped[int] = orm.mapped_column(sa.ForeignKey("report.id"))
  significant_omissions: orm.Mapped[int]
  other_omissions: orm.Mapped[int]


class ErrorMark(Base):
  __tablename__ = "error_mark"
  id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
  answer_id: orm.Mapped[int] = orm.mapped_column(sa.ForeignKey("answer.id"), index=True)
  report_id: orm.Mapped[int] = orm.mapped_column(sa.ForeignKey("report.id"))
  error_type: orm.Mapped[str] = orm.mapped_column(sa.String(20))  # one of ERROR_TYPES
  significance: orm.Mapped[str] = orm.mapped_column(sa.String(20))  # one of SIGNIFICANCES


def database_url(url: str | None = None) -> str:
  """`url`, else $MEDPALM_RATER_DB, else ``sqlite:///rater.db``; a bare path means SQLite."""
  url = url or os.environ.get(DB_ENV) or DEFAULT_DB
  return url if "://" in url else f"sqlite:///{url}"


def make_engine(url: str | None = None) -> sa.Engine:
  """An engine with the study tables created; SQLite in WAL mode, synchronous=FULL."""
  url = database_url(url)
  if url.startswith("sqlite"):
    engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _):
      cur = dbapi_conn.cursor()
      cur.execute("PRAGMA journal_mode=WAL")
      cur.execute("PRAGMA synchronous=FULL")
      cur.execute("PRAGMA foreign_keys=ON")
      cur.close()

  else:
    engine = sa.create_engine(url, pool_pre_ping=True)
  Base.metadata.create_all(engine)
  return engine


def sessionmaker(engine: sa.Engine) -> orm.sessionmaker[orm.Session]:
  return orm.sessionmaker(engine, expire_on_commit=False)


def get_study(session: orm.Session, name: str) -> Study:
  study = session.scalar(sa.select(Study).where(Study.name == name))
  if study is None:
    names = session.scalars(sa.select(Study.name)).all()
    raise ValueError(f"no study named {name!r} in the database (studies: {names})")
  return study
