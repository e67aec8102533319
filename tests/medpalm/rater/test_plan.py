"""Assignment plan: pilot first for everyone, overlap for agreement, the rest balanced."""

import collections

import pytest

from medpalm.rater import study

CASES = [study.CaseRecord(f"c{i}", i, ("x.png",), "ind", "find") for i in range(11)]


def _cfg(**kw):
  base = dict(name="n", cases="cases.jsonl", models={"m": "m.jsonl"}, raters=("r1", "r2", "r3"))
  base.update(kw)
  return study.StudyConfig(**base)


def test_pilot_first_overlap_shared_rest_balanced_and_reproducible():
  cfg = _cfg(pilot_cases=("c0",), overlap_cases=2, independent="assigned", seed=3)
  queues = study.plan(cfg, CASES)
  assert queues == study.plan(cfg, CASES)  # same seed, same study
  sbs = {r: [k for k, kind in q if kind == "sbs"] for r, q in queues.items()}
  for q in queues.values():
    assert q[:2] == [("c0", "sbs"), ("c0", "independent")]
  shared = set.intersection(*(set(v[1:]) for v in sbs.values()))
  assert len(shared) == 2
  counts = collections.Counter(k for v in sbs.values() for k in v[1:] if k not in shared)
  assert sorted(counts) == sorted({f"c{i}" for i in range(1, 11)} - shared)
  assert set(counts.values()) == {1}  # each remaining case ranked by exactly one rater
  assert sorted(len(v) - 3 for v in sbs.values()) == [2, 3, 3]  # 8 cases over 3 raters
  for r, q in queues.items():  # "assigned": graded where ranked
    assert [k for k, kind in q if kind == "independent"] == sbs[r]
  assert study.plan(_cfg(pilot_cases=("c0",), overlap_cases=2, seed=4), CASES) != queues


def test_independent_all_and_cases_per_rater():
  queues = study.plan(_cfg(cases_per_rater=2, independent="all"), CASES)
  sbs = {r: {k for k, kind in q if kind == "sbs"} for r, q in queues.items()}
  assert [len(v) for v in sbs.values()] == [2, 2, 2]
  used = set.union(*sbs.values())
  for q in queues.values():
    assert {k for k, kind in q if kind == "independent"} == used  # the paper's design
  with pytest.raises(ValueError, match="cases_per_rater"):
    study.plan(_cfg(cases_per_rater=4), CASES)
  with pytest.raises(ValueError, match="pilot case 'zz'"):
    study.plan(_cfg(pilot_cases=("zz",)), CASES)
  with pytest.raises(ValueError, match="overlap_cases"):
    study.plan(_cfg(overlap_cases=12), CASES)
