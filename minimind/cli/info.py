"""Show a model's config, its parameter counts per component and its weight memory. MODEL is a preset name (tiny,
small, medium, large, small-moe), a model directory, a config.json, or a .pth/.safetensors file with config.json
beside it."""


def add_arguments(p):
    p.add_argument("model", metavar="MODEL_OR_PRESET")
    p.add_argument("--config", default=None, help="config.json to use instead of the one beside MODEL")


def main(args):
    from ..checkpoint import load_config
    from ..info import describe

    print(describe(load_config(args.model, args.config)))
