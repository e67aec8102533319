"""A small SeqIO task for driver tests, and helpers that run `medpalm.main` on it.

`toy_images`: the prompt holds 4 image placeholders (28-pixel images, tiny model) and the target
says on which side of the image a bright square is (id 10 = left, 11 = right): learnable only
from the image. Records live in memory (`from_tensor_slices`), so the input pipeline is
checkpointable (no Python generator). Importing this module registers the task.
"""

import os
import sys

import numpy as np
import seqio
import tensorflow as tf

TASK = "toy_images"
VOCAB_SIZE = 1024
IMAGE_TOKEN = 1023
IMAGE_SIZE = 28
NUM_IMAGE_TOKENS = 4
LENGTHS = {"inputs": 8, "targets": 2, "images": 1, "image_mask": 1}
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _records(n: int, seed: int) -> dict:
  rng = np.random.default_rng(seed)
  side = rng.integers(0, 2, n)
  images = rng.integers(0, 30, (n, 1, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.uint8)
  for i, s in enumerate(side):
    col = 2 if s == 0 else IMAGE_SIZE // 2 + 2
    images[i, 0, 10:20, col : col + 10] = 250
  inputs = np.tile(np.asarray([5, 6] + [IMAGE_TOKEN] * NUM_IMAGE_TOKENS + [7], np.int32), (n, 1))
  return {
      "inputs": inputs,
      "targets": (10 + side[:, None]).astype(np.int32),
      "images": images,
      "image_mask": np.ones((n, 1), bool),
  }


def _dataset_fn(split, shuffle_files, seed=None):
  del shuffle_files, seed
  return tf.data.Dataset.from_tensor_slices(
      _records(64 if split == "train" else 16, 0 if split == "train" else 1)
  )


def accuracy(targets, predictions):
  return {
      "accuracy": 100.0
      * float(np.mean([list(t) == list(p)[: len(t)] for t, p in zip(targets, predictions)]))
  }


def register() -> None:
  vocab = seqio.PassThroughVocabulary(VOCAB_SIZE, eos_id=1)
  none = seqio.PassThroughVocabulary(0)
  seqio.TaskRegistry.remove(TASK)
  seqio.TaskRegistry.add(
      TASK,
      source=seqio.FunctionDataSource(_dataset_fn, splits=("train", "validation", "train_eval")),
      preprocessors=[seqio.preprocessors.append_eos_after_trim],
      output_features={
          "inputs": seqio.Feature(vocab, add_eos=False, dtype=tf.int32),
          "targets": seqio.Feature(vocab, add_eos=True, dtype=tf.int32),
          "images": seqio.Feature(none, add_eos=False, dtype=tf.uint8, rank=4, required=False),
          "image_mask": seqio.Feature(none, add_eos=False, dtype=tf.bool, rank=1, required=False),
      },
      metric_fns=[accuracy],
      shuffle_buffer_size=64,
  )


register()

# Gin bindings that point the tiny experiment at the toy task.
BINDINGS = [
    "VOCABULARY = @seqio.PassThroughVocabulary()",
    f"seqio.PassThroughVocabulary.size = {VOCAB_SIZE}",
    "seqio.PassThroughVocabulary.eos_id = 1",
    f"IMAGE_SIZE = {IMAGE_SIZE}",
    f"MIXTURE_OR_TASK_NAME = '{TASK}'",
    "MIXTURE_OR_TASK_MODULE = 'tests.support.driver'",
    f"TASK_FEATURE_LENGTHS = {LENGTHS}",
    "BATCH_SIZE = 8",
    "LEARNING_RATE = 1e-2",
    "DROPOUT_RATE = 0.0",
    "EVAL_PERIOD = None",
    "LOG_PERIOD = 2",
    "CHECKPOINT_PERIOD = 2",
    "CHECKPOINTS_TO_KEEP = 2",
]
GIN_HEADER = (
    "from __gin__ import dynamic_registration\nimport seqio\n"
    "from medpalm.driver import data\nfrom medpalm import partitioning\n"
    "from medpalm.driver import train as train_script\n"
)


def train_argv(model_dir, steps: int, extra=()) -> list[str]:
  """argv of `python -m medpalm.main` training the tiny model on the toy task."""
  gin_file = os.path.join(REPO, "gin_configs", "experiments", "demo_cpu.gin")
  bindings = BINDINGS + [f"MODEL_DIR = '{model_dir}'", f"TRAIN_STEPS = {steps}", *extra]
  return [
      "--run_mode=train",
      f"--gin_file={gin_file}",
      "--gin_bindings=" + GIN_HEADER + "\n".join(bindings),
  ]


def subprocess_env(devices: int = 8) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["TF_CPP_MIN_LOG_LEVEL"] = "2"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


PYTHON = sys.executable


def eval_infer_argv(checkpoint_path) -> dict[str, list[str]]:
  """argv (without --run_mode and the output directory) of eval and infer of the toy task on
  its validation split, reading `checkpoint_path`."""
  gin_dir = os.path.join(REPO, "gin_configs")
  common = [
      f"--gin_file={gin_dir}/models/medpalm_m_tiny.gin",
      f"--gin_file={gin_dir}/partitioning/cpu_test.gin",
      "--gin_bindings=" + GIN_HEADER + "\n".join(BINDINGS[:5]),
      f"--gin.MIXTURE_OR_TASK_MODULE='{__name__}'",
      f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}",
      "--gin.BATCH_SIZE=8",
      f"--gin.CHECKPOINT_PATH='{checkpoint_path}'",
  ]
  return {
      "eval": [f"--gin_file={gin_dir}/runs/eval.gin", *common, "--gin.EVAL_SPLIT='validation'"],
      "infer": [f"--gin_file={gin_dir}/runs/infer.gin", *common, "--gin.INFER_SPLIT='validation'"],
  }
