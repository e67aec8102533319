"""`make demo`'s code path, shortened: data -> train (checkpoints, periodic eval) -> evaluation
with and without images -> metrics.json + report.md. Runs in a subprocess: the demo registers the
multimedbench tasks at its own image size and data directory."""

import json
import subprocess

import pytest

from tests.support import driver as driver_setup


@pytest.mark.slow
def test_shortened_demo_writes_its_report(tmp_path):
  out = tmp_path / "demo"
  argv = [
      driver_setup.PYTHON,
      "-m",
      "medpalm.demo",
      "--output",
      str(out),
      "--steps",
      "30",
      "--num_examples",
      "16",
      "--eval_examples",
      "8",
      "--batch_size",
      "8",
      "--eval_tasks",
      "multimedbench_medqa,multimedbench_cbis_ddsm_mass",  # a rank-classified task too
  ]
  run = subprocess.run(
      argv,
      env=driver_setup.subprocess_env(8),
      cwd=driver_setup.REPO,
      capture_output=True,
      text=True,
      timeout=900,
  )
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
  metrics = json.loads((out / "metrics.json").read_text())
  image, blank = metrics["multimedbench_vqa_rad"], metrics["multimedbench_vqa_rad_blank_images"]
  assert 0 <= image["accuracy"] <= 100 and 0 <= blank["accuracy"] <= 100
  assert metrics["summary"]["accuracy_with_images"] == image["accuracy"]
  assert "multimedbench_medqa" in metrics and "accuracy" in metrics["multimedbench_medqa"]
  # Its first examples are whole (every class option scored), so its metrics are computed.
  assert " failed: " not in run.stdout
  assert "accuracy" in metrics["multimedbench_cbis_ddsm_mass"]
  report = (out / "report.md").read_text()
  assert "with blanked images" in report and "| multimedbench_medqa | MedQA | Accuracy |" in report
  # Synthetic fixtures, said at the top and right above the table; unscored tasks left out.
  top, table = report.split("\n\n")[1], report[: report.index("| Task | Dataset |")]
  assert "synthetic fixture" in top and "not comparable to the paper" in top
  assert table.rstrip().endswith("Tasks the demo does not evaluate are left out.")
  main_table = report[report.index("| Task | Dataset |") : report.index("## Other metrics")]
  assert "| missing |" not in main_table and "| BLEU-1 |" not in main_table
  assert sorted(p.name for p in (out / "run").glob("checkpoint_*")) == ["checkpoint_30"]
  assert "step 30/30" in run.stdout and "resuming" not in run.stdout
  assert (out / "run" / "config.gin").exists() and list((out / "run" / "train").iterdir())
