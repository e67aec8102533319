"""The same database layer on PostgreSQL: a throwaway server (Debian's postgresql binaries)."""

import glob
import os
import pathlib
import shutil
import subprocess
import tempfile

import pytest
import requests

from medpalm.rater import analysis, db, study as study_lib
from tests.medpalm.rater import test_analysis
from tests.support import rater as R

pytestmark = pytest.mark.slow


@pytest.fixture
def postgres_url():
  initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
  try:
    import psycopg  # noqa: F401
  except ImportError:
    psycopg = None
  if not initdb or psycopg is None:
    reason = "PostgreSQL server binaries (apt-get install postgresql) or psycopg absent"
    print(f"SKIP reason: {reason}")
    pytest.skip(reason)
  bindir = pathlib.Path(initdb[-1]).parent
  root = pathlib.Path(tempfile.mkdtemp(prefix="rater_pg_"))
  os.chmod(root, 0o755)
  run_as = []
  if os.geteuid() == 0:  # the server refuses to run as root
    shutil.chown(root, "postgres")
    run_as = ["runuser", "-u", "postgres", "--"]
  port = R.free_port()
  data = root / "data"
  subprocess.run(
      run_as + [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "rater", "--no-sync"],
      check=True,
      capture_output=True,
  )
  opts = f"-k {root} -p {port} -c listen_addresses='' -c fsync=off"
  subprocess.run(
      run_as
      + [
          str(bindir / "pg_ctl"),
          "-D",
          str(data),
          "-o",
          opts,
          "-w",
          "-l",
          str(root / "log"),
          "start",
      ],
      check=True,
      capture_output=True,
  )
  try:
    yield f"postgresql+psycopg://rater@/postgres?host={root}&port={port}"
  finally:
    subprocess.run(
        run_as + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
        capture_output=True,
    )
    shutil.rmtree(root, ignore_errors=True)


def test_study_served_and_analysed_on_postgres(postgres_url, tmp_path):
  engine = db.make_engine(postgres_url)
  assert engine.dialect.name == "postgresql"
  # Analysis on the hand-made answers: the same exact figures as on SQLite.
  test_analysis._hand_made_db(postgres_url)
  result = analysis.analyze(engine, "hand", n_boot=100)
  assert result["pairwise"]["m1"]["exact"] == test_analysis.F(1, 2)
  assert result["best"][db.REFERENCE]["exact"] == test_analysis.F(1, 2)
  # A created study, served from PostgreSQL: a rater answers two pages and resumes at the third.
  cfg = study_lib.load_config(R.write_study(tmp_path / "s"))
  tokens = study_lib.create_study(engine, cfg)
  with pytest.raises(ValueError, match="already exists"):
    study_lib.create_study(engine, cfg)
  with R.serving(postgres_url, tmp_path / "server.log") as server:
    s = requests.Session()
    first = s.get(server.url(f"/r/{tokens['rater-one']}"), allow_redirects=False)
    page = first.headers["location"]
    for _ in range(2):
      r = R.complete_page(s, server, page)
      assert r.status_code == 303
      page = r.headers["location"]
    r = s.get(server.url(f"/r/{tokens['rater-one']}"), allow_redirects=False)
    assert r.headers["location"] == page
    export = requests.get(
        server.url("/admin/export"), headers={"Authorization": f"Bearer {tokens['admin']}"}
    )
    assert [a["kind"] for a in export.json()] == ["sbs", "independent"]
  engine.dispose()
