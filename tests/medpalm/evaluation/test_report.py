"""The evaluation report: results files → Markdown beside the paper's table, and a PNG chart."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from medpalm.evaluation import paper_results
from medpalm.evaluation import report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPO = str(pathlib.Path(__file__).resolve().parents[3])


def synthetic_results(seed=0):
  """Per task: every paper metric (a value near the paper's 84B one) plus an extra count."""
  rng = np.random.default_rng(seed)
  out = {}
  for task in paper_results.TASKS:
    metrics = {
        row.metric: round(float(row.mpm_84b + rng.uniform(-5, 5)), 3)
        for row in paper_results.results_for(task)
    }
    metrics["num_examples"] = float(rng.integers(10, 100))
    out[task] = metrics
  return out


def write_all(results_dir, results, step):
  for task, metrics in results.items():
    report.write_results(str(results_dir), task, step, metrics)


def test_report_renders_every_task_and_the_paper_values(tmp_path):
  results = synthetic_results()
  write_all(tmp_path / "results", results, step=1000)
  output = tmp_path / "docs" / "RESULTS.md"
  assert report.main(["--results_dir", str(tmp_path / "results"), "--output", str(output)]) == 0
  markdown = output.read_text()
  for task, metrics in results.items():
    assert task in markdown
    for row in paper_results.results_for(task):
      line = next(
          l
          for l in markdown.splitlines()
          if l.startswith(f"| {task} |") and f"| {paper_results.METRIC_NAMES[row.metric]} |" in l
      )
      cells = [c.strip() for c in line.strip("|").split("|")]
      assert cells[3] == f"{metrics[row.metric]:.2f}"
      assert cells[4] == "1000"
      assert cells[5:8] == [f"{row.mpm_12b:.2f}", f"{row.mpm_84b:.2f}", f"{row.mpm_562b:.2f}"]
      assert cells[8] == f"{row.palm_e_84b:.2f}"
      assert cells[9].startswith("N/A" if row.prior_sota is None else f"{row.prior_sota:.2f}")
  assert paper_results.SOURCE in markdown
  assert "num_examples=" in markdown  # extra metrics are listed too
  assert "missing" not in markdown.split("| Task |")[1].split("\n## ")[0]
  assert "(RESULTS.png)" in markdown

  chart = tmp_path / "docs" / "RESULTS.png"
  data = chart.read_bytes()
  assert data.startswith(PNG_SIGNATURE)
  import matplotlib.image  # pylint: disable=g-import-not-at-top

  image = matplotlib.image.imread(str(chart))
  assert image.ndim == 3 and image.shape[0] > 400 and image.shape[1] > 400
  assert image.std() > 0.05  # something was drawn


def test_missing_and_not_computed_values_are_shown_as_such(tmp_path):
  results = synthetic_results(seed=1)
  del results["multimedbench_slake"]
  results["multimedbench_mimic_iii"]["f1_radgraph"] = float("nan")
  results["multimedbench_mimic_iii"][
      "f1_radgraph_status"
  ] = "not computed: no RadGraph scorer installed"
  del results["multimedbench_vqa_rad"]["token_f1"]
  write_all(tmp_path, results, step=5)
  saved = json.loads((tmp_path / "multimedbench_mimic_iii" / "step_5.json").read_text())
  assert saved["multimedbench_mimic_iii"]["f1_radgraph"] is None  # NaN is stored as null

  loaded = report.load_results(str(tmp_path))
  markdown = report.render_markdown(loaded)
  rows = {
      tuple(c.strip() for c in l.strip("|").split("|")[:3]): l.strip("|").split("|")[3].strip()
      for l in markdown.split("## Notes")[0].splitlines()
      if l.startswith("| multimedbench_")
  }
  assert rows[("multimedbench_slake", "Slake-VQA", "BLEU-1")] == report.MISSING
  assert rows[("multimedbench_vqa_rad", "VQA-RAD", "F1")] == report.MISSING
  assert rows[("multimedbench_mimic_iii", "MIMIC-III", "F1-RadGraph")] == report.NOT_COMPUTED
  assert "no RadGraph scorer installed" in markdown.split("## Notes")[1]
  report.render_chart(loaded, str(tmp_path / "chart.png"))  # missing values do not break it
  assert (tmp_path / "chart.png").read_bytes().startswith(PNG_SIGNATURE)


def test_no_results_at_all_renders_the_paper_table(tmp_path):
  markdown = report.render_markdown(report.load_results(str(tmp_path)))
  rows = [
      l
      for l in markdown.split("## Other metrics")[0].splitlines()
      if l.startswith("| multimedbench_")
  ]
  assert len(rows) == len(paper_results.PAPER_RESULTS)
  assert all(f"| {report.MISSING} |" in row for row in rows)


def test_command_line(tmp_path):
  write_all(tmp_path / "results", synthetic_results(seed=2), step=3)
  out = subprocess.run(
      [
          sys.executable,
          "-m",
          "medpalm.evaluation.report",
          "--results_dir",
          str(tmp_path / "results"),
          "--output",
          str(tmp_path / "RESULTS.md"),
          "--chart",
          str(tmp_path / "c" / "chart.png"),
      ],
      capture_output=True,
      text=True,
      check=True,
      cwd=REPO,
  )
  assert "14 task(s) with results" in out.stdout
  assert "(c/chart.png)" in (tmp_path / "RESULTS.md").read_text()
  assert (tmp_path / "c" / "chart.png").read_bytes().startswith(PNG_SIGNATURE)


def test_latest_step_by_default_and_a_chosen_step(tmp_path):
  report.write_results(str(tmp_path), "multimedbench_medqa", 100, {"accuracy": 30.0})
  report.write_results(str(tmp_path), "multimedbench_medqa", 2000, {"accuracy": 45.5})
  report.write_results(str(tmp_path), "multimedbench_pubmedqa", 100, {"accuracy": 60.0})
  latest = report.load_results(str(tmp_path))
  assert latest["multimedbench_medqa"].step == 2000
  assert report.our_value(latest, "multimedbench_medqa", "accuracy") == (45.5, "45.50")
  at_100 = report.load_results(str(tmp_path), step=100)
  assert at_100["multimedbench_medqa"].metrics["accuracy"] == 30.0
  at_2000 = report.load_results(str(tmp_path), step=2000)
  assert "multimedbench_pubmedqa" not in at_2000


def test_reads_seqio_json_logger_files(tmp_path):
  lines = [
      {"step": 10, "accuracy": 20.0, "no_option_count": 3.0},
      {"step": 20, "accuracy": 25.0, "no_option_count": 1.0},
  ]
  (tmp_path / "multimedbench_medmcqa-metrics.jsonl").write_text(
      "\n".join(json.dumps(l) for l in lines) + "\n"
  )
  loaded = report.load_results(str(tmp_path))
  assert loaded["multimedbench_medmcqa"].step == 20
  assert report.our_value(loaded, "multimedbench_medmcqa", "accuracy")[0] == 25.0
  # SeqIO writes NaN literally (json.dumps default); it is shown as not computed.
  with open(tmp_path / "multimedbench_medmcqa-metrics.jsonl", "a") as f:
    f.write(json.dumps({"step": 30, "accuracy": float("nan")}) + "\n")
  loaded = report.load_results(str(tmp_path))
  assert report.our_value(loaded, "multimedbench_medmcqa", "accuracy") == (
      None,
      report.NOT_COMPUTED,
  )


def test_write_results_accepts_metric_objects_and_numpy(tmp_path):
  class Text:  # the shape of seqio.metrics.Text
    textdata = "undefined: only one class present in targets"

  class Scalar:  # the shape of seqio.metrics.Scalar
    value = np.float32(12.5)

  path = report.write_results(
      str(tmp_path),
      "multimedbench_vindr_mammo",
      7,
      {
          "macro_auc": np.float64("nan"),
          "macro_auc_status": Text(),
          "macro_f1": Scalar(),
          "no_option_count": np.int64(2),
      },
  )
  saved = json.loads(open(path).read())["multimedbench_vindr_mammo"]
  assert saved == {
      "macro_auc": None,
      "macro_auc_status": Text.textdata,
      "macro_f1": 12.5,
      "no_option_count": 2.0,
  }


def test_bad_results_files_are_errors(tmp_path):
  with pytest.raises(FileNotFoundError):
    report.load_results(str(tmp_path / "nope"))
  (tmp_path / "multimedbench_medqa").mkdir()
  (tmp_path / "multimedbench_medqa" / "step_1.json").write_text('{"accuracy": 3}')
  with pytest.raises(ValueError, match="expected"):
    report.load_results(str(tmp_path))


def test_paper_table_has_the_metrics_of_each_task():
  expected = {
      "multimedbench_medqa": ["accuracy"],
      "multimedbench_medmcqa": ["accuracy"],
      "multimedbench_pubmedqa": ["accuracy"],
      "multimedbench_mimic_iii": ["rougeL", "bleu", "f1_radgraph"],
      "multimedbench_vqa_rad": ["bleu1", "token_f1"],
      "multimedbench_slake": ["bleu1", "token_f1"],
      "multimedbench_path_vqa": ["bleu1", "token_f1"],
      "multimedbench_mimic_cxr_report": [
          "micro_f1_14",
          "macro_f1_14",
          "micro_f1_5",
          "macro_f1_5",
          "f1_radgraph",
          "bleu1",
          "bleu4",
          "rougeL",
          "cider_d",
      ],
      "multimedbench_precisionfda": ["indel_f1", "snp_f1"],
  }
  for task in paper_results.TASKS:
    metrics = [row.metric for row in paper_results.results_for(task)]
    assert metrics == expected.get(task, ["macro_auc", "macro_f1"]), task
  for row in paper_results.PAPER_RESULTS:
    values = [row.value(c) for c in paper_results.COLUMNS if row.value(c) is not None]
    assert all(0 <= v <= 100 for v in values), row
    assert (row.prior_sota is None) == (row.sota_reference == ""), row
  assert len(paper_results.PAPER_RESULTS) == 33  # rows of the paper's Table 2


def test_report_modules_import_without_tensorflow_or_jax():
  code = (
      "import sys, medpalm.evaluation.report, medpalm.evaluation.paper_results; "
      "print(sorted(m for m in ('tensorflow', 'jax', 'seqio') if m in sys.modules))"
  )
  out = subprocess.run(
      [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
  )
  assert out.stdout.strip() == "[]"


def test_scored_only_leaves_out_tasks_without_results_and_shows_the_note(tmp_path):
  results = synthetic_results(seed=2)
  kept = {t: results[t] for t in ("multimedbench_medqa", "multimedbench_vqa_rad")}
  del kept["multimedbench_vqa_rad"]["token_f1"]  # a metric not scored: its row is left out too
  write_all(tmp_path, kept, step=7)
  loaded = report.load_results(str(tmp_path))
  markdown = report.render_markdown(loaded, scored_only=True, table_note="Synthetic fixtures.")
  task_rows = [l.split("|")[1].strip() for l in markdown.splitlines() if l.startswith("| multi")]
  assert set(task_rows) == set(kept)
  assert "| multimedbench_vqa_rad | VQA-RAD | F1 |" not in markdown
  assert "| multimedbench_vqa_rad | VQA-RAD | BLEU-1 |" in markdown
  assert report.MISSING not in markdown.split('"missing"')[-1]  # only the legend names it
  table = markdown.index("| Task | Dataset |")
  assert markdown.rindex("Synthetic fixtures.", 0, table) > markdown.index("# MultiMedBench")
  full = report.render_markdown(loaded)  # the default still lists every task
  assert "| multimedbench_slake |" in full and "Synthetic fixtures." not in full
