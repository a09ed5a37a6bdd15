"""The OpenAI-compatible server, driven by the official `openai` client against a real uvicorn server: answers equal
minimind.infer.generate's, streaming equals non-streaming, stop strings, usage, max_tokens, concurrent requests batched
(and each as alone, sampled ones too), the API key, OpenAI-style errors naming the field, the web page; any model name
served and echoed, MiniMind-3's own client's request (open_thinking, reasoning_effort), reasoning_effort's levels."""

import copy
import http.client
import json
import re
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest
import torch
import uvicorn
from helpers import varied

from minimind import MiniMindConfig, MiniMindForCausalLM
from minimind.data.messages import parse_conversation, prompt_ids
from minimind.infer.generate import generate, generate_text
from minimind.serve.app import create_app
from minimind.serve.server import listen
from minimind.tokenizer import load_tokenizer

CONTEXT = 256


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = MiniMindConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            vocab_size=6400, max_position_embeddings=CONTEXT)
    m = varied(MiniMindForCausalLM(config).eval())
    return m


def start_server(app):
    """Run `app` under uvicorn in a background thread; returns (server, thread, base url)."""
    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 300  # the first server on a machine builds the native decode step (cached)
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.01)
    return server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}"


@contextmanager
def serving(app):
    """`start_server(app)` as a context: the base url, and the server stopped after."""
    server, thread, url = start_server(app)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(model, tokenizer):
    app = create_app(model, tokenizer, model_name="tiny", max_tokens_limit=200, max_batch=4, max_request_bytes=20000)
    server, thread, url = start_server(app)
    yield app, url
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[1] + "/v1", api_key="unused", max_retries=0, timeout=60)


def readme_snippet(marker: str, url: str) -> str:
    """The README's code block holding `marker` (README.zh-CN.md shows the same code), pointed at the server `url`
    instead of the README's http://127.0.0.1:8000."""
    root = Path(__file__).resolve().parent.parent
    found = [[b for b in re.findall(r"```python\n(.*?)```", (root / doc).read_text(encoding="utf-8"), re.S)
              if marker in b] for doc in ("README.md", "README.zh-CN.md")]
    assert len(found[0]) == 1 and found[1] == found[0], f"one README block with {marker!r}, the same in both"
    return found[0][0].replace("http://127.0.0.1:8000/v1", url + "/v1")


def http_call(url, body=None, method=None):
    """(status, content type, body bytes) of a plain HTTP request; `body`: bytes, or an object sent as JSON."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.headers["content-type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["content-type"], e.read()


def chat_ids(tokenizer, messages):
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer.encode(text, add_special_tokens=False)


def user(text):
    return [{"role": "user", "content": text}]


def test_models_health_and_page(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"
    assert client.models.retrieve("other").id == "other"  # any name is served, as in requests
    status, _, body = http_call(server[1] + "/health")
    health = json.loads(body)
    assert status == 200 and health["status"] == "ok" and health["model"] == "tiny" and health["context"] == CONTEXT
    status, kind, body = http_call(server[1] + "/")
    page = body.decode()
    assert status == 200 and kind.startswith("text/html") and "/v1/chat/completions" in page
    assert "src=" not in page and "<link" not in page  # one file: nothing fetched from elsewhere


def test_greedy_chat_equals_generate_and_counts_tokens(model, tokenizer, client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0)
    ids = chat_ids(tokenizer, messages)
    assert r.choices[0].message.content == generate_text(model, tokenizer, [ids], 12)[0]
    assert r.choices[0].message.role == "assistant" and r.model == "tiny" and r.id.startswith("chatcmpl-")
    new = generate(model, torch.tensor([ids]), max_new_tokens=12, eos_token_id=tokenizer.eos_token_id)[0, len(ids):]
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == len(new)
    assert r.usage.total_tokens == len(ids) + len(new)
    assert r.choices[0].finish_reason == ("stop" if new[-1] == tokenizer.eos_token_id else "length")
    # content as a list of text parts is the same message
    parts = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]}, messages[1]]
    r2 = client.chat.completions.create(model="tiny", messages=parts, max_tokens=12, temperature=0)
    assert r2.choices[0].message.content == r.choices[0].message.content


def test_messages_are_read_as_the_training_data_reads_them(model, tokenizer, client):
    """developer is system, text parts are joined with "\\n", name is dropped: as `minimind.data.messages` reads
    an SFT record."""
    parts = [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Ok?"}]
    messages = [{"role": "developer", "content": parts}, {"role": "user", "content": "Hello", "name": "ann"}]
    trained = parse_conversation({"messages": messages + [{"role": "assistant", "content": "Hi."}]}, "test")[:-1]
    assert trained[0] == {"role": "system", "content": "Be brief.\nOk?"}
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0)
    ids = chat_ids(tokenizer, trained)
    assert r.usage.prompt_tokens == len(ids)
    assert r.choices[0].message.content == generate_text(model, tokenizer, [ids], 8)[0]


def test_compile_decodes_through_the_compiled_forward(model, tokenizer, monkeypatch):
    """--compile reaches the decode loop (the compile itself is tested in test_generate.py; here it is replaced by
    the model, so that this test stays fast)."""
    import minimind.infer.engine

    compiled = []
    monkeypatch.setattr(minimind.infer.engine, "compiled_forward", lambda m, **_: compiled.append(m) or m)
    server, thread, url = start_server(create_app(model, tokenizer, model_name="tiny", compile=True))
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        r = client.completions.create(model="tiny", prompt="In the beginning", max_tokens=8, temperature=0)
        assert compiled and compiled[0] is model
        assert r.choices[0].text == generate_text(model, tokenizer, ["In the beginning"], 8)[0]
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_max_tokens_gives_length(client):
    r = client.chat.completions.create(model="tiny", messages=user("Hello"), max_completion_tokens=3, temperature=0)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3
    r = client.completions.create(model="tiny", prompt="In the beginning", max_tokens=5, temperature=0)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5


def test_stream_equals_non_stream_with_multibyte_text(client):
    kwargs = dict(model="tiny", messages=user("你好"), max_tokens=40, temperature=0)
    whole = client.chat.completions.create(**kwargs)
    text = whole.choices[0].message.content
    assert any(ord(c) > 127 for c in text)  # the answer holds multi-byte characters: pieces must not split them
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 5  # really streamed, in pieces
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == \
        [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()


def test_completions_with_a_list_prompt(model, tokenizer, client):
    prompts = ["In the beginning", "Python is a", "你好"]
    r = client.completions.create(model="tiny", prompt=prompts, max_tokens=10, temperature=0)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert [c.text for c in r.choices] == generate_text(model, tokenizer, prompts, 10)
    prompt_ids = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    assert r.usage.prompt_tokens == sum(len(ids) + 1 for ids in prompt_ids)  # + the bos each prompt begins with
    streamed = ["", "", ""]
    for chunk in client.completions.create(model="tiny", prompt=prompts, max_tokens=10, temperature=0, stream=True):
        streamed[chunk.choices[0].index] += chunk.choices[0].text
    assert streamed == [c.text for c in r.choices]


def prompt_logprobs(model, ids):
    """log p(ids[j] | ids[:j]) for j >= 1, and the argmax at each position, from one plain forward pass."""
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    return [float(logp[j - 1, ids[j]]) for j in range(1, len(ids))], logp.argmax(-1).tolist()


def test_completions_echo_logprobs_as_lm_eval_reads_them(model, tokenizer, client):
    """What lm-evaluation-harness's local-completions sends for a log-likelihood: token-id prompts, a batch of them,
    echo, logprobs=1, max_tokens=1; it sums token_logprobs[context length:-1]."""
    prompts = [list(range(10, 30)), [7, 99, 1000, 42, 5]]
    out = client.completions.create(model="tiny", prompt=prompts, echo=True, logprobs=1, max_tokens=1,
                                    temperature=0)
    for choice, ids in zip(sorted(out.choices, key=lambda c: c.index), prompts):
        lp = choice.logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(ids) + 1  # prompt + 1 made
        assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # the first token has no context
        want, argmax = prompt_logprobs(model, ids)
        assert max(abs(a - b) for a, b in zip(lp.token_logprobs[1:len(ids)], want)) < 1e-4
        for j in range(1, len(ids)):  # top-1 plus the chosen token; greedy exactly where the argmax is the token
            top = lp.top_logprobs[j]
            assert 1 <= len(top) <= 2 and max(top.values()) >= lp.token_logprobs[j] - 1e-6
            assert (max(top.values()) == lp.token_logprobs[j]) == (argmax[j - 1] == ids[j])
        assert choice.text.startswith(tokenizer.decode(ids)) and lp.text_offset[0] == 0
        made = generate(model, torch.tensor([ids]), max_new_tokens=1, do_sample=False)[0, -1].item()
        assert lp.tokens[-1] == tokenizer.decode([made])  # the generated token, scored like the prompt's
        assert abs(lp.token_logprobs[-1] - prompt_logprobs(model, ids + [made])[0][-1]) < 1e-4


def test_completions_text_prompt_echo_and_logprobs(model, tokenizer, client):
    text = "In the beginning God created"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    out = client.completions.create(model="tiny", prompt=text, echo=True, logprobs=3, max_tokens=4, temperature=0)
    choice = out.choices[0]
    assert choice.text.startswith(text)
    lp = choice.logprobs
    assert "".join(lp.tokens) == choice.text and len(lp.tokens) == len(ids) + out.usage.completion_tokens
    bos_ids = [tokenizer.bos_token_id, *ids]  # the server scores a text prompt after the bos it puts in front
    want = prompt_logprobs(model, bos_ids)[0]
    assert max(abs(a - b) for a, b in zip(lp.token_logprobs[:len(ids)], want)) < 1e-4  # the first one too
    assert all(3 <= len(t) <= 4 for t in lp.top_logprobs)
    plain = client.completions.create(model="tiny", prompt=text, logprobs=0, max_tokens=4, temperature=0).choices[0]
    assert plain.text == choice.text[len(text):] and plain.logprobs.token_logprobs == lp.token_logprobs[len(ids):]
    assert plain.logprobs.text_offset[0] == len(text)
    echoed = client.completions.create(model="tiny", prompt=text, echo=True, max_tokens=4, temperature=0).choices[0]
    assert echoed.text == choice.text and echoed.logprobs is None


def test_chat_logprobs_and_top_logprobs(model, tokenizer, client):
    out = client.chat.completions.create(model="tiny", messages=user("Hello there"), max_tokens=6, temperature=0,
                                         logprobs=True, top_logprobs=3)
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens == 6
    assert "".join(t.token for t in content) == out.choices[0].message.content
    ids = chat_ids(tokenizer, user("Hello there"))
    made = [tokenizer.encode(t.token, add_special_tokens=False) for t in content]
    full = ids + [t for m in made for t in m]
    want = prompt_logprobs(model, full)[0][len(ids) - 1:]
    for t, w in zip(content, want):
        assert abs(t.logprob - w) < 1e-4 and t.bytes == list(t.token.encode("utf-8"))
        assert len(t.top_logprobs) == 3 and t.top_logprobs[0].logprob == t.logprob  # greedy: the best one
        assert [a.logprob for a in t.top_logprobs] == sorted((a.logprob for a in t.top_logprobs), reverse=True)
    assert client.chat.completions.create(model="tiny", messages=user("Hi"), max_tokens=2).choices[0].logprobs is None


def test_stop_strings_end_the_text_and_are_not_in_it(client):
    kwargs = dict(model="tiny", messages=user("Hello"), max_tokens=30, temperature=0)
    full = client.chat.completions.create(**kwargs).choices[0].message.content
    stop = full[10:13]
    assert len(full) > 15 and stop.strip()
    for stream in (False, True):
        if stream:
            chunks = list(client.chat.completions.create(**kwargs, stop=[stop, "never appears"], stream=True))
            text = "".join(c.choices[0].delta.content or "" for c in chunks)
            reason = next(c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason)
        else:
            choice = client.chat.completions.create(**kwargs, stop=stop).choices[0]
            text, reason = choice.message.content, choice.finish_reason
        assert text == full[:full.find(stop)] and reason == "stop"


def ask_alone(client, prompt, **kw):
    return client.chat.completions.create(model="tiny", messages=user(prompt), max_tokens=kw.pop("max_tokens", 16),
                                          **kw).choices[0].message.content


def test_concurrent_requests_are_batched_and_answer_as_alone(model, tokenizer, server, client):
    engine = idle_engine(server)
    requests = [("Hello", dict(temperature=0)), ("你好", dict(temperature=0, max_tokens=7)),
                ("Tell me a story", dict(temperature=0, stop="e")),
                ("Hello", dict(temperature=0.9, top_p=0.8, seed=7))]
    # the sampled one draws from its own seeded generator: the same text as minimind.infer.generate with that seed alone
    sampled = generate_text(model, tokenizer, [chat_ids(tokenizer, user("Hello"))], 16, do_sample=True,
                            temperature=0.9, top_p=0.8, seed=7)[0]
    alone = [ask_alone(client, p, **kw) for p, kw in requests]
    assert alone[3] == sampled and alone[0] != sampled
    before = dict(engine.stats)
    results = [None] * len(requests)

    def ask(i):
        results[i] = ask_alone(client, requests[i][0], **requests[i][1])
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(requests))]
    with engine.paused():  # the requests queue up while no batch may start
        for t in threads:
            t.start()
        # the worker holds the first one, waiting to start
        wait_for(lambda: engine.queued() == len(requests) - 1, "the requests to queue up")
    for t in threads:
        t.join(timeout=60)
    assert results == alone
    assert engine.stats["batches"] == before["batches"] + 1 and engine.stats["largest_batch"] == len(requests)


def test_n_choices_and_seed(tokenizer, client):
    kw = dict(model="tiny", messages=user("Hello"), max_tokens=10, temperature=1.0, seed=3, n=3)
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    texts = [c.message.content for c in a.choices]
    assert texts == [c.message.content for c in b.choices] and len(set(texts)) == 3  # seeded; the choices differ
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert a.usage.prompt_tokens == len(chat_ids(tokenizer, user("Hello")))  # the prompt counts once
    assert 3 <= a.usage.completion_tokens <= 30


def open_stream(url, body):
    """A streaming request on a raw connection (to hang up on): (connection, response)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.request("POST", "/v1/chat/completions", json.dumps({**body, "stream": True}),
                       {"Content-Type": "application/json"})
    return connection, connection.getresponse()


def wait_for(condition, what):
    deadline = time.time() + 20
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def idle_engine(server):
    """The server's engine once the answers of earlier tests (clients that left included) have let go of it."""
    engine = server[0].state.engine
    wait_for(lambda: engine.columns() == 0 and engine.queued() == 0, "the engine to be idle")
    return engine


def test_clients_leaving_do_not_break_the_worker(model, tokenizer, server, client):
    engine = idle_engine(server)
    expected = generate_text(model, tokenizer, [chat_ids(tokenizer, user("Hello"))], 16)[0]
    body = {"messages": user("Hello"), "max_tokens": 200, "temperature": 0}
    # mid-answer: one event, then hang up; the next request gets its answer
    connection, response = open_stream(server[1], body)
    assert response.status == 200 and response.readline().startswith(b"data: {")
    connection.close()
    assert ask_alone(client, "Hello", temperature=0) == expected
    # before the answer starts: the job is dropped, never decoded
    before = dict(engine.stats)
    with engine.paused():
        connection, response = open_stream(server[1], body)
        assert response.readline().startswith(b"data: {")  # the role chunk comes before any token
        connection.close()
        wait_for(lambda: engine.stats["cancelled"] == before["cancelled"] + 1, "the server to see the client leave")
    assert ask_alone(client, "Hello", temperature=0) == expected
    assert engine.stats["requests"] == before["requests"] + 1 and engine.thread.is_alive()


def stream_in_background(url, body):
    """Stream `body` from a thread: (the texts received so far, the thread); the texts list grows as chunks come."""
    texts = []

    def read():
        connection, response = open_stream(url, body)
        for line in response:
            if line.startswith(b"data: {"):
                choice = json.loads(line[6:])["choices"][0]
                texts.append(choice["delta"].get("content") or "")
        connection.close()
    thread = threading.Thread(target=read)
    thread.start()
    return texts, thread


def join_while_running(server, client, ask, long_body, after=5):
    """`ask()` sent while a long streamed answer is mid-decode: (ask's result, the long text, whether the long one
    was still streaming when ask's answer came). The worker is paused while the request is queued, so it joins at
    the next step."""
    engine = idle_engine(server)
    texts, thread = stream_in_background(server[1], long_body)
    wait_for(lambda: len(texts) > after, "the long answer to start")
    result = []
    with engine.paused():
        asker = threading.Thread(target=lambda: result.append(ask()))
        asker.start()
        wait_for(lambda: engine.queued() == 1, "the request to queue up")
    asker.join(timeout=60)
    still_running = thread.is_alive()
    thread.join(timeout=60)
    return result[0], "".join(texts), still_running


def test_a_request_joins_the_running_batch_and_answers_as_alone(server, client):
    engine = idle_engine(server)
    long_body = {"messages": user("Tell me a story"), "max_tokens": 600, "temperature": 0}
    long_alone = ask_alone(client, "Tell me a story", max_tokens=600, temperature=0)
    short_alone = ask_alone(client, "你好", temperature=0)
    before = dict(engine.stats)
    short, long, _ = join_while_running(
        server, client, lambda: ask_alone(client, "你好", temperature=0), long_body)
    assert short == short_alone and long == long_alone
    # (whether the long answer was still running when the short one returned is timing: with the native one-row
    # step the long one can finish first on a loaded machine; joined_running below says the short one joined it)
    assert engine.stats["joined_running"] == before["joined_running"] + 1
    assert engine.stats["batches"] == before["batches"] + 1 and engine.stats["requests"] == before["requests"] + 2


def test_a_seeded_request_joins_with_a_longer_prompt_and_samples_as_alone(server, client):
    engine = idle_engine(server)
    # 80 prompt tokens: more columns than the running batch holds, so the running side is the one padded
    kw = dict(model="tiny", prompt=[list(range(300, 380))], max_tokens=12, temperature=0.9, seed=11, n=2,
              repetition_penalty=1.2, stop="e")
    kw["extra_body"] = {"repetition_penalty": kw.pop("repetition_penalty")}
    alone = [c.text for c in client.completions.create(**kw).choices]
    assert alone[0] != alone[1]
    long_body = {"messages": user("Hello"), "max_tokens": 200, "temperature": 0}
    long_alone = ask_alone(client, "Hello", max_tokens=200, temperature=0)
    before = dict(engine.stats)
    joined, long, _ = join_while_running(
        server, client, lambda: [c.text for c in client.completions.create(**kw).choices], long_body, after=2)
    assert joined == alone and long == long_alone
    assert engine.stats["joined_running"] == before["joined_running"] + 1


def test_cache_columns_stay_bounded_while_the_server_stays_busy(server):
    """Five overlapping answers of 120 tokens, each joining while the one before it runs: the batch never empties
    for ~300 steps (more than the context window), yet the cache holds only the columns live rows use."""
    engine = idle_engine(server)
    engine.stats["largest_cache"] = 0
    before = dict(engine.stats)
    body = {"messages": user("Hello"), "max_tokens": 120, "temperature": 0}
    streams = [stream_in_background(server[1], body)]
    for _ in range(4):
        wait_for(lambda: len(streams[-1][0]) > 40, "the answer before to be well under way")
        with engine.paused():
            streams.append(stream_in_background(server[1], body))
            wait_for(lambda: engine.queued() == 1, "the request to queue up")
    for _, thread in streams:
        thread.join(timeout=60)
    assert engine.stats["joined_running"] == before["joined_running"] + 4  # one batch all along
    assert engine.stats["batches"] == before["batches"] + 1
    # a row uses at most its prompt (12 tokens) + 120 columns: without dropping the dead ones, ~300
    assert engine.stats["largest_cache"] <= 12 + 120 + 1
    wait_for(lambda: engine.columns() == 0, "the engine to let go of the batch")  # idle: nothing held


@pytest.mark.parametrize("kwargs, param, words", [
    (dict(messages=[]), "messages", "non-empty"),
    (dict(messages=[{"role": "robot", "content": "hi"}]), "messages[0].role", "robot"),
    (dict(messages=[{"role": "user"}]), "messages[0].content", "string"),
    (dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
     "messages[0].content[0]", "only text parts"),
    (dict(messages=[{"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {
        "name": "calc", "arguments": "{1"}}]}]), "messages[0].tool_calls[0].function.arguments", "valid JSON"),
    (dict(tools=[{"type": "function", "function": {"parameters": {}}}]), "tools[0].function.name", "missing"),
    (dict(tool_choice="required"), "tool_choice", "needs tools"),
    (dict(tool_choice={"type": "function", "function": {"name": "x"}}), "tool_choice", "not in tools"),
    (dict(extra_body={"enable_thinking": "yes"}), "enable_thinking", "true or false"),
    (dict(temperature="hot"), "temperature", "must be a number"),
    (dict(temperature=2.5), "temperature", "[0, 2]"),
    (dict(top_p=0), "top_p", "(0, 1]"),
    (dict(max_tokens=0), "max_tokens", "max_tokens must be an integer"),
    (dict(max_tokens=2.5), "max_tokens", "integer"),
    (dict(n=50), "n", "[1, 4]"),
    (dict(stop=["a", "b", "c", "d", "e"]), "stop", "at most 4"),
    (dict(presence_penalty=0.5), "presence_penalty", "repetition_penalty"),
    (dict(logit_bias={"5": 1}), "logit_bias", "not supported"),
    (dict(response_format={"type": "xml"}), "response_format", "json_schema"),
    (dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"age": {"type": "integer", "minimum": 0}}}}}),
     "response_format.json_schema.schema", "unsupported schema keyword minimum at properties.age"),
    (dict(response_format={"type": "json_object"}, extra_body={"enable_thinking": True}), "response_format",
     "without thinking"),
    (dict(extra_body={"reasoning_effort": "max"}), "reasoning_effort", "one of none, minimal, low"),
    (dict(extra_body={"reasoning_effort": "high", "enable_thinking": False}), "enable_thinking", "disagree"),
    (dict(extra_body={"chat_template_kwargs": {"open_thinking": True, "enable_thinking": False}}),
     "chat_template_kwargs", "disagree"),
    (dict(extra_body={"chat_template_kwargs": {"tools_first": True}}), "chat_template_kwargs", "open_thinking"),
    (dict(top_logprobs=3), "top_logprobs", "needs logprobs"),
    (dict(logprobs=True, top_logprobs=30), "top_logprobs", "[0, 20]"),
    (dict(logprobs=True, stream=True), "logprobs", "without stream"),
    (dict(extra_body={"bogus_field": 1}), "bogus_field", "unrecognized"),
    (dict(stream="yes"), "stream", "true or false"),
])
def test_bad_requests_name_the_field(client, kwargs, param, words):
    kwargs = {"model": "tiny", "messages": user("Hello"), "max_tokens": 4, **kwargs}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**kwargs)
    error = info.value.body
    assert info.value.status_code == 400 and error["param"] == param and error["type"] == "invalid_request_error"
    assert param in error["message"] and words in error["message"]


def test_prompt_longer_than_the_context(client, tokenizer):
    long = "word " * 400
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny", messages=user(long), max_tokens=4)
    n = len(chat_ids(tokenizer, user(long)))
    assert f"{n} tokens long" in str(info.value) and f"context window is {CONTEXT}" in str(info.value)
    assert info.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError, match=r"but 260 were requested \(60 in the prompt \+ 200 max_tokens"):
        client.completions.create(model="tiny", prompt=[list(range(3, 63))], max_tokens=200)
    with pytest.raises(openai.BadRequestError, match="prompt"):
        client.completions.create(model="tiny", prompt=[], max_tokens=4)


def test_any_model_name_is_served_and_echoed(client):
    """As MiniMind's own server: the one model answers whatever name a client sends, and the answer names it back."""
    kw = dict(messages=user("Hello"), max_tokens=6, temperature=0)
    ours = client.chat.completions.create(model="tiny", **kw)
    other = client.chat.completions.create(model="minimind-local:latest", **kw)
    assert other.model == "minimind-local:latest" and ours.model == "tiny"
    assert other.choices[0].message.content == ours.choices[0].message.content
    text = client.completions.create(model="gpt-4o", prompt="Hi", max_tokens=2)
    assert text.model == "gpt-4o"


def test_max_tokens_over_the_server_cap_gets_the_cap(client):
    r = client.chat.completions.create(model="tiny", messages=user("Hello"), max_tokens=10_000, temperature=0)
    capped = client.chat.completions.create(model="tiny", messages=user("Hello"), max_tokens=200, temperature=0)
    assert r.usage.completion_tokens == capped.usage.completion_tokens <= 200  # --max_tokens_limit of this server
    assert r.choices[0].message.content == capped.choices[0].message.content


def test_minimind_chat_api_request(tokenizer, client):
    """What MiniMind-3's own client (scripts/chat_api.py) sends: its model name, max_tokens 2048, thinking opened by
    chat_template_kwargs {"open_thinking": true} and reasoning_effort "medium"; streamed, reasoning_content first."""
    messages = user("Hello")
    kw = dict(model="minimind-local:latest", messages=messages, temperature=0.8, max_tokens=2048, top_p=0.8,
              extra_body={"chat_template_kwargs": {"open_thinking": True}, "reasoning_effort": "medium"}, seed=5)
    thinking = len(prompt_ids(tokenizer, messages, enable_thinking=True))
    whole = client.chat.completions.create(**kw)
    assert whole.usage.prompt_tokens == thinking  # the prompt opened <think>
    message = whole.choices[0].message
    assert message.model_extra["reasoning_content"] and not message.content  # a random model never closes it
    reasoning = ""
    for chunk in client.chat.completions.create(**kw, stream=True):
        if chunk.choices and chunk.choices[0].delta is not None:
            reasoning += getattr(chunk.choices[0].delta, "reasoning_content", None) or ""
            assert not chunk.choices[0].delta.content
    assert reasoning == message.model_extra["reasoning_content"]  # seeded: the same answer


@pytest.mark.parametrize("effort, thinking", [("none", False), ("minimal", False), ("low", True), ("high", True)])
def test_reasoning_effort_switches_thinking(tokenizer, client, effort, thinking):
    r = client.chat.completions.create(model="tiny", messages=user("Hello"), max_tokens=2,
                                       extra_body={"reasoning_effort": effort})  # (a field of newer clients)
    assert r.usage.prompt_tokens == len(prompt_ids(tokenizer, user("Hello"), enable_thinking=thinking))


def test_unknown_route_bad_json_and_too_large(server, client):
    url = server[1]
    for (status, kind, body), expected, words in [
        (http_call(url + "/v1/chat/completions", b'{"messages": ['), 400, "not valid JSON"),
        (http_call(url + "/v1/chat/completions", b'[1, 2]'), 400, "JSON object"),
        (http_call(url + "/v1/completions", b'{"prompt": "a", "temperature": NaN}'), 400, "temperature must be"),
        (http_call(url + "/v1/completions", {"prompt": "x" * 30000}), 413, "20000 bytes"),
        (http_call(url + "/v1/nothing"), 404, "unknown route GET /v1/nothing"),
        (http_call(url + "/v1/models", method="DELETE"), 405, "DELETE /v1/models"),
    ]:
        error = json.loads(body)["error"]
        assert status == expected and kind == "application/json", (status, body)
        assert words in error["message"] and set(error) == {"message", "type", "param", "code"}


def test_api_key(model, tokenizer):
    app = create_app(model, tokenizer, model_name="tiny", api_key="sekrit")
    server, thread, url = start_server(app)
    try:
        wrong = openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError, match="incorrect API key"):
            wrong.models.list()
        with pytest.raises(openai.AuthenticationError) as info:
            wrong.chat.completions.create(model="tiny", messages=user("Hello"), max_tokens=2)
        assert info.value.code == "invalid_api_key"
        status, _, body = http_call(url + "/v1/chat/completions", {"messages": user("Hello"), "max_tokens": 2})
        assert status == 401 and "missing API key" in json.loads(body)["error"]["message"]
        good = openai.OpenAI(base_url=url + "/v1", api_key="sekrit", max_retries=0)
        r = good.chat.completions.create(model="tiny", messages=user("Hello"), max_tokens=2)
        assert r.usage.completion_tokens == 2
        assert http_call(url + "/health")[0] == 200 and http_call(url + "/")[0] == 200  # no key needed for these
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def cors_headers(url, origin, method="GET", preflight=False):
    """(status, Access-Control-Allow-Origin) of a browser-like request from `origin`."""
    headers = {"Origin": origin}
    if preflight:
        headers |= {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    request = urllib.request.Request(url, method="OPTIONS" if preflight else method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.headers.get("access-control-allow-origin")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("access-control-allow-origin")


def test_listen_names_what_to_change():
    with pytest.raises(ValueError, match="0 to 65535"):
        listen("127.0.0.1", 99999)
    sock = listen("127.0.0.1", 0)
    try:
        with pytest.raises(ValueError, match="pick another --port"):
            listen("127.0.0.1", sock.getsockname()[1])  # taken
    finally:
        sock.close()


def test_cors_only_for_the_origins_given(model, tokenizer, server):
    ui = "http://ui.example:3000"
    assert cors_headers(server[1] + "/v1/models", ui)[1] is None  # by default browsers elsewhere are refused
    app = create_app(model, tokenizer, model_name="tiny", api_key="k", cors_origins=[ui])
    other, thread, url = start_server(app)
    try:
        assert cors_headers(url + "/v1/chat/completions", ui, preflight=True) == (200, ui)
        assert cors_headers(url + "/v1/models", ui) == (401, ui)  # the key is still required; the page sees why
        assert cors_headers(url + "/v1/models", "http://evil.example")[1] is None
    finally:
        other.should_exit = True
        thread.join(timeout=10)


def test_chat_needs_a_chat_template(model, tokenizer):
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    server, thread, url = start_server(create_app(model, plain, model_name="tiny"))
    try:
        status, _, body = http_call(url + "/v1/chat/completions", {"messages": user("Hello"), "max_tokens": 2})
        assert status == 400 and "no chat template" in json.loads(body)["error"]["message"]
        status, _, body = http_call(url + "/v1/completions", {"prompt": "Hello", "max_tokens": 2})
        assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 2
    finally:
        server.should_exit = True
        thread.join(timeout=10)
