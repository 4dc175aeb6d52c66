"""Repo-level promises: a new arm needs only the registry in model.py; the repo refers to nothing outside itself."""
import re
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import model
from bench import train_step
from conftest import ROOT, run_train
from embeddings import InputEmbedding
from scripts import make_tables


class HashedEmbedding(InputEmbedding):
    """A toy input embedding no arm uses: every id shares one of 97 learned rows, picked by a fixed hash."""

    def __init__(self, vocab_size, n_embd):
        super().__init__(vocab_size, n_embd)
        self.register_buffer("bucket", (torch.arange(vocab_size) * 2654435761) % 97, persistent=False)
        self.rows = nn.Parameter(torch.empty(97, n_embd))
        self.reset_parameters()

    @classmethod
    def build(cls, config, token_bytes=None):
        return cls(config.vocab_size, config.n_embd)

    @torch.no_grad()
    def reset_parameters(self, generator=None):
        self.rows.copy_(torch.randn(self.rows.shape, generator=generator) * 0.5)

    def table(self):
        return self.rows[self.bucket]


@pytest.mark.slow
def test_a_new_embedding_is_one_module_and_one_registry_entry(sample_dir, tmp_path, monkeypatch):
    """A new embedding module, registered here and nowhere else, trains, benchmarks, exports to Hugging Face and
    gets its table row; at one seed it shares the untied arms' trunk and head (the same init streams)."""
    transformers = pytest.importorskip("transformers")
    import export_hf
    from checkpoint import load_checkpoint
    monkeypatch.setitem(model.ARMS, "hashed", model.Arm(HashedEmbedding.build, tied=False, about="toy"))
    runs = tmp_path / "runs"
    metrics = {arm: run_train(runs / f"{arm}_s1", sample_dir, f"--input_embedding={arm}", "--seed=1",
                              "--max_steps=4", "--eval_interval=2") for arm in ("bpe_tied", "hashed")}
    losses = [r["train_loss"] for r in metrics["hashed"] if "train_loss" in r]
    assert len(losses) == 4 and all(map(torch.isfinite, torch.tensor(losses)))
    trained, _ = load_checkpoint(runs / "hashed_s1")
    untrained = model.GPT(model.GPTConfig(**{k: getattr(trained.config, k) for k in ("n_layer", "n_head",
                                                                                   "n_embd", "block_size")},
                                          input_embedding="bpe_untied"))
    assert not torch.equal(trained.transformer.wte.rows, HashedEmbedding(50304, trained.config.n_embd).rows)
    assert trained.transformer.wte.rows.shape == (97, 64) and untrained.num_params() > trained.num_params()
    rows = train_step.main([str(ROOT / "configs/smoke.py"), "--arms", "bpe_tied,hashed", "--steps", "1",
                            "--warmup", "0", "--fused", "on"])
    assert [r["arm"] for r in rows] == ["bpe_tied", "hashed"] and rows[1]["ms_per_step"] > 0
    _, out = export_hf.export(runs / "hashed_s1" / "ckpt_0000004.pt", tmp_path / "hf")
    ids = list(range(100, 164))
    assert export_hf.max_logit_diff(trained, out, ids) < 1e-4
    hf = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(hf.transformer.wte.weight[:97 * 3].detach(), trained.input_table()[:97 * 3].detach())
    summary = make_tables.main([str(runs), "--out", str(tmp_path / "tables"), "--no_plots"])
    assert [c["arm"] for c in summary["comparisons"]] == ["hashed"]
    assert "| hashed |" in (tmp_path / "tables" / "loss_table.md").read_text()


def test_no_arm_is_named_outside_the_registry_and_the_embeddings():
    """Everything else asks the model: no test of what an arm is made of and no arm-name literal outside model.py,
    the embedding modules, the tables' named baseline and the tests."""
    names = "|".join(map(re.escape, model.ARMS))
    literal = re.compile(rf"""arm\.codec|\.codec\b|["'](?:{names})["']""")
    allowed = {"model.py", "embeddings.py", "kronecker.py"}
    found = []
    for name, text in tracked_text_files():
        if not name.endswith(".py") or name.startswith("tests/") or name in allowed:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if literal.search(line) and not line.lstrip().startswith("BASELINE = "):
                found.append(f"{name}:{n}: {line.strip()}")
    assert not found, "\n".join(found)


TEXT = (".py", ".md", ".sh", ".sbatch", ".toml", ".txt", ".json", ".jsonl", ".yaml", ".yml", ".cfg", ".log",
        ".csv", "")
SYSTEM = ("/dev/null", "/usr/bin/env", "/bin/bash", "/proc/", "/dev/")


def tracked_text_files():
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not names:
        pytest.skip("not a git checkout")
    for name in names:
        path = ROOT / name
        if path.suffix in TEXT and path.is_file() and path.stat().st_size < 5_000_000:
            try:
                yield name, path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue


def test_no_absolute_paths_and_no_documents_from_outside():
    abs_path = re.compile(r"(?<![\w.:/~\]\)>\\-])(/(?:home|root|tmp|work|Users|mnt|opt|var|srv|scratch|mirror|data|"
                          r"shared|usr|etc|private)(?:/[\w.+-]+)+)")
    outside = re.compile(r"DESIGN(?:\.md)?\s*§|\bDESIGN\.md\b|§\s*\d|\.\./shared|\bissues? #?\d+\b", re.I)
    found = []
    for name, text in tracked_text_files():
        if name in ("tests/test_repo.py", ".gitignore"):  # (gitignore patterns start with / by design)
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if line.startswith("#!"):
                continue
            for m in abs_path.finditer(line):
                if not m.group(1).startswith(SYSTEM):
                    found.append(f"{name}:{n}: absolute path {m.group(1)}")
            for m in outside.finditer(line):
                found.append(f"{name}:{n}: refers to {m.group(0)!r}, which is not in the repo")
    assert not found, "\n".join(found[:40])


def test_inference_code_never_loads_the_trainer():
    """Generating, probing, exporting and making tables need model.py + checkpoint.py (and the stdlib-only config.py that
    checkpoint.py reads resume rules from): no trainer, runtime, data loader, wandb or datasets, and no
    torch.distributed module beyond what `import torch` itself loads."""
    code = ("import sys; import torch; before = set(sys.modules); "
            "import sample, export_hf; from probes import generation, geometry, robustness, param_accounting; "
            "from scripts import make_tables; "
            "new = set(sys.modules) - before; "
            "print(sorted(m for m in new if m.split('.')[0] in "
            "('train', 'runtime', 'data', 'prepare_fineweb', 'wandb', 'datasets') "
            "or m.startswith('torch.distributed')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout
