"""The one batch runner of evaluation and inference: padded batches through partitioned steps.

Evaluation (`medpalm.evaluation.evaluator`), the driver's `--run_mode=eval` and `--run_mode=infer`
all run a model function over every example of a dataset the same way:

1. `padded_batches` streams fixed-size batches from an enumerated dataset of model features (one
   batch in host memory at a time); the last batch is filled with copies of its first row at
   index -1, so every batch has one shape and the step compiles once.
2. `BatchRunner.compile` jits a `fn(params, batch)` through the run's `Partitioner`: parameters in
   their mesh shardings, the batch split over the data axes, outputs replicated.
3. `BatchRunner.run` cuts this process's rows out of the global batch (every process reads the
   whole, small, evaluation set), assembles the global arrays and returns the outputs as numpy.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import numpy as np

from medpalm.partitioning import Partitioner, PartitionedFn

Batch = Mapping[str, np.ndarray]


def padded_batches(ds, batch_size: int) -> Iterator[tuple[np.ndarray, dict]]:
  """(indices int[B], batch {feature: array[B, ...]}) over a dataset of (index, example) pairs.

  `ds` is anything with `as_numpy_iterator()` (a `tf.data.Dataset` after `.enumerate()`);
  features whose name starts with "_" are dropped. Callers skip rows at index -1.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  chunk: list = []
  for index, example in ds.as_numpy_iterator():
    chunk.append((int(index), example))
    if len(chunk) == batch_size:
      yield _stack(chunk, batch_size)
      chunk = []
  if chunk:
    yield _stack(chunk, batch_size)


def _stack(chunk: Sequence, batch_size: int) -> tuple[np.ndarray, dict]:
  indices = [i for i, _ in chunk] + [-1] * (batch_size - len(chunk))
  examples = [ex for _, ex in chunk]
  examples += [examples[0]] * (batch_size - len(examples))
  names = [k for k in examples[0] if not k.startswith("_")]
  return np.asarray(indices), {k: np.stack([ex[k] for ex in examples]) for k in names}


def single_device_partitioner() -> Partitioner:
  """A 1×1×1 mesh on the default device: what a caller without a partitioner runs on."""
  return Partitioner(data=1, fsdp=1, model=1, devices=jax.devices()[:1])


class BatchRunner:
  """Runs partitioned `fn(params, batch)` steps over global batches of `batch_size` examples.

  Args:
    partitioner: the run's partitioner (mesh, rules, data layout).
    batch_size: global examples per batch; must split over the mesh's data × fsdp shards.
    params_axes: mesh PartitionSpecs mirroring the params (None: replicated).
    validate: `validate(batch)` called on every global host batch before it reaches the devices
      (the model's placeholder / image checks).
  """

  def __init__(
      self,
      partitioner: Partitioner,
      batch_size: int,
      params_axes: Any = None,
      validate: Callable[[Batch], None] | None = None,
  ):
    self.partitioner, self.batch_size = partitioner, batch_size
    self.params_axes = params_axes
    self.validate = validate
    self.layout = partitioner.get_data_layout(batch_size)

  def compile(self, fn: Callable[..., Any], num_replicated: int = 0) -> PartitionedFn:
    """`fn(params, batch, *replicated)` jitted with the params' shardings, the batch split over
    the data axes and `num_replicated` further arguments (e.g. a sampling key) replicated."""
    return self.partitioner.partition(
        fn,
        in_axis_resources=(
            self.params_axes,
            self.partitioner.data_partition_spec,
            *([None] * num_replicated),
        ),
        out_axis_resources=None,
    )

  def place(self, params) -> Any:
    """`params` in the shardings the compiled steps take (a no-op for params already there):
    params restored or computed elsewhere (numpy, one device, another mesh) are accepted."""
    if self.params_axes is None:
      return jax.device_put(params, self.partitioner.sharding(None))
    return jax.device_put(params, self.partitioner.shardings(self.params_axes))

  def run(self, step: PartitionedFn, params, batch: Batch, *replicated) -> Any:
    """Outputs of `step` (numpy, every row) for a global host batch (every process passes the
    same one; each feeds its own rows); `replicated` are step's further arguments."""
    if self.validate is not None:
      self.validate(batch)
    rows = next(iter(batch.values())).shape[0]
    if rows % self.layout.num_shards:
      raise ValueError(
          f"a batch of {rows} rows does not split over {self.layout.num_shards} " f"host shards"
      )
    local = rows // self.layout.num_shards
    cut = slice(self.layout.shard_id * local, (self.layout.shard_id + 1) * local)
    host = {k: np.asarray(v)[cut] for k, v in batch.items()}
    out = step(params, self.partitioner.host_local_to_global(host), *replicated)
    return jax.tree.map(np.asarray, jax.device_get(out))

  def map(
      self,
      ds,
      params,
      step: PartitionedFn,
      name: str = "batches",
      replicated: Callable[[int], tuple] | None = None,
  ) -> Iterator[tuple[np.ndarray, dict, Any]]:
    """(indices int[B], host batch, outputs) for every padded batch of `ds` (index -1: padding).

    `replicated(n)` gives batch n's further step arguments (e.g. its own sampling key). Progress
    (examples done / total, rate, ETA) is printed under `name` every 10 batches.
    """
    total = None
    if hasattr(ds, "cardinality"):
      known = int(ds.cardinality())
      total = known if known >= 0 else None
    progress = Progress(name, total, every=10 * self.batch_size)
    params = self.place(params)
    for n, (indices, batch) in enumerate(padded_batches(ds, self.batch_size)):
      extra = replicated(n) if replicated is not None else ()
      yield indices, batch, self.run(step, params, batch, *extra)
      progress.update(int(np.sum(indices >= 0)))
    progress.finish()


class Progress:
  """Prints `name: done/total examples | rate | ETA` every `every` examples and at the end
  (process 0), as the training loop logs its steps."""

  def __init__(self, name: str, total: int | None, every: int):
    self.name, self.total, self.every = name, total, max(1, every)
    self.done, self._next, self._start = 0, self.every, time.perf_counter()

  def update(self, count: int) -> None:
    self.done += count
    if self.done >= self._next:
      self._next = self.done + self.every
      self._print()

  def finish(self) -> None:
    if self.done and self.done != self._next - self.every:
      self._print()

  def _print(self) -> None:
    elapsed = max(time.perf_counter() - self._start, 1e-9)
    rate = self.done / elapsed
    line = f"{self.name}: {self.done}/{'?' if self.total is None else self.total} examples"
    line += f" | {rate:.1f} examples/s"
    if self.total:
      line += f" | ETA {max(self.total - self.done, 0) / max(rate, 1e-9):.0f}s"
    if jax.process_index() == 0:
      print(line, flush=True)
