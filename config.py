"""Training configuration: one typed TrainConfig, filled from a config file and --key=value overrides.

    CONFIG_FILE [--key=value ...]        e.g.  configs/cpu_tiny.py --input_embedding=kronecker --seed=1338

Config files are data, not code. Each line is `key = literal` (a number, string, True/False) and a file may start
from another with `base = "other.py"` (a path relative to the file) and restate only what differs. They are read
with `ast` and never executed; anything else in them is an error naming the file and line.

The model's fields (n_layer, input_embedding, ...) live in GPTConfig, which validates them; TrainConfig holds one
and adds the rest. On the command line and in files both kinds are flat keys.
"""
import ast
import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

from model import GPTConfig
from util import ROOT, UserError


def opt(default, resumable=False, choices=None, at_least=None, above=None, below=None):
    """A config field with what the loader checks: `choices` (allowed values), a range (`at_least` <= value, `above` <
    value, value < `below`; every float must be finite), and whether a resumed run may change it (`resumable`: how
    long and how fast the run goes on, how it is watched, where it runs; everything else is what the run *is* and
    must match the checkpoint)."""
    return field(default=default, metadata={"resumable": resumable, "choices": choices,
                                            "range": (at_least, above, below)})


@dataclass
class TrainConfig:
    # data and output
    data_dir: str = opt("data/sample", resumable=True)
    out_dir: str = opt("runs/default", resumable=True)
    # the model: arm and GPT-2 shape (flat keys: --n_layer=4, --input_embedding=kronecker, ...)
    model: GPTConfig = field(default_factory=GPTConfig)
    # batch: total_batch_size tokens per optimizer step = batch_size * block_size * world * grad_accum.
    # batch_size may change on resume: a step's tokens do not depend on how it is split into micro-batches
    # (data.ShardLoader); only float rounding does.
    batch_size: int = opt(16, resumable=True, at_least=1)
    total_batch_size: int = opt(524288, at_least=1)
    shuffle: bool = True  # the seed also picks the order of training steps' data (the same for every arm)
    # optimizer and schedule (linear warmup, cosine to min_lr at lr_decay_steps, then flat)
    learning_rate: float = opt(6e-4, resumable=True, above=0)
    min_lr: float = opt(6e-5, resumable=True, at_least=0)
    warmup_steps: int = opt(715, resumable=True, at_least=0)
    max_steps: int = opt(4768, resumable=True, at_least=1)
    lr_decay_steps: int = opt(0, resumable=True, at_least=0)  # 0 = max_steps
    weight_decay: float = opt(0.1, resumable=True, at_least=0)
    beta1: float = opt(0.9, at_least=0, below=1)
    beta2: float = opt(0.95, at_least=0, below=1)
    grad_clip: float = opt(1.0, resumable=True, at_least=0)
    # 'stop' the run on a non-finite loss/grad norm, or 'skip' that step (counted)
    nonfinite: str = opt("stop", resumable=True, choices=("stop", "skip"))
    # evaluation, logging, checkpoints
    eval_interval: int = opt(250, resumable=True, at_least=1)
    val_tokens: int = opt(10485760, at_least=1)
    # the last eval's val tokens (0: val_tokens): a study's endpoint on a larger val set than the curves use; more
    # than the split holds = every full batch of it
    final_val_tokens: int = opt(0, resumable=True, at_least=0)
    log_interval: int = opt(10, resumable=True, at_least=1)
    norm_interval: int = opt(50, resumable=True, at_least=1)
    ckpt_interval: int = opt(500, resumable=True, at_least=1)
    keep_checkpoints: int = opt(3, resumable=True, at_least=1)
    progress: bool = opt(True, resumable=True)  # tqdm bar on rank 0
    # start over in an out_dir that holds files of something else (a copied run, an export): they are overwritten
    force: bool = opt(False, resumable=True)
    seed: int = opt(1337, at_least=0)
    # runtime
    device: str = opt("auto", resumable=True)  # auto | cpu | cuda | cuda:N | mps
    # auto (bf16 autocast where the GPU has bf16, else fp32) | float32 | bfloat16
    dtype: str = opt("auto", resumable=True, choices=("auto", "float32", "bfloat16"))
    compile: str = opt("auto", resumable=True, choices=("auto", "true", "false"))  # auto = on for CUDA
    # wandb
    wandb_mode: str = opt("disabled", resumable=True, choices=("disabled", "offline", "online"))
    wandb_project: str = opt("nanokron", resumable=True)
    wandb_run_name: str = opt("", resumable=True)  # default <arm>_s<seed>
    wandb_group: str = opt("", resumable=True)  # experiment name

    def to_dict(self) -> dict:
        """Flat {key: value}, model keys included: what config.json and checkpoints store."""
        out = dataclasses.asdict(self.model)
        out.update({k: getattr(self, k) for k in TRAIN_KEYS})
        return out

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        model = GPTConfig(**{k: v for k, v in values.items() if k in MODEL_KEYS})
        return cls(model=model, **{k: v for k, v in values.items() if k in TRAIN_KEYS})

    def replace(self, **changes) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **changes})


MODEL_KEYS = tuple(f.name for f in dataclasses.fields(GPTConfig))
TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name != "model")
TYPES = {**typing.get_type_hints(GPTConfig), **typing.get_type_hints(TrainConfig)}
TYPES.pop("model")
FIELDS = {f.name: f for f in dataclasses.fields(GPTConfig) + dataclasses.fields(TrainConfig) if f.name != "model"}
CHOICES = {k: f.metadata["choices"] for k, f in FIELDS.items() if f.metadata.get("choices")}
RANGES = {k: f.metadata["range"] for k, f in FIELDS.items() if f.metadata.get("range", (None,) * 3) != (None,) * 3}
RESUMABLE = tuple(k for k, f in FIELDS.items() if f.metadata.get("resumable"))


MAX_CONFIG_BYTES = 65536


def _short(value) -> str:
    """repr of a value for an error line, cut so that a huge value cannot make a huge line."""
    text = repr(value)
    return text if len(text) <= 80 else text[:60] + f"... ({len(text):,} characters)"


def _closest(key):
    match = difflib.get_close_matches(key, MODEL_KEYS + TRAIN_KEYS, n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else ""


def _typed(name, value, where):
    """Check (and mildly coerce: 1e6 -> int, 3 -> 3.0) a value for `name`; strings from the CLI are parsed."""
    typ = TYPES[name]
    if isinstance(value, str) and typ is not str:
        value = _from_string(name, value, typ, where)
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif typ is int and isinstance(value, float) and value == int(value):
        value = int(value)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise UserError(f"{where}bad value {_short(value)} for {name}: expected {typ.__name__}")
    if typ is float and not math.isfinite(value):
        raise UserError(f"{where}bad value {value!r} for {name}: must be a finite number")
    low, above, below = RANGES.get(name, (None, None, None))
    if (low is not None and value < low) or (above is not None and value <= above) or \
            (below is not None and value >= below):
        need = " and ".join(w for w in (low is not None and f">= {low}", above is not None and f"> {above}",
                                        below is not None and f"< {below}") if w)
        raise UserError(f"{where}bad value {value!r} for {name}: must be {need}")
    if name in CHOICES and value not in CHOICES[name]:
        if name == "dtype" and value == "float16":
            raise UserError(f"{where}dtype=float16 is not supported: without loss scaling small gradients "
                            f"underflow; use bfloat16 (A100/H100/RTX 30xx and newer) or float32 (V100, T4)")
        raise UserError(f"{where}bad value {_short(value)} for {name}: choose one of {', '.join(CHOICES[name])}")
    return value


def _from_string(name, raw, typ, where):
    if typ is bool:
        low = raw.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise UserError(f"{where}bad value {_short(raw)} for {name}: expected true or false")
    try:
        if typ is int:
            f = float(raw)  # allow 1e6 / 2.5e9 but not 1.5
            if f != int(f):
                raise ValueError
            return int(f)
        return typ(raw)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{where}bad value {_short(raw)} for {name}: expected {typ.__name__}") from None


def read_config_file(path: Path, depth=0) -> dict:
    """{key: value} of a config file, its `base` chain first. Parsed, never executed."""
    if not path.is_file():
        known = sorted(p.name for p in (ROOT / "configs").glob("*.py"))
        raise UserError(f"config file {path} not found; available in configs/: {', '.join(known)}")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise UserError(f"config file {path} is {size:,} bytes; a config file is a few `key = value` lines (at most "
                        f"{MAX_CONFIG_BYTES:,} bytes) -- is it the right file?")
    try:
        tree = ast.parse(path.read_bytes().decode("utf-8"), filename=str(path))
    except (RecursionError, MemoryError):
        raise UserError(f"config file {path} nests too deeply to be read; lines are `key = value`") from None
    except UnicodeDecodeError as e:
        raise UserError(f"config file {path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except SyntaxError as e:
        raise UserError(f"{path}:{e.lineno}: syntax error ({e.msg}); lines are `key = value`") from None
    own, base = {}, None
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            continue  # a docstring
        where = f"{path}:{node.lineno}: "
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise UserError(f"{where}only `key = value` lines are allowed in a config file (it is data, not code)")
        key = node.targets[0].id
        try:
            value = ast.literal_eval(node.value)
        except (ValueError, TypeError, RecursionError, MemoryError):
            raise UserError(f"{where}the value of {key} must be a literal (number, string, True/False), "
                            f"not an expression") from None
        if key == "base":
            if not isinstance(value, str):
                raise UserError(f"{where}base must be a config file name in quotes, e.g. base = \"gpt2_124m.py\"")
            base = value
        elif key not in TYPES:
            raise UserError(f"{where}unknown config key '{key}'{_closest(key)}")
        else:
            own[key] = _typed(key, value, where)
    if base is None:
        return own
    if depth > 8:
        raise UserError(f"config {path}: 'base' chain too deep (a cycle?)")
    return {**read_config_file(path.parent / base, depth + 1), **own}


def load_config(argv) -> TrainConfig:
    """`[CONFIG_FILE] [--key=value ...]` -> a validated TrainConfig."""
    args = list(argv)
    values = read_config_file(Path(args.pop(0))) if args and not args[0].startswith("--") else {}
    for a in args:
        if not a.startswith("--") or "=" not in a:
            raise UserError(f"bad argument {_short(a)}: overrides are --key=value (e.g. --max_steps=100)")
        k, v = a[2:].split("=", 1)
        if k not in TYPES:
            raise UserError(f"unknown config key '{k}'{_closest(k)}")
        values[k] = _typed(k, v, "")
    try:
        return TrainConfig.from_dict(values)
    except ValueError as e:  # GPTConfig's validation of the model fields
        raise UserError(str(e)) from None


def resume_mismatches(saved: dict, cfg: TrainConfig) -> list:
    """['key: checkpoint X vs now Y', ...] for every field outside RESUMABLE that differs."""
    now = cfg.to_dict()
    return [f"{k}: checkpoint {saved.get(k)!r} vs now {now[k]!r}" for k in now
            if k not in RESUMABLE and saved.get(k, now[k]) != now[k]]
