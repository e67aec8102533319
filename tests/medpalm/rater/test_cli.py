"""`create` prints each rater's working link; bad input exits with a message naming the field."""

import hashlib
import re

import pytest
import sqlalchemy as sa

from medpalm.rater import __main__ as cli
from medpalm.rater import db
from tests.support import rater as R

pytestmark = pytest.mark.slow


def test_create_prints_links_whose_tokens_are_the_raters(tmp_path, capsys):
  config = R.write_study(tmp_path / "s", independent="all")
  url = f"sqlite:///{tmp_path / 'cli.db'}"
  cli.main(["create", "--db", url, "--config", str(config), "--base_url", "https://x.org/"])
  out = capsys.readouterr().out
  links = dict(re.findall(r"rater (\S+): https://x\.org/r/(\S+)", out))
  assert sorted(links) == sorted(R.RATERS)
  engine = db.make_engine(url)
  with engine.connect() as conn:
    hashes = dict(conn.execute(sa.select(db.Rater.name, db.Rater.token_hash)).all())
    assert conn.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"
    # "all": every rater grades every non-pilot case (5), plus the pilot's two pages.
    n = conn.execute(
        sa.select(sa.func.count())
        .select_from(db.Assignment)
        .where(db.Assignment.kind == db.INDEPENDENT)
    ).scalar_one()
    assert n == 2 * 6
  assert {r: hashlib.sha256(t.encode()).hexdigest() for r, t in links.items()} == hashes
  with pytest.raises(SystemExit, match="already exists"):
    cli.main(["create", "--db", url, "--config", str(config)])
