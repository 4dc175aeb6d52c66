#!/usr/bin/env bash
# One-shot GPU check: everything a CUDA box with no internet and only this repo can verify, in <= 8 min on one H100.
#   bash scripts/gpu_check.sh                 # writes results/gpu/<device name>/
#   OUT=/tmp/x SMOKE=1 bash scripts/gpu_check.sh   # the same pipeline at smoke size (CPU ok; used by the tests)
# (a) the three Kronecker modes agree on the device in fp32 and bf16 autocast (scripts/check_modes.py)
# (b) each arm trains GPT-2 124M for 100 steps on shards prepared from the bundled sample, bf16 + torch.compile,
#     and its loss falls
# (c) bench/train_step.py configs/gpt2_124m.py for every arm (+ the paper's dynamic/cached Kronecker modes)
# (d) a 2-rank NCCL run when two GPUs are present
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
DEVNAME=$(python -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')" | tr ' /' '__')
OUT=${OUT:-results/gpu/$DEVNAME}
mkdir -p "$OUT"
NGPU=$(python -c "import torch; print(torch.cuda.device_count())")
FAIL=0
step() { echo; echo "=== $*" | tee -a "$OUT/summary.md"; }
{ echo "# GPU check on $DEVNAME ($NGPU GPU(s))"; echo; echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo ?), $(date -u +%F), torch $(python -c 'import torch; print(torch.__version__)')"; } > "$OUT/summary.md"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia_smi.csv" 2>/dev/null || true

if [[ "${SMOKE:-0}" == "1" ]]; then
  CFG=configs/smoke.py; TRAIN_ARGS=(--max_steps=10 --eval_interval=5 --val_tokens=1024); MIN_DROP=0.5; BENCH_ARGS=(--steps 2 --warmup 1 --kron_pos_dim=4)
  MODES_ARGS=(--d 32)
else
  CFG=configs/gpt2_124m.py; MIN_DROP=1.0
  TRAIN_ARGS=(--max_steps=100 --batch_size=16 --total_batch_size=32768 --warmup_steps=10 --eval_interval=50
              --val_tokens=32768 --log_interval=25 --norm_interval=50 --ckpt_interval=100)
  BENCH_ARGS=(--steps 10 --warmup 3 --kron_modes sparse,dynamic,cached)
  MODES_ARGS=()
fi

step "(a) Kronecker modes agree"
python scripts/check_modes.py "${MODES_ARGS[@]}" --json "$OUT/modes.json" 2>&1 | tee -a "$OUT/summary.md" || FAIL=1

python prepare_fineweb.py --source sample --out_dir data/sample --quiet
step "(b) 124M training, 100 steps per arm ($CFG, bf16 + compile on CUDA)"
for arm in bpe_tied kronecker bpe_untied kronecker_tied; do
  run="$OUT/train_$arm"; rm -rf "$run"
  python train.py "$CFG" --data_dir=data/sample --out_dir="$run" --input_embedding=$arm --progress=false \
    "${TRAIN_ARGS[@]}" > "$OUT/train_$arm.log" 2>&1 || FAIL=1
  python - "$run" "$arm" "$MIN_DROP" <<'PY' | tee -a "$OUT/summary.md" || FAIL=1
import json, sys
rows = [json.loads(l) for l in open(f"{sys.argv[1]}/metrics.jsonl")]
val = [r["val_loss"] for r in rows if "val_loss" in r]
mfu = [r["mfu"] for r in rows if r.get("mfu")]
tok = [r["tok_per_s"] for r in rows if "tok_per_s" in r]
ok = len(val) >= 2 and val[-1] < val[0] - float(sys.argv[3])
print(f"{sys.argv[2]:15s} val loss {val[0]:.3f} -> {val[-1]:.3f} {'falls' if ok else 'DOES NOT FALL'}; "
      f"last tok/s {tok[-1]:,.0f}" + (f", MFU {100 * mfu[-1]:.1f}%" if mfu else ""))
sys.exit(0 if ok else 1)
PY
  rm -f "$run"/ckpt_*.pt  # keep metrics, not 1.5 GB of weights
done

step "(c) train-step benchmark, every arm ($CFG)"
python bench/train_step.py "$CFG" "${BENCH_ARGS[@]}" --json "$OUT/train_step.json" 2>&1 | tee "$OUT/train_step.md" | tee -a "$OUT/summary.md" || FAIL=1

if [[ "$NGPU" -ge 2 ]]; then
  step "(d) 2-rank NCCL run"
  torchrun --standalone --nproc_per_node=2 train.py "$CFG" --data_dir=data/sample --out_dir="$OUT/ddp" \
    --input_embedding=kronecker --progress=false "${TRAIN_ARGS[@]}" --max_steps=20 > "$OUT/ddp.log" 2>&1 || FAIL=1
  grep -E "ddp_param_spread" "$OUT/ddp/metrics.jsonl" | tee -a "$OUT/summary.md"
  rm -f "$OUT"/ddp/ckpt_*.pt
else
  step "(d) skipped: one GPU"
fi
echo; echo "gpu check: $([[ $FAIL == 0 ]] && echo PASS || echo FAIL) -> $OUT" | tee -a "$OUT/summary.md"
exit $FAIL
