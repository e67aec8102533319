"""The driver: gin -> train (checkpoints, events, operative config) -> eval / infer; bad inputs."""

import dataclasses
import json
import os

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from medpalm.driver import checkpoints, main, trainer as trainer_lib
from medpalm import partitioning
from medpalm.model import MedPalmMModel
from medpalm.optimizers import adafactor
from medpalm.models.medpalm_m import MedPalmM
from medpalm.models import configs
from tests.support import driver as driver_setup


def run_main(argv):
  gin.clear_config()
  try:
    return main.main(argv)
  finally:
    gin.clear_config()


def read_scalars(logdir):
  import tensorflow as tf

  out = {}
  for name in sorted(os.listdir(logdir)):
    for event in tf.compat.v1.train.summary_iterator(os.path.join(logdir, name)):
      for v in event.summary.value:
        out[(event.step, v.tag)] = float(tf.make_ndarray(v.tensor))
  return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  model_dir = str(tmp_path_factory.mktemp("run") / "model")
  run_main(
      driver_setup.train_argv(
          model_dir,
          4,
          [
              "EVAL_MIXTURE_OR_TASK_NAME = 'toy_images'",
              "EVAL_PERIOD = 4",
              "EVAL_BATCH_SIZE = 8",
              "INFER_EVAL_DATASET_CFG = " "@infer_eval/data.DatasetConfig()",
          ],
      )
  )
  return model_dir


def test_train_writes_checkpoints_events_config_and_evals(trained):
  names = sorted(os.listdir(trained))
  assert [n for n in names if n.startswith("checkpoint_")] == ["checkpoint_2", "checkpoint_4"]
  for step in (2, 4):
    assert os.path.exists(os.path.join(trained, f"checkpoint_{step}", "dataset", "process_0"))
  config = open(os.path.join(trained, "config.gin")).read()
  assert "TRAIN_STEPS = 4" in config and "partitioning.Partitioner" in config
  scalars = read_scalars(os.path.join(trained, "train"))
  assert {(2, "loss"), (4, "loss"), (4, "accuracy"), (4, "timing/steps_per_second")} <= set(scalars)
  assert scalars[(4, "loss")] < scalars[(2, "loss")]
  assert (4, "loss") in read_scalars(os.path.join(trained, "train_eval", "toy_images"))
  result = json.load(open(os.path.join(trained, "inference_eval", "toy_images", "step_4.json")))
  assert 0.0 <= result["toy_images"]["accuracy"] <= 100.0


def test_eval_and_infer_modes_read_a_checkpoint(trained, tmp_path):
  gin_dir = os.path.join(driver_setup.REPO, "gin_configs")
  common = [
      f"--gin_file={gin_dir}/models/medpalm_m_tiny.gin",
      f"--gin_file={gin_dir}/partitioning/cpu_test.gin",
      "--gin_bindings=" + driver_setup.GIN_HEADER + "\n".join(driver_setup.BINDINGS[:5]),
      "--gin.MIXTURE_OR_TASK_MODULE='tests.support.driver'",
      f"--gin.TASK_FEATURE_LENGTHS={driver_setup.LENGTHS}",
      "--gin.BATCH_SIZE=8",
      f"--gin.CHECKPOINT_PATH='{trained}'",
  ]
  run_main(
      [
          "--run_mode=eval",
          f"--gin_file={gin_dir}/runs/eval.gin",
          *common,
          f"--gin.EVAL_OUTPUT_DIR='{tmp_path}/eval'",
          "--gin.EVAL_SPLIT='validation'",
      ]
  )
  result = json.load(open(tmp_path / "eval" / "toy_images" / "step_4.json"))
  assert set(result["toy_images"]) == {"accuracy"}
  run_main(
      [
          "--run_mode=infer",
          f"--gin_file={gin_dir}/runs/infer.gin",
          *common,
          f"--gin.INFER_OUTPUT_DIR='{tmp_path}/infer'",
          "--gin.INFER_SPLIT='validation'",
      ]
  )
  rows = [json.loads(l) for l in open(tmp_path / "infer" / "toy_images-4.jsonl")]
  assert [r["index"] for r in rows] == list(range(16))
  assert all(np.isfinite(r["score"]) and r["target"] in ([10, 1], [11, 1]) for r in rows)


# --- the trainer on a fixed batch ------------------------------------------------------------


def _setup(optimizer=None, **trainer_kwargs):
  config = configs.get_config("tiny", image_size=28)
  vocab = seqio.PassThroughVocabulary(config.decoder.vocab_size, eos_id=1)
  model = MedPalmMModel(MedPalmM(config), vocab, optimizer_def=optimizer or adafactor(1e-2))
  batch = {k: np.asarray(v) for k, v in driver_setup._records(8, 0).items()}
  tokens = np.concatenate([batch["inputs"], batch["targets"], np.ones((8, 1), np.int32)], 1)
  causal = np.zeros_like(tokens)
  causal[:, :8] = 1
  weights = np.zeros(tokens.shape, np.float32)
  weights[:, 7:9] = 1
  batch = {
      "decoder_input_tokens": tokens,
      "decoder_target_tokens": np.roll(tokens, -1, 1),
      "decoder_causal_attention": causal,
      "decoder_loss_weights": weights,
      "images": batch["images"],
      "image_mask": batch["image_mask"],
  }
  part = partitioning.Partitioner(2, 2, 2)
  shapes = {k: v.shape for k, v in batch.items()}
  types = {k: v.dtype for k, v in batch.items()}
  init = trainer_lib.TrainStateInitializer(model, shapes, types, part)
  trainer = trainer_lib.Trainer(model, part, init.train_state_axes, **trainer_kwargs)
  return trainer, init, part.host_local_to_global(batch)


@pytest.fixture(scope="module")
def base():
  return _setup()


def _fresh(trainer_and_init):
  trainer, init, batch = trainer_and_init
  return trainer, init.from_scratch(jax.random.PRNGKey(0)), batch


def test_loss_decreases_on_a_fixed_batch_and_state_is_sharded(base):
  trainer, state, batch = _fresh(base)
  wi = state.params["decoder"]["stack"]["layers"]["mlp"]["wi_0"]["kernel"]
  assert wi.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "model")
  losses = []
  for _ in range(5):
    state, metrics, finite = trainer.train_step(state, batch)
    assert bool(finite)
    losses.append(float(metrics["loss"].compute()))
  assert losses[-1] < 0.5 * losses[0], losses
  assert int(state.step) == 5 and int(state.skipped) == 0


def test_microbatches_and_freezing(base):
  """4 microbatches give the full-batch gradient; frozen parts keep their values and do not
  change the other parts' update."""
  one, state1, batch = _fresh(base)
  two, state2, _ = _fresh(_setup(num_microbatches=4, freeze=("vision", "projector")))
  before = jax.tree.map(np.asarray, state2.params)
  new1, m1, _ = one.train_step(state1, batch)
  new2, m2, _ = two.train_step(state2, batch)
  for name in ("loss", "accuracy", "loss_per_nonpadding_target_token"):
    np.testing.assert_allclose(
        float(m1[name].compute()), float(m2[name].compute()), rtol=1e-5, err_msg=name
    )
  for a, b in zip(jax.tree.leaves(new1.params["decoder"]), jax.tree.leaves(new2.params["decoder"])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)
  for part in ("vision", "projector"):
    for a, b in zip(jax.tree.leaves(before[part]), jax.tree.leaves(new2.params[part])):
      np.testing.assert_array_equal(a, np.asarray(b))
  assert not np.array_equal(
      np.asarray(new1.params["vision"]["pos_embedding"]), before["vision"]["pos_embedding"]
  )
  with pytest.raises(ValueError, match="unknown part.*'vit'"):
    trainer_lib.Trainer(one.model, one.partitioner, one.train_state_axes, freeze=("vit",))


def test_non_finite_step_is_skipped_and_counted(base):
  trainer, state, batch = _fresh(base)
  poisoned = jax.tree.map(lambda x: x, state.params)
  poisoned["projector"]["kernel"] = state.params["projector"]["kernel"] * jnp.nan
  state = state.replace(params=poisoned)
  before = jax.tree.map(np.asarray, state.params)
  state, metrics, finite = trainer.train_step(state, batch)
  assert not bool(finite)
  assert int(state.step) == 1 and int(state.skipped) == 1
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(a, np.asarray(b))


# --- bad inputs: each a clear error ----------------------------------------------------------


def test_repeated_non_finite_steps_stop_the_run(tmp_path):
  from medpalm.driver.train import NonFiniteError

  with pytest.raises(NonFiniteError, match="5 steps in a row"):
    run_main(
        driver_setup.train_argv(
            str(tmp_path / "m"), 20, ["LEARNING_RATE = 1e400", "CHECKPOINT_PERIOD = 100"]
        )
    )


@pytest.mark.parametrize(
    "binding, error",
    [
        ("train_script.train.total_stepz = 3", "total_stepz"),
        ("partitioning.Partitioner.data = 3", "does not divide the 8 devices"),
        ("BATCH_SIZE = 6", "batch size 6 is not divisible by the 4 batch shards"),
        ("MIXTURE_OR_TASK_NAME = 'no_such_task'", "'no_such_task' is not registered"),
    ],
)
def test_bad_configuration_is_a_clear_error(tmp_path, binding, error):
  with pytest.raises(ValueError, match=error):
    run_main(driver_setup.train_argv(str(tmp_path / "m"), 2, [binding]))


def test_unwritable_model_dir_is_a_clear_error(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(ValueError, match="MODEL_DIR .*file/model.* is not a writable directory"):
    run_main(driver_setup.train_argv(str(blocker / "model"), 2))


def test_command_line_errors():
  with pytest.raises(SystemExit):
    main.parse_args(["--run_mode=train", "--gin_file=x.gin", "--bogus=1"])
  args = main.parse_args(["--run_mode=train", "--gin_file=x.gin", "--gin.TRAIN_STEPS=3"])
  assert args.gin_bindings == ["TRAIN_STEPS = 3"]


# --- importing open weights -------------------------------------------------------------------


def test_assignment_map_and_fallback_to_scratch():
  target = {
      "vision": {"w": np.zeros((2, 3))},
      "projector": {"kernel": np.zeros((3, 4))},
      "decoder": {"emb": np.zeros((5, 4))},
  }
  source = {
      "img": {"w": np.ones((2, 3))},
      "decoder": {"emb": np.full((5, 4), 2.0)},
      "extra": np.ones(1),
  }
  amap = [(r"vision/(.*)", r"img/\1")]
  with pytest.raises(ValueError, match="projector/kernel: not in the imported checkpoint"):
    checkpoints.assign_params(source, target, amap)
  params, report = checkpoints.assign_params(source, target, amap, fallback_to_scratch=True)
  assert params["vision"]["w"].sum() == 6 and params["decoder"]["emb"].sum() == 40
  assert report["scratch"] == ["projector/kernel"] and report["unused"] == ["extra"]
  params, report = checkpoints.assign_params(
      source, target, amap + [(r"decoder/.*", None)], fallback_to_scratch=True
  )
  assert params["decoder"]["emb"].sum() == 0
  bad = {"img": {"w": np.ones((3, 2))}}
  with pytest.raises(ValueError, match=r"vision/w: imported img/w has shape \(3, 2\)"):
    checkpoints.assign_params(bad, {"vision": target["vision"]}, amap)


def test_restore_from_an_imported_open_checkpoint():
  """The importer's tree fills the model through the assignment map; the projector, absent
  from the source, starts from scratch."""
  import flax.linen as nn
  from medpalm.driver import data, eval as eval_lib
  from medpalm.models import medpalm_m

  config = configs.get_config("tiny", image_size=28)
  source = nn.meta.unbox(medpalm_m.init(config, jax.random.key(7)))["params"]
  source = jax.tree.map(np.asarray, source)
  renamed = {"img": source["vision"], "decoder": source["decoder"]}
  calls = []

  def importer(path):
    calls.append(path)
    return config, renamed, None

  model = MedPalmMModel(MedPalmM(config), seqio.PassThroughVocabulary(1024, eos_id=1))
  restore = checkpoints.RestoreCheckpointConfig(
      path="/open/paligemma",
      importer=importer,
      fallback_to_scratch=True,
      assignment_map=[(r"vision/(.*)", r"img/\1")],
  )
  cfg = data.DatasetConfig(driver_setup.TASK, driver_setup.LENGTHS, "validation", 8, False, 0)
  params, step, _ = eval_lib.restore_params(model, restore, partitioning.Partitioner(2, 2, 2), cfg)
  assert calls == ["/open/paligemma"] and step == 0
  for part in ("vision", "decoder"):
    for a, b in zip(jax.tree.leaves(source[part]), jax.tree.leaves(params[part])):
      np.testing.assert_array_equal(a, np.asarray(b))
  assert not np.array_equal(
      source["projector"]["kernel"], np.asarray(params["projector"]["kernel"])
  )
  assert params["decoder"]["embedding"].sharding.spec == jax.sharding.PartitionSpec("model", "fsdp")


def test_user_file_examples_for_infer(tmp_path):
  """{"image", "question"} lines become prefix-LM examples with the image's placeholders; bad
  lines name the file, line and field."""
  from PIL import Image
  from medpalm.driver import infer
  from tasks import images, vocab as vocab_lib

  vocabulary = vocab_lib.MedPalmVocabulary(
      vocab_lib.train_sentencepiece(
          tmp_path / "spm" / "m",
          ["Is the lesion on the left or right side of the image?"],
          vocab_size=600,
      )
  )
  Image.fromarray(np.full((40, 30), 200, np.uint8)).save(tmp_path / "scan.png")
  path = tmp_path / "questions.jsonl"
  path.write_text(
      json.dumps({"image": "scan.png", "question": "Is the lesion on the left?"}) + "\n"
  )
  (ex,) = infer._file_examples(
      str(path),
      vocabulary,
      num_image_tokens=4,
      image_size=28,
      length=64,
      load_image=images.load_image,
  )
  prompt = ex["decoder_input_tokens"][ex["decoder_causal_attention"] > 0]
  assert list(prompt).count(vocabulary.image_placeholder_id) == 4
  assert vocabulary.decode(prompt.tolist()) == "Given <img>. Q: Is the lesion on the left?\nA:"
  assert ex["images"].shape == (1, 28, 28, 3) and ex["images"].dtype == np.uint8
  path.write_text('{"image": "scan.png"}\n')
  with pytest.raises(ValueError, match=r"questions.jsonl:1: field 'question' missing"):
    infer._file_examples(str(path), vocabulary, 4, 28, 64, images.load_image)
  path.write_text(json.dumps({"image": "scan.png", "question": "why " * 100}) + "\n")
  with pytest.raises(ValueError, match="does not fit the sequence length 64"):
    infer._file_examples(str(path), vocabulary, 4, 28, 64, images.load_image)


def test_input_threads_cap_the_pipeline_without_changing_its_batches():
  from medpalm.driver import data

  driver_setup.register()
  cfg = data.DatasetConfig(driver_setup.TASK, driver_setup.LENGTHS, "train", 4, True, 3)

  def first_batches(cfg):
    ds = data.get_dataset(cfg, 0, 1, MedPalmMModel.FEATURE_CONVERTER_CLS)
    return ds, [next(it) for it in [ds.as_numpy_iterator()] for _ in range(3)]

  default_ds, default = first_batches(cfg)
  capped_ds, capped = first_batches(dataclasses.replace(cfg, input_threads=1))
  assert capped_ds.options().threading.private_threadpool_size == 1
  assert capped_ds.options().autotune.enabled is False
  assert default_ds.options().threading.private_threadpool_size != 1
  for a, b in zip(default, capped):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  with pytest.raises(ValueError, match="input_threads"):
    data.get_dataset(
        dataclasses.replace(cfg, input_threads=0), 0, 1, MedPalmMModel.FEATURE_CONVERTER_CLS
    )
