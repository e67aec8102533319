"""Every script in launch/ and benchmarks/ answers --help quickly, without running, both as
`python dir/file.py` and as `python -m dir.file`."""

import glob
import os
import subprocess
import sys
import time

import pytest

from tests.support.driver import REPO

SCRIPTS = sorted(
    os.path.relpath(p, REPO)
    for pattern in ("launch/*.py", "benchmarks/*.py")
    for p in glob.glob(os.path.join(REPO, pattern))
    if 'if __name__ == "__main__":' in open(p).read()
)


def test_the_scripts_are_found():
  assert {"launch/aot_compile.py", "benchmarks/compile_time.py", "benchmarks/step_parts.py"} <= set(
      SCRIPTS
  )


@pytest.mark.slow
@pytest.mark.parametrize("how", ["path", "module"])
@pytest.mark.parametrize("script", SCRIPTS)
def test_help_answers_without_running(script, how, tmp_path):
  target = [script] if how == "path" else ["-m", script[: -len(".py")].replace("/", ".")]
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env["JAX_PLATFORMS"] = "cpu"
  start = time.perf_counter()
  # From the repository for `-m`; from elsewhere for a path, as a user would run it.
  out = subprocess.run(
      [sys.executable, *target[:-1], os.path.join(REPO, target[-1]) if how == "path" else target[-1],
       "--help"],
      cwd=REPO if how == "module" else tmp_path,
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
  )  # fmt: skip
  seconds = time.perf_counter() - start
  assert out.returncode == 0, out.stderr[-3000:]
  assert "usage:" in out.stdout and "--help" in out.stdout, out.stdout[-2000:]
  assert seconds < 30, f"{script} --help took {seconds:.1f} s"
