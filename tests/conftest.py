"""Test set-up: 8 fake CPU devices, forced before anything imports jax."""

import os

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402  (must come after the environment above)
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def tasks_env(tmp_path_factory):
  """The 14 MultiMedBench tasks registered under ``mmbtest`` on demo data, a small SentencePiece
  model and prepared 16-pixel images (tests/support/tasks_env.py), built once per session."""
  from tests.support import tasks_env as env_lib  # pylint: disable=g-import-not-at-top

  return env_lib.build(tmp_path_factory)


@pytest.fixture
def gcs(tmp_path_factory, monkeypatch):
  """A local GCS server with bucket `bucket`; this process and its children are pointed at it
  (gs://bucket/... through etils.epath, orbax and tensorstore). Stopped at the end."""
  from tests.support.gcs import fake_gcs

  from tests.support.gcs import reset_gcs_clients

  with fake_gcs(tmp_path_factory.mktemp("gcs")) as env:
    for name, value in env.items():
      monkeypatch.setenv(name, value)
    reset_gcs_clients()
    try:
      yield env
    finally:
      monkeypatch.undo()
      reset_gcs_clients()
