"""The 14 SeqIO tasks end to end on demo_data fixtures, the vocabulary, and length budgeting."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

import tasks
from tasks import features, multimedbench, preprocessors, prepare, prompts, readers, vocab
from medpalm import features as medpalm_features
from tasks.prompts import Role
from tests.support.tasks_env import IMAGE_SIZE, LONG, NUM_IMAGE_TOKENS


@pytest.fixture(scope="module")
def env(tasks_env):
  return tasks_env


# ------------------------------------------------------------------------------------- vocab


def test_import_registers_the_14_tasks_and_mixtures():
  expected = {
      f"multimedbench_{t}"
      for t in (
          "medqa",
          "medmcqa",
          "pubmedqa",
          "mimic_iii",
          "vqa_rad",
          "slake",
          "path_vqa",
          "mimic_cxr_report",
          "mimic_cxr_classification",
          "pad_ufes_20",
          "vindr_mammo",
          "cbis_ddsm_mass",
          "cbis_ddsm_calc",
          "precisionfda",
      )
  }
  assert set(tasks.TASK_NAMES) == expected
  for name in expected | {"multimedbench", "multimedbench_eval", "multimedbench_demo"}:
    assert seqio.get_mixture_or_task(name) is not None
  # The official splits, and train_eval for every task (VQA-RAD has no validation split: its
  # train_eval is a held-out slice of train, which training then does not see).
  task = seqio.get_mixture_or_task("multimedbench_vqa_rad")
  assert task.splits == ("train", "test", multimedbench.TRAIN_EVAL)
  assert multimedbench.train_eval_source("vqa_rad") == "train"
  assert seqio.get_mixture_or_task("multimedbench_mimic_cxr_report").splits == (
      "train",
      "validation",
      "test",
      multimedbench.TRAIN_EVAL,
  )
  assert multimedbench.train_eval_source("mimic_cxr_report") == "validation"


@pytest.mark.parametrize("images, held", [(1, 0), (2, 1), (7, 1), (8, 2), (300, 64), (5000, 100)])
def test_holdout_size_and_grouping_by_image(images, held):
  """2 % of the images, at least 64, at most a quarter, and one where there are 2 to 7 (small
  datasets are evaluated too); never the only image; all questions of an image on one side."""
  records = [{"id": f"{i}-{q}", "image_key": f"img{i}"} for i in range(images) for q in range(3)]
  train, heldout = multimedbench.holdout("vqa_rad", records)
  assert len({r["image_key"] for r in heldout}) == held and len(heldout) == 3 * held
  assert not {r["image_key"] for r in train} & {r["image_key"] for r in heldout}
  assert len(train) + len(heldout) == len(records)
  assert multimedbench.holdout("vqa_rad", records) == (train, heldout)  # fixed, not random


def test_placeholder_id_is_outside_the_pieces(env):
  v = env.vocabulary
  pieces = v.tokenizer.GetPieceSize()
  assert v.image_placeholder_id == pieces and v.vocab_size == pieces + 1
  rng = np.random.default_rng(0)
  texts = ["<img>", "Given <img>. Q:", "\x00\xff", "中文 <img><img> ünï ¢ode 123"]
  texts += ["".join(chr(c) for c in rng.integers(32, 0x3000, 40)) for _ in range(50)]
  for text in texts:
    ids = v.encode(text)
    assert v.image_placeholder_id not in ids
    assert v.decode(ids) == text  # lossless model
  encoded = v.encode_tf(tf.constant(texts)).flat_values.numpy()
  assert (encoded < pieces).all()


def test_decode_turns_placeholder_runs_into_img(env):
  v = env.vocabulary
  ph = v.image_placeholder_id
  ids = v.encode("Given ") + [ph] * 5 + v.encode(". Q: what?\nA:")
  assert v.decode(ids) == "Given <img>. Q: what?\nA:"
  batch = tf.constant([ids, ids[:3] + [0] * (len(ids) - 3)])
  out = v.decode_tf(batch).numpy()
  assert out[0].decode() == v.decode(ids) and out[1].decode() == v.decode(ids[:3])
  assert v.decode_tf(tf.constant(ids)).numpy().decode() == v.decode(ids)


def test_missing_sentencepiece_model_says_how_to_make_one(tmp_path):
  v = vocab.MedPalmVocabulary(str(tmp_path / "nope.model"))
  with pytest.raises(FileNotFoundError, match="python -m tasks.vocab"):
    v.encode("x")


# ------------------------------------------------------------------------------ budgeting


def test_water_fill_cuts_the_longest_first():
  out = preprocessors.water_fill(tf.constant([10, 3, 7]), 6).numpy()
  assert out.tolist() == [6, 3, 5]
  assert preprocessors.water_fill(tf.constant([10, 3, 7]), 0).numpy().tolist() == [10, 3, 7]
  assert preprocessors.water_fill(tf.constant([10, 3, 7]), 99).numpy().tolist() == [0, 0, 0]
  assert preprocessors.water_fill(tf.constant([5]), 2).numpy().tolist() == [3]


ROLES = (
    Role.INSTRUCTION,
    Role.EXEMPLAR,
    Role.EXEMPLAR,
    Role.QUERY,
    Role.CONTEXT,
    Role.QUERY,
    Role.CONTEXT,
    Role.IMAGE,
    Role.CUE,
)


def _budget(lengths, budget):
  new, stats = preprocessors.budget_lengths(tf.constant(lengths), ROLES, budget)
  return new.numpy().tolist(), {k: int(v) for k, v in stats.items()}


def test_budget_drops_exemplars_first_farthest_first():
  lengths = [10, 20, 30, 5, 40, 5, 8, 0, 2]  # total 120
  assert _budget(lengths, 120) == (lengths, {n: 0 for n in preprocessors.BUDGET_FEATURES})
  new, stats = _budget(lengths, 110)
  assert new == [10, 0, 30, 5, 40, 5, 8, 0, 2] and stats["budget_exemplars_dropped"] == 1
  new, stats = _budget(lengths, 80)
  assert new == [10, 0, 0, 5, 40, 5, 8, 0, 2] and stats["budget_exemplars_dropped"] == 2
  assert stats["budget_context_cut"] == 0


def test_budget_then_shortens_the_longest_context():
  lengths = [10, 20, 30, 5, 40, 5, 8, 0, 2]
  new, stats = _budget(lengths, 50)  # 70 after exemplars: cut 20 from contexts (40, 8)
  assert new == [10, 0, 0, 5, 20, 5, 8, 0, 2]
  assert stats == {
      "budget_exemplars_dropped": 2,
      "budget_context_cut": 20,
      "budget_instruction_cut": 0,
      "budget_query_cut": 0,
  }
  new, stats = _budget(lengths, 30)  # contexts 48 → 8: water level 4 each
  assert new == [10, 0, 0, 5, 4, 5, 4, 0, 2] and stats["budget_context_cut"] == 40


def test_budget_last_resort_instruction_then_query_never_cue():
  lengths = [10, 20, 30, 5, 40, 5, 8, 0, 2]
  new, stats = _budget(lengths, 15)
  assert new[1:3] == [0, 0] and new[4] == new[6] == 0 and new[8] == 2
  assert new[0] == 3 and new[3] + new[5] == 10
  assert stats["budget_instruction_cut"] == 7 and sum(new) == 15
  new, stats = _budget(lengths, 5)
  assert new[8] == 2 and new[0] == 0 and stats["budget_query_cut"] == 7


def test_keep_middle_out():
  tokens = tf.ragged.constant([[1, 2, 3, 4, 5, 6, 7], [8, 9], [10, 11, 12]], tf.int32)
  kept, splits = preprocessors.keep_middle_out(tokens, tf.constant([4, 2, 0]))
  assert kept.numpy().tolist() == [1, 2, 6, 7, 8, 9] and splits.numpy().tolist() == [0, 4, 6, 6]
  kept, _ = preprocessors.keep_middle_out(tokens, tf.constant([3, 1, 3]))
  assert kept.numpy().tolist() == [1, 2, 7, 8, 10, 11, 12]


def _examples(env, task, split="test", lengths=LONG):
  ds = seqio.get_mixture_or_task(env.name(task)).get_dataset(lengths, split=split, shuffle=False)
  return list(ds.as_numpy_iterator())


def test_budgeting_in_the_pipeline_keeps_question_image_and_cue(env):
  v = env.vocabulary
  length = NUM_IMAGE_TOKENS + 120
  short = dict(LONG, inputs=length)
  full = {e["id"]: e for e in _examples(env, "mimic_cxr_report", "train")}
  cut = _examples(env, "mimic_cxr_report", "train", short)
  summary = preprocessors.budget_summary(cut)
  assert summary["examples"] == len(cut) and summary["examples_budgeted"] == len(cut)
  assert summary["budget_exemplars_dropped"] == len(cut)  # 1-shot: the exemplar goes first
  for ex in cut:
    assert len(ex["inputs"]) <= length
    assert (ex["inputs"] == v.image_placeholder_id).sum() == NUM_IMAGE_TOKENS
    text = v.decode(ex["inputs"].tolist())
    assert text.endswith(
        "\nQ: Describe the findings in the image following the " "instructions.\nA:"
    )
    assert "Given the " in text and " view X-ray image <img>. Reason for the study: " in text
    assert text.count("<img>") == 1  # the exemplar (with its literal <img>) was dropped
    untouched = full[ex["id"]]
    assert len(untouched["inputs"]) > length
    assert ex["targets"].tolist() == untouched["targets"].tolist()  # targets untouched


def test_budget_shortens_long_abstracts_from_the_middle(env):
  v = env.vocabulary
  short = dict(LONG, inputs=NUM_IMAGE_TOKENS + 150)
  for ex in _examples(env, "pubmedqa", "test", short):
    text = v.decode(ex["inputs"].tolist())
    question = ex["inputs_pretokenized"].decode().rsplit("\nQuestion: ", 1)[1]
    assert text.endswith("\nQuestion: " + question)  # question, options and cue intact
    assert text.startswith("Instructions: The following are multiple choice questions")
    assert len(ex["inputs"]) <= NUM_IMAGE_TOKENS + 150


# ----------------------------------------------------------------------------- the 14 tasks

TASKS = list(prompts.TEMPLATES)


@pytest.mark.parametrize("task", TASKS)
def test_model_features(env, task):
  ds = seqio.get_dataset(
      env.name(task),
      LONG,
      dataset_split="test",
      shuffle=False,
      feature_converter=features.feature_converter(),
      batch_size=2,
  )
  batch = next(ds.as_numpy_iterator())
  assert set(batch) == set(features.MODEL_FEATURES)
  length = LONG["inputs"] + LONG["targets"]
  for name in (
      "decoder_input_tokens",
      "decoder_target_tokens",
      "decoder_causal_attention",
      "decoder_loss_weights",
  ):
    assert batch[name].shape == (2, length) and batch[name].dtype == np.int32, name
  assert batch["images"].shape == (2, 1, IMAGE_SIZE, IMAGE_SIZE, 3)
  assert batch["images"].dtype == np.uint8 and batch["image_mask"].dtype == bool
  has_image = prompts.TEMPLATES[task].has_image
  assert batch["image_mask"].tolist() == [[has_image]] * 2
  v = env.vocabulary
  for row in range(2):
    tokens = batch["decoder_target_tokens"][row]
    n_inputs = int(batch["decoder_causal_attention"][row].sum()) - 1  # prefix-LM: inputs + 1
    weights = batch["decoder_loss_weights"][row]
    assert weights[:n_inputs].sum() == 0 and weights[n_inputs] == 1
    target = tokens[n_inputs:][weights[n_inputs:] == 1]
    assert target[-1] == v.eos_id and v.decode(target.tolist()).endswith(".")
    assert (tokens[:n_inputs] == v.image_placeholder_id).sum() == NUM_IMAGE_TOKENS * has_image
    np.testing.assert_array_equal(
        batch["decoder_input_tokens"][row][1:], tokens[:-1]
    )  # shifted right
  if has_image:  # real pixels, not the zero image of text-only tasks
    assert batch["images"].max() > 0


@pytest.mark.parametrize("task", TASKS)
def test_tokens_decode_to_the_papers_prompt(env, task):
  template = prompts.TEMPLATES[task]
  module = readers.TASK_READERS[task][0]
  ddir = env.root / readers.get_module(module).DATASET_DIR
  train = readers.read_task(task, "train", data_dir=ddir).records
  # Exemplars come from the task's pool: its training records in the order the task reads them
  # (prepared records for image tasks), less those held out for train-eval where the dataset
  # has no validation split.
  cfg = multimedbench.task_config(env.name(task))
  pool = list(multimedbench._exemplar_pool(cfg)[0])
  assert {r["id"] for r in pool} <= {r["id"] for r in train}
  if multimedbench.train_eval_source(task) == "train" and pool:
    held = multimedbench._read_records(cfg, multimedbench.TRAIN_EVAL)[0]
    assert not {r["id"] for r in held} & {r["id"] for r in pool}
  train = pool
  test = {str(r["id"]): r for r in readers.read_task(task, "test", data_dir=ddir).records}
  rows = _examples(env, task)
  v = env.vocabulary
  options = multimedbench.rank_options(env.name(task))
  rows_per_example = medpalm_features.task_info(env.name(task)).rows_per_example
  assert rows_per_example == (len(options) if options else 1)
  if options:  # one row per (example, class option), example-major, scored by rank
    assert len(rows) == len(test) * len(options)
    examples = rows[:: len(options)]
    for i, ex in enumerate(examples):
      group = rows[i * len(options) : (i + 1) * len(options)]
      gold = ex["targets_pretokenized"].decode()
      assert [r["idx"].tolist() for r in group] == [[i, k] for k in range(len(options))]
      for k, (row, option) in enumerate(zip(group, options)):
        assert row["id"] == ex["id"] and np.array_equal(row["inputs"], ex["inputs"])
        option = prompts.with_period(option)
        assert row["targets"].tolist() == v.encode(" " + option) + [v.eos_id]
        assert bool(row["is_correct"]) == (option == gold)
      assert sum(bool(r["is_correct"]) for r in group) == 1
  else:
    examples = rows
  assert examples and len(examples) == len(test)
  ph = v.image_placeholder_id
  for ex in examples:
    expected = prompts.render(task, test[ex["id"].decode()], train)
    text = v.decode(ex["inputs"].tolist())
    assert text == expected.text() == ex["inputs_pretokenized"].decode()
    assert ex["targets_pretokenized"].decode() == expected.target
    if not options:
      assert v.decode(ex["targets"].tolist()) == " " + expected.target
    assert expected.target.endswith(".")
    where = np.flatnonzero(ex["inputs"] == ph)
    if template.has_image:  # one run of placeholders exactly where the query's <img> was
      assert len(where) == NUM_IMAGE_TOKENS and np.all(np.diff(where) == 1)
      before = v.decode(ex["inputs"][: where[0]].tolist())
      assert before == text[: text.rindex("<img>")]
      assert text.count("<img>") == 1 + len(expected.exemplars)  # exemplars: literal text
      assert all("<img>" in e for e in expected.exemplars)
    else:
      assert len(where) == 0 and "<img>" not in text
    assert len(expected.exemplars) == template.num_shots
    assert int(ex["budget_exemplars_dropped"]) == 0


def test_not_prepared_gives_the_command(env, tmp_path):
  cfg = multimedbench.TaskConfig(
      task="vqa_rad",
      name="mmbtest_unprepared_vqa_rad",
      image_size=IMAGE_SIZE,
      num_image_tokens=NUM_IMAGE_TOKENS,
      data_dir=str(env.root),
      prepared_dir=str(tmp_path),
  )
  multimedbench.register(cfg, env.vocabulary)
  with pytest.raises(prepare.NotPreparedError, match=r"python -m tasks\.prepare vqa_rad"):
    seqio.get_mixture_or_task(cfg.name).get_dataset(LONG, split="test")


def test_missing_dataset_names_the_directory(env, tmp_path):
  cfg = multimedbench.TaskConfig(task="medqa", name="mmbtest_missing_medqa", data_dir=str(tmp_path))
  multimedbench.register(cfg, env.vocabulary)
  with pytest.raises(readers.MissingDatasetError, match=str(tmp_path / "medqa")):
    seqio.get_mixture_or_task(cfg.name).get_dataset(LONG, split="test")


def test_image_task_iterator_resumes_exactly(env, tmp_path):
  """tf.data iterator checkpoints restore the pipeline: no Python generator."""
  task = seqio.get_mixture_or_task(env.name("mimic_cxr_classification"))
  ds = task.get_dataset(LONG, split="train", shuffle=True, seed=3, num_epochs=None)
  it = iter(ds.map(lambda ex: ex["id"]))
  _ = [next(it) for _ in range(5)]
  ckpt = tf.train.Checkpoint(iterator=it)
  path = ckpt.write(str(tmp_path / "it"))
  after = [next(it).numpy() for _ in range(20)]
  ckpt.read(path).assert_consumed()
  assert [next(it).numpy() for _ in range(20)] == after


def test_paper_defaults_256_image_tokens_at_224(env, tmp_path):
  """The registered defaults: 966 = 710 text + 256 image tokens, targets 256, 224×224 images."""
  assert features.task_feature_lengths() == {
      "inputs": 966,
      "targets": 256,
      "images": 1,
      "image_mask": 1,
  }
  prepare.prepare(
      ["vqa_rad"], data_dir=str(env.root), prepared_dir=str(tmp_path), progress_bar=False
  )  # default 224 px
  cfg = multimedbench.TaskConfig(
      task="vqa_rad",
      name="mmbtest_paper_vqa_rad",
      data_dir=str(env.root),
      prepared_dir=str(tmp_path),
  )
  assert (cfg.num_image_tokens, cfg.image_size) == (256, 224)
  multimedbench.register(cfg, env.vocabulary)
  ds = seqio.get_dataset(
      cfg.name,
      features.task_feature_lengths(),
      dataset_split="test",
      shuffle=False,
      feature_converter=features.feature_converter(),
      batch_size=2,
  )
  batch = next(ds.as_numpy_iterator())
  assert batch["decoder_target_tokens"].shape == (2, 966 + 256)
  assert batch["images"].shape == (2, 1, 224, 224, 3)
  n_ph = (batch["decoder_target_tokens"] == env.vocabulary.image_placeholder_id).sum(axis=1)
  assert n_ph.tolist() == [256, 256]
  assert (batch["decoder_causal_attention"].sum(axis=1) - 1 <= 966).all()


def test_packing_is_refused():
  with pytest.raises(ValueError, match="pack=False"):
    features.MultimodalDecoderFeatureConverter(pack=True)


def test_vocab_command_trains_a_model(env, tmp_path, capsys):
  vocab.main(
      [
          "--output",
          str(tmp_path / "spm" / "demo"),
          "--vocab_size",
          "700",
          "--data_dir",
          str(env.root),
      ]
  )
  model = tmp_path / "spm" / "demo.model"
  assert model.is_file() and "image placeholder id" in capsys.readouterr().out
  v = vocab.MedPalmVocabulary(str(model))
  assert v.image_placeholder_id == v.vocab_size - 1 > 300


def test_train_augmentation_is_seeded_and_resumable(env, tmp_path):
  """PAD-UFES-20 train images are augmented (paper's op list), test images are not; the
  augmented pipeline still checkpoints and resumes to the same images."""
  task = seqio.get_mixture_or_task(env.name("pad_ufes_20"))
  prepared = {ex["id"]: ex["images"] for ex in _examples(env, "pad_ufes_20", "test")}
  for ex in _examples(env, "pad_ufes_20", "test"):
    np.testing.assert_array_equal(ex["images"], prepared[ex["id"]])

  def images(seed):
    ds = task.get_dataset(LONG, split="train", shuffle=False, seed=seed)
    return {ex["id"]: ex["images"] for ex in ds.as_numpy_iterator()}

  cfg = multimedbench.TaskConfig(
      task="pad_ufes_20",
      name=env.name("pad_ufes_20"),
      num_image_tokens=NUM_IMAGE_TOKENS,
      image_size=IMAGE_SIZE,
      data_dir=str(env.root),
      prepared_dir=str(env.prepared),
  )
  plain = multimedbench._image_dataset(
      cfg, multimedbench._table(cfg, "train"), "train", False, None
  )
  raw = {ex["id"]: ex["images"] for ex in plain.as_numpy_iterator()}
  first, other = images(5), images(6)
  assert first.keys() == other.keys() == raw.keys()
  assert sum(not np.array_equal(first[k], raw[k]) for k in first) > len(first) // 2
  assert any(not np.array_equal(first[k], other[k]) for k in first)
  assert all(first[k].shape == raw[k].shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3) for k in first)

  # Same seed, same images — also after restoring an iterator checkpoint (several epochs on).
  it = iter(task.get_dataset(LONG, split="train", shuffle=True, seed=1, num_epochs=None))
  _ = [next(it) for _ in range(3)]
  ckpt = tf.train.Checkpoint(iterator=it)
  path = ckpt.write(str(tmp_path / "it"))
  after = [next(it)["images"].numpy() for _ in range(80)]
  ckpt.read(path).assert_consumed()
  for expected in after:
    np.testing.assert_array_equal(next(it)["images"].numpy(), expected)
