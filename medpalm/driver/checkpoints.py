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
What happened to every parameter (imported from where, from scratch, source parameters unused)
is logged at WARNING per tower and written to `<report dir>/import_report.json`; a whole tower
(`vision`, `projector`, `decoder`) from scratch is an error unless `allow_scratch_towers` names
it, because a wrong `assignment_map` with `fallback_to_scratch` would otherwise train that tower
from random weights without a trace.

Every path goes through `etils.epath`, so `gs://` model directories behave as local ones: the
input iterator (a TensorFlow checkpoint, whose own file API cannot be pointed at another object
store endpoint) is written to a local temporary directory and its files moved with epath.

Eval and infer restore the parameters only (`CheckpointManager.restore_params`: orbax partial
restore, each array read straight into its target sharding and dtype): optimizer state (Adafactor
statistics, momentum) is never read, so a slice that holds the parameters can evaluate.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import tempfile
from typing import Any, Callable, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

STEP_PREFIX = "checkpoint"
TOWERS = ("vision", "projector", "decoder")
IMPORT_REPORT = "import_report.json"
logger = logging.getLogger("medpalm")


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
  allow_scratch_towers: towers (among TOWERS) that may come entirely from scratch in an import.
  restore_dataset: also restore the input position (only from a medpalm checkpoint).
  """

  path: str | None = None
  mode: str = "latest"
  importer: Callable | None = None
  assignment_map: Sequence[tuple[str, str | None]] = ()
  fallback_to_scratch: bool = False
  allow_scratch_towers: Sequence[str] = ()
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
  """Saves / restores each process's `data.BatchIterator` under `process_<index>/`.

  The iterator is a TensorFlow checkpoint; it is written to a local temporary directory and its
  files copied with epath (and back), so the same code serves local disks and object stores.
  """

  def _dir(self, directory) -> epath.Path:
    return epath.Path(directory) / f"process_{jax.process_index()}"

  def save(self, directory: epath.Path, args: "DatasetArgs"):
    out = self._dir(directory)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
      args.iterator.save(os.path.join(tmp, "iterator"))
      for name in sorted(os.listdir(tmp)):
        with open(os.path.join(tmp, name), "rb") as f:
          (out / name).write_bytes(f.read())

  def restore(self, directory: epath.Path, args: "DatasetArgs"):
    src = self._dir(directory)
    with tempfile.TemporaryDirectory() as tmp:
      for item in src.iterdir():
        with open(os.path.join(tmp, item.name), "wb") as f:
          f.write(item.read_bytes())
      args.iterator.restore(os.path.join(tmp, "iterator"))
    return args.iterator


@ocp.args.register_with_handler(DatasetHandler, for_save=True, for_restore=True)
@dataclasses.dataclass
class DatasetArgs(ocp.args.CheckpointArgs):
  iterator: Any


# --- the manager --------------------------------------------------------------------------------


def ensure_writable(path: str, what: str = "directory") -> str:
  """Creates the directory `path` (local or gs://); raises ValueError naming it when it cannot
  be created or written."""
  directory = epath.Path(path)
  try:
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / f".write_probe_{jax.process_index()}"
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise ValueError(f"{what} {path!r} is not a writable directory: {e}") from None
  return path


def write_text(path: str, text: str) -> None:
  """Writes a small text file (local or gs://); locally through a rename, so readers never see
  half a file (an object store's upload is atomic by itself)."""
  target = epath.Path(path)
  if "://" in os.fspath(path):
    target.write_text(text)
    return
  tmp = os.fspath(path) + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, os.fspath(path))


class CheckpointManager:
  """Keeps `checkpoint_<step>` directories of one run.

  Args:
    model_dir: the run's directory (local or gs://).
    save_cfg: when to save, how many to keep, async or not (None: never saves).
    read_only: for eval / infer (never cleans or writes).
  """

  def __init__(
      self, model_dir: str, save_cfg: SaveCheckpointConfig | None = None, read_only: bool = False
  ):
    self._model_dir = model_dir
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
    self._params_manager = None

  @property
  def directory(self) -> str:
    return self._model_dir

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def step_dir(self, step: int) -> str:
    return os.fspath(epath.Path(self._model_dir) / f"{STEP_PREFIX}_{step}")

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
      if not (epath.Path(self.step_dir(step)) / "dataset").exists():
        raise ValueError(
            f"{self.step_dir(step)} has no input position (saved with "
            "save_dataset=False); cannot resume the data exactly"
        )
      items["dataset"] = DatasetArgs(iterator)
    return self._manager.restore(step, args=ocp.args.Composite(**items)).state

  def restore_params(self, step: int, abstract_params, dtype=None):
    """The parameters at `step` only (optimizer state is never read), each array read straight
    into the sharding of its `abstract_params` leaf (ShapeDtypeStructs with shardings) and cast
    to `dtype` (e.g. bfloat16 for inference; None: the leaf's dtype)."""
    if dtype is not None:
      abstract_params = jax.tree.map(
          lambda s: jax.ShapeDtypeStruct(s.shape, dtype, sharding=s.sharding), abstract_params
      )
    if self._params_manager is None:
      # The state was saved by StandardCheckpointHandler, whose files PyTreeCheckpointHandler
      # reads; only the latter restores a sub-tree (partial_restore).
      self._params_manager = ocp.CheckpointManager(
          epath.Path(self._model_dir),
          options=ocp.CheckpointManagerOptions(step_prefix=STEP_PREFIX, read_only=True),
          item_names=("state",),
          item_handlers={"state": ocp.PyTreeCheckpointHandler()},
      )
    restore_args = jax.tree.map(
        lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding, global_shape=s.shape, dtype=s.dtype),
        abstract_params,
    )
    args = ocp.args.PyTreeRestore(
        item={"params": abstract_params},
        restore_args={"params": restore_args},
        partial_restore=True,
    )
    restored = self._params_manager.restore(step, args=ocp.args.Composite(state=args))
    return restored.state["params"]

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
    if self._params_manager is not None:
      self._params_manager.close()


def forget_listings(path: str) -> None:
  """Drops this process's cached object-store listings, so that what other processes wrote
  since (a checkpoint finished by a training job) is seen. epath's fsspec backend (gcsfs)
  caches every listing for the life of the process; TensorFlow's file system does not cache."""
  if "://" not in os.fspath(path):
    return
  from etils.epath import backend

  if getattr(epath.Path(path), "_backend", None) is backend.fsspec_backend:
    backend.fsspec_backend.fs(os.fspath(path)).invalidate_cache()


def find_checkpoint(path: str, mode: str = "latest") -> tuple[str, int]:
  """(model_dir, step) of a `checkpoint_<step>` directory or of a model dir's latest step
  (local or gs://)."""
  path = os.fspath(path).rstrip("/")
  forget_listings(path)
  directory = epath.Path(path)
  match = re.fullmatch(rf"{STEP_PREFIX}_(\d+)", directory.name)
  if match:
    if not directory.exists():
      raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    return path[: -len(directory.name)].rstrip("/"), int(match.group(1))
  if mode == "specific":
    raise ValueError(f"mode 'specific' needs a {STEP_PREFIX}_<step> directory, got {path}")
  if not directory.exists():
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
  (the scratch init) elsewhere, and report lists "imported", "scratch" and "unused" paths and
  maps each imported path to its source path ("sources").
  Raises ValueError naming the parameter on a shape mismatch, or on a missing source parameter
  without `fallback_to_scratch`.
  """
  rules = [(re.compile(pattern), repl) for pattern, repl in assignment_map]
  src, tgt = _flatten(source), _flatten(target)
  out, report, sources = {}, {"imported": [], "scratch": [], "unused": []}, {}
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
      sources[path] = source_path
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
  report["sources"] = sources
  return _unflatten(out), report


def import_report(report: dict[str, list], assignments: dict[str, str], source: str) -> dict:
  """The JSON import report: per tower what was loaded and what started from scratch, the
  source parameters left unused, and every model parameter's fate."""
  towers = {}
  for kind in ("imported", "scratch"):
    for path in report[kind]:
      tower = towers.setdefault(path.split("/")[0], {"loaded": [], "scratch": []})
      tower["loaded" if kind == "imported" else "scratch"].append(path)
  fates = {p: f"imported from {assignments[p]}" for p in report["imported"]}
  fates.update({p: "initialized from scratch" for p in report["scratch"]})
  return {
      "source": source,
      "towers": towers,
      "unused_in_source": list(report["unused"]),
      "parameters": dict(sorted(fates.items())),
  }


def check_towers(report: dict, allow_scratch_towers: Sequence[str] = ()) -> None:
  """Raises ValueError naming each tower that an import left entirely from scratch."""
  unknown = sorted(set(allow_scratch_towers) - set(TOWERS))
  if unknown:
    raise ValueError(f"allow_scratch_towers: unknown tower(s) {unknown}; choose from {TOWERS}")
  whole = [
      name
      for name, tower in report["towers"].items()
      if not tower["loaded"] and name not in allow_scratch_towers
  ]
  if whole:
    raise ValueError(
        f"importing {report['source']} left the whole {', '.join(whole)} tower(s) initialized "
        f"from scratch: check RestoreCheckpointConfig.assignment_map (the source's unused "
        f"parameters begin {report['unused_in_source'][:5]}), or name the tower(s) in "
        f"RestoreCheckpointConfig.allow_scratch_towers if that is intended"
    )


def import_into(state, restore_cfg: RestoreCheckpointConfig, param_shardings, report_dir=None):
  """`state` with params replaced by the imported open checkpoint (optimizer state unchanged:
  Adafactor's initial state does not depend on parameter values). `state` may be the params
  alone (eval / infer). Writes `<report_dir>/import_report.json` (process 0)."""
  _, source, _ = restore_cfg.importer(restore_cfg.path)
  params_only = not hasattr(state, "params")
  target = state if params_only else state.params
  params, fate = assign_params(
      source, target, restore_cfg.assignment_map, restore_cfg.fallback_to_scratch
  )
  report = import_report(fate, fate.get("sources", {}), os.fspath(restore_cfg.path))
  for name, tower in sorted(report["towers"].items()):
    logger.warning(
        "import %s: tower %s: %d parameters loaded, %d initialized from scratch%s",
        restore_cfg.path,
        name,
        len(tower["loaded"]),
        len(tower["scratch"]),
        f" ({tower['scratch'][:8]})" if tower["scratch"] else "",
    )
  logger.warning(
      "import %s: %d source parameters unused%s",
      restore_cfg.path,
      len(report["unused_in_source"]),
      f" ({report['unused_in_source'][:8]})" if report["unused_in_source"] else "",
  )
  if report_dir is not None and jax.process_index() == 0:
    ensure_writable(report_dir)
    write_text(os.fspath(epath.Path(report_dir) / IMPORT_REPORT), json.dumps(report, indent=1))
  check_towers(report, restore_cfg.allow_scratch_towers)
  place = lambda x, s: (
      jax.make_array_from_callback(x.shape, s, lambda i: x[i]) if isinstance(x, np.ndarray) else x
  )
  params = jax.tree.map(place, params, param_shardings)
  if params_only:
    return params, report
  return state.replace(params=params), report
