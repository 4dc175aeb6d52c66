#!/usr/bin/env bash
# Downstream evaluation of an exported model (export_hf.py) with lm-evaluation-harness.
#   bash scripts/eval_lm.sh EXPORT_DIR [TASKS] [--out FILE] [--device cpu|cuda] [--batch_size N] [--limit N]
# TASKS (comma-separated) default: hellaswag,lambada_openai,arc_easy,piqa,winogrande -- the zero-shot tasks GPT-2
# reproductions report (HellaSwag first). They download from the Hugging Face hub; offline, the repo's own
# nanokron_tiny_mc (evals/) checks the path end to end.
# Writes --out (default results/<exp>/eval/<arm>_s<seed>.json, <exp> = the folder holding the exported run): per
# task the metrics lm-eval reports, plus arm, seed, step, lm-eval version and the command. make_tables.py reads
# these. A whole study at once: scripts/eval_all.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3 || command -v python)}
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0; fi
[[ $# -ge 1 && "$1" != -* ]] || { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
DIR=$1; shift
TASKS=hellaswag,lambada_openai,arc_easy,piqa,winogrande
if [[ $# -gt 0 && "$1" != --* ]]; then TASKS=$1; shift; fi
OUT="" DEVICE=auto BATCH=8 LIMIT=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    --device) DEVICE=$2; shift 2 ;;
    --batch_size) BATCH=$2; shift 2 ;;
    --limit) LIMIT=(--limit "$2"); shift 2 ;;
    *) echo "error: unknown argument $1 (options: --out FILE --device D --batch_size N --limit N)" >&2; exit 2 ;;
  esac
done
[[ -f "$DIR/nanokron.json" ]] || { echo "error: $DIR is not a folder written by export_hf.py (no nanokron.json)" >&2; exit 2; }
if [[ "$DEVICE" == auto ]]; then
  DEVICE=$("$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
fi
if [[ -z "$OUT" ]]; then
  OUT=$("$PY" -c "
import json, sys; from pathlib import Path
m = json.load(open(sys.argv[1] + '/nanokron.json'))
print(f\"results/{m.get('experiment') or 'export'}/eval/{m['arm']}_s{m['seed']}.json\")" "$DIR")
fi
RAW=$(mktemp -d)
trap 'rm -rf "$RAW"' EXIT
"$PY" -m lm_eval --model hf --model_args "pretrained=$DIR,dtype=float32" --tasks "$TASKS" --include_path evals \
  --device "$DEVICE" --batch_size "$BATCH" --output_path "$RAW" "${LIMIT[@]}"
mkdir -p "$(dirname "$OUT")"
"$PY" - "$DIR" "$RAW" "$OUT" "$TASKS" "$*" <<'PY'
import json, sys
from pathlib import Path
import lm_eval
export, raw, out, tasks, extra = sys.argv[1:]
meta = json.loads((Path(export) / "nanokron.json").read_text())
found = sorted(Path(raw).rglob("results_*.json"))
if not found:
    sys.exit("error: lm-eval wrote no results file")
res = json.loads(found[-1].read_text())
metrics = {t: {k.split(",")[0]: v for k, v in m.items()
               if k not in ("alias", "sample_len") and isinstance(v, (int, float))} for t, m in res["results"].items()}
Path(out).write_text(json.dumps({"arm": meta["arm"], "seed": meta["seed"], "step": meta["step"],
                                 "source_checkpoint": meta["source_checkpoint"], "tasks": metrics,
                                 "n_samples": res.get("n-samples"), "lm_eval": lm_eval.__version__ if hasattr(
                                     lm_eval, "__version__") else None,
                                 "command": f"bash scripts/eval_lm.sh {export} {tasks} {extra}".strip()}, indent=1))
print(f"wrote {out}: " + "; ".join(f"{t}: " + ", ".join(f"{k} {v:.4f}" for k, v in m.items()
                                                         if not k.endswith("_stderr")) for t, m in metrics.items()))
PY
