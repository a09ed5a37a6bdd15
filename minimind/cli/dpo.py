"""`minimind dpo`: Direct Preference Optimization. The policy starts from `--pretrained_path` (required) and learns
from preference pairs (default: the built-in ones) against a frozen copy of itself, with the shared trainer.

    minimind dpo --pretrained_path sft_out --output_dir dpo_out --beta 0.1

A resumed run rebuilds its reference from `--pretrained_path`.
"""

from .train import add_training_flags


def add_arguments(p):
    add_training_flags(p, ("dpo",))
    g = p.add_argument_group("DPO")
    g.add_argument("--beta", type=float, default=0.1, help="strength of the pull towards the reference: reward = "
                                                           "beta * (log pi - log pi_ref) (default: %(default)s)")
    # dropout would make the policy differ from the reference by noise alone
    p.set_defaults(learning_rate=5e-6, dropout=0.0)


def main(args):
    from ..train.dpo import run_dpo
    from ..train.setup import resolve_args

    run_dpo(resolve_args(args))
