"""`TrainConfig`: every setting of a training run, typed, with its default. No torch here: the command line builds
its parsers from these defaults without loading it.

The four training commands share the fields without a `command` in their metadata; `lora`, `dpo` and `distill` add
their own, and set a few other defaults (`COMMAND_DEFAULTS`). A run's settings come from, in order of precedence:
the flags given on the command line, then the `--config FILE` (YAML or JSON, e.g. the `args.json` a run wrote),
then the command's defaults.

    from minimind.train.config import TrainConfig
    config = TrainConfig(preset="tiny", max_steps=300, output_dir="out")
"""

import json
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from ..presets import LORA_TARGETS, PRESETS

COMMANDS = ("train", "lora", "dpo", "distill", "grpo", "ppo", "agent")
STAGES = {"train": ("pretrain", "sft"), "lora": ("sft", "pretrain"), "dpo": ("dpo",), "distill": ("sft", "pretrain"),
          "grpo": ("rl",), "ppo": ("rl",), "agent": ("rl",)}
RL = ("grpo", "ppo", "agent")
DTYPE_CHOICES = ("auto", "fp32", "bf16", "fp16")
OPTIMIZER_CHOICES = ("adamw", "muon")


def _only(command: str | tuple[str, ...], default, **kw):
    """A field that only `command` (or these commands) takes."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"command": command, **kw})
    return field(default=default, metadata={"command": command, **kw})


def _choice(default, choices):
    return field(default=default, metadata={"choices": tuple(choices)})


@dataclass
class TrainConfig:
    # model (seed flags; None: filled from --preset, else the seed's defaults, when the run starts)
    preset: str | None = _choice(None, sorted(PRESETS))
    hidden_size: int | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    num_kv_heads: int | None = None
    vocab_size: int | None = None
    max_seq_len: int = 512
    dropout: float = 0.1
    use_moe: int | None = _choice(None, (0, 1))
    # training (seed flags)
    epochs: int = 3
    batch_size: int = 4  # per process
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    grad_clip: float = 1.0  # 0 = off
    # other (seed flags)
    device: str | None = None  # None: the best available
    output_dir: str = "./output"
    pretrained_path: str = ""
    log_interval: int = 10
    save_interval: int = 1  # model_epoch_N.pth every N epochs
    # data
    stage: str = _choice("pretrain", ("pretrain", "sft", "dpo", "rl"))
    data: str | None = None  # None: the built-in corpus / conversations / pairs
    tokenizer: str | None = None  # None: the shipped one
    skip_bad_records: bool = False
    num_workers: int = 0
    # optimisation
    accumulation_steps: int = 1
    warmup_ratio: float = 0.05
    warmup_steps: int | None = None  # overrides warmup_ratio
    min_lr_ratio: float = 0.1
    optimizer: str = _choice("adamw", OPTIMIZER_CHOICES)
    dtype: str = _choice("auto", DTYPE_CHOICES)
    compile: bool = False
    seed: int = 42
    max_steps: int = 0  # 0 = all epochs
    fsdp: bool = False
    # checkpoints and monitoring
    save_steps: int = 200  # 0 = only at epoch ends
    resume: str | None = None  # a training state, its directory, or "latest" (the one in output_dir)
    eval_interval: int = 200  # 0 = only at the end
    eval_batches: int = 50
    report_to: str = "none"
    # minimind lora (and LoRA-only RL: grpo / ppo with --lora_rank)
    lora_rank: int = _only(("lora", *RL), 8)
    lora_alpha: float = _only(("lora", *RL), 16.0)
    lora_dropout: float = _only(("lora", *RL), 0.05)
    lora_targets: list[str] = _only(("lora", *RL), list(LORA_TARGETS))
    merge: bool = _only("lora", False)
    # minimind dpo (and the KL weight of grpo / ppo)
    beta: float = _only(("dpo", *RL), 0.1)
    # minimind distill (and the rollout temperature of grpo / ppo)
    teacher: str | None = _only("distill", None)
    student_config: str | None = _only("distill", None)
    temperature: float = _only(("distill", *RL), 2.0)
    alpha: float = _only("distill", 0.5)
    # minimind grpo / ppo
    num_generations: int = _only(RL, 6)
    max_new_tokens: int = _only(RL, 48)
    reward: list[str] = _only(RL, ["numeric", "format=0.2"])
    reward_model: str | None = _only(RL, None)
    loss_type: str = _only(("grpo", "agent"), "grpo", choices=("grpo", "cispo"))
    loss_norm: str = _only(RL, "token", choices=("token", "sequence", "constant"))
    clip_eps: float = _only(RL, 0.2)
    clip_eps_high: float | None = _only(RL, None)
    scale_rewards: bool = _only(("grpo", "agent"), True)
    updates_per_batch: int = _only(RL, 1)
    vf_coef: float = _only("ppo", 0.5)
    value_clip: float = _only("ppo", 0.2)
    gamma: float = _only("ppo", 1.0)
    lam: float = _only("ppo", 0.95)
    # minimind agent
    max_turns: int = _only("agent", 3)
    tools: list[str] = _only("agent", ["calculator"])

    def __post_init__(self):
        for f in fields(self):
            setattr(self, f.name, _checked(f, getattr(self, f.name)))

    def to_dict(self, command: str | None = None) -> dict:
        """The settings as plain values; with `command`, only those it takes (what args.json holds)."""
        names = setting_names(command) if command else [f.name for f in fields(self)]
        values = asdict(self)
        return {k: values[k] for k in names}


# Where a command's defaults differ from the dataclass's.
COMMAND_DEFAULTS = {
    "train": {},
    "lora": {"stage": "sft", "learning_rate": 2e-4, "dropout": 0.0},
    # dropout would make the policy differ from the reference by noise alone
    "dpo": {"stage": "dpo", "learning_rate": 5e-6, "dropout": 0.0},
    "distill": {"stage": "sft"},
    # RL: a short run over prompts; rollouts make each step costly, so evaluate and save more often on fewer batches
    "grpo": {"stage": "rl", "learning_rate": 1e-5, "dropout": 0.0, "epochs": 1, "max_seq_len": 256, "beta": 0.02,
             "temperature": 1.0, "lora_rank": 0, "eval_interval": 50, "eval_batches": 4, "save_steps": 50},
    "ppo": {"stage": "rl", "learning_rate": 1e-5, "dropout": 0.0, "epochs": 1, "max_seq_len": 256, "beta": 0.02,
            "temperature": 1.0, "lora_rank": 0, "eval_interval": 50, "eval_batches": 4, "save_steps": 50,
            "num_generations": 2},
    "agent": {"stage": "rl", "learning_rate": 1e-5, "dropout": 0.0, "epochs": 1, "max_seq_len": 512, "beta": 0.02,
              "temperature": 1.0, "lora_rank": 0, "eval_interval": 50, "eval_batches": 4, "save_steps": 50,
              "reward": ["numeric", "format=0.2", "tool_call=0.2"]},
}


def setting_names(command: str) -> list[str]:
    """The settings `minimind COMMAND` takes: the shared ones and its own."""
    return [f.name for f in fields(TrainConfig) if _takes(f, command)]


def _takes(f, command: str) -> bool:
    owner = f.metadata.get("command", command)
    return command in owner if isinstance(owner, tuple) else owner == command


def command_defaults(command: str) -> dict:
    """Every setting of `command` with its default."""
    values = {}
    for f in fields(TrainConfig):
        if f.name in setting_names(command):
            values[f.name] = f.default_factory() if f.default is MISSING else f.default
    return {**values, **COMMAND_DEFAULTS[command]}


def build_config(command: str, given: dict, config_file: str | None = None) -> TrainConfig:
    """The settings of `minimind COMMAND`: the command's defaults, overridden by `config_file`'s settings, overridden
    by `given` (the flags given on the command line)."""
    values = command_defaults(command)
    if config_file:
        values.update(read_config_file(config_file, command))
    values.update(given)
    if values["stage"] not in STAGES[command]:
        raise ValueError(f"stage {values['stage']!r}: minimind {command} trains {' or '.join(STAGES[command])}")
    return TrainConfig(**values)


def read_config_file(path: str | Path, command: str = "train") -> dict:
    """The settings in a YAML or JSON file (a mapping of setting: value, as in the args.json a run writes), checked:
    an unknown key, or a value of the wrong type, is a ValueError naming the key and the file."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"--config {path}: no such file") from None
    try:  # JSON is YAML, except for a few escapes: read .json files as JSON
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"--config {path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} ({e})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"--config {path}: expected a mapping of setting: value, got a {type(values).__name__}")
    known = {f.name: f for f in fields(TrainConfig)}
    names = setting_names(command)
    for key, value in values.items():
        if key not in names:
            owner = known[key].metadata.get("command", "") if key in known else ""
            owner = " / ".join(owner) if isinstance(owner, tuple) else owner
            where = f"a setting of minimind {owner}, not of minimind {command}" \
                if key in known else f"not a setting of minimind {command}; see minimind {command} --help"
            raise ValueError(f"--config {path}: unknown key {key!r} ({where})")
        try:
            values[key] = _checked(known[key], value)
        except ValueError as e:
            raise ValueError(f"--config {path}: {e}") from None
    return values


def _checked(f, value):
    """`value` as field `f` holds it (an int for a float field is fine, a numeric string is read as a number, as
    the command line does: YAML reads 1e-4 as a string); else a ValueError naming the field."""
    allowed = typing.get_args(f.type) if isinstance(f.type, types.UnionType) else (f.type,)
    if value is None and type(None) in allowed:
        return None
    kind = next(t for t in allowed if t is not type(None))
    ok = False
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind in (int, float) and not isinstance(value, bool):
        if isinstance(value, str):
            try:
                value = kind(value)
            except ValueError:
                pass
        ok = isinstance(value, int) or (kind is float and isinstance(value, float))
        value = kind(value) if ok else value
    elif kind is str:
        ok = isinstance(value, str)
    elif typing.get_origin(kind) is list:
        if isinstance(value, str):
            value = [value]
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    if not ok:
        raise ValueError(f"{f.name}: expected {_type_name(f.type)}, got {value!r}")
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ValueError(f"{f.name}: {value!r} is not one of {', '.join(map(str, choices))}")
    return value


def _type_name(tp) -> str:
    return str(tp).replace("<class '", "").replace("'>", "").replace("NoneType", "null")
