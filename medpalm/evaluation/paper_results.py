"""The paper's MultiMedBench results, entered once as data.

Source: Tu et al., "Towards Generalist Biomedical AI", arXiv:2307.14334 v1 (26 Jul 2023):
Table 2 (prior SOTA with its citation, PaLM-E 84B without medical finetuning) and Table 3 /
Tables A.3-A.7 (Med-PaLM M 12B, 84B, 562B). All values are percentages. ``None`` is the paper's
"N/A" (no comparable prior SOTA). Values were read from the arXiv v1 text and cross-checked
between Table 2, Table 3 and the appendix tables; the NEJM AI (2024) version was not compared.

Metric keys are the keys that ``tasks.metrics`` returns, so a results file and this table line up
without a translation step. Pure Python: importable without TensorFlow or JAX.

The paper's other tables are ``TABLES`` (PaperTable: rows × the paper's columns): Table 3 (with
A.4-A.7, per model size), Table 4 (zero-shot tuberculosis), Table 5 (two-view reports), Table 6
(positive-transfer ablation), Table A.3 (PaLM few-shot QA), Table A.8 (radiologist evaluation)
and the variant-calling baselines (DeepVariant on the same data, GATK4).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

SOURCE = (
    "Tu et al., Towards Generalist Biomedical AI, arXiv:2307.14334 v1 (2023), Table 2 "
    "(prior SOTA, PaLM-E 84B) and Table 3 / Tables A.3-A.7 (Med-PaLM M 12B/84B/562B)"
)

# Paper columns, in the order a report shows them, with their titles.
COLUMNS = ("mpm_12b", "mpm_84b", "mpm_562b", "palm_e_84b", "prior_sota")
COLUMN_TITLES = {
    "mpm_12b": "Med-PaLM M 12B",
    "mpm_84b": "Med-PaLM M 84B",
    "mpm_562b": "Med-PaLM M 562B",
    "palm_e_84b": "PaLM-E 84B",
    "prior_sota": "Prior SOTA",
}

# Task name → (task type, dataset as the paper names it), in the paper's order.
TASKS = {
    "multimedbench_medqa": ("Question answering", "MedQA"),
    "multimedbench_medmcqa": ("Question answering", "MedMCQA"),
    "multimedbench_pubmedqa": ("Question answering", "PubMedQA"),
    "multimedbench_mimic_iii": ("Report summarization", "MIMIC-III"),
    "multimedbench_vqa_rad": ("Visual question answering", "VQA-RAD"),
    "multimedbench_slake": ("Visual question answering", "Slake-VQA"),
    "multimedbench_path_vqa": ("Visual question answering", "Path-VQA"),
    "multimedbench_mimic_cxr_report": ("Report generation", "MIMIC-CXR"),
    "multimedbench_mimic_cxr_classification": (
        "Medical image classification",
        "MIMIC-CXR (5 conditions)",
    ),
    "multimedbench_pad_ufes_20": ("Medical image classification", "PAD-UFES-20"),
    "multimedbench_vindr_mammo": ("Medical image classification", "VinDr-Mammo"),
    "multimedbench_cbis_ddsm_mass": ("Medical image classification", "CBIS-DDSM (mass)"),
    "multimedbench_cbis_ddsm_calc": ("Medical image classification", "CBIS-DDSM (calcification)"),
    "multimedbench_precisionfda": ("Genomic variant calling", "PrecisionFDA (Truth Challenge V2)"),
}

# Metric key → the paper's name for it.
METRIC_NAMES = {
    "accuracy": "Accuracy",
    "rougeL": "ROUGE-L",
    "bleu": "BLEU",
    "f1_radgraph": "F1-RadGraph",
    "bleu1": "BLEU-1",
    "token_f1": "F1",
    "micro_f1_14": "Micro-F1-14",
    "macro_f1_14": "Macro-F1-14",
    "micro_f1_5": "Micro-F1-5",
    "macro_f1_5": "Macro-F1-5",
    "bleu4": "BLEU-4",
    "cider_d": "CIDEr-D",
    "macro_auc": "Macro-AUC",
    "macro_f1": "Macro-F1",
    "indel_f1": "Indel-F1",
    "snp_f1": "SNP-F1",
}


@dataclasses.dataclass(frozen=True)
class PaperResult:
  """One row of the paper's table: a task, a metric, and the value of each column (in %)."""

  task: str
  metric: str
  prior_sota: Optional[float]
  sota_reference: str
  palm_e_84b: float
  mpm_12b: float
  mpm_84b: float
  mpm_562b: float

  def value(self, column: str) -> Optional[float]:
    return getattr(self, column)

  @property
  def best(self) -> float:
    """The best Med-PaLM M size (the bold "Med-PaLM M (Best)" column of Table 2)."""
    return max(self.mpm_12b, self.mpm_84b, self.mpm_562b)


def _rows(task: str, *rows) -> list[PaperResult]:
  return [PaperResult(task, *row) for row in rows]


# (metric, prior SOTA, its citation in the paper, PaLM-E 84B, MPM 12B, MPM 84B, MPM 562B)
PAPER_RESULTS: tuple[PaperResult, ...] = tuple(
    _rows("multimedbench_medqa", ("accuracy", 86.50, "[61] Med-PaLM 2", 28.83, 29.22, 46.11, 69.68))
    + _rows(
        "multimedbench_medmcqa", ("accuracy", 72.30, "[61] Med-PaLM 2", 33.35, 32.20, 47.60, 62.59)
    )
    + _rows(
        "multimedbench_pubmedqa", ("accuracy", 81.80, "[61] Med-PaLM 2", 64.00, 48.60, 71.40, 80.00)
    )
    + _rows(
        "multimedbench_mimic_iii",
        ("rougeL", 38.70, "[62] clinical-T5 (LoRA)", 3.30, 29.45, 31.47, 32.03),
        ("bleu", 16.20, "[62] clinical-T5 (LoRA)", 0.34, 12.14, 15.36, 15.21),
        ("f1_radgraph", 40.80, "[62] clinical-T5 (LoRA)", 8.00, 31.43, 33.96, 34.71),
    )
    + _rows(
        "multimedbench_vqa_rad",
        ("bleu1", 71.03, "[63]", 59.19, 64.02, 69.38, 71.27),
        ("token_f1", None, "", 38.67, 50.66, 59.90, 62.06),
    )
    + _rows(
        "multimedbench_slake",
        ("bleu1", 78.60, "[64]", 52.65, 90.77, 92.70, 91.64),
        ("token_f1", 78.10, "[64]", 24.53, 86.22, 89.28, 87.50),
    )
    + _rows(
        "multimedbench_path_vqa",
        ("bleu1", 70.30, "[64]", 54.92, 68.97, 70.16, 72.27),
        ("token_f1", 58.40, "[64]", 29.68, 57.24, 59.51, 62.69),
    )
    + _rows(
        "multimedbench_mimic_cxr_report",
        ("micro_f1_14", 44.20, "[65]", 15.40, 51.41, 53.56, 51.60),
        ("macro_f1_14", 30.70, "[65]", 10.11, 37.31, 39.83, 37.81),
        ("micro_f1_5", 56.70, "[66]", 5.51, 56.54, 57.88, 56.28),
        ("macro_f1_5", None, "", 4.85, 50.57, 51.60, 49.86),
        ("f1_radgraph", 24.40, "[14]", 11.66, 25.20, 26.71, 26.06),
        ("bleu1", 39.48, "[65]", 19.86, 30.90, 32.31, 31.73),
        ("bleu4", 13.30, "[66]", 4.60, 10.43, 11.31, 11.50),
        ("rougeL", 29.60, "[67]", 16.53, 26.16, 27.29, 27.49),
        ("cider_d", 49.50, "[68]", 3.50, 23.43, 26.17, 25.27),
    )
    + _rows(
        "multimedbench_mimic_cxr_classification",
        ("macro_auc", 81.27, "[69] ParallelXNet", 51.48, 76.67, 78.35, 79.09),
        ("macro_f1", None, "", 7.83, 38.33, 36.83, 41.57),
    )
    + _rows(
        "multimedbench_pad_ufes_20",
        ("macro_auc", None, "", 63.37, 95.57, 97.27, 96.08),
        ("macro_f1", None, "", 1.38, 78.42, 84.32, 77.03),
    )
    + _rows(
        "multimedbench_vindr_mammo",
        ("macro_auc", 64.50, "[49] BenchMD", 51.49, 66.29, 71.76, 71.42),
        ("macro_f1", None, "", 16.06, 29.81, 35.70, 33.90),
    )
    + _rows(
        "multimedbench_cbis_ddsm_mass",
        ("macro_auc", None, "", 47.75, 70.11, 73.09, 73.31),
        ("macro_f1", None, "", 7.77, 47.23, 49.98, 51.12),
    )
    + _rows(
        "multimedbench_cbis_ddsm_calc",
        ("macro_auc", None, "", 40.67, 81.40, 82.22, 80.90),
        ("macro_f1", 70.71, "[70]", 11.37, 67.86, 63.81, 63.03),
    )
    + _rows(
        "multimedbench_precisionfda",
        ("indel_f1", 99.40, "[71] DeepVariant", 53.01, 96.42, 97.04, 95.46),
        ("snp_f1", 99.70, "[71] DeepVariant", 52.84, 99.35, 99.32, 99.16),
    )
)


def results_for(task: str) -> list[PaperResult]:
  """The paper's rows for one task, in the paper's metric order."""
  if task not in TASKS:
    raise KeyError(f"Unknown task {task!r}; known: {sorted(TASKS)}")
  return [row for row in PAPER_RESULTS if row.task == task]


# ----------------------------------------------------------------------------- further tables


@dataclasses.dataclass(frozen=True)
class TableRow:
  """One row of a further paper table: a label, one value per column (a percentage, a text such
  as "0.08 (0.06–0.10)", or None for the paper's "–"), and the (task, metric) our evaluation
  reports it under, if it reports it at all."""

  label: str
  values: tuple[Optional[float | str], ...]
  task: Optional[str] = None
  metric: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class PaperTable:
  """A table of the paper beside Table 2, as its rows × columns (column titles as printed)."""

  key: str
  title: str
  source: str
  columns: tuple[str, ...]
  rows: tuple[TableRow, ...]

  def value(self, label: str, column: str) -> Optional[float | str]:
    row = next((r for r in self.rows if r.label == label), None)
    if row is None:
      raise KeyError(f"{self.key}: no row {label!r}; rows: {[r.label for r in self.rows]}")
    return row.values[self.columns.index(column)]


def _metric_rows(task: str, rows) -> tuple[TableRow, ...]:
  return tuple(TableRow(METRIC_NAMES[m], tuple(v), task, m) for m, *v in rows)


_REPORT_METRICS = (
    "micro_f1_14",
    "macro_f1_14",
    "micro_f1_5",
    "macro_f1_5",
    "f1_radgraph",
    "bleu1",
    "bleu4",
    "rougeL",
    "cider_d",
)
_SIZES = ("Med-PaLM M 12B", "Med-PaLM M 84B", "Med-PaLM M 562B")

# Table 3 and its per-task-type appendix Tables A.4-A.7 print the per-size values Table 2 is
# built from; they are kept once, in PAPER_RESULTS, and shown here per size.
TABLE_3 = PaperTable(
    "table_3",
    "Table 3 (and A.4-A.7): Med-PaLM M per model size",
    "arXiv:2307.14334 v1, Table 3 and Tables A.4-A.7",
    _SIZES,
    tuple(
        TableRow(
            f"{TASKS[r.task][1]} · {METRIC_NAMES[r.metric]}",
            (r.mpm_12b, r.mpm_84b, r.mpm_562b),
            r.task,
            r.metric,
        )
        for r in PAPER_RESULTS
    ),
)

TABLE_4 = PaperTable(
    "table_4",
    "Table 4: zero-shot tuberculosis detection, Montgomery County (138 CXRs: 80 normal, 58 TB)",
    "arXiv:2307.14334 v1, Table 4 (the SOTA ensemble of EfficientNets [74] trained on the 138)",
    ("SOTA ensemble [74] (138 training samples)",) + tuple(s + " (0 samples)" for s in _SIZES),
    (
        TableRow(
            "Accuracy", (92.60, 86.96, 82.60, 87.68), "multimedbench_montgomery_tb", "accuracy"
        ),
    ),
)

TABLE_5 = PaperTable(
    "table_5",
    "Table 5: zero-shot two-view (frontal + lateral) MIMIC-CXR report generation",
    "arXiv:2307.14334 v1, Table 5 (SOTA: single view, as in Table 2)",
    ("SOTA (single view)",) + _SIZES,
    _metric_rows(
        "multimedbench_mimic_cxr_report_two_view",
        zip(
            _REPORT_METRICS,
            (44.20, 30.70, 56.70, None, 24.40, 39.48, 13.30, 29.60, 49.50),
            (49.80, 37.69, 54.49, 48.33, 26.73, 33.31, 11.51, 27.84, 27.58),
            (50.54, 37.78, 56.37, 51.23, 28.30, 34.58, 12.44, 28.71, 29.80),
            (48.85, 37.29, 54.36, 48.49, 27.28, 33.83, 12.47, 28.49, 29.80),
        ),
    ),
)

TABLE_6 = PaperTable(
    "table_6",
    "Table 6: positive transfer, Med-PaLM M 84B with and without MIMIC-CXR classification "
    "(medpalm: the results directory given, e.g. the multimedbench_without_cxr_classification "
    "run's evaluation)",
    "arXiv:2307.14334 v1, Table 6",
    ("Med-PaLM M 84B (full mixture)", "Med-PaLM M 84B (no CXR classification)"),
    _metric_rows(
        "multimedbench_mimic_cxr_report",
        zip(
            _REPORT_METRICS,
            (53.56, 39.83, 57.88, 51.60, 26.71, 32.31, 11.31, 27.29, 26.17),
            (52.94, 38.92, 57.58, 51.32, 26.08, 31.72, 10.87, 26.67, 25.17),
        ),
    )
    + (
        TableRow(
            "CXR classification Macro-AUC (zero-shot without the task)",
            (78.35, 73.88),
            "multimedbench_mimic_cxr_classification",
            "macro_auc",
        ),
        TableRow(
            "CXR classification Macro-F1 (zero-shot without the task)",
            (36.83, 43.97),
            "multimedbench_mimic_cxr_classification",
            "macro_f1",
        ),
    ),
)

TABLE_A3 = PaperTable(
    "table_a3",
    "Table A.3: medical question answering, PaLM few-shot beside Med-PaLM M",
    "arXiv:2307.14334 v1, Table A.3 (PaLM few-shot: Singhal et al. [9])",
    ("PaLM (few-shot) [9]",) + _SIZES,
    tuple(
        TableRow(
            f"{TASKS[task][1]} · Accuracy",
            (palm, *(r.value(c) for c in ("mpm_12b", "mpm_84b", "mpm_562b"))),
            task,
            "accuracy",
        )
        for task, palm in (
            ("multimedbench_medqa", 58.90),
            ("multimedbench_medmcqa", 54.50),
            ("multimedbench_pubmedqa", 55.00),
        )
        for r in results_for(task)
    ),
)

TABLE_A8 = PaperTable(
    "table_a8",
    "Table A.8: radiologist evaluation of 246 MIMIC-CXR reports (human raters: no automatic "
    "counterpart)",
    "arXiv:2307.14334 v1, §6.3 and Table A.8 (independent evaluation: mean per report, 95 % CI)",
    ("Reference",) + _SIZES,
    (
        TableRow("Ranked best of four (%)", (37.14, 19.49, 25.78, 17.59)),
        TableRow("Pairwise preferred over the reference (%)", (None, 34.05, 40.50, 32.00)),
        TableRow(
            "Significant omissions",
            (None, "0.08 (0.06–0.10)", "0.09 (0.07–0.10)", "0.10 (0.08–0.12)"),
        ),
        TableRow(
            "Total omissions", (None, "0.12 (0.10–0.15)", "0.12 (0.10–0.15)", "0.13 (0.11–0.16)")
        ),
        TableRow(
            "Significant clinical errors",
            (None, "0.26 (0.22–0.29)", "0.23 (0.20–0.27)", "0.26 (0.23–0.29)"),
        ),
        TableRow(
            "Total clinical errors",
            (None, "0.28 (0.24–0.31)", "0.25 (0.22–0.28)", "0.29 (0.25–0.32)"),
        ),
        TableRow(
            "Total errors", (None, "0.58 (0.53–0.63)", "0.59 (0.54–0.64)", "0.63 (0.58–0.68)")
        ),
    ),
)

GENOMICS_BASELINES = PaperTable(
    "genomics_baselines",
    "Variant calling baselines, PrecisionFDA HG002 chr20:3,000,001-9,444,417",
    "arXiv:2307.14334 v1, §A.3 text (DeepVariant trained on the same 197,038 examples; GATK4; "
    "Table 2's SOTA DeepVariant [71])",
    ("DeepVariant (same examples)", "GATK4", "DeepVariant SOTA [71]") + _SIZES,
    _metric_rows(
        "multimedbench_precisionfda",
        (
            ("indel_f1", 98.55, 99.32, 99.40, 96.42, 97.04, 95.46),
            ("snp_f1", 99.63, 99.29, 99.70, 99.35, 99.32, 99.16),
        ),
    ),
)

TABLES: tuple[PaperTable, ...] = (
    TABLE_3,
    TABLE_4,
    TABLE_5,
    TABLE_6,
    TABLE_A3,
    TABLE_A8,
    GENOMICS_BASELINES,
)
