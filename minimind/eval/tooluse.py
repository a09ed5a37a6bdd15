"""`minimind eval MODEL --tasks tooluse`: how often a model answers held-out arithmetic questions with a
well-formed calculator call, and with one whose result is right (the questions: `minimind.data.tooluse`).
"""

from ..data.messages import prompt_ids
from ..data.parse import parse_output
from ..data.tooluse import SEED, calculator_questions
from ..infer.generate import generate_text
from ..tools import run_tool, tool_schemas


def calculator_call_rate(model, tokenizer, n: int = 100, max_new_tokens: int = 48, seed: int = SEED) -> dict:
    """Greedy answers of `model` to `n` held-out arithmetic questions (calculator and one other tool offered):
    `well_formed` is the share whose output parses to a calculator call (`minimind.data.parse`), `correct` the
    share whose call's result is the right number."""
    well_formed = correct = 0
    questions = calculator_questions(n, seed)
    prompts = [prompt_ids(tokenizer, [{"role": "user", "content": q}], tool_schemas(["calculator", other]))
               for q, other, _ in questions]
    texts = []
    for i in range(0, len(prompts), 16):  # greedy, 16 prompts at a time
        texts += generate_text(model, tokenizer, prompts[i:i + 16], max_new_tokens)
    for (question, other, expected), text in zip(questions, texts):
        calls = parse_output(text).tool_calls
        if calls and calls[0]["name"] == "calculator":
            well_formed += 1
            correct += run_tool("calculator", calls[0]["arguments"]) == expected
    return {"questions": len(questions), "well_formed": well_formed / len(questions),
            "correct": correct / len(questions)}
