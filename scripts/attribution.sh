#!/usr/bin/env bash
# The attribution grid of results/attribution/PLAN.md: the codec against its three controls and bpe_untied (seeds
# 1337-1344) and bpe_tied (1337-1341), at two recipes, on configs/cpu_tiny.py. One command on 2 CPU cores or one GPU:
#
#   bash scripts/attribution.sh [--jobs N] [--runs_dir runs] [--key=value ...]     # train (resumable) + tables
#   bash scripts/attribution.sh --collect                                          # copy raw runs to results/
#
# --jobs N runs N runs at a time (2 on a 2-core CPU; 16 on one GPU, where the runs share it). Rerun the same
# command after any interruption: finished runs are skipped, unfinished ones resume. Seeds go in two blocks (the
# first five for every arm, then three more for the claim-carrying arms), each block at both recipes, so a
# partial grid is balanced. Every run trains in fp32 and ends with one eval on the whole val split.
# --collect copies each finished run's config.json + metrics.jsonl to results/attribution/<recipe>/runs/ and
# rebuilds the tables there (python -m scripts.make_tables); it refuses an unfinished grid.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3 || command -v python)}
JOBS=2
RUNS_DIR=runs
COLLECT=0
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --jobs) JOBS=$2; shift 2 ;;
    --runs_dir) RUNS_DIR=$2; shift 2 ;;
    --collect) COLLECT=1; shift ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --*=*) EXTRA+=("$1"); shift ;;
    *) echo "error: unknown argument $1 (options: --jobs N --runs_dir DIR --collect --key=value)" >&2; exit 2 ;;
  esac
done

CLAIM="kronecker bpe_untied bpe_scaled bpe_lowrank kronecker_permuted"
BLOCKS=("1337 1338 1339 1340 1341|$CLAIM bpe_tied" "1342 1343 1344|$CLAIM")
declare -A RECIPE=(
  [lr3e-3]="--learning_rate=3e-3 --min_lr=3e-4 --warmup_steps=15"
  [lr1e-3]="--learning_rate=1e-3 --min_lr=1e-4 --warmup_steps=40"
)
RECIPES="lr3e-3 lr1e-3"

if [[ "$COLLECT" == 1 ]]; then
  for recipe in $RECIPES; do
    src="$RUNS_DIR/attribution/$recipe" dst="results/attribution/$recipe"
    for block in "${BLOCKS[@]}"; do
      for seed in ${block%%|*}; do
        for arm in ${block#*|}; do
          run="$src/${arm}_s${seed}"
          grep -q '"final_val_loss"' "$run/metrics.jsonl" 2>/dev/null \
            || { echo "error: $run has not finished; rerun bash scripts/attribution.sh first" >&2; exit 2; }
          mkdir -p "$dst/runs/${arm}_s${seed}"
          cp "$run/config.json" "$run/metrics.jsonl" "$dst/runs/${arm}_s${seed}/"
        done
      done
    done
    "$PY" -m scripts.make_tables "$dst/runs" --out "$dst" --title "Attribution grid, recipe $recipe (configs/cpu_tiny.py)" > /dev/null
    echo "wrote $dst/ (loss_table.md, summary.json, *.png)"
  done
  exit 0
fi

for block in "${BLOCKS[@]}"; do
  for recipe in $RECIPES; do
    # shellcheck disable=SC2086
    bash scripts/compare.sh configs/cpu_tiny.py --seeds "${block%%|*}" --arms "${block#*|}" --jobs "$JOBS" \
      --runs_dir "$RUNS_DIR" --exp "attribution/$recipe" ${RECIPE[$recipe]} --dtype=float32 \
      --final_val_tokens=45949 "${EXTRA[@]}"
  done
done
echo "grid complete: bash scripts/attribution.sh --collect copies it to results/attribution/"
