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
import typing
from dataclasses import dataclass, field
from pathlib import Path

from model import GPTConfig
from util import ROOT, UserError


def opt(default, resumable=False, choices=None, positive=False):
    """A config field with what the loader checks: `choices` (allowed values), `positive` (>= 1), and whether a
    resumed run may change it (`resumable`: how long and how fast the run goes on, how it is watched, where it
    runs; everything else is what the run *is* and must match the checkpoint)."""
    return field(default=default, metadata={"resumable": resumable, "choices": choices, "positive": positive})


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
    batch_size: int = opt(16, resumable=True, positive=True)
    total_batch_size: int = opt(524288, positive=True)
    shuffle: bool = True  # the seed also picks the order of training steps' data (the same for every arm)
    # optimizer and schedule (linear warmup, cosine to min_lr at lr_decay_steps, then flat)
    learning_rate: float = opt(6e-4, resumable=True)
    min_lr: float = opt(6e-5, resumable=True)
    warmup_steps: int = opt(715, resumable=True)
    max_steps: int = opt(4768, resumable=True, positive=True)
    lr_decay_steps: int = opt(0, resumable=True)  # 0 = max_steps
    weight_decay: float = opt(0.1, resumable=True)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = opt(1.0, resumable=True)
    # 'stop' the run on a non-finite loss/grad norm, or 'skip' that step (counted)
    nonfinite: str = opt("stop", resumable=True, choices=("stop", "skip"))
    # evaluation, logging, checkpoints
    eval_interval: int = opt(250, resumable=True, positive=True)
    val_tokens: int = 10485760
    # the last eval's val tokens (0: val_tokens): a study's endpoint on a larger val set than the curves use; more
    # than the split holds = every full batch of it
    final_val_tokens: int = opt(0, resumable=True)
    log_interval: int = opt(10, resumable=True, positive=True)
    norm_interval: int = opt(50, resumable=True, positive=True)
    ckpt_interval: int = opt(500, resumable=True, positive=True)
    keep_checkpoints: int = opt(3, resumable=True, positive=True)
    progress: bool = opt(True, resumable=True)  # tqdm bar on rank 0
    seed: int = 1337
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
POSITIVE = tuple(k for k, f in FIELDS.items() if f.metadata.get("positive"))
RESUMABLE = tuple(k for k, f in FIELDS.items() if f.metadata.get("resumable"))


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
        raise UserError(f"{where}bad value {value!r} for {name}: expected {typ.__name__}")
    if name in CHOICES and value not in CHOICES[name]:
        if name == "dtype" and value == "float16":
            raise UserError(f"{where}dtype=float16 is not supported: without loss scaling small gradients "
                            f"underflow; use bfloat16 (A100/H100/RTX 30xx and newer) or float32 (V100, T4)")
        raise UserError(f"{where}bad value {value!r} for {name}: choose one of {', '.join(CHOICES[name])}")
    return value


def _from_string(name, raw, typ, where):
    if typ is bool:
        low = raw.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise UserError(f"{where}bad value {raw!r} for {name}: expected true or false")
    try:
        if typ is int:
            f = float(raw)  # allow 1e6 / 2.5e9 but not 1.5
            if f != int(f):
                raise ValueError
            return int(f)
        return typ(raw)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{where}bad value {raw!r} for {name}: expected {typ.__name__}") from None


def read_config_file(path: Path, depth=0) -> dict:
    """{key: value} of a config file, its `base` chain first. Parsed, never executed."""
    if not path.is_file():
        known = sorted(p.name for p in (ROOT / "configs").glob("*.py"))
        raise UserError(f"config file {path} not found; available in configs/: {', '.join(known)}")
    try:
        tree = ast.parse(path.read_bytes().decode("utf-8"), filename=str(path))
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
        except ValueError:
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
            raise UserError(f"bad argument {a!r}: overrides are --key=value (e.g. --max_steps=100)")
        k, v = a[2:].split("=", 1)
        if k not in TYPES:
            raise UserError(f"unknown config key '{k}'{_closest(k)}")
        values[k] = _typed(k, v, "")
    for k in POSITIVE:
        if k in values and values[k] < 1:
            raise UserError(f"bad value {values[k]} for {k}: must be >= 1")
    try:
        return TrainConfig.from_dict(values)
    except ValueError as e:  # GPTConfig's validation of the model fields
        raise UserError(str(e)) from None


def resume_mismatches(saved: dict, cfg: TrainConfig) -> list:
    """['key: checkpoint X vs now Y', ...] for every field outside RESUMABLE that differs."""
    now = cfg.to_dict()
    return [f"{k}: checkpoint {saved.get(k)!r} vs now {now[k]!r}" for k in now
            if k not in RESUMABLE and saved.get(k, now[k]) != now[k]]
