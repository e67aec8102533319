"""The benchmarks time the program that trains: the trainer's own step."""

import pathlib
import sys

import seqio

from medpalm.driver import trainer as trainer_lib
from medpalm.model import MedPalmMModel
from medpalm.models import configs
from medpalm.models.medpalm_m import MedPalmM

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))
import common  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)


def test_benchmark_step_is_the_trainers_step():
  config = configs.get_config("tiny")
  model = MedPalmMModel(MedPalmM(config), seqio.PassThroughVocabulary(1024, 1))
  step = common.train_step(model)
  assert step.__wrapped__.__code__ is trainer_lib.make_train_step(model).__code__
  assert common.train_step_fn(config).__wrapped__.__code__ is step.__wrapped__.__code__
