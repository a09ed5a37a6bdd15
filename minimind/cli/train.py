"""`python train.py` / `minimind train`: pretrain or fine-tune (SFT) a MiniMind model.

Takes every flag of the seed's train.py with its default, plus the ones a real run needs. With no
arguments it pretrains the seed's model on the built-in corpus. `--config FILE` (YAML or JSON, e.g. the
args.json a run wrote) gives settings from a file; flags given on the command line override it.

    python train.py                                                    # seed defaults, built-in corpus
    python train.py --preset tiny --max_steps 300 --output_dir out     # a quick CPU run
    python train.py --stage sft --pretrained_path out --output_dir sft # fine-tune on conversations
    python train.py --config out/args.json --output_dir again          # out's run again, elsewhere
    torchrun --nproc_per_node 4 train.py --batch_size 16               # DDP on 4 GPUs
"""

import argparse
import types
import typing
from dataclasses import fields

from ..train.config import (
    DATA,
    LORA_RL,
    MODEL,
    MONITORING,
    OPTIMISATION,
    OTHER,
    ROLLOUTS,
    TRAINING,
    UPDATE,
    TrainConfig,
    build_config,
    command_default,
    for_command,
    takes,
)


def add_training_flags(p: argparse.ArgumentParser, command: str = "train"):
    """Every flag of `minimind COMMAND`, made from `TrainConfig`'s fields (`minimind.train.config.setting`): the
    field's name, type, choices, help, --help section and the command's default, which the help shows.

    Every flag defaults to None, meaning "not given": the defaults live in `TrainConfig`, and a --config file's
    settings come between the two (see `training_config`)."""
    p.add_argument("--config", metavar="FILE", help="settings from a YAML or JSON file (e.g. a run's args.json); "
                                                    "flags given here override it")
    taken = [(for_command(f.metadata["group"], command), f) for f in fields(TrainConfig) if takes(f, command)]
    taken.sort(key=lambda item: GROUPS.index(item[0]))  # stable: the fields' order within a section
    groups = {}
    for name, f in taken:
        if name not in groups:
            groups[name] = p.add_argument_group(name)
        add_flag(groups[name], f, command)
    return p


GROUPS = [MODEL, TRAINING, OTHER, DATA, OPTIMISATION, MONITORING, "LoRA", "DPO", "distillation", ROLLOUTS, UPDATE,
          LORA_RL, "GRPO", "PPO", "agent"]  # the order of --help's sections


def add_flag(group, f, command: str):
    """The flag of setting `f` in `minimind COMMAND`."""
    meta = dict(f.metadata["flag"])
    names = [f"--{f.name}", *meta.pop("aliases", {}).get(command, [])]
    kind = next(t for t in (typing.get_args(f.type) if isinstance(f.type, types.UnionType) else (f.type,))
                if t is not type(None))
    default = command_default(f, command)
    shown = f.metadata["shown"]
    if shown is None:
        shown = " ".join(map(str, default)) if isinstance(default, list) else str(default)
    help_text = for_command(f.metadata["help"], command) + (f" (default: {shown})" if shown else "")
    kw = {"dest": f.name, "help": help_text, **meta}
    if kind is bool and default is False:
        kw.update(action="store_true", default=None)
    elif kind is bool:
        kw.update(type=parse_bool, metavar="BOOL")
    elif typing.get_origin(kind) is list:
        kw.update(action="extend", nargs="+")
    else:
        kw["type"] = kind
    if f.metadata["choices"] and kind is not bool:
        kw["choices"] = for_command(f.metadata["choices"], command)
    group.add_argument(*names, **kw)


def parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def training_config(args, command: str):
    """The `TrainConfig` of a parsed command line: the command's defaults, then the --config file, then the flags
    given (those not None)."""
    given = {k: v for k, v in vars(args).items() if v is not None and k not in ("func", "command", "config")}
    return build_config(command, given, args.config)


def parse_args(argv=None, command: str = "train"):
    """The resolved `TrainConfig` of `minimind COMMAND ARGV...` (train, lora, dpo, distill): for Python use and
    tests that want a command line's settings without running it."""
    from ..train.setup import resolve
    from . import command_parser

    return resolve(training_config(command_parser(command).parse_args(argv), command))


def add_arguments(p):
    add_training_flags(p)


def main(args):
    from ..train.pretrain import run

    run(training_config(args, "train"))
