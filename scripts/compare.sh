#!/usr/bin/env bash
# The comparison: every arm x seed through torchrun, then the tables.
#
#   bash scripts/compare.sh CONFIG [--seeds "1337 1338 1339"] [--arms "bpe_tied kronecker"]
#                                  [--nproc N] [--exp NAME] [--runs_dir runs] [--tables_out DIR] [--key=value ...]
#
# Default: the three seeds of the paper and every arm of model.ARMS. Runs go to RUNS_DIR/EXP/<arm>_s<seed>/ (EXP
# defaults to the config's name). A finished run is skipped, an
# unfinished one resumes from its last checkpoint (train.py does both), so the script can be rerun after any
# interruption. Runs are grouped in wandb as EXP (pass --wandb_mode=online to log there). --key=value arguments
# go to every train.py call. Multi-node: scripts/compare_multinode.sh sets NNODES / NODE_RANK / RDZV_ENDPOINT.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
[[ $# -ge 1 ]] || usage 2
[[ "$1" == "-h" || "$1" == "--help" ]] && usage 0
CONFIG=$1; shift
[[ -f "$CONFIG" ]] || { echo "error: config file $CONFIG not found (see configs/)" >&2; exit 2; }
PY=${PYTHON:-$(command -v python3 || command -v python)}
SEEDS="1337 1338 1339"
ARMS=$("$PY" -c "from model import ARMS; print(' '.join(ARMS))")
NPROC=${NPROC:-1}
EXP=$(basename "$CONFIG" .py)
RUNS_DIR=runs
TABLES_OUT=""
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --seeds) SEEDS=$2; shift 2 ;;
    --arms) ARMS=$2; shift 2 ;;
    --nproc) NPROC=$2; shift 2 ;;
    --exp) EXP=$2; shift 2 ;;
    --runs_dir) RUNS_DIR=$2; shift 2 ;;
    --tables_out) TABLES_OUT=$2; shift 2 ;;
    --*=*) EXTRA+=("$1"); shift ;;
    *) echo "error: unknown argument $1 (options: --seeds --arms --nproc --exp --runs_dir --tables_out --key=value)" >&2; exit 2 ;;
  esac
done

NNODES=${NNODES:-1}
if [[ "$NNODES" -gt 1 ]]; then
  : "${RDZV_ENDPOINT:?set RDZV_ENDPOINT=host:port of node 0 for a multi-node run}"
  LAUNCH=(torchrun --nnodes="$NNODES" --nproc_per_node="$NPROC" --rdzv_backend=c10d --rdzv_endpoint="$RDZV_ENDPOINT")
else
  LAUNCH=(torchrun --standalone --nproc_per_node="$NPROC")
fi

for seed in $SEEDS; do
  for arm in $ARMS; do
    out="$RUNS_DIR/$EXP/${arm}_s${seed}"
    echo "=== $EXP: $arm seed $seed -> $out"
    rdzv=()
    [[ "$NNODES" -gt 1 ]] && rdzv=(--rdzv_id="${EXP}_${arm}_${seed}")
    "${LAUNCH[@]}" "${rdzv[@]}" train.py "$CONFIG" --input_embedding="$arm" --seed="$seed" --out_dir="$out" \
      --wandb_group="$EXP" --wandb_run_name="${arm}_s${seed}" "${EXTRA[@]}"
  done
done

if [[ "${NODE_RANK:-0}" == "0" ]]; then
  "$PY" scripts/make_tables.py "$RUNS_DIR/$EXP" --out "${TABLES_OUT:-$RUNS_DIR/$EXP/tables}"
fi
