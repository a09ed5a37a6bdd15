"""`minimind distill`: knowledge distillation. A teacher model (`--teacher`) trains a smaller student (a preset, size
flags or a config) on SFT conversations (default: the built-in ones); the loss is alpha * CE on the labels plus
(1 - alpha) * T^2 * KL between the softened distributions, with the shared trainer.

    minimind distill --teacher sft_out --preset tiny --output_dir student
"""

from ..presets import PRESETS
from ..train.config import command_defaults
from .train import add_training_flags, training_config


def add_arguments(p):
    add_training_flags(p, "distill")
    d = command_defaults("distill")
    g = p.add_argument_group("distillation")
    g.add_argument("--teacher", metavar="MODEL", help="the teacher (required, here or in --config): a training output "
                   "directory, a model directory, or a .pth/.safetensors file with config.json beside it (same "
                   "tokenizer)")
    g.add_argument("--student_preset", dest="preset", choices=sorted(PRESETS),
                   help="the student's size (same as --preset; or give --hidden_size etc., or --student_config)")
    g.add_argument("--student_config", metavar="CONFIG",
                   help="the student's config.json or model directory (instead of a preset or size flags)")
    g.add_argument("--temperature", type=float, help=f"softmax temperature T (default: {d['temperature']})")
    g.add_argument("--alpha", type=float, help="weight of the label CE; 1 - alpha goes to the T^2 KL term "
                                               f"(default: {d['alpha']})")


def main(args):
    from ..train.distill import run_distill

    run_distill(training_config(args, "distill"))
