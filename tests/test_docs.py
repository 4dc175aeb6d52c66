"""Every command the README and docs/ show runs as written: each one's script exists, its --help works and knows
every flag the command passes, and train.py commands parse as configs. Links between the documents resolve."""
import functools
import re
import shlex
import subprocess
import sys

import pytest

from config import TYPES, load_config
from conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "results/cpu_tiny/README.md"]
STARTS = ("python ", "bash ", "sbatch ", "torchrun ")


def commands(doc):
    """(line, command) for every shell line of ```bash blocks and every inline `python ...`/`bash ...` span."""
    out, block = [], False
    for n, line in enumerate(doc.read_text().splitlines(), 1):
        if line.startswith("```"):
            block = line.strip() == "```bash"
            continue
        if block:
            out.append((n, re.sub(r"\s+#\s.*$", "", line).strip()))
        else:
            out += [(n, span) for span in re.findall(r"`([^`]+)`", line) if span.startswith(STARTS)
                    or re.match(r"[A-Z_]+=\S+ (python|bash) ", span)]
    return [(n, c) for n, c in out if c]


CASES = [(doc, n, cmd) for doc in DOCS for n, cmd in commands(doc)]


@functools.lru_cache(maxsize=None)
def help_text(*argv):
    proc = subprocess.run([*argv, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(argv)} --help failed: {proc.stderr[-500:]}"
    return proc.stdout + proc.stderr


def check(cmd):
    words = shlex.split(cmd)
    while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):  # NAME=value prefixes
        words.pop(0)
    prog, args = words[0], [w for w in words[1:] if w != "..."]
    if prog in ("pip", "pytest", "wandb", "git"):
        return
    if prog in ("torchrun", "sbatch"):  # not here: the script it launches must exist, and its config
        scripts = [w for w in args if w.endswith((".py", ".sbatch"))]
        assert all((ROOT / s).is_file() for s in scripts), cmd
        return
    if prog == "python" and args[0] == "-m":
        target, args = ("python", "-m", args[1]), args[2:]
    elif prog == "python":
        target, args = ("python", args[0]), args[1:]
    else:
        assert prog == "bash", cmd
        target, args = ("bash", args[0]), args[1:]
    if target[-1].endswith((".py", ".sh")):
        assert (ROOT / target[-1]).is_file(), f"{target[-1]} does not exist"
    for a in args:  # files the command names in this repo must exist
        if re.fullmatch(r"(configs|scripts|probes|bench|data/sample)/[\w./-]+\.\w+", a):
            assert (ROOT / a).exists(), f"{a} does not exist"
    if target == ("python", "train.py") and args != ["--help"]:
        load_config([a for a in args if a not in ("--dry_run", "--debug") and not a.startswith("HOST")])
        return
    text = help_text(sys.executable if target[0] == "python" else "bash", *target[1:])
    for a in args:
        flag = a.split("=")[0]
        if not flag.startswith("--"):
            continue
        known = flag in text or (flag[2:] in TYPES and "=" in a)  # a train.py key passed through (--key=value)
        assert known, f"{flag} is not an option of {' '.join(target[1:])}"


@pytest.mark.parametrize("doc,line,cmd", CASES, ids=[f"{d.name}:{n}" for d, n, _ in CASES])
def test_documented_command_runs_as_written(doc, line, cmd):
    check(cmd)


def test_commands_were_found():
    assert len(CASES) > 40 and any("--for_config" in c for _, _, c in CASES)


def test_readme_first_screen_and_links():
    text = (ROOT / "README.md").read_text()
    lines = text.splitlines()
    assert len(lines) <= 200
    assert any(line.startswith("## Reproduce the paper") for line in lines[:60])
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#]+)\)", doc.read_text()):
            if not target.startswith("http"):
                assert (doc.parent / target).exists(), f"{doc.name} links to {target}, which does not exist"
