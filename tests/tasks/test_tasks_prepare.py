"""`python -m tasks.prepare`: shards, progress, restart without redoing finished shards, bad images."""

import json
import os
import weakref

import pytest
import seqio

from tasks import demo_data, multimedbench, prepare
from tests.support.tasks_env import IMAGE_SIZE, LONG, NUM_IMAGE_TOKENS


@pytest.fixture()
def vqa_rad(tmp_path):
  demo_data.write(tmp_path / "data", "vqa_rad", num_examples=6, seed=1)
  return tmp_path / "data", tmp_path / "prepared"


def _counting_load(monkeypatch):
  calls = []
  real = prepare._load

  def load(item):
    calls.append(item[0])
    return real(item)

  monkeypatch.setattr(prepare, "_load", load)
  return calls


def test_prepare_writes_shards_and_is_restartable(vqa_rad, monkeypatch, capsys):
  data, out = vqa_rad
  calls = _counting_load(monkeypatch)
  result = prepare.prepare(
      ["vqa_rad"], data_dir=str(data), prepared_dir=str(out), image_size=IMAGE_SIZE, shard_size=2
  )
  assert "vqa_rad/train" in capsys.readouterr().err  # the progress bar
  train = out / "vqa_rad" / f"{IMAGE_SIZE}px" / "train"
  manifest = result["vqa_rad"]["train"]
  keys = json.loads((train / "keys.json").read_text())
  assert manifest["num_images"] == len(keys) and len(calls) == sum(
      m["num_images"] for m in result["vqa_rad"].values()
  )
  assert len(manifest["shards"]) == -(-len(keys) // 2) >= 2
  assert sum(1 for _ in open(train / "records-vqa_rad.jsonl")) == manifest["records"]["vqa_rad"]

  # An interrupted run: the manifest and the last shard are missing, a partial .tmp remains.
  stamps = {n: os.stat(train / n).st_mtime_ns for n in manifest["shards"]}
  last = manifest["shards"][-1]
  (train / "manifest.json").unlink()
  (train / last).rename(train / (last + ".tmp"))
  calls.clear()
  again = prepare.prepare(
      ["vqa_rad"],
      data_dir=str(data),
      prepared_dir=str(out),
      image_size=IMAGE_SIZE,
      shard_size=2,
      progress_bar=False,
  )
  assert calls == keys[(len(manifest["shards"]) - 1) * 2 :]  # only the missing shard's images
  assert again["vqa_rad"]["train"] == manifest
  for name in manifest["shards"][:-1]:
    assert os.stat(train / name).st_mtime_ns == stamps[name]
  assert not (train / (last + ".tmp")).exists()


def test_bad_image_raises_or_is_skipped_with_its_records(vqa_rad, tmp_path_factory, tasks_env):
  data, out = vqa_rad
  image = sorted((data / "vqa_rad" / "images").iterdir())[0]
  image.write_bytes(image.read_bytes()[:40])  # truncated
  with pytest.raises(ValueError, match=image.name):
    prepare.prepare(
        ["vqa_rad"],
        data_dir=str(data),
        prepared_dir=str(out),
        image_size=IMAGE_SIZE,
        progress_bar=False,
    )
  result = prepare.prepare(
      ["vqa_rad"],
      data_dir=str(data),
      prepared_dir=str(out),
      image_size=IMAGE_SIZE,
      on_error="skip",
      progress_bar=False,
  )
  for split, manifest in result["vqa_rad"].items():
    records = [
        json.loads(line)
        for line in open(out / "vqa_rad" / f"{IMAGE_SIZE}px" / split / "records-vqa_rad.jsonl")
    ]
    assert all(r["image_key"] != str(image) for r in records)
    assert len(records) == manifest["records"]["vqa_rad"]
  assert sum(m["failed_images"] for m in result["vqa_rad"].values()) >= 1

  # The task reads what was prepared: every kept record, each with its image.
  env = tasks_env
  cfg = multimedbench.TaskConfig(
      task="vqa_rad",
      name="mmbtest_skip_vqa_rad",
      image_size=IMAGE_SIZE,
      num_image_tokens=NUM_IMAGE_TOKENS,
      data_dir=str(data),
      prepared_dir=str(out),
  )
  multimedbench.register(cfg, env.vocabulary)
  examples = list(
      seqio.get_mixture_or_task(cfg.name)
      .get_dataset(LONG, split="test", shuffle=False)
      .as_numpy_iterator()
  )
  assert len(examples) == result["vqa_rad"]["test"]["records"]["vqa_rad"]
  assert all(ex["image_mask"].all() and ex["images"].max() > 0 for ex in examples)


def test_only_image_datasets_are_prepared(tmp_path):
  with pytest.raises(ValueError, match="medqa"):
    prepare.prepare(["medqa"], data_dir=str(tmp_path), prepared_dir=str(tmp_path / "p"))


def test_prepare_to_an_object_store_writes_the_same_files(vqa_rad, gcs):
  """`--prepared_dir gs://...` against the local GCS server: every file of every split arrives,
  byte for byte the local run's, no local `gs:` directory appears, and the manifest loads back
  from the bucket."""
  from etils import epath

  data, out = vqa_rad
  kwargs = dict(data_dir=str(data), image_size=IMAGE_SIZE, shard_size=2, progress_bar=False)
  local = prepare.prepare(["vqa_rad"], prepared_dir=str(out), **kwargs)
  remote_root = "gs://bucket/prepared"
  remote = prepare.prepare(["vqa_rad"], prepared_dir=remote_root, **kwargs)
  assert remote == local
  for split in local["vqa_rad"]:
    here = out / "vqa_rad" / f"{IMAGE_SIZE}px" / split
    there = epath.Path(remote_root) / "vqa_rad" / f"{IMAGE_SIZE}px" / split
    names = sorted(p.name for p in here.iterdir())
    assert sorted(p.name for p in there.iterdir()) == names
    for name in names:
      assert (there / name).read_bytes() == (here / name).read_bytes(), name
    sdir, manifest = prepare.load_manifest(remote_root, "vqa_rad", IMAGE_SIZE, split)
    assert os.fspath(sdir).startswith("gs://") and manifest == local["vqa_rad"][split]
  assert not os.path.exists("gs:")


def test_precisionfda_pileups_are_prepared_one_shard_at_a_time(tmp_path, monkeypatch):
  """PrecisionFDA's records carry their pileup arrays (~26 GB for the full training split):
  prepare streams them, holding one shard's pileups at a time, restarts like any dataset, and
  writes the same files as reading each split into a list does."""
  from tasks.readers import precisionfda

  data = tmp_path / "data"
  demo_data.write(data, "precisionfda", num_examples=8, seed=1)
  kwargs = dict(data_dir=str(data), image_size=IMAGE_SIZE, shard_size=2, progress_bar=False)
  real_iter_read, refs, most_alive, passes = precisionfda.iter_read, [], [0], []

  def iter_read(*args, **kw):  # the real reader, counting passes and the pileups still alive
    passes.append(args[1])
    for record in real_iter_read(*args, **kw):
      refs.append(weakref.ref(record["image"]))
      most_alive[0] = max(most_alive[0], sum(ref() is not None for ref in refs))
      yield record

  monkeypatch.setattr(precisionfda, "iter_read", iter_read)
  streamed = prepare.prepare(["precisionfda"], prepared_dir=str(tmp_path / "streamed"), **kwargs)
  train = tmp_path / "streamed" / "precisionfda" / f"{IMAGE_SIZE}px" / "train"
  manifest = streamed["precisionfda"]["train"]
  assert manifest["num_images"] >= 8 and len(manifest["shards"]) >= 4
  assert most_alive[0] <= 2 + 2  # one shard's pileups, and the records in flight

  # Interrupted: a middle shard and the manifest are missing; only that shard is written again.
  middle = manifest["shards"][1]
  written = (train / middle).read_bytes()
  (train / middle).unlink()
  (train / "manifest.json").unlink()
  calls = _counting_load(monkeypatch)
  assert (
      prepare.prepare(["precisionfda"], prepared_dir=str(tmp_path / "streamed"), **kwargs)[
          "precisionfda"
      ]["train"]
      == manifest
  )
  assert calls == json.loads((train / "keys.json").read_text())[2:4]
  assert (train / middle).read_bytes() == written

  # Only the manifest is missing: every shard is there, the records are read once, for the keys.
  (train / "manifest.json").unlink()
  passes.clear()
  prepare.prepare(["precisionfda"], prepared_dir=str(tmp_path / "streamed"), **kwargs)
  assert passes == ["train"]

  monkeypatch.setattr(prepare, "_streams", lambda dataset: False)  # whole splits as lists
  listed = prepare.prepare(["precisionfda"], prepared_dir=str(tmp_path / "listed"), **kwargs)
  assert listed == streamed
  files = sorted(p.relative_to(tmp_path / "listed") for p in (tmp_path / "listed").rglob("*.*"))
  assert files and all(
      (tmp_path / "listed" / f).read_bytes() == (tmp_path / "streamed" / f).read_bytes()
      for f in files
  )
