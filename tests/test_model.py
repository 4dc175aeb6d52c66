import collections
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import head as head_mod
from embeddings import TableEmbedding
from kronecker import DenseCodec, KroneckerEmbedding, codec_bytes
from model import ARMS, GPT, GPTConfig, sample_next
from tokenizer import get_encoding, token_bytes

TINY = dict(n_layer=1, n_head=2, n_embd=32, block_size=32, kron_pos_dim=4)


@pytest.mark.slow
def test_param_counts_at_124m():
    expected = {"bpe_tied": 124_475_904, "kronecker": 127_621_632, "bpe_untied": 163_109_376,
                "kronecker_tied": 88_988_160, "bpe_scaled": 163_109_376, "bpe_lowrank": 127_642_368,
                "kronecker_permuted": 127_621_632}
    inputs = {}
    for arm, n in expected.items():
        model = GPT(GPTConfig(input_embedding=arm))
        assert sum(p.numel() for p in model.parameters()) == n, arm
        inputs[arm] = model.input_params()
    assert inputs["kronecker"] == 4096 * 768 and inputs["bpe_lowrank"] == 62 * (50304 + 768)


def test_unknown_arm_lists_valid_names():
    with pytest.raises(ValueError, match="bpe_tied, kronecker, bpe_untied"):
        GPTConfig(input_embedding="kron")


@pytest.fixture(scope="module")
def wte16():
    return KroneckerEmbedding(50304, 8, 16, token_bytes(50304))


def test_byte_table_holds_raw_bytes(wte16):
    tb = token_bytes(50304)
    table, lengths = wte16.byte_table.numpy(), wte16.lengths.numpy()
    for i, raw in enumerate(tb):
        L = int(lengths[i])
        if len(raw) <= 16:
            assert L == len(raw) and table[i, :L].tobytes() == raw, i
        else:
            assert L <= 16 and raw.startswith(table[i, :L].tobytes()), i
        assert not table[i, L:].any()
    assert (lengths[50257:] == 0).all()
    # truncation keeps whole UTF-8 characters
    assert codec_bytes("ab€".encode(), 3) == b"ab"
    assert codec_bytes(b"ab\xe2\x82", 3) == b"ab\xe2"  # not valid UTF-8: plain cut


def test_few_tokens_share_a_codec_row(wte16):
    rows = collections.Counter(
        (wte16.byte_table[i].numpy().tobytes(), int(wte16.lengths[i])) for i in range(50257))
    shared = sum(c for c in rows.values() if c > 1)
    assert shared <= 60
    # the reference package's decode() route maps 344 tokens to U+FFFD: far more collisions
    enc = get_encoding()
    ref = collections.Counter(codec_bytes(enc.decode([i]).encode(), 16) for i in range(50257))
    assert sum(c for c in ref.values() if c > 1) > 300


def _probe_vocab():
    """Real GPT-2 tokens chosen to cover L=1, L=P, truncated (L>P), invalid UTF-8, EOT and padding (L=0)."""
    tb = token_bytes(50304)
    ids = list(range(0, 50304, 97)) + sorted(range(50257), key=lambda i: -len(tb[i]))[:40] + [50256, 50300]
    return [tb[i] for i in ids]


def _modes(dtype, P=16, d=24, vocab=None):
    """The codec's three forms over one proj: 'sparse' (the table through the sparse operator, as training uses
    it), and the paper's 'dynamic' and 'cached' variants."""
    vocab = vocab or _probe_vocab()
    torch.manual_seed(0)
    emb = KroneckerEmbedding(len(vocab), d, P, vocab).to(dtype)
    return vocab, {"sparse": emb, "dynamic": DenseCodec(emb, "dynamic"), "cached": DenseCodec(emb, "cached")}


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_three_modes_agree_on_outputs_and_grads(dtype, tol):
    vocab, mods = _modes(dtype)
    lengths = mods["sparse"].lengths
    assert (lengths == 0).any() and (lengths == 16).any()
    ids = torch.arange(len(vocab)).repeat(3)[torch.randperm(3 * len(vocab), generator=torch.Generator().manual_seed(1))]
    grad_out = torch.randn(len(ids), 24, dtype=dtype, generator=torch.Generator().manual_seed(2))
    outs, grads = {}, {}
    for name, m in mods.items():
        m.proj.grad = None
        out = m(ids)
        out.backward(grad_out)
        outs[name], grads[name] = out.detach(), m.proj.grad.clone()
    for name in ("dynamic", "cached"):
        assert _rel(outs[name], outs["sparse"]) <= tol, name
        assert _rel(grads[name], grads["sparse"]) <= tol, name
    pad = (mods["sparse"].lengths[ids] == 0)
    assert pad.any() and (outs["sparse"][pad] == 0).all()


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_sparse_mode_matches_eq1_transcription():
    vocab, mods = _modes(torch.float64)
    m = mods["sparse"]
    W = m.proj.detach().numpy()
    P, D = 16, 4096
    ours = m.table().detach().numpy()
    for i, raw in enumerate(vocab):
        b = codec_bytes(raw, P)
        s = np.zeros(D)
        for p, byte in enumerate(b):
            s[byte * P + p] += 1 / math.sqrt(len(b))
        x = (s - s.mean()) / (s.std(ddof=1) + 1e-6)
        np.testing.assert_allclose(ours[i], x @ W, rtol=0, atol=1e-12 * np.abs(x @ W).max())


def test_agrees_with_reference_package():
    ref = pytest.importorskip("kronecker_embeddings", reason="reference package kronecker-embeddings not installed")
    vocab, mods = _modes(torch.float32)
    ours = mods["sparse"]
    theirs = ref.KroneckerEmbedding(len(vocab), 24, pos_dim=16, mode="dynamic", byte_buffer=ours.byte_table,
                                    length_buffer=ours.lengths)
    theirs.projection.weight.data = ours.proj.data.T.clone()  # proj is stored transposed
    ids = torch.arange(len(vocab))
    assert _rel(ours(ids), theirs(ids)) <= 1e-5


def test_proj_keeps_its_init_inside_gpt():
    model = GPT(GPTConfig(input_embedding="kronecker", **TINY))
    proj = model.transformer.wte.proj
    D = 256 * 4
    assert abs(proj.std().item() - 1 / math.sqrt(D)) < 0.1 / math.sqrt(D)
    assert abs(proj.norm(dim=0).mean().item() - 1.0) < 0.05  # rows of Linear(D, d).weight ~ unit norm
    assert abs(model.transformer.h[0].mlp.c_fc.weight.std().item() - 0.02) < 0.002
    assert abs(model.transformer.h[0].mlp.c_proj.weight.std().item() - 0.02 / math.sqrt(2)) < 0.002


@pytest.mark.parametrize("arm", ARMS)
def test_every_arm_forward_backward_generate(arm):
    torch.manual_seed(0)
    model = GPT(GPTConfig(input_embedding=arm, **TINY))
    idx, tgt = torch.randint(0, 50257, (2, 16)), torch.randint(0, 50257, (2, 16))
    logits, loss = model(idx, tgt)
    assert logits is None  # the fused head never forms the logits
    assert abs(loss.item() - math.log(50304)) < 1.5
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    if arm == "bpe_tied":
        assert model.head_weight() is model.transformer.wte.weight
    model.config.fused_head = False
    logits, plain = model(idx, tgt)
    assert logits.shape == (2, 16, 50304) and torch.allclose(plain, loss)
    out = model.generate(idx[:, :4], 5, temperature=0.8, top_k=50, top_p=0.9)
    assert out.shape == (2, 9) and (out[:, :4] == idx[:, :4]).all() and (out < 50257).all()
    greedy = model.generate(idx[:, :4], 3, temperature=0)
    assert torch.equal(greedy, model.generate(idx[:, :4], 3, temperature=0))


def test_kronecker_tied_gradient_is_sum_of_input_and_output_paths(monkeypatch):
    torch.manual_seed(0)
    model = GPT(GPTConfig(input_embedding="kronecker_tied", **TINY)).double()
    idx, tgt = torch.randint(0, 50257, (2, 12)), torch.randint(0, 50257, (2, 12))
    wte = model.transformer.wte
    calls = []
    real_full_table = wte.table
    monkeypatch.setattr(wte, "table", lambda: calls.append(1) or real_full_table())
    _, loss = model(idx, tgt)
    assert len(calls) == 1  # one table per forward, shared by both uses
    loss.backward()
    g_full = wte.proj.grad.clone()

    def manual(detach_in, detach_out):  # the same forward, with one of the two uses cut off from proj
        table = real_full_table()
        t_in, t_out = (table.detach() if detach_in else table), (table.detach() if detach_out else table)
        x = F.embedding(idx, t_in) + model.transformer.wpe(torch.arange(12))
        for block in model.transformer.h:
            x = block(x)
        logits = F.linear(model.transformer.ln_f(x), t_out) * 32 ** -0.5
        return F.cross_entropy(logits.view(-1, logits.size(-1)), tgt.view(-1))

    assert abs(manual(False, False).item() - loss.item()) < 1e-12
    grads = []
    for cut in ((False, True), (True, False)):
        model.zero_grad()
        manual(*cut).backward()
        grads.append(wte.proj.grad.clone())
    assert grads[0].abs().max() > 0 and grads[1].abs().max() > 0
    assert torch.allclose(g_full, grads[0] + grads[1], rtol=1e-9, atol=1e-12)


def test_flops_count_what_each_arm_computes():
    models = {arm: GPT(GPTConfig(input_embedding=arm, **TINY)) for arm in ARMS}
    flops = {arm: m.estimate_flops_per_token(tokens_per_forward=64) for arm, m in models.items()}
    assert flops["bpe_tied"] == flops["bpe_untied"] == flops["bpe_scaled"]  # a stored table costs nothing
    wte = models["kronecker"].transformer.wte
    nnz, V, d, D = int(wte.lengths.sum()), 50304, 32, 1024
    assert flops["kronecker"] - flops["bpe_tied"] == pytest.approx((4 * (nnz + V) * d + 2 * D * d) / 64)
    assert flops["kronecker_tied"] == flops["kronecker"] == flops["kronecker_permuted"]  # one table per forward
    r = models["bpe_lowrank"].transformer.wte.rank
    assert flops["bpe_lowrank"] - flops["bpe_tied"] == pytest.approx(6 * V * r * d / 64)


def test_sample_next_top_p_and_greedy():
    logits = torch.full((1, 50304), -10.0)
    logits[0, 7], logits[0, 9] = 5.0, 4.9
    logits[0, 50300] = 100.0  # padding ids are never sampled
    assert sample_next(logits, temperature=0).item() == 7
    g = torch.Generator().manual_seed(0)
    draws = {sample_next(logits, 1.0, top_p=0.4, generator=g).item() for _ in range(20)}
    assert draws == {7}
    draws = {sample_next(logits, 1.0, top_p=0.99, generator=g).item() for _ in range(50)}
    assert draws == {7, 9}


@pytest.mark.parametrize("arm", ARMS)
def test_every_arm_traces_without_graph_breaks(arm):
    """torch.compile(fullgraph=True) raises on any graph break; the 'eager' backend checks tracing only (fast)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = GPT(GPTConfig(input_embedding=arm, **TINY))
    idx, tgt = torch.randint(0, 50257, (2, 16)), torch.randint(0, 50257, (2, 16))
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    _, loss = compiled(idx, tgt)
    loss.backward()
    _, eager_loss = model(idx, tgt)
    assert torch.allclose(loss, eager_loss)


def test_kronecker_tied_under_bf16_autocast():
    torch.manual_seed(0)
    model = GPT(GPTConfig(input_embedding="kronecker_tied", **TINY))
    idx, tgt = torch.randint(0, 50257, (2, 16)), torch.randint(0, 50257, (2, 16))
    _, loss32 = model(idx, tgt)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss16 = model(idx, tgt)
    loss16.backward()
    assert loss16.dtype == torch.float32 and abs(loss16.item() - loss32.item()) < 0.1
    assert torch.isfinite(model.transformer.wte.proj.grad).all()


def test_operator_exact_when_every_codec_row_is_used_and_rows_are_heavy():
    """At P=1 the 256 single-byte tokens use every codec row, and 600 copies of one token make its row heavier
    than a sub-bag (kronecker.BAG): the transposed gradient folds several sub-bags into one row."""
    vocab = [bytes([i]) for i in range(256)] + _probe_vocab() + [b"e"] * 600
    _, mods = _modes(torch.float64, P=1, d=8, vocab=vocab)
    sparse, dense = mods["sparse"], mods["dynamic"]
    assert len(sparse.t_row) > len(torch.unique(sparse.t_row)) == 256
    ids = torch.arange(len(vocab))
    grad = torch.randn(len(vocab), 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a = sparse(ids)
    a.backward(grad)
    g_sparse = sparse.proj.grad.clone()
    sparse.proj.grad = None
    b = dense(ids)
    b.backward(grad)
    assert _rel(a, b) <= 1e-12 and _rel(g_sparse, sparse.proj.grad) <= 1e-12


def _grads(model, idx, tgt, fused, autocast=False):
    model.zero_grad()
    model.config.fused_head = fused
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(idx, tgt)[1]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("arm", ARMS)
def test_fused_head_equals_the_plain_head(arm):
    """Loss and the gradient of every parameter, fp32 and under bf16 autocast, with ignored targets (-1) and chunks
    that do not divide the tokens; the padded vocabulary rows (50,257-50,303) get the same gradient too."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(input_embedding=arm, **TINY))
    idx, tgt = torch.randint(0, 50257, (3, 30)), torch.randint(0, 50257, (3, 30))
    tgt[0, :5] = -1
    monkey = head_mod.HEAD_CHUNK_BYTES["cpu"]
    head_mod.HEAD_CHUNK_BYTES["cpu"] = 16 * 4 * 50304  # chunks of 16 tokens: 90 tokens = 5 full + 1 partial
    try:
        lf, gf = _grads(model, idx, tgt, True)
        lp, gp = _grads(model, idx, tgt, False)
        assert abs(lf.item() - lp.item()) <= 1e-5 * lp.item()
        for n in gp:
            assert (gf[n] - gp[n]).abs().max() <= 1e-5 * gp[n].abs().max() + 1e-12, n
        head = "lm_head.weight" if model.lm_head is not None else (
            "transformer.wte.weight" if isinstance(model.transformer.wte, TableEmbedding) else None)
        if head:  # padding ids are never targets, but their logits are in the softmax: pushed down alike
            pad_f, pad_p = gf[head][50257:], gp[head][50257:]
            assert pad_p.abs().max() > 0 and (pad_f - pad_p).abs().max() <= 1e-5 * pad_p.abs().max()
        # bf16 autocast: the chunk's logits are bf16 matmuls either way, softmax and loss fp32
        lf, gf = _grads(model, idx, tgt, True, autocast=True)
        lp, gp = _grads(model, idx, tgt, False, autocast=True)
        assert lf.dtype == torch.float32 and abs(lf.item() - lp.item()) <= 1e-3 * lp.item()
        for n in gp:  # bf16 has an 8-bit mantissa; the fused head sums per chunk in fp32
            assert (gf[n] - gp[n]).abs().max() <= 3e-2 * gp[n].abs().max() + 1e-9, n
    finally:
        head_mod.HEAD_CHUNK_BYTES["cpu"] = monkey


def test_head_chunk_rule():
    assert head_mod.head_chunk_size(50304, "cpu") == 128 and head_mod.head_chunk_size(50304, "cuda") == 2048


def test_same_seed_same_trunk_for_every_arm():
    """At one seed every arm starts from identical shared weights (wpe, blocks, ln_f; the untied lm_head of
    kronecker and bpe_untied), whatever its embedding draws; another seed gives other weights."""
    def build(arm, seed):
        torch.manual_seed(seed)
        return dict(GPT(GPTConfig(input_embedding=arm, **TINY)).named_parameters())
    models = {arm: build(arm, 1337) for arm in ARMS}
    shared = [n for n in models["bpe_tied"] if not n.startswith(("transformer.wte", "lm_head"))]
    assert len(shared) > 10 and any(n.startswith("transformer.h.0.attn") for n in shared)
    for arm, params in models.items():
        for n in shared:
            assert torch.equal(params[n], models["bpe_tied"][n]), (arm, n)
    for arm in ARMS:
        if not ARMS[arm].tied:
            assert torch.equal(models[arm]["lm_head.weight"], models["bpe_untied"]["lm_head.weight"]), arm
    assert torch.equal(models["bpe_tied"]["transformer.wte.weight"], models["bpe_untied"]["transformer.wte.weight"])
    other = build("kronecker", 1338)
    assert not torch.equal(other["transformer.h.0.attn.c_attn.weight"], models["kronecker"]["transformer.h.0.attn.c_attn.weight"])
