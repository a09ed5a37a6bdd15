"""The `minimind` command line. Each subcommand parses its flags and calls the package's functions."""

import argparse
import sys


def cmd_info(args):
    from .checkpoint import load_config
    from .info import describe

    print(describe(load_config(args.model, args.config)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minimind", description="Train small language models from scratch.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("info", help="config, parameter counts per component, weight memory",
                       description="Show a model's config, its parameter counts per component and its weight "
                                   "memory. MODEL is a preset name (tiny, small, medium, large, small-moe), a model "
                                   "directory, a config.json, or a .pth/.safetensors file with config.json beside it.")
    p.add_argument("model", metavar="MODEL_OR_PRESET")
    p.add_argument("--config", default=None, help="config.json to use instead of the one beside MODEL")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"minimind {args.command}: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
