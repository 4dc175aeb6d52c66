#!/usr/bin/env bash
# Export and evaluate every run of a study, then rebuild its tables with the evaluation rows.
#   bash scripts/eval_all.sh RUNS_DIR/EXP [TASKS] [--all_checkpoints] [eval_lm.sh options: --device --batch_size --limit]
# e.g. bash scripts/eval_all.sh runs/gpt2_124m            (HellaSwag and the other default tasks of eval_lm.sh)
# For each run folder <arm>_s<seed>/ with a checkpoint: its newest checkpoint is exported to
# EXP/exports/<arm>_s<seed>/ (export_hf.py) and evaluated (eval_lm.sh) into EXP/eval/<arm>_s<seed>.json, where
# make_tables.py looks by default; then the tables go to EXP/tables/ as compare.sh writes them. With
# --all_checkpoints every kept checkpoint is evaluated too, into EXP/eval/steps/<arm>_s<seed>_step<N>.json (its
# export is removed after). An evaluation already written is skipped: rerun the command after an interruption.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3 || command -v python)}
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0; fi
[[ $# -ge 1 && "$1" != -* ]] || { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
EXP=${1%/}; shift
TASKS=""
if [[ $# -gt 0 && "$1" != --* ]]; then TASKS=$1; shift; fi
ALL=0 PASS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --all_checkpoints) ALL=1; shift ;;
    --device|--batch_size|--limit) PASS+=("$1" "$2"); shift 2 ;;
    *) echo "error: unknown argument $1 (options: --all_checkpoints --device D --batch_size N --limit N)" >&2; exit 2 ;;
  esac
done
[[ -d "$EXP" ]] || { echo "error: $EXP is not a folder; pass the study folder compare.sh wrote (runs/<exp>)" >&2; exit 2; }
shopt -s nullglob
runs=("$EXP"/*_s*/)
[[ ${#runs[@]} -gt 0 ]] || { echo "error: no <arm>_s<seed>/ run folders in $EXP; run scripts/compare.sh first" >&2; exit 2; }

evaluate() {  # checkpoint export_dir out_json
  [[ -f "$3" ]] && { echo "    $3 exists: skipped"; return 0; }
  "$PY" export_hf.py "$1" --out "$2"
  bash scripts/eval_lm.sh "$2" ${TASKS:+"$TASKS"} --out "$3" "${PASS[@]}"
}

for run in "${runs[@]}"; do
  name=$(basename "$run")
  ckpts=("$run"ckpt_*.pt)
  [[ ${#ckpts[@]} -gt 0 ]] || { echo "=== $name: no checkpoint, skipped"; continue; }
  echo "=== $name"
  evaluate "${ckpts[-1]}" "$EXP/exports/$name" "$EXP/eval/$name.json"
  if [[ "$ALL" == 1 ]]; then
    for ck in "${ckpts[@]}"; do
      step=$(basename "$ck" .pt); step=$((10#${step#ckpt_}))
      tmp="$EXP/exports/.${name}_step$step"
      evaluate "$ck" "$tmp" "$EXP/eval/steps/${name}_step$step.json"
      rm -rf "$tmp"
    done
  fi
done
"$PY" -m scripts.make_tables "$EXP" --out "$EXP/tables" > /dev/null
echo "evaluations: $EXP/eval/ | tables with the evaluation rows: $EXP/tables/loss_table.md"
