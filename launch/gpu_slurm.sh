#!/usr/bin/env bash
# Train medpalm on a multi-node GPU cluster under SLURM: one process per node, all its GPUs.
#   launch/gpu_slurm.sh --nodes 4 --gpus_per_node 8 --partition gpu --time 24:00:00 --dry-run -- \
#     --gin_file=gin_configs/experiments/multimedbench_12b.gin --gin.MODEL_DIR="'/shared/runs/12b'"
# Everything after `--` goes to `python -m medpalm.main` (run mode defaults to train).
# jax.distributed.initialize() (--multiprocess) reads the coordinator and ranks from SLURM.
# The job first installs the CUDA 12 jax plugin into the venv (pip install -e '.[gpu]'; skip with
# --no_install) and runs with MEDPALM_PLATFORM=gpu, so medpalm.main refuses to start when jax
# finds no GPU instead of training on the CPU. --dry-run prints the script instead of submitting.
set -euo pipefail

NODES=1 GPUS=8 PARTITION="" TIME="24:00:00" JOB="medpalm" RUN_MODE="train"
VENV="${VENV:-.venv}" DRY_RUN=0 INSTALL=1 MAIN_ARGS=()
usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --nodes) NODES="$2"; shift 2;;
    --gpus_per_node) GPUS="$2"; shift 2;;
    --partition) PARTITION="$2"; shift 2;;
    --time) TIME="$2"; shift 2;;
    --job_name) JOB="$2"; shift 2;;
    --venv) VENV="$2"; shift 2;;
    --run_mode) RUN_MODE="$2"; shift 2;;
    --dry-run) DRY_RUN=1; shift;;
    --no_install) INSTALL=0; shift;;
    -h|--help) usage 0;;
    --) shift; MAIN_ARGS=("$@"); break;;
    *) echo "gpu_slurm.sh: unknown option $1" >&2; usage 2;;
  esac
done
[[ ${#MAIN_ARGS[@]} -gt 0 ]] || { echo "gpu_slurm.sh: give medpalm.main arguments after --" >&2; exit 2; }
[[ "$NODES" =~ ^[1-9][0-9]*$ && "$GPUS" =~ ^[1-9][0-9]*$ ]] || {
  echo "gpu_slurm.sh: --nodes and --gpus_per_node must be positive integers" >&2; exit 2; }

REPO_DIR="$(cd "$(dirname "$0")/.." && pwd)"
SCRIPT="#!/usr/bin/env bash
#SBATCH --job-name=$JOB
#SBATCH --nodes=$NODES
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=$GPUS
#SBATCH --time=$TIME
#SBATCH --output=$JOB-%j.log${PARTITION:+
#SBATCH --partition=$PARTITION}
set -euo pipefail
cd $(printf '%q' "$REPO_DIR")
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 MEDPALM_PLATFORM=gpu${INSTALL:+
}$( [[ $INSTALL == 1 ]] && printf '%q -m pip install -e %q' "$VENV/bin/python" ".[gpu]")
srun $(printf '%q' "$VENV/bin/python") -m medpalm.main --run_mode=$(printf '%q' "$RUN_MODE") --multiprocess $(printf '%q ' "${MAIN_ARGS[@]}")"

if [[ $DRY_RUN == 1 ]]; then
  echo "$SCRIPT"
  echo "# submit with:"
  echo "sbatch $JOB.sbatch"
else
  printf '%s\n' "$SCRIPT" > "$JOB.sbatch"
  sbatch "$JOB.sbatch"
fi
