"""The GPT-2 tokenizer, built offline from the ranks file committed in data/.

tiktoken normally downloads its BPE ranks on first use and caches them. nanokron must run on machines with no
internet, so we build the exact same `Encoding` (r50k_base = "gpt2") from `data/gpt2.tiktoken` and check its
sha256 before trusting it: a silently different vocabulary would make every result incomparable.
"""
import base64
import functools
import hashlib
from pathlib import Path

import tiktoken

from util import UserError

RANKS_PATH = Path(__file__).resolve().parent / "data" / "gpt2.tiktoken"
RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
N_VOCAB = 50257  # real GPT-2 vocabulary; model vocab_size is padded to 50304
EOT = 50256  # <|endoftext|>
# GPT-2's pre-tokenization regex (a published fact of the r50k_base encoding)
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


class TokenizerFileError(UserError):
    pass


def _read_ranks(path: Path) -> dict:
    if not path.is_file():
        raise TokenizerFileError(
            f"tokenizer ranks file {path} is missing; restore it with `git checkout -- data/gpt2.tiktoken` "
            f"(expected sha256 {RANKS_SHA256})")
    blob = path.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != RANKS_SHA256:
        raise TokenizerFileError(
            f"tokenizer ranks file {path} has sha256 {digest}, expected {RANKS_SHA256}; "
            f"restore it with `git checkout -- data/gpt2.tiktoken`")
    ranks = {}
    for line in blob.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


@functools.lru_cache(maxsize=4)
def get_encoding(path: str | None = None) -> tiktoken.Encoding:
    """The GPT-2 tiktoken Encoding, from the committed ranks file (sha256-checked, no network, no cache)."""
    ranks = _read_ranks(Path(path) if path else RANKS_PATH)
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": EOT}, explicit_n_vocab=N_VOCAB)


@functools.lru_cache(maxsize=4)
def token_bytes(vocab_size: int = 50304) -> tuple:
    """Raw bytes of every id in [0, vocab_size); ids >= 50257 (padding) are b"".

    Uses decode_single_token_bytes, never decode(): 344 GPT-2 tokens are not valid UTF-8 on their own and
    decode() would turn them all into U+FFFD.
    """
    enc = get_encoding()
    return tuple(enc.decode_single_token_bytes(i) if i < enc.n_vocab else b"" for i in range(vocab_size))
