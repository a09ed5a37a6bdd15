"""`TrainConfig`: every setting of a training run, typed, declared once (`setting`): its default and each command's
where it differs, its help and its --help section. No torch here: the command line builds its parsers from these
fields (`minimind.cli.train.add_training_flags`) without loading it.

The training commands share the fields without a `command` in their metadata; lora, dpo, distill, grpo, ppo and
agent add their own. A run's settings come from, in order of precedence: the flags given on the command line, then
the `--config FILE` (YAML or JSON, e.g. the `args.json` a run wrote), then the command's defaults.

    from minimind.train.config import TrainConfig
    config = TrainConfig(preset="tiny", max_steps=300, output_dir="out")
"""

import json
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from ..presets import DEFAULT_MODEL, LORA_TARGETS, PRESETS

COMMANDS = ("train", "lora", "dpo", "distill", "grpo", "ppo", "agent")
STAGES = {"train": ("pretrain", "sft"), "lora": ("sft", "pretrain"), "dpo": ("dpo",), "distill": ("sft", "pretrain"),
          "grpo": ("rl",), "ppo": ("rl",), "agent": ("rl",)}
RL = ("grpo", "ppo", "agent")
DTYPE_CHOICES = ("auto", "fp32", "bf16", "fp16")
OPTIMIZER_CHOICES = ("adamw", "muon")

def rl(value) -> dict:
    """The same default for the three RL commands: a short run over prompts, whose rollouts make each step costly."""
    return {command: value for command in RL}


def setting(default, help: str | dict, group: str | dict, *, command=None, per_command: dict | None = None,
            choices=None, shown: str | None = None, **flag):
    """A field of `TrainConfig` with everything the command line says of it.

    help: the flag's help (or {command: help}); group: its --help section (or {command: section}); command: the
    command or commands that take it (None: every one); per_command: {command: its default there}, where it differs;
    choices: the values allowed (or {command: its values}); shown: the default as --help words it (else the value); flag: argparse's extras
    (metavar, nargs, const, aliases={command: [other flags]})."""
    metadata = {"help": help, "group": group, "command": command, "per_command": per_command or {},
                "choices": choices if isinstance(choices, dict) else tuple(choices) if choices else None, "shown": shown, "flag": flag}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


MODEL = "model (seed flags; a --preset fills those not given)"
TRAINING, OTHER = "training (seed flags)", "other (seed flags)"
DATA, OPTIMISATION, MONITORING = "data", "optimisation", "checkpoints and monitoring"
ROLLOUTS, UPDATE, LORA_RL = "rollouts and rewards", "policy update", "LoRA-only RL"
LORA = {"lora": "LoRA", **rl(LORA_RL)}
FOR_RL = {"lora": 0.0, "dpo": 0.0, **rl(0.0)}  # no dropout: the policy would differ from its reference by noise alone


@dataclass
class TrainConfig:
    """Every setting of a training run, typed, declared once with its help, its --help section and each command's
    default. The fields without `command` are shared by the seven training commands."""

    # model (seed flags; None: filled from --preset, else DEFAULT_MODEL, when the run starts)
    preset: str | None = setting(None, "named model size", MODEL, choices=sorted(PRESETS), shown="",
                                 aliases={"distill": ["--student_preset"]})
    hidden_size: int | None = setting(None, "hidden dimension", MODEL, shown=str(DEFAULT_MODEL["hidden_size"]))
    num_layers: int | None = setting(None, "number of layers", MODEL, shown=str(DEFAULT_MODEL["num_layers"]))
    num_heads: int | None = setting(None, "attention heads", MODEL, shown=str(DEFAULT_MODEL["num_heads"]))
    num_kv_heads: int | None = setting(None, "key/value heads, GQA", MODEL, shown=str(DEFAULT_MODEL["num_kv_heads"]))
    vocab_size: int | None = setting(None, "vocabulary size", MODEL, shown=str(DEFAULT_MODEL["vocab_size"]))
    max_seq_len: int = setting(512, "training sequence length", MODEL, per_command={**rl(256), "agent": 512})
    dropout: float = setting(0.1, "dropout rate", MODEL, per_command=FOR_RL)
    use_moe: int | None = setting(None, "mixture of experts", MODEL, choices=(0, 1), shown=str(DEFAULT_MODEL["use_moe"]))
    # training (seed flags)
    epochs: int = setting(3, "training epochs", TRAINING, per_command=rl(1))
    batch_size: int = setting(4, "micro-batch size per process", TRAINING)
    learning_rate: float = setting(1e-4, "peak learning rate", TRAINING,
                                   per_command={"lora": 2e-4, "dpo": 5e-6, **rl(1e-5)})
    weight_decay: float = setting(0.01, "AdamW weight decay", TRAINING)
    grad_clip: float = setting(1.0, "gradient clipping norm, 0 = off", TRAINING)
    # other (seed flags)
    device: str | None = setting(None, "cuda, cuda:N, mps or cpu", OTHER, shown="the best available")
    output_dir: str = setting("./output", "where models and state go", OTHER)
    pretrained_path: str = setting("", "start from these weights: .pth, .safetensors or a model directory", OTHER,
                                   shown="none")
    log_interval: int = setting(10, "log every N steps", OTHER)
    save_interval: int = setting(1, "save model_epoch_N.pth every N epochs", OTHER)
    # data
    stage: str = setting("pretrain", "what to train on", DATA, choices=STAGES,
                         per_command={"lora": "sft", "dpo": "dpo", "distill": "sft", **rl("rl")})
    data: str | None = setting(None, "file, folder, glob or prepared shards", DATA, shown="built-in corpus")
    tokenizer: str | None = setting(None, "tokenizer directory", DATA,
                                    shown="the one saved with --pretrained_path, else the shipped 6400-token one")
    skip_bad_records: bool = setting(False, "warn about and skip malformed records", DATA, shown="")
    num_workers: int = setting(0, "DataLoader worker processes", DATA)
    group_by_length: bool = setting(False, "batch conversations of similar length together (less padding: SFT "
                                           "of mixed lengths runs up to ~1.6x faster; the batches stay random)",
                                    DATA, shown="")
    # MiniMind-3's data options (minimind.data.messages.Augment), drawn per record from --seed
    add_system_ratio: float = setting(0.0, "share of the conversations with no system message and no tools that get "
                                      "a generic system prompt (MiniMind-3's add_system_ratio; it uses 0.2)", DATA,
                                      command=("train", "lora", "distill", "grpo", "ppo"))
    empty_think_ratio: float = setting(1.0, "share of the conversations that keep the empty <think></think> blocks "
                                       "the chat template writes, the others lose them (MiniMind-3's "
                                       "empty_think_ratio; it uses 0.2; minimind's own template writes none)", DATA,
                                       command=("train", "lora", "distill", "dpo"))
    # optimisation
    accumulation_steps: int = setting(1, "micro-batches per optimizer step", OPTIMISATION)
    warmup_ratio: float = setting(0.05, "warmup as a fraction of all steps", OPTIMISATION)
    warmup_steps: int | None = setting(None, "warmup steps (overrides --warmup_ratio)", OPTIMISATION, shown="")
    min_lr_ratio: float = setting(0.1, "cosine decays to learning_rate * this", OPTIMISATION)
    optimizer: str = setting("adamw", "adamw, or muon: Muon for the hidden weight matrices and AdamW for embeddings, "
                             "norms and biases, one learning rate for both", OPTIMISATION, choices=OPTIMIZER_CHOICES)
    dtype: str = setting("auto", "autocast precision", OPTIMISATION, choices=DTYPE_CHOICES,
                         shown="auto: bf16 where supported, else fp16 on GPU, else fp32")
    compile: bool = setting(False, "torch.compile the model", OPTIMISATION, shown="")
    seed: int = setting(42, "random seed", OPTIMISATION)
    max_steps: int = setting(0, "stop after N optimizer steps; the schedule is planned for the capped length",
                             OPTIMISATION, shown="0 = all epochs")
    fsdp: bool = setting(False, "under torchrun: shard the model with FSDP2 instead of DDP", OPTIMISATION, shown="")
    # checkpoints and monitoring
    save_steps: int = setting(200, "write the resumable state every N steps (0 = only at epoch ends)", MONITORING,
                              per_command=rl(50))
    resume: str | None = setting(None, "continue from a training state (bare --resume: the latest in --output_dir)",
                                 MONITORING, shown="", nargs="?", const="latest")
    eval_interval: int = setting(200, "evaluate and sample every N steps (0 = only at the end)", MONITORING,
                                 per_command=rl(50))
    eval_batches: int = setting(50, "held-out batches per evaluation", MONITORING, per_command=rl(4))
    report_to: str = setting("none", "none, tensorboard, wandb (comma-separated)", MONITORING)
    # minimind lora (and LoRA-only RL: grpo / ppo / agent with --lora_rank)
    lora_rank: int = setting(8, {"lora": "rank r of the adapters", **rl("train LoRA adapters of this rank only, "
                                                                      "the base frozen (0 = the full model)")},
                             LORA, command=("lora", *RL), per_command=rl(0))
    lora_alpha: float = setting(16.0, "scale: the update is alpha/r * B A", LORA, command=("lora", *RL))
    lora_dropout: float = setting(0.05, "dropout on the adapter path", LORA, command=("lora", *RL))
    lora_targets: list[str] = setting(list(LORA_TARGETS), "linear layers to adapt, by name, space- or "
                                      "comma-separated", LORA, command=("lora", *RL), metavar="NAME")
    merge: bool = setting(False, "also write the merged full model (config.json, model.safetensors, "
                          "model_final.pth) to --output_dir; the adapter then goes to --output_dir/adapter", "LoRA",
                          command="lora", shown="")
    # minimind dpo (and the KL weight of grpo / ppo / agent)
    beta: float = setting(0.1, {"dpo": "strength of the pull towards the reference: reward = beta * "
                                       "(log pi - log pi_ref)",
                                **rl("weight of the KL to the frozen starting model; 0 = no reference")},
                          {"dpo": "DPO", **rl(UPDATE)}, command=("dpo", *RL), per_command=rl(0.02))
    # minimind distill (and the rollout temperature of grpo / ppo / agent)
    teacher: str | None = setting(None, "the teacher (required, here or in --config): a training output directory, "
                                  "a model directory, or a .pth/.safetensors file with config.json beside it (same "
                                  "tokenizer)", "distillation", command="distill", shown="", metavar="MODEL")
    student_config: str | None = setting(None, "the student's config.json or model directory (instead of a preset "
                                         "or size flags)", "distillation", command="distill", shown="",
                                         metavar="CONFIG")
    temperature: float = setting(2.0, {"distill": "softmax temperature T",
                                       **rl("sampling temperature of the rollouts")},
                                 {"distill": "distillation", **rl(ROLLOUTS)}, command=("distill", *RL),
                                 per_command=rl(1.0))
    alpha: float = setting(0.5, "weight of the label CE; 1 - alpha goes to the T^2 KL term", "distillation",
                           command="distill")
    # minimind grpo / ppo / agent
    num_generations: int = setting(6, "samples per prompt", ROLLOUTS, command=RL, per_command={"ppo": 2})
    max_new_tokens: int = setting(48, "longest answer sampled", ROLLOUTS, command=RL)
    reward: list[str] = setting(["numeric", "format=0.2"], "a reward: built-in NAME[:ARG], module:function or "
                                "file.py[:function], each [=WEIGHT]; repeatable, summed", ROLLOUTS, command=RL,
                                per_command={"agent": ["numeric", "format=0.2", "tool_call=0.2"]}, metavar="SPEC")
    thinking_ratio: float | None = setting(None, "share of the prompts rendered with thinking opened, the others with "
                                           "it closed (MiniMind-3's thinking_ratio: 0.9 in its grpo and ppo, 0.1 in "
                                           "its agent)", ROLLOUTS, command=RL, shown="the chat template's default")
    reward_model: str | None = setting(None, "a transformers sequence-classification model with one output, its "
                                       "score added to the reward", ROLLOUTS, command=RL, shown="", metavar="DIR")
    loss_type: str = setting("grpo", "grpo: PPO's clipped surrogate; cispo: the clipped importance weight, detached",
                             {"grpo": "GRPO", "agent": "agent"}, command=("grpo", "agent"), choices=("grpo", "cispo"))
    loss_norm: str = setting("token", "average over all tokens (DAPO), per sequence (GRPO), or by a constant "
                             "(Dr. GRPO)", UPDATE, command=RL, choices=("token", "sequence", "constant"))
    clip_eps: float = setting(0.2, "ratio clip: 1 - eps .. 1 + eps", UPDATE, command=RL)
    clip_eps_high: float | None = setting(None, "upper clip (DAPO's clip-higher; CISPO's weight cap is 1 + this)",
                                          UPDATE, command=RL, shown="--clip_eps")
    scale_rewards: bool = setting(True, "divide by the group's reward std (false: Dr. GRPO)",
                                  {"grpo": "GRPO", "agent": "agent"}, command=("grpo", "agent"))
    updates_per_batch: int = setting(1, "optimizer steps on each rollout batch (the ratio moves away from 1 after "
                                     "the first)", UPDATE, command=RL)
    vf_coef: float = setting(0.5, "weight of the value loss", "PPO", command="ppo")
    value_clip: float = setting(0.2, "value clip around the old values", "PPO", command="ppo")
    gamma: float = setting(1.0, "discount per token", "PPO", command="ppo")
    lam: float = setting(0.95, "GAE lambda", "PPO", command="ppo")
    # minimind agent
    max_turns: int = setting(3, "model turns per rollout, tool results between them", "agent", command="agent")
    tools: list[str] = setting(["calculator"], "a built-in tool the prompts offer; repeatable", "agent",
                               command="agent", metavar="NAME")

    def __post_init__(self):
        for f in fields(self):
            setattr(self, f.name, _checked(f, getattr(self, f.name)))

    def to_dict(self, command: str | None = None) -> dict:
        """The settings as plain values; with `command`, only those it takes (what args.json holds)."""
        names = setting_names(command) if command else [f.name for f in fields(self)]
        values = asdict(self)
        return {k: values[k] for k in names}


def setting_names(command: str) -> list[str]:
    """The settings `minimind COMMAND` takes: the shared ones and its own."""
    return [f.name for f in fields(TrainConfig) if takes(f, command)]


def takes(f, command: str) -> bool:
    """Whether field `f` is a setting of `minimind COMMAND`."""
    owner = f.metadata.get("command") or command
    return command in owner if isinstance(owner, tuple) else owner == command


def for_command(value, command: str):
    """A per-command metadata entry (help, group) for `command`: the value itself unless it is a dict by command."""
    return value[command] if isinstance(value, dict) else value


def command_default(f, command: str):
    """Field `f`'s default in `minimind COMMAND`."""
    if command in f.metadata["per_command"]:
        value = f.metadata["per_command"][command]
        return list(value) if isinstance(value, list) else value
    return f.default_factory() if f.default is MISSING else f.default


def command_defaults(command: str) -> dict:
    """Every setting of `command` with its default."""
    return {f.name: command_default(f, command) for f in fields(TrainConfig) if takes(f, command)}


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
            owner = (known[key].metadata.get("command") or "") if key in known else ""
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
    if isinstance(choices, dict):  # by command: any command's value is a value of the field
        choices = tuple(dict.fromkeys(c for values in choices.values() for c in values))
    if choices and value not in choices:
        raise ValueError(f"{f.name}: {value!r} is not one of {', '.join(map(str, choices))}")
    return value


def _type_name(tp) -> str:
    return str(tp).replace("<class '", "").replace("'>", "").replace("NoneType", "null")
