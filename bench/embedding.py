"""Input-embedding benchmark: forward+backward time and memory of nn.Embedding vs the Kronecker codec modes.

    python -m bench.embedding [--quick] [--reps 7] [--json PATH] [--device cpu]

Methods, timed interleaved in one process (so machine drift hits all alike), median after warm-up:
  nn.Embedding                   the BPE table
  codec-table                    nanokron's KroneckerEmbedding as training uses it: the whole V x d table through the
                                 fixed sparse operator (kronecker.CodecTable), then a lookup
  codec-dynamic / -cached        the paper's runtime variants (kronecker.DenseCodec): dense codec vectors per id
  reference-dynamic / -cached    the reference package kronecker-embeddings==0.1.1, when installed
Settings: the GPT-2 124M micro-step (V=50304, P=16, d=768, ids 64x1024: nn.Embedding vs codec-table only -- the dense
variants would form a 65,536 x 4,096 codec matrix), V=50257, P=16, d=768, ids 8x1024 (every method) and V=131072,
P=32, d=1024, ids 4x1024 (the paper's frontier-size example: GPT-2's tokens plus seeded synthetic byte strings with
GPT-2's length distribution).
Memory: parameters, buffers (byte table, cached codec table) and the tensors saved for backward.
"""
import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn

from kronecker import DenseCodec, KroneckerEmbedding
from tokenizer import token_bytes

SETTINGS = [dict(V=50304, P=16, d=768, B=64, T=1024, dense=False), dict(V=50257, P=16, d=768, B=8, T=1024),
            dict(V=131072, P=32, d=1024, B=4, T=1024)]


def vocab_bytes(V, seed=0):
    """GPT-2's raw token bytes, extended to V ids with seeded synthetic tokens of GPT-2-like lengths."""
    if V <= 50304:
        return list(token_bytes(50304))[:V]  # ids >= 50257: GPT-2's padding ids (no bytes)
    real = list(token_bytes(50257))
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([len(b) for b in real])
    picks = lengths[torch.randint(len(real), (V - len(real),), generator=g)]
    extra = [bytes(torch.randint(32, 127, (int(n),), generator=g).tolist()) for n in picks]
    return real + extra


def build(method, V, P, d, tb, device):
    torch.manual_seed(0)
    if method == "nn.Embedding":
        return nn.Embedding(V, d).to(device)
    family, _, mode = method.partition("-")
    ours = KroneckerEmbedding(V, d, P, tb)
    if family == "codec":
        return (ours if mode == "table" else DenseCodec(ours, mode)).to(device)
    import kronecker_embeddings as ref  # same raw bytes for both: same work
    return ref.KroneckerEmbedding(V, d, pos_dim=P, mode=mode, byte_buffer=ours.byte_table,
                                  length_buffer=ours.lengths).to(device)


def mib(tensors):
    seen, total = set(), 0
    for t in tensors:
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key not in seen:
            seen.add(key)
            total += key[1]
    return total / 2 ** 20


def saved_activation_mib(module, ids):
    saved = []

    def pack(t):
        saved.append(t)
        return t

    params = {p.data_ptr() for p in module.parameters()} | {b.data_ptr() for b in module.buffers()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = module(ids)
    out.sum().backward()
    module.zero_grad(set_to_none=True)
    return mib([t for t in saved if t.data_ptr() not in params])


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_once(module, ids, grad, device):
    sync(device)
    t0 = time.perf_counter()
    module(ids).backward(grad)
    sync(device)
    dt = time.perf_counter() - t0
    module.zero_grad(set_to_none=True)
    return dt * 1000


def run_setting(s, methods, reps, device, log=print):
    V, P, d, B, T = s["V"], s["P"], s["d"], s["B"], s["T"]
    tb = vocab_bytes(V)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (B, T), generator=g).to(device)
    grad = torch.randn(B, T, d, generator=g).to(device)
    mods, rows = {}, {}
    for m in methods:
        mods[m] = build(m, V, P, d, tb, device)
        rows[m] = {"method": m, "V": V, "P": P, "d": d, "ids": f"{B}x{T}", "device": str(device),
                   "param_mib": mib(list(mods[m].parameters())), "buffer_mib": mib(list(mods[m].buffers())),
                   "saved_mib": saved_activation_mib(mods[m], ids), "times": []}
        time_once(mods[m], ids, grad, device)  # warm-up
    for _ in range(reps):  # interleaved: A B C A B C ...
        for m in methods:
            rows[m]["times"].append(time_once(mods[m], ids, grad, device))
    base = statistics.median(rows["nn.Embedding"]["times"])
    out = []
    for m in methods:
        r = rows[m]
        r["fwd_bwd_ms"] = statistics.median(r.pop("times"))
        r["vs_nn_embedding"] = r["fwd_bwd_ms"] / base
        out.append(r)
    ref_dyn = next((r for r in out if r["method"] == "reference-dynamic"), None)
    for r in out:
        r["speedup_vs_reference_dynamic"] = ref_dyn["fwd_bwd_ms"] / r["fwd_bwd_ms"] if ref_dyn else None
    return out


def markdown(rows):
    lines = ["| method | V | P | d | ids | fwd+bwd ms (median) | × nn.Embedding | speed-up vs reference-dynamic | "
             "params MiB | buffers MiB | saved for backward MiB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sp = f"{r['speedup_vs_reference_dynamic']:.1f}×" if r["speedup_vs_reference_dynamic"] else "n/a"
        lines.append(f"| {r['method']} | {r['V']:,} | {r['P']} | {r['d']} | {r['ids']} | {r['fwd_bwd_ms']:.1f} | "
                     f"{r['vs_nn_embedding']:.2f} | {sp} | {r['param_mib']:.1f} | {r['buffer_mib']:.1f} | "
                     f"{r['saved_mib']:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="first setting only")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--json", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no_reference", action="store_true", help="skip the reference package even if installed")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    methods = ["nn.Embedding", "codec-table", "codec-dynamic", "codec-cached"]
    try:
        import kronecker_embeddings  # noqa: F401
        if not args.no_reference:
            methods += ["reference-dynamic", "reference-cached"]
    except ImportError:
        print("(kronecker-embeddings not installed: reference rows skipped; pip install --no-deps "
              "kronecker-embeddings==0.1.1)")
    rows = []
    for i, s in enumerate(SETTINGS[:1] if args.quick else SETTINGS):
        use = methods if s.get("dense", True) else methods[:2]
        rows += run_setting(s, use, args.reps if i < 2 else max(3, args.reps // 2), device)
    print(f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, device {device}")
    print(markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
