"""medpalm under the real T5X binaries (`python -m t5x.train | t5x.eval | t5x.infer`) with the
shipped gin files (gin_configs/t5x/runs/*.gin + tiny.gin) and only MODEL_DIR and step counts on
the command line: the tiny model on the demo data (tasks.demo_data, paper-size 224 px images) on
an 8-device CPU mesh. One module-scoped T5X training run serves every test."""

import glob
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from medpalm.evaluation import paper_results

REPO = pathlib.Path(__file__).resolve().parents[3]
pytestmark = [pytest.mark.t5x, pytest.mark.slow]
TINY = ["--gin_file=gin_configs/t5x/tiny.gin"]
CLASSIFICATION = (
    "pad_ufes_20",
    "vindr_mammo",
    "cbis_ddsm_mass",
    "cbis_ddsm_calc",
    "mimic_cxr_classification",
)
NOT_SCORED = "needs one log-likelihood per class option"


def _require_t5x():
  try:
    import t5x.train  # noqa: F401
  except Exception as error:  # noqa: BLE001 - any failed import means "not usable here"
    message = f"T5X is not importable ({type(error).__name__}: {error}); see README (T5X)"
    print(message)
    pytest.skip(message)


class Env:

  def __init__(self, base: pathlib.Path):
    self.base = base
    self.vars = dict(os.environ)
    self.vars.update(
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONPATH=str(REPO),
        MEDPALM_DATA_DIR=str(base / "data"),
        MEDPALM_PREPARED_DIR=str(base / "prepared"),
        MEDPALM_SPM_MODEL=str(base / "spm" / "medpalm.model"),
    )

  def run(self, args, name: str, timeout: int = 2400) -> str:
    log = self.base / f"{name}.log"
    with open(log, "w") as f:
      code = subprocess.run(
          [sys.executable, *args],
          cwd=REPO,
          env=self.vars,
          stdout=f,
          stderr=subprocess.STDOUT,
          timeout=timeout,
      ).returncode
    text = log.read_text(errors="replace")
    assert code == 0, f"{' '.join(args[:3])} failed ({code}):\n{text[-6000:]}"
    return text

  def t5x(self, binary: str, run_file: str, model_dir: pathlib.Path, *bindings, name=None):
    args = ["-m", f"t5x.{binary}", f"--gin_file=gin_configs/t5x/runs/{run_file}.gin", *TINY]
    args += [f"--gin.MODEL_DIR='{model_dir}'", *(f"--gin.{b}" for b in bindings)]
    return self.run(args, name or binary)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  _require_t5x()
  from tasks import demo_data, prepare, vocab

  base = tmp_path_factory.mktemp("t5x")
  demo_data.write_all(base / "data", num_examples=4, seed=0)
  prepare.prepare(
      data_dir=str(base / "data"),
      prepared_dir=str(base / "prepared"),
      image_size=224,
      progress_bar=False,
  )
  vocab.train_sentencepiece(
      base / "spm" / "medpalm", vocab.corpus_from_data(base / "data"), vocab_size=1000
  )
  return Env(base)


def _steps(model_dir: pathlib.Path) -> list[int]:
  return sorted(int(p.name.split("_")[1]) for p in model_dir.glob("checkpoint_*") if p.is_dir())


def _params(checkpoint: pathlib.Path) -> dict:
  """{path: float32 array} of the params a T5X (orbax) checkpoint holds."""
  import orbax.checkpoint as ocp

  state = ocp.PyTreeCheckpointer().restore(str(checkpoint / "state"))
  flat = {}

  def walk(tree, prefix):
    for key, value in tree.items():
      if isinstance(value, dict):
        walk(value, f"{prefix}/{key}")
      else:
        flat[f"{prefix}/{key}"] = np.asarray(value, np.float32)

  walk(state["target"], "")
  return flat


@pytest.fixture(scope="module")
def trained(env):
  """30 steps straight (checkpoints every 10) in A; B starts from a copy of A's step-20
  checkpoint alone and resumes to 30."""
  a, b = env.base / "run_a", env.base / "run_b"
  log = env.t5x("train", "train", a, "TRAIN_STEPS=30", "CHECKPOINT_PERIOD=10", name="train_a")
  assert {20, 30} <= set(_steps(a)), log[-3000:]
  b.mkdir()
  shutil.copytree(a / "checkpoint_20", b / "checkpoint_20")
  log_b = env.t5x("train", "train", b, "TRAIN_STEPS=30", "CHECKPOINT_PERIOD=10", name="train_b")
  return a, b, log_b


def test_train_checkpoints_and_resumes_the_data_position(trained):
  """Real t5x.train: 20 steps and a checkpoint, then a resume to 30 that restores the data
  position: B (restarted from the step-20 checkpoint) ends bit-for-bit where the uninterrupted
  run A does, which it could not with the input stream restarted from its beginning."""
  a, b, log_b = trained
  assert "checkpoint_20" in log_b  # B restored A's step-20 checkpoint, not a fresh start
  assert "Initializing parameters from scratch" not in log_b
  assert _steps(b)[-1] == 30
  params_a, params_b = _params(a / "checkpoint_30"), _params(b / "checkpoint_30")
  start = _params(a / "checkpoint_20")
  assert set(params_a) == set(params_b) and any("vision" in k for k in params_a)
  moved = [k for k in params_a if not np.array_equal(params_a[k], start[k])]
  assert moved  # steps 21-30 trained
  for key in params_a:
    np.testing.assert_allclose(params_b[key], params_a[key], rtol=1e-6, atol=1e-7, err_msg=key)
  assert any((a / "checkpoint_20" / "dataset").iterdir()), "no input-pipeline state saved"


@pytest.fixture(scope="module")
def t5x_metrics(env, trained):
  a = trained[0]
  out = env.base / "t5x_eval"
  env.t5x("eval", "eval", a, f"EVAL_OUTPUT_DIR='{out}'", name="eval")
  metrics = {}
  for path in glob.glob(str(out / "**" / "*-metrics.jsonl"), recursive=True):
    task = os.path.basename(path).removesuffix("-metrics.jsonl")
    with open(path) as f:
      lines = [json.loads(line) for line in f if line.strip()]
    metrics[task] = lines[-1]
  return metrics


def test_t5x_eval_reports_every_paper_metric(t5x_metrics):
  """Real t5x.eval over multimedbench_eval: all 14 tasks report their paper metrics, and the
  classification tasks' macro-AUC / macro-F1 are computed from the rank-classification rows
  (never "not computed" for want of per-option scores)."""
  assert set(t5x_metrics) == set(paper_results.TASKS)
  for task, values in t5x_metrics.items():
    for row in paper_results.results_for(task):
      assert row.metric in values, (task, row.metric)
  for suffix in CLASSIFICATION:
    values = t5x_metrics[f"multimedbench_{suffix}"]
    for metric in ("macro_auc", "macro_f1"):
      assert NOT_SCORED not in str(values.get(f"{metric}_status", "")), (suffix, values)
    assert any(k.startswith("auc/") for k in values), suffix
    assert isinstance(values["macro_f1"], float) and not math.isnan(values["macro_f1"]), suffix
  for suffix in ("pad_ufes_20", "mimic_cxr_classification"):  # several classes in the data
    value = t5x_metrics[f"multimedbench_{suffix}"]["macro_auc"]
    assert isinstance(value, float) and 0.0 <= value <= 100.0, (suffix, value)


MEDPALM_EVAL = textwrap.dedent("""
    import json, sys
    import numpy as np
    import orbax.checkpoint as ocp
    import tasks  # noqa: F401  (registers multimedbench_eval as t5x.eval sees it)
    from medpalm.model import MedPalmMModel
    from medpalm.models import configs
    from medpalm.models.medpalm_m import MedPalmM
    from medpalm.evaluation import evaluator
    from tasks import vocab

    vocabulary = vocab.get_vocabulary()
    config = configs.get_config("tiny", vocab=vocabulary, dropout_rate=0.0)
    params = ocp.PyTreeCheckpointer().restore(sys.argv[1] + "/state")["target"]
    model = MedPalmMModel(MedPalmM(config), vocabulary)
    lengths = {"inputs": 384, "targets": 32, "images": 1, "image_mask": 1}  # tiny.gin's
    results = evaluator.evaluate(
        model, params, "multimedbench_eval", split="test", sequence_length=lengths, batch_size=8
    )
    clean = lambda v: v if isinstance(v, (int, float)) else str(v)
    print("RESULTS" + json.dumps({t: {k: clean(v) for k, v in m.items()} for t, m in results.items()}))
    """)


def test_medpalm_eval_equals_t5x_eval(env, trained, t5x_metrics):
  """medpalm's own evaluator on the same checkpoint and task definitions: accuracies equal
  exactly, AUCs within 1e-6, for every task and metric both report."""
  a = trained[0]
  latest = a / f"checkpoint_{_steps(a)[-1]}"
  log = env.run(["-c", MEDPALM_EVAL, str(latest)], "medpalm_eval")
  line = next(x for x in log.splitlines() if x.startswith("RESULTS"))
  ours = json.loads(line.removeprefix("RESULTS"))
  assert set(ours) == set(t5x_metrics)
  compared = 0
  for task, values in ours.items():
    for key, value in values.items():
      theirs = t5x_metrics[task].get(key)
      if not isinstance(value, float) or not isinstance(theirs, float):
        continue
      if "accuracy" in key:
        assert value == theirs or (math.isnan(value) and math.isnan(theirs)), (task, key)
        compared += 1
      elif "auc" in key:
        assert (math.isnan(value) and math.isnan(theirs)) or abs(value - theirs) <= 1e-6, (
            task,
            key,
            value,
            theirs,
        )
        compared += 1
  assert compared >= 20


@pytest.mark.parametrize("mode", ["predict", "score"])
def test_t5x_infer_writes_jsonl_without_image_placeholders(env, trained, mode):
  """Real t5x.infer: predictions / scores of an image task as JSON lines; no prediction holds
  the image placeholder (decoded as "<img>")."""
  a = trained[0]
  out = env.base / f"infer_{mode}"
  env.t5x(
      "infer",
      "infer",
      a,
      f"CHECKPOINT_PATH='{a / f'checkpoint_{_steps(a)[-1]}'}'",
      f"INFER_OUTPUT_DIR='{out}'",
      "MIXTURE_OR_TASK_NAME='multimedbench_vqa_rad'",
      f"INFER_MODE='{mode}'",
      name=f"infer_{mode}",
  )
  # T5X names its output <task>-<mode>.jsonl-00000-of-00001 (a .COMPLETED marker beside it).
  files = [
      p
      for p in out.rglob(f"multimedbench_vqa_rad-{mode}.jsonl*")
      if not p.name.endswith(".COMPLETED")
  ]
  assert files, list(out.rglob("*"))
  rows = [json.loads(line) for p in files for line in p.read_text().splitlines() if line.strip()]
  assert len(rows) == 4  # the demo data's test split
  if mode == "predict":
    assert all(isinstance(r["prediction"], str) for r in rows)
    assert not any("<img>" in r["prediction"] for r in rows)
  else:
    assert all(isinstance(r["score"], float) and r["score"] < 0 for r in rows)
