"""Rewards for reinforcement learning, all offline: Python callables, built-in checks, and an optional reward model.

A reward function is any callable `(prompt, completion, **record) -> float`: `prompt` is the last user message,
`completion` the model's generated text, `record` the prompt record's other fields (the built-in task gives
`answer` and `lang`; a user's JSONL gives whatever its records hold). On the command line a reward is named by a
spec, repeatable, the total being the weighted sum:

    --reward numeric              a built-in (below)
    --reward format=0.2           with a weight
    --reward length:20-200=0.1    a built-in with its argument
    --reward my_rewards:score     module:function (importable)
    --reward rewards.py:score     a .py file and the function in it (`rewards.py` alone: its `reward` function)

Built-ins (the answer is the completion after any `<think>...</think>` block):
    exact       1 if the answer equals record["answer"] (stripped), else 0
    numeric     1 if the answer's last number equals record["answer"] as a number, else 0
    regex       1 if the answer matches the pattern (spec argument, else record["pattern"]), else 0
    format      1 if thinking is closed (a `<think>` has its `</think>`) and the answer holds exactly one number
                (with an `answer` field that is not a number: is non-empty), else 0
    length      1 if the answer's length in characters is in the band LO-HI (default 1-200), falling linearly to 0
                at 0 and 2 * HI
    repetition  minus the share of repeated word 3-grams (0: no repeats, towards -1: a loop)
    tool_call   (agent rollouts) the share of the tool calls made that were well formed and ran without an error
                (0 when none was made)
    tool_result (agent rollouts) 1 if the answer's last number is a number a tool returned, else 0
    gt          the share of record["gt"] (MiniMind-3's agent_rl lists of what the final answer must state; one value
                or a list) that the answer after its last tool call states: a number when it equals one of the
                answer's numbers, a text when the answer holds it (case-insensitive), as MiniMind's check, except that
                a number must be a whole number of the answer ("18" does not state 8)

Prompts without an `answer` field (MiniMind-3's rlaif.jsonl, agent_rl.jsonl) cannot be scored by exact or numeric:
when the command's default reward is in effect it is replaced (`minimind.train.rl.fit_rewards`): by gt (agent: and
tool_call=0.2) where every prompt has a gt list, else by length:20-800 + repetition (MiniMind-3's rule-based GRPO
terms: its length band and a repetition penalty; its other term is a reward model, --reward_model here).

`--reward_model DIR` adds a `transformers` sequence-classification model with one output (as the public MiniMind
uses), scored in batches on the chat-rendered prompt + completion. A reward function that raises, returns NaN or
something not a number stops the run with a `RewardError` naming it.
"""

import importlib
import importlib.util
import math
import re
from pathlib import Path

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
THINK = re.compile(r"<think>(.*?)</think>", re.S)


class RewardError(ValueError):
    """A reward function failed or returned something that is not a finite number."""


def answer_text(completion: str) -> str:
    """The completion without its thinking: what follows `</think>` (the whole text when there is none)."""
    return completion.rsplit("</think>", 1)[-1].strip()


def _as_number(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


# --- built-ins -----------------------------------------------------------------------------------------------------

def exact(prompt: str, completion: str, answer=None, **record) -> float:
    if answer is None:
        raise KeyError("the record has no 'answer' field")
    return float(answer_text(completion) == str(answer).strip())


def numeric(prompt: str, completion: str, answer=None, **record) -> float:
    if answer is None:
        raise KeyError("the record has no 'answer' field")
    target = _as_number(str(answer).replace(",", ""))
    numbers = NUMBER.findall(answer_text(completion).replace(",", ""))
    if target is None or not numbers:
        return 0.0
    return float(math.isclose(float(numbers[-1]), target, rel_tol=1e-6, abs_tol=1e-9))


def regex(prompt: str, completion: str, pattern: str | None = None, **record) -> float:
    if pattern is None:
        raise KeyError("no pattern: give it in the spec (regex:PATTERN) or as the record's 'pattern' field")
    return float(re.search(pattern, answer_text(completion)) is not None)


def format_reward(prompt: str, completion: str, answer=None, **record) -> float:
    opened, closed = completion.count("<think>"), completion.count("</think>")
    if opened != closed or opened > 1:
        return 0.0
    text = answer_text(completion)
    if answer is not None and _as_number(str(answer)) is None:
        return float(bool(text))
    return float(len(NUMBER.findall(text)) == 1)


def length(prompt: str, completion: str, band: str = "1-200", **record) -> float:
    lo, hi = (int(x) for x in band.split("-"))
    n = len(answer_text(completion))
    if lo <= n <= hi:
        return 1.0
    return max(0.0, n / lo) if n < lo else max(0.0, 1.0 - (n - hi) / max(hi, 1))


def repetition(prompt: str, completion: str, **record) -> float:
    words = completion.split()
    grams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    if not grams:
        return 0.0
    return -(1.0 - len(set(grams)) / len(grams))


def tool_call(prompt: str, completion: str, tool_calls=(), malformed_calls: int = 0, **record) -> float:
    made = len(tool_calls) + malformed_calls
    if not made:
        return 0.0
    ok = sum(1 for c in tool_calls if not str(c.get("result", "")).startswith("error:"))
    return ok / made


def tool_result(prompt: str, completion: str, tool_calls=(), **record) -> float:
    numbers = NUMBER.findall(answer_text(completion).replace(",", ""))
    if not numbers:
        return 0.0
    results = {float(x) for c in tool_calls for x in NUMBER.findall(str(c.get("result", "")))}
    return float(float(numbers[-1]) in results)


def gt(prompt: str, completion: str, gt=None, **record) -> float:
    if gt is None:
        raise KeyError("the record has no 'gt' field")
    values = list(gt) if isinstance(gt, (list, tuple)) else [gt]
    if not values:
        return 0.0
    text = answer_text(completion).rsplit("</tool_call>", 1)[-1]
    numbers = [float(x) for x in NUMBER.findall(text.replace(",", ""))]

    def stated(value) -> bool:
        value = str(value).strip()
        number = _as_number(value.replace(",", ""))
        if number is not None:
            return any(math.isclose(n, number, rel_tol=1e-9, abs_tol=1e-6) for n in numbers)
        return bool(value) and value.lower() in text.lower()

    return sum(map(stated, values)) / len(values)


BUILTINS = {"exact": exact, "numeric": numeric, "regex": regex, "format": format_reward, "length": length,
            "repetition": repetition, "tool_call": tool_call, "tool_result": tool_result, "gt": gt}
_ARGUMENT = {"regex": "pattern", "length": "band"}  # the keyword a built-in's spec argument fills


# --- loading -------------------------------------------------------------------------------------------------------

class NamedReward:
    """A reward function with its name (for errors and logs), its weight and a fixed keyword argument."""

    def __init__(self, fn, name: str, weight: float = 1.0, **fixed):
        self.fn, self.name, self.weight, self.fixed = fn, name, weight, fixed

    def __call__(self, prompt: str, completion: str, **record) -> float:
        try:
            value = self.fn(prompt, completion, **{**record, **self.fixed})
        except Exception as e:
            raise RewardError(f"reward {self.name} raised {type(e).__name__}: {e} (prompt {prompt[:60]!r}); "
                              "a reward function takes (prompt, completion, **record) and returns a float") from e
        if isinstance(value, bool) or not isinstance(value, (int, float)) and not _is_scalar_tensor(value):
            raise RewardError(f"reward {self.name} returned {type(value).__name__} {value!r:.60}, not a number "
                              f"(prompt {prompt[:60]!r}); return a float")
        value = float(value)
        if not math.isfinite(value):
            raise RewardError(f"reward {self.name} returned {value} (prompt {prompt[:60]!r}); return a finite float")
        return value

    def __repr__(self):
        return f"{self.name}={self.weight:g}"


def _is_scalar_tensor(value) -> bool:
    return hasattr(value, "item") and getattr(value, "ndim", None) == 0


def load_reward(spec: str) -> NamedReward:
    """A `NamedReward` from a spec: NAME[:ARG][=WEIGHT] for a built-in, module:function[=WEIGHT], or
    file.py[:function][=WEIGHT]. See the module docstring."""
    spec = spec.strip()
    weight = 1.0
    head, sep, tail = spec.rpartition("=")
    if sep and _as_number(tail) is not None:
        spec, weight = head, float(tail)
    name, _, arg = spec.partition(":")
    if name in BUILTINS:
        fixed = {}
        if arg:
            if name not in _ARGUMENT:
                raise ValueError(f"--reward {spec}: the built-in {name} takes no argument")
            fixed[_ARGUMENT[name]] = arg
        if name == "length":
            band = fixed.get("band", "1-200")
            if not re.fullmatch(r"\d+-\d+", band) or int(band.split("-")[0]) > int(band.split("-")[1]):
                raise ValueError(f"--reward {spec}: the length band is LO-HI in characters, e.g. length:20-200")
        return NamedReward(BUILTINS[name], name, weight, **fixed)
    if name.endswith(".py"):
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"--reward {spec}: no such file {path}")
        module_spec = importlib.util.spec_from_file_location(f"minimind_reward_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        attr = arg or "reward"
    elif arg:
        try:
            module = importlib.import_module(name)
        except ImportError as e:
            raise ValueError(f"--reward {spec}: cannot import module {name} ({e})") from None
        attr = arg
    else:
        raise ValueError(f"--reward {spec}: not a built-in ({', '.join(BUILTINS)}), module:function or file.py")
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"--reward {spec}: {name} has no function {attr!r}")
    return NamedReward(fn, f"{name}:{attr}", weight)


class RewardModel:
    """A `transformers` sequence-classification model with one output, scoring prompt + completion in batches."""

    def __init__(self, path: str, device="cpu", batch_size: int = 16):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForSequenceClassification.from_pretrained(path).to(device).eval()
        except OSError as e:
            raise FileNotFoundError(f"--reward_model {path}: cannot load a sequence-classification model ({e})") \
                from None
        if self.model.config.num_labels != 1:
            raise ValueError(f"--reward_model {path}: the model has {self.model.config.num_labels} outputs; a reward "
                             "model has one (num_labels=1)")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.name, self.device, self.batch_size, self.torch = f"reward model {path}", device, batch_size, torch

    def text(self, messages: list[dict], completion: str) -> str:
        conversation = [*messages, {"role": "assistant", "content": completion}]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(conversation, tokenize=False)
        return "\n".join(m["content"] for m in conversation)

    def __call__(self, messages_list: list[list[dict]], completions: list[str]) -> list[float]:
        texts = [self.text(m, c) for m, c in zip(messages_list, completions)]
        scores = []
        with self.torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(texts[i:i + self.batch_size], return_tensors="pt", padding=True,
                                     truncation=True, max_length=2048).to(self.device)
                scores.extend(self.model(**enc).logits[:, 0].float().tolist())
        if not all(math.isfinite(s) for s in scores):
            raise RewardError(f"{self.name} returned a non-finite score")
        return scores


class Rewards:
    """The run's reward: the weighted sum of its functions (and the reward model's score, weight 1) per completion."""

    def __init__(self, specs: list[str], reward_model: str | None = None, device="cpu"):
        if not specs and not reward_model:
            raise ValueError("no reward: give --reward (e.g. numeric) or --reward_model")
        self.functions = [load_reward(s) for s in specs]
        self.model = RewardModel(reward_model, device) if reward_model else None

    def __call__(self, records: list[dict], completions: list[str]) -> list[float]:
        """One reward per (record, completion) pair."""
        totals = []
        for record, completion in zip(records, completions):
            fields = {k: v for k, v in record.items() if k not in ("prompt", "messages", "prompt_ids")}
            totals.append(sum(f.weight * f(record["prompt"], completion, **fields) for f in self.functions))
        if self.model is not None:
            scores = self.model([r["messages"] for r in records], completions)
            totals = [t + s for t, s in zip(totals, scores)]
        return totals

    def __repr__(self):
        parts = [repr(f) for f in self.functions] + ([self.model.name] if self.model else [])
        return " + ".join(parts)
