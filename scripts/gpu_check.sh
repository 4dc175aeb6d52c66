#!/usr/bin/env bash
# One-shot GPU check for a bare CUDA machine (torch, numpy, tiktoken, tqdm; no datasets, no wandb, no internet).
#   bash scripts/gpu_check.sh [--data DIR] [--out DIR] [--budget_s 480] [--smoke] [--only abcdefghij]
# --data: token shards made beforehand by `prepare_fineweb.py --source sample` (carry data/sample along); a folder
#         without shards (default data/sample) gets them here from the bundled corpus (tiktoken + numpy only, the
#         same bytes as with `datasets`).
# --out:  default results/gpu/<device name>/ -- summary.md, gpu_check.json, trimmed logs, profiler tables, and
#         nvidia-smi's view of the card (clocks, power, temperature) before and after.
# The steps and their order are in scripts/gpu_check.py; each is skipped, with the reason, when it would overrun
# the budget, and every finished step is on disk the moment it ends.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3 || command -v python)}
export PYTHONUNBUFFERED=1
DATA="" OUT="" ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --data) DATA=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --budget_s) ARGS+=(--budget_s "$2"); shift 2 ;;
    --smoke) ARGS+=(--smoke); shift ;;
    --only) ARGS+=(--only "$2"); shift 2 ;;
    -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument $1 (options: --data DIR --out DIR --budget_s N --smoke --only STEPS)" >&2; exit 2 ;;
  esac
done
DATA=${DATA:-data/sample}
if ! compgen -G "$DATA/*train*.bin" > /dev/null; then  # no shards there yet: tokenize the bundled sample into it
  "$PY" prepare_fineweb.py --source sample --out_dir "$DATA" --quiet || exit 2
fi
if [[ -z "$OUT" ]]; then
  DEV=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')" | tr ' /' '__')
  OUT=results/gpu/$DEV
fi
mkdir -p "$OUT"
SMI=name,memory.total,driver_version,clocks.sm,clocks.max.sm,power.draw,power.limit,temperature.gpu
nvidia-smi --query-gpu=$SMI --format=csv > "$OUT/nvidia_smi.csv" 2>/dev/null || rm -f "$OUT/nvidia_smi.csv"
# (library warnings name their install folder: shortened so the log names no machine path)
"$PY" -m scripts.gpu_check --data "$DATA" --out "$OUT" "${ARGS[@]}" 2>&1 \
  | sed -u -E 's#[^ "(]*/(site|dist)-packages/#<site-packages>/#g' | tee "$OUT/gpu_check.log"
rc=${PIPESTATUS[0]}
[[ -f "$OUT/nvidia_smi.csv" ]] && nvidia-smi --query-gpu=$SMI --format=csv,noheader >> "$OUT/nvidia_smi.csv" 2>/dev/null
echo "results in $OUT" >&2
exit "$rc"
