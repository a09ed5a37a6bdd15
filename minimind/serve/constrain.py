"""JSON by constrained decoding: an answer that must be a JSON value, valid against a schema, is decoded so that it
cannot be anything else.

    grammar = Grammar.from_schema({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]})
    row = RowConstraint(grammar, token_texts(tokenizer, vocab_size), eos={2}, max_tokens=64)
    token = row.pick(proposed, ranked)  # the sampler's token if it keeps the text valid, else the best one that does

Two parts, over the schema read as a tree of `Node`s (`schema.py`: `compile_schema`, the supported subset):
- a character-level state machine over that tree: a state is a stack of frames (tuples, so states hash and a
  step copies nothing); `feed(state, char)` is the next state or None when the character cannot come next. A
  value takes at most one whitespace character before it and around its punctuation (none before the whole
  answer), so that no answer spends its tokens on blank space; object keys are the schema's properties (each
  once, in any order; free keys when it lists none), and an object closes once its required ones are in.
  `closing(state)` is the shortest text that completes the value (its missing required keys included).
- `RowConstraint`: one answer's state as its tokens come. A candidate token is checked by feeding its text, char
  by char (`Grammar.advance`, cached per state and token); eos only once the value is complete, and nothing but
  eos after it. `pick` keeps the token the sampler chose when it is valid (a draw from p, rejected and redrawn
  from p restricted to the valid tokens, is a draw from that restriction: exact); otherwise it ranks the
  vocabulary (greedy: by logit; sampled: by logit / temperature + Gumbel noise, within top-k / top-p, the
  Gumbel-max trick) and takes the first valid token. Valid also means closable in time: the state after the
  token must leave room for its `closing` text (a token per character at worst) and eos before max_tokens runs
  out, so a value that could be completed in the budget always is.

`ConstrainedGroup` is the decode engine's `Group` (`minimind.infer.engine`) with a `RowConstraint` per row: the
server's worker decodes a request under a grammar through it, in the same batch as every other request.

A grammar may also start with a choice of literal prefixes and end with a literal tail: a tool call that
tool_choice forces is `{"name": "NAME", "arguments": ` + the tool's parameters + `}\\n</tool_call>`, with
`</tool_call>` kept out of the arguments (`Grammar.forbid`).
"""

import json
from dataclasses import dataclass, field

import torch

from ..infer.engine import Group
from ..infer.sampling import make_generator, sampling_logits
from .schema import ANY, ANY_ARRAY, ANY_OBJECT, ANY_WORD, Node, compile_schema, first_chars, required_text, shortest

WHITESPACE = " \t\n\r"
DIGITS = "0123456789"
MAX_NUMBER = 32  # characters of one number (a longer one ends there)
MAX_WHITESPACE = 1  # whitespace characters before a value or punctuation


# --- the state machine ----------------------------------------------------------------------------------------------
# Frames, the innermost last:
#   ("V", node, ws)                  a value of node is next (ws: whitespace characters so far)
#   ("S", esc)                       inside a string: esc 0, 1 after a backslash, k >= 2: k - 1 hex digits to go
#   ("L", literals, matched)         writing one of the literal texts; `matched` so far
#   ("N", integer, phase, length)    a number: phase start, minus, zero, int, dot, frac, e, esign, exp
#   ("O", node, phase, used, key, ws)  an object: phase open, key (a key is on top), colon, value (its value is
#                                    on top), next (after a value), comma; used: the keys written; key: the current
#   ("A", node, phase, count, ws)    an array: phase open, value (on top), next, comma; count: values written
#   ("T", text, pos)                 a literal tail (text[pos:] to go)
#   ("P", alternatives, matched)     one of the prefixes of (prefix, node, tail) alternatives
# A step of the top frame on a character gives None (not here), or (frames that replace it, the character was
# consumed, the frame is complete, its result: a key's text).

NUMBER_ENDS = {"zero", "int", "frac", "exp"}


def _value(frame, c):
    _, node, ws = frame
    if c in WHITESPACE:
        return ([("V", node, ws + 1)], True, False, None) if ws < MAX_WHITESPACE else None
    kind = node.kind
    if kind == "union":
        node = next((o for o in node.options if c in first_chars(o)), None)
        if node is None:
            return None
        kind = node.kind
    if kind == "any":
        node, kind = {"{": (ANY_OBJECT, "object"), "[": (ANY_ARRAY, "array"), '"': (node, "string")}.get(
            c, (ANY_WORD, "literal") if c in "tfn" else (node, "number"))
    if kind == "object":
        return ([("O", node, "open", frozenset(), None, 0)], True, False, None) if c == "{" else None
    if kind == "array":
        return ([("A", node, "open", 0, 0)], True, False, None) if c == "[" else None
    if kind == "string":
        return ([("S", 0)], True, False, None) if c == '"' else None
    if kind == "literal":
        return _literal(("L", node.literals, ""), c)
    return _number(("N", kind == "integer", "start", 0), c)


def _string(frame, c):
    esc = frame[1]
    if esc == 0:
        if c == '"':
            return [], True, True, None
        if c == "\\":
            return [("S", 1)], True, False, None
        return ([frame], True, False, None) if c >= " " else None
    if esc == 1:
        if c in '"\\/bfnrt':
            return [("S", 0)], True, False, None
        return ([("S", 5)], True, False, None) if c == "u" else None
    return ([("S", esc - 1 if esc > 2 else 0)], True, False, None) if c in "0123456789abcdefABCDEF" else None


def _literal(frame, c):
    _, literals, matched = frame
    text = matched + c
    left = tuple(t for t in literals if t.startswith(text))
    if not left:
        return ([], False, True, matched) if matched in literals else None
    if left == (text,):
        return [], True, True, text
    return [("L", left, text)], True, False, None


NUMBER_STEPS = {  # phase -> {character class: next phase}; "e" and "." only for numbers, not integers
    "start": {"-": "minus", "0": "zero", "1": "int"}, "minus": {"0": "zero", "1": "int"},
    "zero": {".": "dot", "e": "e"}, "int": {"0": "int", "1": "int", ".": "dot", "e": "e"},
    "dot": {"0": "frac", "1": "frac"}, "frac": {"0": "frac", "1": "frac", "e": "e"},
    "e": {"-": "esign", "0": "exp", "1": "exp"}, "esign": {"0": "exp", "1": "exp"}, "exp": {"0": "exp", "1": "exp"},
}


def _number(frame, c):
    _, integer, phase, length = frame
    cls = "0" if c == "0" else "1" if c in DIGITS else "e" if c in "eE" else "-" if c == "-" or (
        c == "+" and phase == "e") else c
    after = NUMBER_STEPS[phase].get(cls)
    if after is not None and not (integer and cls in (".", "e")) and length < MAX_NUMBER:
        return [("N", integer, after, length + 1)], True, False, None
    return ([], False, True, None) if phase in NUMBER_ENDS else None


def _object(frame, c):
    _, node, phase, used, key, ws = frame
    if c in WHITESPACE and phase in ("open", "colon", "next", "comma"):
        return ([frame[:5] + (ws + 1,)], True, False, None) if ws < MAX_WHITESPACE else None
    can_close = node.required <= used
    names = [json.dumps(n, ensure_ascii=False) for n, _ in node.properties if n not in used]
    more = bool(names) or (not node.properties and node.free is not None)
    if phase in ("open", "comma") and c == '"' and more:
        top = ("S", 0) if not node.properties else ("L", tuple(names), '"')
        return [("O", node, "key", used, None, 0), top], True, False, None
    if phase in ("open", "next") and c == "}" and can_close:
        return [], True, True, None
    if phase == "colon" and c == ":":
        return [("O", node, "value", used, key, 0), ("V", node.value(key), 0)], True, False, None
    if phase == "next" and c == "," and more:
        return [("O", node, "comma", used, None, 0)], True, False, None
    return None


def _array(frame, c):
    _, node, phase, count, ws = frame
    if c in WHITESPACE and phase != "value":
        return ([frame[:4] + (ws + 1,)], True, False, None) if ws < MAX_WHITESPACE else None
    full = node.max_items is not None and count >= node.max_items
    if phase in ("open", "next") and c == "]":
        return ([], True, True, None) if count >= node.min_items else None
    if phase == "next" and c == ",":
        return ([("A", node, "comma", count, 0)], True, False, None) if not full else None
    if phase in ("open", "comma") and not full:
        return [("A", node, "value", count, 0), ("V", node.items, MAX_WHITESPACE)], False, False, None
    return None


def _tail(frame, c):
    _, text, pos = frame
    if c != text[pos]:
        return None
    return ([], True, True, None) if pos + 1 == len(text) else ([("T", text, pos + 1)], True, False, None)


def _prefix(frame, c):
    _, alternatives, matched = frame
    text = matched + c
    left = tuple(a for a in alternatives if a[0].startswith(text))
    if not left:
        return None
    if len(left) == 1 and left[0][0] == text:
        return start_frames(*left[0][1:], space=False), True, False, None
    return [("P", left, text)], True, False, None


STEPS = {"V": _value, "S": _string, "L": _literal, "N": _number, "O": _object, "A": _array, "T": _tail,
         "P": _prefix}


def start_frames(node: Node, tail: str, space: bool) -> list:
    """The frames of a value of `node` then `tail`; `space`: one whitespace character may come first."""
    return ([("T", tail, 0)] if tail else []) + [("V", node, 0 if space else MAX_WHITESPACE)]


def _child_done(stack: tuple, result) -> tuple:
    """The stack once its top frame is complete (and gone): the parent object or array takes the next step."""
    if not stack:
        return stack
    parent = stack[-1]
    if parent[0] == "O":
        _, node, phase, used, key, _ = parent
        if phase == "key":
            parent = ("O", node, "colon", used, json.loads(result) if node.properties else None, 0)
        else:
            parent = ("O", node, "next", used | {key}, None, 0)
    elif parent[0] == "A":
        parent = ("A", parent[1], "next", parent[3] + 1, 0)
    return stack[:-1] + (parent,)


def feed(stack: tuple, c: str) -> tuple | None:
    """The state after character `c`, or None if `c` cannot come next."""
    while stack:
        out = STEPS[stack[-1][0]](stack[-1], c)
        if out is None:
            return None
        frames, consumed, done, result = out
        stack = _child_done(stack[:-1], result) if done else stack[:-1] + tuple(frames)
        if consumed:
            return stack
    return None  # the value is complete: nothing more


def can_end(stack: tuple) -> bool:
    """Whether the text may end here (the value is complete; a number or literal at the top level may be)."""
    if not stack:
        return True
    if len(stack) > 1:
        return False
    frame = stack[0]
    return (frame[0] == "N" and frame[2] in NUMBER_ENDS) or (frame[0] == "L" and frame[2] in frame[1])


def closing(stack: tuple) -> str:
    """The shortest text that completes the value from this state (its missing required keys and items included),
    so that the closing text of the state after its first character is the rest of it."""
    top = stack[-1] if stack else None
    if top is not None and top[0] == "L":  # which literal (a key: which property) decides what follows
        return min((text[len(top[2]):] + _closing(stack[:-1], text) for text in top[1]), key=len)
    return _closing(stack, None)


def _closing(stack: tuple, result) -> str:
    text = ""
    for frame in reversed(stack):
        more, result = _close(frame, result)
        text += more
    return text


def _close(frame, child):
    """(The text that completes `frame` once the frame above it is complete with result `child`, its result.)"""
    kind = frame[0]
    if kind == "V":
        return shortest(frame[1]), None
    if kind == "S":
        return ("" if frame[1] == 0 else "n" if frame[1] == 1 else "0" * (frame[1] - 1)) + '"', None
    if kind == "N":
        return ("" if frame[2] in NUMBER_ENDS else "0"), None
    if kind == "T":
        return frame[1][frame[2]:], None
    if kind == "P":
        best = min(frame[1], key=lambda a: len(a[0]) + len(shortest(a[1])) + len(a[2]))
        return best[0][len(frame[2]):] + shortest(best[1]) + best[2], None
    if kind == "A":
        _, node, phase, count, _ = frame
        count += phase == "value"
        if phase == "comma":
            return ",".join([shortest(node.items)] * max(1, node.min_items - count)) + "]", None
        missing = max(0, node.min_items - count)
        return ("," if count else "") * bool(missing) + ",".join([shortest(node.items)] * missing) + "]", None
    _, node, phase, used, key, _ = frame  # "O"
    if phase == "key":
        key = json.loads(child) if node.properties else None
        phase = "colon"
    text = ""
    if phase == "colon":
        text, phase = ":" + shortest(node.value(key)), "value"
    if phase == "value":
        used = used | {key}
    if phase == "comma" and node.required <= used:  # a key must follow the comma: the shortest one
        if not node.properties:
            return '"":' + shortest(node.free or ANY) + "}", None
        name, value = min(((n, v) for n, v in node.properties if n not in used),
                          key=lambda p: len(json.dumps(p[0], ensure_ascii=False)) + len(shortest(p[1])))
        return json.dumps(name, ensure_ascii=False) + ":" + shortest(value) + "}", None
    return text + required_text(node, used, first=phase in ("open", "comma")) + "}", None


# --- grammars and rows ----------------------------------------------------------------------------------------------

@dataclass(eq=False)
class Grammar:
    """What an answer must be: one of `alternatives` (prefix, node, tail): the prefix's text, a JSON value of node,
    the tail's text; then eos. `space`: a whitespace character may come before the value when there is no prefix
    (after a prompt that ends on "arguments":). `forbid`: a text that may appear only where the answer ends (a
    call's closing tag: inside the arguments' strings, the parser would read it as the end of the call). Its states'
    steps over tokens are cached here, shared by the rows of a request."""
    alternatives: list[tuple[str, Node, str]]
    space: bool = False
    forbid: str = ""
    cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_schema(cls, schema, lenient: bool = False, tail: str = "") -> "Grammar":
        return cls([("", compile_schema(schema, lenient), tail)])

    def start(self) -> tuple:
        if len(self.alternatives) == 1 and not self.alternatives[0][0]:
            return tuple(start_frames(*self.alternatives[0][1:], space=self.space))
        return (("P", tuple(self.alternatives), ""),)

    def advance(self, state: tuple, text: str) -> tuple | None:
        """The state after `text` (a token's), or None if the text cannot come next."""
        key = (state, text)
        if key in self.cache:
            return self.cache[key]
        out = state
        for c in text:
            out = feed(out, c)
            if out is None:
                break
        if len(self.cache) > 100_000:  # a long answer's states: keep the memory bounded
            self.cache.clear()
        self.cache[key] = out
        return out

    def closing(self, state: tuple) -> str:
        key = ("closing", state)
        if key not in self.cache:
            self.cache[key] = closing(state)
        return self.cache[key]

    def accepts(self, text: str) -> bool:
        """Whether `text` is a whole answer of this grammar."""
        state = self.advance(self.start(), text) if text else self.start()
        return state is not None and can_end(state)


def token_texts(tokenizer, vocab_size: int) -> list[str | None]:
    """Each token id's text (None for special tokens and ids past the tokenizer, which no constrained answer
    writes)."""
    special = set(tokenizer.all_special_ids)
    n = len(tokenizer)
    return [tokenizer.decode([i]) or None if i < n and i not in special else None for i in range(vocab_size)]


DONE = "done"  # RowConstraint's state once the answer has ended


class RowConstraint:
    """One answer decoded under `grammar`: `pick` chooses each of its tokens; `max_tokens` is the answer's budget
    (its closing text is forced in before the budget runs out). Once the answer has ended (its eos chosen), or if
    no token at all could continue it, nothing is constrained any more (state None)."""

    def __init__(self, grammar: Grammar, texts: list[str | None], eos: set[int], max_tokens: int):
        self.grammar, self.texts, self.eos, self.left = grammar, texts, eos, max_tokens
        self.state: tuple | None = grammar.start()
        self.recent = ""  # the end of the text so far, as long as grammar.forbid less one character

    def next_state(self, token: int):
        """The state after `token`: None if it cannot come next, DONE for an eos that ends a complete value."""
        if token in self.eos:
            return DONE if can_end(self.state) else None
        text = self.texts[token] if 0 <= token < len(self.texts) else None
        state = None if text is None else self.grammar.advance(self.state, text)
        forbid = self.grammar.forbid
        if state and forbid and forbid in self.recent + text:  # before the end: inside the value
            return None
        return state

    def pick(self, proposed: int, ranked) -> int:
        """The token this row writes: `proposed` (the sampler's choice) if it keeps the answer valid and closable
        within the budget, else the first such token of `ranked()` (token ids, best first). Closable: the closing
        text of the state after it, a token per character at worst, and eos fit in the tokens left. A row already
        past that point writes its closing text in the fewest tokens it can."""
        left, self.left = self.left, self.left - 1
        if self.state is None:
            return proposed
        close = self.grammar.closing(self.state)
        token = None
        if len(close) + 1 <= left:
            def fits(t):
                state = self.next_state(t)
                return state is not None and (state == DONE or len(self.grammar.closing(state)) + 1 < left)
            token = proposed if fits(proposed) else next((t for t in ranked() if fits(t)), None)
        if token is None:  # the longest token that writes the start of the closing text (eos once it is written)
            best = -1
            for t in ranked():
                text = "" if t in self.eos else self.texts[t] if 0 <= t < len(self.texts) else None
                if text is not None and len(text) > best and (text or not close) and close.startswith(text) and \
                        self.next_state(t) is not None:
                    token, best = t, len(text)
        if token is None:
            token = proposed if self.next_state(proposed) is not None else next(
                (t for t in ranked() if self.next_state(t) is not None), None)
        if token is None:  # nothing can continue the answer (a vocabulary without the characters JSON needs)
            self.state = None
            return proposed
        state = self.next_state(token)
        self.state = None if state == DONE else state
        if self.grammar.forbid and token not in self.eos:
            self.recent = (self.recent + self.texts[token])[-(len(self.grammar.forbid) - 1):]
        return token


@dataclass(eq=False)
class ConstrainedGroup(Group):
    """A decode-engine `Group` whose rows each write what their `RowConstraint` allows (see the module's
    docstring); the settings (temperature, top-k, top-p, repetition penalty, seed) are the group's own."""
    constraints: list = field(default_factory=list)  # a RowConstraint per row

    def _bind(self, input_ids, attention_mask, vocab_size: int):
        if self.generator is None and self.seed is not None:  # kept: the ranking below draws from it too
            self.generator = make_generator(self.seed, input_ids.device)
        super()._bind(input_ids, attention_mask, vocab_size)

    def constrain(self, tokens: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The sampler's choice where the row's grammar takes it, else `ranked`'s first token that it takes."""
        for i, row in enumerate(self.constraints):
            if row.state is not None:
                tokens[i] = row.pick(int(tokens[i]), lambda i=i: self.ranked(logits[i]))
        return tokens

    def ranked(self, logits: torch.Tensor):
        """Token ids, best first, from one row's logits (V,): greedy by logit; sampled in the order of one draw
        (Gumbel-max: logit / temperature minus the log of an exponential draw, within top-k / top-p), then the
        tokens those filters left out, by logit."""
        if self.do_sample and self.temperature > 0:
            scores = sampling_logits(logits[None], self.temperature, self.top_k, self.top_p)[0]  # (V,)
            draw = torch.empty_like(scores).exponential_(generator=self.generator)
            order = (scores - draw.log()).argsort(descending=True)
            yield from order[:int(torch.isfinite(scores).sum())].tolist()
        yield from logits.argsort(descending=True).tolist()
