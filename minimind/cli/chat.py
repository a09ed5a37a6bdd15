"""`minimind chat MODEL`: interactive multi-turn chat in the terminal (the description is minimind/infer/chat.py's)."""

from . import docstring_of
from .options import add_model_flags, add_sampling_flags, load_for_inference, sampling_settings

DESCRIPTION = docstring_of("minimind.infer.chat")


def add_arguments(p):
    add_model_flags(p)
    add_sampling_flags(p, 512)
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--context", type=int, default=None, help="context window for prompt + answer (default: the "
                                                             "model's max_position_embeddings)")
    p.add_argument("--completion", action="store_true", help="plain completion instead of chat")
    p.add_argument("--tools", nargs="?", const="all", default=None, metavar="NAMES",
                   help="offer the built-in tools to the model and run the calls it makes: all of them, or those "
                        "named, comma-separated (calculator, convert_units, days_between, add_days, weekday)")
    p.add_argument("--enable_thinking", choices=("on", "off"), default=None,
                   help="open the thinking (on) or skip it (off); default: the model decides")
    p.add_argument("--hide_thinking", action="store_true", help="do not show the thinking (/think toggles it)")


def main(args):
    from ..infer.chat import COMMANDS, ChatSession, completion_reason, run_chat

    model, tokenizer = load_for_inference(args)
    reason = "asked for with --completion" if args.completion else completion_reason(args.model, tokenizer)
    settings = sampling_settings(args)
    settings["seed"] = args.seed
    tools = None if args.tools is None else args.tools.split(",")
    if args.tools == "all":
        from ..tools import TOOLS

        tools = list(TOOLS)
    thinking = None if args.enable_thinking is None else args.enable_thinking == "on"
    session = ChatSession(model, tokenizer, system=args.system, chat=reason is None, context=args.context,
                          max_new_tokens=args.max_new_tokens, tools=tools, enable_thinking=thinking, **settings)
    if reason is None:
        banner = (f"minimind chat: {args.model} (context {session.context} tokens). Commands: {COMMANDS}; "
                  "Ctrl-C stops an answer.")
    else:
        banner = (f"minimind chat: {args.model} runs as plain completion, {reason}: each line is continued as "
                  f"text, without history. Commands: {COMMANDS}.")
    if tools:
        banner += f" Tools: {', '.join(tools)}."
    run_chat(session, show_speed=args.show_speed, banner=banner, show_thinking=not args.hide_thinking)
