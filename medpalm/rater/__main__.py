"""Command line: create a study, serve it to raters, analyse the answers (see the package doc)."""

from __future__ import annotations

import argparse
import json
import sys

from medpalm.rater import db


def _create(args) -> None:
  from medpalm.rater import study

  cfg = study.load_config(args.config)
  tokens = study.create_study(db.make_engine(args.db), cfg)
  base = args.base_url.rstrip("/")
  print(f"created study {cfg.name!r} in {db.database_url(args.db)}")
  for rater in cfg.raters:
    print(f"rater {rater}: {base}/r/{tokens[rater]}")
  print(
      f"admin export token: {tokens['admin']}  (GET {base}/admin/export, "
      "header 'Authorization: Bearer <token>')"
  )
  if args.tokens_json:
    with open(args.tokens_json, "w", encoding="utf-8") as f:
      json.dump(tokens, f)


def _serve(args) -> None:
  import uvicorn

  from medpalm.rater import app

  application = app.create_app(args.db, args.study)
  uvicorn.run(application, host=args.host, port=args.port, log_level=args.log_level)


def _analyze(args) -> None:
  from medpalm.rater import analysis

  result = analysis.analyze(db.make_engine(args.db), args.study, args.bootstrap, args.seed)
  paths = analysis.write_outputs(result, args.out)
  print(paths["markdown"].read_text(encoding="utf-8"))
  print(f"wrote {', '.join(str(p) for p in paths.values())}")


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m medpalm.rater", description=__doc__)
  parser.add_argument(
      "--db",
      default=None,
      help=f"database URL (default ${db.DB_ENV}, else {db.DEFAULT_DB}); PostgreSQL: "
      "postgresql+psycopg://user:password@host/dbname",
  )
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("create", help="create a study and print each rater's link")
  p.add_argument("--config", required=True, help="study config JSON")
  p.add_argument("--base_url", default="http://127.0.0.1:8000", help="prefix of the printed links")
  p.add_argument("--tokens_json", default=None, help="also write the tokens to this JSON file")
  p.set_defaults(run=_create)
  p = sub.add_parser("serve", help="serve the raters' web app with uvicorn")
  p.add_argument("--study", required=True)
  p.add_argument("--host", default="127.0.0.1")
  p.add_argument("--port", type=int, default=8000)
  p.add_argument("--log_level", default="info")
  p.set_defaults(run=_serve)
  p = sub.add_parser("analyze", help="figures, Markdown table and PNG chart of a study")
  p.add_argument("--study", required=True)
  p.add_argument("--out", default="rater_results")
  p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples over cases")
  p.add_argument("--seed", type=int, default=0)
  p.set_defaults(run=_analyze)
  # --db is accepted after the subcommand as well.
  for action in sub.choices.values():
    action.add_argument("--db", dest="db", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  try:
    args.run(args)
  except ValueError as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  main()
