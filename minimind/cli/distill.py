"""`minimind distill`: knowledge distillation. A teacher model (`--teacher`) trains a smaller student (a preset, size
flags or a config) on SFT conversations (default: the built-in ones); the loss is alpha * CE on the labels plus
(1 - alpha) * T^2 * KL between the softened distributions, with the shared trainer.

    minimind distill --teacher sft_out --preset tiny --output_dir student
"""

from .train import add_training_flags, training_config


def add_arguments(p):
    add_training_flags(p, "distill")  # its flags are TrainConfig's fields (minimind.train.config)


def main(args):
    from ..train.distill import run_distill

    run_distill(training_config(args, "distill"))
