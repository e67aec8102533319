"""tasks/demo_data.py: official file layout, determinism, image-dependent answers; and the rule
that the readers and image code never import TensorFlow."""

import ast
import hashlib
import pathlib

import numpy as np
import pytest

from tasks import demo_data, images, readers

ROOT = pathlib.Path(__file__).resolve().parents[2]

OFFICIAL_FILES = {
    "medqa": [
        "data_clean/questions/US/4_options/phrases_no_exclude_train.jsonl",
        "data_clean/questions/US/4_options/phrases_no_exclude_dev.jsonl",
        "data_clean/questions/US/4_options/phrases_no_exclude_test.jsonl",
    ],
    "medmcqa": ["train.json", "dev.json"],
    "pubmedqa": ["ori_pqal.json", "test_ground_truth.json"],
    "mimic_iii": ["NOTEEVENTS.csv.gz"],
    "vqa_rad": ["trainset.json", "testset.json"],
    "slake": ["train.json", "validate.json", "test.json"],
    "path_vqa": ["qas/train_vqa.pkl", "qas/val_vqa.pkl", "qas/test_vqa.pkl"],
    "mimic_cxr": [
        "mimic-cxr-2.0.0-split.csv.gz",
        "mimic-cxr-2.0.0-metadata.csv.gz",
        "mimic-cxr-2.0.0-chexpert.csv.gz",
    ],
    "pad_ufes_20": ["metadata.csv"],
    "vindr_mammo": ["breast-level_annotations.csv"],
    "cbis_ddsm": [
        "mass_case_description_train_set.csv",
        "mass_case_description_test_set.csv",
        "calc_case_description_train_set.csv",
        "calc_case_description_test_set.csv",
    ],
    "precisionfda": ["train/examples_train.tfrecord.gz", "test/examples_test.tfrecord.gz"],
    "montgomery": [
        "MontgomerySet/CXR_png/MCUCXR_0001_0.png",
        "MontgomerySet/ClinicalReadings/MCUCXR_0002_1.txt",
    ],
}


def _digest(root: pathlib.Path) -> dict[str, str]:
  return {
      str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
      for p in sorted(root.rglob("*"))
      if p.is_file()
  }


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
  root = tmp_path_factory.mktemp("demo")
  demo_data.write_all(root, num_examples=8, seed=0)
  return root


def test_official_file_names_and_encodings(demo):
  assert set(OFFICIAL_FILES) == set(demo_data.DATASETS) == set(readers.DATASET_MODULES)
  for dataset, files in OFFICIAL_FILES.items():
    for name in files:
      path = demo / dataset / name
      assert path.is_file(), path
      if name.endswith(".gz"):
        assert path.read_bytes()[:2] == b"\x1f\x8b"  # really gzip
  # image formats as released: JPEG (VQA, MIMIC-CXR), PNG (PAD-UFES-20), DICOM (mammography)
  assert next((demo / "vqa_rad/images").glob("*.jpg")).read_bytes()[:2] == b"\xff\xd8"
  assert next((demo / "pad_ufes_20/images").rglob("*.png")).read_bytes()[:4] == b"\x89PNG"
  for dicom in [
      next((demo / "vindr_mammo/images").rglob("*.dicom")),
      next((demo / "cbis_ddsm").rglob("*.dcm")),
  ]:
    assert dicom.read_bytes()[128:132] == b"DICM"
  assert len(list((demo / "mimic_cxr/files").rglob("s*.txt"))) == 24


def test_deterministic_from_seed(tmp_path, demo):
  demo_data.write_all(tmp_path / "again", num_examples=8, seed=0)
  assert _digest(tmp_path / "again") == _digest(demo)
  demo_data.write(tmp_path / "other", "vqa_rad", num_examples=8, seed=1)
  assert _digest(tmp_path / "other" / "vqa_rad") != {
      k.removeprefix("vqa_rad/"): v for k, v in _digest(demo).items() if k.startswith("vqa_rad")
  }


def test_vqa_answers_are_a_function_of_the_image(demo):
  """The bright square's side and half answer the two questions, after preprocessing too."""
  for split in ("train", "test"):
    for r in readers.vqa_rad.read(demo / "vqa_rad", split):
      img = images.load_image(r["image_path"])[..., 0].astype(int)
      ys, xs = np.nonzero(img > 150)
      side = "left" if xs.mean() < 112 else "right"
      upper = "yes" if ys.mean() < 112 else "no"
      expected = side if r["question"] == demo_data.VQA_QUESTIONS[0] else upper
      assert r["answer"] == expected, r


def test_classification_label_is_visible(demo):
  import pydicom

  photometric = {
      str(pydicom.dcmread(p, stop_before_pixels=True).PhotometricInterpretation)
      for p in (demo / "vindr_mammo").rglob("*.dicom")
  }
  assert photometric == {"MONOCHROME1", "MONOCHROME2"}
  for r in readers.vindr_mammo.read(demo / "vindr_mammo", "train"):
    # MONOCHROME1 files store the disc dark; decoding inverts them, so it is bright in all
    img = images.load_image(r["image_path"])[..., 0].astype(float)
    xs = np.nonzero(img > 200)[1]
    content_left, content_width = (224 - 168) // 2, 168  # 128x96 → 224x168, centred
    position = (xs.mean() - content_left) / content_width
    assert int(position * 5) == r["label"], (r["label"], position)


def test_rejects_bad_arguments(tmp_path):
  with pytest.raises(KeyError):
    demo_data.write(tmp_path, "nope")
  with pytest.raises(ValueError):
    demo_data.write(tmp_path, "medqa", num_examples=0)


def test_readers_and_images_never_import_tensorflow():
  """tasks/readers and tasks/images.py must stay plain Python (no TF/seqio import at all)."""
  files = sorted((ROOT / "tasks" / "readers").glob("*.py")) + [
      ROOT / "tasks" / "images.py",
      ROOT / "tasks" / "demo_data.py",
  ]
  for path in files:
    for node in ast.walk(ast.parse(path.read_text())):
      names = []
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        names = [node.module or ""]
      for name in names:
        assert name.split(".")[0] not in (
            "tensorflow",
            "seqio",
            "tensorflow_datasets",
        ), f"{path.name} imports {name}"


def test_readers_import_without_tensorflow_at_runtime():
  """Importing every reader, images and demo_data loads no TensorFlow (``tasks/__init__`` is
  bypassed: it registers the SeqIO tasks, which do need TF)."""
  import subprocess
  import sys

  code = (
      "import sys, types\n"
      f"pkg = types.ModuleType('tasks'); pkg.__path__ = [{str(ROOT / 'tasks')!r}]\n"
      "sys.modules['tasks'] = pkg\n"
      "import tasks.readers as r\n"
      "[r.get_module(m) for m in r.DATASET_MODULES]\n"
      "import tasks.images, tasks.demo_data\n"
      "heavy = [m for m in ('tensorflow', 'seqio', 'jax') if m in sys.modules]\n"
      "assert not heavy, heavy\n"
  )
  subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


def test_pileup_label_is_visible(demo):
  for r in readers.precisionfda.read(demo / "precisionfda", "train"):
    bright_rows = int((r["image"][:, 105:116, 4] == 254).all(axis=1).sum())
    assert bright_rows == [0, 50, 100][r["label"]]
