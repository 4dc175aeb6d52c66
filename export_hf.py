"""Export any arm's checkpoint as a standard Hugging Face GPT2LMHeadModel folder (transformers, lm-eval, vLLM, Hub).

    python export_hf.py runs/cpu_tiny/kronecker_s1337 --out exports/kronecker_s1337 [--dtype bfloat16] [--check]

At inference every input embedding is a fixed V x d table (for the codec: codec(token) @ proj for every id,
padding ids included as zero rows), so every arm becomes a plain GPT-2. What is written: wte = that table; the
head tied to it (tie_word_embeddings) when the arm's head is the table itself, else lm_head = the arm's own head
matrix, or the table times the embedding's head scale (a tied codec head applies 1/sqrt(d)).
The padded vocabulary (50,304) is kept so logits match position for position; generation_config.json suppresses
the padding ids, as sample.py never emits them. The tokenizer files (vocab.json, merges.txt, tokenizer.json, ...)
are built offline from data/gpt2.tiktoken. nanokron.json records the arm, the codec size, the source checkpoint
and step, the tokenizer's sha256 and the commit: the compact form (byte table + proj) is the checkpoint itself.

--check reloads the folder with transformers and prints the largest logit difference from nanokron's model.
Needs `pip install -r requirements-hf.txt`; training never imports transformers.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

from checkpoint import load_checkpoint, resolve_checkpoint
from tokenizer import EOT, N_VOCAB, RANKS_PATH, RANKS_SHA256, get_encoding
from util import UserError, git_commit, make_dir

SPECIAL = "<|endoftext|>"


# -- the tokenizer, from the ranks file ----------------------------------------------------------------------------

def byte_to_unicode() -> dict:
    """GPT-2's reversible byte -> printable character map: printable Latin-1 bytes stand for themselves, the other
    68 bytes take the code points 256, 257, ... in byte order (so no token string holds whitespace or controls)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def merge_of(token: bytes, ranks: dict) -> tuple:
    """The pair of tokens whose merge made `token`: byte-pair encode its bytes with only the merges ranked below it;
    what is left are exactly two pieces."""
    parts, limit = [bytes([b]) for b in token], ranks[token]
    while len(parts) > 2:
        best = min(((ranks.get(parts[i] + parts[i + 1], limit), i) for i in range(len(parts) - 1)))
        if best[0] >= limit:
            break
        i = best[1]
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2:
        raise ValueError(f"token {token!r} (rank {limit}) is not one merge of two lower-ranked tokens")
    return parts[0], parts[1]


def write_tokenizer(out: Path, max_length: int):
    enc = get_encoding()
    ranks = enc._mergeable_ranks  # bytes -> id, the same dict the ranks file holds
    u = byte_to_unicode()

    def text(b: bytes) -> str:
        return "".join(u[x] for x in b)
    vocab = {text(b): i for b, i in ranks.items()}
    vocab[SPECIAL] = EOT
    merges = [merge_of(b, ranks) for b, i in sorted(ranks.items(), key=lambda kv: kv[1]) if len(b) > 1]
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{text(a)} {text(b)}\n" for a, b in merges))
    special = {"bos_token": SPECIAL, "eos_token": SPECIAL, "unk_token": SPECIAL}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=1))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GPT2Tokenizer", "model_max_length": max_length, "add_prefix_space": False,
         "errors": "replace", **special}, indent=1))
    # tokenizer.json, the form transformers loads fastest: the same vocabulary and merges, GPT-2's byte-level
    # pre-tokenizer (its regex is r50k's) and decoder, <|endoftext|> as the one special token
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[(text(a), text(b)) for a, b in merges],
                              continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(SPECIAL, special=True, normalized=False)])
    tk.save(str(out / "tokenizer.json"))


# -- the model -----------------------------------------------------------------------------------------------------

@torch.no_grad()
def hf_state_dict(model) -> dict:
    """nanokron's weights under GPT2LMHeadModel's names; Linear weights transposed into Conv1D's (in, out)."""
    cfg, t = model.config, model.transformer
    d, table = cfg.n_embd, model.input_table().float()
    out = {"transformer.wte.weight": table, "transformer.wpe.weight": t.wpe.weight,
           "transformer.ln_f.weight": t.ln_f.weight, "transformer.ln_f.bias": _bias(t.ln_f, d)}
    for i, block in enumerate(t.h):
        p = f"transformer.h.{i}."
        for name, lin in (("attn.c_attn", block.attn.c_attn), ("attn.c_proj", block.attn.c_proj),
                          ("mlp.c_fc", block.mlp.c_fc), ("mlp.c_proj", block.mlp.c_proj)):
            out[p + name + ".weight"] = lin.weight.t()
            out[p + name + ".bias"] = _bias(lin, lin.out_features)
        for name, ln in (("ln_1", block.ln_1), ("ln_2", block.ln_2)):
            out[p + name + ".weight"], out[p + name + ".bias"] = ln.weight, _bias(ln, d)
    if not head_is_table(model):  # otherwise the head *is* wte: transformers ties it on load
        # head_input() is linear in h, so a scale the head applies to h moves into the weight
        out["lm_head.weight"] = model.head(torch.eye(d), table).t() if model.lm_head is None else model.lm_head.weight
    return {k: v.detach().float().contiguous().clone() for k, v in out.items()}


def head_is_table(model) -> bool:
    """Is the output matrix exactly the input table (a tied head with no scale)?"""
    return model.lm_head is None and model.transformer.wte.head_scale == 1.0


def _bias(module, n):
    return module.bias if module.bias is not None else torch.zeros(n)


def export(ckpt_path, out_dir, dtype="float32"):
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel
    model, ckpt = load_checkpoint(ckpt_path)
    cfg = model.config
    out = make_dir(out_dir)
    hf_cfg = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd,
                        n_layer=cfg.n_layer, n_head=cfg.n_head, n_inner=4 * cfg.n_embd,
                        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        layer_norm_epsilon=1e-5, bos_token_id=EOT, eos_token_id=EOT,
                        tie_word_embeddings=head_is_table(model), architectures=["GPT2LMHeadModel"])
    hf = GPT2LMHeadModel(hf_cfg)
    missing, unexpected = hf.load_state_dict(hf_state_dict(model), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and hf_cfg.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"weights do not map onto GPT2LMHeadModel: missing {missing}, unexpected {unexpected}")
    hf.to(getattr(torch, dtype)).save_pretrained(out)
    padding = list(range(N_VOCAB, cfg.vocab_size))
    GenerationConfig(bos_token_id=EOT, eos_token_id=EOT, pad_token_id=EOT,
                     suppress_tokens=padding or None).save_pretrained(out)
    write_tokenizer(out, cfg.block_size)
    # (the checkpoint as run folder/file name: an export is meant to be shared, a full path names the machine)
    meta = {"arm": cfg.input_embedding, "tied": cfg.arm.tied, **model.transformer.wte.describe(),
            "vocab_size": cfg.vocab_size,
            "real_vocab": N_VOCAB, "source_checkpoint": f"{Path(ckpt_path).parent.name}/{Path(ckpt_path).name}",
            "experiment": Path(ckpt_path).resolve().parent.parent.name, "run": Path(ckpt_path).parent.name, "step": ckpt["step"],
            "seed": ckpt.get("config", {}).get("seed"), "tokenizer": RANKS_PATH.name,
            "tokenizer_sha256": RANKS_SHA256, "nanokron_commit": git_commit(), "dtype": dtype,
            "model_args": ckpt["model_args"]}
    (out / "nanokron.json").write_text(json.dumps(meta, indent=1))
    return model, out


@torch.no_grad()
def max_logit_diff(model, out_dir, ids) -> float:
    """Largest |logit| difference between nanokron's model and the exported folder, on one sequence of ids (fp32)."""
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(out_dir).float().eval()
    x = torch.tensor([ids[: model.config.block_size]])
    h, table = model.body(x)
    ours = model.head(h, table)
    return (hf(x).logits - ours).abs().max().item()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="a ckpt_*.pt file or a run folder (its newest checkpoint)")
    ap.add_argument("--out", required=True, help="folder to write (created)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--check", action="store_true", help="reload with transformers, print the max logit difference")
    args = ap.parse_args(argv)
    try:
        path = resolve_checkpoint(args.checkpoint)
        model, out = export(path, args.out, args.dtype)
    except UserError as e:  # a bad checkpoint, an --out that cannot be written
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except ImportError as e:
        print(f"error: exporting needs transformers ({e.name} is missing): pip install -r requirements-hf.txt",
              file=sys.stderr)
        sys.exit(2)
    print(f"wrote {out} ({model.config.input_embedding}, step {json.loads((out / 'nanokron.json').read_text())['step']},"
          f" {args.dtype})")
    if args.check:
        text = "It is a truth universally acknowledged, that a single man in possession of a good fortune, " * 8
        diff = max_logit_diff(model, out, get_encoding().encode_ordinary(text))
        print(f"check: max |logit difference| vs nanokron = {diff:.3g} ({'ok' if diff <= 1e-3 else 'LARGE'})")


if __name__ == "__main__":
    main()
