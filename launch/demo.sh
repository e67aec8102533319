#!/usr/bin/env bash
# The CPU demo behind `make demo`: synthetic MultiMedBench data -> train the tiny model on a fake
# 8-device CPU mesh (checkpoints, periodic eval) -> evaluate -> demo_output/{metrics.json,report.md}.
#   launch/demo.sh [--output demo_output] [--steps N] [--dry-run]
# --dry-run prints the command instead of running it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
[[ -x "$PY" ]] || PY=python3
DRY_RUN=0 ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift;;
    -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0;;
    *) ARGS+=("$1"); shift;;
  esac
done
CMD=(env XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu
     TF_CPP_MIN_LOG_LEVEL=2 "$PY" -m medpalm.demo ${ARGS[@]+"${ARGS[@]}"})
if [[ $DRY_RUN == 1 ]]; then printf '%q ' "${CMD[@]}"; echo; else exec "${CMD[@]}"; fi
