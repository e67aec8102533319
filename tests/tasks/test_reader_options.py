"""Reader options the paper's experiments need: PrecisionFDA regions, Van Veen et al.'s MIMIC-III
split from id files."""

import numpy as np
import pytest

from tasks import demo_data, readers
from tasks.readers import mimic_iii, precisionfda


def _pileups(directory, split, loci):
  examples = []
  for k, locus in enumerate(loci):
    start = int(locus.split(":")[1])
    examples.append(
        {
            "image/encoded": [np.full((4, 5, 6), k, np.uint8).tobytes()],
            "image/shape": [4, 5, 6],
            "label": [k % 3],
            "locus": [f"{locus}-{start}".encode()],
            "variant/encoded": [demo_data._variant_proto("A", ["G"], start - 1)],
        }
    )
  demo_data.write_tfrecord_gz(directory / split / f"{split}.tfrecord.gz", examples)


# Loci on both sides of each boundary of the paper's test region chr20:3,000,001-9,444,417.
TEST_LOCI = {
    "chr20:3000000": False,
    "chr20:3000001": True,
    "chr20:5000000": True,
    "chr20:9444417": True,
    "chr20:9444418": False,
    "chr21:5000000": False,
    "chr2:5000000": False,
}
# Training excludes chr20, chr21, chr22 (their first and last bases), keeps the rest.
TRAIN_LOCI = {
    "chr19:58617616": True,
    "chr20:1": False,
    "chr20:64444167": False,
    "chr21:1": False,
    "chr22:50818468": False,
    "chr2:20": True,
    "chrX:1000": True,
    "20:7": False,  # GRCh37 contig names
}


def test_paper_test_region_keeps_exactly_the_loci_inside(tmp_path):
  _pileups(tmp_path, "test", list(TEST_LOCI))
  result = precisionfda.read(tmp_path, "test", regions="paper")
  kept = [r["locus"].rsplit("-", 1)[0] for r in result]
  assert kept == [locus for locus, inside in TEST_LOCI.items() if inside]
  assert result.filtered == {"outside regions": 4}
  assert len(precisionfda.read(tmp_path, "test")) == len(TEST_LOCI)  # no option: everything


def test_paper_train_regions_exclude_chr20_to_22(tmp_path):
  _pileups(tmp_path, "train", list(TRAIN_LOCI))
  result = precisionfda.read(tmp_path, "train", exclude_regions=("chr20", "chr21", "chr22"))
  kept = [r["locus"].rsplit("-", 1)[0] for r in result]
  assert kept == [locus for locus, keep in TRAIN_LOCI.items() if keep]
  # The paper's train selection also samples 4 %: a fixed subset of those, the same every time.
  paper = [r["locus"] for r in precisionfda.read(tmp_path, "train", regions="paper")]
  assert paper == [r["locus"] for r in precisionfda.read(tmp_path, "train", regions="paper")]
  assert set(paper) <= {r["locus"] for r in result}


def test_sample_fraction_is_close_to_the_fraction():
  loci = [f"chr1:{i}-{i}" for i in range(1, 20001)]
  share = np.mean([precisionfda.sampled(locus, 0.04) for locus in loci])
  assert 0.035 < share < 0.045


def test_bad_regions_are_clear_errors(tmp_path):
  with pytest.raises(ValueError, match="need 1 <= START <= END"):
    precisionfda.parse_region("chr20:9-3")
  _pileups(tmp_path, "test", ["chr20:5"])
  with pytest.raises(ValueError, match="sample_fraction"):
    precisionfda.read(tmp_path, "test", sample_fraction=0)


# ---------------------------------------------------------------------------- MIMIC-III split


@pytest.fixture(scope="module")
def mimic_root(tmp_path_factory):
  root = tmp_path_factory.mktemp("mimic3")
  demo_data.write(root, "mimic_iii", num_examples=6, seed=0)
  return root / "mimic_iii"


def test_van_veen_split_from_id_files(mimic_root, tmp_path):
  default = {s: mimic_iii.read(mimic_root, s).records for s in mimic_iii.SPLITS}
  ids = sorted(r["id"] for records in default.values() for r in records)
  assert len(ids) >= 6
  # A different assignment than the hash split: rotate, and leave one report out.
  chosen = {"train": ids[1:4], "validation": ids[4:5], "test": ids[5:]}
  (tmp_path / "train.txt").write_text("ROW_ID\n" + "\n".join(chosen["train"]) + "\n")
  (tmp_path / "val.txt").write_text("# validation\n" + "\n".join(chosen["validation"]) + "\n")
  (tmp_path / "test.txt").write_text("\n".join(chosen["test"]) + "\n\n")
  for split in mimic_iii.SPLITS:
    result = mimic_iii.read(mimic_root, split, split_ids_dir=tmp_path)
    assert [r["id"] for r in result] == sorted(chosen[split], key=ids.index)
    assert result.filtered["ROW_ID not in the supplied split"] >= 1  # ids[0]
  # Through the task registry as well (the reader option the tasks pass on).
  assert len(readers.read_task("mimic_iii", "test", data_dir=mimic_root, split_ids_dir=tmp_path))


def test_van_veen_split_errors_name_the_file(mimic_root, tmp_path):
  with pytest.raises(readers.MissingDatasetError, match="train.txt"):
    mimic_iii.read(mimic_root, "test", split_ids_dir=tmp_path)
  for name in ("train.txt", "validation.txt", "test.txt"):
    (tmp_path / name).write_text("1001\n")
  with pytest.raises(readers.ReaderError, match=r"validation.txt:1: field 'ROW_ID': 1001 is also"):
    mimic_iii.read(mimic_root, "test", split_ids_dir=tmp_path)
