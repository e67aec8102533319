"""Shared set-up of the task tests: demo datasets (tasks.demo_data), prepared images, a small
SentencePiece model, and the 14 tasks registered under the prefix ``mmbtest`` with a short image
(16×16) and 4 image tokens so the whole task suite runs in seconds. The session fixture
`tasks_env` (tests/conftest.py) builds it once per test session.
"""

import dataclasses
import pathlib

from tasks import demo_data, multimedbench, prepare, vocab

PREFIX = "mmbtest"
NUM_IMAGE_TOKENS = 4
IMAGE_SIZE = 16
LONG = {"inputs": 4096, "targets": 512, "images": 1, "image_mask": 1}  # no budgeting needed


@dataclasses.dataclass
class TasksEnv:
  root: pathlib.Path
  prepared: pathlib.Path
  vocabulary: vocab.MedPalmVocabulary

  def name(self, task: str) -> str:
    return f"{PREFIX}_{task}"


def build(tmp_path_factory) -> TasksEnv:
  base = tmp_path_factory.mktemp("mmb")
  root = base / "data"
  demo_data.write_all(root, num_examples=4, seed=0)
  prepared = base / "prepared"
  prepare.prepare(
      data_dir=str(root), prepared_dir=str(prepared), image_size=IMAGE_SIZE, progress_bar=False
  )
  model = vocab.train_sentencepiece(
      base / "spm" / "test", vocab.corpus_from_data(root), vocab_size=1000
  )
  vocabulary = vocab.MedPalmVocabulary(model)
  multimedbench.register_all(
      prefix=PREFIX,
      vocabulary=vocabulary,
      num_image_tokens=NUM_IMAGE_TOKENS,
      image_size=IMAGE_SIZE,
      data_dir=str(root),
      prepared_dir=str(prepared),
      shuffle_buffer_size=64,
  )
  return TasksEnv(root, prepared, vocabulary)
