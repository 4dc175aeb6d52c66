"""GPT-2 with interchangeable input embeddings. ARMS below is the one registry of arms: each arm is an input
embedding (a module behind the interface in embeddings.py) and a choice of head (tied to that embedding's table,
or a V x d matrix of its own).

This file knows nothing about DDP, data or logging, nor how any embedding makes its table: everything else asks
the model (`config.arm`, `input_table()`, `embedding_norms()`, ...).
"""
import hashlib
import math
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import torch
import torch.nn as nn
from torch.nn import functional as F

from embeddings import InputEmbedding, LowRankEmbedding, TableEmbedding
from head import fused_cross_entropy
from kronecker import KroneckerEmbedding
from tokenizer import N_VOCAB  # GPT-2's real vocabulary; ids above it are padding (vocab_size 50304 = 64-aligned)


@dataclass(frozen=True)
class Arm:
    embedding: Callable  # (GPTConfig, token_bytes or None) -> InputEmbedding
    tied: bool  # output head: the embedding's table (times its head_scale), or a V x d matrix of its own
    about: str = ""
    contrasts: tuple = ()  # arms this one is compared with, besides the baseline (scripts/make_tables.py)
    control: bool = False  # an attribution control: left out of a study unless asked for (compare.sh --arms)


ARMS = {
    "bpe_tied": Arm(TableEmbedding.build, tied=True, about="learned V x d table, head tied to it (GPT-2 / nanoGPT)"),
    "kronecker": Arm(KroneckerEmbedding.build, tied=False,
                     about="fixed byte codec + learned proj, untied head (the paper's model)",
                     contrasts=("bpe_untied", "bpe_scaled", "bpe_lowrank", "kronecker_permuted")),
    "bpe_untied": Arm(TableEmbedding.build, tied=False, about="learned V x d table, untied head (untying alone)"),
    "kronecker_tied": Arm(KroneckerEmbedding.build, tied=True, contrasts=("kronecker",),
                          about="codec + proj; head = the same codec table, scaled (no V x d parameter at all)"),
    "bpe_scaled": Arm(partial(TableEmbedding.build, std=1.0), tied=False, control=True,
                      about="control for input scale: bpe_untied with its table initialised at std 1.0, the "
                            "codec table's initial scale"),
    "bpe_lowrank": Arm(LowRankEmbedding.build, tied=False, control=True,
                       about="control for parameter count: learned V x r times r x d table, r chosen so its "
                             "parameters match the codec's D x d; initialised at the codec's scale"),
    "kronecker_permuted": Arm(partial(KroneckerEmbedding.build, permuted=True), tied=False, control=True,
                              about="control for spelling: the codec with its byte rows permuted across token ids "
                                    "(one fixed permutation, seed 0)"),
}


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    input_embedding: str = "bpe_tied"
    kron_pos_dim: int = 16  # P: bytes per token kept by the codec; D = 256 * P
    # training loss via the chunked head + cross-entropy (no B x T x V logits); same numbers up to rounding
    fused_head: bool = field(default=True, metadata={"resumable": True})

    def __post_init__(self):
        if self.input_embedding not in ARMS:
            raise ValueError(f"unknown input_embedding {self.input_embedding!r}; valid: {', '.join(ARMS)}")
        for k in ("block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}; change one of them")
        if not 1 <= self.kron_pos_dim <= 255:
            raise ValueError(f"kron_pos_dim must be in 1..255, got {self.kron_pos_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.vocab_size < N_VOCAB:
            raise ValueError(f"vocab_size={self.vocab_size} is smaller than GPT-2's {N_VOCAB} tokens; use 50304")

    @property
    def arm(self) -> Arm:
        return ARMS[self.input_embedding]


# ----------------------------------------------------------------------------------------------------------------
# The transformer (GPT-2)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.RESIDUAL_PROJ = True
        self.n_head, self.dropout = config.n_head, config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        # flash attention on GPU; the causal mask is implied, never materialised
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's GELU
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.RESIDUAL_PROJ = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


def stream_seed(base: int, name: str) -> int:
    """A seed for the module called `name`, from one base seed: stable across runs, platforms and arms."""
    return int.from_bytes(hashlib.blake2b(f"{base}/{name}".encode(), digest_size=8).digest(), "little") >> 1



class GPT(nn.Module):
    def __init__(self, config: GPTConfig, token_bytes=None):
        """token_bytes: raw bytes of every id, for embeddings that read them (default: GPT-2's, from tokenizer)."""
        super().__init__()
        self.config = config
        # One draw from the global RNG seeds every module's own stream (see init_weights); it is the first draw,
        # so it depends on the seed only, never on the arm.
        base_seed = int(torch.randint(0, 2 ** 62, (1,)))
        self.transformer = nn.ModuleDict(dict(
            wte=config.arm.embedding(config, token_bytes),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        # tied arms: the head is the input table (built once per forward, shared by both uses)
        self.lm_head = None if config.arm.tied else nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.init_weights(base_seed)

    @torch.no_grad()
    def init_weights(self, base_seed: int):
        """GPT-2 init, each module from its own generator seeded by (base_seed, module name).

        So at one seed every arm starts from the same wpe, blocks and ln_f, and the arms with an untied head from
        the same lm_head: a comparison at equal seed differs only in what the arms differ in (a paired design).
        """
        for name, module in self.named_modules():
            g = torch.Generator().manual_seed(stream_seed(base_seed, name))
            if isinstance(module, nn.Linear):
                std = 0.02
                if getattr(module, "RESIDUAL_PROJ", False):
                    std = 0.02 / math.sqrt(2 * self.config.n_layer)  # GPT-2: residual branches scaled by depth
                module.weight.copy_(torch.randn(module.weight.shape, generator=g) * std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.Embedding):
                module.weight.copy_(torch.randn(module.weight.shape, generator=g) * 0.02)
            elif isinstance(module, InputEmbedding):
                module.reset_parameters(generator=g)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()

    # -- forward ---------------------------------------------------------------------------------------------

    def forward(self, idx, targets=None):
        """idx (B, T) -> (logits, loss): with targets, the mean cross-entropy and the (B, T, V) logits, or None
        for the logits when the fused head computed the loss; without, the last position's (B, 1, V) logits."""
        h, table = self.body(idx)
        if targets is None:
            return self.head(h[:, [-1], :], table), None
        if self.config.fused_head:
            h = self.head_input(h)
            return None, fused_cross_entropy(h.reshape(-1, h.size(-1)), self.head_weight(table), targets.reshape(-1))
        logits = self.head(h, table)
        flat = logits.view(-1, logits.size(-1))
        flat = flat.to(torch.promote_types(flat.dtype, torch.float32))  # bf16 logits: loss in fp32
        return logits, F.cross_entropy(flat, targets.reshape(-1), ignore_index=-1)

    def body(self, idx, tok_emb=None, table=None):
        """Token + position embeddings through the blocks and ln_f: (hidden (B, T, d), the input table).

        tok_emb (B, T, d), optional: use these token embeddings instead of looking idx up (forced-OOV probes).
        table: a precomputed input_table() to reuse (inference with frozen weights: build it once).
        """
        B, T = idx.shape
        assert T <= self.config.block_size, f"sequence of {T} tokens > block_size {self.config.block_size}"
        if table is None:
            table = self.input_table()
        if tok_emb is None:
            tok_emb = F.embedding(idx, table)
        pos = torch.arange(T, device=idx.device)
        x = self.transformer.drop(tok_emb + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        return self.transformer.ln_f(x), table

    def head_input(self, h):
        """What the head multiplies: h, scaled by the embedding's head_scale when the head is its table.
        (Scaling h, not the B x T x V logits, keeps it off the largest tensor of the step.)"""
        scale = self.transformer.wte.head_scale if self.lm_head is None else 1.0
        return h * scale if scale != 1.0 else h

    def head_weight(self, table=None):
        """The (V, d) output matrix: lm_head's own, or (tied) the input table."""
        if self.lm_head is not None:
            return self.lm_head.weight
        return table if table is not None else self.input_table()

    def head(self, h, table=None):
        """Hidden states -> logits over the vocabulary."""
        return F.linear(self.head_input(h), self.head_weight(table))

    def input_table(self) -> torch.Tensor:
        """The (V, d) input embedding of every id."""
        return self.transformer.wte.table()

    # -- accounting --------------------------------------------------------------------------------------------

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def input_params(self) -> int:
        """Trainable parameters of the input side."""
        return self.transformer.wte.learned_params()

    @torch.no_grad()
    def embedding_norms(self) -> dict:
        """Mean L2 norms: rows of the learned input matrix, effective input embeddings over the real vocabulary,
        and output-head rows."""
        table = self.input_table().float()
        head = self.head_weight(table).float()
        return {"norm/input_row": self.transformer.wte.learned_row_norm().item(),
                "norm/input_emb": table[:N_VOCAB].norm(dim=1).mean().item(),
                "norm/head_row": head.norm(dim=1).mean().item()}

    def estimate_flops_per_token(self, tokens_per_forward: int | None = None) -> float:
        """Training FLOPs per token (forward + backward) of what this arm really computes: 6 * (matmul params)
        for the weights, 12 * n_layer * d * T for attention scores, and the embedding's table (built once per
        forward: its cost spread over the forward's tokens; a stored table is free)."""
        cfg = self.config
        d, V, T = cfg.n_embd, cfg.vocab_size, cfg.block_size
        blocks = sum(p.numel() for p in self.transformer.h.parameters())
        flops = 6 * (blocks + V * d) + 12 * cfg.n_layer * d * T  # every arm has a V x d output matmul
        return float(flops + self.transformer.wte.table_flops() / (tokens_per_forward or T))

    # -- optimizer ---------------------------------------------------------------------------------------------

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type, eps=1e-8):
        """AdamW with weight decay on >= 2-D tensors only (matrices and embeddings, proj included)."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        extra = {"fused": True} if device_type == "cuda" else {}
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=eps, **extra)

    # -- generation --------------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None):
        """Append max_new_tokens to idx (B, T). temperature 0 = greedy. No KV cache: simple and exact."""
        for _ in range(max_new_tokens):
            ctx = idx[:, -self.config.block_size:]
            logits, _ = self(ctx)
            next_id = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)
            idx = torch.cat((idx, next_id), dim=1)
        return idx


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """(B, V) logits -> (B, 1) ids: greedy at temperature 0, else top-k / nucleus sampling."""
    logits = logits[:, :N_VOCAB].float()  # never emit padding ids
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop = cum - torch.softmax(sorted_logits, dim=-1) > top_p  # keep the smallest set with mass >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)
