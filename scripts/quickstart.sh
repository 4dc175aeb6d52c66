#!/usr/bin/env bash
# The README's main command: bundled sample -> bpe_tied and kronecker trained side by side -> comparison + curve.
# About 4 minutes on a 2-core CPU (a GPU is used when present). Rerunning it reuses the finished runs.
#   bash scripts/quickstart.sh            # STEPS=60 by default; STEPS=160 for the full cpu_tiny run
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'; exit 0; fi
PY=${PYTHON:-$(command -v python3 || command -v python)}
STEPS=${STEPS:-60}
OUT=${OUT:-runs/quickstart}

"$PY" prepare_fineweb.py --source sample --quiet
for arm in bpe_tied kronecker; do
  echo "=== training $arm ($STEPS steps of 2,048 tokens, configs/cpu_tiny.py)"
  "$PY" train.py configs/cpu_tiny.py --input_embedding="$arm" --seed=1337 --out_dir="$OUT/${arm}_s1337" \
    --max_steps="$STEPS" --eval_interval=20 --norm_interval=20 --log_interval=20 --ckpt_interval="$STEPS"
done
"$PY" -m scripts.make_tables "$OUT" --out "$OUT" --title "Quickstart: bpe_tied vs kronecker, $STEPS steps on the Austen sample" \
  | awk '/^## Final/{show=1} /^## Embedding/{show=0} show'
echo "curves: $OUT/val_loss.png $OUT/train_loss.png $OUT/norms.png | full table: $OUT/loss_table.md"
