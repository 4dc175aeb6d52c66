"""The input-embedding interface, and the embeddings that are learned tables.

Every arm's input side is an `InputEmbedding`: a module that can produce its effective V x d table. Training looks
tokens up in that table (`F.embedding(idx, table)`), and a tied arm multiplies its last hidden states by the same
table (times `head_scale`). So the transformer needs to know nothing about how a table is made: a learned matrix
(here), a fixed byte codec times a learned projection (kronecker.py), or anything else with the same methods.
"""
import math

import torch
import torch.nn as nn
from torch.nn import functional as F


class InputEmbedding(nn.Module):
    """What the rest of the repo asks of an input embedding. Subclasses define `table()` and `reset_parameters()`;
    the rest has defaults that hold for a plain learned table."""

    head_scale = 1.0  # a tied head computes (h * head_scale) @ table^T
    reads_bytes = False  # True: embed_bytes() embeds any byte string, not only the vocabulary's tokens

    def __init__(self, vocab_size: int, n_embd: int):
        super().__init__()
        self.vocab_size, self.n_embd = vocab_size, n_embd

    def table(self) -> torch.Tensor:
        """(V, d) embedding of every id, differentiable in the module's parameters."""
        raise NotImplementedError

    def reset_parameters(self, generator=None):
        raise NotImplementedError

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, self.table())

    def learned_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def table_flops(self) -> float:
        """Training FLOPs (forward + backward) of building the table once; a stored table costs nothing."""
        return 0.0

    def learned_row_norm(self) -> torch.Tensor:
        """Mean L2 norm of the rows of the learned input matrix (what weight decay and the optimizer act on)."""
        return self.table().float().norm(dim=1).mean()

    def embed_bytes(self, raw: bytes) -> torch.Tensor:
        """Embedding of an arbitrary byte string as one position, (d,): only for embeddings that read bytes."""
        raise TypeError(f"{type(self).__name__} embeds vocabulary ids only, not arbitrary bytes")

    def describe(self) -> dict:
        """What an export records about this embedding besides the weights."""
        return {"embedding": type(self).__name__}


class TableEmbedding(InputEmbedding):
    """A learned V x d table, nn.Embedding's parametrisation; initialised N(0, std^2) (GPT-2: std 0.02)."""

    def __init__(self, vocab_size: int, n_embd: int, std: float = 0.02):
        super().__init__(vocab_size, n_embd)
        self.std = std
        self.weight = nn.Parameter(torch.empty(vocab_size, n_embd))
        self.reset_parameters()

    @classmethod
    def build(cls, config, token_bytes=None, std=0.02):
        return cls(config.vocab_size, config.n_embd, std)

    @torch.no_grad()
    def reset_parameters(self, generator=None):
        self.weight.copy_(torch.randn(self.weight.shape, generator=generator) * self.std)

    def table(self):
        return self.weight

    def extra_repr(self):
        return f"{self.vocab_size}, {self.n_embd}, std={self.std:g}"

    def describe(self):
        return {**super().describe(), "init_std": self.std}


class LowRankEmbedding(InputEmbedding):
    """A learned table factored as A (V x r) times B (r x d) (ALBERT's factorised embedding): V r + r d parameters.

    Initialised A ~ N(0, 1), B ~ N(0, 1/r), so every entry of A B has variance 1 -- the scale the Kronecker codec's
    table starts at. As a control, r is chosen so that V r + r d is as close as possible to the codec's D d.
    """

    def __init__(self, vocab_size: int, n_embd: int, rank: int):
        super().__init__(vocab_size, n_embd)
        self.rank = rank
        self.factor = nn.Parameter(torch.empty(vocab_size, rank))  # A
        self.proj = nn.Parameter(torch.empty(rank, n_embd))  # B
        self.reset_parameters()

    @staticmethod
    def matching_rank(vocab_size: int, n_embd: int, params: int) -> int:
        """The rank whose parameter count r (V + d) is nearest to `params`."""
        return max(1, round(params / (vocab_size + n_embd)))

    @classmethod
    def build(cls, config, token_bytes=None):
        codec_params = 256 * config.kron_pos_dim * config.n_embd  # the codec's proj: D x d
        return cls(config.vocab_size, config.n_embd, cls.matching_rank(config.vocab_size, config.n_embd, codec_params))

    @torch.no_grad()
    def reset_parameters(self, generator=None):
        self.factor.copy_(torch.randn(self.factor.shape, generator=generator))
        self.proj.copy_(torch.randn(self.proj.shape, generator=generator) / math.sqrt(self.rank))

    def table(self):
        return self.factor @ self.proj

    def table_flops(self):
        return 6.0 * self.vocab_size * self.rank * self.n_embd  # one V x r x d matmul, forward and two backward

    def learned_row_norm(self):
        return self.factor.float().norm(dim=1).mean()

    def extra_repr(self):
        return f"{self.vocab_size}, {self.n_embd}, rank={self.rank}"

    def describe(self):
        return {**super().describe(), "rank": self.rank}
