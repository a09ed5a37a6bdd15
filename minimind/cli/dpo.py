"""`minimind dpo`: Direct Preference Optimization. The policy starts from `--pretrained_path` (required) and learns
from preference pairs (default: the built-in ones) against a frozen copy of itself, with the shared trainer.

    minimind dpo --pretrained_path sft_out --output_dir dpo_out --beta 0.1

A resumed run rebuilds its reference from `--pretrained_path`.
"""

from .train import add_training_flags, training_config


def add_arguments(p):
    add_training_flags(p, "dpo")  # its flags are TrainConfig's fields (minimind.train.config)


def main(args):
    from ..train.dpo import run_dpo

    run_dpo(training_config(args, "dpo"))
