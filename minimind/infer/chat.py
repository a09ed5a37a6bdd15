"""`minimind chat MODEL`: a terminal chat with streaming output.

    minimind chat out/                       # an SFT model: multi-turn chat through its ChatML template
    minimind chat out/ --system "Be brief." --temperature 0.7 --show_speed
    printf 'Hello\nHow are you?\n' | minimind chat out/ --temperature 0    # scripted, through stdin

    minimind chat out/tool/ --tools            # offer the built-in tools and run the calls the model makes
    minimind chat out/ --enable_thinking on --hide_thinking

Each answer is streamed as it is generated. The history of the conversation goes into every prompt; when it no
longer fits the context window (prompt + room for the answer), the oldest turns are dropped first. Commands:
`/reset` (forget the history), `/system TEXT` (set the system prompt; `/system` alone removes it), `/speed`
(tokens/s after each answer, on/off), `/think` (show or hide the thinking), `/help`, `/exit` (or Ctrl-D). Ctrl-C
stops the current answer and keeps the session (what was shown so far stays in the history).

Thinking (what the model writes inside `<think>...</think>`) is shown dimmed before the answer, or hidden
(`--hide_thinking`, `/think`); `--enable_thinking on|off` asks the template to open or skip it. With `--tools`, the
built-in tools (`minimind.tools`: calculator, unit conversion, dates) are offered to the model; each call it makes
is printed as `-> name({...}) = result`, run, and its result fed back for the model to go on (at most
MAX_TOOL_ROUNDS calls in a row).

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
from ..data.parse import StreamParser
from .generate import GenerationStats, encode_prompts, stream

COMMANDS = "/reset, /system TEXT, /speed, /think, /help, /exit"

MAX_TOOL_ROUNDS = 4


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

    `events(text)` streams what the model writes, read (`minimind.data.parse`): ("reasoning", text),
    ("content", text), ("tool_call", {"name", "arguments"}) and ("tool_result", text) after a call it ran; then the
    turn joins the history. `reply(text)` streams the answer's text alone. With `chat=False` (plain completion)
    every text is a fresh prompt to continue and no history is kept. `context`: the window the prompt plus the
    answer must fit (default: the model's max_position_embeddings). `tools`: names of built-in tools to offer and
    run (None: none). `enable_thinking`: the template's switch (None: the model decides)."""

    def __init__(self, model, tokenizer, system: str | None = None, chat: bool = True, context: int | None = None,
                 max_new_tokens: int = 256, tools: list[str] | None = None, enable_thinking: bool | None = None,
                 **settings):
        from ..tools import tool_schemas

        self.model, self.tokenizer = model, tokenizer
        self.system = system
        self.chat = chat
        self.tools = tool_schemas(tools) if tools is not None else None
        self.enable_thinking = enable_thinking
        self.context = context or model.config.max_position_embeddings
        if self.context > model.config.max_position_embeddings:
            raise ValueError(f"context {self.context} exceeds the model's max_position_embeddings "
                             f"({model.config.max_position_embeddings})")
        self.max_new_tokens = max_new_tokens
        self.settings = settings  # generate_tokens' sampling settings, seed, stop_strings ...
        self.history: list[dict] = []  # messages ({"role", "content", ...}), oldest first
        self.dropped = 0  # turns dropped from the prompt so far to fit the context

    def reset(self):
        self.history = []
        self.dropped = 0

    def messages(self, text: str | None, turn: list[dict] = ()) -> list[dict]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        user = [{"role": "user", "content": text}] if text is not None else []
        return system + self.history + user + list(turn)

    def prompt_ids(self, text: str | None, turn: list[dict] = ()) -> list[int]:
        """The prompt for a new user message (and what the turn holds so far: calls and results): the template
        over the history, dropping the oldest turns (a user message and all that answered it at a time) until
        prompt + answer room fits the context. ValueError if the message alone does not fit."""
        if not self.chat:
            ids = encode_prompts(self.tokenizer, [text])[0][0].tolist()
        else:
            while True:
                ids = prompt_ids(self.tokenizer, self.messages(text, turn), self.tools, self.enable_thinking)
                if len(ids) + self.max_new_tokens <= self.context or not self.history:
                    break
                users = [i for i, m in enumerate(self.history) if m["role"] == "user"]
                cut = users[1] if len(users) > 1 else len(self.history)  # the oldest user message and its answer
                self.history = self.history[cut:]
                self.dropped += cut
        if len(ids) >= self.context:
            raise ValueError(f"the message is too long: {len(ids)} tokens, and the context window holds "
                             f"{self.context}")
        return ids

    def events(self, text: str, stats: GenerationStats | None = None) -> Iterator[tuple]:
        """Stream what the model writes for `text`, read, running the tool calls it makes when tools are on; once
        the turn ends (or is interrupted), it joins the history (what was shown of it)."""
        from ..tools import run_tool

        ids = self.prompt_ids(text)
        turn: list[dict] = []
        try:
            for _ in range(MAX_TOOL_ROUNDS + 1):
                budget = min(self.max_new_tokens, self.context - len(ids))
                parser = StreamParser(thinking=self.chat and self.enable_thinking is True,
                                      tools=self.chat and self.tools is not None)
                message = {"role": "assistant", "content": ""}
                turn.append(message)
                pieces = stream(self.model, self.tokenizer, ids, budget, stats=stats, **self.settings)
                for event in (e for piece in pieces for e in parser.push(piece)):
                    yield event
                    self._keep(message, event)  # after the yield: what was interrupted is not kept
                for event in parser.finish():
                    yield event
                    self._keep(message, event)
                calls = message.get("tool_calls")
                if not calls or not self.chat:
                    break
                for call in calls:
                    result = run_tool(call["function"]["name"], call["function"]["arguments"])
                    turn.append({"role": "tool", "content": result})
                    yield ("tool_result", result)
                ids = self.prompt_ids(None, [{"role": "user", "content": text}] + turn)
        finally:
            if self.chat:
                self.history += [{"role": "user", "content": text}] + turn

    @staticmethod
    def _keep(message: dict, event: tuple):
        kind, value = event
        if kind == "tool_call":
            message.setdefault("tool_calls", []).append({"type": "function", "function": value})
        elif kind == "reasoning":
            message["reasoning_content"] = message.get("reasoning_content", "") + value
        else:
            message["content"] += value

    def reply(self, text: str, stats: GenerationStats | None = None) -> Iterator[str]:
        """Stream the answer's text for `text` (see `events`)."""
        events = self.events(text, stats)
        try:
            for kind, value in events:
                if kind == "content":
                    yield value
        finally:
            events.close()


def run_chat(session: ChatSession, input=None, output=None, show_speed: bool = False, banner: str | None = None,
             show_thinking: bool = True):
    """The chat loop: read lines from `input` (default stdin), stream answers to `output` (default stdout).
    Thinking is shown dimmed (in a terminal; elsewhere between "[thinking] " and a new line) unless
    `show_thinking` is off; tool calls and their results each on a line of their own."""
    ChatLoop(session, input or sys.stdin, output or sys.stdout, show_speed, show_thinking).run(banner)


class ChatLoop:
    """`run_chat`'s state: the session, where lines come from and answers go, and the two switches (/speed, /think)."""

    def __init__(self, session: ChatSession, input, output, show_speed: bool, show_thinking: bool):
        self.session, self.input, self.output = session, input, output
        self.show_speed, self.show_thinking = show_speed, show_thinking
        self.interactive = input is sys.stdin and sys.stdin.isatty()
        tty = getattr(output, "isatty", lambda: False)()
        self.dim, self.undim = ("\x1b[2m", "\x1b[0m") if tty else ("[thinking] ", "")

    def run(self, banner: str | None = None):
        if banner:
            self.say(banner)
        while True:
            try:
                line = self.read_line()
            except KeyboardInterrupt:
                self.say("\n(/exit or Ctrl-D to quit)")
                continue
            if line is None:
                break
            text = line.strip()
            if not text:
                continue
            if text.startswith("/"):
                if not self.command(text):
                    break
                continue
            self.turn(text)

    def say(self, text=""):
        self.output.write(text + "\n")
        self.output.flush()

    def read_line(self) -> str | None:
        if self.interactive:  # the builtin input() gives line editing and history in a terminal
            try:
                return builtins.input(">>> ")
            except EOFError:
                return None
        line = self.input.readline()
        return line.rstrip("\r\n") if line else None

    def command(self, text: str) -> bool:
        """Carry out a slash command; False for /exit and /quit."""
        command, _, arg = text.partition(" ")
        session = self.session
        if command in ("/exit", "/quit"):
            return False
        if command == "/reset":
            session.reset()
            self.say("(history cleared)")
        elif command == "/system" and not session.chat:
            self.say("(plain completion has no system prompt)")
        elif command == "/system":
            session.system = arg.strip() or None
            self.say(f"(system prompt: {session.system})" if session.system else "(system prompt removed)")
        elif command == "/speed":
            self.show_speed = not self.show_speed
            self.say(f"(tokens/s after each answer: {'on' if self.show_speed else 'off'})")
        elif command == "/think":
            self.show_thinking = not self.show_thinking
            self.say(f"(thinking: {'shown' if self.show_thinking else 'hidden'})")
        elif command == "/help":
            self.say(f"commands: {COMMANDS}; Ctrl-C stops an answer")
        else:
            self.say(f"(unknown command {command}; commands: {COMMANDS})")
        return True

    def turn(self, text: str):
        """One user message and the streamed answer (Ctrl-C stops it), then what the context window dropped and,
        with /speed, the rate."""
        session, stats, dropped = self.session, GenerationStats(), self.session.dropped
        try:
            answer = session.events(text, stats)
            try:
                self.show(answer)
            except KeyboardInterrupt:
                self.output.write(" [stopped]")
            finally:
                answer.close()
        except ValueError as e:  # the message does not fit the context window
            self.say(f"({e})")
            return
        self.say()
        if session.dropped > dropped:
            self.say(f"(the oldest {session.dropped - dropped} message(s) no longer fit the context window and were "
                     "dropped)")
        if self.show_speed:
            self.say(f"[{stats.new_tokens} tokens, {stats.tokens_per_second:.1f} tokens/s, prompt "
                     f"{stats.prompt_tokens} tokens]")

    def show(self, events):
        """Write the events of one turn; the state between them is whether thinking text is open."""
        output = self.output
        thinking, line_open = False, False  # thinking text is being written; the line holds text
        for kind, value in events:
            if kind == "reasoning":
                if self.show_thinking:
                    output.write(("" if thinking else self.dim) + value)
                    thinking = line_open = True
                continue
            if thinking:
                output.write(self.undim + "\n")
                thinking = line_open = False
            if kind == "content":
                output.write(value)
                line_open = not value.endswith("\n")
            elif kind == "tool_call":
                arguments = json.dumps(value["arguments"], ensure_ascii=False)
                output.write(("\n" if line_open else "") + f"-> {value['name']}({arguments})")
                line_open = True
            else:
                output.write(f" = {value}\n")
                line_open = False
            output.flush()
        if thinking:
            output.write(self.undim)
