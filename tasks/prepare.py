"""One-time preparation of the image datasets: official files → TFRecord shards of uint8 images.

    python -m tasks.prepare [DATASET ...] [--image_size 224] [--num_workers 8] [--on_error skip]

(no DATASET: every image dataset present under $MEDPALM_DATA_DIR). Training then reads small
fixed-size records instead of decoding DICOM/JPEG every epoch.

Layout, per dataset and split (``<root>`` = --prepared_dir, else $MEDPALM_PREPARED_DIR, else
``$MEDPALM_DATA_DIR/prepared``):

  <root>/<dataset>/<size>px/<split>/
    images-00000-of-00012.tfrecord   tf.train.Example {key: bytes, image: bytes = uint8[size,size,3]}
    records-<task>.jsonl             the reader's records of each task of the dataset (image arrays
                                     removed, ``image_key`` added), the tasks' text side
    keys.json                        image keys in shard order (detects a changed dataset)
    manifest.json                    written last: the split is complete when it exists

``<root>`` may be an object store (``gs://bucket/prepared``): every file goes through
``etils.epath``. A shard is written to a local temporary file and then published whole (a
rename on a local disk, one object upload on GCS), so a reader never sees half a shard.
Restartable: a rerun keeps finished shards (same keys) and writes only the missing ones. An
image that fails to decode raises an error naming the file, or with ``--on_error skip`` is left
out together with its records (counted). PrecisionFDA's reader streams (its records hold their
pileups, ~26 GB for the training split): its images are read twice, once for the keys and once
for the shards, and only one shard's images are held at a time.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import multiprocessing
import os
import pathlib
import shutil
import sys
import tempfile
from typing import Iterable, Sequence

import numpy as np
from etils import epath
from PIL import Image

from tasks import images as image_lib
from tasks import readers

log = logging.getLogger("tasks.prepare")

PREPARED_ENV = "MEDPALM_PREPARED_DIR"
IMAGE_DATASETS = (
    "vqa_rad",
    "slake",
    "path_vqa",
    "mimic_cxr",
    "pad_ufes_20",
    "vindr_mammo",
    "cbis_ddsm",
    "precisionfda",
    "montgomery",
)
VERSION = 1
# Multi-image records (``image_paths``) whose images are prepared only for these splits: the
# two-view task is evaluation-only, its training records serve as text-only exemplars.
IMAGES_ONLY_FOR = {"mimic_cxr_report_two_view": ("validation", "test")}


class NotPreparedError(FileNotFoundError):
  """An image task whose dataset has not been through ``python -m tasks.prepare``."""


def dataset_tasks(dataset: str) -> list[str]:
  """The multimedbench task suffixes served by one dataset (mimic_cxr → report + classification
  + two-view report), the evaluation-only experiments included."""
  return [t for t, (module, _) in readers.ALL_TASK_READERS.items() if module == dataset]


def prepared_root(prepared_dir=None, data_dir=None) -> epath.Path:
  """The prepared-data root, local or ``gs://`` (see the module docstring)."""
  root = prepared_dir or os.environ.get(PREPARED_ENV)
  if root:
    return epath.Path(root)
  data = data_dir or os.environ.get(readers.DATA_DIR_ENV)
  if not data:
    raise NotPreparedError(
        f"no prepared-data directory: pass --prepared_dir, or set "
        f"${PREPARED_ENV} or ${readers.DATA_DIR_ENV}"
    )
  return epath.Path(data) / "prepared"


def split_dir(root, dataset: str, image_size: int, split: str) -> epath.Path:
  return epath.Path(root) / dataset / f"{image_size}px" / split


def image_key(record: dict) -> str:
  """Records with the same key share one prepared image (an image file, or the record itself).
  A multi-image record (``image_paths``) is one prepared entry holding its images stacked
  (``uint8[N, size, size, 3]``), or, with ``image_layout == "side_by_side"``, composed into one
  image (VinDr-Mammo's bilateral view)."""
  if record.get("image_paths"):
    layout = record.get("image_layout", "stack")
    return f"{layout}:" + "|".join(record["image_paths"])
  return record["image_path"] if record.get("image_path") else f"id:{record['id']}"


def image_source(record: dict):
  """What `_load` decodes for a record: a path, a pileup array, or (layout, paths)."""
  if record.get("image_paths"):
    return (record.get("image_layout", "stack"), tuple(record["image_paths"]))
  return record["image_path"] if record.get("image_path") else record["image"]


def side_by_side(images: Sequence[np.ndarray]) -> np.ndarray:
  """``uint8[H_i, W_i, 3]`` images → one ``uint8[H, sum W, 3]``, each scaled to the tallest
  height (aspect kept), left to right in the given order."""
  height = max(im.shape[0] for im in images)
  scaled = []
  for im in images:
    if im.shape[0] != height:
      width = max(1, round(im.shape[1] * height / im.shape[0]))
      im = np.asarray(Image.fromarray(im).resize((width, height), Image.BICUBIC))
    scaled.append(im)
  return np.concatenate(scaled, axis=1)


def shard_name(index: int, count: int) -> str:
  return f"images-{index:05d}-of-{count:05d}.tfrecord"


def _load(item) -> tuple[str, np.ndarray | None, str | None]:
  """(key, source, size) → (key, uint8[size, size, 3] or None, error message or None)."""
  key, source, size = item
  try:
    if isinstance(source, np.ndarray):
      return key, image_lib.pileup_to_image(source, size), None
    if isinstance(source, tuple):
      layout, paths = source
      if layout == "side_by_side":
        images = [image_lib.decode_image(p) for p in paths]
        return key, image_lib.resize_and_pad(side_by_side(images), size), None
      return key, np.stack([image_lib.load_image(p, size) for p in paths]), None
    return key, image_lib.load_image(source, size), None
  except (ValueError, OSError) as e:
    return key, None, f"{source if isinstance(source, str) else key}: {e}"


def _publish(local: pathlib.Path, dest: epath.Path) -> None:
  """Moves a finished local file to ``dest`` whole: a rename beside it on a local disk, one
  streamed upload (an object appears only when complete) on an object store."""
  if "://" not in os.fspath(dest):
    tmp = pathlib.Path(os.fspath(dest) + ".tmp")
    shutil.move(local, tmp)
    os.replace(tmp, os.fspath(dest))
    return
  with open(local, "rb") as src, dest.open("wb") as dst:
    shutil.copyfileobj(src, dst, length=1 << 24)
  local.unlink()


def _write_shard(path: epath.Path, items: Sequence, on_error: str, pool, progress) -> list[str]:
  """Writes one shard (published whole, see `_publish`); returns the keys of images that failed
  (skip mode)."""
  import tensorflow as tf  # only here: prepare's reading side needs no TensorFlow

  failed: list[str] = []
  fd, tmp = tempfile.mkstemp(suffix=".tfrecord", prefix="medpalm-shard-")
  os.close(fd)
  tmp = pathlib.Path(tmp)
  try:
    with tf.io.TFRecordWriter(str(tmp)) as writer:
      results = pool.imap(_load, items, chunksize=4) if pool else map(_load, items)
      for key, image, error in results:
        progress.update(1)
        if error is not None:
          if on_error == "raise":
            raise ValueError(f"cannot prepare image {error}")
          log.warning("skipping image %s", error)
          failed.append(key)
          continue
        feature = {
            "key": tf.train.Feature(bytes_list=tf.train.BytesList(value=[key.encode()])),
            "image": tf.train.Feature(
                bytes_list=tf.train.BytesList(
                    value=[np.ascontiguousarray(image, np.uint8).tobytes()]
                )
            ),
        }
        writer.write(
            tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
        )
    path.parent.joinpath(path.name + ".failed.json").write_text(json.dumps(failed))
    _publish(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)
  return failed


def _streams(dataset: str) -> bool:
  """Whether the dataset's reader streams its records (`readers.iter_task`)."""
  return hasattr(readers.get_module(dataset), "iter_read")


def _streamed_sources(records: Iterable[dict], keys: Sequence[str], where: str):
  """Yields (key, image source) for each of `keys`, in order, from a second pass over a
  streaming reader's records (each key's first record, as the first pass took them)."""
  wanted, expected, seen = set(keys), iter(keys), set()
  for r in records:
    key = image_key(r)
    if key in seen or key not in wanted:
      continue
    seen.add(key)
    if key != next(expected, None):
      raise ValueError(
          f"{where}: the records changed while being prepared (image {key} out of order)"
      )
    yield key, image_source(r)
  missing = next(expected, None)
  if missing is not None:
    raise ValueError(f"{where}: the records changed while being prepared (image {missing} is gone)")


def _jsonable(record: dict) -> dict:
  out = {k: v for k, v in record.items() if not isinstance(v, np.ndarray)}
  out["image_key"] = image_key(record)
  return out


def prepare_split(
    dataset: str,
    split: str,
    *,
    data_dir=None,
    root,
    image_size: int = image_lib.IMAGE_SIZE,
    shard_size: int = 1000,
    on_error: str = "raise",
    pool=None,
    progress_bar: bool = True,
    reader_options: dict | None = None,
) -> dict:
  """Prepares one split of one dataset; returns its manifest (dict). ``pool``: an optional
  multiprocessing pool that decodes images in parallel. ``reader_options``: keyword options of
  the dataset's reader (e.g. PrecisionFDA ``{"regions": "paper"}``)."""
  from tqdm import tqdm

  out = split_dir(root, dataset, image_size, split)
  if (out / "manifest.json").exists():
    manifest = json.loads((out / "manifest.json").read_text())
    if manifest.get("version") == VERSION:
      log.info("%s/%s already prepared at %s", dataset, split, out)
      return manifest
  out.mkdir(parents=True, exist_ok=True)
  options = dict(data_dir=data_dir, on_error=on_error, **(reader_options or {}))
  image_tasks = [t for t in dataset_tasks(dataset) if split in IMAGES_ONLY_FOR.get(t, (split,))]
  # A streaming reader's records hold their images (PrecisionFDA's pileups, ~26 GB for the
  # training split): the first pass keeps only their text side and image keys, and the shards
  # are written from a second pass (`_streamed_sources`), one shard's images at a time.
  streamed = _streams(dataset)
  per_task: dict[str, list[dict]] = {}
  sources: dict[str, object] = {}
  for task in dataset_tasks(dataset):
    if streamed:
      records = readers.iter_task(task, split, **options)
    else:
      records = readers.read_task(task, split, **options).records
    per_task[task] = []
    for r in records:
      if task in image_tasks:
        sources.setdefault(image_key(r), None if streamed else image_source(r))
      per_task[task].append(_jsonable(r) if streamed else r)
  keys = list(sources)
  keys_path = out / "keys.json"
  if keys_path.exists() and json.loads(keys_path.read_text()) != keys:
    log.warning("%s/%s: the dataset changed since the last run; redoing all shards", dataset, split)
    for old in out.glob("images-*"):
      old.unlink()
  keys_path.write_text(json.dumps(keys))

  num_shards = max(1, -(-len(keys) // shard_size))
  names = [shard_name(i, num_shards) for i in range(num_shards)]
  done = [i for i, n in enumerate(names) if (out / n).exists()]
  remaining = len(keys) - sum(len(keys[i * shard_size : (i + 1) * shard_size]) for i in done)
  failed: list[str] = []
  for i in done:
    failed += json.loads((out / (names[i] + ".failed.json")).read_text())
  with tqdm(
      total=len(keys),
      initial=len(keys) - remaining,
      unit="img",
      desc=f"{dataset}/{split}",
      disable=not progress_bar,
      file=sys.stderr,
  ) as bar:
    second_pass = (
        _streamed_sources(
            (r for t in image_tasks for r in readers.iter_task(t, split, **options)),
            keys,
            f"{dataset}/{split}",
        )
        if streamed
        else None
    )
    todo = [i for i in range(num_shards) if i not in done]
    for i, name in enumerate(names[: todo[-1] + 1 if todo else 0]):  # nothing to read past it
      chunk = keys[i * shard_size : (i + 1) * shard_size]
      if streamed:  # the stream runs in key order: a finished shard's images are read past
        items = [(k, source, image_size) for k, source in itertools.islice(second_pass, len(chunk))]
      else:
        items = [(k, sources[k], image_size) for k in chunk]
      if i not in done:
        failed += _write_shard(out / name, items, on_error, pool, bar)
      del items  # freed before the next shard's images are read
  bad = set(failed)
  counts = {}
  for task, records in per_task.items():
    kept = [r for r in records if image_key(r) not in bad]
    if split not in IMAGES_ONLY_FOR.get(task, (split,)):
      kept = records  # text-only exemplars: no prepared image
    counts[task] = len(kept)
    (out / f"records-{task}.jsonl").write_text(
        "".join(json.dumps(_jsonable(r), ensure_ascii=False) + "\n" for r in kept),
        encoding="utf-8",
    )
  manifest = {
      "version": VERSION,
      "dataset": dataset,
      "split": split,
      "image_size": image_size,
      "num_images": len(keys) - len(bad),
      "shards": names,
      "shard_size": shard_size,
      "failed_images": len(bad),
      "records": counts,
  }
  (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
  return manifest


def prepare(
    datasets: Iterable[str] = (),
    *,
    data_dir=None,
    prepared_dir=None,
    image_size: int = image_lib.IMAGE_SIZE,
    shard_size: int = 1000,
    on_error: str = "raise",
    num_workers: int = 0,
    progress_bar: bool = True,
    reader_options: dict[str, dict] | None = None,
) -> dict[str, dict[str, dict]]:
  """Prepares every split of ``datasets`` (default: all image datasets present).

  ``data_dir`` is the root holding one sub-directory per dataset (default $MEDPALM_DATA_DIR).
  ``reader_options``: {dataset: keyword options of its reader}.
  Returns {dataset: {split: manifest}}.
  """
  datasets = list(datasets)
  root_data = data_dir or os.environ.get(readers.DATA_DIR_ENV)
  if not datasets:
    if not root_data:
      raise readers.MissingDatasetError(f"set ${readers.DATA_DIR_ENV} or pass --data_dir")
    datasets = [
        d
        for d in IMAGE_DATASETS
        if (pathlib.Path(root_data) / readers.get_module(d).DATASET_DIR).is_dir()
    ]
    if not datasets:
      raise readers.MissingDatasetError(
          f"no image dataset under {root_data}; expected one " f"of {', '.join(IMAGE_DATASETS)}"
      )
  unknown = [d for d in datasets if d not in IMAGE_DATASETS]
  if unknown:
    raise ValueError(
        f"not image datasets: {unknown}; text datasets need no preparation. "
        f"Image datasets: {', '.join(IMAGE_DATASETS)}"
    )
  root = prepared_root(prepared_dir, root_data)
  out: dict[str, dict[str, dict]] = {}
  # Spawned workers (not forked: the parent has TensorFlow's threads) import the tasks package
  # once each, so one pool serves every split.
  pool = multiprocessing.get_context("spawn").Pool(num_workers) if num_workers > 1 else None
  try:
    for dataset in datasets:
      module = readers.get_module(dataset)
      ddir = pathlib.Path(root_data) / module.DATASET_DIR if root_data else None
      for split in module.SPLITS:
        out.setdefault(dataset, {})[split] = prepare_split(
            dataset,
            split,
            data_dir=ddir,
            root=root,
            image_size=image_size,
            shard_size=shard_size,
            on_error=on_error,
            pool=pool,
            progress_bar=progress_bar,
            reader_options=(reader_options or {}).get(dataset),
        )
  finally:
    if pool:
      pool.close()
      pool.join()
  return out


def load_manifest(root, dataset: str, image_size: int, split: str) -> tuple[epath.Path, dict]:
  """(split directory, manifest) of a prepared split, or NotPreparedError with the command."""
  out = split_dir(root, dataset, image_size, split)
  path = out / "manifest.json"
  if not path.exists():
    raise NotPreparedError(
        f"{dataset} ({split}) is not prepared at {image_size}px: expected {path}. Run "
        f"`python -m tasks.prepare {dataset}"
        + ("" if image_size == image_lib.IMAGE_SIZE else f" --image_size {image_size}")
        + f"` (prepared root {root}; set ${PREPARED_ENV} to change it)"
    )
  manifest = json.loads(path.read_text())
  if manifest.get("version") != VERSION or manifest.get("image_size") != image_size:
    raise NotPreparedError(
        f"{path} is from another version/size ({manifest.get('version')}, "
        f"{manifest.get('image_size')}px); rerun `python -m tasks.prepare "
        f"{dataset}` after deleting {out}"
    )
  return out, manifest


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("datasets", nargs="*", help=f"any of {', '.join(IMAGE_DATASETS)}")
  parser.add_argument("--data_dir", default=None, help=f"default ${readers.DATA_DIR_ENV}")
  parser.add_argument(
      "--prepared_dir",
      default=None,
      help=f"default ${PREPARED_ENV} or ${readers.DATA_DIR_ENV}/prepared",
  )
  parser.add_argument("--image_size", type=int, default=image_lib.IMAGE_SIZE)
  parser.add_argument("--shard_size", type=int, default=1000)
  parser.add_argument("--num_workers", type=int, default=os.cpu_count() or 1)
  parser.add_argument("--on_error", choices=("raise", "skip"), default="raise")
  parser.add_argument(
      "--reader_options",
      type=json.loads,
      default=None,
      help='JSON {dataset: {option: value}}, e.g. \'{"precisionfda": {"regions": "paper"}}\'',
  )
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  result = prepare(
      args.datasets,
      data_dir=args.data_dir,
      prepared_dir=args.prepared_dir,
      image_size=args.image_size,
      shard_size=args.shard_size,
      on_error=args.on_error,
      num_workers=args.num_workers,
      reader_options=args.reader_options,
  )
  for dataset, splits in result.items():
    for split, m in splits.items():
      print(
          f"{dataset}/{split}: {m['num_images']} images in {len(m['shards'])} shard(s), "
          f"records {m['records']}, failed images {m['failed_images']}"
      )


if __name__ == "__main__":
  main()
