"""Mixture `multimedbench`: the paper's Table A.1 rates, on demo_data fixtures."""

import collections

import numpy as np
import pytest
import seqio

from tasks import multimedbench
from tests.support.tasks_env import LONG, PREFIX

# The paper's Table A.1, in percent. CBIS-DDSM's 1.56 % is split by the paper's
# training sizes: mass 1,318, calcification 1,544.
PAPER = {
    "mimic_cxr_report": 59.90,
    "mimic_cxr_classification": 11.98,
    "medmcqa": 6.25,
    "pad_ufes_20": 6.25,
    "medqa": 3.13,
    "mimic_iii": 3.13,
    "slake": 2.64,
    "path_vqa": 1.90,
    "vindr_mammo": 1.56,
    "cbis_ddsm_mass": 1.56 * 1318 / 2862,
    "cbis_ddsm_calc": 1.56 * 1544 / 2862,
    "precisionfda": 1.56,
    "vqa_rad": 0.15,
}


@pytest.fixture(scope="module")
def env(tasks_env):
  return tasks_env


def test_registered_rates_are_the_papers():
  mix = seqio.get_mixture_or_task("multimedbench")
  rates = {t.name.removeprefix("multimedbench_"): mix.get_rate(t) for t in mix.tasks}
  assert rates.keys() == PAPER.keys()  # PubMedQA is evaluation-only
  for task, rate in PAPER.items():
    assert rates[task] == pytest.approx(rate, rel=1e-9), task
  assert sum(rates.values()) == pytest.approx(100.01, abs=1e-9)  # the table's own rounding


def test_eval_and_demo_mixtures():
  names = {t.name for t in seqio.get_mixture_or_task("multimedbench_eval").tasks}
  assert names == {f"multimedbench_{t}" for t in multimedbench.TASKS}
  demo = {t.name for t in seqio.get_mixture_or_task("multimedbench_demo").tasks}
  assert demo == names - {"multimedbench_pubmedqa"}


def test_mixing_schedule_is_proportional_everywhere():
  rates = [59.9, 11.98, 6.25, 0.15, 1.56]
  schedule = multimedbench.mixing_schedule(rates)
  share = np.asarray(rates) / sum(rates)
  counts = np.bincount(schedule, minlength=len(rates))
  assert np.all(np.abs(counts - share * len(schedule)) <= 1)
  for window in (128, 1000):  # every batch-sized window is close to the rates
    for start in range(0, len(schedule) - window, 997):
      c = np.bincount(schedule[start : start + window], minlength=len(rates))
      assert np.all(np.abs(c - share * window) <= 2), (start, c)
  with pytest.raises(ValueError):
    multimedbench.mixing_schedule([0, 0])


def test_sampling_20000_reproduces_the_rates(env):
  """The training path (shuffled, repeated) of the test-prefix mixture built on fixtures."""
  mix = seqio.get_mixture_or_task(PREFIX)
  ds = mix.get_dataset(
      LONG, split="train", shuffle=True, seed=7, num_epochs=None, passthrough_features=["task_name"]
  )
  names = ds.take(20_000).map(lambda ex: ex["task_name"]).batch(2_000)
  counts = collections.Counter()
  for batch in names.as_numpy_iterator():
    counts.update(n.decode().removeprefix(PREFIX + "_") for n in batch)
  assert sum(counts.values()) == 20_000
  total = sum(PAPER.values())
  for task, rate in PAPER.items():
    expected = rate / total
    observed = counts[task] / 20_000
    if expected >= 0.01:
      assert abs(observed - expected) <= 0.1 * expected, (task, observed, expected)
    assert counts[task] > 0, task


def test_mixture_iterator_resumes_exactly(env, tmp_path):
  """The whole training mixture (shuffled, repeated, augmented tasks included) checkpoints.

  Saved once every task has produced an element (with the schedule: VQA-RAD, 0.15 %, appears
  within 667 examples): a shuffled sub-iterator saved before its first element restores to a
  different order (measured; TensorFlow re-draws its shuffle seed)."""
  import tensorflow as tf

  ds = seqio.get_mixture_or_task(PREFIX).get_dataset(
      LONG,
      split="train",
      shuffle=True,
      seed=11,
      num_epochs=None,
      passthrough_features=["task_name", "id"],
  )
  it = iter(ds.map(lambda ex: (ex["task_name"], ex["id"], ex["inputs"], ex["images"])))
  seen = {next(it)[0].numpy() for _ in range(700)}
  assert len(seen) == len(PAPER)
  ckpt = tf.train.Checkpoint(iterator=it)
  path = ckpt.write(str(tmp_path / "mix"))
  after = [[t.numpy() for t in next(it)] for _ in range(30)]
  ckpt.read(path).assert_consumed()
  for expected in after:
    for got, want in zip(next(it), expected):
      np.testing.assert_array_equal(got.numpy(), want)
