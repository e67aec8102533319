"""The study's figures, as in the paper's Table A.8, with bootstrap CIs and inter-rater agreement.

Pilot cases are left out. Every figure is a mean over cases of a per-case value, the per-case value
being the mean over the raters who answered that case (a case ranked by two raters counts once):

- side by side: share of cases in which a source (the reference or a model) was ranked best, and
  per model the share in which it was ranked above the reference ("pairwise preferred");
- independent: per model report, significant omissions, total omissions, clinically significant
  errors, clinical errors (significant + insignificant) and all errors (clinical + non-clinical).

Point estimates are exact fractions; the 95 % CIs are percentile bootstraps that resample cases.
Agreement, where cases overlap: for rankings, the share of rater pairs that picked the same best
report and their mean Kendall tau; for grading, the share of rater pairs that agree on whether a
report has a clinically significant error, and Cohen's kappa over those pairs.
"""

from __future__ import annotations

import collections
import itertools
import json
import pathlib
from fractions import Fraction

import numpy as np
import sqlalchemy as sa

from medpalm.rater import db

# Med-PaLM M paper (arXiv 2307.14334), Table A.8, for comparison beside a study's figures.
PAPER_MODELS = ("12B", "84B", "562B")
PAPER_BEST = {"reference": 37.14, "12B": 19.49, "84B": 25.78, "562B": 17.59}
PAPER_PAIRWISE = {"12B": 34.05, "84B": 40.50, "562B": 32.00}
PAPER_INDEPENDENT = {  # mean per report (95 % CI), per model
    "significant_omissions": ((0.08, 0.06, 0.10), (0.09, 0.07, 0.10), (0.10, 0.08, 0.12)),
    "total_omissions": ((0.12, 0.10, 0.15), (0.12, 0.10, 0.15), (0.13, 0.11, 0.16)),
    "significant_clinical_errors": ((0.26, 0.22, 0.29), (0.23, 0.20, 0.27), (0.26, 0.23, 0.29)),
    "clinical_errors": ((0.28, 0.24, 0.31), (0.25, 0.22, 0.28), (0.29, 0.25, 0.32)),
    "total_errors": ((0.58, 0.53, 0.63), (0.59, 0.54, 0.64), (0.63, 0.58, 0.68)),
}
METRIC_TITLES = {
    "significant_omissions": "Significant omissions",
    "total_omissions": "Total omissions",
    "significant_clinical_errors": "Significant clinical errors",
    "clinical_errors": "Total clinical errors",
    "total_errors": "Total errors (incl. non-clinical)",
}


def _case_means(per_case: dict[int, list[Fraction]]) -> dict[int, Fraction]:
  return {c: sum(v, Fraction(0)) / len(v) for c, v in per_case.items() if v}


def _estimate(per_case: dict[int, Fraction], rng: np.random.Generator, n_boot: int) -> dict:
  """Mean over cases (exact) and its percentile bootstrap 95 % CI over cases."""
  if not per_case:
    return {"mean": None, "ci": None, "n_cases": 0, "exact": None}
  values = list(per_case.values())
  mean = sum(values, Fraction(0)) / len(values)
  arr = np.array([float(v) for v in values])
  idx = rng.integers(0, len(arr), size=(n_boot, len(arr)))
  boots = arr[idx].mean(axis=1)
  lo, hi = np.percentile(boots, [2.5, 97.5])
  return {"mean": float(mean), "exact": mean, "ci": (float(lo), float(hi)), "n_cases": len(values)}


def _kendall_tau(a: dict[str, int], b: dict[str, int]) -> float:
  keys = sorted(a)
  concordant = discordant = 0
  for x, y in itertools.combinations(keys, 2):
    s = (a[x] - a[y]) * (b[x] - b[y])
    concordant += s > 0
    discordant += s < 0
  pairs = len(keys) * (len(keys) - 1) // 2
  return (concordant - discordant) / pairs


def _cohen_kappa(pairs: list[tuple[bool, bool]]) -> float | None:
  if not pairs:
    return None
  n = len(pairs)
  observed = sum(a == b for a, b in pairs) / n
  p1 = sum(a for a, _ in pairs) / n
  p2 = sum(b for _, b in pairs) / n
  expected = p1 * p2 + (1 - p1) * (1 - p2)
  return 1.0 if expected == 1 else (observed - expected) / (1 - expected)


def analyze(engine: sa.Engine, study_name: str, n_boot: int = 2000, seed: int = 0) -> dict:
  """All figures of one study as a dict (see the module docstring)."""
  Session = db.sessionmaker(engine)
  with Session() as s:
    study = db.get_study(s, study_name)
    models = list(json.loads(study.config_json)["models"])
    rows = s.execute(
        sa.select(db.Answer.id, db.Assignment.kind, db.Assignment.case_id, db.Rater.name)
        .join(db.Assignment, db.Answer.assignment_id == db.Assignment.id)
        .join(db.Rater, db.Assignment.rater_id == db.Rater.id)
        .join(db.Case, db.Assignment.case_id == db.Case.id)
        .where(db.Rater.study_id == study.id, db.Case.pilot.is_(False))
    ).all()
    answers = {r.id: r for r in rows}
    source = dict(
        s.execute(
            sa.select(db.Report.id, db.Report.source)
            .join(db.Case, db.Report.case_id == db.Case.id)
            .where(db.Case.study_id == study.id)
        ).all()
    )
    ranks = collections.defaultdict(dict)
    for r in s.scalars(sa.select(db.Rank).where(db.Rank.answer_id.in_(answers))):
      ranks[r.answer_id][source[r.report_id]] = r.rank
    grades = collections.defaultdict(dict)
    for g in s.scalars(sa.select(db.Grade).where(db.Grade.answer_id.in_(answers))):
      grades[g.answer_id][source[g.report_id]] = {
          "significant_omissions": g.significant_omissions,
          "total_omissions": g.significant_omissions + g.other_omissions,
          "significant_clinical_errors": 0,
          "clinical_errors": 0,
          "total_errors": 0,
      }
    for e in s.scalars(sa.select(db.ErrorMark).where(db.ErrorMark.answer_id.in_(answers))):
      counts = grades[e.answer_id][source[e.report_id]]
      counts["total_errors"] += 1
      counts["clinical_errors"] += e.significance != "nonclinical"
      counts["significant_clinical_errors"] += e.significance == "significant"

  rng = np.random.default_rng(seed)
  sources = [db.REFERENCE] + models
  best = {m: collections.defaultdict(list) for m in sources}
  pairwise = {m: collections.defaultdict(list) for m in models}
  sbs_by_case = collections.defaultdict(list)
  for answer_id, ranking in ranks.items():
    case = answers[answer_id].case_id
    sbs_by_case[case].append((answers[answer_id].name, ranking))
    for m in sources:
      best[m][case].append(Fraction(int(ranking[m] == 1)))
    for m in models:
      pairwise[m][case].append(Fraction(int(ranking[m] < ranking[db.REFERENCE])))
  indep = {m: {k: collections.defaultdict(list) for k in METRIC_TITLES} for m in models}
  grade_by_case = collections.defaultdict(list)
  for answer_id, per_model in grades.items():
    case = answers[answer_id].case_id
    grade_by_case[case].append((answers[answer_id].name, per_model))
    for m, counts in per_model.items():
      for k, v in counts.items():
        indep[m][k][case].append(Fraction(v))

  result = {
      "study": study_name,
      "models": models,
      "sbs_answers": len(ranks),
      "sbs_cases": len(sbs_by_case),
      "independent_answers": len(grades),
      "independent_cases": len(grade_by_case),
      "best": {m: _estimate(_case_means(best[m]), rng, n_boot) for m in sources},
      "pairwise": {m: _estimate(_case_means(pairwise[m]), rng, n_boot) for m in models},
      "independent": {
          m: {k: _estimate(_case_means(indep[m][k]), rng, n_boot) for k in METRIC_TITLES}
          for m in models
      },
  }
  top_agree, taus = [], []
  for entries in sbs_by_case.values():
    for (_, a), (_, b) in itertools.combinations(sorted(entries, key=lambda e: e[0]), 2):
      top_agree.append(min(a, key=a.get) == min(b, key=b.get))
      taus.append(_kendall_tau(a, b))
  sig_pairs = []
  for entries in grade_by_case.values():
    for (_, a), (_, b) in itertools.combinations(sorted(entries, key=lambda e: e[0]), 2):
      for m in models:
        if m in a and m in b:
          sig_pairs.append(
              (a[m]["significant_clinical_errors"] > 0, b[m]["significant_clinical_errors"] > 0)
          )
  result["agreement"] = {
      "sbs_rater_pairs": len(taus),
      "sbs_same_best": float(np.mean(top_agree)) if top_agree else None,
      "sbs_mean_kendall_tau": float(np.mean(taus)) if taus else None,
      "independent_rater_pairs": len(sig_pairs),
      "independent_significant_error_agreement": (
          float(np.mean([a == b for a, b in sig_pairs])) if sig_pairs else None
      ),
      "independent_significant_error_kappa": _cohen_kappa(sig_pairs),
  }
  return result


def _pct(e: dict) -> str:
  if e["mean"] is None:
    return "–"
  return f"{100 * e['mean']:.2f} % ({100 * e['ci'][0]:.1f}–{100 * e['ci'][1]:.1f})"


def _num(e: dict) -> str:
  if e["mean"] is None:
    return "–"
  return f"{e['mean']:.2f} ({e['ci'][0]:.2f}–{e['ci'][1]:.2f})"


def markdown(result: dict) -> str:
  models = result["models"]
  sources = [db.REFERENCE] + models
  out = [
      f"# Rater study `{result['study']}`",
      "",
      f"Side by side: {result['sbs_answers']} rankings of {result['sbs_cases']} cases. "
      f"Independent: {result['independent_answers']} gradings of {result['independent_cases']} "
      "cases. Pilot cases excluded; 95 % bootstrap CIs over cases in parentheses.",
      "",
      "## Side by side",
      "",
      "| | " + " | ".join(sources) + " |",
      "|---" * (len(sources) + 1) + "|",
      "| Ranked best | " + " | ".join(_pct(result["best"][m]) for m in sources) + " |",
      "| Preferred over the reference | – | "
      + " | ".join(_pct(result["pairwise"][m]) for m in models)
      + " |",
      "",
      "Paper (Med-PaLM M, Table A.8; 246 MIMIC-CXR cases, 4 radiologists):",
      "",
      "| | reference | " + " | ".join(PAPER_MODELS) + " |",
      "|---" * (len(PAPER_MODELS) + 2) + "|",
      "| Ranked best | "
      + " | ".join(f"{PAPER_BEST[m]:.2f} %" for m in ("reference",) + PAPER_MODELS)
      + " |",
      "| Preferred over the reference | – | "
      + " | ".join(f"{PAPER_PAIRWISE[m]:.2f} %" for m in PAPER_MODELS)
      + " |",
      "",
      "## Independent grading (mean per report)",
      "",
      "| | " + " | ".join(models) + " | paper " + " | paper ".join(PAPER_MODELS) + " |",
      "|---" * (len(models) + len(PAPER_MODELS) + 1) + "|",
  ]
  for k, title in METRIC_TITLES.items():
    ours = " | ".join(_num(result["independent"][m][k]) for m in models)
    paper = " | ".join(f"{v:.2f} ({lo:.2f}–{hi:.2f})" for v, lo, hi in PAPER_INDEPENDENT[k])
    out.append(f"| {title} | {ours} | {paper} |")
  ag = result["agreement"]

  def fmt(v):
    return "–" if v is None else f"{v:.3f}"

  out += [
      "",
      "## Inter-rater agreement (cases answered by more than one rater)",
      "",
      f"- side by side: {ag['sbs_rater_pairs']} rater pairs; same best report "
      f"{fmt(ag['sbs_same_best'])}; mean Kendall tau {fmt(ag['sbs_mean_kendall_tau'])}",
      f"- independent: {ag['independent_rater_pairs']} rater pairs × reports; agreement on "
      f"'has a clinically significant error' {fmt(ag['independent_significant_error_agreement'])}; "
      f"Cohen's kappa {fmt(ag['independent_significant_error_kappa'])}",
      "",
  ]
  return "\n".join(out)


def chart(result: dict, path: str | pathlib.Path) -> None:
  """A PNG: side-by-side shares and independent error rates, with their 95 % CIs."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  models = result["models"]
  sources = [db.REFERENCE] + models
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))

  def bars(ax, x, entries, width, label, scale=1.0):
    means = [scale * (e["mean"] or 0.0) for e in entries]
    err = [
        [scale * ((e["mean"] or 0) - e["ci"][0]) if e["ci"] else 0 for e in entries],
        [scale * (e["ci"][1] - (e["mean"] or 0)) if e["ci"] else 0 for e in entries],
    ]
    ax.bar(x, means, width, yerr=err, capsize=3, label=label)

  x = np.arange(len(sources))
  bars(ax1, x - 0.2, [result["best"][m] for m in sources], 0.4, "ranked best", 100)
  bars(ax1, x[1:] + 0.2, [result["pairwise"][m] for m in models], 0.4, "preferred over ref.", 100)
  ax1.set_xticks(x, sources, rotation=15)
  ax1.set_ylabel("% of cases")
  ax1.set_title("Side by side")
  ax1.legend()
  keys = list(METRIC_TITLES)
  x = np.arange(len(keys))
  width = 0.8 / max(1, len(models))
  for i, m in enumerate(models):
    bars(
        ax2,
        x + (i - (len(models) - 1) / 2) * width,
        [result["independent"][m][k] for k in keys],
        width,
        m,
    )
  ax2.set_xticks(
      x,
      [METRIC_TITLES[k].replace(" (incl. non-clinical)", "") for k in keys],
      rotation=20,
      ha="right",
  )
  ax2.set_ylabel("mean per report")
  ax2.set_title("Independent grading")
  ax2.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write_outputs(result: dict, out_dir: str | pathlib.Path) -> dict[str, pathlib.Path]:
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  paths = {
      "markdown": out / "report.md",
      "chart": out / "figures.png",
      "json": out / "results.json",
  }
  paths["markdown"].write_text(markdown(result), encoding="utf-8")
  chart(result, paths["chart"])

  def plain(o):
    if isinstance(o, dict):
      return {k: plain(v) for k, v in o.items() if k != "exact"}
    return list(o) if isinstance(o, tuple) else o

  paths["json"].write_text(json.dumps(plain(result), indent=1), encoding="utf-8")
  return paths
