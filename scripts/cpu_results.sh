#!/usr/bin/env bash
# Regenerates everything under results/ that a 2-core CPU can make (the commands behind the committed numbers).
#   bash scripts/cpu_results.sh            # ~2.5 h on 2 cores: comparison (every arm x 5 seeds), tables, probes, benchmarks
# Finished runs in runs/cpu_tiny are not retrained (compare.sh skips them).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'; exit 0; fi
PY=${PYTHON:-$(command -v python3 || command -v python)}
R=results/cpu_tiny
SEEDS="1337 1338 1339 1340 1341"

# 1. the comparison, then each run's config.json + metrics.jsonl (no checkpoints) committed under $R/runs, and the
#    tables made from those copies (tests/test_results.py checks they regenerate byte for byte)
bash scripts/compare.sh configs/cpu_tiny.py --seeds "$SEEDS" --tables_out runs/cpu_tiny/tables
for d in runs/cpu_tiny/*_s*/; do
  mkdir -p "$R/runs/$(basename "$d")"
  cp "$d/metrics.jsonl" "$d/config.json" "$R/runs/$(basename "$d")/"
done
"$PY" -m scripts.make_tables "$R/runs" --out "$R"

# 2. probes on the seed-1337 checkpoints of every arm
CK=$(for d in runs/cpu_tiny/*_s1337; do echo "$d"; done)
"$PY" -m probes.robustness --checkpoints $CK --out "$R/probes/robustness.json"
"$PY" -m probes.generation --checkpoints $CK --out "$R/probes/generation.json"
"$PY" -m probes.geometry --checkpoints $CK --out "$R/probes/geometry.json"
"$PY" -m probes.param_accounting --out results/param_accounting.json

# 3. benchmarks (run on a quiet machine: they time things; 1 thread gives steadier ratios)
mkdir -p results/bench
# (the printed tables, with command, commit and machine, are what results/bench/*.md record)
OMP_NUM_THREADS=1 "$PY" -m bench.train_step configs/cpu_tiny.py --steps 10 --warmup 2 \
  --json results/bench/train_step_cpu.json
"$PY" -m bench.embedding --json results/bench/embedding.json
"$PY" -m bench.tokenize_bench --json results/bench/tokenize.json
"$PY" -m bench.tokenize_bench --repeat 10 --json results/bench/tokenize_x10.json
