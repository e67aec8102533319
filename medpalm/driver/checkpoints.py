"""Checkpoints: orbax save / resume of the TrainState and the input position; open-weight import.

Layout: `MODEL_DIR/checkpoint_<step>/{state, dataset}`. orbax writes each step into a temporary
directory and renames it only when every item (and every process) is done, so a run killed while
writing leaves a `*.orbax-checkpoint-tmp-*` directory that is never listed as a step — resume
takes the latest *complete* checkpoint and the stale temporary is cleaned up.

`dataset` holds each process's tf.data iterator (`process_<i>/iterator-*`, see `data.BatchIterator`)
so a resumed run reads exactly the batches an uninterrupted run would have read.

Importing open weights (`RestoreCheckpointConfig.importer`, e.g. `convert.import_paligemma`):
every parameter of the new model is looked up in the imported tree after rewriting its path with
`assignment_map` — a list of `(regex, replacement)`; the first regex that fully matches a path
wins, a `None` replacement means "initialize from scratch"; unmatched paths keep their own name.
A parameter the source lacks is an error unless `fallback_to_scratch=True` (e.g. a new projector).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Any, Callable, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

STEP_PREFIX = "checkpoint"


@dataclasses.dataclass(frozen=True)
class SaveCheckpointConfig:
  """period: save every `period` steps (and always at the end); keep: how many to keep (None:
  all); save_dataset: include the input iterator; use_async: write in the background."""

  period: int = 1000
  keep: int | None = None
  save_dataset: bool = True
  use_async: bool = True


@dataclasses.dataclass(frozen=True)
class RestoreCheckpointConfig:
  """Where a run starts when `MODEL_DIR` has no checkpoint yet (and what eval/infer read).

  path: a `checkpoint_<step>` directory or a model dir (mode "latest"), or, with `importer`,
    the open checkpoint's directory.
  importer: `path -> (config, params, report)` (see `medpalm.convert`).
  assignment_map: [(regex, replacement or None)] from our parameter paths to the source's.
  fallback_to_scratch: parameters missing from the source are initialized from scratch.
  restore_dataset: also restore the input position (only from a medpalm checkpoint).
  """

  path: str | None = None
  mode: str = "latest"
  importer: Callable | None = None
  assignment_map: Sequence[tuple[str, str | None]] = ()
  fallback_to_scratch: bool = False
  restore_dataset: bool = False

  def __post_init__(self):
    if self.mode not in ("latest", "specific"):
      raise ValueError(f"RestoreCheckpointConfig.mode {self.mode!r}: use 'latest' or 'specific'")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  save: SaveCheckpointConfig | None = SaveCheckpointConfig()
  restore: RestoreCheckpointConfig | None = None


# --- the input iterator as an orbax item ------------------------------------------------------


class DatasetHandler(ocp.CheckpointHandler):
  """Saves / restores each process's `data.BatchIterator` under `process_<index>/`."""

  def _prefix(self, directory) -> str:
    return os.path.join(os.fspath(directory), f"process_{jax.process_index()}", "iterator")

  def save(self, directory: epath.Path, args: "DatasetArgs"):
    args.iterator.save(self._prefix(directory))

  def restore(self, directory: epath.Path, args: "DatasetArgs"):
    args.iterator.restore(self._prefix(directory))
    return args.iterator


@ocp.args.register_with_handler(DatasetHandler, for_save=True, for_restore=True)
@dataclasses.dataclass
class DatasetArgs(ocp.args.CheckpointArgs):
  iterator: Any


# --- the manager --------------------------------------------------------------------------------


def ensure_writable(model_dir: str) -> str:
  """Creates `model_dir`; raises ValueError naming it when it cannot be created or written."""
  try:
    os.makedirs(model_dir, exist_ok=True)
    probe = os.path.join(model_dir, f".write_probe_{jax.process_index()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ValueError(f"MODEL_DIR {model_dir!r} is not a writable directory: {e}") from None
  return model_dir


class CheckpointManager:
  """Keeps `checkpoint_<step>` directories of one run.

  Args:
    model_dir: the run's directory.
    save_cfg: when to save, how many to keep, async or not (None: never saves).
    read_only: for eval / infer (never cleans or writes).
  """

  def __init__(
      self, model_dir: str, save_cfg: SaveCheckpointConfig | None = None, read_only: bool = False
  ):
    save_cfg = save_cfg or SaveCheckpointConfig()
    if save_cfg.period < 1:
      raise ValueError(f"SaveCheckpointConfig.period must be >= 1, got {save_cfg.period}")
    self.save_cfg = save_cfg
    options = ocp.CheckpointManagerOptions(
        max_to_keep=save_cfg.keep,
        step_prefix=STEP_PREFIX,
        create=not read_only,
        read_only=read_only,
        cleanup_tmp_directories=not read_only,
        enable_async_checkpointing=save_cfg.use_async,
    )
    self._manager = ocp.CheckpointManager(
        epath.Path(model_dir),
        options=options,
        item_names=("state", "dataset"),
        item_handlers={"state": ocp.StandardCheckpointHandler(), "dataset": DatasetHandler()},
    )

  @property
  def directory(self) -> str:
    return os.fspath(self._manager.directory)

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, f"{STEP_PREFIX}_{step}")

  def save(self, step: int, state, iterator=None) -> bool:
    """Saves `state` (and the iterator's position) as `checkpoint_<step>`; returns True if
    written. The iterator is written synchronously (its position moves on once we return)."""
    items = {"state": ocp.args.StandardSave(state)}
    if iterator is not None and self.save_cfg.save_dataset:
      items["dataset"] = DatasetArgs(iterator)
    return self._manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, step: int, abstract_state, iterator=None):
    """The TrainState at `step`, each leaf in the sharding of `abstract_state`'s leaves."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if iterator is not None:
      if not os.path.isdir(os.path.join(self.step_dir(step), "dataset")):
        raise ValueError(
            f"{self.step_dir(step)} has no input position (saved with "
            "save_dataset=False); cannot resume the data exactly"
        )
      items["dataset"] = DatasetArgs(iterator)
    return self._manager.restore(step, args=ocp.args.Composite(**items)).state

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def find_checkpoint(path: str, mode: str = "latest") -> tuple[str, int]:
  """(model_dir, step) of a `checkpoint_<step>` directory or of a model dir's latest step."""
  path = os.path.normpath(path)
  match = re.fullmatch(rf"{STEP_PREFIX}_(\d+)", os.path.basename(path))
  if match:
    if not os.path.isdir(path):
      raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    return os.path.dirname(path), int(match.group(1))
  if mode == "specific":
    raise ValueError(f"mode 'specific' needs a {STEP_PREFIX}_<step> directory, got {path}")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"model directory {path} does not exist")
  step = CheckpointManager(path, read_only=True).latest_step()
  if step is None:
    raise FileNotFoundError(f"no complete {STEP_PREFIX}_<step> directory in {path}")
  return path, step


# --- importing open weights -------------------------------------------------------------------


def _flatten(tree, prefix="") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    path = f"{prefix}/{key}" if prefix else str(key)
    if isinstance(value, dict):
      out.update(_flatten(value, path))
    else:
      out[path] = value
  return out


def _unflatten(flat: dict[str, Any]) -> dict:
  out: dict = {}
  for path, value in flat.items():
    node = out
    *parents, leaf = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return out


def assign_params(
    source: dict, target: dict, assignment_map=(), fallback_to_scratch: bool = False
) -> tuple[dict, dict[str, list[str]]]:
  """Fills `target` (a params tree: arrays or shape structs) from `source` (nested dicts).

  Returns (params, report) where params take the source's values where assigned and `target`'s
  (the scratch init) elsewhere, and report lists "imported", "scratch" and "unused" paths.
  Raises ValueError naming the parameter on a shape mismatch, or on a missing source parameter
  without `fallback_to_scratch`.
  """
  rules = [(re.compile(pattern), repl) for pattern, repl in assignment_map]
  src, tgt = _flatten(source), _flatten(target)
  out, report = {}, {"imported": [], "scratch": [], "unused": []}
  used = set()
  for path, value in tgt.items():
    source_path = path
    for pattern, repl in rules:
      if pattern.fullmatch(path):
        source_path = None if repl is None else pattern.sub(repl, path)
        break
    if source_path is not None and source_path in src:
      got = np.shape(src[source_path])
      if tuple(got) != tuple(value.shape):
        raise ValueError(
            f"parameter {path}: imported {source_path} has shape {tuple(got)}, "
            f"the model needs {tuple(value.shape)}"
        )
      out[path] = np.asarray(src[source_path]).astype(value.dtype)
      used.add(source_path)
      report["imported"].append(path)
    elif source_path is None or fallback_to_scratch:
      out[path] = value
      report["scratch"].append(path)
    else:
      raise ValueError(
          f"parameter {path}: not in the imported checkpoint (looked for "
          f"{source_path}); add an assignment_map rule or set "
          "fallback_to_scratch=True"
      )
  report["unused"] = sorted(set(src) - used)
  return _unflatten(out), report


def import_into(state, restore_cfg: RestoreCheckpointConfig, param_shardings):
  """`state` with params replaced by the imported open checkpoint (optimizer state unchanged:
  Adafactor's initial state does not depend on parameter values)."""
  _, source, _ = restore_cfg.importer(restore_cfg.path)
  params, report = assign_params(
      source, state.params, restore_cfg.assignment_map, restore_cfg.fallback_to_scratch
  )
  logging.info(
      "imported %d parameters from %s; %d from scratch: %s; %d unused in the source",
      len(report["imported"]),
      restore_cfg.path,
      len(report["scratch"]),
      report["scratch"],
      len(report["unused"]),
  )
  place = lambda x, s: (
      jax.make_array_from_callback(x.shape, s, lambda i: x[i]) if isinstance(x, np.ndarray) else x
  )
  params = jax.tree.map(place, params, param_shardings)
  return state.replace(params=params), report
