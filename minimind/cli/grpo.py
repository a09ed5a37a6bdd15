"""`minimind grpo`: reinforcement learning with GRPO (or CISPO) and offline, verifiable rewards. The policy starts from
`--pretrained_path` (required; an SFT model), samples `--num_generations` answers per prompt (default prompts: the
built-in arithmetic word problems, English and Chinese), scores them with `--reward` functions (and/or a
`--reward_model`), and learns from each answer's reward relative to its group's, with the shared trainer.

    minimind grpo --pretrained_path sft_out --output_dir grpo_out
    minimind grpo --pretrained_path sft_out --loss_type cispo --clip_eps_high 4 --beta 0
    minimind grpo --pretrained_path sft_out --data prompts.jsonl --reward my_rewards.py:score --lora_rank 8

A reward is a built-in (exact, numeric, regex:PATTERN, format, length:LO-HI, repetition), module:function or
file.py[:function], each optionally =WEIGHT; see minimind/train/rewards.py.
"""

from .train import add_training_flags, training_config


def add_arguments(p):
    add_training_flags(p, "grpo")  # its flags are TrainConfig's fields (minimind.train.config)


def main(args):
    from ..train.rl import run_grpo

    run_grpo(training_config(args, "grpo"))
