#!/usr/bin/env bash
# Creates or reuses ./.venv from requirements-lock.txt (runtime + [tpu] + [test] extras).
# Skips everything when the venv already matches the lock file and setup.py.
set -euo pipefail
cd "$(dirname "$0")/.."
# T5X is not on PyPI: when the shared vendor folder (next to the repository) holds its source
# snapshots, they are installed with --no-deps (their PyPI dependencies are pinned in the lock)
# so the T5X compatibility tests run; without it those tests skip.
vendor="$(cd .. && pwd)/shared/vendor"
vendored=()
if [ -d "$vendor" ]; then
  vendored=("$vendor"/t5x-*.tar.gz "$vendor"/airio-*.tar.gz "$vendor"/jestimator-*.tar.gz)
fi
stamp=$( (cat requirements-lock.txt setup.py; printf '%s\n' "${vendored[@]}") | sha256sum | cut -d' ' -f1)
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
if [ ${#vendored[@]} -gt 0 ]; then
  echo "[setup] installing T5X from $vendor (--no-deps)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps "${vendored[@]}" \
    2>&1 | quiet
fi
echo "$stamp" > .venv/.medpalm-stamp
