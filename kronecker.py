"""The Kronecker codec (paper Eq. 1) and the input embedding built on it.

A token with raw bytes b_1..b_L (L <= P) becomes the sparse vector s = (1/sqrt L) * sum_p e[b_p * P + p] in R^D
(D = 256 P), z-normalised over its D entries, and is projected by one learned matrix `proj` (D x d). Because s has
exactly L equal nonzeros, its mean and std are closed-form: with a = 1/sqrt(L), mu = sqrt(L)/D,
s^2 = (1 - L/D)/(D - 1) and s' = s + 1e-6, the embedding is

    emb = (a/s') * sum_p proj[b_p P + p]  -  (mu/s') * proj.sum(0)

So the whole V x d table is E = C proj - m (x) proj.sum(0) for a fixed sparse V x D matrix C (L nonzeros per row,
~320k for GPT-2 at P = 16) and a fixed vector m. `CodecTable` computes it with one weighted embedding_bag over the
real (byte, position) slots only, and its gradient dproj = C^T dE - 1 (x) (m^T dE) with the transpose of C, stored
once as index buffers: nothing is sorted per step and every shape is fixed (torch.compile traces it whole).

`codec_dense` and `DenseCodec` are Eq. 1 written out: the paper's runtime variants ('dynamic': codec vectors of the
ids on the fly; 'cached': a stored V x D codec table), kept for checking and benchmarks, not used in training.
"""
import math

import torch
import torch.nn as nn
from torch.nn import functional as F

from embeddings import InputEmbedding
from tokenizer import N_VOCAB, token_bytes as gpt2_token_bytes

PERMUTATION_SEED = 0  # the spelling control's one fixed permutation of token ids (see permuted_bytes)
BAG = 256  # backward: a codec row used by more tokens than this is summed in sub-bags of at most BAG tokens


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
    """Eq. 1 written out: (N, P) bytes + (N,) lengths -> (N, D) z-normalised codec vectors."""
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


def permuted_bytes(raws, n: int = N_VOCAB, seed: int = PERMUTATION_SEED) -> list:
    """The spelling control's vocabulary: the bytes of the first n ids shuffled across ids by torch.randperm(n)
    with a generator seeded `seed` (new id i gets the bytes of old id perm[i]); ids >= n keep theirs. Same multiset
    of codes and lengths, same operator and cost -- but a token's code no longer spells it."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    raws = list(raws)
    return [raws[perm[i]] for i in range(n)] + raws[n:]


class CodecTable(torch.autograd.Function):
    """E = C proj - m (x) proj.sum(0), with C given by its forward and transposed index buffers (see module doc)."""

    @staticmethod
    def forward(ctx, proj, rows, offsets, weight, mean, t_ids, t_offsets, t_weight, t_row):
        out = F.embedding_bag(rows, proj, offsets, mode="sum", per_sample_weights=weight)
        ctx.save_for_backward(mean, t_ids, t_offsets, t_weight, t_row)
        ctx.n_rows = proj.shape[0]
        return torch.addr(out, mean, proj.sum(0), alpha=-1)

    @staticmethod
    def backward(ctx, grad):
        mean, t_ids, t_offsets, t_weight, t_row = ctx.saved_tensors
        grad = grad.contiguous()
        bags = F.embedding_bag(t_ids, grad, t_offsets, mode="sum", per_sample_weights=t_weight.to(grad.dtype))
        dproj = grad.new_zeros(ctx.n_rows, grad.shape[1]).index_add_(0, t_row, bags)
        dproj = dproj - (mean.to(grad.dtype) @ grad)[None, :]
        return dproj, None, None, None, None, None, None, None, None


class KroneckerEmbedding(InputEmbedding):
    """Fixed byte codec + one learned matrix `proj` (D x d). Replaces nn.Embedding(V, d).

    `proj` is stored as (D, d) -- the transpose of the reference package's Linear(D, d).weight -- so that a codec
    row is a contiguous row. Codec column index = byte * P + position.
    """

    reads_bytes = True

    def __init__(self, vocab_size: int, n_embd: int, pos_dim: int, token_bytes, permuted: bool = False):
        super().__init__(vocab_size, n_embd)
        self.P, self.D, self.permuted = pos_dim, 256 * pos_dim, permuted
        # the tied head: rows of norm ~sqrt(d) (z-normalised codec, N(0, 1/D) proj) would give logits of std
        # ~sqrt(d); a fixed 1/sqrt(d) output scale (as T5 uses for its tied head) brings them to order one
        self.head_scale = n_embd ** -0.5
        raws = [token_bytes[i] if i < len(token_bytes) else b"" for i in range(vocab_size)]
        table, lengths = byte_rows(permuted_bytes(raws) if permuted else raws, pos_dim)
        self.register_buffer("byte_table", table)
        self.register_buffer("lengths", lengths)
        for name, value in self.operator(table, lengths).items():  # recomputed from the bytes, never saved
            self.register_buffer(name, value, persistent=False)
        self.proj = nn.Parameter(torch.empty(self.D, n_embd))
        self.reset_parameters()

    @classmethod
    def build(cls, config, token_bytes=None, permuted=False):
        tb = token_bytes if token_bytes is not None else gpt2_token_bytes(config.vocab_size)
        return cls(config.vocab_size, config.n_embd, config.kron_pos_dim, tb, permuted)

    @staticmethod
    def operator(table: torch.Tensor, lengths: torch.Tensor) -> dict:
        """C's index buffers, computed once in float64: forward (token -> its L codec rows, weight a/s') and
        transposed (codec row -> its tokens, in sub-bags of <= BAG tokens, each tagged with its row)."""
        V, P = table.shape
        D = 256 * P
        L = lengths.long()
        Ld = L.double()
        sigma = ((1 - Ld / D) / (D - 1)).sqrt() + 1e-6
        has = L > 0
        a = torch.where(has, (1 / Ld.clamp(min=1).sqrt()) / sigma, torch.zeros_like(Ld))
        mean = torch.where(has, (Ld.sqrt() / D) / sigma, torch.zeros_like(Ld))
        real = torch.arange(P)[None, :] < L[:, None]
        rows = (table.long() * P + torch.arange(P))[real]  # row-major: token by token
        token = torch.arange(V)[:, None].expand(V, P)[real]
        offsets = torch.cumsum(L, 0) - L
        # transpose: slots ordered by codec row (stable: tokens ascending within a row), cut into sub-bags
        order = torch.sort(rows, stable=True).indices
        t_row_of_slot, t_ids = rows[order], token[order]
        counts = torch.bincount(t_row_of_slot, minlength=D)
        starts = torch.cumsum(counts, 0) - counts
        bag_row, bag_start = [], []
        for r in counts.nonzero()[:, 0].tolist():
            for s in range(0, int(counts[r]), BAG):
                bag_row.append(r)
                bag_start.append(int(starts[r]) + s)
        return {"fwd_rows": rows, "fwd_offsets": offsets, "fwd_weight": a[token], "mean_weight": mean,
                "t_ids": t_ids, "t_offsets": torch.tensor(bag_start, dtype=torch.long),
                "t_weight": a[t_ids], "t_row": torch.tensor(bag_row, dtype=torch.long)}

    @torch.no_grad()
    def reset_parameters(self, generator=None):
        # N(0, 1/D): keeps emb(t) ~ unit scale since x(t) is z-normalised. GPT-2's 0.02 init must not touch it.
        self.proj.copy_(torch.randn(self.proj.shape, generator=generator) / math.sqrt(self.D))

    def extra_repr(self):
        return f"vocab={self.vocab_size}, P={self.P}, D={self.D}, d={self.n_embd}, permuted={self.permuted}"

    def table(self) -> torch.Tensor:
        """The (V, d) table, always in proj's dtype. Autocast is off here: it would round the rank-1 update to
        bf16 on CUDA, while the BPE tables stay fp32; the codec is cheap, so all arms enter the blocks alike."""
        with torch.autocast(self.proj.device.type, enabled=False):
            dt = self.proj.dtype
            return CodecTable.apply(self.proj, self.fwd_rows, self.fwd_offsets, self.fwd_weight.to(dt),
                                    self.mean_weight.to(dt), self.t_ids, self.t_offsets, self.t_weight.to(dt),
                                    self.t_row)

    def table_flops(self):
        nnz, V, d = self.fwd_rows.numel(), self.vocab_size, self.n_embd
        return 4.0 * (nnz + V) * d + 2.0 * self.D * d  # bag + rank-1 update, forward and weight gradient

    def learned_row_norm(self):
        return self.proj.float().norm(dim=0).mean()  # rows of Linear(D, d).weight = columns of proj

    def mean_token_bytes(self) -> float:
        """Average codec length L over the real vocabulary."""
        return self.lengths[:N_VOCAB].float().mean().item()

    def embed_bytes(self, raw: bytes) -> torch.Tensor:
        """Embedding of an arbitrary byte string as ONE position (forced out-of-vocabulary input), (d,)."""
        table, lengths = byte_rows([raw], self.P)
        x = codec_dense(table.to(self.proj.device), lengths.to(self.proj.device), dtype=self.proj.dtype)
        return (x @ self.proj)[0]

    def describe(self):
        return {**super().describe(), "kron_pos_dim": self.P, "permuted": self.permuted,
                "permutation_seed": PERMUTATION_SEED if self.permuted else None}


class DenseCodec(nn.Module):
    """The paper's runtime variants over a KroneckerEmbedding's bytes and proj (shared, not copied): ids ->
    (..., d) by 'dynamic' (dense codec vectors of the ids, then a matmul) or 'cached' (a stored V x D codec table,
    looked up, then a matmul). Same numbers as the embedding's table; for checks and benchmarks only."""

    MODES = ("dynamic", "cached")

    def __init__(self, emb: KroneckerEmbedding, mode: str):
        super().__init__()
        assert mode in self.MODES, mode
        self.mode, self.n_embd, self.proj = mode, emb.n_embd, emb.proj  # the same Parameter
        self.register_buffer("byte_table", emb.byte_table, persistent=False)
        self.register_buffer("lengths", emb.lengths, persistent=False)
        if mode == "cached":
            self.register_buffer("codec_table", codec_dense(emb.byte_table, emb.lengths, emb.proj.dtype),
                                 persistent=False)

    def forward(self, idx):
        with torch.autocast(idx.device.type, enabled=False):
            ids = idx.reshape(-1)
            if self.mode == "dynamic":
                x = codec_dense(self.byte_table[ids], self.lengths[ids], dtype=self.proj.dtype)
            else:
                x = self.codec_table[ids].to(self.proj.dtype)
            return (x @ self.proj).view(*idx.shape, self.n_embd)
