"""The real public excerpts in ../shared/data parse with zero errors (skipped only when that folder
is absent; every behaviour is also covered on generated fixtures in test_readers.py)."""

import collections
import pathlib
import shutil

import numpy as np
import pytest

from tasks import images
from tasks.readers import medmcqa, medqa, precisionfda, pubmedqa, slake, tfrecord, vqa_rad

SHARED = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data"
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} not present")


def _clean(result):
  assert result.skipped == 0, result.skip_reasons[:3]
  return result


def test_medqa_test_split():
  result = _clean(medqa.read(SHARED / "medqa", "test"))
  assert len(result) == 1273
  assert all(len(r["options"]) == 4 for r in result)


def test_medmcqa_rekeyed_dev():
  result = _clean(medmcqa.read(SHARED / "medmcqa", "test"))
  assert len(result) == 2816 and len({r["id"] for r in result}) == 2816


def test_pubmedqa_splits():
  test = _clean(pubmedqa.read(SHARED / "pubmedqa", "test"))
  train = _clean(pubmedqa.read(SHARED / "pubmedqa", "train"))
  assert len(test) == 500 and len(train) == 500
  counts = collections.Counter(r["answer"] for r in [*test, *train])
  assert counts == {"yes": 552, "no": 338, "maybe": 110}


def test_vqa_rad_paper_counts_and_images():
  train = _clean(vqa_rad.read(SHARED / "vqa_rad", "train"))
  test = _clean(vqa_rad.read(SHARED / "vqa_rad", "test"))
  assert len(train) == 1797 and len(test) == 451  # the paper's numbers
  paths = sorted({r["image_path"] for r in [*train, *test]})
  for path in paths[::40]:  # a spread of the real JPEGs through the full preprocessing
    out = images.load_image(path)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8 and out.max() > 0


def test_slake_all_splits_without_images():
  counts = {
      s: len(_clean(slake.read(SHARED / "slake", s, check_images=False))) for s in slake.SPLITS
  }
  # the official files hold 9,835 / 2,099 / 2,094 rows; one train row has an empty answer
  assert counts == {"train": 9834, "validation": 2099, "test": 2094}
  en = slake.read(SHARED / "slake", "test", check_images=False, langs=("en",))
  assert len(en) == 1061


@pytest.fixture(scope="module")
def deepvariant_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("pfda") / "precisionfda"
  for split, name in (
      ("train", "golden.training_examples.tfrecord.gz"),
      ("test", "golden.calling_examples.tfrecord.gz"),
  ):
    (root / split).mkdir(parents=True)
    shutil.copy(SHARED / "deepvariant" / name, root / split / name)
  return root


def test_deepvariant_pileups(deepvariant_dir):
  train = _clean(precisionfda.read(deepvariant_dir, "train"))
  assert len(train) == 49
  assert collections.Counter(r["label"] for r in train) == {0: 1, 1: 12, 2: 36}
  calling = _clean(precisionfda.read(deepvariant_dir, "test", require_label=False))
  assert len(calling) == 84 and {r["label"] for r in calling} == {None}
  with pytest.raises(Exception, match="label"):
    precisionfda.read(deepvariant_dir, "test")  # unlabelled, but labels were required
  for r in [*train, *calling]:
    assert r["image"].shape == (100, 221, 6)
    assert images.pileup_to_image(r["image"]).shape == (224, 224, 3)


def test_variant_type_agrees_with_deepvariant(deepvariant_dir):
  """DeepVariant 1.5 also stores its own variant_type (1 = SNP, 2 = INDEL)."""
  for split, require in (("train", True), ("test", False)):
    path = next((deepvariant_dir / split).glob("*.gz"))
    ours = precisionfda.read(deepvariant_dir, split, require_label=require)
    theirs = [ex["variant_type"][0] for _, ex in tfrecord.iter_examples(path)]
    assert [{"SNP": 1, "INDEL": 2}[r["variant_type"]] for r in ours] == theirs


def test_tfrecord_parser_matches_tensorflow():
  tf = pytest.importorskip("tensorflow")  # a test-only oracle; tasks/readers never imports it
  for name in ("golden.training_examples.tfrecord.gz", "golden.calling_examples.tfrecord.gz"):
    path = SHARED / "deepvariant" / name
    ours = [ex for _, ex in tfrecord.iter_examples(path, verify_data_crc=True)]
    theirs = []
    for raw in tf.data.TFRecordDataset(str(path), compression_type="GZIP"):
      ex = tf.train.Example.FromString(raw.numpy())
      theirs.append(
          {k: list(getattr(v, v.WhichOneof("kind")).value) for k, v in ex.features.feature.items()}
      )
    assert ours == theirs


def test_our_tfrecord_writer_is_readable_by_tensorflow(tmp_path):
  tf = pytest.importorskip("tensorflow")
  from tasks import demo_data

  feats = {"a": [1, -5, 2**40], "b": [b"xy", b""], "c": [0.5, -2.0]}
  demo_data.write_tfrecord_gz(tmp_path / "t.tfrecord.gz", [feats])
  raw = next(iter(tf.data.TFRecordDataset(str(tmp_path / "t.tfrecord.gz"), "GZIP")))
  ex = tf.train.Example.FromString(raw.numpy())
  assert list(ex.features.feature["a"].int64_list.value) == [1, -5, 2**40]
  assert list(ex.features.feature["b"].bytes_list.value) == [b"xy", b""]
  assert list(ex.features.feature["c"].float_list.value) == [0.5, -2.0]


def test_chest_xray_png_and_jpeg_dicom():
  for path in sorted((SHARED / "cxr_images").glob("*.png")):
    out = images.load_image(path)
    assert out.shape == (224, 224, 3) and out.std() > 10
  dcm = next((SHARED / "cxr_images").glob("*.dcm"))  # JPEG-baseline transfer syntax
  native = images.decode_image(dcm)
  assert native.shape == (1024, 1024, 3) and native.std() > 10
  assert images.load_image(dcm).shape == (224, 224, 3)
