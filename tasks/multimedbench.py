"""The 14 MultiMedBench SeqIO tasks and the mixtures ``multimedbench``, ``multimedbench_eval``,
``multimedbench_demo``.

Per task: source → prompt preprocessor (tokenize, budget, image placeholders) → append EOS. The
source is resumable (no Python generator anywhere: tf.data cannot checkpoint one): an in-memory table of rendered
query segments (one row per example) read by index, joined for image tasks with the prepared image
shards (tasks.prepare):

  text task    range(E) [shuffled] -> gather table row -> + zero image (image_mask False)
  image task   shard order [shuffled] -> interleave(zip(shard records, that shard's rows grouped
               per image)) -> flat_map: one example per row, each with its image (mask True)

Prompts are rendered in Python (tasks.prompts) when the table is built; exemplars are row indices
into a bounded per-task exemplar table drawn from the training split.

Mixing: ``multimedbench`` interleaves its tasks along a fixed proportional schedule
(`proportional_interleave`) rather than sampling at random, so the paper's rates hold within one
example over any window (a 0.15 % task still appears), and the choice sequence is checkpointable.

Resuming: a tf.train.Checkpoint of the mixture's iterator restores the exact stream once every
task has produced an element (measured; a shuffled sub-iterator saved before its first element
re-draws its shuffle seed on restore — still valid data, not the same order). With the schedule
every task has appeared after 667 examples.

Metrics: ``metric_fns`` are tasks.metrics.TASK_METRICS. Every split but ``train`` also carries
the reader's ``answer_options`` / ``answer_type`` / ``condition`` / ``variant_type`` per example
(postprocessors.TARGET_FIELDS; the feature converter leaves them out of the model batch), and the
target postprocessor (postprocessors.TargetFields) hands them to the metrics with the answer.

Rank classification, the SeqIO way: the macro-AUC of the RANK_CLASSIFIED tasks needs a
log-likelihood per class option, so their evaluation splits hold one example per (example,
option) — the same prompt, ``targets`` = that option's text — with ``idx`` = [example, option]
and ``is_correct`` (`rank_classification`, the layout of T5's ``rank_classification``
preprocessor). Any SeqIO score function (T5X's ``score_batch``, medpalm's evaluator) then scores
each option, and the score metrics regroup them per example; the generation metrics read one row
per example (option 0). ``targets_pretokenized`` stays the gold answer.

Data: ``$MEDPALM_DATA_DIR/<dataset>/`` for the text datasets, and the prepared shards for the
image datasets (``python -m tasks.prepare``); per-dataset directories can be bound in gin with
``multimedbench_data.dataset_dirs = {"mimic_cxr": "/data/mimic-cxr"}``. A missing dataset raises
the readers' MissingDatasetError (which names the directory and the official files), an image
dataset not yet prepared raises tasks.prepare.NotPreparedError (which gives the command).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
from typing import Mapping

import gin
import numpy as np
import seqio
import tensorflow as tf
from etils import epath

from medpalm import features as medpalm_features
from tasks import features as feats
from tasks import images as image_lib
from tasks import metrics, postprocessors, preprocessors, prompts, readers
from tasks import vocab as vocab_lib

PREFIX = "multimedbench"
TASKS = tuple(prompts.TEMPLATES)  # the 14 task suffixes, e.g. "vqa_rad"
EVAL_ONLY = ("pubmedqa",)
# The paper's further experiments, registered beside the 14 (evaluation only): zero-shot TB
# (Table 4: classification prompt, and Fig. 3's chain of thought), MIMIC-III's five rare
# anatomy-modality pairs, zero-shot two-view report generation (Table 5).
EXPERIMENTS = tuple(prompts.EXPERIMENT_TEMPLATES)
IMAGE_TASKS = tuple(t for t, tpl in prompts.ALL_TEMPLATES.items() if tpl.has_image)
# Tasks whose examples hold more than one image, and how many (TASK_FEATURE_LENGTHS["images"]
# must be at least that for them: tasks.features.task_feature_lengths(images=2)).
IMAGES_PER_EXAMPLE = {"mimic_cxr_report_two_view": 2}

# Table A.1 of the paper, in percent. CBIS-DDSM's 1.56 % is split between its two tasks in
# proportion to the paper's training sizes (mass 1,318, calcification 1,544).
CBIS_TRAIN_SIZES = {"cbis_ddsm_mass": 1318, "cbis_ddsm_calc": 1544}
MIXTURE_RATES: dict[str, float] = {
    "mimic_cxr_report": 59.90,
    "mimic_cxr_classification": 11.98,
    "medmcqa": 6.25,
    "pad_ufes_20": 6.25,
    "medqa": 3.13,
    "mimic_iii": 3.13,
    "slake": 2.64,
    "path_vqa": 1.90,
    "vindr_mammo": 1.56,
    **{t: 1.56 * n / sum(CBIS_TRAIN_SIZES.values()) for t, n in CBIS_TRAIN_SIZES.items()},
    "precisionfda": 1.56,
    "vqa_rad": 0.15,
}


def rates_without(task: str, rates: Mapping[str, float] | None = None) -> dict[str, float]:
  """The mixture without ``task``, its rate handed to the others in proportion to their own
  rates (the paper's positive-transfer ablation, Table 6, removes MIMIC-CXR classification and
  does not say how its 11.98 % was redistributed). The result sums to 100 %; the ratio between
  any two remaining tasks is the full mixture's."""
  rates = dict(MIXTURE_RATES if rates is None else rates)
  if task not in rates:
    raise KeyError(f"{task!r} is not in the mixture; it has {', '.join(rates)}")
  del rates[task]
  total = sum(rates.values())
  return {t: 100.0 * r / total for t, r in rates.items()}


# Table 6: the 84B model retrained without the MIMIC-CXR classification task.
ABLATION_MIXTURE = "without_cxr_classification"
ABLATION_RATES = rates_without("mimic_cxr_classification")
MULTIPLE_CHOICE = (
    "medqa",
    "medmcqa",
    "pubmedqa",
    "mimic_cxr_classification",
    "pad_ufes_20",
    "vindr_mammo",
    "cbis_ddsm_mass",
    "cbis_ddsm_calc",
    "precisionfda",
)
VQA = ("vqa_rad", "slake", "path_vqa")
UPSAMPLED = {"mimic_cxr_classification": "mimic_cxr", "vindr_mammo": "vindr_mammo"}
DEFAULT_POOL_SIZE = 4096
# Examples held by seqio's shuffle buffer per task: each carries its uint8[1, 224, 224, 3] image
# (150 KB), so 1,000 × 13 training tasks ≈ 2 GB of host memory. Sources pre-shuffle too
# (see _dataset_fn).
SHUFFLE_BUFFER = 1000


@gin.configurable("multimedbench_data")
def data_config(
    data_dir: str | None = None,
    dataset_dirs: Mapping[str, str] | None = None,
    prepared_dir: str | None = None,
    on_error: str = "raise",
    reader_options: Mapping[str, Mapping] | None = None,
) -> dict:
  """Gin-bindable data locations, read when a dataset is built (not at import).

  data_dir: root with one sub-directory per dataset (default $MEDPALM_DATA_DIR).
  dataset_dirs: per-dataset overrides, e.g. {"mimic_cxr": "/mnt/mimic-cxr-jpg"}.
  prepared_dir: root of tasks.prepare's output (default $MEDPALM_PREPARED_DIR or
    <data_dir>/prepared).
  on_error: what the text readers do with an invalid record: "raise" (an error naming file,
    line and field) or "skip" (skipped, counted and logged by the reader).
  reader_options: per-dataset keyword options of the text readers' ``read``, e.g.
    {"mimic_iii": {"split_ids_dir": "/data/van_veen_split"}} (image datasets take theirs at
    ``python -m tasks.prepare --reader_options``).
  """
  return {
      "data_dir": data_dir,
      "dataset_dirs": dict(dataset_dirs or {}),
      "prepared_dir": prepared_dir,
      "on_error": on_error,
      "reader_options": {k: dict(v) for k, v in (reader_options or {}).items()},
  }


# The split evaluated during training (loss and inference metrics every EVAL_PERIOD steps).
# Every task has one: the dataset's official validation split where it has one, otherwise a
# fixed held-out slice of its training split (then left out of "train"): HOLDOUT_FRACTION of the
# training images (or records, for text tasks), at least HOLDOUT_MIN and at most a quarter (one
# where there are 2 to 7, so that small datasets are evaluated too), chosen by a hash of the task
# and the image key / record id, so the slice never changes and never shares an image with
# training.
TRAIN_EVAL = "train_eval"
HOLDOUT_FRACTION = 0.02
HOLDOUT_MIN = 64


# Two-view studies are prepared (both images stacked) only for evaluation; the training split
# serves the text-only exemplar.
EVAL_SPLITS = {"mimic_cxr_report_two_view": ("validation", "test")}


def reader_splits(task: str) -> tuple[str, ...]:
  if task in EVAL_SPLITS:
    return EVAL_SPLITS[task]
  return tuple(readers.get_module(readers.ALL_TASK_READERS[task][0]).SPLITS)


def split_names(task: str) -> tuple[str, ...]:
  """The reader's splits, plus the train-eval split where the task trains or has a validation
  split (evaluation-only tasks have none)."""
  splits = reader_splits(task)
  return (*splits, TRAIN_EVAL) if {"train", "validation"} & set(splits) else splits


def train_eval_source(task: str) -> str:
  """Where a task's train-eval split comes from: "validation" or "train" (a held-out slice)."""
  return "validation" if "validation" in reader_splits(task) else "train"


def holdout(task: str, records: list[dict]) -> tuple[list[dict], list[dict]]:
  """(training records, held-out records) of a split without an official validation split."""
  group = lambda r: str(r.get("image_key") or r["id"])
  keys = sorted({group(r) for r in records}, key=lambda k: prompts._hash64(task, "holdout", k))
  most = max(1, len(keys) // 4) if len(keys) > 1 else 0  # never the whole split
  count = min(max(HOLDOUT_MIN, round(HOLDOUT_FRACTION * len(keys))), most)
  held = set(keys[:count])
  return [r for r in records if group(r) not in held], [r for r in records if group(r) in held]


# Classification tasks whose metrics include macro-AUC: their score-based metrics
# (tasks.metrics.classification_score_metrics / cxr_score_metrics) need one log-likelihood per
# class option, in tasks.metrics.TASK_CLASSES order (see `rank_options`).
RANK_CLASSIFIED = (
    "mimic_cxr_classification",
    "pad_ufes_20",
    "vindr_mammo",
    "cbis_ddsm_mass",
    "cbis_ddsm_calc",
)


def canonical_name(task: str) -> str:
  """``multimedbench_<task>``: the name tasks.metrics and medpalm.paper_results key by."""
  return f"{PREFIX}_{task}"


TB_TASKS = ("montgomery_tb", "montgomery_tb_cot")


def metric_fns(task: str) -> list:
  """The paper's metrics of a task (tasks.metrics.TASK_METRICS). Generation metrics take the
  postprocessed decode; score-based ones (macro-AUC of the RANK_CLASSIFIED tasks) take the
  log-likelihood of each option row (`rank_classification`) and regroup them per example."""
  name = canonical_name(task)
  return list(metrics.TASK_METRICS.get(name) or metrics.EXPERIMENT_METRICS[name])


def postprocess_fn(task: str):
  """Predictions: strip the trailing period and normalise (tasks.postprocessors); VQA also
  lower-cases; fixed class sets map to the canonical option text. Targets: the same string as
  ``answer`` of the mapping tasks.metrics reads (postprocessors.TargetFields)."""
  if task in VQA:
    base = postprocessors.normalize_lower
  elif task in TB_TASKS:  # free text (CoT): metrics.tb_accuracy extracts the Yes/No itself
    base = postprocessors.normalize
  elif task in _TASK_OPTIONS:  # fixed class set: canonical option text
    base = postprocessors.OptionPostprocessor(_TASK_OPTIONS[task])
  else:
    base = postprocessors.normalize  # MedQA / MedMCQA options differ per question; free text
  return postprocessors.TargetFields(base)


_REGISTERED: dict[str, "TaskConfig"] = {}


def task_config(name: str) -> "TaskConfig":
  """The TaskConfig a task name was registered with (any prefix)."""
  if name not in _REGISTERED:
    raise KeyError(f"{name!r} was not registered by tasks.multimedbench")
  return _REGISTERED[name]


def rank_options(name: str) -> tuple[str, ...] | None:
  """The class options a registered task's score-based metrics expect scores for, in order
  (e.g. ("No", "Yes") for MIMIC-CXR conditions), or None when the task is not rank-classified.
  """
  task = task_config(name).task
  return metrics.TASK_CLASSES[canonical_name(task)] if task in RANK_CLASSIFIED else None


_TASK_OPTIONS = {
    "pubmedqa": ["yes", "no", "maybe"],
    "mimic_cxr_classification": ["No", "Yes"],
    "pad_ufes_20": [
        "Nevus",
        "Basal Cell Carcinoma",
        "Squamous Cell Carcinoma",
        "Actinic Keratosis",
        "Seborrheic Keratosis",
        "Melanoma",
    ],
    "vindr_mammo": ["1", "2", "3", "4", "5"],
    "cbis_ddsm_mass": ["BENIGN", "BENIGN_WITHOUT_CALLBACK", "MALIGNANT"],
    "cbis_ddsm_calc": ["BENIGN", "BENIGN_WITHOUT_CALLBACK", "MALIGNANT"],
    "precisionfda": ["0", "1", "2"],
}


# --------------------------------------------------------------------------------------------
# Records and tables (Python side)


@dataclasses.dataclass(frozen=True)
class TaskConfig:
  """Everything a registered task needs besides the vocabulary (hashable: tables are cached)."""

  task: str
  name: str
  num_image_tokens: int = feats.NUM_IMAGE_TOKENS
  image_size: int = feats.IMAGE_SIZE
  exemplar_pool_size: int = DEFAULT_POOL_SIZE
  data_dir: str | None = None  # overrides multimedbench_data.data_dir / $MEDPALM_DATA_DIR
  prepared_dir: str | None = None  # overrides multimedbench_data.prepared_dir

  @property
  def dataset(self) -> str:
    return readers.ALL_TASK_READERS[self.task][0]

  @property
  def template(self) -> prompts.Template:
    return prompts.ALL_TEMPLATES[self.task]


def _prepare():
  # Imported when needed, not at import: `python -m tasks.prepare` runs that module as
  # __main__, and importing it here first would load it twice.
  from tasks import prepare

  return prepare


def _locations(cfg: TaskConfig) -> tuple[pathlib.Path | None, epath.Path | None]:
  """(dataset dir or None = readers' default, prepared root or None)."""
  conf = data_config()
  module = readers.get_module(cfg.dataset)
  root = cfg.data_dir or conf["data_dir"] or os.environ.get(readers.DATA_DIR_ENV)
  ddir = conf["dataset_dirs"].get(cfg.dataset)
  ddir = pathlib.Path(ddir) if ddir else (pathlib.Path(root) / module.DATASET_DIR if root else None)
  prepared = cfg.prepared_dir or conf["prepared_dir"]
  try:
    proot = _prepare().prepared_root(prepared, root)
  except _prepare().NotPreparedError:
    proot = None
  return ddir, proot


def _read_records(cfg: TaskConfig, split: str) -> tuple[list[dict], epath.Path | None, dict]:
  """Records of one split (+ the prepared split directory and manifest for image tasks); the
  train-eval split and, where it is held out of training, the train split (see TRAIN_EVAL)."""
  if split in (TRAIN_EVAL, "train") and train_eval_source(cfg.task) == "train":
    records, out, manifest = _read_reader_split(cfg, "train")
    kept, held = holdout(cfg.task, records)
    return (held if split == TRAIN_EVAL else kept), out, manifest
  if split == TRAIN_EVAL:
    split = "validation"
  return _read_reader_split(cfg, split)


def _read_reader_split(cfg: TaskConfig, split: str):
  ddir, proot = _locations(cfg)
  if cfg.task not in IMAGE_TASKS:
    conf = data_config()
    result = readers.read_task(
        cfg.task,
        split,
        data_dir=ddir,
        on_error=conf["on_error"],
        **conf["reader_options"].get(cfg.dataset, {}),
    )
    return result.records, None, {}
  if proot is None:
    raise _prepare().NotPreparedError(
        f"{cfg.name}: images must be prepared first: set ${readers.DATA_DIR_ENV} (or "
        f"${_prepare().PREPARED_ENV}) and run `python -m tasks.prepare {cfg.dataset}`"
    )
  out, manifest = _prepare().load_manifest(proot, cfg.dataset, cfg.image_size, split)
  text = (out / f"records-{cfg.task}.jsonl").read_text(encoding="utf-8")
  records = [json.loads(line) for line in text.splitlines() if line.strip()]
  return records, out, manifest


@functools.lru_cache(maxsize=64)
def _exemplar_pool(cfg: TaskConfig) -> tuple[tuple[dict, ...], tuple[str, ...]]:
  """(pool records, rendered exemplar texts) drawn from the training split; a template's
  hand-written exemplars are its whole table (no pool records)."""
  if cfg.template.fixed_exemplars:
    return (), tuple(cfg.template.fixed_exemplars)
  if cfg.template.num_shots == 0:
    return (), ()
  train, _, _ = _read_records(cfg, "train")
  pool = prompts.exemplar_pool(train, cfg.exemplar_pool_size, salt=cfg.task)
  return tuple(pool), tuple(cfg.template.exemplar(r) for r in pool)


@dataclasses.dataclass
class _Table:
  columns: dict[str, np.ndarray]  # per example, see preprocessors' module docstring
  image_keys: list[str]  # per example (image tasks)
  shard_dir: epath.Path | None  # local or gs://; tf.data reads its shards
  manifest: dict


@functools.lru_cache(maxsize=64)
def _table(cfg: TaskConfig, split: str) -> _Table:
  records, shard_dir, manifest = _read_records(cfg, split)
  if split == "train" and cfg.task in UPSAMPLED:
    module = readers.get_module(UPSAMPLED[cfg.task])
    records = readers.expand_repeats(records, module.train_repeats)
  template = cfg.template
  pool, _ = _exemplar_pool(cfg)
  k = template.num_shots
  groups = prompts.exemplar_groups(pool, template.match_keys)
  ids, queries, exemplars, targets = [], [], [], []
  for r in records:
    query = template.query(r)
    if tuple(s.role for s in query) != template.query_roles:
      raise ValueError(
          f"{cfg.name}: record {r.get('id')!r} renders an unexpected segment " "layout"
      )
    if template.fixed_exemplars:
      picks = list(range(k))
    else:
      picks = prompts.choose_exemplars(r, pool, k, cfg.task, template.match_keys, groups)
    ids.append(str(r["id"]))
    queries.append([s.text for s in query])
    exemplars.append(picks + [-1] * (k - len(picks)))
    targets.append(template.target(r))
  q = len(template.query_roles)
  columns = {
      "id": np.asarray(ids, dtype=object),
      "query": np.asarray(queries, dtype=object).reshape(len(records), q),
      "exemplars": np.asarray(exemplars, dtype=np.int32).reshape(len(records), k),
      "targets": np.asarray(targets, dtype=object),
  }
  if split != "train":
    columns.update(_target_field_columns(records))
  keys = [r.get("image_key", "") for r in records] if cfg.task in IMAGE_TASKS else []
  return _Table(columns, keys, shard_dir, manifest)


def _target_field_columns(records: list[dict]) -> dict[str, np.ndarray]:
  """The per-example features of postprocessors.TARGET_FIELDS, from the reader's records.

  answer_options: object[E, C] (C = the widest option list, at least 1; padded with "").
  answer_type / condition / variant_type: object[E] ("" where the record has none; variant
  types lower-cased, "snp" / "indel", as tasks.metrics counts them).
  Only evaluation splits carry them: training never reads them, and its prompt preprocessing
  stays a plain parallel map (see `_carry_target_fields`).
  """
  options = [[str(o) for o in (r.get("options") or [])] for r in records]
  width = max([1] + [len(o) for o in options])
  text = lambda r, key: str(r.get(key) or "")
  return {
      "answer_options": np.asarray(
          [o + [""] * (width - len(o)) for o in options], dtype=object
      ).reshape(len(records), width),
      "answer_type": np.asarray([text(r, "answer_type") for r in records], dtype=object),
      "condition": np.asarray([text(r, "condition") for r in records], dtype=object),
      "variant_type": np.asarray([text(r, "variant_type").lower() for r in records], dtype=object),
  }


def _carry_target_fields(prep):
  """Wraps a prompt preprocessor (which builds its output afresh) so that the
  postprocessors.TARGET_FIELDS features of the source reach the task's examples.

  Each example runs through ``prep`` as a one-element dataset and gets its fields back; the
  ``interleave`` keeps the source order (one element per input, block length 1) and runs in
  parallel. Sources without the fields (the train split) take ``prep`` as is.
  """

  def preprocessor(ds, sequence_length=None, output_features=None):
    run = functools.partial(prep, sequence_length=sequence_length, output_features=output_features)
    carried = [k for k in postprocessors.TARGET_FIELDS if k in ds.element_spec]
    if not carried:
      return run(ds)

    def one(ex):
      fields = {k: ex[k] for k in carried}
      core = tf.data.Dataset.from_tensors({k: v for k, v in ex.items() if k not in carried})
      return run(core).map(lambda out: {**out, **fields})

    return ds.interleave(
        one, cycle_length=8, block_length=1, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )

  return preprocessor


def rank_classification(options: tuple[str, ...]):
  """A SeqIO preprocessor (after the prompt preprocessor, before EOS) that turns every example of
  an evaluation split into one example per class option.

  Row k of example i keeps the example's features (prompt, image, target fields,
  ``targets_pretokenized`` = the gold answer) with ``targets`` = the tokens of option k written
  as a target is (" <option>.", EOS appended next), ``idx`` int32[2] = [i, k] and
  ``is_correct`` bool = whether option k is the gold answer. Rows are example-major, in source
  order. The train split (no target fields) passes through: training sees each example once,
  with its own target.
  """
  texts = [prompts.with_period(o) for o in options]

  def preprocessor(ds, sequence_length=None, output_features=None):
    del sequence_length
    if "answer_options" not in ds.element_spec:
      return ds
    vocabulary = output_features["targets"].vocabulary
    tokens = tf.ragged.constant(
        [list(vocabulary.encode(preprocessors.TARGET_PREFIX + t)) for t in texts], tf.int32
    )
    option_texts = tf.constant(texts)

    def expand(index, ex):
      def row(k):
        return {
            **ex,
            "targets": tokens[k],
            "idx": tf.stack([tf.cast(index, tf.int32), k]),
            "is_correct": tf.equal(ex["targets_pretokenized"], option_texts[k]),
        }

      return tf.data.Dataset.range(len(texts)).map(lambda k: row(tf.cast(k, tf.int32)))

    return ds.enumerate().flat_map(expand)

  return preprocessor


# --------------------------------------------------------------------------------------------
# tf.data sources


def _zero_image(ex, size: int):
  ex = dict(ex)
  ex["images"] = tf.zeros([1, size, size, 3], tf.uint8)
  ex["image_mask"] = tf.zeros([1], tf.bool)
  return ex


def _parse_image(size: int):
  spec = {
      "key": tf.io.FixedLenFeature([], tf.string),
      "image": tf.io.FixedLenFeature([], tf.string),
  }

  def parse(record):  # uint8[N, size, size, 3]: N = 1, or a multi-image example's images
    ex = tf.io.parse_single_example(record, spec)
    image = tf.reshape(tf.io.decode_raw(ex["image"], tf.uint8), [-1, size, size, 3])
    return ex["key"], image

  return parse


def _constant(col: np.ndarray) -> tf.Tensor:
  """A table column as a tensor: object columns are strings, also when a split is empty (TF
  would otherwise type an empty list float32)."""
  if col.dtype == object:
    return tf.constant(col.tolist(), dtype=tf.string, shape=col.shape)
  return tf.constant(col)


def _image_dataset(
    cfg: TaskConfig, table: _Table, split: str, shuffle: bool, seed
) -> tf.data.Dataset:
  """Examples joined with their prepared image.

  Shard i holds the images keys[i*shard_size:(i+1)*shard_size] (minus failed ones), in order;
  the table's rows are grouped per image in the same order, so each shard is zipped with its
  slice of groups and every group expanded into its examples (an image without examples yields
  nothing). Shuffling permutes the shards and interleaves four at a time; seqio's buffer then
  mixes examples.
  """
  manifest, sdir = table.manifest, table.shard_dir
  keys = json.loads((sdir / "keys.json").read_text())
  size = manifest["shard_size"]
  good_per_shard, good_keys = [], []
  for i, name in enumerate(manifest["shards"]):
    failed = set(json.loads((sdir / (name + ".failed.json")).read_text()))
    shard_keys = [k for k in keys[i * size : (i + 1) * size] if k not in failed]
    good_per_shard.append(len(shard_keys))
    good_keys += shard_keys
  position = {k: i for i, k in enumerate(good_keys)}
  missing = [k for k in table.image_keys if k not in position]
  if missing:
    raise _prepare().NotPreparedError(
        f"{cfg.name}/{split}: {len(missing)} example image(s) are not in the prepared shards "
        f"(first: {missing[0]}); rerun `python -m tasks.prepare {cfg.dataset}`"
    )
  where = np.asarray([position[k] for k in table.image_keys], np.int64)
  order = np.argsort(where, kind="stable")
  counts = np.bincount(where, minlength=len(good_keys)).astype(np.int64)
  grouped = {
      name: tf.RaggedTensor.from_row_lengths(_constant(col[order]), counts)
      for name, col in table.columns.items()
  }
  offsets = tf.constant(np.concatenate([[0], np.cumsum(good_per_shard)]), tf.int64)
  files = tf.constant([str(sdir / name) for name in manifest["shards"]])
  parse = _parse_image(cfg.image_size)

  def shard(i):
    images = tf.data.TFRecordDataset(files[i]).map(parse)
    groups = tf.data.Dataset.range(offsets[i], offsets[i + 1]).map(
        lambda g: {name: col[g] for name, col in grouped.items()}
    )
    return tf.data.Dataset.zip(images, groups)

  def expand(image_record, group):
    _, image = image_record
    n = tf.shape(group["id"])[0]
    per_example = dict(group)
    per_example["images"] = tf.repeat(image[tf.newaxis], n, axis=0)
    per_example["image_mask"] = tf.ones([n, tf.shape(image)[0]], tf.bool)
    return tf.data.Dataset.from_tensor_slices(per_example)

  order_ds = tf.data.Dataset.range(len(manifest["shards"]))
  if shuffle:
    order_ds = order_ds.shuffle(len(manifest["shards"]), seed=seed, reshuffle_each_iteration=True)
  ds = order_ds.interleave(shard, cycle_length=min(4, len(manifest["shards"]))).flat_map(expand)
  # A dataset's shards also hold other tasks' images (a two-view study's stacked pair beside
  # single images), so the image count is only known per task: fix it here.
  count, s = IMAGES_PER_EXAMPLE.get(cfg.task, 1), cfg.image_size
  return ds.map(
      lambda ex: {
          **ex,
          "images": tf.ensure_shape(ex["images"], [count, s, s, 3]),
          "image_mask": tf.ensure_shape(ex["image_mask"], [count]),
      }
  )


# Train-time augmentation where the paper names one (tasks.images: pure functions of image, seed).
AUGMENT = {
    "pad_ufes_20": image_lib.augment_pad_ufes,
    "vindr_mammo": image_lib.augment_mammography,
    "cbis_ddsm_mass": image_lib.augment_mammography,
    "cbis_ddsm_calc": image_lib.augment_mammography,
}


def augmented(ds: tf.data.Dataset, fn, seed: int) -> tf.data.Dataset:
  """``ds`` with ``images[0]`` replaced by ``fn(image, s)`` for a per-example seed ``s``.

  ``s`` is the next value of ``tf.data.Dataset.random(seed)``, which restarts with the source at
  each epoch: an example's seed is that of its position in the epoch, so it changes between
  epochs when the source order does (shuffled shards), and stays the same for a dataset held in
  one shard. Per-epoch re-randomisation (``rerandomize_each_iteration``, or a reshuffle before
  the seeds) was measured not to restore exactly from an iterator checkpoint across epoch
  boundaries, so it is not used: resuming reproduces the same images.
  The augmentation runs in a ``stateful=False`` tf.numpy_function: it is pure in (image, s),
  and tf.train.Checkpoint saves iterators through it without any external-state option.
  """
  seeds = tf.data.Dataset.random(seed=seed)

  def apply(ex, s):
    image = ex["images"][0]
    out = tf.numpy_function(
        lambda im, sd: fn(im, int(sd) % (1 << 63)), [image, s], tf.uint8, stateful=False
    )
    out = tf.ensure_shape(out, image.shape)
    return {**ex, "images": tf.concat([out[tf.newaxis], ex["images"][1:]], axis=0)}

  return tf.data.Dataset.zip(ds, seeds).map(apply)


def _dataset_fn(split: str, shuffle_files: bool, seed=None, *, cfg: TaskConfig) -> tf.data.Dataset:
  """The task's source. ``shuffle_files``: text tasks permute the whole table (an index
  shuffle, cheap to checkpoint), image tasks the shard order. The train split of PAD-UFES-20
  and the mammography tasks is augmented (see `augmented`)."""
  table = _table(cfg, split)
  if cfg.task in IMAGE_TASKS:
    ds = _image_dataset(cfg, table, split, shuffle_files, seed)
    if split == "train" and cfg.task in AUGMENT:
      aug_seed = prompts._hash64(cfg.task, "augment") if seed is None else int(seed)
      ds = augmented(ds, AUGMENT[cfg.task], aug_seed % (1 << 62))
  else:
    columns = {name: _constant(col) for name, col in table.columns.items()}
    ds = tf.data.Dataset.range(len(table.columns["id"]))
    if shuffle_files:
      ds = ds.shuffle(len(table.columns["id"]), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(lambda i: {name: col[i] for name, col in columns.items()})
    ds = ds.map(functools.partial(_zero_image, size=cfg.image_size))
  name = tf.constant(cfg.name)
  return ds.map(lambda ex: {**ex, "task_name": name})


# --------------------------------------------------------------------------------------------
# Mixing

MIXING_PERIOD = 10_000


def mixing_schedule(rates, period: int = MIXING_PERIOD) -> np.ndarray:
  """int32[period]: task indices in which task i appears round(rate_i / sum · period) times
  (largest remainders), spread evenly (smooth weighted round robin), so every window of the
  schedule holds each task within about one example of its share."""
  rates = np.asarray(rates, np.float64)
  if rates.ndim != 1 or not len(rates) or (rates < 0).any() or rates.sum() <= 0:
    raise ValueError(f"mixing rates must be non-negative with a positive sum, got {rates}")
  exact = rates / rates.sum() * period
  counts = np.floor(exact).astype(np.int64)
  for i in np.argsort(-(exact - counts), kind="stable")[: period - counts.sum()]:
    counts[i] += 1
  credit = np.zeros(len(rates), np.int64)
  schedule = np.empty(period, np.int32)
  for step in range(period):
    credit += counts
    pick = int(np.argmax(credit))
    credit[pick] -= period
    schedule[step] = pick
  return schedule


def proportional_interleave(datasets, rates, seed=None):
  """A seqio Mixture ``sample_fn``: interleave the task datasets along mixing_schedule instead
  of sampling them at random. Rates hold exactly at every scale (the paper: rates chosen so that
  each task appears in every batch — random sampling would miss a 1 % task in a quarter of
  128-example batches) and the choice sequence is a checkpointable dataset. ``seed`` rotates
  the schedule's starting point. Dynamic (dataset-valued) rates fall back to random sampling."""
  if isinstance(rates, tf.data.Dataset):
    return tf.data.Dataset.sample_from_datasets(
        datasets, rates, seed=seed, stop_on_empty_dataset=True
    )
  schedule = mixing_schedule(rates)
  if seed is not None:
    schedule = np.roll(schedule, -(int(seed) % len(schedule)))
  choice = tf.data.Dataset.from_tensor_slices(tf.constant(schedule, tf.int64)).repeat()
  return tf.data.Dataset.choose_from_datasets(datasets, choice, stop_on_empty_dataset=True)


# --------------------------------------------------------------------------------------------
# Registration


def _prompt_preprocessor(cfg: TaskConfig, exemplar_texts):
  """The task's prompt preprocessor over its exemplar table (`exemplar_texts`)."""
  template = cfg.template
  return preprocessors.make_prompt_preprocessor(
      instruction=template.instruction + "\n" if template.instruction else "",
      exemplar_texts=exemplar_texts,
      query_roles=template.query_roles,
      num_shots=template.num_shots,
      num_image_tokens=cfg.num_image_tokens,
  )


_NO_EXEMPLARS_WARNED: set[str] = set()


def render_user_record(
    cfg: TaskConfig, vocabulary, record, task_feature_lengths, feature_converter
) -> dict:
  """One user record -> model features (numpy), through this task's prompt code.

  The record has the reader's field names (VQA: "question"), "image": a list of image paths
  (decoded with tasks.images.load_image at the task's size), and optionally "id" (picks the
  exemplars as for a dataset record of that id) and "answer". Exemplars come from the task's
  training split when its data is there; without it the prompt has no exemplars, which is
  logged at WARNING (once per task), since the model then sees a prompt unlike training's.
  """
  import logging

  template = cfg.template
  record = dict(record)
  paths = record.pop("image", [])
  paths = [paths] if isinstance(paths, str) else list(paths)
  if template.has_image and not paths:
    raise ValueError(f"{cfg.name}: field 'image' (one or more image paths) is missing")
  if not template.has_image and paths:
    raise ValueError(f"{cfg.name} is a text task: a user record for it has no 'image'")
  record.setdefault("id", "user:" + json.dumps(record, sort_keys=True) + "|" + "|".join(paths))
  record["id"] = str(record["id"])
  if paths:  # what readers record, and what keeps an image's own records out of its exemplars
    record.setdefault("image_path", paths[0])
  try:
    pool, texts = _exemplar_pool(cfg)
  except (readers.MissingDatasetError, _prepare().NotPreparedError, FileNotFoundError) as e:
    pool, texts = (), ()
    if template.num_shots and cfg.name not in _NO_EXEMPLARS_WARNED:
      _NO_EXEMPLARS_WARNED.add(cfg.name)
      logging.getLogger("medpalm").warning(
          "%s: no training data for its %d-shot exemplars (%s); user records are prompted "
          "without exemplars",
          cfg.name,
          template.num_shots,
          str(e).splitlines()[0],
      )
  try:
    query = template.query(record)
  except KeyError as e:
    raise ValueError(f"{cfg.name}: field {e.args[0]!r} missing") from None
  picks = prompts.choose_exemplars(record, pool, template.num_shots, salt=cfg.task)
  k = template.num_shots
  answer = record.get(template.answer_field)
  num_images = max(1, int(task_feature_lengths.get("images", 1)))
  if len(paths) > num_images:
    raise ValueError(
        f"{cfg.name}: {len(paths)} images, but task_feature_lengths['images'] is {num_images}"
    )
  images = np.zeros((num_images, cfg.image_size, cfg.image_size, 3), np.uint8)
  for i, path in enumerate(paths):
    images[i] = image_lib.load_image(path, size=cfg.image_size)
  mask = np.arange(num_images) < len(paths)
  columns = {
      "id": tf.constant([record["id"]]),
      "query": tf.constant([[seg.text for seg in query]]),
      "exemplars": tf.constant(
          np.asarray([picks + [-1] * (k - len(picks))], np.int32).reshape(1, k)
      ),
      "targets": tf.constant([template.target(record) if answer else ""]),
      "images": tf.constant(images[None]),
      "image_mask": tf.constant(mask[None]),
  }
  output_features = feats.output_features(vocabulary)
  ds = tf.data.Dataset.from_tensor_slices(columns)
  ds = _prompt_preprocessor(cfg, texts)(
      ds, sequence_length=dict(task_feature_lengths), output_features=output_features
  )
  ds = seqio.preprocessors.append_eos_after_trim(
      ds, output_features=output_features, sequence_length=dict(task_feature_lengths)
  )
  ds = feature_converter(ds, dict(task_feature_lengths))
  (example,) = list(ds.as_numpy_iterator())
  return example


def register(
    cfg: TaskConfig, vocabulary: seqio.Vocabulary, shuffle_buffer_size: int = SHUFFLE_BUFFER
) -> seqio.Task:
  """Registers one task (replacing a previous registration of the same name)."""

  def prompt_preprocessor(ds, sequence_length=None, output_features=None):
    # Builds the prompt tokens; the exemplar table is read when the dataset is built.
    _, texts = _exemplar_pool(cfg)
    return _carry_target_fields(_prompt_preprocessor(cfg, texts))(
        ds, sequence_length=sequence_length, output_features=output_features
    )

  seqio.TaskRegistry.remove(cfg.name)
  _REGISTERED[cfg.name] = cfg
  options = rank_options(cfg.name)
  rank = [rank_classification(tuple(options))] if options else []
  medpalm_features.register_task_info(
      cfg.name,
      result_name=canonical_name(cfg.task),
      render_user_record=functools.partial(render_user_record, cfg, vocabulary),
      rows_per_example=len(options) if options else 1,
  )
  return seqio.TaskRegistry.add(
      cfg.name,
      source=seqio.FunctionDataSource(
          functools.partial(_dataset_fn, cfg=cfg), splits=split_names(cfg.task)
      ),
      preprocessors=[prompt_preprocessor, *rank, seqio.preprocessors.append_eos_after_trim],
      output_features=feats.output_features(vocabulary),
      postprocess_fn=postprocess_fn(cfg.task),
      metric_fns=metric_fns(cfg.task),
      shuffle_buffer_size=shuffle_buffer_size,
  )


def register_all(
    *,
    prefix: str = PREFIX,
    vocabulary: seqio.Vocabulary | None = None,
    num_image_tokens: int = feats.NUM_IMAGE_TOKENS,
    image_size: int = feats.IMAGE_SIZE,
    exemplar_pool_size: int = DEFAULT_POOL_SIZE,
    data_dir: str | None = None,
    prepared_dir: str | None = None,
    demo_tasks: tuple[str, ...] | None = None,
    shuffle_buffer_size: int = SHUFFLE_BUFFER,
) -> list[str]:
  """Registers the 14 tasks ``<prefix>_<task>`` and the mixtures ``<prefix>``,
  ``<prefix>_eval``, ``<prefix>_demo``, ``<prefix>_without_cxr_classification`` (Table 6's
  ablation); returns the 14 task names. The paper's evaluation-only experiments (EXPERIMENTS)
  are registered too, as ``<prefix>_<experiment>`` (see `experiment_names`).

  ``import tasks`` calls this once with the defaults (paper settings: 256 image tokens at
  224×224, vocabulary from $MEDPALM_SPM_MODEL). Tests register a second set under another
  prefix with a small image and token count.
  """
  vocabulary = vocabulary or vocab_lib.get_vocabulary()
  names = []
  for task in TASKS + EXPERIMENTS:
    cfg = TaskConfig(
        task=task,
        name=f"{prefix}_{task}",
        num_image_tokens=num_image_tokens,
        image_size=image_size,
        exemplar_pool_size=exemplar_pool_size,
        data_dir=data_dir,
        prepared_dir=prepared_dir,
    )
    register(cfg, vocabulary, shuffle_buffer_size)
    if task in TASKS:
      names.append(cfg.name)
  ablation = f"{prefix}_{ABLATION_MIXTURE}"
  for name in (prefix, f"{prefix}_eval", f"{prefix}_demo", ablation):
    seqio.MixtureRegistry.remove(name)
  for name, rates in ((prefix, MIXTURE_RATES), (ablation, ABLATION_RATES)):
    seqio.MixtureRegistry.add(
        name, [(f"{prefix}_{t}", r) for t, r in rates.items()], sample_fn=proportional_interleave
    )
  seqio.MixtureRegistry.add(f"{prefix}_eval", names, default_rate=1.0)
  demo = demo_tasks or tuple(t for t in TASKS if t not in EVAL_ONLY)
  seqio.MixtureRegistry.add(f"{prefix}_demo", [f"{prefix}_{t}" for t in demo], default_rate=1.0)
  return names


def experiment_names(prefix: str = PREFIX) -> list[str]:
  """The registered names of the paper's evaluation-only experiments."""
  return [f"{prefix}_{t}" for t in EXPERIMENTS]
