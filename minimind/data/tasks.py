"""Prompts for reinforcement learning: a built-in verifiable task made by code, and `PromptDataset`, which serves it
(or the user's prompts) to `minimind grpo` / `ppo`.

The built-in task is arithmetic word problems with checkable answers, in English and Chinese, generated from a seed
(no download, no file): "Tom has 3 apples and gets 5 more. How many apples does Tom have now?" -> "8". Operands are
small (1 to 9, products up to 9 x 9) so that a small model can learn the task; the answer is always a non-negative
integer. The training and held-out sets come from different seeds.

A user's prompt file is JSONL with one record a line: `{"prompt": "..."}`, or a conversation ending in a user turn
(`{"messages": [...]}` / `{"conversations": [...]}`; a final assistant turn, MiniMind's placeholder, is dropped, and
tools on its system message are offered: `messages.parse_prompt`). Every other field (e.g. `"answer": "42"`, or
MiniMind's `"gt"` list) is handed to the reward functions as a keyword argument.

    from minimind.data.tasks import arithmetic_problems
    arithmetic_problems(2, seed=0)  # [{"prompt": "...", "answer": "8", "lang": "en"}, ...]
"""

import random

from torch.utils.data import Dataset

from .files import data_error, read_records
from .messages import Augment, parse_prompt, prompt_ids

TRAIN_SIZE, VAL_SIZE = 4000, 200

# (template, operation): {name}, {a}, {b}, {thing} are filled in; the answer is op(a, b).
_EN = [
    ("{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?", "+"),
    ("There are {a} {thing} in a box. {name} puts in {b} more. How many {thing} are in the box?", "+"),
    ("{name} has {a} {thing} and gives away {b}. How many {thing} are left?", "-"),
    ("{name} had {a} {thing} and lost {b} of them. How many {thing} does {name} have left?", "-"),
    ("{name} buys {a} bags with {b} {thing} in each bag. How many {thing} is that in all?", "*"),
    ("What is {a} plus {b}?", "+"),
    ("What is {a} minus {b}?", "-"),
    ("What is {a} times {b}?", "*"),
]
_ZH = [  # {m}: the thing's measure word
    ("{name}有{a}{m}{thing}，又得到了{b}{m}。{name}现在有几{m}{thing}？", "+"),
    ("盒子里有{a}{m}{thing}，{name}又放进去{b}{m}。盒子里一共有几{m}{thing}？", "+"),
    ("{name}有{a}{m}{thing}，送给别人{b}{m}。还剩几{m}{thing}？", "-"),
    ("{name}买了{a}袋{thing}，每袋{b}{m}。一共有几{m}{thing}？", "*"),
    ("{a}加{b}等于多少？", "+"),
    ("{a}减{b}等于多少？", "-"),
    ("{a}乘以{b}等于多少？", "*"),
]
_NAMES = {"en": ["Tom", "Anna", "Li Lei", "Maria", "Sam", "Ken"], "zh": ["小明", "小红", "李雷", "韩梅梅", "小华"]}
_THINGS = {"en": [("", t) for t in ("apples", "pencils", "books", "cards", "marbles", "eggs")],
           "zh": [("个", "苹果"), ("支", "铅笔"), ("本", "书"), ("张", "卡片"), ("颗", "弹珠"), ("个", "鸡蛋")]}


def arithmetic_problems(n: int, seed: int = 0, lang: str = "both") -> list[dict]:
    """`n` word problems {"prompt", "answer", "lang"}, the same for the same seed. lang: "en", "zh" or "both"
    (alternating)."""
    if lang not in ("en", "zh", "both"):
        raise ValueError(f"lang must be en, zh or both, got {lang!r}")
    rng = random.Random(seed)
    out = []
    for i in range(n):
        which = lang if lang != "both" else ("en", "zh")[i % 2]
        template, op = rng.choice(_EN if which == "en" else _ZH)
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        if op == "-" and b > a:
            a, b = b, a  # no negative answers
        answer = {"+": a + b, "-": a - b, "*": a * b}[op]
        m, thing = rng.choice(_THINGS[which])
        prompt = template.format(name=rng.choice(_NAMES[which]), a=a, b=b, m=m, thing=thing)
        out.append({"prompt": prompt, "answer": str(answer), "lang": which})
    return out


def builtin_tasks(split: str = "train") -> list[dict]:
    """The built-in task set: TRAIN_SIZE problems for training (seed 0), VAL_SIZE held out (seed 1)."""
    return arithmetic_problems(TRAIN_SIZE, seed=0) if split == "train" else arithmetic_problems(VAL_SIZE, seed=1)


def parse_prompt_record(record: dict, where: str) -> dict:
    """A prompt record checked: {"messages": [...ending in a user turn], "prompt": the last user text, **fields}."""
    if not isinstance(record, dict):
        raise data_error(where, f"a record must be a JSON object, got {type(record).__name__}",
                     '{"prompt": "..."} or {"messages": [...]}')
    fields = dict(record)
    if "prompt" in fields:
        if not isinstance(fields["prompt"], str) or not fields["prompt"].strip():
            raise data_error(where, "field 'prompt' must be a non-empty string", '{"prompt": "What is 2 plus 3?"}')
        messages = [{"role": "user", "content": fields["prompt"]}]
    else:
        key = "messages" if "messages" in fields else "conversations" if "conversations" in fields else None
        if key is None:
            raise data_error(where, "no 'prompt', 'messages' or 'conversations' field",
                         '{"prompt": "..."} or {"messages": [{"role": "user", "content": "..."}]}')
        messages = parse_prompt(fields.pop(key), where, key)
        fields["prompt"] = messages[-1]["content"]
    return {**fields, "messages": messages}


class PromptDataset(Dataset):
    """Prompts to roll out: item i is the record (its "messages", "prompt" and other fields) plus "prompt_index" (i)
    and "prompt_ids" (the chat-template rendering with the assistant turn opened, offering the record's own tools,
    else `tools` (OpenAI-style schemas) when given; `augment`: MiniMind-3's system prompt and thinking options,
    drawn per record). `data=None`: the built-in arithmetic task. A prompt longer than `max_prompt_len` tokens is an
    error naming its record."""

    def __init__(self, data, tokenizer, max_prompt_len: int, split: str = "train", skip_bad_records: bool = False,
                 tools: list[dict] | None = None, augment: Augment | None = None):
        if data is None:
            raw = [(f"built-in:{i}", r) for i, r in enumerate(builtin_tasks(split))]
            records = [parse_prompt_record(r, where) for where, r in raw]
        else:
            from .datasets import split_items

            records = split_items(read_records(data, parse_prompt_record, skip_bad_records), split)
        self.records, self.ids = records, []
        for i, r in enumerate(records):
            thinking = None
            if augment is not None:
                r["messages"], thinking = augment.system(r["messages"], i), augment.thinking(i)
            ids = prompt_ids(tokenizer, r["messages"], getattr(r["messages"], "tools", None) or tools, thinking)
            if len(ids) > max_prompt_len:
                raise ValueError(f"{data or 'built-in'}: prompt {i} has {len(ids)} tokens, more than the "
                                 f"{max_prompt_len} left by --max_seq_len minus --max_new_tokens; raise "
                                 "--max_seq_len or shorten the prompt")
            self.ids.append(ids)

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return {**self.records[i], "prompt_ids": self.ids[i], "prompt_index": i}


def collate_prompts(items: list[dict]) -> dict:
    """A batch of prompt records, as they are (the rollout tokenizes and pads)."""
    return {"records": items}
