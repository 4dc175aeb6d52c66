#!/usr/bin/env bash
# The comparison across several nodes: run this same command on every node (Slurm: see slurm_compare.sbatch).
#   NNODES=4 NODE_RANK=<0..3> RDZV_ENDPOINT=<node0 host>:29500 bash scripts/compare_multinode.sh CONFIG [compare.sh options]
# Each arm x seed is one torchrun job over all nodes (c10d rendezvous at RDZV_ENDPOINT, one id per run); node 0
# writes the checkpoints and, at the end, the tables. Requires a filesystem shared by the nodes for runs/.
# Processes per node: NPROC, default every GPU the node sees.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0; fi
: "${NNODES:?set NNODES (number of nodes)}"
: "${RDZV_ENDPOINT:?set RDZV_ENDPOINT=host:port of node 0}"
export NNODES RDZV_ENDPOINT NODE_RANK=${NODE_RANK:-0}
exec bash scripts/compare.sh "$@" ${NPROC:+--nproc "$NPROC"}
