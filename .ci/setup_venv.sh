#!/usr/bin/env bash
# Creates or reuses ./.venv from requirements-lock.txt (runtime + [tpu] + [test] extras).
# Skips everything when the venv already matches the lock file and setup.py.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=$(cat requirements-lock.txt setup.py | sha256sum | cut -d' ' -f1)
if [ -f .venv/.medpalm-stamp ] && [ "$(cat .venv/.medpalm-stamp)" = "$stamp" ]; then
  exit 0
fi
echo "[setup] building .venv from requirements-lock.txt (about 2 minutes on a fresh machine)"
rm -rf .venv
python3.11 -m venv .venv
quiet() { grep -v "is ignored: it is neither a file nor a directory" || true; }  # local mirrors
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-lock.txt 2>&1 | quiet
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation \
  -e . 2>&1 | quiet
echo "$stamp" > .venv/.medpalm-stamp
