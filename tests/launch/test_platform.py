"""A run that asks for a GPU (or TPU) refuses to start where JAX finds none, instead of quietly
training on the CPU; the GPU launcher asks for one and installs the CUDA plugin first."""

import os
import shlex
import subprocess
import sys

import gin
import jax
import pytest

from medpalm import partitioning
from tests.support.driver import REPO


def test_check_platform_refuses_a_missing_gpu():
  assert jax.default_backend() == "cpu"  # tests/conftest.py: 8 fake CPU devices
  with pytest.raises(RuntimeError) as error:
    partitioning.check_platform("gpu")
  message = str(error.value)
  assert "asked for platform 'gpu'" in message and "found only 'cpu' devices" in message
  assert "pip install -e '.[gpu]'" in message and "refusing to start" in message
  with pytest.raises(RuntimeError, match="asked for platform 'tpu'"):
    partitioning.check_platform("TPU")
  with pytest.raises(ValueError, match="expected one of cpu, gpu, tpu"):
    partitioning.check_platform("quantum")
  assert partitioning.check_platform("cpu") == "cpu"
  assert partitioning.check_platform(None) == "cpu"  # nothing asked: whatever JAX found


def test_requested_platform_comes_from_gin_then_the_environment(monkeypatch):
  monkeypatch.delenv("MEDPALM_PLATFORM", raising=False)
  gin.clear_config()
  assert partitioning.requested_platform() is None
  monkeypatch.setenv("MEDPALM_PLATFORM", "gpu")
  assert partitioning.requested_platform() == "gpu"
  gin.parse_config("PLATFORM = 'tpu'")
  try:
    assert partitioning.requested_platform() == "tpu"  # the run's binding wins
  finally:
    gin.clear_config()


@pytest.mark.slow
def test_driver_refuses_to_train_on_cpu_when_a_gpu_was_asked_for(tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
  env.pop("MEDPALM_PLATFORM", None)
  out = subprocess.run(
      [
          sys.executable,
          "-m",
          "medpalm.main",
          "--run_mode=train",
          "--gin_file=gin_configs/experiments/demo_cpu.gin",
          f"--gin.MODEL_DIR='{tmp_path}/run'",
          "--gin.PLATFORM='gpu'",
      ],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert out.returncode != 0
  assert "RuntimeError: this run asked for platform 'gpu' but JAX found only 'cpu'" in out.stderr
  assert not os.path.exists(tmp_path / "run")  # refused before anything was written


def test_gpu_launcher_installs_the_plugin_and_asks_for_a_gpu():
  script = os.path.join(REPO, "launch", "gpu_slurm.sh")
  run = lambda *a: subprocess.run(
      ["bash", script, *a, "--dry-run", "--", "--gin_file=gin_configs/experiments/multimedbench_12b.gin"],
      cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
  ).stdout  # fmt: skip
  lines = run().splitlines()
  assert any(l.startswith("export ") and "MEDPALM_PLATFORM=gpu" in shlex.split(l) for l in lines)
  install = next(shlex.split(l) for l in lines if " pip install " in l)
  assert install[1:] == ["-m", "pip", "install", "-e", ".[gpu]"]
  assert lines.index(next(l for l in lines if " pip install " in l)) < lines.index(
      next(l for l in lines if l.startswith("srun "))
  )
  assert not any(" pip install " in l for l in run("--no_install").splitlines())
