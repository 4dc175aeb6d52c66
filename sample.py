"""Generate text from any checkpoint train.py wrote (any arm), on CPU or GPU.

    python sample.py runs/quickstart/kronecker_s1337 --prompt "It is a truth universally acknowledged" --num_samples 2
"""
import argparse
import sys

import torch

from checkpoint import CheckpointError, load_checkpoint
from tokenizer import get_encoding

BATCH = 16  # samples generated at once


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="ckpt_*.pt file or a run's out_dir")
    ap.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    ap.add_argument("--num_samples", type=int, default=3)
    ap.add_argument("--max_new_tokens", type=int, default=100)
    ap.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    ap.add_argument("--top_k", type=int, default=200)
    ap.add_argument("--top_p", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    for name, ok, need in [("num_samples", args.num_samples >= 1, ">= 1"),
                           ("max_new_tokens", args.max_new_tokens >= 1, ">= 1"),
                           ("temperature", args.temperature >= 0, ">= 0 (0 = greedy)"),
                           ("top_k", args.top_k >= 0, ">= 0 (0 = off)"),
                           ("top_p", 0 < args.top_p <= 1, "in (0, 1]")]:
        if not ok:
            fail(f"--{name} {getattr(args, name)} is invalid: it must be {need}")
    if not args.prompt:
        fail("--prompt is empty: pass some text to continue, or '<|endoftext|>' to start a new document")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, ValueError) as e:  # no such device here (no CUDA build, no GPU, a typo)
        fail(f"--device {device} cannot be used here ({str(e).splitlines()[0][:100]}); pass --device cpu or auto")
    try:
        model, ckpt = load_checkpoint(args.checkpoint, device=device)
    except CheckpointError as e:
        fail(str(e))
    enc = get_encoding()
    ids = enc.encode(args.prompt, allowed_special={"<|endoftext|>"})
    gen = torch.Generator(device=device).manual_seed(args.seed)
    print(f"# {model.config.input_embedding}, step {ckpt['step']}")
    texts = []
    for start in range(0, args.num_samples, BATCH):  # a bounded batch: memory does not grow with --num_samples
        x = torch.tensor([ids] * min(BATCH, args.num_samples - start), dtype=torch.long, device=device)
        out = model.generate(x, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                             top_p=args.top_p, generator=gen)
        for row in out.tolist():
            texts.append(enc.decode(row))
            print(texts[-1])
            print("-" * 60, flush=True)
    return texts


def fail(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
