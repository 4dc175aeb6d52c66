"""The GPU path's promises, checked where a CPU can show them: no logits kept across micro-batches, DDP without
buffer broadcasts, one host sync per step, compiled benchmark variants, the codec in fp32 under autocast, the
peak-FLOPs table. (Scripts where only `python3` exists: tests/test_scripts.py runs them that way.)"""
import os
import weakref

import pytest
import torch
import torch.distributed as dist

import runtime
import train
from config import load_config
from conftest import ROOT
from bench import train_step
from kronecker import DenseCodec, KroneckerEmbedding
from model import ARMS, GPT, GPTConfig
from tokenizer import token_bytes

TINY = dict(n_layer=1, n_head=2, n_embd=32, block_size=16, kron_pos_dim=4)
CPU = runtime.Runtime(0, 0, 1, torch.device("cpu"), "cpu", torch.float32, False)


def _batches(n, B=2, T=16):
    g = torch.Generator().manual_seed(0)
    return [(torch.randint(0, 50257, (B, T), generator=g), torch.randint(0, 50257, (B, T), generator=g))
            for _ in range(n)]


def test_no_logits_survive_into_the_next_micro_batch(monkeypatch):
    model = GPT(GPTConfig(input_embedding="bpe_untied", fused_head=False, **TINY))
    alive, seen = [], []
    real_head = GPT.head

    def head(self, h, table=None):
        seen.append(all(ref() is None for ref in alive))  # every earlier micro-batch's logits are gone
        out = real_head(self, h, table)
        alive.append(weakref.ref(out))
        return out
    monkeypatch.setattr(GPT, "head", head)
    train.forward_backward(model, _batches(3), CPU)
    assert seen == [True, True, True]


@pytest.mark.slow
def test_one_host_sync_per_optimizer_step(monkeypatch):
    model = GPT(GPTConfig(input_embedding="kronecker", **TINY))
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    syncs, inside_adam = [], []
    for name in ("item", "tolist", "__bool__", "__float__"):
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _n=name, _r=real):
            if not inside_adam:
                syncs.append(_n)
            return _r(self, *a)
        monkeypatch.setattr(torch.Tensor, name, counted)
    real_step = opt.step

    def adam_step(*a, **k):  # CPU AdamW reads its step counters on the host; CUDA's fused AdamW does not
        inside_adam.append(1)
        try:
            return real_step(*a, **k)
        finally:
            inside_adam.clear()
    opt.step = adam_step
    loss = train.forward_backward(model, _batches(3), CPU)
    assert syncs == []  # no sync inside the micro-step loop
    train.optimizer_step(model, opt, 1e-3, 1.0, loss)
    assert syncs == ["tolist"]  # loss and grad norm read together, once
    # under DDP the all-reduced stop vote is read in that same sync (not after the optimizer step was queued)
    syncs.clear()
    loss = train.forward_backward(model, _batches(1), CPU)
    out = train.optimizer_step(model, opt, 1e-3, 1.0, loss, vote=torch.ones(()))
    assert syncs == ["tolist"] and out[3] == 1.0
    stop = train.StopFlag(torch.device("cpu"))
    assert stop.vote() is stop.vote()  # one device tensor, filled in place: no new host-to-device copy


def test_fused_adamw_is_queued_before_the_one_host_read_and_skips_non_finite_steps(monkeypatch):
    """With fused AdamW (the GPU's) the update is launched before the loss / grad norm are read, so the device works
    while the host waits; a non-finite step is skipped by the kernel itself (found_inf): weights and step counts
    unchanged, exactly as when the host decides."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(input_embedding="kronecker", **TINY))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, fused=True)  # what configure_optimizers gives on CUDA
    events = []
    real_tolist, real_step = torch.Tensor.tolist, opt.step
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: (events.append("read"), real_tolist(self))[1])
    opt.step = lambda *a, **k: (events.append("step"), real_step(*a, **k))[1]
    loss = train.forward_backward(model, _batches(2), CPU)
    out = train.optimizer_step(model, opt, 1e-3, 1.0, loss)
    assert events == ["step", "read"] and out[2] is True
    before = [p.detach().clone() for p in params]
    steps = [opt.state[p]["step"].item() for p in params]
    loss = train.forward_backward(model, _batches(1), CPU)
    out = train.optimizer_step(model, opt, 1e-3, 1.0, loss * float("nan"))
    assert out[2] is False
    assert all(torch.equal(a, b) for a, b in zip(before, params))
    assert [opt.state[p]["step"].item() for p in params] == steps


def test_ddp_does_not_broadcast_buffers(monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(29500 + os.getpid() % 1000))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        rt = runtime.Runtime(0, 0, 2, torch.device("cpu"), "cpu", torch.float32, False)  # "2 ranks": DDP wraps
        cfg = load_config([str(ROOT / "configs/smoke.py"), "--input_embedding=kronecker"])
        _, ddp = train.build_model(cfg, rt)
        assert isinstance(ddp, torch.nn.parallel.DistributedDataParallel)
        assert ddp.broadcast_buffers is False and ddp.gradient_as_bucket_view is True
        # compiled: DDP is wrapped first and the DDP module compiled (dynamo then splits the graph at DDP's buckets,
        # so all-reduces overlap the backward); torch.compile is lazy, nothing is compiled here
        compiled_rt = runtime.Runtime(0, 0, 2, torch.device("cpu"), "cpu", torch.float32, True)
        compiled = train.build_model(cfg, compiled_rt)[1]
        assert isinstance(compiled._orig_mod, torch.nn.parallel.DistributedDataParallel)
        assert torch._dynamo.config.optimize_ddp
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("mode", ["table", "dynamic", "cached"])
def test_codec_stays_fp32_under_bf16_autocast(mode):
    torch.manual_seed(0)
    emb = KroneckerEmbedding(50304, 24, 4, token_bytes(50304))
    emb = emb if mode == "table" else DenseCodec(emb, mode)
    ids = torch.randint(0, 50304, (64,))
    plain = emb(ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = emb(ids)
    assert auto.dtype == torch.float32 and torch.equal(auto, plain)


def test_peak_flops_table_and_which_entry(monkeypatch):
    cuda = torch.device("cuda", 0)
    for name, key, peak in [("NVIDIA H100 80GB HBM3", "H100", 989e12), ("NVIDIA H100 NVL", "H100 NVL", 835e12),
                            ("NVIDIA H100 PCIe", "H100 PCIe", 756e12), ("NVIDIA L40S", "L40S", 362e12),
                            ("NVIDIA L40", "L40", 181e12), ("NVIDIA A10G", "A10G", 70e12),
                            ("NVIDIA GeForce RTX 4090", "RTX 4090", 165e12), ("Some Future GPU", None, None)]:
        monkeypatch.setattr(runtime.torch.cuda, "get_device_name", lambda d, _n=name: _n)
        assert runtime.peak_flops_entry(cuda) == (key, peak), name


@pytest.mark.slow
def test_benchmark_variants_all_run_compiled():
    """Nine compiled models share GPT.forward's code cache: past dynamo's default limit of 8 the ninth would run in
    eager mode, silently. The benchmark raises the limit and makes hitting it an error."""
    cfg = torch._dynamo.config
    saved = {k: getattr(cfg, k) for k in ("recompile_limit", "fail_on_recompile_limit_hit") if hasattr(cfg, k)}
    torch._dynamo.reset()
    try:
        names = train_step.variants(list(ARMS))  # 2 per arm, like the benchmark's
        idx = torch.randint(0, 50257, (1, 8))

        def run_all():
            for arm, fused in names:
                torch.manual_seed(0)
                m = GPT(GPTConfig(input_embedding=arm, fused_head=fused, **TINY))
                torch.compile(m, backend="eager")(idx, idx)
        cfg.fail_on_recompile_limit_hit = True
        with pytest.raises(Exception, match="recompile_limit|cache_size_limit"):
            run_all()  # the default limit is really hit: without the benchmark's setting, variants go eager
        torch._dynamo.reset()
        train_step.allow_many_compiled_models(len(names))
        assert cfg.recompile_limit >= len(names)
        run_all()  # all compiled, none over the limit
    finally:
        for k, v in saved.items():
            setattr(cfg, k, v)
        torch._dynamo.reset()


def test_compiled_fused_head_has_no_in_place_op_on_the_softmax_and_matches_the_plain_head():
    """Under torch.compile the fused head's forward writes the logits' gradient out of place (an in-place update of
    the fp32 softmax makes Inductor materialise it); loss and gradients still equal the plain head's."""
    from torch.nn import functional as F
    from head import fused_cross_entropy
    graphs = []

    def backend(gm, inputs):
        graphs.append(gm)
        return gm.forward
    g = torch.Generator().manual_seed(0)
    h = torch.randn(300, 16, generator=g, requires_grad=True)
    W = torch.randn(1000, 16, generator=g, requires_grad=True)
    t = torch.randint(0, 1000, (300,), generator=g)
    t[::7] = -1
    torch._dynamo.reset()
    loss = torch.compile(fused_cross_entropy, backend=backend, fullgraph=True)(h, W, t)
    dh, dW = torch.autograd.grad(loss, (h, W))
    targets = {str(n.target) for gm in graphs for m in gm.modules() if hasattr(m, "graph") for n in m.graph.nodes}
    assert "scatter_add" in targets  # the traced forward is the one inspected
    assert not {x for x in targets if x.endswith("_") and ("scatter" in x or "mul" in x or "div" in x)}, targets
    ref = F.cross_entropy(h @ W.t(), t, ignore_index=-1)
    rh, rW = torch.autograd.grad(ref, (h, W))
    assert torch.allclose(loss, ref, rtol=1e-5)
    assert torch.allclose(dh, rh, rtol=1e-5, atol=1e-8) and torch.allclose(dW, rW, rtol=1e-5, atol=1e-8)
    torch._dynamo.reset()
