"""Rater-study test helpers: a small synthetic study on disk, and the real server as a process.

The study: 6 cases (case 0 a DICOM, case 1 two PNGs, the rest one PNG each; each image a dark
field with a bright square at a case-specific place), 3 models whose names must never reach a
rater's page, 2 raters, 1 pilot case, 1 case ranked by both raters. One model's report for case 3
carries HTML and JavaScript, which must be shown as text.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import requests

REPO = pathlib.Path(__file__).resolve().parents[2]
MODELS = ("modelname-kestrel-12b", "modelname-osprey-84b", "modelname-heron-562b")
# Strings that would unblind a page: the model names, their distinctive parts, the files they came
# from, and the reference's source label.
BLINDING_SECRETS = MODELS + ("kestrel", "osprey", "heron", "infer_", "reference")
RATERS = ("rater-one", "rater-two")
STUDY = "test-study"
N_CASES = 6
XSS = '<script>window.__pwned = 1;</script><img src="x" onerror="window.__pwned = 2">'
XSS_CASE, XSS_MODEL = 3, 1


def case_image(i: int, h: int = 96, w: int = 80) -> np.ndarray:
  """``uint8[h, w]``: dark noise-free field, one bright square placed by the case index."""
  img = np.full((h, w), 30, np.uint8)
  img[:, : w // 2] = 70  # a left/right contrast so a wrongly scaled render does not match
  top, left = 10 + 12 * (i % 5), 8 + 9 * (i % 6)
  img[top : top + 20, left : left + 20] = 230
  return img


def findings_text(i: int, source: int) -> str:
  """Distinct text per (case, source) that says nothing about the source."""
  import random

  words = [
      "Heart size normal.",
      "No effusion.",
      "Mild atelectasis.",
      "No pneumothorax.",
      "Clear lungs.",
      "Stable mediastinum.",
      "Small nodule.",
      "Trace fluid.",
  ]
  r = random.Random(f"{i}/{source}")
  return " ".join(r.sample(words, 4)) + f" Seen {r.randint(100, 999)}."


def write_study(root: pathlib.Path, *, independent: str = "assigned") -> pathlib.Path:
  """Writes cases, images, infer outputs and the config under `root`; returns the config path."""
  from PIL import Image

  from tasks import demo_data

  root.mkdir(parents=True, exist_ok=True)
  cases = []
  for i in range(N_CASES):
    if i == 0:
      demo_data.write_dicom(
          root / "img" / "case0.dcm",
          case_image(0).astype(np.uint16) * 16,
          uid_seed="rater0",
          modality="CR",
      )
      image = "img/case0.dcm"
    elif i == 1:
      image = []
      for j in range(2):
        Image.fromarray(case_image(10 + j)).save(root / "img" / f"case1_{j}.png")
        image.append(f"img/case1_{j}.png")
    else:
      (root / "img").mkdir(exist_ok=True)
      Image.fromarray(case_image(i)).save(root / "img" / f"case{i}.png")
      image = f"img/case{i}.png"
    cases.append(
        {
            "id": f"study-{i:03d}",
            "image": image,
            "indication": f"Cough for {i + 2} days & fever <38C>.",
            "findings": findings_text(i, 0),
        }
    )
  (root / "cases.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cases))
  models = {}
  for m, model in enumerate(MODELS):
    rows = []
    for i in range(N_CASES):
      text = findings_text(i, m + 1)
      if (i, m) == (XSS_CASE, XSS_MODEL):
        text = XSS + " " + text
      rows.append(
          {
              "index": i,
              "inputs": "prompt",
              "prediction": text,
              "target": findings_text(i, 0),
              "score": -1.5,
          }
      )
    path = root / f"infer_{model.split('-')[1]}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    models[model] = path.name
  config = {
      "name": STUDY,
      "cases": "cases.jsonl",
      "models": models,
      "raters": list(RATERS),
      "pilot_cases": ["study-000"],
      "overlap_cases": 1,
      "independent": independent,
      "seed": 7,
  }
  path = root / "study.json"
  path.write_text(json.dumps(config, indent=1))
  return path


def create(root: pathlib.Path, **kwargs) -> tuple[str, dict[str, str]]:
  """A fresh study in `root`/study.db; returns (database URL, tokens)."""
  from medpalm.rater import db, study

  cfg = study.load_config(write_study(root, **kwargs))
  url = f"sqlite:///{root / 'study.db'}"
  engine = db.make_engine(url)
  tokens = study.create_study(engine, cfg)
  engine.dispose()  # the last connection's close folds the WAL into the file: copyable
  return url, tokens


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Server:
  """`python -m medpalm.rater serve` as a child process on a free local port."""

  def __init__(self, db_url: str, log: pathlib.Path):
    self.db_url, self.log = db_url, log
    self.port = free_port()
    self.base = f"http://127.0.0.1:{self.port}"
    self.proc = None

  def start(self, timeout: float = 180.0) -> "Server":
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [
        sys.executable,
        "-m",
        "medpalm.rater",
        "--db",
        self.db_url,
        "serve",
        "--study",
        STUDY,
        "--port",
        str(self.port),
        "--log_level",
        "warning",
    ]
    self._log = open(self.log, "ab")
    self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self._log, stderr=self._log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      if self.proc.poll() is not None:
        raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log.read_text()}")
      try:
        if requests.get(self.base + "/healthz", timeout=1).text == "ok":
          return self
      except requests.ConnectionError:
        time.sleep(0.1)
    raise RuntimeError(f"server did not answer within {timeout} s: {self.log.read_text()}")

  def kill(self, sig=signal.SIGKILL) -> None:
    if self.proc and self.proc.poll() is None:
      self.proc.send_signal(sig)
      self.proc.wait(timeout=30)
    if self.proc:
      self._log.close()

  def url(self, path: str) -> str:
    return self.base + path


@contextlib.contextmanager
def serving(db_url: str, log: pathlib.Path):
  server = Server(db_url, log).start()
  try:
    yield server
  finally:
    server.kill(signal.SIGTERM)


def csrf_of(html: str) -> str:
  m = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)
  assert m, "page has no CSRF field"
  return m.group(1)


def letters_of(html: str) -> list[str]:
  return re.findall(r'data-item="([A-Z])"', html)


def copy_study(template: pathlib.Path, root: pathlib.Path) -> str:
  """A private copy of a created study database; returns its URL."""
  import shutil

  root.mkdir(parents=True, exist_ok=True)
  shutil.copy(template, root / "study.db")
  return f"sqlite:///{root / 'study.db'}"


def queue_urls(db_url: str, rater: str, token: str) -> list[str]:
  """The rater's pages in queue order, as the server names them."""
  import sqlalchemy as sa

  from medpalm.rater import db

  engine = db.make_engine(db_url)
  with db.sessionmaker(engine)() as s:
    rows = s.execute(
        sa.select(db.Assignment.case_id, db.Assignment.kind)
        .join(db.Rater, db.Assignment.rater_id == db.Rater.id)
        .where(db.Rater.name == rater)
        .order_by(db.Assignment.position)
    ).all()
  engine.dispose()
  return [f"/r/{token}/case/{c}/{k}" for c, k in rows]


def answered_urls(db_url: str, rater: str, token: str) -> set[str]:
  import sqlalchemy as sa

  from medpalm.rater import db

  engine = db.make_engine(db_url)
  with db.sessionmaker(engine)() as s:
    rows = s.execute(
        sa.select(db.Assignment.case_id, db.Assignment.kind)
        .join(db.Rater, db.Assignment.rater_id == db.Rater.id)
        .join(db.Answer, db.Answer.assignment_id == db.Assignment.id)
        .where(db.Rater.name == rater)
    ).all()
  engine.dispose()
  return {f"/r/{token}/case/{c}/{k}" for c, k in rows}


def answer_count(db_url: str) -> int:
  import sqlalchemy as sa

  from medpalm.rater import db

  engine = db.make_engine(db_url)
  with engine.connect() as conn:
    n = conn.execute(sa.select(sa.func.count()).select_from(db.Answer)).scalar_one()
  engine.dispose()
  return n


def complete_page(session: requests.Session, server: Server, url: str) -> requests.Response:
  """Fetches a page and submits a valid answer for it (ranking as shown; no errors)."""
  page = session.get(server.url(url), allow_redirects=False)
  assert page.status_code == 200, (url, page.status_code, page.text[:300])
  return session.post(server.url(url), data=answer_data(page.text, url), allow_redirects=False)


def answer_data(html: str, url: str) -> dict[str, str]:
  """A valid answer to the page: the ranking as shown, or one omission per report."""
  data = {"csrf": csrf_of(html)}
  if url.endswith("/sbs"):
    data["ranking"] = ",".join(letters_of(html))
  else:
    n = len(re.findall(r'class="report" data-report=', html))
    for k in range(1, n + 1):
      data[f"om{k}_sig"], data[f"om{k}_other"] = "0", "1"
  return data
