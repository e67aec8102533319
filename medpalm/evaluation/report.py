"""Evaluation report: our MultiMedBench results beside the paper's, as Markdown and a PNG chart.

    python -m medpalm.evaluation.report --results_dir DIR --output docs/RESULTS.md [--chart docs/RESULTS.png]
        [--step N]

Results layout (what an evaluation run writes, one file per task and step; see
:func:`write_results`)::

    DIR/<task>/step_<N>.json      {"<task>": {"<metric>": value, ...}}

``value`` is a number in the units of ``tasks.metrics`` (percent for headline metrics), ``null``
for a metric that could not be computed, or a string (the ``<metric>_status`` sentences that say
why). SeqIO's ``JSONLogger`` output, ``DIR/<task>-metrics.jsonl`` (one ``{"step": N, ...}`` line
per evaluation), is read as well. Without ``--step`` each task's latest step is reported.

In the report, "missing" means the results directory has no value for that task and metric;
"not computed" means the metric ran but has no value (its reason is listed under the table).
Plain Python + numpy + matplotlib (Agg): no TensorFlow, no JAX.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
from typing import Any, Mapping, Optional, Sequence

from medpalm.evaluation import paper_results

MISSING = "missing"
NOT_COMPUTED = "not computed"
_STEP_FILE = re.compile(r"^step_(\d+)\.json$")
_JSONL_FILE = re.compile(r"^(.+)-metrics\.jsonl$")


@dataclasses.dataclass(frozen=True)
class TaskResult:
  """One task's metrics at one evaluation step (values as read: float, None or str)."""

  task: str
  step: int
  metrics: Mapping[str, Any]


# ----------------------------------------------------------------------------- files


def results_path(results_dir: str, task: str, step: int) -> str:
  return os.path.join(results_dir, task, f"step_{int(step)}.json")


def json_value(value) -> Any:
  """A JSON-safe value: numbers as float (NaN → None), status objects as their text."""
  text = getattr(value, "textdata", None)
  if isinstance(value, str) or text is not None:
    return value if isinstance(value, str) else str(text)
  value = getattr(value, "value", value)  # seqio.metrics.Scalar
  if value is None:
    return None
  try:
    number = float(value)
  except (TypeError, ValueError):
    return str(value)
  return None if math.isnan(number) or math.isinf(number) else number


def write_results(results_dir: str, task: str, step: int, metrics: Mapping[str, Any]) -> str:
  """Writes ``{task: metrics}`` to ``DIR/<task>/step_<N>.json`` and returns the path. ``DIR``
  may be a local or an object-store path (gs://, through etils.epath)."""
  from etils import epath

  path = results_path(results_dir, task, step)
  payload = {task: {str(k): json_value(v) for k, v in metrics.items()}}
  text = json.dumps(payload, indent=1, sort_keys=True, allow_nan=False, ensure_ascii=False)
  target = epath.Path(path)
  target.parent.mkdir(parents=True, exist_ok=True)
  if "://" in path:  # an object store's upload is atomic by itself
    target.write_text(text, encoding="utf-8")
    return path
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(path + ".tmp", path)
  return path


def _read_json(path: str) -> Any:
  with open(path, encoding="utf-8") as f:
    return json.load(f)  # Python's reader also accepts the NaN that json.dumps writes


def _candidates(results_dir: str) -> dict[str, dict[int, Mapping[str, Any]]]:
  """task → step → metrics, from both layouts."""
  found: dict[str, dict[int, Mapping[str, Any]]] = {}
  for name in sorted(os.listdir(results_dir)):
    path = os.path.join(results_dir, name)
    if os.path.isdir(path):
      for file in sorted(os.listdir(path)):
        match = _STEP_FILE.match(file)
        if match:
          payload = _read_json(os.path.join(path, file))
          if not isinstance(payload, dict) or not isinstance(payload.get(name), dict):
            raise ValueError(
                f"{os.path.join(path, file)}: expected {{{name!r}: {{metric: value}}}}"
            )
          found.setdefault(name, {})[int(match.group(1))] = payload[name]
    elif _JSONL_FILE.match(name):
      task = _JSONL_FILE.match(name).group(1)
      with open(path, encoding="utf-8") as f:
        for line in f:
          if line.strip():
            record = json.loads(line)
            step = int(record.pop("step", -1))
            found.setdefault(task, {})[step] = record
  return found


def load_results(results_dir: str, step: Optional[int] = None) -> dict[str, TaskResult]:
  """task → its results at ``step`` (default: the latest step each task has)."""
  if not os.path.isdir(results_dir):
    raise FileNotFoundError(f"Results directory {results_dir!r} does not exist.")
  out = {}
  for task, by_step in _candidates(results_dir).items():
    chosen = max(by_step) if step is None else step
    if chosen in by_step:
      out[task] = TaskResult(task, chosen, dict(by_step[chosen]))
  return out


# ----------------------------------------------------------------------------- values


def our_value(
    results: Mapping[str, TaskResult], task: str, metric: str
) -> tuple[Optional[float], str]:
  """(number or None, how to show it): a number, ``missing`` or ``not computed``."""
  result = results.get(task)
  if result is None or metric not in result.metrics:
    return None, MISSING
  value = result.metrics[metric]
  if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
    return None, NOT_COMPUTED
  return float(value), f"{value:.2f}"


def _paper(value: Optional[float]) -> str:
  return "N/A" if value is None else f"{value:.2f}"


def _cell(text: Any) -> str:
  return str(text).replace("|", "\\|").replace("\n", " ")


def _status_of(result: TaskResult, metric: str) -> Optional[str]:
  value = result.metrics.get(f"{metric}_status")
  if isinstance(value, str):
    return value
  raw = result.metrics.get(metric)
  return raw if isinstance(raw, str) else None


# ----------------------------------------------------------------------------- Markdown


def render_markdown(
    results: Mapping[str, TaskResult],
    *,
    chart: Optional[str] = None,
    results_dir: Optional[str] = None,
    scored_only: bool = False,
    table_note: Optional[str] = None,
) -> str:
  """The report: one table row per task and metric of the paper, then notes and extra metrics.

  `scored_only` leaves out every task and metric `results` has no value for (a run that scores
  a subset, such as the demo, instead of rows of "missing"); `table_note` is printed right above the table.
  """
  columns = paper_results.COLUMNS
  lines = [
      "# MultiMedBench results",
      "",
      "Our values (column *medpalm*) beside the paper's. All values are percentages. "
      f'Paper values: {paper_results.SOURCE}. "N/A": the paper names no comparable prior SOTA; '
      f'"{MISSING}": our results have no value for that task and metric; '
      f'"{NOT_COMPUTED}": the metric ran without a value (reason under Notes).',
      "",
  ]
  if results_dir:
    lines += [f"Results read from `{results_dir}`.", ""]
  if chart:
    lines += [f"![MultiMedBench results: medpalm beside Med-PaLM M]({chart})", ""]
  if table_note:
    lines += [table_note, ""]
  header = ["Task", "Dataset", "Metric", "medpalm", "step"]
  header += [paper_results.COLUMN_TITLES[c] for c in columns]
  lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  notes = []
  for task, (_, dataset) in paper_results.TASKS.items():
    result = results.get(task)
    if scored_only and result is None:
      continue
    for row in paper_results.results_for(task):
      _, shown = our_value(results, task, row.metric)
      if scored_only and shown == MISSING:
        continue
      paper = [_paper(row.value(c)) for c in columns]
      if row.prior_sota is not None and row.sota_reference:
        paper[-1] += f" {row.sota_reference}"
      step = str(result.step) if result else "–"
      name = paper_results.METRIC_NAMES[row.metric]
      lines.append(
          "| " + " | ".join(_cell(x) for x in [task, dataset, name, shown, step, *paper]) + " |"
      )
      status = _status_of(result, row.metric) if result else None
      if status:
        notes.append(f"- `{task}` {name}: {_cell(status)}")
  if notes:
    lines += ["", "## Notes", ""] + notes
  # The paper's further tables (3-6, A.3-A.8) are its own studies; a scored-only report (the
  # demo's synthetic fixtures) has nothing to set beside them.
  for table in () if scored_only else paper_results.TABLES:
    lines += ["", *render_table(table, results)]
  lines += [
      "",
      "## Other metrics",
      "",
      "Values our evaluation reports beyond the paper's table (per-class figures, counts).",
      "",
      "| Task | step | metrics |",
      "|---|---|---|",
  ]
  for task in list(paper_results.TASKS) + sorted(set(results) - set(paper_results.TASKS)):
    result = results.get(task)
    if result is None:
      if not scored_only:
        lines.append(f"| {task} | – | {MISSING} |")
      continue
    shown_keys = {row.metric for row in paper_results.PAPER_RESULTS if row.task == task}
    extra = []
    for key in sorted(result.metrics):
      value = result.metrics[key]
      if key in shown_keys or key.endswith("_status") or isinstance(value, str):
        continue
      extra.append(f"{key}={NOT_COMPUTED if value is None else format(float(value), '.4g')}")
    lines.append(f"| {task} | {result.step} | {_cell(', '.join(extra) or '–')} |")
  return "\n".join(lines) + "\n"


def _paper_cell(value) -> str:
  if value is None:
    return "–"
  return value if isinstance(value, str) else f"{value:.2f}"


def render_table(table: paper_results.PaperTable, results: Mapping[str, TaskResult]) -> list[str]:
  """Markdown lines of one further paper table, with our value (column *medpalm*) where our
  evaluation reports the same task and metric ("–": a row with no automatic counterpart)."""
  header = ["Metric", "medpalm", *table.columns]
  lines = [
      f"## {table.title}",
      "",
      f"Paper values: {table.source}.",
      "",
      "| " + " | ".join(_cell(h) for h in header) + " |",
      "|" + "---|" * len(header),
  ]
  for row in table.rows:
    ours = our_value(results, row.task, row.metric)[1] if row.task else "–"
    cells = [row.label, ours, *(_paper_cell(v) for v in row.values)]
    lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
  return lines


# ----------------------------------------------------------------------------- chart


def render_chart(results: Mapping[str, TaskResult], path: str) -> str:
  """A horizontal bar chart (PNG): per task and metric, medpalm beside Med-PaLM M 12B/84B/562B.
  A metric without our value is labelled on the chart instead of drawn."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  rows = paper_results.PAPER_RESULTS
  series = [("medpalm", "#d62728")] + [
      (paper_results.COLUMN_TITLES[c], color)
      for c, color in zip(("mpm_12b", "mpm_84b", "mpm_562b"), ("#c6dbef", "#6baed6", "#2171b5"))
  ]
  height = 0.8 / len(series)
  figure = Figure(figsize=(10, 0.5 * len(rows) + 1.5))
  FigureCanvasAgg(figure)
  axes = figure.add_subplot()
  for y, row in enumerate(rows):
    ours, shown = our_value(results, row.task, row.metric)
    values = [ours, row.mpm_12b, row.mpm_84b, row.mpm_562b]
    for k, ((label, color), value) in enumerate(zip(series, values)):
      offset = y + (k - (len(series) - 1) / 2) * height
      if value is not None:
        axes.barh(offset, value, height=height, color=color, label=label if y == 0 else None)
      elif k == 0:
        axes.text(1, offset, shown, va="center", fontsize=7, color=color)
  labels = [
      f"{paper_results.TASKS[r.task][1]} · {paper_results.METRIC_NAMES[r.metric]}" for r in rows
  ]
  axes.set_yticks(range(len(rows)), labels, fontsize=8)
  axes.set_ylim(len(rows) - 0.5, -0.5)  # first task on top, no empty margin
  axes.set_xlim(0, 105)
  axes.set_xlabel("%")
  axes.set_title("MultiMedBench: medpalm vs Med-PaLM M (arXiv:2307.14334)", pad=28)
  axes.legend(
      loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(series), fontsize=8, frameon=False
  )
  axes.grid(axis="x", alpha=0.3)
  figure.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  figure.savefig(path, format="png", dpi=80)
  return path


# ----------------------------------------------------------------------------- command line


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument(
      "--results_dir",
      required=True,
      help="directory of <task>/step_<N>.json (or <task>-metrics.jsonl) files",
  )
  parser.add_argument("--output", default="docs/RESULTS.md", help="Markdown file to write")
  parser.add_argument(
      "--chart", default=None, help="PNG chart to write (default: --output with .png)"
  )
  parser.add_argument(
      "--step",
      type=int,
      default=None,
      help="evaluation step to report (default: each task's latest)",
  )
  args = parser.parse_args(argv)
  results = load_results(args.results_dir, args.step)
  chart = args.chart or os.path.splitext(args.output)[0] + ".png"
  render_chart(results, chart)
  relative = os.path.relpath(chart, os.path.dirname(os.path.abspath(args.output)))
  markdown = render_markdown(results, chart=relative, results_dir=args.results_dir)
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w", encoding="utf-8") as f:
    f.write(markdown)
  missing = [t for t in paper_results.TASKS if t not in results]
  print(
      f"wrote {args.output} and {chart}: {len(results)} task(s) with results"
      + (f"; missing: {', '.join(missing)}" if missing else "")
  )
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
