"""`minimind eval MODEL --tasks tooluse`: a tool-use model on held-out arithmetic questions, with the real
calculator, the way a user meets it.

The questions (`minimind.data.tooluse.eval_questions`): + - * of 2-3 digit numbers, English and Chinese, half in
phrasings training saw and half in phrasings held out from it (`UNSEEN`), numbers from a seed training never uses,
and every question in the held-out split. Each is asked with the calculator offered; greedy turns follow one
another: a turn's tool calls are run by the real tool and their results appended as the chat template renders them,
until a turn calls nothing (its text is the final answer) or `max_turns` is reached. Reported, overall, for seen and
unseen phrasings and per language:

    well_formed   the first turn holds a tool call that parses
    right_call    ... to the calculator, with an expression whose value is the right result
    exact         the final answer's last number is the right result

In-process (`tooluse_report(model, tokenizer)`) the turns go through the decode engine, 16 questions at a time.
`--base_url` (`served_report`) drives a running server through the OpenAI protocol instead, with the official
`openai` client, `tools=[calculator]`, the client running the tool and sending its result back, as any client would.
"""

import json
import re

from ..data.messages import prompt_ids
from ..data.parse import parse_output
from ..data.tooluse import EVAL_SEED, eval_questions
from ..tools import run_tool, tool_schemas

MAX_TURNS = 3
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def last_number_is(text: str, answer: str) -> bool:
    """Whether the last number in `text` (thinking left out, thousands commas ignored) equals `answer`."""
    numbers = NUMBER.findall(text.rsplit("</think>", 1)[-1].replace(",", ""))
    return bool(numbers) and float(numbers[-1]) == float(answer)


def _assistant(parsed, turn: int) -> dict:
    """The assistant message a parsed turn makes (calls get ids, as a server gives them)."""
    calls = [{"id": f"call_{turn}_{i}", "type": "function",
              "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)}}
             for i, c in enumerate(parsed.tool_calls)]
    return {"role": "assistant", "content": parsed.content or None, **({"tool_calls": calls} if calls else {})}


def agent_turns(model, tokenizer, questions: list[str], tools: list[str] = ("calculator",), max_new_tokens: int = 64,
                max_turns: int = MAX_TURNS, batch: int = 16) -> list[dict]:
    """Each question answered through the engine, greedily, its tool calls run (see the module docstring):
    [{"calls": [{"name", "arguments", "result"}], "first_text", "first_calls", "final"}] in the questions' order
    (`first_calls`: how many well-formed calls the first turn made)."""
    from ..infer.generate import generate_text

    schemas = tool_schemas(tools)
    chats = [[{"role": "user", "content": q}] for q in questions]
    out = [{"calls": [], "first_text": None, "first_calls": 0, "final": ""} for _ in questions]
    active = list(range(len(questions)))
    for turn in range(max_turns):
        texts = []
        for i in range(0, len(active), batch):
            prompts = [prompt_ids(tokenizer, chats[j], schemas) for j in active[i:i + batch]]
            texts += generate_text(model, tokenizer, prompts, max_new_tokens)
        still = []
        for j, text in zip(active, texts):
            parsed = parse_output(text)
            if out[j]["first_text"] is None:
                out[j]["first_text"], out[j]["first_calls"] = text, len(parsed.tool_calls)
            out[j]["final"] = parsed.content
            if not parsed.tool_calls or turn == max_turns - 1:
                continue
            chats[j].append(_assistant(parsed, turn))
            for call, message in zip(parsed.tool_calls, chats[j][-1]["tool_calls"]):
                result = run_tool(call["name"], call["arguments"]) if call["name"] in tools else \
                    f"error: unknown tool {call['name']!r}"
                out[j]["calls"].append({**call, "result": result})
                chats[j].append({"role": "tool", "tool_call_id": message["id"], "content": result})
            still.append(j)
        active = still
        if not active:
            break
    return out


def served_turns(base_url: str, questions: list[str], model: str = "minimind", api_key: str = "none",
                 max_tokens: int = 64, max_turns: int = MAX_TURNS) -> list[dict]:
    """`agent_turns` through a running server: the official `openai` client, the calculator in `tools`, greedy,
    the client running the tool and sending its result back."""
    try:
        from openai import OpenAI
    except ImportError:
        raise ValueError("--base_url needs the openai client: pip install openai") from None
    client = OpenAI(base_url=base_url, api_key=api_key)
    schemas = tool_schemas(["calculator"])
    out = []
    for question in questions:
        messages = [{"role": "user", "content": question}]
        row = {"calls": [], "first_text": None, "first_calls": 0, "final": ""}
        for turn in range(max_turns):
            reply = client.chat.completions.create(model=model, messages=messages, tools=schemas, temperature=0,
                                                   max_tokens=max_tokens).choices[0].message
            calls = reply.tool_calls or []
            if row["first_text"] is None:
                row["first_text"], row["first_calls"] = reply.content or "", len(calls)
            row["final"] = reply.content or ""
            if not calls or turn == max_turns - 1:
                break
            messages.append({"role": "assistant", "content": reply.content,
                             "tool_calls": [c.model_dump() for c in calls]})
            for call in calls:
                result = run_tool(call.function.name, call.function.arguments) \
                    if call.function.name == "calculator" else f"error: unknown tool {call.function.name!r}"
                try:
                    arguments = json.loads(call.function.arguments)
                except ValueError:
                    arguments = call.function.arguments
                row["calls"].append({"name": call.function.name, "arguments": arguments, "result": result})
                messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
        out.append(row)
    return out


def score(questions: list[dict], turns: list[dict]) -> dict:
    """The report of `turns` on `questions`: the three rates (module docstring) overall, per phrasing and per
    language, and the first failures to look at."""
    rows = []
    for q, t in zip(questions, turns):
        first = t["calls"][0] if t["calls"] else None
        well_formed = t["first_calls"] > 0
        right_call = first is not None and first["name"] == "calculator" and first["result"] == q["answer"]
        exact = last_number_is(t["final"], q["answer"])
        rows.append({**q, "well_formed": well_formed, "right_call": right_call, "exact": exact,
                     "call": first and first["arguments"], "final": t["final"]})

    def rates(subset):
        n = len(subset)
        return {"questions": n, **{k: round(sum(r[k] for r in subset) / n, 4) if n else 0.0
                                   for k in ("well_formed", "right_call", "exact")}}

    report = {"all": rates(rows)}
    for key in ("phrasing", "lang"):
        for value in sorted({r[key] for r in rows}):
            report[value] = rates([r for r in rows if r[key] == value])
    report["failures"] = [{k: r[k] for k in ("question", "answer", "call", "final")}
                          for r in rows if not r["exact"]][:10]
    return report


def tooluse_report(model, tokenizer, n: int = 200, seed: int = EVAL_SEED, max_new_tokens: int = 64) -> dict:
    """`score` of `model` on `n` held-out questions through the engine."""
    questions = eval_questions(n, seed)
    return score(questions, agent_turns(model, tokenizer, [q["question"] for q in questions],
                                        max_new_tokens=max_new_tokens))


def served_report(base_url: str, n: int = 200, seed: int = EVAL_SEED, model: str = "minimind",
                  api_key: str = "none") -> dict:
    """`score` of the model a server at `base_url` serves, on `n` held-out questions, through the OpenAI protocol."""
    questions = eval_questions(n, seed)
    return score(questions, served_turns(base_url, [q["question"] for q in questions], model, api_key))
