"""Generation probe: continuations of prompts that hold a normal, a misspelled or a novel word, per arm.

    python -m probes.generation --checkpoints CKPT [CKPT ...] --out results/.../generation.json

Conditions per item and checkpoint, each decoded greedily and sampled (T 0.7, top-p 0.9, 30 new tokens, seed):
  normal       the word spelled correctly, BPE-tokenized
  misspelled   the word with a 1-2 character typo, BPE-tokenized (several sub-word pieces)
  forced_oov   Kronecker arms: the misspelled/novel word fed as ONE position whose bytes are the word's raw UTF-8
               bytes, through the codec (KroneckerEmbedding.embed_bytes) -- an input no BPE table can represent.
               BPE arms have no such input: they get the word tokenized normally (same as 'misspelled').
Metric: echo rate -- the share of continuations that reproduce the item's word string (as spelled in the
prompt). All completions are saved for reading.
"""

from probes._common import probe_parser, load_models, run_main, write_outputs

import torch

from model import sample_next
from tokenizer import get_encoding

# Austen-flavoured prompts (the CPU models are trained on Austen). {w} is the probed word.
ITEMS = [
    {"word": " Elizabeth", "typo": " Elizabteh", "prompt": "Mr. Darcy bowed to{w}, and{w}"},
    {"word": " Darcy", "typo": " Dracy", "prompt": "Everybody in the room was talking of Mr.{w}. Mr.{w}"},
    {"word": " Knightley", "typo": " Knigthley", "prompt": "Emma thought of Mr.{w} all evening, for Mr.{w}"},
    {"word": " Bingley", "typo": " Bingly", "prompt": "Jane smiled at Mr.{w}, and Mr.{w}"},
    {"word": " Willoughby", "typo": " Willoughbey", "prompt": "Marianne could speak of nothing but{w};{w}"},
    {"word": " Wentworth", "typo": " Wentwroth", "prompt": "Anne had not seen Captain{w} for eight years. Captain{w}"},
    {"word": " Catherine", "typo": " Cathrine", "prompt": "The letter was addressed to Miss{w}, and Miss{w}"},
    {"word": " Pemberley", "typo": " Pemberly", "prompt": "They drove at last into the park of{w}. At{w}"},
    {"word": " Zorvington", "typo": " Zorvington", "prompt": "The family had lately come from{w}, and{w}"},
    {"word": " Mrs. Quillow", "typo": " Mrs. Quillow", "prompt": "Her aunt,{w}, was a very good woman, and{w}"},
]
DECODING = {"greedy": dict(temperature=0.0), "sampled": dict(temperature=0.7, top_p=0.9)}


@torch.no_grad()
def continue_text(model, ids, oov, max_new_tokens, generator, temperature=0.0, top_p=None):
    """Generate from `ids`; positions in `oov` ({pos: bytes}) are fed as one codec vector of those bytes."""
    wte = model.transformer.wte
    fixed = {p: wte.embed_bytes(b) for p, b in oov.items()}
    table = model.input_table()  # frozen weights: the table is built once, not per token
    x = torch.tensor([ids])
    for _ in range(max_new_tokens):
        ctx = x[:, -model.config.block_size:]
        shift = x.size(1) - ctx.size(1)
        tok_emb = None
        if fixed:
            tok_emb = table[ctx]
            for p, e in fixed.items():
                if 0 <= p - shift < ctx.size(1):
                    tok_emb[0, p - shift] = e
        h, table = model.body(ctx, tok_emb, table)
        logits = model.head(h[:, -1, :], table)
        x = torch.cat([x, sample_next(logits, temperature, None, top_p, generator)], dim=1)
    return x[0, len(ids):].tolist()


def build_prompt(enc, item, condition, reads_bytes):
    """(token ids, {position: raw bytes}, the word string an echo must reproduce)."""
    word = item["word"] if condition == "normal" else item["typo"]
    parts = item["prompt"].split("{w}")
    if condition == "forced_oov" and reads_bytes:
        ids, oov = [], {}
        for i, part in enumerate(parts):
            ids += enc.encode_ordinary(part)
            if i < len(parts) - 1:
                oov[len(ids)] = word.encode("utf-8")
                ids.append(0)  # placeholder id; its embedding is replaced by the codec vector of the word
        return ids, oov, word
    return enc.encode_ordinary(item["prompt"].replace("{w}", word)), {}, word


def run(checkpoints, max_new_tokens=30, seed=1337, device="cpu"):
    enc = get_encoding()
    out = {"max_new_tokens": max_new_tokens, "seed": seed, "models": {}}
    for label, model, ckpt, path in load_models(checkpoints, device):
        reads_bytes = model.transformer.wte.reads_bytes
        completions, echo = [], {}
        for cond in ("normal", "misspelled", "forced_oov"):
            for dec, kw in DECODING.items():
                hits = []
                for k, item in enumerate(ITEMS):
                    ids, oov, word = build_prompt(enc, item, cond, reads_bytes)
                    g = torch.Generator().manual_seed(seed + k)
                    new = continue_text(model, ids, oov, max_new_tokens, g, **kw)
                    text = enc.decode(new)
                    hit = word.strip() in text
                    hits.append(hit)
                    completions.append({"condition": cond, "decoding": dec, "word": word,
                                        "prompt": item["prompt"].replace("{w}", f"[{word.strip()}]" if oov else word),
                                        "continuation": text, "echo": hit, "codec_input": bool(oov)})
                echo[f"{cond}/{dec}"] = sum(hits) / len(hits)
        out["models"][label] = {"checkpoint": path, "arm": model.config.input_embedding, "step": ckpt["step"],
                                "echo_rate": echo, "completions": completions}
    return out


def markdown(res):
    keys = [f"{c}/{d}" for c in ("normal", "misspelled", "forced_oov") for d in DECODING]
    L = [f"# Generation probe ({len(ITEMS)} items, {res['max_new_tokens']} new tokens, seed {res['seed']})", "",
         "Echo rate = share of continuations that reproduce the prompt's word. forced_oov feeds the word as one "
         "codec position for Kronecker arms; BPE arms see it tokenized normally.", "",
         "| model | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for label, m in res["models"].items():
        L.append(f"| {label} | " + " | ".join(f"{100 * m['echo_rate'][k]:.0f} %" for k in keys) + " |")
    L += ["", "Sample completions (greedy, misspelled / forced_oov):", ""]
    for label, m in res["models"].items():
        for c in m["completions"]:
            if c["decoding"] == "greedy" and c["condition"] in ("misspelled", "forced_oov") and \
                    c["word"] == ITEMS[0]["typo"]:
                L.append(f"- {label} [{c['condition']}] {c['prompt']!r} → {c['continuation']!r}")
    return "\n".join(L) + "\n"


def main(argv=None):
    ap = probe_parser(__doc__)
    ap.add_argument("--max_new_tokens", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1337)
    args = ap.parse_args(argv)
    res = run(args.checkpoints, args.max_new_tokens, args.seed, args.device)
    write_outputs(res, markdown(res), args.out)
    return res


if __name__ == "__main__":
    run_main(main)
