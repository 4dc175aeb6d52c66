"""Where a run executes: the device, the precision, the process group (torchrun), and the device's peak FLOP/s.

model.py knows nothing of any of this; train.py asks setup_runtime() once and passes the Runtime along.
"""
import os
import re
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

from util import UserError


class DeviceError(UserError):
    """The requested device does not exist here; the message says what to pass instead."""


@dataclass
class Runtime:
    rank: int
    local_rank: int
    world: int
    device: torch.device
    device_type: str
    ptdtype: torch.dtype
    compile: bool

    @property
    def master(self):
        return self.rank == 0

    @property
    def ddp(self):
        return self.world > 1

    def autocast(self):
        if self.ptdtype == torch.float32:
            return nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.ptdtype)


def init_distributed(backend, rank, world, device=None):
    """Join the process group. Single-node torchrun restarts (--max-restarts) reuse the launcher's store, whose
    keys still name the dead workers' addresses: gloo then times out connecting to them. Namespacing the keys
    by restart attempt makes a restarted group find only its own members. (Multi-node: per-node restart counts
    can differ, so the plain env:// path is used; recover there by resubmitting -- auto-resume does the rest.)"""
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    single_node = os.environ.get("LOCAL_WORLD_SIZE") == str(world)
    # NCCL: naming the rank's GPU binds the communicator to it at once (no guessing, no lazy init on the first
    # collective); gloo takes none
    bind = {"device_id": device} if device is not None and device.type == "cuda" else {}
    if attempt is None or not single_node:
        dist.init_process_group(backend=backend, **bind)
        return
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                          is_master=rank == 0 and not agent_store)
    dist.init_process_group(backend=backend, store=dist.PrefixStore(f"nanokron/attempt{attempt}", store),
                            rank=rank, world_size=world, **bind)


def resolve_device(want: str, local_rank: int = 0) -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' | 'mps' -> a device that exists here, or one clear error."""
    if want == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if want == "cpu":
        return torch.device("cpu")
    if want == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise DeviceError("device=mps but this machine has no Apple-silicon GPU (MPS); use --device=cpu")
        return torch.device("mps")
    m = re.fullmatch(r"cuda(?::(\d+))?", want)
    if not m:
        raise DeviceError(f"unknown device {want!r}; choose auto, cpu, cuda, cuda:N or mps")
    if not torch.cuda.is_available():
        raise DeviceError(f"device={want} but CUDA is not available here; use --device=cpu")
    index = int(m.group(1)) if m.group(1) is not None else local_rank
    if index >= torch.cuda.device_count():
        raise DeviceError(f"device={want} but this machine has {torch.cuda.device_count()} CUDA device(s); "
                          f"use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return torch.device(f"cuda:{index}")


def setup_runtime(device="auto", dtype="auto", compile="auto") -> Runtime:
    """torchrun sets RANK/WORLD_SIZE: then join the process group (NCCL on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
    if world > 1 and not dist.is_initialized():
        init_distributed("nccl" if dev.type == "cuda" else "gloo", rank, world, dev)
    if dtype == "auto":
        dtype = "bfloat16" if dev.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    comp = compile == "true" or (compile == "auto" and dev.type == "cuda")
    return Runtime(rank, local_rank, world, dev, dev.type, getattr(torch, dtype), comp)


# bf16 dense tensor-core peak per device (vendor datasheets, no sparsity), for MFU. First match wins, so the more
# specific names come first ("H100 NVL" before "H100", "L40S" before "L40").
PEAK_FLOPS = [("H200 NVL", 835e12), ("H200", 989e12), ("H100 NVL", 835e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("GH200", 989e12),
              ("B200", 2250e12), ("A100", 312e12), ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12),
              ("A10G", 70e12), ("A10", 125e12), ("RTX 6000 Ada", 364e12), ("RTX A6000", 155e12),
              ("V100", 125e12), ("RTX 4090", 165e12), ("RTX 3090", 71e12), ("MI300X", 1307e12)]


def peak_flops_entry(device: torch.device):
    """(table entry, peak bf16 FLOP/s) for this device, or (None, None) on CPU or an unknown GPU (then no MFU)."""
    if device.type != "cuda":
        return None, None
    name = torch.cuda.get_device_name(device)
    return next(((key, p) for key, p in PEAK_FLOPS if key in name), (None, None))


def peak_flops(device: torch.device):
    return peak_flops_entry(device)[1]


def param_spread(model) -> float:
    """max - min over ranks of a checksum of all parameters (0.0 when DDP kept them identical)."""
    with torch.no_grad():
        s = torch.stack([sum(p.double().sum() for p in model.parameters()),
                         sum((p.double() ** 2).sum() for p in model.parameters())])
    gathered = [torch.zeros_like(s) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, s)
    g = torch.stack(gathered)
    return (g.max(0).values - g.min(0).values).max().item()
