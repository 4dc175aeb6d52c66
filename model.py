"""GPT-2 with interchangeable input embeddings (the `input_embedding` arm); the arms are listed in ARMS below.

The Kronecker codec (paper Eq. 1): a token with raw bytes b_1..b_L (L <= P) becomes the sparse vector
s = (1/sqrt L) * sum_p e[b_p * P + p] in R^D (D = 256 P), z-normalised over its D entries and projected by a learned
matrix. Because s has exactly L equal nonzeros, its mean and std are closed-form, and the projection is a weighted
sum of L rows of `proj` minus a rank-1 correction -- see KroneckerEmbedding.

This file knows nothing about DDP, data or logging. It is the only file that knows what each arm is: everything
else asks the model (`arm`, `input_table()`, `embedding_norms()`, ...).
"""
import hashlib
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

from tokenizer import N_VOCAB  # GPT-2's real vocabulary; ids above it are padding (vocab_size 50304 = 64-aligned)


@dataclass(frozen=True)
class Arm:
    """What an input-embedding arm is made of. Two choices span the experiment's 2 x 2 design."""
    codec: bool  # input side: the fixed byte codec + a learned proj (D x d), or a learned V x d table
    tied: bool   # output head: the input table itself, or a V x d matrix of its own
    about: str = ""


ARMS = {
    "bpe_tied": Arm(codec=False, tied=True, about="nn.Embedding(V, d), output head tied to it (GPT-2 / nanoGPT)"),
    "kronecker": Arm(codec=True, tied=False, about="fixed byte codec + learned proj, untied head (the paper's model)"),
    "bpe_untied": Arm(codec=False, tied=False, about="nn.Embedding(V, d), untied head (control: untying alone)"),
    "kronecker_tied": Arm(codec=True, tied=True,
                          about="codec + proj; head = the same codec table, scaled (no V x d parameter at all)"),
}
KRON_MODES = ("sparse", "dynamic", "cached")


def comparisons(arms) -> list:
    """The paired comparisons a study reports, as (arm, reference): every arm against the baseline (the first arm
    of ARMS), then every other pair that differs in exactly one factor -- the reference being the arm without the
    codec, or (same input side) the one with a head of its own."""
    arms = [a for a in ARMS if a in arms] + [a for a in arms if a not in ARMS]
    base = next(iter(ARMS))
    out = [(a, base) for a in arms if a != base] if base in arms else []
    for i, a in enumerate(arms):
        for b in arms[i + 1:]:
            if base in (a, b) or a not in ARMS or b not in ARMS:
                continue
            x, y = ARMS[a], ARMS[b]
            if (x.codec != y.codec) + (x.tied != y.tied) != 1:
                continue
            ref = (b if x.codec else a) if x.codec != y.codec else (b if not y.tied else a)
            out.append((a if ref == b else b, ref))
    return out


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
    kron_mode: str = "sparse"
    fused_head: bool = True  # training loss via the chunked head + cross-entropy (no B x T x V logits); same numbers

    def __post_init__(self):
        if self.input_embedding not in ARMS:
            raise ValueError(f"unknown input_embedding {self.input_embedding!r}; valid: {', '.join(ARMS)}")
        if self.kron_mode not in KRON_MODES:
            raise ValueError(f"unknown kron_mode {self.kron_mode!r}; valid: {', '.join(KRON_MODES)}")
        for k in ("block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}; change one of them")
        if not 1 <= self.kron_pos_dim <= 255:
            raise ValueError(f"kron_pos_dim must be in 1..255, got {self.kron_pos_dim}")
        if self.vocab_size < N_VOCAB:
            raise ValueError(f"vocab_size={self.vocab_size} is smaller than GPT-2's {N_VOCAB} tokens; use 50304")

    @property
    def arm(self) -> Arm:
        return ARMS[self.input_embedding]


# ----------------------------------------------------------------------------------------------------------------
# The Kronecker codec


def codec_bytes(raw: bytes, P: int) -> bytes:
    """The bytes the codec sees for one token: at most P, cut on a character boundary when the token is UTF-8.

    Tokens that are not valid UTF-8 on their own (byte fragments of multi-byte characters) are cut plainly.
    """
    if len(raw) <= P:
        return raw
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw[:P]
    cut = P
    while cut > 0 and (raw[cut] & 0xC0) == 0x80:  # raw[cut] is a continuation byte: the char straddles the cut
        cut -= 1
    return raw[:cut]


def byte_rows(raws, P: int):
    """Codec input of many byte strings: ((N, P) uint8 bytes, zero-padded; (N,) uint8 lengths L <= P).
    Lengths are uint8 (P <= 255) because gloo broadcasts uint8 but not int16."""
    cut = [codec_bytes(r, P) for r in raws]
    table = torch.zeros(len(cut), P, dtype=torch.uint8)
    lengths = torch.tensor([len(b) for b in cut], dtype=torch.uint8)
    for i, b in enumerate(cut):
        if b:
            table[i, :len(b)] = torch.frombuffer(bytearray(b), dtype=torch.uint8)
    return table, lengths


def codec_dense(byte_table: torch.Tensor, lengths: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """Eq. 1 written out: (N, P) bytes + (N,) lengths -> (N, D) z-normalised codec vectors.

    Used by the `dynamic` and `cached` modes (the paper's runtime variants) and by forced-OOV probes.
    """
    N, P = byte_table.shape
    D = 256 * P
    pos = torch.arange(P, device=byte_table.device)
    real = pos[None, :] < lengths[:, None]                               # (N, P) slots that hold a byte
    flat = byte_table.long() * P + pos[None, :]                          # index byte*P + position
    val = real.to(dtype) / lengths.clamp(min=1).to(dtype).sqrt()[:, None]  # 1/sqrt(L) on real slots, 0 elsewhere
    s = torch.zeros(N, D, dtype=dtype, device=byte_table.device).scatter_add_(1, flat, val)
    mu = s.mean(dim=1, keepdim=True)
    sd = s.std(dim=1, keepdim=True)  # unbiased, as in the paper
    return (s - mu) / (sd + 1e-6)


class KroneckerEmbedding(nn.Module):
    """Fixed byte codec + one learned matrix `proj` (D x d). Replaces nn.Embedding(V, d).

    `proj` is stored as (D, d) -- the transpose of the reference package's Linear(D, d).weight -- so that the
    sparse path reads contiguous rows. Column convention of the codec: index = byte * P + position.

    Modes (same outputs and gradients):
      sparse   emb = (a/s') * sum_p proj[b_p*P + p]  -  (mu/s') * proj.sum(0)     O(L d) per token, no V x D table
      dynamic  bytes -> dense codec (tokens x D) -> matmul                        the paper's on-the-fly variant
      cached   precomputed V x D codec table -> lookup -> matmul                  the paper's cached variant
    with, for L >= 1 nonzeros of value a = 1/sqrt(L):  mu = sqrt(L)/D,  s^2 = (1 - L/D)/(D - 1),  s' = s + 1e-6.
    """

    def __init__(self, vocab_size: int, n_embd: int, pos_dim: int, mode: str, token_bytes):
        super().__init__()
        assert mode in KRON_MODES
        self.vocab_size, self.n_embd, self.P, self.mode = vocab_size, n_embd, pos_dim, mode
        self.D = D = 256 * pos_dim
        P = pos_dim

        table, lengths = byte_rows([token_bytes[i] if i < len(token_bytes) else b"" for i in range(vocab_size)], P)
        self.register_buffer("byte_table", table)
        self.register_buffer("lengths", lengths)

        # Per-token weights of the exact sparse form, computed once in float64.
        L = lengths.double()
        sigma = ((1 - L / D) / (D - 1)).sqrt() + 1e-6
        has = L > 0
        a_w = torch.where(has, (1 / L.clamp(min=1).sqrt()) / sigma, torch.zeros_like(L))
        mu_w = torch.where(has, (L.sqrt() / D) / sigma, torch.zeros_like(L))
        # kept in float64: cast to proj's dtype at use, so a float64 model is exact to ~1e-16
        self.register_buffer("bag_weight", a_w, persistent=False)
        self.register_buffer("mean_weight", mu_w, persistent=False)

        # embedding_bag slots: empty ones point at `pad_row`, a codec row no real token uses, which embedding_bag
        # skips (padding_idx) in forward and backward. Fixed (N, P) shapes keep the path free of host syncs and
        # graph breaks; measured as fast as ragged offsets on CPU (14 vs 13 ms, V=50k, P=16). Slots are computed
        # per call from the byte table rather than stored: a V x P int64 buffer would be 8x the bytes themselves.
        real = torch.arange(P)[None, :] < lengths[:, None]
        used = torch.zeros(D, dtype=torch.bool)
        used[(table.long() * P + torch.arange(P))[real]] = True
        free = (~used).nonzero()
        self.pad_row = int(free[0]) if len(free) else None  # None -> ragged fallback (every codec row is used)

        if mode == "cached":
            self.register_buffer("codec_table", codec_dense(table, lengths), persistent=False)
            self.table_dtype = torch.float32

        self.proj = nn.Parameter(torch.empty(D, n_embd))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator=None):
        # N(0, 1/D): keeps emb(t) ~ unit scale since x(t) is z-normalised. GPT-2's 0.02 init must not touch it.
        self.proj.copy_(torch.randn(self.proj.shape, generator=generator) / math.sqrt(self.D))

    def extra_repr(self):
        return f"vocab={self.vocab_size}, P={self.P}, D={self.D}, d={self.n_embd}, mode={self.mode}"

    def _sparse(self, ids: torch.Tensor) -> torch.Tensor:
        w = self.bag_weight[ids].to(self.proj.dtype)
        pos = torch.arange(self.P, device=ids.device)
        L = self.lengths[ids].long()
        real = pos[None, :] < L[:, None]
        slots = self.byte_table[ids].long() * self.P + pos  # codec row of each (byte, position)
        if self.pad_row is not None:
            out = F.embedding_bag(slots.masked_fill(~real, self.pad_row), self.proj, mode="sum",
                                  padding_idx=self.pad_row,
                                  per_sample_weights=w[:, None].expand(-1, self.P).contiguous())
        else:  # ragged: only the L real slots of each token
            out = F.embedding_bag(slots[real], self.proj, torch.cumsum(L, 0) - L, mode="sum",
                                  per_sample_weights=w[:, None].expand(-1, self.P)[real])
        # rank-1 correction for the mean, as one fused outer-product update (its backward is a single GEMV);
        # proj.sum(0) costs D*d once per call, not per token
        return torch.addr(out, self.mean_weight[ids].to(out.dtype), self.proj.sum(0).to(out.dtype), alpha=-1)

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """(N,) ids -> (N, d) embeddings in the configured mode, always in proj's dtype.

        Autocast is switched off here: it would round the dense modes' matmul (both devices) and the sparse
        mode's rank-1 update (CUDA lists addr, CPU does not) to bf16, while the BPE arms' table lookup stays
        fp32. The codec costs O(L d) per token, so full precision is free; all arms then enter the blocks alike.
        """
        with torch.autocast(ids.device.type, enabled=False):
            return self._embed_ids(ids)

    def _embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        if self.mode == "sparse":
            return self._sparse(ids)
        if self.mode == "dynamic":
            x = codec_dense(self.byte_table[ids], self.lengths[ids], dtype=self.proj.dtype)
        else:
            if self.table_dtype != self.proj.dtype:  # computed in proj's dtype, never just cast
                self.codec_table = codec_dense(self.byte_table, self.lengths, dtype=self.proj.dtype)
                self.table_dtype = self.proj.dtype
            x = self.codec_table[ids]
        return x @ self.proj

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.embed_ids(idx.reshape(-1)).view(*idx.shape, self.n_embd)

    def full_table(self) -> torch.Tensor:
        """Effective embedding of every id, (V, d): the input table the codec implies (and the tied head)."""
        return self.embed_ids(torch.arange(self.vocab_size, device=self.proj.device))

    def embed_bytes(self, raw: bytes) -> torch.Tensor:
        """Embedding of an arbitrary byte string as ONE position (forced out-of-vocabulary input), (d,)."""
        table, lengths = byte_rows([raw], self.P)
        x = codec_dense(table.to(self.proj.device), lengths.to(self.proj.device), dtype=self.proj.dtype)
        return (x @ self.proj)[0]


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


# The fused head's chunk: the largest power of two of tokens whose fp32 logits fit this budget. On a CPU, chunks
# that stay near the caches are fastest (128 tokens at V = 50,304, see results/bench/); on a GPU a chunk must be
# big enough to keep the matmul efficient (2,048 tokens = 8 chunks per 16 x 1024 micro-batch).
HEAD_CHUNK_BYTES = {"cpu": 32 * 2 ** 20, "cuda": 512 * 2 ** 20}


def head_chunk_size(vocab_size: int, device_type: str) -> int:
    budget = HEAD_CHUNK_BYTES.get(device_type, HEAD_CHUNK_BYTES["cuda"])
    return 2 ** max(4, int(math.log2(budget / (4 * vocab_size))))


class FusedLinearCrossEntropy(torch.autograd.Function):
    """mean_i CE(h_i W^T, t_i) over the rows with t_i != -1, computed chunk by chunk: never more than one chunk
    of logits alive, and no separate log_softmax pass.

    For each chunk the forward computes logits (in `dtype`, the autocast precision), their softmax and loss in
    fp32, and right away the gradients: dlogits = softmax - onehot, dh = dlogits W, dW += dlogits^T h (fp32
    accumulator). The backward only scales them by the incoming gradient. Same numbers as
    F.cross_entropy(F.linear(h, W)) up to float rounding; the price is that dh and dW (the size of h and W) are
    kept from forward to backward, which is far less than the B x T x V logits.
    """

    @staticmethod
    def forward(ctx, h, weight, targets, chunk: int, dtype):
        acc = torch.promote_types(dtype, torch.float32)  # softmax, loss and dW accumulate in at least fp32
        with torch.autocast(h.device.type, enabled=False):
            hc, wc = h.to(dtype), weight.to(dtype)
            keep = (targets != -1).to(acc)
            n = keep.sum().clamp(min=1.0)
            safe = targets.clamp(min=0)[:, None]
            loss = torch.zeros((), dtype=acc, device=h.device)
            dh = torch.empty_like(h)
            dw = torch.zeros(weight.shape, dtype=acc, device=weight.device)
            for s in range(0, h.shape[0], chunk):
                # one softmax kernel instead of logsumexp + subtract + exp: ~1.6x faster per chunk on a CPU
                p = torch.softmax((hc[s:s + chunk] @ wc.t()).to(acc), dim=1)
                k, t = keep[s:s + chunk], safe[s:s + chunk]
                # -log p_target; clamped at the smallest normal float so an absurd logit gap (> 87 nats in fp32,
                # a diverged run) gives a huge finite loss rather than inf
                loss = loss - (p.gather(1, t)[:, 0].clamp_min(torch.finfo(acc).tiny).log() * k).sum()
                p.scatter_add_(1, t, -k[:, None])  # softmax - onehot (ignored rows: nothing)
                p = p.mul_((k / n)[:, None]).to(dtype)  # d(mean loss) / d logits
                dh[s:s + chunk] = p @ wc
                if dtype == acc:
                    dw.addmm_(p.t(), hc[s:s + chunk])
                else:
                    dw += (p.t() @ hc[s:s + chunk]).to(acc)
        ctx.save_for_backward(dh, dw.to(weight.dtype))
        return loss / n

    @staticmethod
    def backward(ctx, grad_loss):
        dh, dw = ctx.saved_tensors
        return dh * grad_loss, dw * grad_loss, None, None, None


def chunked_cross_entropy(h, weight, targets, chunk: int, dtype):
    """The fused head's loss without gradients (evaluation): same chunks, same numbers."""
    acc = torch.promote_types(dtype, torch.float32)
    total = torch.zeros((), dtype=acc, device=h.device)
    with torch.autocast(h.device.type, enabled=False):
        hc, wc = h.to(dtype), weight.to(dtype)
        for s in range(0, h.shape[0], chunk):
            total = total + F.cross_entropy((hc[s:s + chunk] @ wc.t()).to(acc), targets[s:s + chunk],
                                            ignore_index=-1, reduction="sum")
    return total / (targets != -1).sum().clamp(min=1)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig, token_bytes=None):
        super().__init__()
        self.config = config
        # One draw from the global RNG seeds every module's own stream (see init_weights); it is the first draw,
        # so it depends on the seed only, never on the arm.
        base_seed = int(torch.randint(0, 2 ** 62, (1,)))
        if config.arm.codec:
            if token_bytes is None:
                from tokenizer import token_bytes as gpt2_token_bytes
                token_bytes = gpt2_token_bytes(config.vocab_size)
            wte = KroneckerEmbedding(config.vocab_size, config.n_embd, config.kron_pos_dim, config.kron_mode,
                                     token_bytes)
        else:
            wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.transformer = nn.ModuleDict(dict(
            wte=wte,
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = None  # tied arms: the head is the input table (for the codec: built per forward)
        if not config.arm.tied:
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
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
            elif isinstance(module, KroneckerEmbedding):
                module.reset_parameters(generator=g)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()

    # -- forward ---------------------------------------------------------------------------------------------

    def forward(self, idx, targets=None):
        """idx (B, T) -> (logits, loss).

        With targets: the mean cross-entropy, and logits of every position -- unless the fused head computed the
        loss, which never forms them (logits None). Without targets: logits of the last position only (what
        generation needs).
        """
        h, table = self.body(idx)
        if targets is None:
            return self.head(h[:, [-1], :], table), None
        if self.config.fused_head:
            h, weight = self.head_input(h), self.head_weight(table)
            dev = h.device.type
            dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else h.dtype
            args = (h.reshape(-1, h.size(-1)), weight, targets.reshape(-1), head_chunk_size(weight.size(0), dev),
                    dtype)
            if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
                return None, FusedLinearCrossEntropy.apply(*args)
            return None, chunked_cross_entropy(*args)
        logits = self.head(h, table)
        flat = logits.view(-1, logits.size(-1))
        flat = flat.to(torch.promote_types(flat.dtype, torch.float32))  # bf16 logits: loss in fp32
        return logits, F.cross_entropy(flat, targets.reshape(-1), ignore_index=-1)

    def body(self, idx, tok_emb=None, table=None):
        """Token + position embeddings through the blocks and ln_f: (hidden (B, T, d), codec head table or None).

        tok_emb (B, T, d), optional: use these token embeddings instead of looking idx up (forced-OOV probes).
        table: a tied codec arm's precomputed input_table(), to reuse (inference with frozen weights).
        """
        B, T = idx.shape
        assert T <= self.config.block_size, f"sequence of {T} tokens > block_size {self.config.block_size}"
        # A tied codec arm builds one table per forward, shared by the input lookup and the output head: gradients
        # from both uses meet in proj. Cost ~ V * L_mean * d, small next to the step.
        if table is None:
            table = self.shared_table()
        if tok_emb is None:
            tok_emb = F.embedding(idx, table) if table is not None else self.transformer.wte(idx)
        pos = torch.arange(T, device=idx.device)
        x = self.transformer.drop(tok_emb + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        return self.transformer.ln_f(x), table

    def head_input(self, h):
        """What the head multiplies. A head tied to the codec table has rows of norm ~sqrt(d) (z-normalised codec,
        N(0, 1/D) proj), so h E^T would start with logits of std ~sqrt(d) (initial loss ~50 at d=64). A fixed
        1/sqrt(d) output scale, as T5 uses for its tied head, brings them to order one; it adds no parameter.
        (Scaling h, not the B x T x V logits, keeps it off the largest tensor of the step.)"""
        arm = self.config.arm
        return h * self.config.n_embd ** -0.5 if arm.codec and arm.tied else h

    def head_weight(self, table=None):
        """The (V, d) output matrix: lm_head's own, or (tied) the input table."""
        if self.lm_head is not None:
            return self.lm_head.weight
        return table if table is not None else self.input_table()

    def head(self, h, table=None):
        """Hidden states -> logits over the vocabulary."""
        return F.linear(self.head_input(h), self.head_weight(table))

    def shared_table(self):
        """A tied codec arm's (V, d) table, which body() otherwise rebuilds every forward: with frozen weights
        (inference) compute it once and pass it to body() and head(). None for the other arms."""
        arm = self.config.arm
        return self.input_table() if arm.codec and arm.tied else None

    def input_table(self) -> torch.Tensor:
        """The (V, d) input embedding of every id: the learned table, or the one the codec + proj imply."""
        wte = self.transformer.wte
        return wte.full_table() if self.config.arm.codec else wte.weight

    # -- accounting --------------------------------------------------------------------------------------------

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def input_params(self) -> int:
        """Trainable parameters of the input side (the table, or the codec's proj)."""
        wte = self.transformer.wte
        return wte.proj.numel() if self.config.arm.codec else wte.weight.numel()

    def mean_token_bytes(self) -> float:
        """Average codec length L over the real vocabulary (codec arms)."""
        return self.transformer.wte.lengths[:N_VOCAB].float().mean().item()

    @torch.no_grad()
    def embedding_norms(self) -> dict:
        """Mean L2 norms: rows of the learned input matrix (table rows, or rows of Linear(D, d).weight = columns
        of proj), effective input embeddings over the real vocabulary, and output-head rows."""
        wte = self.transformer.wte
        learned = wte.proj.float().norm(dim=0) if self.config.arm.codec else wte.weight.float().norm(dim=1)
        table = self.input_table().float()
        head = self.head_weight(table).float()
        return {"norm/input_row": learned.mean().item(), "norm/input_emb": table[:N_VOCAB].norm(dim=1).mean().item(),
                "norm/head_row": head.norm(dim=1).mean().item()}

    def estimate_flops_per_token(self, tokens_per_forward: int | None = None) -> float:
        """Training FLOPs per token (forward + backward) of what this arm really computes.

        6 * (matmul params) for the weights, 12 * n_layer * d * T for attention scores; a table lookup is free;
        the sparse codec is ~4 L d (bag + its weight gradient); a dense codec (dynamic/cached) adds 4 D d.
        A tied codec arm builds its V x d table once per forward: ~4 V L d spread over the forward's tokens.
        """
        cfg = self.config
        d, V, T = cfg.n_embd, cfg.vocab_size, cfg.block_size
        blocks = sum(p.numel() for p in self.transformer.h.parameters())
        flops = 6 * (blocks + V * d) + 12 * cfg.n_layer * d * T  # every arm has a V x d output matmul
        if cfg.arm.codec:
            D, L = self.transformer.wte.D, self.mean_token_bytes()
            per_row = 4 * D * d if cfg.kron_mode != "sparse" else 4 * L * d
            flops += per_row * V / (tokens_per_forward or T) if cfg.arm.tied else per_row
        return float(flops)

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
