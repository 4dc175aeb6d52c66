import shutil

import pytest

import tokenizer
from tokenizer import EOT, RANKS_PATH, TokenizerFileError, get_encoding, token_bytes


def test_gpt2_encoding_offline():
    enc = get_encoding()
    assert enc.encode("Hello world, naïve café 🙂") == [15496, 995, 11, 41492, 40304, 32485]
    assert enc.n_vocab == 50257
    assert enc.eot_token == EOT == 50256
    assert enc.encode("<|endoftext|>", allowed_special="all") == [50256]
    assert enc.decode(enc.encode("  multiple   spaces\n\nand lines")) == "  multiple   spaces\n\nand lines"


def test_token_bytes_are_raw_bytes():
    tb = token_bytes(50304)
    assert len(tb) == 50304
    assert tb[15496] == b"Hello" and tb[995] == b" world"
    assert tb[50256] == b"<|endoftext|>"
    assert all(b == b"" for b in tb[50257:])
    # tokens that are not valid UTF-8 on their own keep their real bytes (no U+FFFD)
    invalid = [b for b in tb[:50257] if not _utf8(b)]
    assert len(invalid) == 344
    assert all(b"\xef\xbf\xbd" not in b for b in invalid)
    assert len(set(tb[:50257])) == 50257  # raw bytes are unique per token


def _utf8(b):
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_altered_ranks_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "gpt2.tiktoken"
    shutil.copy(RANKS_PATH, bad)
    with open(bad, "ab") as f:
        f.write(b"IQ== 50257\n")
    with pytest.raises(TokenizerFileError, match=r"expected .*306cd27f"):
        get_encoding(str(bad))
    with pytest.raises(TokenizerFileError, match=r"missing.*306cd27f"):
        get_encoding(str(tmp_path / "nope.tiktoken"))
    assert tokenizer.RANKS_SHA256 == "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
