"""`minimind chat MODEL`: a terminal chat with streaming output.

    minimind chat out/                       # an SFT model: multi-turn chat through its ChatML template
    minimind chat out/ --system "Be brief." --temperature 0.7 --show_speed
    printf 'Hello\nHow are you?\n' | minimind chat out/ --temperature 0    # scripted, through stdin

Each answer is streamed as it is generated. The history of the conversation goes into every prompt; when it no
longer fits the context window (prompt + room for the answer), the oldest turns are dropped first. Commands:
`/reset` (forget the history), `/system TEXT` (set the system prompt; `/system` alone removes it), `/speed`
(tokens/s after each answer, on/off), `/help`, `/exit` (or Ctrl-D). Ctrl-C stops the current answer and keeps the
session (what was shown so far stays in the history).

A pretrain-only model (its training `args.json` says `stage: pretrain`), or one whose tokenizer has no chat
template, has never seen a conversation: the chat then runs as plain completion (each line is continued as text,
without history) and says so at the start. `--completion` asks for that mode on any model.

`ChatSession` holds the conversation and is usable from Python; `run_chat` is the loop over input/output streams.
"""

import builtins
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from ..checkpoint import training_args
from ..data.messages import prompt_ids
from .generate import GenerationStats, encode_prompts, stream

COMMANDS = "/reset, /system TEXT, /speed, /help, /exit"


def completion_reason(spec, tokenizer=None) -> str | None:
    """Why the model at `spec` should run as plain completion rather than chat, or None when it can chat."""
    if training_args(spec).get("stage") == "pretrain":
        return "a pretrain-only model (its args.json says stage: pretrain)"
    path = Path(spec)
    folder = path if path.is_dir() else path.parent
    config_file = folder / "tokenizer_config.json"
    if config_file.is_file() and not (folder / "chat_template.jinja").is_file():
        try:
            has_template = bool(json.loads(config_file.read_text(encoding="utf-8")).get("chat_template"))
        except (OSError, ValueError, AttributeError):
            has_template = True  # unreadable: load_tokenizer has already complained or coped
        if not has_template:
            return "its tokenizer has no chat template"
    if tokenizer is not None and not getattr(tokenizer, "chat_template", None):
        return "its tokenizer has no chat template"
    return None


class ChatSession:
    """A conversation with a model: the system prompt, the turns so far, and the sampling settings.

    `reply(text)` streams the answer and then adds both turns to the history. With `chat=False` (plain completion)
    every text is a fresh prompt to continue and no history is kept. `context`: the window the prompt plus the
    answer must fit (default: the model's max_position_embeddings)."""

    def __init__(self, model, tokenizer, system: str | None = None, chat: bool = True, context: int | None = None,
                 max_new_tokens: int = 256, **settings):
        self.model, self.tokenizer = model, tokenizer
        self.system = system
        self.chat = chat
        self.context = context or model.config.max_position_embeddings
        if self.context > model.config.max_position_embeddings:
            raise ValueError(f"context {self.context} exceeds the model's max_position_embeddings "
                             f"({model.config.max_position_embeddings})")
        self.max_new_tokens = max_new_tokens
        self.settings = settings  # generate_tokens' sampling settings, seed, stop_strings ...
        self.history: list[dict] = []  # {"role": "user" | "assistant", "content": ...}, oldest first
        self.dropped = 0  # turns dropped from the prompt so far to fit the context

    def reset(self):
        self.history = []
        self.dropped = 0

    def messages(self, text: str) -> list[dict]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.history + [{"role": "user", "content": text}]

    def prompt_ids(self, text: str) -> list[int]:
        """The prompt for a new user message: the template over the history, dropping the oldest turns (a user
        message and its answer at a time) until prompt + answer room fits the context. ValueError if the message
        alone does not fit."""
        if not self.chat:
            ids = encode_prompts(self.tokenizer, [text])[0][0].tolist()
        else:
            while True:
                ids = prompt_ids(self.tokenizer, self.messages(text))
                if len(ids) + self.max_new_tokens <= self.context or not self.history:
                    break
                self.history = self.history[2:]  # the oldest user message and its answer
                self.dropped += 2
        if len(ids) >= self.context:
            raise ValueError(f"the message is too long: {len(ids)} tokens, and the context window holds "
                             f"{self.context}")
        return ids

    def reply(self, text: str, stats: GenerationStats | None = None) -> Iterator[str]:
        """Stream the answer to `text`; once it ends (or is interrupted), both turns join the history."""
        ids = self.prompt_ids(text)
        budget = min(self.max_new_tokens, self.context - len(ids))
        answer = []
        try:
            for piece in stream(self.model, self.tokenizer, ids, budget, stats=stats, **self.settings):
                yield piece
                answer.append(piece)  # after the yield: a piece whose display was interrupted is not kept
        finally:
            if self.chat:
                self.history += [{"role": "user", "content": text},
                                 {"role": "assistant", "content": "".join(answer)}]


def run_chat(session: ChatSession, input=None, output=None, show_speed: bool = False, banner: str | None = None):
    """The chat loop: read lines from `input` (default stdin), stream answers to `output` (default stdout)."""
    input = input or sys.stdin
    output = output or sys.stdout
    interactive = input is sys.stdin and sys.stdin.isatty()

    def say(text=""):
        output.write(text + "\n")
        output.flush()

    def read_line() -> str | None:
        if interactive:  # the builtin input() gives line editing and history in a terminal
            try:
                return builtins.input(">>> ")
            except EOFError:
                return None
        line = input.readline()
        return line.rstrip("\r\n") if line else None

    if banner:
        say(banner)
    while True:
        try:
            line = read_line()
        except KeyboardInterrupt:
            say("\n(/exit or Ctrl-D to quit)")
            continue
        if line is None:
            break
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            command, _, arg = text.partition(" ")
            if command in ("/exit", "/quit"):
                break
            if command == "/reset":
                session.reset()
                say("(history cleared)")
            elif command == "/system" and not session.chat:
                say("(plain completion has no system prompt)")
            elif command == "/system":
                session.system = arg.strip() or None
                say(f"(system prompt: {session.system})" if session.system else "(system prompt removed)")
            elif command == "/speed":
                show_speed = not show_speed
                say(f"(tokens/s after each answer: {'on' if show_speed else 'off'})")
            elif command == "/help":
                say(f"commands: {COMMANDS}; Ctrl-C stops an answer")
            else:
                say(f"(unknown command {command}; commands: {COMMANDS})")
            continue
        stats = GenerationStats()
        dropped = session.dropped
        try:
            answer = session.reply(text, stats)
            try:
                for piece in answer:
                    output.write(piece)
                    output.flush()
            except KeyboardInterrupt:
                output.write(" [stopped]")
            finally:
                answer.close()
        except ValueError as e:  # the message does not fit the context window
            say(f"({e})")
            continue
        say()
        if session.dropped > dropped:
            say(f"(the oldest {session.dropped - dropped} message(s) no longer fit the context window and were "
                "dropped)")
        if show_speed:
            say(f"[{stats.new_tokens} tokens, {stats.tokens_per_second:.1f} tokens/s, prompt {stats.prompt_tokens} "
                "tokens]")
