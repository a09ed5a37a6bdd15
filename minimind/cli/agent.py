"""`minimind agent`: agent RL. GRPO on multi-turn rollouts in which the model may call tools (`--tools`, default
the built-in calculator): each tool call is run and its result fed back, until an answer or `--max_turns`. Only
the model's own turns are trained on. Rewards (`--reward`) also see the calls made: the built-ins `tool_call`
(well-formed calls that ran) and `tool_result` (the answer uses a tool's result). Default prompts: the built-in
arithmetic word problems, English and Chinese.

    minimind agent --pretrained_path tooluse_sft --output_dir agent_out
    minimind agent --pretrained_path tooluse_sft --max_turns 4 --reward numeric --reward tool_call=0.5
"""

from ..train.config import command_defaults
from .grpo import _bool, add_rl_flags
from .train import add_training_flags, training_config


def add_arguments(p):
    add_training_flags(p, "agent")
    add_rl_flags(p, "agent")
    d = command_defaults("agent")
    g = p.add_argument_group("agent")
    g.add_argument("--max_turns", type=int, help=f"model turns per rollout, tool results between them "
                                                 f"(default: {d['max_turns']})")
    g.add_argument("--tools", action="append", metavar="NAME", help="a built-in tool the prompts offer; repeatable "
                                                                    f"(default: {' '.join(d['tools'])})")
    g.add_argument("--loss_type", choices=("grpo", "cispo"), help="as minimind grpo (default: grpo)")
    g.add_argument("--scale_rewards", type=_bool, metavar="BOOL", help="as minimind grpo (default: true)")


def main(args):
    from ..train.agent import run_agent

    run_agent(training_config(args, "agent"))
