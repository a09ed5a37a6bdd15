"""`minimind distill`: knowledge distillation. A teacher model (`--teacher`) trains a smaller student (a preset, size
flags or a config) on SFT conversations (default: the built-in ones); the loss is alpha * CE on the labels plus
(1 - alpha) * T^2 * KL between the softened distributions, with the shared trainer.

    minimind distill --teacher sft_out --preset tiny --output_dir student
"""

from ..presets import PRESETS
from .train import add_training_flags


def add_arguments(p):
    add_training_flags(p, ("sft", "pretrain"))
    g = p.add_argument_group("distillation")
    g.add_argument("--teacher", required=True, metavar="MODEL", help="the teacher: a training output directory, a "
                   "model directory, or a .pth/.safetensors file with config.json beside it (same tokenizer)")
    g.add_argument("--student_preset", dest="preset", choices=sorted(PRESETS), default=None,
                   help="the student's size (same as --preset; or give --hidden_size etc., or --student_config)")
    g.add_argument("--student_config", default=None, metavar="CONFIG",
                   help="the student's config.json or model directory (instead of a preset or size flags)")
    g.add_argument("--temperature", type=float, default=2.0, help="softmax temperature T (default: %(default)s)")
    g.add_argument("--alpha", type=float, default=0.5, help="weight of the label CE; 1 - alpha goes to the T^2 KL "
                                                            "term (default: %(default)s)")


def main(args):
    from ..train.distill import run_distill
    from ..train.setup import resolve_args

    run_distill(resolve_args(args))
