#!/usr/bin/env bash
# The attribution grid of results/attribution/PLAN.md: the codec against its three controls and bpe_untied (seeds
# 1337-1344) and bpe_tied (1337-1341), at two recipes, on configs/cpu_tiny.py. One command on 2 CPU cores or one GPU:
#
#   bash scripts/attribution.sh [--jobs N] [--runs_dir runs] [--key=value ...]     # train (resumable)
#   bash scripts/attribution.sh --save        # keep finished runs' raw files in results/attribution/<recipe>/finished/
#   bash scripts/attribution.sh --collect     # complete grid -> results/attribution/<recipe>/runs/ + tables
#
# --jobs N runs N runs at a time (2 on a 2-core CPU; 16 on one GPU, where the runs share it). Rerun the same
# command after any interruption: finished runs are skipped (in RUNS_DIR, or kept as raw files by --save, so the
# grid also resumes on another machine of the same commit), unfinished ones resume from their checkpoints. Seeds go
# in two blocks (the first five for every arm, then three more for the claim-carrying arms), each block at both
# recipes, so a partial grid is balanced. Every run trains in fp32 and ends with one eval on the whole val split.
# --collect checks that all runs are there and come from one commit, moves their config.json + metrics.jsonl to
# results/attribution/<recipe>/runs/ and writes the tables there (python -m scripts.make_tables), then
# results/attribution/contrasts.md (python -m scripts.contrasts).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3 || command -v python)}
JOBS=2
RUNS_DIR=runs
MODE=train
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --jobs) JOBS=$2; shift 2 ;;
    --runs_dir) RUNS_DIR=$2; shift 2 ;;
    --collect) MODE=collect; shift ;;
    --save) MODE=save; shift ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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

finished() {  # a run folder whose metrics hold the final eval
  grep -q '"final_val_loss"' "$1/metrics.jsonl" 2>/dev/null
}

save() {  # copy finished runs' raw files from RUNS_DIR to results/attribution/<recipe>/finished/
  local recipe block seed arm run keep n=0
  for recipe in $RECIPES; do
    for block in "${BLOCKS[@]}"; do
      for seed in ${block%%|*}; do
        for arm in ${block#*|}; do
          run="$RUNS_DIR/attribution/$recipe/${arm}_s${seed}" keep="results/attribution/$recipe/finished/${arm}_s${seed}"
          if finished "$run" && ! finished "$keep"; then
            mkdir -p "$keep" && cp "$run/config.json" "$run/metrics.jsonl" "$keep/" && n=$((n + 1))
          fi
        done
      done
    done
  done
  echo "saved $n newly finished run(s) under results/attribution/*/finished/"
}

if [[ "$MODE" == save ]]; then save; exit 0; fi
if [[ "$MODE" == collect ]]; then
  save > /dev/null
  missing=0
  for recipe in $RECIPES; do
    for block in "${BLOCKS[@]}"; do
      for seed in ${block%%|*}; do
        for arm in ${block#*|}; do
          finished "results/attribution/$recipe/finished/${arm}_s${seed}" || { echo "missing: $recipe ${arm}_s${seed}" >&2; missing=$((missing + 1)); }
        done
      done
    done
  done
  [[ $missing == 0 ]] || { echo "error: $missing run(s) not finished; rerun bash scripts/attribution.sh first" >&2; exit 2; }
  commits=$(cat results/attribution/*/finished/*/config.json | "$PY" -c "import sys, json, re; print(len({m for m in re.findall(r'\"commit\": \"([^\"]*)\"', sys.stdin.read())}))")
  [[ $commits == 1 ]] || { echo "error: the runs come from $commits commits; the grid must run at one commit" >&2; exit 2; }
  for recipe in $RECIPES; do
    dst="results/attribution/$recipe"
    rm -rf "$dst/runs" && mv "$dst/finished" "$dst/runs"
    "$PY" -m scripts.make_tables "$dst/runs" --out "$dst" --title "Attribution grid, recipe $recipe (configs/cpu_tiny.py)" > /dev/null
    echo "wrote $dst/ (loss_table.md, summary.json, *.png)"
  done
  "$PY" -m scripts.contrasts results/attribution > /dev/null
  echo "wrote results/attribution/contrasts.md (every contrast x recipe; the README's attribution table)"
  exit 0
fi

for block in "${BLOCKS[@]}"; do
  for recipe in $RECIPES; do
    # shellcheck disable=SC2086
    bash scripts/compare.sh configs/cpu_tiny.py --seeds "${block%%|*}" --arms "${block#*|}" --jobs "$JOBS" \
      --runs_dir "$RUNS_DIR" --exp "attribution/$recipe" --done_dir "results/attribution/$recipe/finished" \
      ${RECIPE[$recipe]} --dtype=float32 --final_val_tokens=45949 "${EXTRA[@]}"
    save
  done
done
echo "grid complete: bash scripts/attribution.sh --collect copies it to results/attribution/"
