"""The commands a cluster would run: compare.sh, compare_multinode.sh and slurm_compare.sbatch against stubs of
torchrun (python -m torch.distributed.run), srun and scontrol that record their arguments instead of training."""
import os
import shlex
import subprocess
import sys

import pytest

from conftest import ROOT

STUB_PY = f"""#!/usr/bin/env bash
# records `-m torch.distributed.run ...` and `-m scripts.make_tables ...`; anything else is the real Python
if [[ "$1" == "-m" && ( "$2" == "torch.distributed.run" || "$2" == "scripts.make_tables" ) ]]; then
  echo "$*" >> "$LAUNCH_LOG"; exit 0
fi
exec {shlex.quote(sys.executable)} "$@"
"""
SRUN = """#!/usr/bin/env bash
echo "srun $*" >> "$LAUNCH_LOG"
while [[ "$1" == --* ]]; do shift; done
SLURM_NODEID=0 "$@"
"""
SCONTROL = """#!/usr/bin/env bash
case "$1 $2" in
  "show job") echo "   Command=$SUBMITTED_SCRIPT" ;;
  "show hostnames") printf 'gpu-node-%s\\n' $(seq 1 "${HOSTS:-4}") ;;
  *) echo "scontrol $*" >> "$LAUNCH_LOG" ;;
esac
"""


@pytest.fixture
def stubs(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, text in (("python-stub", STUB_PY), ("srun", SRUN), ("scontrol", SCONTROL)):
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)
    log = tmp_path / "launch.log"
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "PYTHON": str(bindir / "python-stub"),
           "LAUNCH_LOG": str(log), "SUBMITTED_SCRIPT": str(ROOT / "scripts/slurm_compare.sbatch")}
    return env, log


def launches(log):
    return [line.split() for line in log.read_text().splitlines() if "torch.distributed.run" in line]


def test_compare_on_one_node_of_8_gpus(stubs, tmp_path):
    env, log = stubs
    proc = subprocess.run(["bash", "scripts/compare.sh", "configs/gpt2_124m.py", "--nproc", "8", "--max_restarts",
                           "2", "--runs_dir", str(tmp_path / "runs")], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    runs = launches(log)
    assert len(runs) == 4 * 3  # the study arms x the three seeds
    first = runs[0]
    assert first[:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=8", "--max-restarts=2",
                         "train.py"]
    assert "--input_embedding=bpe_tied" in first and "--seed=1337" in first
    assert f"--out_dir={tmp_path}/runs/gpt2_124m/bpe_tied_s1337" in first
    assert "tables and curves:" in proc.stdout


@pytest.mark.parametrize("nodes", [1, 4])
def test_slurm_batch_file_from_another_folder(stubs, tmp_path, nodes):
    """sbatch runs a spooled copy from the submit folder: the script finds the repo through scontrol, every node
    gets the same torchrun command (c10d rendezvous on the first node, 8 processes each), wandb offline."""
    env, log = stubs
    submit = tmp_path / "elsewhere"
    submit.mkdir()
    env = {**env, "SLURM_JOB_ID": "77", "SLURM_NNODES": str(nodes), "SLURM_JOB_NODELIST": "gpu-node-[1-4]",
           "NPROC": "8"}
    spooled = submit / "slurm_script"
    spooled.write_text((ROOT / "scripts/slurm_compare.sbatch").read_text())
    proc = subprocess.run(["bash", str(spooled)], cwd=submit, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "srun --kill-on-bad-exit=1 bash -c" in log.read_text()
    runs = launches(log)
    assert len(runs) == 12
    cmd = runs[0]
    assert "--nproc_per_node=8" in cmd
    if nodes == 1:  # one node: a standalone rendezvous
        assert "--standalone" in cmd
    else:
        assert f"--nnodes={nodes}" in cmd and "--rdzv_backend=c10d" in cmd
        assert "--rdzv_endpoint=gpu-node-1:29500" in cmd and any(a.startswith("--rdzv_id=gpt2_124m_") for a in cmd)
    assert "configs/gpt2_124m.py" in cmd and "--wandb_mode=offline" in cmd
    # the log file Slurm opens is in the submit folder, which exists by definition
    header = (ROOT / "scripts/slurm_compare.sbatch").read_text()
    assert "#SBATCH --output=nanokron-compare-%j.out" in header and "#SBATCH --requeue" in header


def test_slurm_batch_file_survives_a_long_host_list(stubs, tmp_path):
    """`scontrol show hostnames` on a large allocation writes more than a pipe holds; taking its first line must not
    kill the job with SIGPIPE under `set -o pipefail` (exit 141 before any launch)."""
    env, log = stubs
    env = {**env, "SLURM_JOB_ID": "77", "SLURM_NNODES": "4", "SLURM_JOB_NODELIST": "gpu-node-[1-20000]",
           "NPROC": "8", "HOSTS": "20000"}
    proc = subprocess.run(["bash", str(ROOT / "scripts/slurm_compare.sbatch")], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    assert "--rdzv_endpoint=gpu-node-1:29500" in launches(log)[0]


def test_multinode_script_on_node_2_of_4(stubs):
    env, log = stubs
    env = {**env, "NNODES": "4", "NODE_RANK": "2", "RDZV_ENDPOINT": "gpu-node-1:29500", "NPROC": "8"}
    proc = subprocess.run(["bash", "scripts/compare_multinode.sh", "configs/gpt2_124m.py", "--arms", "kronecker",
                           "--seeds", "1337"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    (cmd,) = launches(log)
    assert "--nnodes=4" in cmd and "--nproc_per_node=8" in cmd and "--rdzv_endpoint=gpu-node-1:29500" in cmd
    assert "scripts.make_tables" not in log.read_text()  # only node 0 writes the tables


@pytest.mark.parametrize("config", ["gpt2_124m", pytest.param("gpt2_350m", marks=pytest.mark.slow),
                                    pytest.param("gpt2_774m", marks=pytest.mark.slow)])
def test_every_world_size_plans_cleanly(config, monkeypatch, capsys):
    """`WORLD_SIZE=N RANK=0 LOCAL_RANK=0 python train.py CONFIG --dry_run`, in-process (the model is built on the
    CPU to count its parameters: seconds per world size at 774M, so the larger configs are `slow`)."""
    import train
    for world in (1, 8, 16, 32, 64):
        for k, v in {"WORLD_SIZE": str(world), "RANK": "0", "LOCAL_RANK": "0"}.items():
            monkeypatch.setenv(k, v)
        train.main([str(ROOT / f"configs/{config}.py"), "--dry_run"])
        first = capsys.readouterr().out.splitlines()[0]
        micro, accum = int(first.split("micro-batch ")[1].split()[0]), int(first.split("grad accum ")[1].split()[0])
        assert micro * accum * world * 1024 == 524288 and "= 524,288 tokens/step" in first, first
