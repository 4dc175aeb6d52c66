"""Do the codec's three forms agree on this device? fp32 and bf16 autocast, against a float64 CPU reference.

    python -m scripts.check_modes [--device cuda] [--json PATH]

Forms: 'table' (the training path: the V x d table through the sparse operator, then a lookup), 'dynamic' and
'cached' (the paper's runtime variants, kronecker.DenseCodec). Reference: Eq. 1 written out (dynamic) in float64
on the CPU. Real GPT-2 vocabulary, P=16, d=768, a batch of 4x1024 ids covering L=0 (padding), L=16 and truncated
tokens. Prints the max relative error of outputs and proj gradients per form, in fp32 and under bf16 autocast;
exits 1 if fp32 exceeds 1e-5 or bf16 autocast exceeds 2e-2. The codec switches autocast off, so under bf16
autocast its output stays fp32 and its error at fp32 level, like the BPE arms' table lookup.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

from kronecker import DenseCodec, KroneckerEmbedding
from tokenizer import token_bytes

TOL = {"float32": 1e-5, "bfloat16": 2e-2}


def run(device, vocab=50304, d=768):
    """[{mode, dtype, out_rel_err, grad_rel_err, ok}] for every mode and dtype, and whether all are ok."""
    dev = torch.device(device)
    tb = token_bytes(vocab)
    torch.manual_seed(0)
    emb = KroneckerEmbedding(vocab, d, 16, tb).double()
    ref = DenseCodec(emb, "dynamic")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (4 * 1024,), generator=g)
    ids[:64] = torch.arange(vocab - 64, vocab)  # padding ids (L=0)
    ids[64:128] = (emb.lengths.long() == 16).nonzero()[:64, 0]  # L = P, some truncated
    grad = torch.randn(len(ids), d, generator=g, dtype=torch.float64)
    out_ref = ref(ids)
    out_ref.backward(grad)
    rows, ok = [], True
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here: TF32 (10-bit mantissa) would err ~5e-4
    try:
        for mode in ("table", "dynamic", "cached"):
            ok &= _check_mode(mode, dev, tb, ref, ids, grad, out_ref, rows)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return rows, ok


def _check_mode(mode, dev, tb, ref, ids, grad, out_ref, rows):
    ok = True
    emb = KroneckerEmbedding(len(tb), ref.n_embd, 16, tb)
    emb.proj.data.copy_(ref.proj.data.float())
    m = (emb if mode == "table" else DenseCodec(emb, mode)).to(dev)
    for dtype in ("float32", "bfloat16"):
        m.proj.grad = None
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            out = m(ids.to(dev))
        out.float().backward(grad.float().to(dev))
        e_out = ((out.double().cpu() - out_ref).abs().max() / out_ref.abs().max()).item()
        e_grad = ((m.proj.grad.double().cpu() - ref.proj.grad).abs().max() / ref.proj.grad.abs().max()).item()
        good = max(e_out, e_grad) <= TOL[dtype]
        ok &= good
        rows.append({"mode": mode, "dtype": dtype, "device": str(dev), "out_dtype": str(out.dtype),
                     "out_rel_err": e_out, "grad_rel_err": e_grad, "ok": good})
        print(f"{mode:8s} {dtype:9s} autocast on {dev}: output {str(out.dtype).replace('torch.', '')}, "
              f"rel err {e_out:.2e}, proj grad rel err {e_grad:.2e} {'ok' if good else 'FAIL'}", flush=True)
    return ok


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--vocab", type=int, default=50304)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rows, ok = run(args.device, args.vocab, args.d)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
