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

from ..train.config import command_defaults
from .train import add_training_flags, training_config


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def add_rl_flags(p, command: str):
    """The flags GRPO and PPO share: rollouts, rewards, the clipped ratio, the KL pull, LoRA-only training."""
    d = command_defaults(command)
    g = p.add_argument_group("rollouts and rewards")
    g.add_argument("--num_generations", type=int, help=f"samples per prompt (default: {d['num_generations']})")
    g.add_argument("--max_new_tokens", type=int, help=f"longest answer sampled (default: {d['max_new_tokens']})")
    g.add_argument("--temperature", type=float, help=f"sampling temperature of the rollouts (default: "
                                                     f"{d['temperature']})")
    g.add_argument("--reward", action="append", metavar="SPEC",
                   help="a reward: built-in NAME[:ARG], module:function or file.py[:function], each [=WEIGHT]; "
                        f"repeatable, summed (default: {' '.join(d['reward'])})")
    g.add_argument("--reward_model", metavar="DIR", help="a transformers sequence-classification model with one "
                                                         "output, its score added to the reward")
    g = p.add_argument_group("policy update")
    g.add_argument("--beta", type=float, help="weight of the KL to the frozen starting model; 0 = no reference "
                                              f"(default: {d['beta']})")
    g.add_argument("--clip_eps", type=float, help=f"ratio clip: 1 - eps .. 1 + eps (default: {d['clip_eps']})")
    g.add_argument("--clip_eps_high", type=float, help="upper clip (DAPO's clip-higher; CISPO's weight cap is "
                                                       "1 + this) (default: --clip_eps)")
    g.add_argument("--loss_norm", choices=("token", "sequence", "constant"),
                   help="average over all tokens (DAPO), per sequence (GRPO), or by a constant (Dr. GRPO) "
                        f"(default: {d['loss_norm']})")
    g.add_argument("--updates_per_batch", type=int, help="optimizer steps on each rollout batch (the ratio "
                                                         f"moves away from 1 after the first) (default: "
                                                         f"{d['updates_per_batch']})")
    g = p.add_argument_group("LoRA-only RL")
    g.add_argument("--lora_rank", type=int, help="train LoRA adapters of this rank only, the base frozen "
                                                 f"(default: {d['lora_rank']} = full model)")
    g.add_argument("--lora_alpha", type=float, help=f"LoRA scaling alpha (default: {d['lora_alpha']})")
    g.add_argument("--lora_dropout", type=float, help=f"LoRA dropout (default: {d['lora_dropout']})")
    g.add_argument("--lora_targets", action="append", help="linear layers to adapt (default: all)")


def add_arguments(p):
    add_training_flags(p, "grpo")
    add_rl_flags(p, "grpo")
    g = p.add_argument_group("GRPO")
    g.add_argument("--loss_type", choices=("grpo", "cispo"), help="grpo: PPO's clipped surrogate; cispo: the "
                                                                  "clipped importance weight, detached (default: grpo)")
    g.add_argument("--scale_rewards", type=_bool, metavar="BOOL", help="divide by the group's reward std "
                                                                       "(false: Dr. GRPO) (default: true)")


def main(args):
    from ..train.rl import run_grpo

    run_grpo(training_config(args, "grpo"))
