"""Input: SeqIO datasets sharded per host, batched, turned into global jax arrays, resumable.

`DatasetConfig` has T5X's `utils.DatasetConfig` fields (gin: `data.DatasetConfig.batch_size`).
Each process reads `batch_size / num_shards` examples per step from its shard (the partitioner's
`DataLayout`); `BatchIterator` assembles the global batch (`jax.make_array_from_process_local_data`)
and checkpoints its position with `tf.train.Checkpoint` (it restores shuffle, repeat and mixture
sampling exactly as long as the pipeline holds no Python generator), so a resumed run sees
exactly the examples an uninterrupted run would have seen.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Callable, Mapping

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import seqio  # noqa: E402  (pulls TensorFlow)
import tensorflow as tf  # noqa: E402

try:  # tf.data only: keep TensorFlow off the accelerators JAX uses
  tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TensorFlow already initialized its devices elsewhere
  pass


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
  """What to read. `module` is imported first (it registers the tasks, e.g. "tasks").

  `input_threads`: None lets tf.data size its thread pool and autotune it (hosts that only feed
  accelerators); a number caps the pipeline at that many threads with autotuning off, for hosts
  where the input pipeline shares its CPU cores with the model (the CPU demo): there, autotuned
  tf.data threads slow the demo's training step down 1.15-1.26x against 1.06-1.09x with one
  thread (`benchmarks/input_pipeline.py`).
  """

  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int]
  split: str
  batch_size: int
  shuffle: bool
  seed: int | None
  use_cached: bool = False
  pack: bool = False
  module: str | None = None
  input_threads: int | None = None


def get_dataset(
    cfg: DatasetConfig,
    shard_id: int,
    num_shards: int,
    feature_converter_cls,
    num_epochs: int | None = None,
    pad_remainder: bool = False,
) -> tf.data.Dataset:
  """This host's batches: dict of arrays with leading dim `cfg.batch_size // num_shards`.

  `num_epochs=None` repeats forever (training). The last partial batch is dropped, or with
  `pad_remainder` filled up with all-zero rows (no loss weight, no valid image, no placeholder),
  so that a split smaller than a batch (a small train_eval split) is still evaluated.
  """
  if cfg.module:
    importlib.import_module(cfg.module)
  if cfg.batch_size % num_shards:
    raise ValueError(
        f"DatasetConfig.batch_size {cfg.batch_size} is not divisible by the "
        f"{num_shards} host shards"
    )
  try:
    seqio.get_mixture_or_task(cfg.mixture_or_task_name)
  except ValueError as e:
    raise ValueError(
        f"DatasetConfig.mixture_or_task_name {cfg.mixture_or_task_name!r} is not "
        f"registered (set DatasetConfig.module to the module that registers it, "
        f"e.g. 'tasks'): {e}"
    ) from None
  ds = seqio.get_dataset(
      cfg.mixture_or_task_name,
      task_feature_lengths=dict(cfg.task_feature_lengths),
      feature_converter=feature_converter_cls(pack=cfg.pack),
      dataset_split=cfg.split,
      use_cached=cfg.use_cached,
      shuffle=cfg.shuffle,
      num_epochs=num_epochs,
      shard_info=seqio.ShardInfo(shard_id, num_shards),
      seed=cfg.seed,
      verbose=False,
  )
  rows = cfg.batch_size // num_shards
  if pad_remainder:
    ds = ds.batch(rows, drop_remainder=False).map(lambda b: _pad_rows(b, rows)).prefetch(2)
  else:
    ds = ds.batch(rows, drop_remainder=True).prefetch(2)
  if cfg.input_threads is None:
    return ds
  if cfg.input_threads < 1:
    raise ValueError(f"DatasetConfig.input_threads must be >= 1 or None, got {cfg.input_threads}")
  options = tf.data.Options()
  options.threading.private_threadpool_size = cfg.input_threads
  options.threading.max_intra_op_parallelism = 1
  options.autotune.enabled = False
  return ds.with_options(options)


def _pad_rows(batch: dict, rows: int) -> dict:
  """Each feature [n, ...] zero-padded to [rows, ...] (n <= rows)."""
  out = {}
  for name, value in batch.items():
    missing = rows - tf.shape(value)[0]
    padded = tf.pad(value, [[0, missing]] + [[0, 0]] * (value.shape.rank - 1))
    out[name] = tf.ensure_shape(padded, [rows, *value.shape[1:]])
  return out


def input_shapes_and_types(ds: tf.data.Dataset, global_batch_size: int):
  """Global feature shapes / numpy dtypes from a batched dataset's element_spec."""
  shapes = {k: (global_batch_size, *v.shape[1:]) for k, v in ds.element_spec.items()}
  types = {k: np.dtype(v.dtype.as_numpy_dtype) for k, v in ds.element_spec.items()}
  return shapes, types


def model_input_shapes(model, task_feature_lengths: Mapping[str, int], global_batch_size: int):
  """Global model-feature shapes and numpy dtypes from the feature lengths and the model config
  (no dataset needed: eval and infer build their parameters before reading any example).

  Tokens: int32[B, inputs + targets]; images: uint8[B, N, S, S, 3] with N the `images` length
  (default 1) and S the config's image size; image_mask: bool[B, N].
  """
  length = int(task_feature_lengths["inputs"]) + int(task_feature_lengths["targets"])
  num_images = int(task_feature_lengths.get("images", 1))
  size = model.config.vision.image_size
  shapes, types = {}, {}
  for name in (
      "decoder_input_tokens",
      "decoder_target_tokens",
      "decoder_causal_attention",
      "decoder_loss_weights",
  ):
    shapes[name], types[name] = (global_batch_size, length), np.dtype(np.int32)
  shapes["images"], types["images"] = (global_batch_size, num_images, size, size, 3), np.uint8
  shapes["image_mask"], types["image_mask"] = (global_batch_size, num_images), np.dtype(bool)
  return shapes, types


class BatchIterator:
  """Iterates global batches of a host-local dataset; `save` / `restore` its position.

  Args:
    ds: this host's batched dataset.
    partitioner: turns host rows into global arrays.
    validate: `validate(host_batch)` on every host batch before it goes to the devices (the
      model's `validate_batch`: placeholder counts, image dtype and shape), because a compiled
      step can check shapes only — a wrong placeholder count would silently reuse an image.
  """

  def __init__(self, ds: tf.data.Dataset, partitioner, validate: Callable | None = None):
    self._iterator = iter(ds)
    self._partitioner = partitioner
    self._validate = validate
    self._checkpoint = tf.train.Checkpoint(iterator=self._iterator)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    host = {k: v.numpy() for k, v in next(self._iterator).items()}
    if self._validate is not None:
      self._validate(host)
    return self._partitioner.host_local_to_global(host)

  def save(self, prefix: str) -> None:
    """Writes the iterator state under `prefix` (tf checkpoint files `prefix-*`)."""
    self._checkpoint.write(prefix)

  def restore(self, prefix: str) -> None:
    self._checkpoint.read(prefix).assert_consumed()
