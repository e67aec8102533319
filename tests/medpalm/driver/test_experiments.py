"""Every shipped experiment runs end to end with only the model swapped to tiny and its step,
period and batch numbers shrunk: train, one train-eval (each task's train_eval split), one
inference eval, one checkpoint, and a restart — on tasks.demo_data for all 12 datasets."""

import json
import os

import gin
import pytest

from medpalm.driver import main
from tests.support import driver as driver_setup

pytestmark = pytest.mark.slow

EXPERIMENTS = ("demo_cpu", "multimedbench_12b", "multimedbench_84b", "multimedbench_562b")
IMAGE_SIZE = 28  # 4 image tokens with the tiny ViT's 14-pixel patches


@pytest.fixture(scope="module")
def multimedbench(tmp_path_factory):
  """The default-named tasks and mixtures over demo data (28 px, 4 image tokens)."""
  import tasks  # noqa: F401  (the default registration, replaced below)
  from tasks import demo_data, multimedbench, prepare, vocab

  base = tmp_path_factory.mktemp("experiments")
  root = base / "data"
  demo_data.write_all(root, num_examples=4, seed=0)
  prepared = base / "prepared"
  prepare.prepare(
      data_dir=str(root), prepared_dir=str(prepared), image_size=IMAGE_SIZE, progress_bar=False
  )
  spm = vocab.train_sentencepiece(base / "spm" / "m", vocab.corpus_from_data(root), vocab_size=1000)
  multimedbench.register_all(
      vocabulary=vocab.MedPalmVocabulary(spm),
      num_image_tokens=4,
      image_size=IMAGE_SIZE,
      data_dir=str(root),
      prepared_dir=str(prepared),
      shuffle_buffer_size=16,
  )
  return str(spm)


def _run(argv):
  gin.clear_config()
  try:
    return main.main(argv)
  finally:
    gin.clear_config()


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_trains_evaluates_checkpoints_and_restarts(
    experiment, multimedbench, tmp_path, monkeypatch
):
  monkeypatch.setenv("MEDPALM_SPM_MODEL", multimedbench)
  model_dir = tmp_path / "run"
  shrink = [
      "CONFIG_NAME = 'tiny'",
      f"IMAGE_SIZE = {IMAGE_SIZE}",
      "TASK_FEATURE_LENGTHS = {'inputs': 96, 'targets': 16, 'images': 1, 'image_mask': 1}",
      "BATCH_SIZE = 8",
      "EVAL_BATCH_SIZE = 8",
      "EVAL_STEPS = 1",
      "EVAL_PERIOD = 2",
      "CHECKPOINT_PERIOD = 2",
      "LOG_PERIOD = 1",
  ]
  gin_file = os.path.join(driver_setup.REPO, "gin_configs", "experiments", f"{experiment}.gin")

  def argv(steps, extra=()):
    bindings = [f"MODEL_DIR = '{model_dir}'", f"TRAIN_STEPS = {steps}", *shrink, *extra]
    return ["--run_mode=train", f"--gin_file={gin_file}"] + [
        f"--gin_bindings={b}" for b in bindings
    ]

  assert _run(argv(2)) == 0
  assert (model_dir / "checkpoint_2" / "state").is_dir()
  train_eval = sorted(os.listdir(model_dir / "train_eval"))
  inference = model_dir / "inference_eval"
  if experiment == "demo_cpu":  # the demo evaluates SLAKE only, and no inference eval
    assert train_eval == ["multimedbench_slake"] and not inference.exists()
  else:  # all 14 tasks, each on its own train_eval split
    assert len(train_eval) == 14
    results = sorted(os.listdir(inference))
    assert len(results) == 14, results
    for task in results:
      assert json.load(open(inference / task / "step_2.json"))[task]
  assert _run(argv(3, ["EVAL_PERIOD = None"])) == 0
  assert (model_dir / "checkpoint_3" / "state").is_dir()
