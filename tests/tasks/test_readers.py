"""Readers on synthetic fixtures in the official formats (tasks/demo_data.py): schemas, splits,
selection rules, environment resolution and the bad-input cases."""

import gzip
import json
import pathlib
import pickle
import re

import numpy as np
import pytest

from tasks import demo_data, readers
from tasks.readers import (
    MissingDatasetError,
    ReaderError,
    cbis_ddsm,
    medmcqa,
    medqa,
    mimic_cxr,
    mimic_iii,
    pad_ufes_20,
    path_vqa,
    precisionfda,
    pubmedqa,
    slake,
    vindr_mammo,
    vqa_rad,
)
from tasks.readers.safe_pickle import UnsafePickleError

N = 6


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
  root = tmp_path_factory.mktemp("demo")
  demo_data.write_all(root, num_examples=N, seed=3)
  return root


@pytest.fixture
def fresh(tmp_path):
  """A writable copy of one demo dataset: fresh("medqa") → its directory."""

  def make(dataset):
    return demo_data.write(tmp_path, dataset, num_examples=N, seed=3)

  return make


# --- schemas ---------------------------------------------------------------------------------
SCHEMAS = {
    "medqa": {"id": str, "question": str, "options": list, "answer_idx": int, "answer": str},
    "pubmedqa": {
        "id": str,
        "question": str,
        "context": str,
        "contexts": list,
        "labels": list,
        "options": list,
        "answer_idx": int,
        "answer": str,
        "long_answer": str,
    },
    "mimic_iii": {
        "id": str,
        "findings": str,
        "impression": str,
        "modality": str,
        "anatomy": str,
        "description": str,
    },
    "vqa": {
        "id": str,
        "image_path": str,
        "question": str,
        "answer": str,
        "answer_type": str,
        "lang": str,
    },
    "mimic_cxr_report": {
        "id": str,
        "image_path": str,
        "study_id": str,
        "view": str,
        "indication": str,
        "findings": str,
    },
    "mimic_cxr_classification": {
        "id": str,
        "image_path": str,
        "study_id": str,
        "view": str,
        "condition": str,
        "options": list,
        "label": int,
        "answer": str,
    },
    "pad_ufes_20": {
        "id": str,
        "image_path": str,
        "history": list,
        "options": list,
        "label": int,
        "answer": str,
    },
    "vindr_mammo": {
        "id": str,
        "study_id": str,
        "image_path": str,
        "laterality": str,
        "view": str,
        "options": list,
        "label": int,
        "answer": str,
    },
    "cbis_ddsm": {
        "id": str,
        "image_path": str,
        "view": str,
        "abnormality": str,
        "laterality": str,
        "options": list,
        "label": int,
        "answer": str,
    },
    "precisionfda": {
        "id": str,
        "image": np.ndarray,
        "options": list,
        "label": int,
        "answer": str,
        "variant_type": str,
        "locus": str,
    },
}
TASK_SCHEMA = {
    "medqa": "medqa",
    "medmcqa": "medqa",
    "pubmedqa": "pubmedqa",
    "mimic_iii": "mimic_iii",
    "vqa_rad": "vqa",
    "slake": "vqa",
    "path_vqa": "vqa",
    "mimic_cxr_report": "mimic_cxr_report",
    "mimic_cxr_classification": "mimic_cxr_classification",
    "pad_ufes_20": "pad_ufes_20",
    "vindr_mammo": "vindr_mammo",
    "cbis_ddsm_mass": "cbis_ddsm",
    "cbis_ddsm_calc": "cbis_ddsm",
    "precisionfda": "precisionfda",
}


def test_registry_covers_the_14_tasks():
  assert set(readers.TASK_READERS) == set(TASK_SCHEMA)
  assert len(readers.TASK_READERS) == 14
  for name in readers.DATASET_MODULES:
    module = readers.get_module(name)
    assert module.DATASET_DIR == name and module.LAYOUT and module.SPLITS
    assert "test" in module.SPLITS


@pytest.mark.parametrize("task", sorted(TASK_SCHEMA))
def test_every_task_and_split_reads_demo_data(task, demo_root, monkeypatch):
  monkeypatch.setenv(readers.DATA_DIR_ENV, str(demo_root))
  module = readers.get_module(readers.TASK_READERS[task][0])
  schema = SCHEMAS[TASK_SCHEMA[task]]
  for split in module.SPLITS:
    result = readers.read_task(f"multimedbench_{task}", split)
    assert result.skipped == 0 and result.skip_reasons == []
    assert len(result) >= 1, (task, split)
    ids = [r["id"] for r in result]
    assert len(set(ids)) == len(ids), f"{task}/{split}: duplicate ids"
    for record in result:
      assert set(record) == set(schema), (task, set(record) ^ set(schema))
      for key, typ in schema.items():
        assert isinstance(record[key], typ), (task, key, type(record[key]))
      if "options" in record:
        idx = record.get("answer_idx", record.get("label"))
        assert record["options"][idx] == record["answer"]
      if "image_path" in record:
        assert pathlib.Path(record["image_path"]).is_absolute()
        assert pathlib.Path(record["image_path"]).is_file()


def test_splits_are_disjoint(demo_root):
  for module in (mimic_iii, pad_ufes_20, vqa_rad, path_vqa, mimic_cxr):
    seen = {}
    for split in module.SPLITS:
      for r in module.read(demo_root / module.DATASET_DIR, split):
        assert seen.setdefault(r["id"], split) == split, (module.__name__, r["id"])


# --- selection rules -------------------------------------------------------------------------
def test_vqa_rad_train_keeps_freeform_and_para_only(demo_root):
  rows = json.loads((demo_root / "vqa_rad" / "trainset.json").read_text())
  result = vqa_rad.read(demo_root / "vqa_rad", "train")
  kept = [r for r in rows if r["phrase_type"] in ("freeform", "para")]
  assert len(result) == len(kept) < len(rows)
  assert sum(result.filtered.values()) == len(rows) - len(kept)
  # the stray trailing space of the release ("CLOSED ") is tolerated
  assert any(r["answer_type"] != r["answer_type"].strip() for r in rows)
  assert {r["answer_type"] for r in result} <= {"OPEN", "CLOSED"}


def test_vqa_rad_official_public_json(tmp_path):
  d = tmp_path / "vqa_rad"
  (d / vqa_rad.OFFICIAL_IMAGES).mkdir(parents=True)
  demo_data.write_image(d / vqa_rad.OFFICIAL_IMAGES / "synpic1.jpg", np.zeros((8, 8), np.uint8))
  base = {
      "qid_linked_id": "x",
      "image_case_url": "u",
      "image_name": "synpic1.jpg",
      "image_organ": "HEAD",
      "evaluation": "given",
      "question_rephrase": "NULL",
      "question_relation": "NULL",
      "question_frame": "NULL",
      "question_type": "PRES",
      "answer_type": "CLOSED",
      "question": "Is it normal?",
      "answer": "yes",
  }
  rows = [
      dict(base, qid=str(i), phrase_type=p)
      for i, p in enumerate(["freeform", "para", "frame", "test_freeform", "test_para"])
  ]
  (d / vqa_rad.OFFICIAL_JSON).write_text(json.dumps(rows))
  assert [r["id"] for r in vqa_rad.read(d, "train")] == ["0", "1"]
  assert [r["id"] for r in vqa_rad.read(d, "test")] == ["3", "4"]


def test_slake_both_languages_by_default_and_filter(demo_root):
  both = slake.read(demo_root / "slake", "train")
  assert {r["lang"] for r in both} == {"en", "zh"}
  en = slake.read(demo_root / "slake", "train", langs=("en",))
  assert {r["lang"] for r in en} == {"en"} and len(en) * 2 == len(both)
  assert en.filtered == {"q_lang zh": len(en)}


def test_mimic_iii_pairs_and_token_cap(fresh):
  d = fresh("mimic_iii")
  result = mimic_iii.read(d, "train")
  assert {(r["modality"], r["anatomy"]) for r in result} <= set(mimic_iii.COMMON_PAIRS)
  assert result.filtered["modality/anatomy pair not selected"] > 0
  ood = mimic_iii.read(d, "train", pairs="ood")
  assert {(r["modality"], r["anatomy"]) for r in ood} <= set(mimic_iii.OOD_PAIRS)
  # a report with findings over 600 tokens is dropped and counted
  rows = _read_csv_gz(d / "NOTEEVENTS.csv.gz")
  target = next(
      r
      for r in rows
      if r["CATEGORY"] == "Radiology"
      and mimic_iii.split_of(r["SUBJECT_ID"]) == "train"
      and r["DESCRIPTION"].startswith("CT HEAD")
  )
  target["TEXT"] = target["TEXT"].replace("FINDINGS:", "FINDINGS: " + "word " * 601)
  _write_csv_gz(d / "NOTEEVENTS.csv.gz", rows)
  after = mimic_iii.read(d, "train")
  assert len(after) == len(result) - 1
  assert after.filtered[f"findings over {mimic_iii.MAX_FINDINGS_TOKENS} tokens"] == 1


def test_mimic_iii_modality_anatomy_parsing():
  cases = {
      "CT HEAD W/O CONTRAST": ("CT", "head"),
      "MR HEAD W & W/O CONTRAST": ("MRI", "head"),
      "CT ABD & PELVIS WITH CONTRAST": ("CT", "abdomen"),
      "CTA CHEST W&W/O C&RECONS": ("CT", "chest"),
      "CT C-SPINE W/O CONTRAST": ("CT", "spine"),
      "MR L SPINE W/O CONTRAST": ("MRI", "spine"),
      "CT NECK W/CONTRAST": ("CT", "neck"),
      "CT SINUS/MANDIBLE W/O CONTRAST": ("CT", "sinus"),
      "MR PELVIS": ("MRI", "pelvis"),
      "CHEST (PA & LAT)": (None, "chest"),
  }
  for description, expected in cases.items():
    assert mimic_iii.modality_anatomy(description) == expected, description


def test_mimic_cxr_report_and_classification(demo_root):
  d = demo_root / "mimic_cxr"
  report = mimic_cxr.read(d, "train", task="report")
  # every image of a study is its own example with the study's report
  by_study = {}
  for r in report:
    by_study.setdefault(r["study_id"], []).append(r)
    assert r["view"] in ("AP", "PA", "LATERAL") and r["findings"] and r["indication"]
  assert any(len(v) == 2 and v[0]["findings"] == v[1]["findings"] for v in by_study.values())
  train = mimic_cxr.read(d, "train", task="classification")
  assert {r["condition"] for r in train} == set(mimic_cxr.CONDITIONS.values())  # 11
  test = mimic_cxr.read(d, "test", task="classification")
  assert {r["condition"] for r in test} == set(mimic_cxr.MAJOR_CONDITIONS)
  # uncertain (-1.0) and blank are negative; train_repeats doubles four conditions' positives
  assert {r["label"] for r in train} == {0, 1}
  repeats = {(r["condition"], r["label"]): mimic_cxr.train_repeats(r) for r in train}
  assert repeats.get(("consolidation", 1)) == 2 and repeats[("atelectasis", 1)] == 1
  assert repeats[("consolidation", 0)] == 1
  expanded = readers.expand_repeats(train.records, mimic_cxr.train_repeats)
  assert len(expanded) == len(train) + sum(mimic_cxr.train_repeats(r) - 1 for r in train)


def test_mimic_cxr_filters_long_and_missing_findings(fresh):
  d = fresh("mimic_cxr")
  before = sum(len(mimic_cxr.read(d, s)) for s in mimic_cxr.SPLITS)
  reports = sorted((d / "files").rglob("*.txt"))
  text = reports[0].read_text()
  reports[0].write_text(text.replace("FINDINGS: ", "FINDINGS: " + "x" * 801 + " "))
  reports[1].write_text("FINAL REPORT\n IMPRESSION: normal.\n")
  results = [mimic_cxr.read(d, s) for s in mimic_cxr.SPLITS]
  filtered = {}
  for r in results:
    for k, v in r.filtered.items():
      filtered[k] = filtered.get(k, 0) + v
  assert filtered[f"findings over {mimic_cxr.MAX_FINDINGS_CHARS} characters"] >= 1
  assert filtered["report without findings"] >= 1
  assert sum(len(r) for r in results) < before


def test_pad_ufes_split_is_stratified_and_deterministic(demo_root):
  d = demo_root / "pad_ufes_20"
  train, test = pad_ufes_20.read(d, "train"), pad_ufes_20.read(d, "test")
  assert {r["label"] for r in test} == set(range(6)) == {r["label"] for r in train}
  assert 0.1 < len(test) / (len(train) + len(test)) < 0.3
  assert [r["id"] for r in pad_ufes_20.read(d, "test")] == [r["id"] for r in test]
  other = pad_ufes_20.read(d, "test", seed=1)
  assert {r["id"] for r in other} != {r["id"] for r in test}
  names = [k for k, _ in train.records[0]["history"]]
  assert names == [
      "Age",
      "Gender",
      "Smoke",
      "Drink",
      "Family skin cancer history",
      "Family any cancer history",
      "Lesion region",
      "Lesion itch",
      "Lesion grew",
      "Lesion bled",
      "Lesion elevation",
      "Fitzpatrick scale",
      "Diameters (mm)",
  ]


def test_pad_ufes_history_formatting():
  row = {
      "age": "51",
      "gender": "FEMALE",
      "smoke": "False",
      "drink": "False",
      "skin_cancer_history": "True",
      "cancer_history": "False",
      "region": "BACK",
      "itch": "False",
      "grew": "False",
      "bleed": "False",
      "elevation": "False",
      "fitspatrick": "1.0",
      "diameter_1": "12.0",
      "diameter_2": "8.0",
  }
  text = ", ".join(f"{k}: {v}" for k, v in pad_ufes_20.history(row, "m.csv", "line 2"))
  assert text == (
      "Age: 51, Gender: female, Smoke: false, Drink: false, Family skin cancer "
      "history: true, Family any cancer history: false, Lesion region: back, Lesion "
      "itch: false, Lesion grew: false, Lesion bled: false, Lesion elevation: false, "
      "Fitzpatrick scale: 1.0, Diameters (mm): [12.0, 8.0]"
  )
  missing = dict(row, smoke="UNK", age="", fitspatrick="", diameter_1="", diameter_2="")
  items = dict(pad_ufes_20.history(missing, "m.csv", "line 2"))
  assert items["Smoke"] == items["Age"] == items["Fitzpatrick scale"] == "unknown"
  assert items["Diameters (mm)"] == "unknown"


def test_vindr_labels_and_upsampling(demo_root):
  result = vindr_mammo.read(demo_root / "vindr_mammo", "train")
  assert {r["label"] for r in result} == set(range(5))
  assert {vindr_mammo.train_repeats(r) for r in result if r["label"] == 0} == {1}
  assert {vindr_mammo.train_repeats(r) for r in result if r["label"] > 0} == {3}


def test_cbis_ddsm_finds_crop_despite_tcia_renaming(demo_root):
  d = demo_root / "cbis_ddsm"
  mass = cbis_ddsm.read(d, "train", abnormality="mass")
  both = cbis_ddsm.read(d, "train")
  assert {r["abnormality"] for r in both} == {"mass", "calcification"}
  assert len(both) == len(mass) + len(cbis_ddsm.read(d, "train", abnormality="calcification"))
  for r in mass:  # the CSV says .../000000.dcm; TCIA wrote 1-1.dcm (crop) and 1-2.dcm (mask)
    assert r["image_path"].endswith("1-1.dcm")


def test_precisionfda_variant_types_and_image_shape(demo_root):
  result = precisionfda.read(demo_root / "precisionfda", "train")
  assert {r["variant_type"] for r in result} == {"SNP", "INDEL"}
  for r in result:
    assert r["image"].shape == (100, 221, 6) and r["image"].dtype == np.uint8
    assert r["locus"].startswith("chr20:")


def test_pubmedqa_test_is_the_ground_truth_ids(demo_root):
  d = demo_root / "pubmedqa"
  truth = json.loads((d / "test_ground_truth.json").read_text())
  test = pubmedqa.read(d, "test")
  assert {r["id"] for r in test} == set(truth)
  assert all(truth[r["id"]] == r["answer"] for r in test)
  assert not {r["id"] for r in pubmedqa.read(d, "train")} & set(truth)


def test_medmcqa_accepts_rekeyed_form(tmp_path):
  d = tmp_path / "medmcqa"
  d.mkdir()
  (d / "dev.json").write_text(
      json.dumps(
          {
              "question": "Q?",
              "realidx": "u-1",
              "options": {"A": "a", "B": "b", "C": "c", "D": "d"},
              "answer_idx": "C",
              "answer": "c",
          }
      )
      + "\n"
      + json.dumps(
          {
              "id": "u-2",
              "question": "Q2?",
              "opa": "w",
              "opb": "x",
              "opc": "y",
              "opd": "z",
              "cop": 4,
              "choice_type": "single",
              "exp": None,
              "subject_name": "S",
              "topic_name": None,
          }
      )
      + "\n"
  )
  result = medmcqa.read(d, "test")
  assert [(r["id"], r["answer"]) for r in result] == [("u-1", "c"), ("u-2", "z")]


# --- dataset root resolution -----------------------------------------------------------------
def test_missing_dataset_directory_names_it_and_the_official_files(tmp_path, monkeypatch):
  monkeypatch.setenv(readers.DATA_DIR_ENV, str(tmp_path))
  with pytest.raises(MissingDatasetError) as e:
    readers.read_task("medqa", "test")
  assert str(tmp_path / "medqa") in str(e.value)
  assert "phrases_no_exclude" in str(e.value)
  monkeypatch.delenv(readers.DATA_DIR_ENV)
  with pytest.raises(MissingDatasetError, match="MEDPALM_DATA_DIR"):
    readers.read_task("vindr_mammo", "test")


def test_override_directory_wins_over_environment(demo_root, tmp_path, monkeypatch):
  monkeypatch.setenv(readers.DATA_DIR_ENV, str(tmp_path))  # empty: would fail
  result = readers.read_task("medqa", "test", data_dir=demo_root / "medqa")
  assert len(result) == N


def test_unknown_split_and_task():
  with pytest.raises(ValueError, match="unknown split"):
    medmcqa.read("/nonexistent", "validation")
  with pytest.raises(KeyError):
    readers.read_task("multimedbench_nope", "test")


@pytest.mark.parametrize(
    "dataset,filename",
    [
        ("medqa", "data_clean/questions/US/4_options/phrases_no_exclude_test.jsonl"),
        ("pubmedqa", "test_ground_truth.json"),
        ("mimic_iii", "NOTEEVENTS.csv.gz"),
        ("mimic_cxr", "mimic-cxr-2.0.0-chexpert.csv.gz"),
        ("pad_ufes_20", "metadata.csv"),
        ("vindr_mammo", "breast-level_annotations.csv"),
        ("cbis_ddsm", "mass_case_description_test_set.csv"),
    ],
)
def test_missing_file_is_named(fresh, dataset, filename):
  d = fresh(dataset)
  (d / filename).unlink()
  module = readers.get_module(dataset)
  kwargs = {"task": "classification"} if dataset == "mimic_cxr" else {}
  with pytest.raises(MissingDatasetError) as e:
    module.read(d, "test", **kwargs)
  assert pathlib.PurePath(filename).name in str(e.value)


def test_missing_image_is_a_record_error(fresh):
  d = fresh("vqa_rad")
  first = json.loads((d / "trainset.json").read_text())[0]["image_name"]
  (d / "images" / first).unlink()
  with pytest.raises(ReaderError, match="image file not found"):
    vqa_rad.read(d, "train")


# --- invalid records: raise names file:line and field, skip counts ---------------------------
def test_malformed_json_line_raises_with_file_and_line(fresh, caplog):
  d = fresh("medqa")
  path = d / "data_clean/questions/US/4_options/phrases_no_exclude_test.jsonl"
  lines = path.read_text().splitlines()
  lines[2] = lines[2][:-5]  # cut the closing of line 3
  path.write_text("\n".join(lines) + "\n")
  with pytest.raises(ReaderError) as e:
    medqa.read(d, "test")
  assert f"{path}:3:" in str(e.value) and "malformed JSON" in str(e.value)
  with caplog.at_level("WARNING", logger="tasks.readers"):
    result = medqa.read(d, "test", on_error="skip")
  assert len(result) == N - 1 and result.skipped == 1
  assert f"{path}:3" in result.skip_reasons[0]
  assert "skipped 1 invalid record" in caplog.text


def test_malformed_whole_json_names_line(fresh):
  d = fresh("slake")
  (d / "test.json").write_text('[{"qid": 1,\n "question": }]')
  with pytest.raises(ReaderError, match=r"test\.json:2:"):
    slake.read(d, "test")


def _edit_jsonl(path, index, **changes):
  lines = path.read_text().splitlines()
  obj = json.loads(lines[index])
  obj.update(changes)
  lines[index] = json.dumps(obj)
  path.write_text("\n".join(lines) + "\n")


def test_unknown_label_medmcqa(fresh):
  d = fresh("medmcqa")
  _edit_jsonl(d / "train.json", 1, cop=7)
  with pytest.raises(ReaderError) as e:
    medmcqa.read(d, "train")
  assert "train.json:2" in str(e.value) and "'cop'" in str(e.value)
  assert "unknown label" in str(e.value)
  assert medmcqa.read(d, "train", on_error="skip").skipped == 1


def test_unknown_label_medqa_and_answer_mismatch(fresh):
  d = fresh("medqa")
  path = d / "data_clean/questions/US/4_options/phrases_no_exclude_train.jsonl"
  _edit_jsonl(path, 0, answer_idx="E")
  _edit_jsonl(path, 1, answer="not an option")
  result = medqa.read(d, "train", on_error="skip")
  assert result.skipped == 2
  assert "'answer_idx'" in result.skip_reasons[0] and "'answer'" in result.skip_reasons[1]


def _read_csv_gz(path):
  import csv

  with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
    return list(csv.DictReader(f))


def _write_csv_gz(path, rows):
  demo_data._write_csv(path, list(rows[0]), rows)


def _edit_csv(path, row_index, **changes):
  import csv

  with open(path, encoding="utf-8", newline="") as f:
    rows = list(csv.DictReader(f))
  rows[row_index].update(changes)
  demo_data._write_csv(path, list(rows[0]), rows)


@pytest.mark.parametrize(
    "dataset,file,column,value",
    [
        ("pad_ufes_20", "metadata.csv", "diagnostic", "XYZ"),
        ("vindr_mammo", "breast-level_annotations.csv", "breast_birads", "BI-RADS 6"),
        ("cbis_ddsm", "mass_case_description_train_set.csv", "pathology", "UNKNOWN"),
    ],
)
def test_unknown_label_csv(fresh, dataset, file, column, value):
  d = fresh(dataset)
  _edit_csv(d / file, 0, **{column: value})
  module = readers.get_module(dataset)
  kwargs = {"abnormality": "mass"} if dataset == "cbis_ddsm" else {}
  with pytest.raises(ReaderError) as e:
    for s in module.SPLITS:  # the edited row may be in either split
      module.read(d, s, **kwargs)
  assert f"{file}:2: " in str(e.value) and repr(column) in str(e.value)
  skipped = sum(module.read(d, s, on_error="skip", **kwargs).skipped for s in module.SPLITS)
  assert skipped >= 1


def test_unknown_label_chexpert(fresh):
  d = fresh("mimic_cxr")
  rows = _read_csv_gz(d / "mimic-cxr-2.0.0-chexpert.csv.gz")
  rows[0]["Edema"] = "2.0"
  _write_csv_gz(d / "mimic-cxr-2.0.0-chexpert.csv.gz", rows)
  with pytest.raises(ReaderError, match=r"chexpert\.csv\.gz:2: field 'Edema': unknown"):
    mimic_cxr.read(d, "train", task="classification")


def test_unknown_label_precisionfda(tmp_path):
  d = tmp_path / "precisionfda"
  pileup = np.zeros((4, 5, 6), np.uint8)
  ex = {
      "image/encoded": [pileup.tobytes()],
      "image/shape": [4, 5, 6],
      "locus": [b"chr1:1-1"],
      "variant/encoded": [demo_data._variant_proto("A", ["C"], 1)],
  }
  demo_data.write_tfrecord_gz(
      d / "train" / "x.tfrecord.gz",
      [dict(ex, label=[1]), dict(ex, label=[5]), dict(ex, **{"image/shape": [4, 5, 7]}, label=[0])],
  )
  with pytest.raises(ReaderError, match=r"x\.tfrecord\.gz:record 1: field 'label'"):
    precisionfda.read(d, "train")
  result = precisionfda.read(d, "train", on_error="skip")
  assert len(result) == 1 and result.skipped == 2
  assert "'image/encoded'" in result.skip_reasons[1]  # bytes do not fill the shape


def test_corrupt_tfrecord_is_named(fresh):
  d = fresh("precisionfda")
  path = next((d / "train").glob("*.tfrecord.gz"))
  data = gzip.decompress(path.read_bytes())
  path.write_bytes(gzip.compress(data[: len(data) // 2]))
  with pytest.raises(ReaderError, match=r"examples_train\.tfrecord\.gz.*truncated"):
    precisionfda.read(d, "train")


def test_empty_findings_section_mimic_iii(fresh):
  d = fresh("mimic_iii")
  rows = _read_csv_gz(d / "NOTEEVENTS.csv.gz")
  index = next(
      i
      for i, r in enumerate(rows)
      if r["DESCRIPTION"].startswith("CT HEAD") and mimic_iii.split_of(r["SUBJECT_ID"]) == "train"
  )
  text = rows[index]["TEXT"]
  rows[index]["TEXT"] = (
      text[: text.index("FINDINGS:") + 9] + "\n\n" + text[text.index(" IMPRESSION:") :]
  )
  _write_csv_gz(d / "NOTEEVENTS.csv.gz", rows)
  with pytest.raises(ReaderError) as e:
    mimic_iii.read(d, "train")
  assert re.search(r"NOTEEVENTS\.csv\.gz:\d+: field 'TEXT': empty FINDINGS section", str(e.value))
  ok = mimic_iii.read(d, "train", on_error="skip")
  assert ok.skipped == 1


def test_empty_findings_section_mimic_cxr(fresh):
  d = fresh("mimic_cxr")
  report = sorted((d / "files").rglob("*.txt"))[0]
  text = report.read_text()
  report.write_text(
      text[: text.index("FINDINGS:") + 9] + "\n \n" + text[text.index(" IMPRESSION:") :]
  )
  with pytest.raises(ReaderError, match=r"s\d+\.txt: field 'FINDINGS': empty FINDINGS"):
    for split in mimic_cxr.SPLITS:
      mimic_cxr.read(d, split)


# --- pickles ---------------------------------------------------------------------------------
class _Exploit:
  """Unpickling this would call os.system and create a marker file."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    import os

    return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_nothing_runs(fresh, tmp_path):
  d = fresh("path_vqa")
  marker = tmp_path / "pwned"
  rows = [
      {"img_id": "train_0000", "sent": "q?", "label": {"a": 1}},
      {"img_id": "train_0000", "sent": _Exploit(marker), "label": {"a": 1}},
  ]
  (d / "qas" / "train_vqa.pkl").write_bytes(pickle.dumps(rows, protocol=2))
  with pytest.raises(UnsafePickleError, match=r"train_vqa\.pkl.*(posix|os|nt)\.system"):
    path_vqa.read(d, "train")
  assert not marker.exists()
  # a module import through a plain class is refused as well
  (d / "qas" / "train_vqa.pkl").write_bytes(pickle.dumps([pathlib.PurePosixPath("x")]))
  with pytest.raises(UnsafePickleError, match="pathlib"):
    path_vqa.read(d, "train")


def test_plain_data_pickles_load(fresh):
  from tasks.readers.safe_pickle import loads_data_pickle

  obj = {"a": [1, 2.5, None, True], "b": ("x", b"y"), "c": {1, 2}, "d": frozenset([3])}
  for protocol in range(4, pickle.HIGHEST_PROTOCOL + 1):
    assert loads_data_pickle(pickle.dumps(obj, protocol=protocol)) == obj
  # protocols 0-3 spell set (0-2: also bytes) as calls to globals, refused by design;
  # str/list/tuple/dict/numbers are fine in every protocol
  plain = {"a": [1, 2.5, None, True], "b": ("x", "y")}
  for protocol in range(0, 3):
    assert loads_data_pickle(pickle.dumps(plain, protocol=protocol)) == plain
  d = fresh("path_vqa")
  rows = [{"image": "train_0000", "question": "Is it?", "answer": "yes"}]
  (d / "qas" / "train_vqa.pkl").write_bytes(pickle.dumps(rows))
  result = path_vqa.read(d, "train")
  assert [(r["question"], r["answer"], r["answer_type"]) for r in result] == [
      ("Is it?", "yes", "CLOSED")
  ]


def test_path_vqa_json_and_parquet_exports(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq

  d = tmp_path / "path_vqa"
  demo_data.write_image(d / "images" / "test" / "test_0001.jpg", np.zeros((8, 8), np.uint8))
  (d / "test.json").write_text(
      json.dumps([{"image": "test_0001", "question": "What?", "answer": "cells"}])
  )
  assert [r["answer_type"] for r in path_vqa.read(d, "test")] == ["OPEN"]
  import io
  from PIL import Image

  buf = io.BytesIO()
  Image.new("RGB", (4, 4)).save(buf, format="JPEG")
  table = pa.table(
      {
          "image": [{"bytes": buf.getvalue(), "path": "v.jpg"}],
          "question": ["Is it?"],
          "answer": ["no"],
      }
  )
  pq.write_table(table, d / "validation.parquet")
  result = path_vqa.read(d, "validation")
  assert len(result) == 1 and pathlib.Path(result.records[0]["image_path"]).is_file()
  assert path_vqa.read(d, "validation").records == result.records  # extraction is idempotent


def test_undecodable_files_are_named(fresh):
  d = fresh("mimic_iii")
  data = (d / "NOTEEVENTS.csv.gz").read_bytes()
  (d / "NOTEEVENTS.csv.gz").write_bytes(data[: len(data) // 2])  # truncated gzip stream
  with pytest.raises(ReaderError, match=r"NOTEEVENTS\.csv\.gz: cannot read file"):
    mimic_iii.read(d, "train")
  d = fresh("pad_ufes_20")
  (d / "metadata.csv").write_bytes((d / "metadata.csv").read_bytes() + b"\xff\xfe bad\n")
  with pytest.raises(ReaderError, match=r"metadata\.csv: cannot read file: UnicodeDecodeError"):
    pad_ufes_20.read(d, "train")


def test_truncated_gzip_tfrecord(fresh):
  d = fresh("precisionfda")
  path = next((d / "test").glob("*.tfrecord.gz"))
  data = path.read_bytes()
  path.write_bytes(data[: len(data) * 2 // 3])
  with pytest.raises(ReaderError, match=r"examples_test\.tfrecord\.gz"):
    precisionfda.read(d, "test")
  result = precisionfda.read(d, "test", on_error="skip")
  assert result.skipped == 1 and len(result) >= 1  # the records before the cut are kept


def test_bad_on_error_value(demo_root):
  with pytest.raises(ValueError, match="on_error"):
    medqa.read(demo_root / "medqa", "test", on_error="ignore")


def test_resolve_dataset_dir_by_name(demo_root, monkeypatch):
  monkeypatch.setenv(readers.DATA_DIR_ENV, str(demo_root))
  assert readers.resolve_dataset_dir("slake") == (demo_root / "slake").resolve()
  assert readers.resolve_dataset_dir(slake, demo_root / "medqa") == (demo_root / "medqa").resolve()


def test_mimic_cxr_accepts_dicom_release_images(fresh):
  d = fresh("mimic_cxr")
  jpg = sorted((d / "files").rglob("*.jpg"))[0]
  demo_data.write_dicom(
      jpg.with_suffix(".dcm"), np.zeros((8, 8), np.uint8), uid_seed="x", modality="CR"
  )
  jpg.unlink()
  paths = {r["image_path"] for s in mimic_cxr.SPLITS for r in mimic_cxr.read(d, s)}
  assert str(jpg.with_suffix(".dcm")) in paths


def test_precisionfda_streams(demo_root):
  result = precisionfda.ReadResult(records=[])
  stream = precisionfda.iter_read(demo_root / "precisionfda", "test", result=result)
  first = next(stream)
  assert first["image"].shape == (100, 221, 6)
  rest = list(stream)
  listed = precisionfda.read(demo_root / "precisionfda", "test")
  assert [r["id"] for r in [first, *rest]] == [r["id"] for r in listed]
  assert result.records == [] and result.skipped == 0
