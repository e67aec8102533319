"""The paper's tables beyond Table 2, entered as data and rendered by the report. Three numbers
per table are checked against values typed here from the paper (arXiv:2307.14334 v1)."""

import pytest

from medpalm.evaluation import paper_results as p
from medpalm.evaluation import report

# (table, row label, column, value typed from the paper) — three per table.
HAND_PICKED = [
    (p.TABLE_3, "MedQA · Accuracy", "Med-PaLM M 562B", 69.68),
    (p.TABLE_3, "VinDr-Mammo · Macro-AUC", "Med-PaLM M 84B", 71.76),
    (p.TABLE_3, "CBIS-DDSM (calcification) · Macro-F1", "Med-PaLM M 12B", 67.86),
    (p.TABLE_4, "Accuracy", "SOTA ensemble [74] (138 training samples)", 92.60),
    (p.TABLE_4, "Accuracy", "Med-PaLM M 12B (0 samples)", 86.96),
    (p.TABLE_4, "Accuracy", "Med-PaLM M 562B (0 samples)", 87.68),
    (p.TABLE_5, "Micro-F1-14", "Med-PaLM M 84B", 50.54),
    (p.TABLE_5, "F1-RadGraph", "Med-PaLM M 562B", 27.28),
    (p.TABLE_5, "BLEU-1", "SOTA (single view)", 39.48),
    (p.TABLE_6, "Macro-F1-14", "Med-PaLM M 84B (no CXR classification)", 38.92),
    (p.TABLE_6, "CIDEr-D", "Med-PaLM M 84B (full mixture)", 26.17),
    (
        p.TABLE_6,
        "CXR classification Macro-AUC (zero-shot without the task)",
        "Med-PaLM M 84B (no CXR classification)",
        73.88,
    ),
    (p.TABLE_A3, "MedQA · Accuracy", "PaLM (few-shot) [9]", 58.90),
    (p.TABLE_A3, "MedMCQA · Accuracy", "PaLM (few-shot) [9]", 54.50),
    (p.TABLE_A3, "PubMedQA · Accuracy", "PaLM (few-shot) [9]", 55.00),
    (p.TABLE_A8, "Ranked best of four (%)", "Reference", 37.14),
    (p.TABLE_A8, "Pairwise preferred over the reference (%)", "Med-PaLM M 84B", 40.50),
    (p.TABLE_A8, "Total clinical errors", "Med-PaLM M 84B", "0.25 (0.22–0.28)"),
    (p.GENOMICS_BASELINES, "SNP-F1", "DeepVariant (same examples)", 99.63),
    (p.GENOMICS_BASELINES, "Indel-F1", "DeepVariant (same examples)", 98.55),
    (p.GENOMICS_BASELINES, "Indel-F1", "GATK4", 99.32),
]


def test_three_hand_picked_numbers_per_table():
  assert {t.key for t, *_ in HAND_PICKED} == {t.key for t in p.TABLES}
  for table in p.TABLES:
    assert sum(1 for t, *_ in HAND_PICKED if t is table) == 3, table.key


@pytest.mark.parametrize("table,label,column,expected", HAND_PICKED)
def test_hand_picked_value(table, label, column, expected):
  assert table.value(label, column) == expected


def test_rows_match_their_columns_and_name_known_metrics():
  for table in p.TABLES:
    for row in table.rows:
      assert len(row.values) == len(table.columns), (table.key, row.label)
      if row.metric:
        assert row.metric in p.METRIC_NAMES or row.metric == "accuracy"


def test_report_renders_every_table_with_our_value_where_we_have_one(tmp_path):
  results = {
      "multimedbench_montgomery_tb": report.TaskResult(
          "multimedbench_montgomery_tb", 7, {"accuracy": 61.5}
      ),
      "multimedbench_mimic_cxr_report_two_view": report.TaskResult(
          "multimedbench_mimic_cxr_report_two_view", 7, {"bleu1": 12.25}
      ),
  }
  markdown = report.render_markdown(results)
  for table in p.TABLES:
    assert f"## {table.title}" in markdown
  lines = markdown.splitlines()
  tb = lines[lines.index(f"## {p.TABLE_4.title}") + 6]
  assert [c.strip() for c in tb.strip("|").split("|")] == [
      "Accuracy",
      "61.50",
      "92.60",
      "86.96",
      "82.60",
      "87.68",
  ]
  section = markdown.split(f"## {p.TABLE_5.title}")[1].split("\n## ")[0]
  assert "| BLEU-1 | 12.25 | 39.48 | 33.31 | 34.58 | 33.83 |" in section
  assert "| Macro-F1-5 | missing | – | 48.33 | 51.23 | 48.49 |" in section
  a8 = markdown.split(f"## {p.TABLE_A8.title}")[1].split("\n## ")[0]
  assert "| Total clinical errors | – | – | 0.28 (0.24–0.31) | 0.25 (0.22–0.28) |" in a8
