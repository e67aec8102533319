"""launch/*.sh --dry-run print commands that medpalm.main accepts, with gin files that exist."""

import os
import shlex
import subprocess

import pytest

from medpalm.driver import main
from tests.support.driver import REPO

GIN = "--gin_file=gin_configs/experiments/multimedbench_12b.gin"
MODEL_DIR = "--gin.MODEL_DIR='gs://bucket/run'"


def dry_run(script, *args):
  out = subprocess.run(
      ["bash", os.path.join(REPO, "launch", script), *args],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=60,
  )
  assert out.returncode == 0, out.stderr
  return out.stdout


def check_main_args(argv):
  args = main.parse_args(argv)
  assert args.run_mode == "train" and args.multiprocess
  for path in args.gin_file:
    assert os.path.exists(os.path.join(REPO, path)), path
  assert args.gin_bindings == ["MODEL_DIR = 'gs://bucket/run'"]


def test_tpu_vm_dry_run():
  out = dry_run(
      "tpu_vm.sh",
      "--name",
      "n1",
      "--zone",
      "us-west4-a",
      "--accelerator",
      "v5litepod-64",
      "--create",
      "--dry-run",
      "--",
      GIN,
      MODEL_DIR,
  )
  lines = [shlex.split(l) for l in out.strip().splitlines()]
  assert [l[:5] for l in lines] == [["gcloud", "compute", "tpus", "tpu-vm", "create"]] + [
      ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]
  ] * 2
  assert lines[0][lines[0].index("--accelerator-type") + 1] == "v5litepod-64"
  assert all("--worker=all" in l for l in lines[1:])
  remote = shlex.split(lines[2][lines[2].index("--command") + 1])
  assert remote[:3] == ["cd", "medpalm", "&&"] and remote[3:6] == ["python3", "-m", "medpalm.main"]
  check_main_args(remote[6:])


def test_gpu_slurm_dry_run():
  out = dry_run(
      "gpu_slurm.sh",
      "--nodes",
      "4",
      "--gpus_per_node",
      "8",
      "--partition",
      "gpu",
      "--dry-run",
      "--",
      GIN,
      MODEL_DIR,
  )
  assert "#SBATCH --nodes=4" in out and "#SBATCH --gpus-per-node=8" in out
  assert "#SBATCH --partition=gpu" in out and "#SBATCH --ntasks-per-node=1" in out
  srun = next(shlex.split(l) for l in out.splitlines() if l.startswith("srun "))
  assert srun[2:4] == ["-m", "medpalm.main"]
  check_main_args(srun[4:])


def test_demo_dry_run():
  cmd = shlex.split(dry_run("demo.sh", "--dry-run", "--steps", "5"))
  assert "XLA_FLAGS=--xla_force_host_platform_device_count=8" in cmd
  assert cmd[-4:] == ["-m", "medpalm.demo", "--steps", "5"]


@pytest.mark.parametrize(
    "script, args, error",
    [
        ("tpu_vm.sh", ["--zone", "z", "--dry-run", "--", GIN], "--name and --zone are required"),
        ("tpu_vm.sh", ["--name", "n", "--zone", "z", "--dry-run"], "arguments after --"),
        ("gpu_slurm.sh", ["--nodes", "0", "--dry-run", "--", GIN], "positive integers"),
        ("gpu_slurm.sh", ["--bogus", "--dry-run"], "unknown option --bogus"),
    ],
)
def test_launch_scripts_refuse_bad_arguments(script, args, error):
  out = subprocess.run(
      ["bash", os.path.join(REPO, "launch", script), *args],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=60,
  )
  assert out.returncode != 0 and error in out.stderr
