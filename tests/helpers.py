"""Small models shared by the test files (importable because pytest puts tests/ on sys.path)."""

import json

import torch

from minimind import MiniMindConfig, MiniMindForCausalLM


def tiny_model(seed=0, hidden=32, vocab=6400, **fields):
    """A random 2-layer model with 2 heads and 1 KV head unless `fields` say otherwise."""
    torch.manual_seed(seed)
    fields = {"num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
              "max_position_embeddings": 128, **fields}
    return MiniMindForCausalLM(MiniMindConfig(hidden_size=hidden, vocab_size=vocab, **fields))


def varied(model):
    """`model` with its matrices redrawn larger than the default init (std 0.15): peaked, varied next-token
    distributions (varied text, greedy choices far from ties), not one token over and over. Returns it."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15)
    return model


def save_model_dir(model, out):
    """`out` as a model directory (config, weights, the shipped tokenizer) that every command takes; returns it."""
    from minimind.tokenizer import load_tokenizer, save_tokenizer

    model.save_pretrained(out)
    save_tokenizer(load_tokenizer(), out)
    return out


TOOL_QUESTION = "What is 12 * 7?"
TOOL_REASONING = "Multiply them with the calculator."
TOOL_ANSWER = "12 * 7 = 84."


def tool_conversation(question=TOOL_QUESTION, expression="12 * 7", result="84", answer=TOOL_ANSWER,
                      reasoning=TOOL_REASONING):
    """A tool-use exchange in OpenAI's format: a question, thinking (unless reasoning is None) and a calculator
    call, the result, the answer."""
    from minimind.tools import tool_schemas

    call = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_0", "type": "function",
         "function": {"name": "calculator", "arguments": json.dumps({"expression": expression})}}]}
    if reasoning is not None:
        call["reasoning_content"] = reasoning
    return {"tools": tool_schemas(["calculator"]), "messages": [
        {"role": "user", "content": question}, call,
        {"role": "tool", "tool_call_id": "call_0", "content": result},
        {"role": "assistant", "content": answer}]}


_TOOL_MODEL = {}


def tool_model(steps=150):
    """A small model fine-tuned until it says two exchanges' assistant turns by heart (the SFT labels of
    minimind.data.messages; seconds on a CPU): asked TOOL_QUESTION with the calculator offered, it thinks, calls
    the calculator, and given the result answers TOOL_ANSWER; asked "What is 6 * 9?" next, or first, it calls the
    calculator without thinking (so an answer that must start with a call goes on as one). Built once per test
    session."""
    if "model" not in _TOOL_MODEL:
        from minimind.data.messages import encode_chat, parse_conversation
        from minimind.tokenizer import load_tokenizer

        tokenizer = load_tokenizer()
        second = tool_conversation("What is 6 * 9?", "6 * 9", "54", "6 * 9 = 54.", None)
        both = dict(tool_conversation(), messages=tool_conversation()["messages"] + second["messages"])
        records = [both, second]  # two turns in one conversation (the chat page's test), the second alone
        batches = [[torch.tensor([x]) for x in encode_chat(tokenizer, parse_conversation(r, "test"), 512)]
                   for r in records]
        model = tiny_model(hidden=64, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
        model.train()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # a tiny model: one thread is fastest (see conftest.one_thread)
        try:
            for _ in range(steps):
                loss = sum(model(ids, labels=labels).loss for ids, labels in batches)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        finally:
            torch.set_num_threads(threads)
        _TOOL_MODEL["model"] = model.eval()
        _TOOL_MODEL["loss"] = loss.item()
    return _TOOL_MODEL["model"]


class RandomTokens(torch.utils.data.Dataset):
    """`n` random sequences of `T` token ids in [3, 200), as {"input_ids", "labels"} items (the same ids)."""

    def __init__(self, n=32, T=16, seed=0):
        self.data = torch.randint(3, 200, (n, T), generator=torch.Generator().manual_seed(seed))

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return {"input_ids": self.data[i], "labels": self.data[i]}


def kill_once_saved(argv, out, metric_lines=3, timeout=120):
    """Run `python -m minimind *argv --output_dir out` on one thread and SIGKILL it as soon as it has saved a
    resumable state and logged `metric_lines` lines of metrics (or after `timeout` seconds)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from minimind.train.resume import STATE_FILE

    proc = subprocess.Popen([sys.executable, "-m", "minimind", *argv, "--output_dir", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None:
            metrics = out / "metrics.jsonl"
            if (out / STATE_FILE).exists() and metrics.exists() and metrics.read_text().count("\n") >= metric_lines:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
