"""The built-in tool-use set, made by code: questions that a built-in tool answers (`minimind.tools`), each with
the assistant's call (exact arguments), the tool's real result, and the final answer that quotes it. A small model
learns from it, on a CPU, to write a well-formed `<tool_call>`, to pass the right arguments, and to answer from the
result (`runs/tool_agent.sh` trains the calculator agent on it).

    minimind data tooluse --out tooluse.jsonl --n 20000             # SFT conversations
    minimind data tooluse --out prompts.jsonl --n 2000 --prompts     # {"prompt", "answer"} for minimind agent
    minimind eval out/agent --tasks tooluse                         # exact answers on held-out questions

A record is an SFT conversation in OpenAI's format, `{"tools": [...], "messages": [user, assistant with
tool_calls, tool, assistant, ...]}`. Kinds:
- arithmetic for the calculator (most of the set), in English and Chinese: + - * / and parentheses, numbers of 1-4
  digits, decimals and negatives, written with symbols or words ("times", "乘以", "the sum of ... and ...") inside
  many phrasings, word problems among them; the call's expression is always written with symbols;
- unit conversion and date questions for the other tools;
- multi-turn chats (a second question after the first answer);
- questions that need no tool (greetings, what the assistant can do), answered directly.
The tools offered are the calculator alone or the needed one and one other, in random order, so the model must
pick; a tenth of the assistants think first (`reasoning_content`).

Held out from training, for `minimind.eval.tooluse`:
- phrasings: the `UNSEEN` templates of each language never occur in the training set, so the evaluation can
  measure phrasings the model never saw;
- questions: a question whose text falls in the fixed `in_val` split (~10%) never occurs in the train split, and
  the evaluation's questions are all in it, drawn with their own seed (`EVAL_SEED`).
`tool_conversations(split, n)`, `agent_prompts(n)` and `eval_questions(n)` are deterministic.
"""

import datetime
import hashlib
import json
import random
from pathlib import Path

from ..tools import TOOLS, run_tool, tool_schemas

VAL_FRACTION = 0.1
SEED = 14
EVAL_SEED = 2718

# Templates: {q} is the expression (in symbols or words). Word problems take {a} and {b} and fix the operation.
SEEN = {
    "en": ["What is {q}?", "Compute {q}.", "Calculate {q}.", "How much is {q}?", "Please work out {q}.",
           "What's {q}?", "Can you calculate {q}?", "{q} = ?", "Find {q}.", "Evaluate {q}.",
           "I need the value of {q}.", "Tell me {q}.", "Quick question: what is {q}?", "Solve {q}."],
    "zh": ["计算 {q}", "{q} 等于多少？", "{q}是多少？", "请算一下{q}", "帮我算算{q}", "求{q}的值", "{q} = ?",
           "算一算：{q}", "{q}等于几？", "请计算{q}。", "{q}的结果是多少？"],
}
UNSEEN = {
    "en": ["Could you tell me what {q} is?", "Work this out for me: {q}", "What do you get from {q}?",
           "Help me with {q}, please."],
    "zh": ["你能告诉我{q}的结果吗？", "请问{q}得多少？", "麻烦算出{q}", "我想知道{q}等于多少。"],
}
# Word problems: (template, operation); a - b ones get a > b.
SEEN_PROBLEMS = {
    "en": [("Tom has {a} apples and buys {b} more. How many apples does he have now?", "+"),
           ("A box holds {a} pens. How many pens are in {b} boxes?", "*"),
           ("A rope is {a} cm long and {b} cm is cut off. How long is it now?", "-"),
           ("A train travels {a} km a day. How far does it go in {b} days?", "*"),
           ("There were {a} people on a bus and {b} got off. How many are left?", "-")],
    "zh": [("小明有{a}个苹果，又买了{b}个，现在一共有多少个？", "+"), ("每盒有{a}支笔，{b}盒一共有多少支？", "*"),
           ("一根绳子长{a}米，剪掉{b}米，还剩多少米？", "-"), ("工厂每天生产{a}个零件，{b}天一共生产多少个？", "*"),
           ("书架上有{a}本书，借走了{b}本，还剩多少本？", "-")],
}
UNSEEN_PROBLEMS = {
    "en": [("A shop sold {a} cups in the morning and {b} in the afternoon. How many cups did it sell?", "+"),
           ("Each ticket costs {a} dollars. What do {b} tickets cost?", "*")],
    "zh": [("商店上午卖出{a}件衣服，下午卖出{b}件，一共卖出多少件？", "+"), ("一本书{a}元，买{b}本要多少元？", "*")],
}
# The operations in words: a template with {a} and {b}, per operation and language.
WORDS = {
    "en": {"+": ["{a} plus {b}", "{a} added to {b}", "the sum of {a} and {b}"],
           "-": ["{a} minus {b}", "{a} take away {b}", "the difference between {a} and {b}"],
           "*": ["{a} times {b}", "{a} multiplied by {b}", "the product of {a} and {b}"],
           "/": ["{a} divided by {b}", "{a} over {b}"]},
    "zh": {"+": ["{a}加{b}", "{a}加上{b}", "{a}与{b}的和"], "-": ["{a}减{b}", "{a}减去{b}", "{a}与{b}的差"],
           "*": ["{a}乘{b}", "{a}乘以{b}", "{a}与{b}的积"], "/": ["{a}除以{b}", "{a}÷{b}"]},
}
ANSWER = {"en": "{e} = {r}.", "zh": "{e} = {r}。"}

CONVERT = ["Convert {v} {a} to {b}.", "How many {b} is {v} {a}?", "把 {v} {a} 换算成 {b}"]
BETWEEN = ["How many days are there from {a} to {b}?", "Days between {a} and {b}?", "{a} 到 {b} 有多少天？"]
ADD = ["What date is {n} days after {d}?", "Add {n} days to {d}.", "{d} 之后 {n} 天是哪一天？"]
WEEKDAY = ["What day of the week is {d}?", "Which weekday was {d}?", "{d} 是星期几？"]
PAIRS = [("km", "mi"), ("mi", "km"), ("m", "ft"), ("ft", "m"), ("kg", "lb"), ("lb", "kg"), ("C", "F"), ("F", "C"),
         ("l", "gal"), ("h", "min"), ("cm", "in"), ("g", "oz")]
NO_TOOL = [("Hello!", "Hello! I can calculate, convert units and count days for you."),
           ("Hi there.", "Hi! Ask me a calculation, a unit conversion or a date question."),
           ("Thanks!", "You are welcome."), ("Thank you very much.", "You are welcome. Anything else?"),
           ("Who are you?", "I am a small assistant that can use tools."),
           ("What can you do?", "I can use a calculator, convert units and work with dates."),
           ("Good morning!", "Good morning! What should I calculate?"), ("Bye.", "Goodbye!"),
           ("你好", "你好！我可以帮你计算、换算单位或计算日期。"), ("谢谢！", "不客气。"),
           ("你是谁？", "我是一个会使用工具的小助手。"),
           ("你能做什么？", "我可以用计算器算数，也可以换算单位和计算日期。"),
           ("早上好", "早上好！需要我算点什么吗？"), ("再见", "再见！")]


def in_val(question: str) -> bool:
    """The fixed split: a question is held out when its text's SHA-256 falls in the first VAL_FRACTION."""
    return int.from_bytes(hashlib.sha256(question.encode("utf-8")).digest()[:8], "big") < VAL_FRACTION * 2**64


def _number(rng: random.Random, digits: int, decimals: bool, negatives: bool) -> str:
    n = rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10 ** digits - 1)
    text = str(n)
    if decimals and rng.random() < 0.15:
        text += "." + str(rng.randint(1, 9)) if rng.random() < 0.6 else f".{rng.randint(1, 99):02d}"
    if negatives and rng.random() < 0.1:
        text = "-" + text
    return text


def _operands(rng: random.Random, op: str, digits=(1, 4), decimals=True, negatives=True) -> tuple[str, str]:
    """Two numbers for `op`: 1-4 digits (most 2-3), mostly exact quotients for /."""
    size = lambda: rng.choices(range(digits[0], digits[1] + 1), [1, 3, 3, 1][digits[0] - 1:digits[1]])[0]  # noqa: E731
    a, b = _number(rng, size(), decimals, negatives), _number(rng, size(), decimals, negatives)
    if op == "/":
        b = str(rng.randint(2, 99))
        if rng.random() < 0.7:
            a = str(int(b) * rng.randint(2, 99))
    return a, b


def _calculation(rng: random.Random, lang: str, templates: dict, problems: dict, ops=("+", "-", "*", "/"),
                 **numbers) -> tuple[str, str]:
    """(question, expression): a word problem, an expression in words, or one in symbols (perhaps with
    parentheses) inside a phrasing of `templates`."""
    kind = rng.choices(["problem", "words", "symbols", "parentheses"], [2, 3, 4, 1 if "/" in ops else 0])[0]
    if kind == "problem":
        template, op = rng.choice([p for p in problems[lang] if p[1] in ops])
        a, b = _operands(rng, op, numbers.get("digits", (1, 4)), decimals=False, negatives=False)
        if op == "-" and int(a) < int(b):
            a, b = b, a
        return template.format(a=a, b=b), f"{a} {op} {b}"
    if kind == "parentheses":
        a, b = _operands(rng, "+")
        c = _number(rng, rng.randint(1, 2), False, False)
        inner, outer = rng.choice(["+", "-"]), rng.choice(["*", "/"])
        e = f"({a} {inner} {b}) {outer} {c}" if rng.random() < 0.5 else f"{c} {outer} ({a} {inner} {b})"
        if outer == "/" and c == "0":
            e = e.replace("/ 0", "/ 7")
        return rng.choice(templates[lang]).format(q=e), e
    op = rng.choice(ops)
    a, b = _operands(rng, op, **numbers)
    e = f"{a} {op} {b}"
    q = e if kind == "symbols" else rng.choice(WORDS[lang][op]).format(a=a, b=b)
    return rng.choice(templates[lang]).format(q=q), e


def _date(rng: random.Random) -> str:
    return (datetime.date(2000, 1, 1) + datetime.timedelta(days=rng.randint(0, 365 * 40))).isoformat()


def _task(rng: random.Random) -> tuple[str, str, dict, str]:
    """(question, tool, arguments, answer template with {r} for the result) of a random kind."""
    kind = rng.choices(["calc", "convert", "between", "add", "weekday"], [16, 2, 1, 1, 1])[0]
    if kind == "calc":
        lang = rng.choice(["en", "zh"])
        question, e = _calculation(rng, lang, SEEN, SEEN_PROBLEMS)
        return question, "calculator", {"expression": e}, ANSWER[lang].replace("{e}", e)
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


def _exchange(rng: random.Random, split: str) -> tuple[str, list[dict]] | None:
    """One question and its messages (user, the call, the tool's result, the answer), or None when the question
    belongs to the other split."""
    question, tool, arguments, answer = _task(rng)
    if in_val(question) != (split == "val"):
        return None
    result = run_tool(tool, arguments)
    if result.startswith("error"):
        return None
    call = {"role": "assistant", "content": None, "tool_calls": [
        {"id": f"call_{rng.getrandbits(32):08x}", "type": "function",
         "function": {"name": tool, "arguments": json.dumps(arguments, ensure_ascii=False)}}]}
    if rng.random() < 0.1:
        call["reasoning_content"] = f"The {tool} tool answers this."
    return tool, [{"role": "user", "content": question}, call,
                  {"role": "tool", "tool_call_id": call["tool_calls"][0]["id"], "content": result},
                  {"role": "assistant", "content": answer.format(r=result)}]


def _offered(rng: random.Random, needed: set[str]) -> list[dict]:
    """The calculator alone (when it is all that is needed, half the time), or what is needed and one other tool."""
    if needed == {"calculator"} and rng.random() < 0.5:
        return tool_schemas(["calculator"])
    names = sorted(needed) + [rng.choice([t for t in TOOLS if t not in needed])]
    rng.shuffle(names)
    return tool_schemas(names)


def _record(rng: random.Random, split: str) -> dict | None:
    if rng.random() < 0.08:
        question, answer = rng.choice(NO_TOOL)
        return {"tools": _offered(rng, {"calculator"}), "messages": [{"role": "user", "content": question},
                                                                      {"role": "assistant", "content": answer}]}
    first = _exchange(rng, split)
    if first is None:
        return None
    needed, messages = {first[0]}, first[1]
    if rng.random() < 0.2:  # a second question in the same chat
        second = _exchange(rng, split)
        if second is None:
            return None
        needed.add(second[0])
        messages += second[1]
    return {"tools": _offered(rng, needed), "messages": messages}


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


def agent_prompts(n: int = 2000, seed: int = SEED) -> list[dict]:
    """`n` calculator questions of the train split's phrasings, as prompt records for agent RL:
    {"prompt", "answer" (the calculator's result), "lang"}."""
    rng = random.Random(f"{seed}:prompts")
    out = []
    while len(out) < n:
        lang = rng.choice(["en", "zh"])
        question, e = _calculation(rng, lang, SEEN, SEEN_PROBLEMS)
        answer = run_tool("calculator", {"expression": e})
        if not in_val(question) and not answer.startswith("error"):
            out.append({"prompt": question, "answer": answer, "lang": lang})
    return out


def eval_questions(n: int = 200, seed: int = EVAL_SEED, ops=("+", "-", "*"), digits=(2, 3)) -> list[dict]:
    """`n` held-out arithmetic questions (numbers of `digits` digits, whole and non-negative), half English and half
    Chinese, half in seen phrasings and half in the UNSEEN ones, every question in the held-out split:
    {"question", "lang", "phrasing" ("seen" or "unseen"), "expression", "answer"}."""
    rng = random.Random(f"{seed}:eval")
    out, seen = [], set()
    while len(out) < n:
        lang, phrasing = ["en", "zh"][len(out) % 2], ["seen", "unseen"][len(out) // 2 % 2]
        templates, problems = (SEEN, SEEN_PROBLEMS) if phrasing == "seen" else (UNSEEN, UNSEEN_PROBLEMS)
        while True:
            question, e = _calculation(rng, lang, templates, problems, ops, digits=digits, decimals=False,
                                       negatives=False)
            if in_val(question) and question not in seen:
                break
        seen.add(question)
        out.append({"question": question, "lang": lang, "phrasing": phrasing, "expression": e,
                    "answer": run_tool("calculator", {"expression": e})})
    return out


def write_jsonl(records: list[dict], out: str | Path) -> Path:
    """Records as a .jsonl file, one JSON object a line (written under a temporary name and renamed into place, so a
    full disk or a kill leaves no half-written file)."""
    from ..io import atomic_write

    out = Path(out)
    with atomic_write(out) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return out


def write_tool_conversations(out: str | Path, n: int = 3000, split: str = "train", seed: int = SEED) -> Path:
    """The set's records as a .jsonl file (the format `--data` reads for SFT)."""
    return write_jsonl(tool_conversations(split, n, seed), out)
