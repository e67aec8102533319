"""The raters' web app (FastAPI on Starlette, Jinja2 templates; served by uvicorn).

Routes and their documented responses:

  GET  /r/{token}                       303 to the rater's next unanswered page (resume), or /done
  GET  /r/{token}/case/{case}/{kind}    the side-by-side (kind "sbs") or independent page
  POST /r/{token}/case/{case}/{kind}    stores the answer, 303 to the next page; a page already
                                        answered stores nothing and also answers 303 (double submit)
  GET  /r/{token}/image/{image}.png     a case image (PNG rendered at study creation)
  GET  /r/{token}/done                  the end page
  GET  /admin/export                    every answer, unblinded (JSON); header
                                        ``Authorization: Bearer <admin token>``
  GET  /healthz                         "ok"

  403  unknown rater token, or a failed CSRF check (nothing written)
  401  missing or wrong admin token
  404  a case, kind or image outside the rater's assignments (also another rater's case)
  422  a malformed submission: a ranking that is not each shown letter exactly once, an unknown
       error type or significance, an omission count outside 0..50, unknown fields
  409  the case's stored image is missing (nothing to judge it by; tell the study admin)

Blinding: reports are shown as "Findings A/B/C..." (side by side) or "Report 1/2/3" (independent)
in an order fixed per case, rater and page; their sources never leave the server except through
the admin export. Every report text goes through Jinja2's autoescaping, and the Content-Security-
Policy allows only this server's own scripts, so HTML or JavaScript inside a report stays text.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import pathlib
import secrets

import fastapi
import sqlalchemy as sa
from fastapi import concurrency, responses, staticfiles, templating
from sqlalchemy import orm

from medpalm.rater import db

HERE = pathlib.Path(__file__).resolve().parent
CSRF_COOKIE = "rater_csrf"
MAX_ERRORS_PER_REPORT = 50
MAX_OMISSIONS = 50
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
KIND_TITLES = {db.SBS: "Side-by-side ranking", db.INDEPENDENT: "Independent grading"}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


class Refused(Exception):
  """A request answered with `status` and a plain message; nothing has been written."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status, self.message = status, message


def _sha256(token: str) -> str:
  return hashlib.sha256(token.encode()).hexdigest()


def create_app(db_url: str | None, study_name: str) -> fastapi.FastAPI:
  engine = db.make_engine(db_url)
  Session = db.sessionmaker(engine)
  with Session() as s:
    study = db.get_study(s, study_name)
    study_id, secret, admin_hash = study.id, study.secret.encode(), study.admin_token_hash

  app = fastapi.FastAPI(title="medpalm rater", docs_url=None, redoc_url=None, openapi_url=None)
  app.mount("/static", staticfiles.StaticFiles(directory=HERE / "static"), name="static")
  templates = templating.Jinja2Templates(directory=HERE / "templates")  # autoescapes .html

  @app.middleware("http")
  async def _headers(request, call_next):
    response = await call_next(request)
    for k, v in SECURITY_HEADERS.items():
      response.headers.setdefault(k, v)
    if "/image/" not in request.url.path and not request.url.path.startswith("/static"):
      response.headers.setdefault("Cache-Control", "no-store")  # pages hold the CSRF token
    return response

  def message(request, status: int, text: str):
    return templates.TemplateResponse(
        request, "message.html", {"message": text, "status": status}, status_code=status
    )

  @app.exception_handler(Refused)
  async def _refused(request, exc: Refused):
    return message(request, exc.status, exc.message)

  def rater_for(session: orm.Session, token: str) -> db.Rater:
    """Constant-time match of the link token against every rater of the study."""
    digest = _sha256(token)
    found = None
    for rater in session.scalars(sa.select(db.Rater).where(db.Rater.study_id == study_id)):
      if hmac.compare_digest(rater.token_hash, digest):
        found = rater
    if found is None:
      raise Refused(403, "This link is not valid for this study.")
    return found

  def queue(session: orm.Session, rater: db.Rater):
    """The rater's assignments in order, and the set of answered assignment ids."""
    assignments = session.scalars(
        sa.select(db.Assignment)
        .where(db.Assignment.rater_id == rater.id)
        .order_by(db.Assignment.position)
        .options(orm.joinedload(db.Assignment.case))
    ).all()
    answered = set(
        session.scalars(
            sa.select(db.Answer.assignment_id).where(
                db.Answer.assignment_id.in_([a.id for a in assignments])
            )
        )
    )
    return assignments, answered

  def next_url(token: str, assignments, answered) -> str:
    for a in assignments:
      if a.id not in answered:
        return f"/r/{token}/case/{a.case_id}/{a.kind}"
    return f"/r/{token}/done"

  def assignment_for(assignments, case_id: int, kind: str) -> db.Assignment:
    for a in assignments:
      if a.case_id == case_id and a.kind == kind:
        return a
    raise Refused(404, f"Case {case_id} ({kind}) is not among your assignments.")

  def csrf_value(rater: db.Rater, cookie: str) -> str:
    return hmac.new(secret, f"{rater.id}:{cookie}".encode(), hashlib.sha256).hexdigest()

  def check_csrf(request, rater: db.Rater, form) -> None:
    cookie = request.cookies.get(CSRF_COOKIE, "")
    sent = form.get("csrf", "")
    if (
        not cookie
        or not isinstance(sent, str)
        or not hmac.compare_digest(csrf_value(rater, cookie), sent)
    ):
      raise Refused(403, "The form's security check failed: reload the page and submit again.")

  def shown_reports(session: orm.Session, a: db.Assignment) -> list[db.Report]:
    order = json.loads(a.order_json)
    rows = {r.id: r for r in session.scalars(sa.select(db.Report).where(db.Report.id.in_(order)))}
    return [rows[i] for i in order]

  def check_images(case: db.Case) -> None:
    if not case.images:
      raise Refused(409, f"Case {case.id} has no image on the server; tell the study admin.")

  @app.get("/healthz", response_class=responses.PlainTextResponse)
  def healthz():
    return "ok"

  @app.get("/", response_class=responses.HTMLResponse)
  def index(request: fastapi.Request):
    return message(request, 200, "Open the personal link you were sent to start or resume.")

  @app.get("/r/{token}")
  def resume(token: str):
    with Session() as s:
      rater = rater_for(s, token)
      assignments, answered = queue(s, rater)
      return responses.RedirectResponse(next_url(token, assignments, answered), status_code=303)

  @app.get("/r/{token}/done", response_class=responses.HTMLResponse)
  def done(request: fastapi.Request, token: str):
    with Session() as s:
      rater = rater_for(s, token)
      assignments, answered = queue(s, rater)
      return templates.TemplateResponse(
          request,
          "done.html",
          {"done": len(answered), "total": len(assignments), "token": token},
      )

  @app.get("/r/{token}/image/{image_id}.png")
  def image(token: str, image_id: int):
    with Session() as s:
      rater = rater_for(s, token)
      img = s.get(db.Image, image_id)
      assignments, _ = queue(s, rater)
      if img is None or img.case_id not in {a.case_id for a in assignments}:
        raise Refused(404, f"Image {image_id} is not among your assignments.")
      if not img.png:
        raise Refused(409, f"Image {image_id} is missing on the server; tell the study admin.")
      return responses.Response(
          img.png, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"}
      )

  @app.get("/r/{token}/case/{case_id}/{kind}", response_class=responses.HTMLResponse)
  def page(request: fastapi.Request, token: str, case_id: int, kind: str):
    with Session() as s:
      rater = rater_for(s, token)
      assignments, answered = queue(s, rater)
      a = assignment_for(assignments, case_id, kind)
      if a.id in answered:
        return responses.RedirectResponse(next_url(token, assignments, answered), status_code=303)
      check_images(a.case)
      reports = shown_reports(s, a)
      cookie = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)
      context = {
          "token": token,
          "kind": kind,
          "title": KIND_TITLES[kind],
          "case": a.case,
          "images": a.case.images,
          "pilot": a.case.pilot,
          "done": len(answered),
          "total": len(assignments),
          "step": assignments.index(a) + 1,
          "csrf": csrf_value(rater, cookie),
          "action": f"/r/{token}/case/{case_id}/{kind}",
          "items": [
              {"label": LETTERS[i] if kind == db.SBS else str(i + 1), "text": r.text}
              for i, r in enumerate(reports)
          ],
          "error_types": db.ERROR_TYPES,
      }
      template = "sbs.html" if kind == db.SBS else "independent.html"
      response = templates.TemplateResponse(request, template, context)
      response.set_cookie(
          CSRF_COOKIE, cookie, httponly=True, samesite="strict", max_age=30 * 86400, path="/"
      )
      return response

  def parse_ranking(form, reports: list[db.Report]) -> list[db.Rank]:
    allowed = {k for k in form.keys()} - {"csrf", "ranking"}
    if allowed:
      raise Refused(422, f"Unexpected form field(s): {sorted(allowed)}.")
    values = form.getlist("ranking")
    letters = LETTERS[: len(reports)]
    got = values[0].split(",") if len(values) == 1 else None
    if got is None or sorted(got) != sorted(letters):
      raise Refused(
          422,
          f"The ranking must list each of {', '.join(letters)} exactly once, best first; "
          f"got {values!r}.",
      )
    return [db.Rank(report_id=reports[letters.index(x)].id, rank=i + 1) for i, x in enumerate(got)]

  def parse_grading(form, reports: list[db.Report]):
    n = len(reports)
    fields = {"csrf"}
    grades, errors = [], []
    for k in range(1, n + 1):
      fields |= {f"err{k}_type", f"err{k}_sig", f"om{k}_sig", f"om{k}_other"}
      types, sigs = form.getlist(f"err{k}_type"), form.getlist(f"err{k}_sig")
      if len(types) != len(sigs) or len(types) > MAX_ERRORS_PER_REPORT:
        raise Refused(422, f"Report {k}: each error needs one type and one significance.")
      for t, g in zip(types, sigs):
        if t not in db.ERROR_TYPES or g not in db.SIGNIFICANCES:
          raise Refused(
              422,
              f"Report {k}: error type must be one of {db.ERROR_TYPES} and significance one of "
              f"{db.SIGNIFICANCES}; got {t!r}, {g!r}.",
          )
        errors.append(db.ErrorMark(report_id=reports[k - 1].id, error_type=t, significance=g))
      counts = []
      for name in (f"om{k}_sig", f"om{k}_other"):
        values = form.getlist(name)
        value = values[0].strip() if len(values) == 1 else ""
        if not value.isdigit() or int(value) > MAX_OMISSIONS:
          raise Refused(422, f"Report {k}: {name} must be one whole number 0..{MAX_OMISSIONS}.")
        counts.append(int(value))
      grades.append(
          db.Grade(
              report_id=reports[k - 1].id,
              significant_omissions=counts[0],
              other_omissions=counts[1],
          )
      )
    unknown = set(form.keys()) - fields
    if unknown:
      raise Refused(422, f"Unexpected form field(s): {sorted(unknown)}.")
    return grades, errors

  @app.post("/r/{token}/case/{case_id}/{kind}")
  async def submit(request: fastapi.Request, token: str, case_id: int, kind: str):
    form = await request.form()
    return await concurrency.run_in_threadpool(_submit, request, token, case_id, kind, form)

  def _submit(request, token: str, case_id: int, kind: str, form):
    with Session() as s:
      rater = rater_for(s, token)
      assignments, answered = queue(s, rater)
      a = assignment_for(assignments, case_id, kind)
      check_csrf(request, rater, form)
      if a.id in answered:  # a double submit: the first answer stands
        return responses.RedirectResponse(next_url(token, assignments, answered), status_code=303)
      check_images(a.case)
      reports = shown_reports(s, a)
      answer = db.Answer(assignment_id=a.id, submitted_at=db.utcnow())
      if kind == db.SBS:
        answer.ranks = parse_ranking(form, reports)
      else:
        answer.grades, answer.errors = parse_grading(form, reports)
      s.add(answer)
      try:
        s.commit()
      except sa.exc.IntegrityError:  # the same page submitted twice at once: one answer stands
        s.rollback()
      answered.add(a.id)
      return responses.RedirectResponse(next_url(token, assignments, answered), status_code=303)

  @app.get("/admin/export")
  def export(authorization: str = fastapi.Header(default="")):
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(_sha256(token), admin_hash):
      raise fastapi.HTTPException(401, "admin token required (Authorization: Bearer <token>)")
    with Session() as s:
      return responses.JSONResponse(export_answers(s, study_id))

  return app


def export_answers(session: orm.Session, study_id: int) -> list[dict]:
  """Every answer of the study with its sources named: the unblinded record for analysis."""
  rows = session.execute(
      sa.select(db.Answer, db.Assignment, db.Rater, db.Case)
      .join(db.Assignment, db.Answer.assignment_id == db.Assignment.id)
      .join(db.Rater, db.Assignment.rater_id == db.Rater.id)
      .join(db.Case, db.Assignment.case_id == db.Case.id)
      .where(db.Rater.study_id == study_id)
      .order_by(db.Answer.id)
  ).all()
  sources = dict(
      session.execute(
          sa.select(db.Report.id, db.Report.source)
          .join(db.Case, db.Report.case_id == db.Case.id)
          .where(db.Case.study_id == study_id)
      ).all()
  )
  out = []
  for answer, a, rater, case in rows:
    record = {
        "rater": rater.name,
        "case": case.key,
        "pilot": case.pilot,
        "kind": a.kind,
        "submitted_at": answer.submitted_at.isoformat() + "Z",
    }
    if a.kind == db.SBS:
      record["ranking"] = [sources[r.report_id] for r in sorted(answer.ranks, key=lambda r: r.rank)]
    else:
      record["grades"] = {
          sources[g.report_id]: {
              "significant_omissions": g.significant_omissions,
              "other_omissions": g.other_omissions,
              "errors": [
                  {"type": e.error_type, "significance": e.significance}
                  for e in answer.errors
                  if e.report_id == g.report_id
              ],
          }
          for g in answer.grades
      }
    out.append(record)
  return out
