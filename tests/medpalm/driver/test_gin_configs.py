"""Every gin file parses and finalizes; the paper-size experiments build their train state
abstractly (eval_shape: nothing allocated) on the 8 test devices."""

import glob
import os

import gin
import jax
import numpy as np
import pytest

from medpalm.driver import main, trainer as trainer_lib
from medpalm.model import MedPalmMModel
from medpalm.partitioning import Partitioner
from tests.support import driver as driver_setup

GIN_DIR = os.path.join(driver_setup.REPO, "gin_configs")
# medpalm's own driver files; gin_configs/t5x/ is for T5X's binaries (tests/medpalm/t5x/).
FILES = sorted(
    f
    for d in ("models", "runs", "partitioning", "experiments")
    for f in glob.glob(os.path.join(GIN_DIR, d, "*.gin"))
)
EXPECTED = {
    f"{d}/{n}.gin"
    for d, names in {
        "models": [
            "medpalm_m_base",
            "medpalm_m_tiny",
            "medpalm_m_12b",
            "medpalm_m_84b",
            "medpalm_m_562b",
            "paligemma_3b",
            "paligemma2_3b",
            "gemma3_4b",
        ],
        "runs": ["train", "eval", "infer", "finetune"],
        "partitioning": [
            "cpu_test",
            "fsdp",
            "fsdp_tensor",
            "12b_v5e_64",
            "84b_v5p_128",
            "562b_v5p_512",
        ],
        "experiments": [
            "demo_cpu",
            "multimedbench_12b",
            "multimedbench_84b",
            "multimedbench_562b",
            "multimedbench_84b_without_cxr_classification",
            "finetune_demo_cpu",
            "finetune_paligemma_3b",
            "finetune_paligemma2_3b",
            "finetune_gemma3_4b",
        ],
    }.items()
    for n in names
}
REQUIRED = [
    "MODEL_DIR = '/tmp/x'",
    "MIXTURE_OR_TASK_NAME = 'toy_images'",
    "CHECKPOINT_PATH = '/tmp/x'",
    "EVAL_OUTPUT_DIR = '/tmp/x'",
    "INFER_OUTPUT_DIR = '/tmp/x'",
    "INITIAL_CHECKPOINT_PATH = '/tmp/x'",
]


def _parse(files, bindings=()):
  gin.clear_config()
  main.parse_gin(files, list(bindings))


def test_the_layout_is_complete():
  assert {os.path.relpath(f, GIN_DIR) for f in FILES} == EXPECTED


@pytest.mark.parametrize("path", FILES, ids=lambda p: os.path.relpath(p, GIN_DIR))
def test_gin_file_parses_and_starts_with_its_command(path):
  header = open(path).read().split("from __gin__")[0].split("include")[0]
  assert header.startswith("# ") and "python -m medpalm." in header, path
  files = [path]
  bindings = list(REQUIRED)
  if "/runs/" in path:  # a run file needs a model
    files.insert(0, os.path.join(GIN_DIR, "models", "medpalm_m_tiny.gin"))
  if path.endswith("medpalm_m_base.gin"):  # the size files set it
    bindings.append("CONFIG_NAME = 'tiny'")
  _parse(files, bindings)
  gin.clear_config()


@pytest.mark.parametrize(
    "size, lr, batch", [("12b", 5e-5, 128), ("84b", 5e-5, 128), ("562b", 2.5e-5, 256)]
)
def test_paper_experiments_build_their_train_state_abstractly(size, lr, batch):
  _parse(
      [os.path.join(GIN_DIR, "experiments", f"multimedbench_{size}.gin")],
      [
          driver_setup.GIN_HEADER + "VOCABULARY = @seqio.PassThroughVocabulary()\n"
          "seqio.PassThroughVocabulary.size = 256000",
          "MODEL_DIR = '/tmp/x'",
      ],
  )
  try:
    assert gin.query_parameter("%LEARNING_RATE") == lr
    assert gin.query_parameter("%BATCH_SIZE") == batch
    assert gin.query_parameter("%DROPOUT_RATE") == 0.1
    lengths = gin.query_parameter("%TASK_FEATURE_LENGTHS")
    assert (lengths["inputs"], lengths["targets"]) == (966, 256)
    model = gin.get_configurable(MedPalmMModel)()
    partitioner = gin.get_configurable(Partitioner)()
    assert model.config.name == size and model.config.decoder.dtype == "bfloat16"
    length = lengths["inputs"] + lengths["targets"]
    shapes = {
        "decoder_input_tokens": (batch, length),
        "decoder_target_tokens": (batch, length),
        "decoder_causal_attention": (batch, length),
        "decoder_loss_weights": (batch, length),
        "images": (batch, 1, 224, 224, 3),
        "image_mask": (batch, 1),
    }
    types = {"images": np.uint8, "image_mask": np.bool_}
    init = trainer_lib.TrainStateInitializer(model, shapes, types, partitioner)
    params = init.global_train_state_shape.params
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    assert count > {"12b": 12e9, "84b": 84e9, "562b": 560e9}[size]
    wi = init.train_state_axes.params["decoder"]["stack"]["layers"]["mlp"]["wi_0"]["kernel"]
    assert tuple(wi) == (None, "fsdp", "model")
  finally:
    gin.clear_config()


def test_ablation_experiment_is_the_84b_run_on_the_ablation_mixture():
  _parse(
      [os.path.join(GIN_DIR, "experiments", "multimedbench_84b_without_cxr_classification.gin")],
      ["MODEL_DIR = '/tmp/x'"],
  )
  try:
    assert (
        gin.query_parameter("%MIXTURE_OR_TASK_NAME") == "multimedbench_without_cxr_classification"
    )
    assert gin.query_parameter("%LEARNING_RATE") == 5e-5
    assert gin.query_parameter("%BATCH_SIZE") == 128
    assert gin.query_parameter("%EVAL_MIXTURE_OR_TASK_NAME") == "multimedbench_eval"
  finally:
    gin.clear_config()
