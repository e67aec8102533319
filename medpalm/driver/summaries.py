"""Training metrics: TensorBoard event files and one readable log line per log period.

Metric values come from the model's `loss_fn` as clu `Average`s (mergeable totals and counts),
summed on device over a log period and computed once on the host.

TensorBoard: clu's `metric_writers` package imports the `tensorboard` package, which is not in the
pinned stack, so `SummaryWriter` writes the same event files with TensorFlow's own
`tf.summary.write` and the "scalars" plugin tag (what `tf.summary.scalar` writes). It has clu's
`MetricWriter` method names (`write_scalars`, `flush`, `close`).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from typing import Any, Mapping

import jax
import numpy as np

logger = logging.getLogger("medpalm")


class SummaryWriter:
  """TensorBoard scalars under `logdir` (only process 0 writes; others are no-ops).

  A remote `logdir` (gs://...) is written through etils.epath like every other output: the
  events go to a local temporary directory and each `flush` copies the event files there
  (TensorFlow's own file system cannot be pointed at another object-store endpoint).
  """

  def __init__(self, logdir: str):
    self._writer = None
    self._remote, self._local = None, None
    if "://" in os.fspath(logdir):
      self._remote = logdir
      self._local = tempfile.mkdtemp(prefix="medpalm_events_")
      logdir = self._local
    if jax.process_index() == 0:
      import tensorflow as tf
      from tensorflow.core.framework import summary_pb2

      self._tf = tf
      self._metadata = summary_pb2.SummaryMetadata(
          plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
      )
      self._writer = tf.summary.create_file_writer(logdir)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if self._writer is None:
      return
    with self._writer.as_default():
      for name, value in scalars.items():
        self._tf.summary.write(
            name,
            self._tf.constant(float(value), self._tf.float32),
            step=int(step),
            metadata=self._metadata,
        )

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()
      self._copy_out()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._copy_out()

  def _copy_out(self) -> None:
    if self._remote is None:
      return
    from etils import epath

    remote = epath.Path(self._remote)
    remote.mkdir(parents=True, exist_ok=True)
    for name in sorted(os.listdir(self._local)):
      with open(os.path.join(self._local, name), "rb") as f:
        (remote / name).write_bytes(f.read())


def compute(metrics: Mapping[str, Any]) -> dict[str, float]:
  """{name: clu Average (or number)} on device -> {name: float} on host."""
  out = {}
  for name, value in jax.device_get(dict(metrics)).items():
    if hasattr(value, "compute"):
      total, count = np.asarray(value.total, np.float64), np.asarray(value.count, np.float64)
      out[name] = float(total / count) if count else float("nan")
    else:
      out[name] = float(np.asarray(value))
  return out


def accumulate(total: Mapping[str, Any] | None, metrics: Mapping[str, Any]):
  """Sums metric pytrees on device (no host sync): totals and counts add up."""
  if total is None:
    return dict(metrics)
  return jax.tree.map(lambda a, b: a + b, dict(total), dict(metrics))


def _duration(seconds: float) -> str:
  if not np.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class TrainLogger:
  """Writes train metrics to `MODEL_DIR/train` and logs one line per period, e.g.

  step 120/500 | loss 2.3451 | accuracy 41.20% | 3.10 steps/s | 49.6 examples/s | ETA 2m03s
  """

  def __init__(self, model_dir: str, total_steps: int, batch_size: int, subdir: str = "train"):
    self.writer = SummaryWriter(os.path.join(model_dir, subdir))
    self.total_steps, self.batch_size = total_steps, batch_size
    self._start_step, self._start_time = None, None

  def start(self, step: int) -> None:
    self._start_step, self._start_time = step, time.perf_counter()

  def log(self, step: int, metrics: Mapping[str, Any], skipped: int = 0) -> dict[str, float]:
    """Computes `metrics`, writes them and prints the line; returns the values."""
    values = compute(metrics)
    now = time.perf_counter()
    steps = step - self._start_step
    rate = steps / max(now - self._start_time, 1e-9)
    self._start_step, self._start_time = step, now
    values["timing/steps_per_second"] = rate
    values["timing/examples_per_second"] = rate * self.batch_size
    values["skipped_steps"] = float(skipped)
    self.writer.write_scalars(step, values)
    self.writer.flush()
    eta = (self.total_steps - step) / rate if rate > 0 else float("inf")
    line = [f"step {step}/{self.total_steps}"]
    if "loss" in values:
      line.append(f"loss {values['loss']:.4f}")
    if "accuracy" in values:
      line.append(f"accuracy {100 * values['accuracy']:.2f}%")
    line += [
        f"{rate:.2f} steps/s",
        f"{rate * self.batch_size:.1f} examples/s",
        f"ETA {_duration(eta)}",
    ]
    if skipped:
      line.append(f"skipped {skipped}")
    if jax.process_index() == 0:
      print(" | ".join(line), flush=True)
    return values
