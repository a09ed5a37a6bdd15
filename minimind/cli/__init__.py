"""The `minimind` command line: a table of commands.

Each command's module here declares its arguments (`add_arguments(parser)`) and its `main(args)`, which calls the
same functions a Python user would. The modules import torch and transformers only inside `main`, so that
`minimind --help` and every `minimind COMMAND --help` answer at once.
"""

import argparse
import ast
import functools
import importlib
import sys
from pathlib import Path

# command: (its module in minimind.cli, its line in `minimind --help`)
COMMANDS = {
    "info": ("info", "config, parameter counts per component, weight memory"),
    "train": ("train", "pretrain or fine-tune (SFT) a model; same as python train.py"),
    "lora": ("lora", "LoRA fine-tuning of a base model: saves the adapter (--merge: a full model too)"),
    "dpo": ("dpo", "DPO on preference pairs (default: the built-in ones) against a frozen reference"),
    "distill": ("distill", "knowledge distillation: a teacher MODEL trains a smaller student"),
    "grpo": ("grpo", "reinforcement learning: GRPO / CISPO with offline rewards (default: built-in arithmetic task)"),
    "ppo": ("ppo", "reinforcement learning: PPO with a value head, GAE and offline rewards"),
    "agent": ("agent", "agent RL: GRPO on multi-turn rollouts that call tools (default: the calculator)"),
    "tokenizer": ("tokenizer", "train a byte-level BPE tokenizer"),
    "data": ("data", "prepare token shards, corpus statistics"),
    "generate": ("generate", "complete a prompt (sampling flags, --stream, --num_samples)"),
    "chat": ("chat", "interactive multi-turn chat in the terminal, streaming"),
    "eval": ("evaluate", "loss, perplexity, bits per byte on held-out text"),
    "serve": ("serve", "OpenAI-compatible HTTP server with a web chat page"),
    "export": ("export", "export to a Hugging Face directory (Llama / Mixtral) or a GGUF file (llama.cpp, Ollama)"),
    "import": ("import_checkpoint", "convert a public MiniMind .pth checkpoint into a minimind model directory"),
}


def docstring_of(module: str) -> str:
    """A module's docstring, read from its source without importing it (importing it would load torch): the
    commands whose library module documents them use it as their --help description."""
    path = Path(__file__).parent.parent.joinpath(*module.split(".")[1:])  # not find_spec: it imports the packages
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    return ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))


def description(module) -> str:
    return getattr(module, "DESCRIPTION", None) or module.__doc__


def _command(make_parser, name: str, **kw) -> argparse.ArgumentParser:
    """`make_parser(**kw)` (argparse.ArgumentParser or a subparsers' add_parser) filled by command `name`'s module."""
    module = importlib.import_module(f".{COMMANDS[name][0]}", __name__)
    p = make_parser(description=description(module), formatter_class=argparse.RawDescriptionHelpFormatter, **kw)
    module.add_arguments(p)
    p.set_defaults(func=module.main)
    return p


def command_parser(name: str, prog: str | None = None) -> argparse.ArgumentParser:
    """The parser of one command alone (`python train.py` is `minimind train`'s)."""
    return _command(argparse.ArgumentParser, name, prog=prog or f"minimind {name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minimind", description="Train small language models from scratch.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, line) in COMMANDS.items():
        _command(functools.partial(sub.add_parser, name), name, help=line)
    return parser


def main(argv=None, prog: str | None = None):
    """Run `minimind ARGV...` (or, with `prog`, the one command ARGV[0] under that name: `python train.py`).
    Errors the user can fix print one line and exit with 2; Ctrl-C exits with 130."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if prog is None:
        args = build_parser().parse_args(argv)
        prog = f"minimind {args.command}"
    else:
        args = command_parser(argv[0], prog).parse_args(argv[1:])
    from ..train.metrics import setup_logging
    from ..train.trainer import TrainingError  # torch: only once a command runs

    setup_logging()  # the "minimind" logger's one console handler, for every command
    try:
        args.func(args)
    except (FileNotFoundError, ValueError, TrainingError) as e:  # DataError and DiskFullError are ValueErrors
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # a full disk under a write that is not atomic_write's (a log appended to, a picture)
        from ..io import disk_full, no_space

        where = e.filename or getattr(args, "output_dir", None) or getattr(args, "out", None)
        if not (no_space(e) or where and disk_full(e, Path(where))):
            raise
        print(f"{prog}: error: no space left on the device{f' while writing to {where}' if where else ''}; free some "
              "space, or write elsewhere, and run the command again", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        # a training command (it has --resume) saved its state every --save_steps steps in its output directory
        hint = "; continue with the same command and --resume" if hasattr(args, "resume") else ""
        print(f"\n{prog}: interrupted{hint}", file=sys.stderr)
        sys.exit(130)
