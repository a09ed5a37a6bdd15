"""The built-in tool-use set, made by code: questions that a built-in tool answers (`minimind.tools`), each with
the assistant's call (exact arguments), the tool's real result, and the final answer that quotes it. A tiny model
learns from it, on a CPU in minutes, to write a well-formed `<tool_call>` and to answer from the result.

    minimind data tooluse --out tooluse.jsonl --n 3000      # then: minimind train --stage sft --data tooluse.jsonl
    minimind eval out/tool --tasks tooluse --limit 100      # a trained model's held-out calculator-call rate

A record is an SFT conversation in OpenAI's format, `{"tools": [...], "messages": [user, assistant with
tool_calls, tool, assistant]}`; the tools offered are the one needed and one other, in random order, so the model
must pick. Kinds: arithmetic (calculator, about half of the set), unit conversion, days between dates, adding days
to a date, weekdays; English and Chinese questions. A quarter of the assistants think first (`reasoning_content`),
and some records need no tool (a greeting) so the model learns to answer plainly too.

`tool_conversations(split, n)` is deterministic. The split is fixed by the question's text (`in_val`, ~10% held
out): a held-out question never appears in the train split; `calculator_questions` gives held-out arithmetic questions
for `minimind.eval.tooluse` to measure a model on.
"""

import datetime
import hashlib
import json
import random
from pathlib import Path

from ..tools import TOOLS, run_tool, tool_schemas

VAL_FRACTION = 0.1

SEED = 14

OPS = ["+", "-", "*", "/"]

ARITHMETIC = ["What is {e}?", "Compute {e}.", "Calculate {e}.", "How much is {e}?", "Please work out {e}.",
              "计算 {e}", "{e} 等于多少？"]
CONVERT = ["Convert {v} {a} to {b}.", "How many {b} is {v} {a}?", "把 {v} {a} 换算成 {b}"]
BETWEEN = ["How many days are there from {a} to {b}?", "Days between {a} and {b}?", "{a} 到 {b} 有多少天？"]
ADD = ["What date is {n} days after {d}?", "Add {n} days to {d}.", "{d} 之后 {n} 天是哪一天？"]
WEEKDAY = ["What day of the week is {d}?", "Which weekday was {d}?", "{d} 是星期几？"]
GREETINGS = [("Hello!", "Hello! Ask me to calculate, convert units or count days."),
             ("Thanks!", "You are welcome."), ("Who are you?", "I am a small assistant that can use tools."),
             ("你好", "你好！我可以帮你计算、换算单位或计算日期。")]
PAIRS = [("km", "mi"), ("mi", "km"), ("m", "ft"), ("ft", "m"), ("kg", "lb"), ("lb", "kg"), ("C", "F"), ("F", "C"),
         ("l", "gal"), ("h", "min"), ("cm", "in"), ("g", "oz")]


def in_val(question: str) -> bool:
    """The fixed split: a question is held out when its text's SHA-256 falls in the first VAL_FRACTION."""
    return int.from_bytes(hashlib.sha256(question.encode("utf-8")).digest()[:8], "big") < VAL_FRACTION * 2**64


def _expression(rng: random.Random) -> str:
    op = rng.choice(OPS)
    a, b = rng.randint(2, 999), rng.randint(2, 99)
    if op == "/" and rng.random() < 0.7:
        a = b * rng.randint(2, 60)  # mostly exact quotients
    return f"{a} {op} {b}"


def _date(rng: random.Random) -> str:
    return (datetime.date(2000, 1, 1) + datetime.timedelta(days=rng.randint(0, 365 * 40))).isoformat()


def _task(rng: random.Random) -> tuple[str, str, dict, str]:
    """(question, tool, arguments, answer template with {r} for the result) of a random kind."""
    kind = rng.choices(["calc", "convert", "between", "add", "weekday"], [8, 3, 2, 2, 2])[0]
    if kind == "calc":
        e = _expression(rng)
        return rng.choice(ARITHMETIC).format(e=e), "calculator", {"expression": e}, f"{e} = {{r}}"
    if kind == "convert":
        a, b = rng.choice(PAIRS)
        v = rng.choice([rng.randint(1, 500), round(rng.uniform(0.5, 100), 1)])
        return (rng.choice(CONVERT).format(v=v, a=a, b=b), "convert_units", {"value": v, "from_unit": a, "to_unit": b},
                f"{v} {a} is {{r}} {b}.")
    if kind == "between":
        a, b = sorted([_date(rng), _date(rng)])
        return (rng.choice(BETWEEN).format(a=a, b=b), "days_between", {"start": a, "end": b},
                f"There are {{r}} days from {a} to {b}.")
    if kind == "add":
        d, n = _date(rng), rng.randint(1, 400)
        return (rng.choice(ADD).format(n=n, d=d), "add_days", {"date": d, "days": n},
                f"{n} days after {d} is {{r}}.")
    d = _date(rng)
    return rng.choice(WEEKDAY).format(d=d), "weekday", {"date": d}, f"{d} is a {{r}}."


def _record(rng: random.Random, split: str) -> dict | None:
    if rng.random() < 0.05:
        question, answer = rng.choice(GREETINGS)
        tools = rng.sample(list(TOOLS), 2)
        return {"tools": tool_schemas(tools), "messages": [{"role": "user", "content": question},
                                                           {"role": "assistant", "content": answer}]}
    question, tool, arguments, answer = _task(rng)
    if in_val(question) != (split == "val"):
        return None
    other = rng.choice([t for t in TOOLS if t != tool])
    tools = [tool, other] if rng.random() < 0.5 else [other, tool]
    result = run_tool(tool, arguments)
    call = {"role": "assistant", "content": None, "tool_calls": [
        {"id": f"call_{rng.getrandbits(32):08x}", "type": "function",
         "function": {"name": tool, "arguments": json.dumps(arguments, ensure_ascii=False)}}]}
    if rng.random() < 0.25:
        call["reasoning_content"] = f"The {tool} tool answers this."
    return {"tools": tool_schemas(tools), "messages": [
        {"role": "user", "content": question}, call,
        {"role": "tool", "tool_call_id": call["tool_calls"][0]["id"], "content": result},
        {"role": "assistant", "content": answer.format(r=result)}]}


def tool_conversations(split: str = "train", n: int = 3000, seed: int = SEED) -> list[dict]:
    """`n` records of the built-in tool-use set's `split` ("train" or "val"), deterministic for a seed."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    rng = random.Random(f"{seed}:{split}")
    records = []
    while len(records) < n:
        record = _record(rng, split)
        if record is not None:
            records.append(record)
    return records


def write_tool_conversations(out: str | Path, n: int = 3000, split: str = "train", seed: int = SEED) -> Path:
    """The set's records as a .jsonl file (the format `--data` reads for SFT)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for record in tool_conversations(split, n, seed):
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return out


def calculator_questions(n: int = 100, seed: int = SEED) -> list[tuple[str, str, str]]:
    """`n` held-out arithmetic questions: (question, other tool offered, expected result)."""
    rng = random.Random(f"{seed}:calculator")
    out, seen = [], set()
    while len(out) < n:
        e = _expression(rng)
        question = rng.choice(ARITHMETIC[:5]).format(e=e)
        if in_val(question) and question not in seen:
            seen.add(question)
            out.append((question, rng.choice([t for t in TOOLS if t != "calculator"]),
                        run_tool("calculator", {"expression": e})))
    return out
