"""Do the three Kronecker modes agree on this device? fp32 and bf16 autocast, against a float64 CPU reference.

    python scripts/check_modes.py [--device cuda] [--json PATH]

Real GPT-2 vocabulary, P=16, d=768, a batch of 4x1024 ids covering L=0 (padding), L=16 and truncated tokens.
Prints the max relative error of outputs and proj gradients per mode and dtype; exits 1 if fp32 exceeds 1e-5
or bf16 exceeds 2e-2 (bf16 has an 8-bit mantissa).
"""
import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model import KroneckerEmbedding  # noqa: E402
from tokenizer import token_bytes  # noqa: E402

TOL = {"float32": 1e-5, "bfloat16": 2e-2}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--vocab", type=int, default=50304)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    tb = token_bytes(args.vocab)
    torch.manual_seed(0)
    ref = KroneckerEmbedding(args.vocab, args.d, 16, "sparse", tb).double()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, args.vocab, (4 * 1024,), generator=g)
    ids[:64] = torch.arange(args.vocab - 64, args.vocab)  # padding ids (L=0)
    lengths = ref.lengths.long()
    ids[64:128] = (lengths == 16).nonzero()[:64, 0]  # L = P, some truncated
    grad = torch.randn(len(ids), args.d, generator=g, dtype=torch.float64)
    out_ref = ref(ids)
    out_ref.backward(grad)
    rows, ok = [], True
    for mode in ("sparse", "dynamic", "cached"):
        m = KroneckerEmbedding(args.vocab, args.d, 16, mode, tb).to(dev)
        m.proj.data.copy_(ref.proj.data.float())
        for dtype in ("float32", "bfloat16"):
            m.proj.grad = None
            ctx = torch.autocast(dev.type, dtype=torch.bfloat16) if dtype == "bfloat16" else torch.autocast(
                dev.type, enabled=False)
            with ctx:
                out = m(ids.to(dev))
            out.float().backward(grad.float().to(dev))
            e_out = ((out.double().cpu() - out_ref).abs().max() / out_ref.abs().max()).item()
            e_grad = ((m.proj.grad.double().cpu() - ref.proj.grad).abs().max() / ref.proj.grad.abs().max()).item()
            good = max(e_out, e_grad) <= TOL[dtype]
            ok &= good
            rows.append({"mode": mode, "dtype": dtype, "device": str(dev), "out_rel_err": e_out,
                         "grad_rel_err": e_grad, "ok": good})
            print(f"{mode:8s} {dtype:9s} on {dev}: output rel err {e_out:.2e}, proj grad rel err {e_grad:.2e} "
                  f"{'ok' if good else 'FAIL'}")
        del m
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
