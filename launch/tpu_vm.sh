#!/usr/bin/env bash
# Train medpalm on a Cloud TPU VM slice: one process per TPU worker, all workers at once.
#   launch/tpu_vm.sh --name medpalm-v5e --zone us-west4-a --accelerator v5litepod-64 --create \
#     --repo https://github.com/ORG/medpalm.git --dry-run -- \
#     --gin_file=gin_configs/experiments/multimedbench_12b.gin --gin.MODEL_DIR="'gs://BUCKET/run'"
# Everything after `--` goes to `python -m medpalm.main` (run mode defaults to train).
# --create makes the slice first; --setup clones the repo and installs medpalm[tpu] on every
# worker; --dry-run prints the gcloud commands instead of running them.
set -euo pipefail

NAME="" ZONE="" ACCELERATOR="" VERSION="tpu-ubuntu2204-base" PROJECT=""
REPO="https://github.com/medpalm/medpalm.git" BRANCH="main" RUN_MODE="train"
CREATE=0 SETUP=0 DRY_RUN=0 MAIN_ARGS=()
usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME="$2"; shift 2;;
    --zone) ZONE="$2"; shift 2;;
    --accelerator) ACCELERATOR="$2"; shift 2;;
    --version) VERSION="$2"; shift 2;;
    --project) PROJECT="$2"; shift 2;;
    --repo) REPO="$2"; shift 2;;
    --branch) BRANCH="$2"; shift 2;;
    --run_mode) RUN_MODE="$2"; shift 2;;
    --create) CREATE=1; SETUP=1; shift;;
    --setup) SETUP=1; shift;;
    --dry-run) DRY_RUN=1; shift;;
    -h|--help) usage 0;;
    --) shift; MAIN_ARGS=("$@"); break;;
    *) echo "tpu_vm.sh: unknown option $1" >&2; usage 2;;
  esac
done
[[ -n "$NAME" && -n "$ZONE" ]] || { echo "tpu_vm.sh: --name and --zone are required" >&2; exit 2; }
[[ ${#MAIN_ARGS[@]} -gt 0 ]] || { echo "tpu_vm.sh: give medpalm.main arguments after --" >&2; exit 2; }
if [[ $CREATE == 1 && -z "$ACCELERATOR" ]]; then
  echo "tpu_vm.sh: --create needs --accelerator (e.g. v5litepod-64)" >&2; exit 2
fi

GCLOUD=(gcloud compute tpus tpu-vm)
LOC=(--zone "$ZONE"); [[ -n "$PROJECT" ]] && LOC+=(--project "$PROJECT")
run() {  # prints (dry run) or executes one command
  if [[ $DRY_RUN == 1 ]]; then remote "$@"; echo; else "$@"; fi
}
remote() { local out; out="$(printf '%q ' "$@")"; printf '%s' "${out% }"; }

if [[ $CREATE == 1 ]]; then
  run "${GCLOUD[@]}" create "$NAME" "${LOC[@]}" --accelerator-type "$ACCELERATOR" --version "$VERSION"
fi
if [[ $SETUP == 1 ]]; then
  SETUP_CMD="(test -d medpalm || git clone --branch $(remote "$BRANCH") $(remote "$REPO") medpalm)"
  SETUP_CMD+=" && cd medpalm && git pull --ff-only && python3 -m pip install -q -e '.[tpu]'"
  run "${GCLOUD[@]}" ssh "$NAME" "${LOC[@]}" --worker=all --command "$SETUP_CMD"
fi
TRAIN_CMD="cd medpalm && python3 -m medpalm.main --run_mode=$(remote "$RUN_MODE") --multiprocess $(remote "${MAIN_ARGS[@]}")"
run "${GCLOUD[@]}" ssh "$NAME" "${LOC[@]}" --worker=all --command "$TRAIN_CMD"
