"""`minimind agent`: agent RL. GRPO on multi-turn rollouts in which the model may call tools (`--tools`, default
the built-in calculator): each tool call is run and its result fed back, until an answer or `--max_turns`. Only
the model's own turns are trained on. Rewards (`--reward`) also see the calls made: the built-ins `tool_call`
(well-formed calls that ran) and `tool_result` (the answer uses a tool's result). Default prompts: the built-in
arithmetic word problems, English and Chinese.

    minimind agent --pretrained_path tooluse_sft --output_dir agent_out
    minimind agent --pretrained_path tooluse_sft --max_turns 4 --reward numeric --reward tool_call=0.5
"""

from .train import add_training_flags, training_config


def add_arguments(p):
    add_training_flags(p, "agent")  # its flags are TrainConfig's fields (minimind.train.config)


def main(args):
    from ..train.agent import run_agent

    run_agent(training_config(args, "agent"))
