#!/usr/bin/env bash
# Regenerates everything under results/ that a 2-core CPU can make (the commands behind the committed numbers).
#   bash scripts/cpu_results.sh            # ~1 h on 2 cores: comparison (4 arms x 3 seeds), tables, probes, benchmarks
# Steps whose outputs exist are redone from the runs in runs/cpu_tiny (finished runs are not retrained).
set -euo pipefail
cd "$(dirname "$0")/.."
R=results/cpu_tiny
ARMS="bpe_tied kronecker bpe_untied kronecker_tied"

# 1. the comparison (compare.sh skips finished runs) and its tables, from the committed metrics copies
bash scripts/compare.sh configs/cpu_tiny.py --arms "$ARMS" --tables_out "$R"
for d in runs/cpu_tiny/*_s*/; do
  mkdir -p "$R/runs/$(basename "$d")"
  cp "$d/metrics.jsonl" "$d/config.json" "$R/runs/$(basename "$d")/"
done
python scripts/make_tables.py "$R/runs" --out "$R"

# 2. probes on the seed-1337 checkpoints of every arm
CK=$(for a in $ARMS; do echo "runs/cpu_tiny/${a}_s1337"; done)
python probes/robustness.py --checkpoints $CK --out "$R/probes/robustness.json"
python probes/generation.py --checkpoints $CK --out "$R/probes/generation.json"
python probes/geometry.py --checkpoints $CK --out "$R/probes/geometry.json"
python probes/param_accounting.py --out results/param_accounting.json

# 3. benchmarks (run on a quiet machine: they time things). Raw tables go to *.txt; the committed *.md add the
#    command, commit, machine and a note.
mkdir -p results/bench
python bench/embedding.py --json results/bench/embedding.json | tee results/bench/embedding.txt
python bench/train_step.py configs/cpu_tiny.py --steps 15 --warmup 3 --kron_modes sparse,dynamic,cached \
  --json results/bench/train_step_cpu.json | tee results/bench/train_step_cpu.txt
python bench/tokenize_bench.py --json results/bench/tokenize.json | tee results/bench/tokenize.txt
python bench/tokenize_bench.py --repeat 10 --json results/bench/tokenize_x10.json | tee results/bench/tokenize_x10.txt
