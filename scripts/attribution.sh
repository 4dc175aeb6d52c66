#!/usr/bin/env bash
# The attribution grid of results/attribution/PLAN.md: the codec against its three controls and bpe_untied (seeds
# 1337-1344) and bpe_tied (1337-1341), at two recipes, on configs/cpu_tiny.py. One command on 2 CPU cores or one GPU:
#
#   bash scripts/attribution.sh [GRID] [--jobs N] [--runs_dir runs] [--key=value ...]   # train (resumable)
#   bash scripts/attribution.sh [GRID] --save     # keep finished runs' raw files in results/<grid>/<recipe>/finished/
#   bash scripts/attribution.sh [GRID] --collect  # complete grid -> results/<grid>/<recipe>/runs/ + tables
#   bash scripts/attribution.sh [GRID] --plan     # list the runs, train nothing
#
# GRID: none for the grid above, or
#   --ladder    the width ladder of results/attribution_width/PLAN.md (kronecker, bpe_untied and the three
#               controls, seeds 1337-1344, at widths 128 / 256 / 384 with 4 / 5 / 6 layers, the lr 1e-3 recipe; a GPU job);
#   --lr_sweep  the learning-rate sweep of results/attribution_lr/PLAN.md (kronecker and bpe_untied, seeds
#               1337-1342, peak lr 3e-3 and 6e-3, both with the 40 warmup steps of the lr 1e-3 recipe).
# --jobs N runs N runs at a time (2 on a 2-core CPU; 16 on one GPU, where the runs share it). Rerun the same
# command after any interruption: finished runs are skipped (in RUNS_DIR, or kept as raw files by --save, so the
# grid also resumes on another machine of the same commit), unfinished ones resume from their checkpoints. Seeds go
# in blocks (the first five for every arm, then three more for the claim-carrying arms), each block at every
# recipe, so a partial grid is balanced. Every run trains in fp32 and ends with one eval on the whole val split.
# --collect checks that all runs are there and come from one commit, moves their config.json + metrics.jsonl to
# results/<grid>/<recipe>/runs/ and writes the tables there (python -m scripts.make_tables), then
# results/<grid>/contrasts.md (python -m scripts.contrasts).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3 || command -v python)}
JOBS=2
RUNS_DIR=runs
MODE=train
GRID=attribution
FLAG=""
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --jobs) JOBS=$2; shift 2 ;;
    --runs_dir) RUNS_DIR=$2; shift 2 ;;
    --collect) MODE=collect; shift ;;
    --save) MODE=save; shift ;;
    --plan) MODE=plan; shift ;;
    --ladder) GRID=attribution_width; FLAG=" --ladder"; shift ;;
    --lr_sweep) GRID=attribution_lr; FLAG=" --lr_sweep"; shift ;;
    -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --*=*) EXTRA+=("$1"); shift ;;
    *) echo "error: unknown argument $1 (options: --ladder --lr_sweep --jobs N --runs_dir DIR --save --collect --plan --key=value)" >&2; exit 2 ;;
  esac
done

CLAIM="kronecker bpe_untied bpe_scaled bpe_lowrank kronecker_permuted"
STABLE="--learning_rate=1e-3 --min_lr=1e-4 --warmup_steps=40"
if [[ $GRID == attribution ]]; then
  BLOCKS=("1337 1338 1339 1340 1341|$CLAIM bpe_tied" "1342 1343 1344|$CLAIM")
  declare -A RECIPE=([lr3e-3]="--learning_rate=3e-3 --min_lr=3e-4 --warmup_steps=15" [lr1e-3]="$STABLE")
  RECIPES="lr3e-3 lr1e-3"
  TITLE="Attribution grid"
elif [[ $GRID == attribution_lr ]]; then  # warmup 40 throughout: the grid above changed lr and warmup together
  BLOCKS=("1337 1338 1339|kronecker bpe_untied" "1340 1341 1342|kronecker bpe_untied")
  declare -A RECIPE=([lr3e-3_w40]="--learning_rate=3e-3 --min_lr=3e-4 --warmup_steps=40"
                     [lr6e-3_w40]="--learning_rate=6e-3 --min_lr=6e-4 --warmup_steps=40")
  RECIPES="lr3e-3_w40 lr6e-3_w40"
  TITLE="Learning-rate sweep"
else  # head size 32 at width 128 as in cpu_tiny, 64 above; eager: a 160-step run would mostly be compiling
  BLOCKS=("1337 1338 1339 1340 1341|$CLAIM" "1342 1343 1344|$CLAIM")
  declare -A RECIPE=([w128]="$STABLE --compile=false --n_embd=128 --n_layer=4 --n_head=4"
                     [w256]="$STABLE --compile=false --n_embd=256 --n_layer=5 --n_head=4"
                     [w384]="$STABLE --compile=false --n_embd=384 --n_layer=6 --n_head=6")
  RECIPES="w128 w256 w384"
  TITLE="Width ladder"
fi

finished() {  # a run folder whose metrics hold the final eval
  grep -q '"final_val_loss"' "$1/metrics.jsonl" 2>/dev/null
}

all_runs() {  # every run of the grid as "<recipe> <arm>_s<seed>", in the order they train
  local block recipe seed arm
  for block in "${BLOCKS[@]}"; do
    for recipe in $RECIPES; do
      for seed in ${block%%|*}; do
        for arm in ${block#*|}; do echo "$recipe ${arm}_s${seed}"; done
      done
    done
  done
}

save() {  # copy finished runs' raw files from RUNS_DIR to results/<grid>/<recipe>/finished/
  local recipe run keep n=0
  while read -r recipe run; do
    keep="results/$GRID/$recipe/finished/$run"
    if finished "$RUNS_DIR/$GRID/$recipe/$run" && ! finished "$keep"; then
      mkdir -p "$keep" && cp "$RUNS_DIR/$GRID/$recipe/$run/"{config.json,metrics.jsonl} "$keep/" && n=$((n + 1))
    fi
  done < <(all_runs)
  echo "saved $n newly finished run(s) under results/$GRID/*/finished/"
}

if [[ "$MODE" == plan ]]; then
  all_runs
  echo "$(all_runs | wc -l) runs; each: configs/cpu_tiny.py --dtype=float32 --final_val_tokens=45949 + its recipe:"
  for recipe in $RECIPES; do echo "  $recipe: ${RECIPE[$recipe]}"; done
  exit 0
fi
if [[ "$MODE" == save ]]; then save; exit 0; fi
if [[ "$MODE" == collect ]]; then
  save > /dev/null
  missing=0
  while read -r recipe run; do
    finished "results/$GRID/$recipe/finished/$run" || { echo "missing: $recipe $run" >&2; missing=$((missing + 1)); }
  done < <(all_runs)
  [[ $missing == 0 ]] || { echo "error: $missing run(s) not finished; rerun bash scripts/attribution.sh$FLAG first" >&2; exit 2; }
  commits=$(cat results/$GRID/*/finished/*/config.json | "$PY" -c "import sys, json, re; print(len({m for m in re.findall(r'\"commit\": \"([^\"]*)\"', sys.stdin.read())}))")
  [[ $commits == 1 ]] || { echo "error: the runs come from $commits commits; the grid must run at one commit" >&2; exit 2; }
  for recipe in $RECIPES; do
    dst="results/$GRID/$recipe"
    rm -rf "$dst/runs" && mv "$dst/finished" "$dst/runs"
    "$PY" -m scripts.make_tables "$dst/runs" --out "$dst" --title "$TITLE, recipe $recipe (configs/cpu_tiny.py ${RECIPE[$recipe]})" > /dev/null
    echo "wrote $dst/ (loss_table.md, summary.json, *.png)"
  done
  "$PY" -m scripts.contrasts "results/$GRID" --title "$TITLE: the codec against its controls" > /dev/null
  echo "wrote results/$GRID/contrasts.md (every contrast x recipe)"
  exit 0
fi

for block in "${BLOCKS[@]}"; do
  for recipe in $RECIPES; do
    # shellcheck disable=SC2086
    bash scripts/compare.sh configs/cpu_tiny.py --seeds "${block%%|*}" --arms "${block#*|}" --jobs "$JOBS" \
      --runs_dir "$RUNS_DIR" --exp "$GRID/$recipe" --done_dir "results/$GRID/$recipe/finished" \
      ${RECIPE[$recipe]} --dtype=float32 --final_val_tokens=45949 "${EXTRA[@]}"
    save
  done
done
echo "grid complete: bash scripts/attribution.sh$FLAG --collect copies it to results/$GRID/"
