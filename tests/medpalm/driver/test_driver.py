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


def test_infer_samples_from_its_seed(trained, tmp_path):
  """At a sampling temperature, infer draws from `seed` (a key per batch): the same seed writes
  the same tokens, another seed others; the default (temperature 0) is greedy."""
  gin_dir = os.path.join(driver_setup.REPO, "gin_configs")

  def predictions(name, *bindings):
    run_main(
        [
            "--run_mode=infer",
            f"--gin_file={gin_dir}/models/medpalm_m_tiny.gin",
            f"--gin_file={gin_dir}/partitioning/cpu_test.gin",
            f"--gin_file={gin_dir}/runs/infer.gin",
            "--gin_bindings=" + driver_setup.GIN_HEADER + "\n".join(driver_setup.BINDINGS[:5]),
            "--gin.MIXTURE_OR_TASK_MODULE='tests.support.driver'",
            f"--gin.TASK_FEATURE_LENGTHS={driver_setup.LENGTHS}",
            "--gin.BATCH_SIZE=8",
            f"--gin.CHECKPOINT_PATH='{trained}'",
            f"--gin.INFER_OUTPUT_DIR='{tmp_path / name}'",
            "--gin.INFER_SPLIT='validation'",
            *[f"--gin_bindings={b}" for b in bindings],
        ]
    )
    rows = [json.loads(l) for l in open(tmp_path / name / "toy_images-4.jsonl")]
    return [(r["prediction"], r["score"]) for r in rows]

  hot = "DECODER_PARAMS = {'temperature': 4.0}"
  first = predictions("a", hot)
  assert predictions("b", hot) == first
  assert predictions("c", hot, "INFER_SEED = 1") != first
  greedy = predictions("greedy")
  assert greedy != first and predictions("greedy_seed", "INFER_SEED = 1") == greedy


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


def test_command_line_takes_t5x_flags_and_refuses_unknown_ones(capsys):
  with pytest.raises(SystemExit, match="bogus"):
    main.parse_args(["--run_mode=train", "--gin_file=x.gin", "--bogus=1"])
  with pytest.raises(SystemExit, match="--run_mode is required"):
    main.parse_args(["--gin_file=x.gin"])
  args = main.parse_args(
      [
          "--run_mode=eval",
          "--gin_file=x.gin",
          "--gin.TRAIN_STEPS=3",
          "--gin_bindings=BATCH_SIZE = 4",
          "--gin_search_paths=/a,/b",
          "--multiprocess_gpu",
          "--coordinator_address=host:1234",
          "--process_count=2",
          "--process_index=1",
      ]
  )
  assert args.run_mode == "eval" and args.gin_file == ["x.gin"]
  assert args.gin_bindings == ["TRAIN_STEPS = 3", "BATCH_SIZE = 4"]
  assert args.gin_search_paths == ["/a", "/b"] and args.multiprocess_gpu
  assert (args.coordinator_address, args.process_count, args.process_index) == ("host:1234", 2, 1)
  assert main.main(["--helpfull"]) == 0
  out = capsys.readouterr().out
  assert "--process_index" in out and "--gin_search_paths" in out


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
      allow_scratch_towers=("projector",),
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


# --- params-only restore, sharded scoring, host batch validation, the import report -----------


def _without_optimizer_state(trained, out_dir):
  """A copy of `trained`'s last checkpoint whose state holds no optimizer state. (orbax keeps
  every array of a state in one OCDBT database, so there is no per-leaf directory to delete:
  the state item is written again without `opt_state`.)"""
  import shutil

  import orbax.checkpoint as ocp

  step_dir = os.path.join(out_dir, "checkpoint_4")
  shutil.copytree(os.path.join(trained, "checkpoint_4"), step_dir)
  state_dir = os.path.join(step_dir, "state")
  checkpointer = ocp.PyTreeCheckpointer()
  metadata = checkpointer.metadata(state_dir).item_metadata.tree
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
  tree = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
  assert "opt_state" in tree
  del tree["opt_state"]
  shutil.rmtree(state_dir)
  checkpointer.save(state_dir, tree)
  return out_dir


def test_eval_and_infer_restore_params_only(trained, tmp_path):
  model_dir = _without_optimizer_state(trained, str(tmp_path / "no_opt"))
  manager = checkpoints.CheckpointManager(model_dir, read_only=True)
  trainer, init, _ = _setup()
  with pytest.raises(Exception):  # the whole train state is no longer there
    manager.restore(4, init.abstract_state())
  params = manager.restore_params(4, init.abstract_params(), dtype=jnp.bfloat16)
  leaf = params["decoder"]["embedding"]
  assert leaf.dtype == jnp.bfloat16 and leaf.sharding.spec == jax.sharding.PartitionSpec(
      "model", "fsdp"
  )
  argv = driver_setup.eval_infer_argv(model_dir)
  run_main(["--run_mode=eval", *argv["eval"], f"--gin.EVAL_OUTPUT_DIR='{tmp_path}/eval'"])
  assert json.load(open(tmp_path / "eval" / "toy_images" / "step_4.json"))["toy_images"]
  run_main(["--run_mode=infer", *argv["infer"], f"--gin.INFER_OUTPUT_DIR='{tmp_path}/infer'"])
  assert len(open(tmp_path / "infer" / "toy_images-4.jsonl").readlines()) == 16


def test_eval_scoring_step_is_sharded_by_the_partitioner():
  from medpalm.evaluation.evaluator import Evaluator

  trainer, init, batch = _setup()
  part = trainer.partitioner
  axes = init.train_state_axes.params
  evaluator = Evaluator(
      trainer.model,
      driver_setup.TASK,
      split="validation",
      sequence_length=driver_setup.LENGTHS,
      batch_size=8,
      partitioner=part,
      params_axes=axes,
  )
  abstract_batch = {
      k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=v.sharding) for k, v in batch.items()
  }
  lowered = evaluator._score.lower(init.abstract_params(), abstract_batch)
  (params_in, batch_in), _ = lowered.compile().input_shardings
  want = part.shardings(axes)
  for (path, got), expected, leaf in zip(
      jax.tree_util.tree_leaves_with_path(params_in),
      jax.tree.leaves(want),
      jax.tree.leaves(init.abstract_params()),
  ):
    assert got.is_equivalent_to(expected, leaf.ndim), jax.tree_util.keystr(path)
  data_spec = part.data_partition_spec
  used = {name: got for name, got in batch_in.items() if got is not None}  # unused: pruned
  assert {"decoder_input_tokens", "images"} <= set(used)
  for name, got in used.items():
    assert got.spec[0] == data_spec[0], name
  assert any(s.spec != jax.sharding.PartitionSpec() for s in jax.tree.leaves(params_in))


def _bad_placeholder_task():
  """The toy task with one image placeholder missing from every prompt."""
  import tensorflow as tf

  name = "toy_images_bad_placeholders"

  def dataset_fn(split, shuffle_files, seed=None):
    records = driver_setup._records(64 if split == "train" else 16, 0)
    # [5, 6, img x4, 7] -> [5, 6, img x3, 7]: 3 placeholders for 1 valid image of 4 tokens
    records["inputs"] = np.delete(records["inputs"], 2, axis=1)
    return tf.data.Dataset.from_tensor_slices(records)

  task = seqio.get_mixture_or_task(driver_setup.TASK)
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(dataset_fn, splits=("train", "validation", "train_eval")),
      preprocessors=[seqio.preprocessors.append_eos_after_trim],
      output_features=task.output_features,
      metric_fns=[driver_setup.accuracy],
  )
  return name


def test_a_wrong_placeholder_count_is_refused_in_train_eval_and_infer(trained, tmp_path):
  bad = _bad_placeholder_task()
  match = r"row 0: 3 image placeholder tokens .* = 4 expected"
  with pytest.raises(ValueError, match=match):
    run_main(driver_setup.train_argv(str(tmp_path / "m"), 2, [f"MIXTURE_OR_TASK_NAME = '{bad}'"]))
  argv = driver_setup.eval_infer_argv(trained)
  with pytest.raises(ValueError, match=match):
    run_main(
        [
            "--run_mode=eval",
            *argv["eval"],
            f"--gin.MIXTURE_OR_TASK_NAME='{bad}'",
            f"--gin.EVAL_OUTPUT_DIR='{tmp_path}/eval'",
        ]
    )
  with pytest.raises(ValueError, match=match):
    run_main(
        [
            "--run_mode=infer",
            *argv["infer"],
            f"--gin.MIXTURE_OR_TASK_NAME='{bad}'",
            f"--gin.INFER_OUTPUT_DIR='{tmp_path}/infer'",
        ]
    )


def test_an_import_leaving_a_tower_from_scratch_raises_and_the_report_lists_every_parameter(
    tmp_path,
):
  """A PaliGemma-style import whose assignment_map misses the vision tower (its parameters sit
  under `img/...` in the source): with fallback_to_scratch it would silently train the tower
  from random weights; it raises, naming the tower, and the report says what happened."""
  import flax.linen as nn
  from medpalm.driver import data, eval as eval_lib
  from medpalm.models import medpalm_m

  config = configs.get_config("tiny", image_size=28)
  source = jax.tree.map(
      np.asarray, nn.meta.unbox(medpalm_m.init(config, jax.random.key(7)))["params"]
  )
  renamed = {"img": source["vision"], "llm": source["decoder"], "proj": source["projector"]}
  model = MedPalmMModel(MedPalmM(config), seqio.PassThroughVocabulary(1024, eos_id=1))
  cfg = data.DatasetConfig(driver_setup.TASK, driver_setup.LENGTHS, "validation", 8, False, 0)
  wrong = checkpoints.RestoreCheckpointConfig(
      path="/open/paligemma",
      importer=lambda path: (config, renamed, None),
      fallback_to_scratch=True,
      assignment_map=[(r"vision/(.*)", r"image/\1"), (r"decoder/(.*)", r"llm/\1")],
      allow_scratch_towers=("projector",),
  )
  part = partitioning.Partitioner(2, 2, 2)
  with pytest.raises(ValueError, match=r"left the whole vision tower"):
    eval_lib.restore_params(model, wrong, part, cfg, report_dir=str(tmp_path))
  report = json.load(open(tmp_path / "import_report.json"))
  model_params = {
      jax.tree_util.keystr(p, simple=True, separator="/")
      for p, _ in jax.tree_util.tree_leaves_with_path(source)
  }
  assert set(report["parameters"]) == model_params
  assert report["towers"]["vision"]["loaded"] == []
  assert all(
      report["parameters"][p] == "initialized from scratch"
      for p in report["towers"]["vision"]["scratch"]
  )
  assert report["parameters"]["decoder/embedding"] == "imported from llm/embedding"
  assert any(p.startswith("img/") for p in report["unused_in_source"])
  right = dataclasses.replace(
      wrong, assignment_map=[(r"vision/(.*)", r"img/\1"), (r"decoder/(.*)", r"llm/\1")]
  )
  params, _, _ = eval_lib.restore_params(model, right, part, cfg, report_dir=str(tmp_path))
  np.testing.assert_array_equal(
      np.asarray(params["vision"]["pos_embedding"]), source["vision"]["pos_embedding"]
  )


def test_the_last_step_of_a_run_is_always_checkpointed(tmp_path):
  """stop_after_steps=3 with a checkpoint period of 2: step 3 is saved all the same."""
  model_dir = tmp_path / "m"
  run_main(driver_setup.train_argv(str(model_dir), 10, ["train_script.train.stop_after_steps = 3"]))
  steps = sorted(p.name for p in model_dir.iterdir() if p.name.startswith("checkpoint_"))
  assert steps == ["checkpoint_2", "checkpoint_3"]
  with pytest.raises(ValueError, match="stop_after_steps must be >= 1"):
    run_main(
        driver_setup.train_argv(str(model_dir), 10, ["train_script.train.stop_after_steps = 0"])
    )
