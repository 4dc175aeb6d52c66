#!/usr/bin/env bash
# The comparison: every arm x seed, then the tables.
#
#   bash scripts/compare.sh CONFIG [--seeds "1337 1338 1339"] [--arms "bpe_tied kronecker"] [--jobs N]
#                                  [--nproc N] [--max_restarts N] [--exp NAME] [--runs_dir runs] [--tables_out DIR]
#                                  [--done_dir DIR] [--key=value ...]
#
# --nproc: processes per run (default: every visible GPU, 1 on a CPU); each run is one torchrun job
# (python -m torch.distributed.run, the same Python) when there is more than one, and --max_restarts lets torchrun
# restart a failed worker group that many times (it resumes from the last checkpoint).
# Default: the three seeds of the paper and every study arm of model.ARMS (the attribution controls only when named
# in --arms). Runs go to RUNS_DIR/EXP/<arm>_s<seed>/ (EXP defaults to the config's name), tables to
# RUNS_DIR/EXP/tables/. A finished run is skipped, an unfinished one resumes from its last checkpoint (train.py does
# both), so the script can be rerun after any interruption. --jobs N runs N runs at a time (a grid of small runs:
# on a CPU each gets OMP_NUM_THREADS = cores / N; on a GPU they share it); their output goes to
# RUNS_DIR/EXP/logs/<arm>_s<seed>.log. --done_dir DIR: a run whose DIR/<arm>_s<seed>/metrics.jsonl holds a
# final_val_loss is skipped too (runs finished elsewhere, kept as raw files). --key=value arguments go to every
# train.py call; runs are grouped in wandb as EXP. Multi-node: scripts/compare_multinode.sh sets NNODES / NODE_RANK /
# RDZV_ENDPOINT.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
[[ $# -ge 1 ]] || usage 2
[[ "$1" == "-h" || "$1" == "--help" ]] && usage 0
CONFIG=$1; shift
[[ -f "$CONFIG" ]] || { echo "error: config file $CONFIG not found (see configs/)" >&2; exit 2; }
PY=${PYTHON:-$(command -v python3 || command -v python)}
SEEDS="1337 1338 1339"
ARMS=$("$PY" -c "from model import ARMS; print(' '.join(a for a in ARMS if not ARMS[a].control))")
NPROC=${NPROC:-}
MAX_RESTARTS=0
JOBS=1
EXP=$(basename "$CONFIG" .py)
RUNS_DIR=runs
TABLES_OUT=""
DONE_DIR=""
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --seeds) SEEDS=$2; shift 2 ;;
    --arms) ARMS=$2; shift 2 ;;
    --jobs) JOBS=$2; shift 2 ;;
    --nproc) NPROC=$2; shift 2 ;;
    --max_restarts) MAX_RESTARTS=$2; shift 2 ;;
    --exp) EXP=$2; shift 2 ;;
    --runs_dir) RUNS_DIR=$2; shift 2 ;;
    --tables_out) TABLES_OUT=$2; shift 2 ;;
    --done_dir) DONE_DIR=$2; shift 2 ;;
    --*=*) EXTRA+=("$1"); shift ;;
    *) echo "error: unknown argument $1 (options: --seeds --arms --jobs --nproc --max_restarts --exp --runs_dir --tables_out --done_dir --key=value)" >&2; exit 2 ;;
  esac
done
[[ -n "$NPROC" ]] || NPROC=$("$PY" -c "import torch; print(max(1, torch.cuda.device_count()))")
[[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || { echo "error: --jobs must be a positive integer, got '$JOBS'" >&2; exit 2; }
for arm in $ARMS; do
  "$PY" -c "import sys; from model import ARMS; sys.exit(sys.argv[1] not in ARMS)" "$arm" \
    || { echo "error: unknown arm '$arm' in --arms; valid: $("$PY" -c "from model import ARMS; print(' '.join(ARMS))")" >&2; exit 2; }
done

NNODES=${NNODES:-1}
if [[ "$NNODES" -gt 1 ]]; then
  : "${RDZV_ENDPOINT:?set RDZV_ENDPOINT=host:port of node 0 for a multi-node run}"
  LAUNCH=("$PY" -m torch.distributed.run --nnodes="$NNODES" --nproc_per_node="$NPROC" --rdzv_backend=c10d
          --rdzv_endpoint="$RDZV_ENDPOINT" --max-restarts="$MAX_RESTARTS")
elif [[ "$NPROC" -gt 1 ]]; then
  LAUNCH=("$PY" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" --max-restarts="$MAX_RESTARTS")
else
  LAUNCH=("$PY")  # one process per run: no rendezvous needed, and parallel jobs cannot collide on a port
fi

LOGS="$RUNS_DIR/$EXP/logs"
if [[ "$JOBS" -gt 1 ]]; then
  mkdir -p "$LOGS"
  CORES=$("$PY" -c "import os; print(len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count())")
  THREADS=$(( CORES / JOBS > 0 ? CORES / JOBS : 1 ))
fi

done_elsewhere() {  # arm seed
  [[ -n "$DONE_DIR" ]] && grep -q '"final_val_loss"' "$DONE_DIR/${1}_s${2}/metrics.jsonl" 2>/dev/null
}

run_one() {  # arm seed
  local arm=$1 seed=$2 out="$RUNS_DIR/$EXP/${1}_s${2}" rdzv=()
  if done_elsewhere "$arm" "$seed"; then echo "${arm}_s${seed} already finished (raw run in $DONE_DIR)"; return 0; fi
  [[ "$NNODES" -gt 1 ]] && rdzv=(--rdzv_id="${EXP}_${arm}_${seed}")
  "${LAUNCH[@]}" "${rdzv[@]}" train.py "$CONFIG" --input_embedding="$arm" --seed="$seed" --out_dir="$out" \
    --wandb_group="$EXP" --wandb_run_name="${arm}_s${seed}" "${EXTRA[@]}"
}

FAILED=()
if [[ "$JOBS" -eq 1 ]]; then
  for seed in $SEEDS; do
    for arm in $ARMS; do
      echo "=== $EXP: $arm seed $seed -> $RUNS_DIR/$EXP/${arm}_s${seed}"
      run_one "$arm" "$seed" || FAILED+=("${arm}_s${seed}")
    done
  done
else
  echo "=== $EXP: $(wc -w <<< "$ARMS") arms x $(wc -w <<< "$SEEDS") seeds, $JOBS at a time ($THREADS threads each on CPU); logs in $LOGS"
  declare -A PIDS=()
  reap() {  # wait for one job to end; report it
    local pid name
    wait -n || true
    for pid in "${!PIDS[@]}"; do
      if ! kill -0 "$pid" 2>/dev/null; then
        name=${PIDS[$pid]}
        unset "PIDS[$pid]"
        if wait "$pid"; then echo "    done $name: $(tail -n 1 "$LOGS/$name.log")"
        else echo "    FAILED $name (see $LOGS/$name.log): $(tail -n 1 "$LOGS/$name.log")"; FAILED+=("$name"); fi
      fi
    done
  }
  for seed in $SEEDS; do
    for arm in $ARMS; do
      while [[ ${#PIDS[@]} -ge $JOBS ]]; do reap; done
      echo "    start ${arm}_s${seed}"
      OMP_NUM_THREADS=$THREADS run_one "$arm" "$seed" > "$LOGS/${arm}_s${seed}.log" 2>&1 &
      PIDS[$!]="${arm}_s${seed}"
    done
  done
  while [[ ${#PIDS[@]} -gt 0 ]]; do reap; done
fi

if [[ ${#FAILED[@]} -gt 0 ]]; then
  echo "error: ${#FAILED[@]} run(s) failed: ${FAILED[*]}; fix the cause and rerun the same command (finished runs are skipped)" >&2
  exit 1
fi
if [[ "${NODE_RANK:-0}" == "0" ]]; then
  TABLES="${TABLES_OUT:-$RUNS_DIR/$EXP/tables}"
  "$PY" -m scripts.make_tables "$RUNS_DIR/$EXP" --out "$TABLES"
  echo "tables and curves: $TABLES/ (loss_table.md, summary.json, *.png)"
fi
