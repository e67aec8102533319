"""Inference to JSONL: predictions for a SeqIO task, or for user files (an image + a question).

    python -m medpalm.main --run_mode=infer --gin_file=gin_configs/runs/infer.gin \
        --gin_file=gin_configs/models/medpalm_m_tiny.gin \
        --gin.CHECKPOINT_PATH="'/tmp/run/checkpoint_500'" --gin.INFER_OUTPUT_DIR="'/tmp/run/infer'" \
        --gin.MIXTURE_OR_TASK_NAME="'multimedbench_vqa_rad'"      # or --gin.INPUTS_FILE=...

Each output line: {"index", "inputs", "prediction", "target", "score"} where `score` is the
log-likelihood (float32, nats) of the prediction under the model; `target` is null for user files.
A user file is JSONL with {"image": path (PNG/JPEG/DICOM), "question": text}; its prompt is the
VQA prompt of the tasks ("Given <img>. Q: <question>\\nA:").
"""

from __future__ import annotations

import json
import os
from typing import Callable, Mapping

import jax
import numpy as np

from medpalm.driver import checkpoints as ckpt_lib
from medpalm.driver import data as data_lib
from medpalm.driver import eval as eval_lib
from medpalm.evaluation.runner import BatchRunner
from medpalm.partitioning import Partitioner


def _file_examples(
    path: str, vocabulary, num_image_tokens: int, image_size: int, length: int, load_image: Callable
) -> list[dict]:
  """Feature-converted examples (numpy) from a user JSONL of {"image", "question"}.

  `load_image(path, size=...) -> uint8[size, size, 3]` decodes an image the way the tasks do
  (gin binds `tasks.images.load_image`).
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"inputs file {path} does not exist")
  examples = []
  with open(path) as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{line_no}: not JSON ({e})") from None
      for field in ("image", "question"):
        if not isinstance(record.get(field), str):
          raise ValueError(f"{path}:{line_no}: field {field!r} missing or not a string")
      image_path = record["image"]
      if not os.path.isabs(image_path):
        image_path = os.path.join(os.path.dirname(os.path.abspath(path)), image_path)
      image = load_image(image_path, size=image_size)
      prompt = (
          list(vocabulary.encode("Given "))
          + [vocabulary.image_placeholder_id] * num_image_tokens
          + list(vocabulary.encode(f". Q: {record['question'].strip()}\nA:"))
      )
      if len(prompt) >= length:
        raise ValueError(
            f"{path}:{line_no}: prompt of {len(prompt)} tokens does not fit the "
            f"sequence length {length}"
        )
      tokens = np.zeros(length, np.int32)
      tokens[: len(prompt)] = prompt
      causal = (np.arange(length) < len(prompt)).astype(np.int32)
      examples.append(
          {
              "decoder_input_tokens": tokens,
              "decoder_target_tokens": np.zeros_like(tokens),
              "decoder_causal_attention": causal,
              "decoder_loss_weights": np.zeros(length, np.int32),
              "images": image[None],
              "image_mask": np.ones(1, bool),
          }
      )
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
    load_image: Callable | None = None,
    decoder_params: Mapping | None = None,
) -> list[str]:
  """Writes `<output_dir>/<task or file stem>-<step>.jsonl`; returns the paths written."""
  import seqio
  import tensorflow as tf

  params, step, params_axes = eval_lib.restore_params(
      model, restore_checkpoint_cfg, partitioner, dataset_cfg
  )
  ckpt_lib.ensure_writable(output_dir)
  vocab = model.output_vocabulary
  decoder_params = dict(decoder_params or {})
  runner = BatchRunner(partitioner, dataset_cfg.batch_size, params_axes)

  def predict(params, batch):
    decodes, aux = model.predict_batch_with_aux(params, batch, decoder_params=decoder_params)
    return decodes, aux["scores"]

  step_fn = runner.compile(predict)
  if inputs_file:
    if load_image is None:
      raise ValueError(
          "infer with inputs_file needs load_image (gin: infer.load_image = "
          "@images.load_image from tasks)"
      )
    lengths = dataset_cfg.task_feature_lengths
    config = model.config
    examples = _file_examples(
        inputs_file,
        vocab,
        config.num_image_tokens,
        config.vision.image_size,
        lengths["inputs"] + lengths["targets"],
        load_image,
    )
    sources = {
        os.path.splitext(os.path.basename(inputs_file))[0]: tf.data.Dataset.from_tensor_slices(
            {k: np.stack([e[k] for e in examples]) for k in examples[0]}
        ).enumerate()
    }
  else:
    if dataset_cfg.module:
      __import__(dataset_cfg.module)
    converter = model.FEATURE_CONVERTER_CLS(pack=False)
    sources = {}
    for task in seqio.get_subtasks(seqio.get_mixture_or_task(dataset_cfg.mixture_or_task_name)):
      ds = task.get_dataset(
          dict(dataset_cfg.task_feature_lengths),
          split=dataset_cfg.split,
          shuffle=False,
          num_epochs=1,
      )
      sources[task.name] = converter(ds, dict(dataset_cfg.task_feature_lengths)).enumerate()
  paths = []
  for name, ds in sources.items():
    rows = []
    for indices, batch, (decodes, scores) in runner.map(ds, params, step_fn):
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
                "target": vocab.decode(target.tolist()) if target.size else None,
                "score": float(scores[r]),
            }
        )
    path = os.path.join(output_dir, f"{name}-{step}.jsonl")
    if jax.process_index() == 0:
      with open(path + ".tmp", "w") as f:
        for row in rows:
          f.write(json.dumps(row, ensure_ascii=False) + "\n")
      os.replace(path + ".tmp", path)
      print(f"wrote {len(rows)} predictions to {path}", flush=True)
    paths.append(path)
  return paths
