"""Inference to JSONL: predictions for a SeqIO task, or for user files (an image + a question).

    python -m medpalm.main --run_mode=infer --gin_file=gin_configs/runs/infer.gin \
        --gin_file=gin_configs/models/medpalm_m_tiny.gin \
        --gin.CHECKPOINT_PATH="'/tmp/run/checkpoint_500'" --gin.INFER_OUTPUT_DIR="'/tmp/run/infer'" \
        --gin.MIXTURE_OR_TASK_NAME="'multimedbench_vqa_rad'"      # or --gin.INPUTS_FILE=...

Each output line: {"index", "inputs", "prediction", "target", "score"} where `score` is the
log-likelihood (float32, nats) of the prediction under the model; `target` is null for user files.
A user file is JSONL with {"image": path or [paths] (PNG/JPEG/DICOM), "question": text,
optional "task"}: each line is rendered by the named task's own prompt code (default: the gin
MIXTURE_OR_TASK_NAME, VQA-RAD) and the model's feature converter, exactly as that task's
examples are in training, with feature shapes from the model config (no dataset is read).
Outputs and inputs may be local or gs:// paths. Progress (examples done / total, rate, ETA) is
printed as inference goes.
"""

from __future__ import annotations

import json
import os
from typing import Mapping

import jax
import numpy as np

from medpalm import features
from medpalm.driver import checkpoints as ckpt_lib
from medpalm.driver import data as data_lib
from medpalm.driver import eval as eval_lib
from medpalm.evaluation.runner import BatchRunner
from medpalm.partitioning import Partitioner


def _file_examples(
    path: str, default_task: str, task_feature_lengths: Mapping[str, int], feature_converter
) -> list[dict]:
  """Model features (numpy) of each line of a user JSONL file (local or gs://).

  A line is {"task": registered task name (default `default_task`), "image": a path or a list
  of paths (relative to the file's directory), the task's record fields (VQA: "question"),
  optional "id"}; it is rendered by the task's registered `render_user_record` (its own prompt
  code) and `feature_converter`. Errors name the file, line and field.
  """
  from etils import epath

  source = epath.Path(path)
  if not source.exists():
    raise FileNotFoundError(f"inputs file {path} does not exist")
  base = os.fspath(source.parent)
  examples = []
  for line_no, line in enumerate(source.read_text().splitlines(), 1):
    if not line.strip():
      continue
    where = f"{path}:{line_no}"
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{where}: not JSON ({e})") from None
    if not isinstance(record, dict):
      raise ValueError(f"{where}: a line must be a JSON object")
    task = record.pop("task", default_task)
    render = features.task_info(task).render_user_record if isinstance(task, str) else None
    if render is None:
      raise ValueError(
          f"{where}: field 'task' {task!r} names no registered task that accepts user records"
      )
    images = record.get("image", [])
    images = [images] if isinstance(images, str) else images
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
      raise ValueError(f"{where}: field 'image' must be a path or a list of paths")
    record["image"] = [
        i if "://" in i or os.path.isabs(i) else os.path.join(base, i) for i in images
    ]
    try:
      example = render(record, task_feature_lengths, feature_converter)
    except (ValueError, KeyError, OSError) as e:
      raise ValueError(f"{where}: {e}") from None
    examples.append({k: v for k, v in example.items()})
  if not examples:
    raise ValueError(f"inputs file {path} holds no examples")
  return examples


def infer(
    *,
    model,
    dataset_cfg: data_lib.DatasetConfig,
    restore_checkpoint_cfg,
    partitioner: Partitioner,
    output_dir: str,
    inputs_file: str | None = None,
    decoder_params: Mapping | None = None,
    params_dtype=None,
    seed: int = 0,
) -> list[str]:
  """Writes `<output_dir>/<task or file stem>-<step>.jsonl` (local or gs://); returns the paths.

  Decoding follows the model's decode function and `decoder_params` (greedy by default); a
  sampling temperature draws from `seed`, a key per batch, so a rerun writes the same samples.

  With `inputs_file`, each line is rendered through the task it names (default:
  `dataset_cfg.mixture_or_task_name`), so no dataset is read or needs preparing.
  """
  import seqio

  if dataset_cfg.module:
    __import__(dataset_cfg.module)
  ckpt_lib.ensure_writable(output_dir, "output_dir")
  params, step, params_axes = eval_lib.restore_params(
      model,
      restore_checkpoint_cfg,
      partitioner,
      dataset_cfg,
      dtype=params_dtype,
      report_dir=output_dir,
  )
  vocab = model.output_vocabulary
  decoder_params = dict(decoder_params or {})
  runner = BatchRunner(
      partitioner, dataset_cfg.batch_size, params_axes, validate=model.validate_batch
  )

  def predict(params, batch, rng):
    decodes, aux = model.predict_batch_with_aux(
        params, batch, rng=rng, decoder_params=decoder_params
    )
    return decodes, aux["scores"]

  step_fn = runner.compile(predict, num_replicated=1)
  lengths = dict(dataset_cfg.task_feature_lengths)
  converter = model.FEATURE_CONVERTER_CLS(pack=False)
  sources = {}
  if inputs_file:
    import tensorflow as tf

    examples = _file_examples(inputs_file, dataset_cfg.mixture_or_task_name, lengths, converter)
    stem = os.path.splitext(os.path.basename(os.fspath(inputs_file).rstrip("/")))[0]
    sources[stem] = tf.data.Dataset.from_tensor_slices(
        {k: np.stack([e[k] for e in examples]) for k in examples[0]}
    ).enumerate()
  else:
    for task in seqio.get_subtasks(seqio.get_mixture_or_task(dataset_cfg.mixture_or_task_name)):
      ds = task.get_dataset(lengths, split=dataset_cfg.split, shuffle=False, num_epochs=1)
      sources[task.name] = converter(ds, lengths).enumerate()
  paths = []
  for s, (name, ds) in enumerate(sources.items()):
    source_key = jax.random.fold_in(jax.random.key(seed), s)
    batch_key = lambda n: (jax.random.fold_in(source_key, n),)  # each batch samples afresh
    rows = []
    for indices, batch, (decodes, scores) in runner.map(
        ds, params, step_fn, name=f"infer {name}", replicated=batch_key
    ):
      for r, index in enumerate(indices):
        if index < 0:
          continue
        prompt = batch["decoder_input_tokens"][r][batch["decoder_causal_attention"][r] > 0]
        target = batch["decoder_target_tokens"][r][batch["decoder_loss_weights"][r] > 0]
        rows.append(
            {
                "index": int(index),
                "inputs": vocab.decode(prompt.tolist()),
                "prediction": vocab.decode(np.asarray(decodes[r]).tolist()),
                # A user line has no reference answer (its rendered target is a placeholder).
                "target": None if inputs_file or not target.size else vocab.decode(target.tolist()),
                "score": float(scores[r]),
            }
        )
    path = os.path.join(output_dir, f"{name}-{step}.jsonl")
    if jax.process_index() == 0:
      text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
      ckpt_lib.write_text(path, text)
      print(f"wrote {len(rows)} predictions to {path}", flush=True)
    paths.append(path)
  return paths
