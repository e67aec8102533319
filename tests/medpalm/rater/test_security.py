"""Refusals: each gets its documented status, and nothing is written."""

import html
import json
import re

import pytest
import requests
import sqlalchemy as sa

from medpalm.rater import db, study as study_lib
from tests.support import rater as R

pytestmark = pytest.mark.slow


def _only_mine(url, mine, theirs, tokens):
  """A page of rater `mine` that rater `theirs` does not have (URL without the token prefix)."""
  a = {u.split("/", 3)[3] for u in R.queue_urls(url, mine, tokens[mine])}
  b = {u.split("/", 3)[3] for u in R.queue_urls(url, theirs, tokens[theirs])}
  return sorted(a - b)[0]


def test_refusals_write_nothing(study):
  url, tokens, tmp = study
  one, two = tokens["rater-one"], tokens["rater-two"]
  with R.serving(url, tmp / "server.log") as server:
    s = requests.Session()
    first = R.queue_urls(url, "rater-one", one)[0]
    assert first.endswith("/sbs")
    page = s.get(server.url(first))
    assert page.status_code == 200
    good = R.answer_data(page.text, first)

    def refused(status, path, data=None, session=s, text=None):
      r = (
          session.post(server.url(path), data=data, allow_redirects=False)
          if data is not None
          else session.get(server.url(path), allow_redirects=False)
      )
      assert r.status_code == status, (path, data, r.status_code, r.text[:400])
      if text:
        assert text in html.unescape(r.text), r.text
      assert R.answer_count(url) == 0

    # Unknown token (a forged or mistyped link): 403 everywhere.
    bad = "x" * len(one)
    case_path = first.split("/", 3)[3]
    refused(403, f"/r/{bad}", text="not valid")
    refused(403, f"/r/{bad}/{case_path}", text="not valid")
    refused(403, f"/r/{bad}/{case_path}", data=good, text="not valid")
    # Another rater's token on a page only rater one has: 404, reading or writing.
    theirs = _only_mine(url, "rater-one", "rater-two", tokens)
    refused(404, f"/r/{two}/{theirs}", text="not among your assignments")
    refused(404, f"/r/{two}/{theirs}", data=good, text="not among your assignments")
    # A case outside the assignment, an unknown kind, an image of someone else's case.
    refused(404, f"/r/{one}/case/999/sbs", text="not among your assignments")
    refused(404, f"/r/{one}/case/999/sbs", data=good)
    refused(404, f"/r/{one}/{case_path.rsplit('/', 1)[0]}/summary")
    engine = db.make_engine(url)
    with engine.connect() as conn:
      theirs_case = int(theirs.split("/")[1])
      image_id = conn.execute(
          sa.select(db.Image.id).where(db.Image.case_id == theirs_case)
      ).scalar()
    assert s.get(server.url(f"/r/{one}/image/{image_id}.png")).status_code == 200
    refused(404, f"/r/{two}/image/{image_id}.png")
    # Tampered rank lists: duplicates, missing ids, unknown ids, two lists, extra fields.
    letters = good["ranking"].split(",")
    for ranking in (
        [letters[0]] + letters[:-1],
        letters[:-1],
        letters[:-1] + ["Z"],
        letters + letters[:1],
        ["", *letters[1:]],
    ):
      refused(422, first, data={**good, "ranking": ",".join(ranking)}, text="exactly once")
    refused(422, first, data=[("csrf", good["csrf"]), ("ranking", good["ranking"])] * 2)
    refused(422, first, data={**good, "source": "x"}, text="Unexpected form field")
    refused(422, first, data={"csrf": good["csrf"]}, text="exactly once")
    # CSRF: missing, wrong, or without the cookie that it was derived from.
    refused(403, first, data={**good, "csrf": ""}, text="security check")
    refused(403, first, data={**good, "csrf": "0" * 64}, text="security check")
    refused(403, first, data=good, session=requests.Session(), text="security check")
    # Independent page: unknown error type / significance, bad omission counts.
    ind = first.replace("/sbs", "/independent")
    page = s.get(server.url(ind))
    assert page.status_code == 200
    good_ind = R.answer_data(page.text, ind)
    for extra in (
        {"err1_type": "spelling", "err1_sig": "significant"},
        {"err1_type": "finding", "err1_sig": "fatal"},
        {"err1_type": "finding"},
        {"om1_sig": "-1"},
        {"om2_other": "1e3"},
        {"om3_sig": "51"},
        {"err9_type": "finding", "err9_sig": "significant"},
    ):
      refused(422, ind, data={**good_ind, **extra})
    # The admin export needs the admin token, not a rater's.
    assert requests.get(server.url("/admin/export")).status_code == 401
    for token in (one, "wrong"):
      headers = {"Authorization": f"Bearer {token}"}
      assert requests.get(server.url("/admin/export"), headers=headers).status_code == 401
    # After all that, the good answers are accepted (the refusals were not the form's fault).
    assert s.post(server.url(first), data=good, allow_redirects=False).status_code == 303
    assert s.post(server.url(ind), data=good_ind, allow_redirects=False).status_code == 303
    assert R.answer_count(url) == 2
    export = requests.get(
        server.url("/admin/export"), headers={"Authorization": f"Bearer {tokens['admin']}"}
    )
    assert export.status_code == 200
    records = export.json()
    assert [r["kind"] for r in records] == ["sbs", "independent"]
    assert sorted(records[0]["ranking"]) == sorted([db.REFERENCE, *R.MODELS])
    assert all(g["other_omissions"] == 1 for g in records[1]["grades"].values())


def test_report_html_is_shown_as_text(study):
  url, tokens, tmp = study
  engine = db.make_engine(url)
  with engine.connect() as conn:
    case_id = conn.execute(
        sa.select(db.Case.id).where(db.Case.key == f"study-{R.XSS_CASE:03d}")
    ).scalar_one()
  pages = [
      (name, u)
      for name in R.RATERS
      for u in R.queue_urls(url, name, tokens[name])
      if f"/case/{case_id}/" in u
  ]
  assert {u.rsplit("/", 1)[1] for _, u in pages} == {"sbs", "independent"}
  with R.serving(url, tmp / "server.log") as server:
    for _, u in pages:
      r = requests.get(server.url(u))
      assert r.status_code == 200
      assert "<script>window.__pwned" not in r.text and 'onerror="' not in r.text
      assert html.escape(R.XSS, quote=False) in r.text.replace("&#34;", '"').replace("&#39;", "'")
      # Only this server's script runs: no inline script, no other origin.
      assert re.findall(r"<script[^>]*>", r.text) == ['<script src="/static/rater.js" defer>']
      assert "script-src 'self'" in r.headers["Content-Security-Policy"]
  assert R.answer_count(url) == 0


def test_missing_or_bad_image_refuses_the_study(tmp_path):
  config = R.write_study(tmp_path / "s")
  (tmp_path / "s" / "img" / "case4.png").unlink()
  url = f"sqlite:///{tmp_path / 'study.db'}"
  engine = db.make_engine(url)
  with pytest.raises(ValueError) as e:
    study_lib.create_study(engine, study_lib.load_config(config))
  msg = str(e.value)
  assert "cases.jsonl:5" in msg and "field 'image'" in msg and "case4.png" in msg
  assert "does not exist" in msg
  (tmp_path / "s" / "img" / "case4.png").write_bytes(b"not an image")
  with pytest.raises(ValueError, match=r"cases.jsonl:5 \(case 'study-004'\): field 'image'"):
    study_lib.create_study(engine, study_lib.load_config(config))
  with engine.connect() as conn:  # nothing written: no study, no case, no rater
    for table in (db.Study, db.Case, db.Rater, db.Assignment):
      assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one() == 0


def test_image_gone_from_the_database_is_409(study):
  url, tokens, tmp = study
  one = tokens["rater-one"]
  first = R.queue_urls(url, "rater-one", one)[0]
  case_id = int(first.split("/")[4])
  engine = db.make_engine(url)
  with engine.begin() as conn:
    conn.execute(sa.delete(db.Image).where(db.Image.case_id == case_id))
  engine.dispose()
  with R.serving(url, tmp / "server.log") as server:
    s = requests.Session()
    r = s.get(server.url(first), allow_redirects=False)
    assert r.status_code == 409 and "no image" in r.text
    # A valid form token of rater one (from a page of another case) does not get an answer in.
    other = next(u for u in R.queue_urls(url, "rater-one", one) if f"/case/{case_id}/" not in u)
    page = s.get(server.url(other))
    assert page.status_code == 200
    data = R.answer_data(page.text, other)
    r = s.post(server.url(first), data={"csrf": data["csrf"], "ranking": "A,B,C,D"})
    assert r.status_code == 409 and "no image" in r.text
    assert R.answer_count(url) == 0


def test_bad_inputs_name_file_line_and_field(tmp_path):
  config = R.write_study(tmp_path)
  cases = (tmp_path / "cases.jsonl").read_text().splitlines()
  rec = json.loads(cases[2])
  del rec["indication"]
  cases[2] = json.dumps(rec)
  (tmp_path / "cases.jsonl").write_text("\n".join(cases) + "\n")
  with pytest.raises(ValueError, match=r"cases.jsonl:3: missing field 'indication'"):
    study_lib.load_cases(str(tmp_path / "cases.jsonl"))
  config = R.write_study(tmp_path)
  cfg = study_lib.load_config(config)
  infer = next(iter(cfg.models.values()))
  rows = open(infer).read().splitlines()
  row = json.loads(rows[4])
  row["target"] = "a different report"
  rows[4] = json.dumps(row)
  open(infer, "w").write("\n".join(rows) + "\n")
  with pytest.raises(ValueError, match=r"infer_kestrel.jsonl:5: field 'target'"):
    study_lib.load_predictions(infer, study_lib.load_cases(cfg.cases), True)
