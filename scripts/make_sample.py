"""Build data/sample/austen.jsonl.gz (the bundled corpus) from the Austen text: one chapter = one FineWeb-Edu-shaped row.

    python -m scripts.make_sample --src austen.txt.gz [--out data/sample/austen.jsonl.gz]

Only needed to remake the committed file. --src is the gzipped text of the six novels (sha256 of the text
f46c14b0...f31b95), extracted from the Debian package r-cran-janeaustenr 1.0.0-1: `apt-get download
r-cran-janeaustenr`, unpack it, read usr/lib/R/site-library/janeaustenr/data/Rdata.{rdb,rdx} with PyPI `rdata`
and write the books' lines one per line, books in publication order; see data/sample/README.md. The output is
deterministic (sorted keys, gzip mtime 0).
"""
import argparse
import gzip
import hashlib
import json
import re
import sys
from pathlib import Path

from tokenizer import get_encoding

SOURCE_SHA256 = "f46c14b02eb5efd875eeaf531fb73254b22d187eca87ea857832bef399f31b95"
# title line in the text -> (slug, Project Gutenberg ebook number, which the janeaustenr text comes from)
BOOKS = {
    "SENSE AND SENSIBILITY": ("sense-and-sensibility", 161),
    "PRIDE AND PREJUDICE": ("pride-and-prejudice", 1342),
    "MANSFIELD PARK": ("mansfield-park", 141),
    "EMMA": ("emma", 158),
    "NORTHANGER ABBEY": ("northanger-abbey", 121),
    "Persuasion": ("persuasion", 105),
}
# This text writes Persuasion's title in mixed case, on a title page that comes before its first chapter heading.
# The page stays at the end of Northanger Abbey's last chapter (the text every committed result was trained on);
# the book, and so the labels, change at Persuasion's first chapter heading.
TITLE_PAGE_KEPT = {"Persuasion"}
CHAPTER = re.compile(r"^(CHAPTER|Chapter) ([0-9IVXLC]+)\.?\s*$")


def split_chapters(text: str):
    """Yield (book_slug, gutenberg_id, chapter_number, chapter_text) in book order."""
    book, chapter, lines, n, next_book = None, None, [], 0, None
    for line in text.split("\n"):
        title = line.strip()
        if title in BOOKS and title not in TITLE_PAGE_KEPT:
            if chapter is not None:
                yield (*BOOKS[book], n, "\n".join(lines).strip() + "\n")
            book, chapter, lines, n = title, None, [], 0
            continue
        if title in TITLE_PAGE_KEPT:
            next_book = title  # the book changes at its first chapter heading
        if CHAPTER.match(line) and book is not None:
            if chapter is not None:
                yield (*BOOKS[book], n, "\n".join(lines).strip() + "\n")
            if next_book:
                book, n, next_book = next_book, 0, None
            chapter, lines, n = line, [], n + 1
        if chapter is not None:
            lines.append(line)
    if chapter is not None:
        yield (*BOOKS[book], n, "\n".join(lines).strip() + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = Path(__file__).resolve().parents[1]
    ap.add_argument("--src", required=True, help="gzipped Austen text (see the docstring for where it comes from)")
    ap.add_argument("--out", default=str(root / "data" / "sample" / "austen.jsonl.gz"))
    args = ap.parse_args()
    text = gzip.decompress(Path(args.src).read_bytes())
    if hashlib.sha256(text).hexdigest() != SOURCE_SHA256:
        sys.exit(f"error: {args.src} is not the expected Austen text (sha256 {SOURCE_SHA256})")
    enc = get_encoding()
    rows = []
    for slug, pg, n, body in split_chapters(text.decode("utf-8")):
        rows.append({
            "text": body, "id": f"austen/{slug}/{n:03d}", "dump": "janeaustenr-1.0.0",
            "url": f"https://www.gutenberg.org/ebooks/{pg}", "file_path": f"janeaustenr/{slug}",
            "language": "en", "language_score": 1.0, "token_count": len(enc.encode_ordinary(body)),
            "score": None, "int_score": None,
        })
    payload = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows).encode()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as gz:
        gz.write(payload)
    print(f"wrote {args.out}: {len(rows)} chapters, {sum(r['token_count'] for r in rows):,} tokens")


if __name__ == "__main__":
    main()
