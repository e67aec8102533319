"""The paper's experiments beyond the 14 tasks, on demo_data fixtures: zero-shot tuberculosis
(Table 4, Fig. 3), two-view report generation (Table 5), MIMIC-III's rare pairs, and the
positive-transfer ablation mixture (Table 6)."""

import numpy as np
import pytest
import seqio

from tasks import features, metrics, multimedbench, postprocessors, prompts, readers
from tests.support.tasks_env import IMAGE_SIZE, LONG, NUM_IMAGE_TOKENS


@pytest.fixture(scope="module")
def env(tasks_env):
  return tasks_env


def _examples(env, task, split="test", lengths=LONG):
  ds = seqio.get_mixture_or_task(env.name(task)).get_dataset(lengths, split=split, shuffle=False)
  return list(ds.as_numpy_iterator())


# -------------------------------------------------------------------- zero-shot tuberculosis

# Fig. 3 of the paper, typed by hand (line breaks: ours, see tasks/prompts.py).
COT_PROMPT = (
    "Instructions: You are a helpful radiology assistant. The following are questions about "
    "tuberculosis vs normal chest X-rays. Solve it step by step, output a Yes/No answer and "
    "explanation.\n"
    "Given <img>. Q: Is it a normal chest x-ray? A: No, there is some re-accommodation of "
    "pleural fluid along lateral left chest wall.\n"
    "Given <img>. Q: Is it a normal chest x-ray?"
)


def test_montgomery_reader_reads_the_label_from_the_file_name(env):
  result = readers.read_task("montgomery_tb", "test", data_dir=env.root / "montgomery")
  assert [r["id"] for r in result] == [
      "MCUCXR_0001_0",
      "MCUCXR_0002_1",
      "MCUCXR_0003_0",
      "MCUCXR_0004_1",
  ]
  assert [r["answer"] for r in result] == ["Yes", "No", "Yes", "No"]  # normal → "Yes"
  assert result.records[0]["clinical_reading"] == "normal"
  assert result.records[1]["age"].endswith("Y") and result.records[1]["sex"] in ("M", "F")


def test_montgomery_bad_file_name_is_a_clear_error(tmp_path):
  images = tmp_path / "MontgomerySet" / "CXR_png"
  images.mkdir(parents=True)
  (images / "MCUCXR_0001_7.png").write_bytes(b"x")
  with pytest.raises(readers.ReaderError, match="MCUCXR_0001_7.png.*file name"):
    readers.read_task("montgomery_tb", "test", data_dir=tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["montgomery_tb", "montgomery_tb_cot"])
def test_tb_tasks_build_with_the_hand_written_exemplar(env, task):
  v = env.vocabulary
  examples = _examples(env, task)
  assert len(examples) == 4
  template = prompts.EXPERIMENT_TEMPLATES[task]
  for ex in examples:
    text = v.decode(ex["inputs"].tolist())
    assert text == ex["inputs_pretokenized"].decode()
    assert text.count("<img>") == 2  # the exemplar's literal <img> and the query's image
    assert (ex["inputs"] == v.image_placeholder_id).sum() == NUM_IMAGE_TOKENS
    assert template.fixed_exemplars[0] in text
    assert v.decode(ex["targets"].tolist()) in (" Yes.", " No.")
    assert ex["image_mask"].tolist() == [True] and ex["images"].max() > 0
  if task == "montgomery_tb_cot":
    assert text == COT_PROMPT


# Hand-written chain-of-thought outputs → (extracted answer or None).
COT_OUTPUTS = [
    ("No, there is a cavitary lesion in the right upper lobe.", "No"),  # at the start
    ("A: Yes, the lungs are clear and the heart is normal in size.", "Yes"),  # after a cue
    (
        "There is an opacity with a cavity in the right upper lobe, consistent with "
        "tuberculosis. So the answer is no.",
        "No",
    ),  # at the end
    ("The costophrenic angles are sharp, the mediastinum is not widened. Normal? Yes", "Yes"),
    ("This chest x-ray is not normal: right upper lobe cavitation.", "No"),  # negated
    ("Abnormal chest x-ray with fibrotic changes in both apices.", "No"),  # negated
    ("The lungs appear normal.", "Yes"),
    ("There is no effusion or pneumothorax.", None),  # "no" inside a finding: no answer
    ("Right upper lobe consolidation.", None),  # absent
    ("", None),
]


@pytest.mark.parametrize("text,expected", COT_OUTPUTS)
def test_yes_no_extraction_from_chain_of_thought(text, expected):
  answer, reason = postprocessors.extract_yes_no(text)
  assert answer == expected, reason
  assert reason


def test_tb_accuracy_counts_missing_answers_as_wrong_with_a_reason():
  targets = [{"answer": "No"}, {"answer": "Yes"}, {"answer": "No"}, {"answer": "No"}]
  predictions = [
      "No, there is a cavity",
      "The lungs appear normal",
      "Right upper lobe consolidation",
      "Yes",
  ]
  out = metrics.tb_accuracy(targets, predictions)
  assert out["accuracy"] == 50.0 and out["no_answer_count"] == 1.0
  assert "no yes/no answer" in metrics.status_text(out["no_answer_count_status"])


def test_tb_task_metrics_run_through_seqio(env):
  task = seqio.get_mixture_or_task(env.name("montgomery_tb_cot"))
  example = {"answer_options": np.array([b"Yes", b"No"]), "id": b"MCUCXR_0001_0"}
  target = task.postprocess_fn("Yes.", example=example, is_target=True)
  prediction = task.postprocess_fn("Yes, it is a normal chest x-ray.", example=example)
  out = {}
  for fn in task.metric_fns:
    out.update(fn([target], [prediction]))
  assert out["accuracy"] == 100.0


# -------------------------------------------------------------------------- two-view reports


@pytest.mark.slow
def test_two_view_example_reaches_the_model_with_both_images_in_order(env):
  """Reader → prepared stacked pair → prompt → feature converter: images [frontal, lateral] and
  two runs of placeholders in the same order (the model writes image n into run n:
  tests/medpalm/models/test_medpalm_m.py::test_two_images_fill_their_placeholders_in_order)."""
  v = env.vocabulary
  lengths = {"inputs": 4096, "targets": 512, "images": 2, "image_mask": 2}
  raw = _examples(env, "mimic_cxr_report_two_view", "test", lengths)
  test = readers.read_task(
      "mimic_cxr_report_two_view", "test", data_dir=env.root / "mimic_cxr"
  ).records
  assert raw and len(raw) == len(test)
  from tasks import images as image_lib  # pylint: disable=g-import-not-at-top

  by_id = {r["id"]: r for r in test}
  for ex in raw:
    record = by_id[ex["id"].decode()]
    assert ex["images"].shape == (2, IMAGE_SIZE, IMAGE_SIZE, 3)
    for i, path in enumerate(record["image_paths"]):  # frontal first, lateral second
      np.testing.assert_array_equal(ex["images"][i], image_lib.load_image(path, IMAGE_SIZE))
    text = v.decode(ex["inputs"].tolist())
    assert f"Given the {record['views'][0]} view X-ray image <img> and the LATERAL view" in text
  ds = seqio.get_dataset(
      env.name("mimic_cxr_report_two_view"),
      lengths,
      dataset_split="test",
      shuffle=False,
      feature_converter=features.feature_converter(),
      batch_size=2,
  )
  batch = next(ds.as_numpy_iterator())
  assert batch["images"].shape == (2, 2, IMAGE_SIZE, IMAGE_SIZE, 3)
  assert batch["image_mask"].tolist() == [[True, True]] * len(batch["image_mask"])
  ph = v.image_placeholder_id
  for row in range(len(batch["images"])):
    tokens = batch["decoder_input_tokens"][row]
    where = np.flatnonzero(tokens == ph)
    assert len(where) == 2 * NUM_IMAGE_TOKENS
    runs = np.split(where, np.flatnonzero(np.diff(where) > 1) + 1)
    assert [len(r) for r in runs] == [NUM_IMAGE_TOKENS, NUM_IMAGE_TOKENS]  # two runs, in order
    between = v.decode(tokens[runs[0][-1] + 1 : runs[1][0]].tolist())
    assert between.startswith(" and the LATERAL view X-ray image")


@pytest.mark.slow
def test_two_view_batch_runs_through_the_model(env, tmp_path):
  """The converted two-view batch is what MedPalmM takes: both images' placeholder runs are
  filled (swapping the views changes the output after them); trimmed to one image, the model
  refuses the batch instead of silently dropping the lateral view."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from medpalm.models import configs  # pylint: disable=g-import-not-at-top
  from medpalm.models.medpalm_m import MedPalmM  # pylint: disable=g-import-not-at-top
  from tasks import prepare  # pylint: disable=g-import-not-at-top

  size = 28  # 4 image tokens for the tiny ViT (patch 14)
  prepare.prepare(
      ["mimic_cxr"],
      data_dir=str(env.root),
      prepared_dir=str(tmp_path),
      image_size=size,
      progress_bar=False,
  )
  cfg = multimedbench.TaskConfig(
      task="mimic_cxr_report_two_view",
      name="mmb28_mimic_cxr_report_two_view",
      num_image_tokens=4,
      image_size=size,
      data_dir=str(env.root),
      prepared_dir=str(tmp_path),
  )
  multimedbench.register(cfg, env.vocabulary, shuffle_buffer_size=8)
  lengths = {"inputs": 1024, "targets": 128, "images": 2, "image_mask": 2}
  batch = next(
      seqio.get_dataset(
          cfg.name,
          lengths,
          dataset_split="test",
          shuffle=False,
          feature_converter=features.feature_converter(),
          batch_size=2,
      ).as_numpy_iterator()
  )
  config = configs.get_config("tiny", image_size=size, vocab=env.vocabulary)
  assert config.num_image_tokens == 4
  inputs = {k: jnp.asarray(batch[k]) for k in ("decoder_input_tokens", "images", "image_mask")}
  model = MedPalmM(config)
  variables = model.init(jax.random.key(0), **inputs)
  logits = np.asarray(model.apply(variables, **inputs))
  assert np.isfinite(logits).all()
  swapped = np.asarray(model.apply(variables, **dict(inputs, images=inputs["images"][:, ::-1])))
  ph = np.flatnonzero(batch["decoder_input_tokens"][0] == config.image_token_id)
  assert len(ph) == 8
  np.testing.assert_allclose(swapped[0, : ph[0]], logits[0, : ph[0]], atol=1e-5)  # causal
  assert np.abs(swapped[0, ph[-1] + 1 :] - logits[0, ph[-1] + 1 :]).max() > 1e-4
  one = dict(inputs, images=inputs["images"][:, :1], image_mask=inputs["image_mask"][:, :1])
  with pytest.raises(ValueError):
    model.apply(variables, **one)


def test_two_view_feature_lengths():
  assert features.task_feature_lengths(images=2) == {
      "inputs": 710 + 2 * 256,
      "targets": 256,
      "images": 2,
      "image_mask": 2,
  }


# ------------------------------------------------------------------ MIMIC-III out of distribution


def test_mimic_iii_ood_task_reads_only_the_rare_pairs(env):
  examples = _examples(env, "mimic_iii_ood")
  records = readers.read_task("mimic_iii_ood", "test", data_dir=env.root / "mimic_iii").records
  assert examples and len(examples) == len(records)
  pairs = {(r["modality"], r["anatomy"]) for r in records}
  assert pairs and pairs <= set(readers.get_module("mimic_iii").OOD_PAIRS)
  text = env.vocabulary.decode(examples[0]["inputs"].tolist())
  assert text.startswith(prompts.MIMIC_III_INSTRUCTION + "\nGiven the findings: ")


# ------------------------------------------------------------------ positive-transfer ablation


def test_ablation_mixture_redistributes_in_proportion():
  rates = multimedbench.ABLATION_RATES
  assert "mimic_cxr_classification" not in rates
  assert sum(rates.values()) == pytest.approx(100.0, abs=1e-9)
  full = dict(multimedbench.MIXTURE_RATES)
  rest = sum(v for k, v in full.items() if k != "mimic_cxr_classification")  # 88.03
  assert rest == pytest.approx(88.03, abs=1e-9)
  for task, rate in rates.items():
    assert rate == pytest.approx(full[task] * 100.0 / 88.03, rel=1e-12)
  # By hand: MIMIC-CXR reports 59.90 / 88.03 = 68.045 %, VQA-RAD 0.15 / 88.03 = 0.1704 %.
  assert rates["mimic_cxr_report"] == pytest.approx(68.0450, abs=1e-4)
  assert rates["vqa_rad"] == pytest.approx(0.17040, abs=1e-5)


def test_ablation_mixture_is_registered():
  import tasks  # pylint: disable=g-import-not-at-top

  assert set(tasks.EXPERIMENT_NAMES) == {
      "multimedbench_montgomery_tb",
      "multimedbench_montgomery_tb_cot",
      "multimedbench_mimic_iii_ood",
      "multimedbench_mimic_cxr_report_two_view",
  }
  for name in tasks.EXPERIMENT_NAMES + ("multimedbench_without_cxr_classification",):
    assert name in tasks.MIXTURE_NAMES + tasks.EXPERIMENT_NAMES
    assert seqio.get_mixture_or_task(name) is not None

  mixture = seqio.get_mixture_or_task("multimedbench_without_cxr_classification")
  names = {t.name for t in mixture.tasks}
  assert "multimedbench_mimic_cxr_classification" not in names and len(names) == 12
  total = sum(mixture.get_rate(t) for t in mixture.tasks)
  assert total == pytest.approx(100.0)


# ------------------------------------------------------------------ VinDr-Mammo bilateral view


def test_vindr_bilateral_pairs_both_breasts_side_by_side(env, tmp_path):
  from tasks import images as image_lib  # pylint: disable=g-import-not-at-top
  from tasks import prepare  # pylint: disable=g-import-not-at-top

  ddir = env.root / "vindr_mammo"
  single = readers.read_task("vindr_mammo", "test", data_dir=ddir).records
  pairs = readers.read_task("vindr_mammo", "test", data_dir=ddir, bilateral=True)
  assert pairs.records and len(pairs.records) == len(single) // 2
  by_id = {r["id"]: r for r in single}
  for record in pairs:
    right, left = (by_id[p.rsplit("/", 1)[1].removesuffix(".dicom")] for p in record["image_paths"])
    assert (right["laterality"], left["laterality"]) == ("R", "L")
    assert right["view"] == left["view"] == record["view"] and record["laterality"] == "B"
    assert record["label"] == max(right["label"], left["label"])
  manifest = prepare.prepare(
      ["vindr_mammo"],
      data_dir=str(env.root),
      prepared_dir=str(tmp_path),
      image_size=32,
      progress_bar=False,
      reader_options={"vindr_mammo": {"bilateral": True}},
  )
  assert manifest["vindr_mammo"]["test"]["num_images"] == len(pairs.records)
  record = pairs.records[0]
  _, image, error = prepare._load((prepare.image_key(record), prepare.image_source(record), 32))
  assert error is None and image.shape == (32, 32, 3)
  right, left = (image_lib.decode_image(p) for p in record["image_paths"])
  expected = image_lib.resize_and_pad(np.concatenate([right, left], axis=1), 32)
  np.testing.assert_array_equal(image, expected)


def test_van_veen_split_reaches_the_task_through_gin(env, tmp_path):
  import gin  # pylint: disable=g-import-not-at-top

  ddir = env.root / "mimic_iii"
  ids = sorted(
      r["id"]
      for s in ("train", "validation", "test")
      for r in readers.read_task("mimic_iii", s, data_dir=ddir)
  )
  (tmp_path / "train.txt").write_text("\n".join(ids[2:]) + "\n")
  (tmp_path / "validation.txt").write_text("")
  (tmp_path / "test.txt").write_text("\n".join(ids[:2]) + "\n")
  gin.parse_config(
      f"multimedbench_data.reader_options = {{'mimic_iii': {{'split_ids_dir': '{tmp_path}'}}}}"
  )
  try:
    cfg = multimedbench.TaskConfig(task="mimic_iii", name="mmbvv_mimic_iii", data_dir=str(env.root))
    multimedbench.register(cfg, env.vocabulary, shuffle_buffer_size=8)
    ds = seqio.get_mixture_or_task(cfg.name).get_dataset(LONG, split="test", shuffle=False)
    examples = list(ds.as_numpy_iterator())
    assert sorted(e["id"].decode() for e in examples) == ids[:2]
  finally:
    gin.clear_config()
