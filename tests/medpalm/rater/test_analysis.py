"""`analyze` on a hand-made database reproduces hand-computed figures exactly."""

import json
from fractions import Fraction

from PIL import Image

from medpalm.rater import __main__ as cli
from medpalm.rater import analysis, db

F = Fraction
REF = db.REFERENCE
# Side by side, best first (hand-made; "pilot" is excluded from every figure).
RANKINGS = {
    ("c1", "a"): ["m1", REF, "m2"],
    ("c1", "b"): [REF, "m1", "m2"],
    ("c2", "a"): ["m2", "m1", REF],
    ("c3", "b"): [REF, "m2", "m1"],
    ("pilot", "a"): ["m1", "m2", REF],
}
# Independent: {model: (errors as (type, significance), significant omissions, other omissions)}.
GRADINGS = {
    ("c1", "a"): {
        "m1": ([("finding", "significant"), ("other", "nonclinical")], 1, 0),
        "m2": ([], 0, 2),
    },
    ("c1", "b"): {
        "m1": ([("location", "insignificant")], 0, 0),
        "m2": ([("severity", "significant"), ("finding", "significant")], 0, 0),
    },
    ("c2", "a"): {"m1": ([], 0, 0), "m2": ([("other", "nonclinical")], 1, 1)},
    ("pilot", "a"): {"m1": ([("finding", "significant")] * 5, 3, 3), "m2": ([], 0, 0)},
}


def _hand_made_db(url):
  engine = db.make_engine(url)
  with db.sessionmaker(engine).begin() as s:
    study = db.Study(
        name="hand",
        seed=0,
        secret="x",
        admin_token_hash="y",
        config_json=json.dumps({"models": {"m1": "a.jsonl", "m2": "b.jsonl"}}),
    )
    s.add(study)
    s.flush()
    cases, reports = {}, {}
    for line, key in enumerate(["pilot", "c1", "c2", "c3"]):
      case = db.Case(study_id=study.id, key=key, line=line, indication="i", pilot=key == "pilot")
      s.add(case)
      s.flush()
      cases[key] = case
      for source in (REF, "m1", "m2"):
        report = db.Report(case_id=case.id, source=source, text=f"{key} {source}")
        s.add(report)
        s.flush()
        reports[key, source] = report.id
    raters = {}
    for name in ("a", "b"):
      raters[name] = db.Rater(study_id=study.id, name=name, token_hash=name * 64)
      s.add(raters[name])
    s.flush()
    position = 0
    for kind, table in ((db.SBS, RANKINGS), (db.INDEPENDENT, GRADINGS)):
      for (key, rater), value in table.items():
        a = db.Assignment(
            rater_id=raters[rater].id,
            case_id=cases[key].id,
            kind=kind,
            position=position,
            order_json="[]",
        )
        position += 1
        s.add(a)
        s.flush()
        answer = db.Answer(assignment_id=a.id)
        if kind == db.SBS:
          answer.ranks = [
              db.Rank(report_id=reports[key, src], rank=i + 1) for i, src in enumerate(value)
          ]
        else:
          for model, (errors, sig_om, other_om) in value.items():
            rid = reports[key, model]
            answer.grades.append(
                db.Grade(report_id=rid, significant_omissions=sig_om, other_omissions=other_om)
            )
            answer.errors += [
                db.ErrorMark(report_id=rid, error_type=t, significance=g) for t, g in errors
            ]
        s.add(answer)
  return engine


def test_analyze_reproduces_hand_computed_figures(tmp_path):
  url = f"sqlite:///{tmp_path / 'hand.db'}"
  result = analysis.analyze(_hand_made_db(url), "hand", n_boot=500, seed=1)
  # Ranked best, per case averaged over its raters, then over cases c1, c2, c3:
  # reference (1/2 + 0 + 1) / 3, m1 (1/2 + 0 + 0) / 3, m2 (0 + 1 + 0) / 3.
  best = {m: result["best"][m]["exact"] for m in (REF, "m1", "m2")}
  assert best == {REF: F(1, 2), "m1": F(1, 6), "m2": F(1, 3)}
  # Ranked above the reference: m1 (1/2 + 1 + 0) / 3, m2 (0 + 1 + 0) / 3.
  assert result["pairwise"]["m1"]["exact"] == F(1, 2)
  assert result["pairwise"]["m2"]["exact"] == F(1, 3)
  assert result["sbs_cases"] == 3 and result["sbs_answers"] == 4
  # Independent, per report; c1 averaged over raters a and b, then with c2.
  expected = {
      "m1": {
          "significant_omissions": F(1, 4),
          "total_omissions": F(1, 4),
          "significant_clinical_errors": F(1, 4),
          "clinical_errors": F(1, 2),
          "total_errors": F(3, 4),
      },
      "m2": {
          "significant_omissions": F(1, 2),
          "total_omissions": F(3, 2),
          "significant_clinical_errors": F(1, 2),
          "clinical_errors": F(1, 2),
          "total_errors": F(1),
      },
  }
  got = {m: {k: v["exact"] for k, v in result["independent"][m].items()} for m in expected}
  assert got == expected
  for e in list(result["best"].values()) + list(result["pairwise"].values()):
    assert e["ci"][0] <= e["mean"] <= e["ci"][1]
  # Agreement on c1: a put m1 first, b the reference (no match); Kendall tau of
  # (m1, ref, m2) vs (ref, m1, m2) = (2 concordant - 1 discordant) / 3. Significant-error
  # presence: m1 (yes, no), m2 (no, yes): no agreement, kappa -1.
  ag = result["agreement"]
  assert ag["sbs_rater_pairs"] == 1 and ag["sbs_same_best"] == 0.0
  assert abs(ag["sbs_mean_kendall_tau"] - 1 / 3) < 1e-12
  assert ag["independent_rater_pairs"] == 2
  assert ag["independent_significant_error_agreement"] == 0.0
  assert ag["independent_significant_error_kappa"] == -1.0


def test_analyze_command_writes_table_chart_and_json(tmp_path, capsys):
  url = f"sqlite:///{tmp_path / 'hand.db'}"
  _hand_made_db(url).dispose()
  out = tmp_path / "out"
  cli.main(["--db", url, "analyze", "--study", "hand", "--out", str(out), "--bootstrap", "200"])
  md = (out / "report.md").read_text()
  assert md in capsys.readouterr().out
  assert "| Ranked best | 50.00 % (" in md  # the reference, first column
  assert "| 16.67 % (" in md and "| 33.33 % (" in md
  assert "| Significant clinical errors | 0.25 (" in md
  assert "40.50 %" in md and "37.14 %" in md  # the paper's Table A.8 beside
  saved = json.loads((out / "results.json").read_text())
  assert saved["pairwise"]["m1"]["mean"] == 0.5
  with Image.open(out / "figures.png") as img:
    assert img.format == "PNG" and img.size[0] > 500
