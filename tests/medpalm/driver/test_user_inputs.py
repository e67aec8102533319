"""User-file inference prompts as training does: a JSONL line goes through the named task's own
prompt code and the model's feature converter, and needs no prepared data."""

import json

import jax
import numpy as np
import pytest
import seqio

from medpalm import features, partitioning
from medpalm.driver import checkpoints, data, infer
from medpalm.model import MedPalmMModel
from medpalm.models import configs
from medpalm.models.medpalm_m import MedPalmM
from tasks import multimedbench, readers

LENGTHS = {"inputs": 96, "targets": 16, "images": 1, "image_mask": 1}
PROMPT = ("decoder_input_tokens", "decoder_causal_attention", "images", "image_mask")


@pytest.fixture(scope="module")
def env(tasks_env):
  return tasks_env


def _task_examples(name, split="test"):
  converter = features.MultimodalDecoderFeatureConverter(pack=False)
  ds = seqio.get_mixture_or_task(name).get_dataset(LENGTHS, split=split, shuffle=False)
  return list(converter(ds, LENGTHS).as_numpy_iterator())


def _same(a, b, keys) -> bool:
  return all(a[k].shape == b[k].shape and np.array_equal(a[k], b[k]) for k in keys)


def _model_inputs(example) -> dict:
  """What the model reads of an inference example: the prompt (the input tokens where the
  prompt mask is 1; the rest holds the target, which a user line has not), the prompt mask,
  the images and their mask."""
  out = {k: example[k] for k in PROMPT}
  out["decoder_input_tokens"] = (
      example["decoder_input_tokens"] * example["decoder_causal_attention"]
  )
  return out


def test_a_user_line_gives_the_task_examples_model_inputs(env, tmp_path):
  name = env.name("vqa_rad")
  want = _task_examples(name)
  records = readers.read_task("vqa_rad", "test", data_dir=env.root / "vqa_rad").records
  assert len(records) == len(want) >= 2
  lines = [
      {
          "task": name,
          "id": r["id"],
          "question": r["question"],
          "answer_type": r["answer_type"],
          "image": r["image_path"],
      }
      for r in records
  ]
  path = tmp_path / "questions.jsonl"
  path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
  converter = features.MultimodalDecoderFeatureConverter(pack=False)
  got = infer._file_examples(str(path), "unused_default", LENGTHS, converter)
  # Every user line equals exactly one task example on every model input (tokens including the
  # leading 0 and the 1-shot exemplar, prompt mask, image, image mask), element for element.
  for example in got:
    matches = [w for w in want if _same(_model_inputs(example), _model_inputs(w), PROMPT)]
    assert len(matches) == 1
    tokens = example["decoder_input_tokens"][example["decoder_causal_attention"] > 0]
    assert tokens[0] == 0 and "Q:" in env.vocabulary.decode(tokens.tolist())
    assert example["images"].dtype == np.uint8 and bool(example["image_mask"][0])
  # With the answer too, the whole example (targets and loss weights) is the task's.
  with_answer = [dict(line, answer=r["answer"]) for line, r in zip(lines, records)]
  path.write_text("\n".join(json.dumps(line) for line in with_answer) + "\n")
  full = infer._file_examples(str(path), "unused_default", LENGTHS, converter)
  for example in full:
    assert sum(_same(example, w, list(w)) for w in want) == 1


def test_user_lines_name_their_task_and_may_hold_several_images(env, tmp_path):
  name = env.name("vqa_rad")
  record = readers.read_task("vqa_rad", "test", data_dir=env.root / "vqa_rad").records[0]
  path = tmp_path / "q.jsonl"
  two = {"question": "Is it normal?", "image": [record["image_path"]] * 2}
  path.write_text(json.dumps(two) + "\n")
  converter = features.MultimodalDecoderFeatureConverter(pack=False)
  with pytest.raises(ValueError, match=r"q.jsonl:1: .*2 images, but task_feature_lengths"):
    infer._file_examples(str(path), name, LENGTHS, converter)
  (ex,) = infer._file_examples(
      str(path), name, {**LENGTHS, "images": 2, "image_mask": 2}, converter
  )
  assert ex["images"].shape[0] == 2 and ex["image_mask"].tolist() == [True, True]
  np.testing.assert_array_equal(ex["images"][0], ex["images"][1])
  text = {"task": env.name("medqa"), "question": "Which drug?", "options": ["A", "B"]}
  path.write_text(json.dumps({"question": "Is it normal?"}) + "\n")
  with pytest.raises(ValueError, match=r"q.jsonl:1: .*field 'image'"):
    infer._file_examples(str(path), name, LENGTHS, converter)
  path.write_text(json.dumps({**text, "task": "no_such_task"}) + "\n")
  with pytest.raises(ValueError, match=r"q.jsonl:1: field 'task' 'no_such_task'"):
    infer._file_examples(str(path), name, LENGTHS, converter)


@pytest.mark.slow
def test_infer_on_a_user_file_with_nothing_prepared(env, tmp_path, caplog):
  """Tasks registered over empty data and prepared directories: inference still renders the
  line (without exemplars, said at WARNING) and writes its prediction."""
  empty = tmp_path / "empty"
  empty.mkdir()
  multimedbench.register_all(
      prefix="mmbuser",
      vocabulary=env.vocabulary,
      num_image_tokens=4,
      image_size=28,
      data_dir=str(empty),
      prepared_dir=str(empty),
  )
  record = readers.read_task("vqa_rad", "test", data_dir=env.root / "vqa_rad").records[0]
  path = tmp_path / "mine.jsonl"
  path.write_text(json.dumps({"question": record["question"], "image": record["image_path"]}))
  config = configs.get_config("tiny", image_size=28, vocab=env.vocabulary)
  model = MedPalmMModel(MedPalmM(config), env.vocabulary)
  shapes, types = data.model_input_shapes(model, LENGTHS, 8)
  params = jax.tree.map(
      np.asarray, model.get_initial_variables(jax.random.key(0), shapes, types)["params"]
  )
  restore = checkpoints.RestoreCheckpointConfig(
      path="open-weights", importer=lambda p: (config, params, None)
  )
  cfg = data.DatasetConfig("mmbuser_vqa_rad", LENGTHS, "test", 8, False, 0)
  (out,) = infer.infer(
      model=model,
      dataset_cfg=cfg,
      restore_checkpoint_cfg=restore,
      partitioner=partitioning.Partitioner(2, 2, 2),
      output_dir=str(tmp_path / "infer"),
      inputs_file=str(path),
      decoder_params={"max_decode_length": LENGTHS["inputs"] + 4},
  )
  (row,) = [json.loads(line) for line in open(out)]
  assert row["index"] == 0 and row["target"] is None and np.isfinite(row["score"])
  assert record["question"].strip() in row["inputs"]
  assert "mmbuser_vqa_rad: no training data for its 1-shot exemplars" in caplog.text
  report = json.load(open(tmp_path / "infer" / "import_report.json"))
  assert set(report["towers"]) == {"vision", "projector", "decoder"}
