"""Clinician rater study of generated reports: the paper's radiologist evaluation as a web app.

    python -m medpalm.rater create  --config study.json --db sqlite:///study.db
    python -m medpalm.rater serve   --study NAME --db sqlite:///study.db --port 8000
    python -m medpalm.rater analyze --study NAME --db sqlite:///study.db --out results/

`study` builds the study from a cases JSONL and `--run_mode=infer` outputs; `app` serves the blinded
side-by-side ranking and independent error grading; `analysis` computes the Table A.8 figures.
Storage is `db` (SQLAlchemy: SQLite by default, PostgreSQL by URL).
"""
