"""`minimind ppo`: reinforcement learning with PPO. The policy starts from `--pretrained_path` (required; an SFT model)
and gets a value head on its last hidden state; rollouts of the prompts (default: the built-in arithmetic word
problems) are scored by `--reward` functions (and/or a `--reward_model`), the KL to the starting model is paid per
token, and GAE advantages drive a clipped policy loss plus a clipped value loss, with the shared trainer.

    minimind ppo --pretrained_path sft_out --output_dir ppo_out
    minimind ppo --pretrained_path sft_out --vf_coef 0.5 --gamma 1 --lam 0.95 --lora_rank 8

The saved model is the policy alone (the value head is only in the training state).
"""

from .train import add_training_flags, training_config


def add_arguments(p):
    add_training_flags(p, "ppo")  # its flags are TrainConfig's fields (minimind.train.config)


def main(args):
    from ..train.ppo import run_ppo

    run_ppo(training_config(args, "ppo"))
