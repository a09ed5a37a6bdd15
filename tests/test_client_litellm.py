"""LiteLLM against `minimind serve` (`openai/` models with the server's api_base): completion, streaming, tools and
JSON mode give what the server gives the `openai` client; the server's 400 arrives as LiteLLM's BadRequestError."""

import json
import os

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no price list download when litellm is imported
litellm = pytest.importorskip("litellm")

import openai  # noqa: E402
from helpers import tiny_model, varied  # noqa: E402
from test_serve import readme_snippet, serving  # noqa: E402

from minimind.serve.app import create_app  # noqa: E402
from minimind.tokenizer import load_tokenizer  # noqa: E402

MESSAGES = [{"role": "user", "content": "Hello"}]
WEATHER = {"type": "function", "function": {"name": "weather", "description": "The weather in a city.", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
    "required": ["city", "unit"]}}}


@pytest.fixture(scope="module")
def url():
    model = varied(tiny_model(max_position_embeddings=512))
    app = create_app(model.eval(), load_tokenizer(), model_name="tiny", max_tokens_limit=100, max_batch=4)
    with serving(app) as url:
        yield url


@pytest.fixture(scope="module")
def ask(url):
    def ask(**kw):
        return litellm.completion(model="openai/tiny", api_base=url + "/v1", api_key="unused", num_retries=0,
                                  **{"messages": MESSAGES, "temperature": 0, "max_tokens": 24, **kw})
    return ask


def test_completion_and_stream_as_the_openai_client_gets_them(url, ask):
    want = openai.OpenAI(base_url=url + "/v1", api_key="unused").chat.completions.create(
        model="tiny", messages=MESSAGES, temperature=0, max_tokens=24)
    reply = ask()
    assert reply.choices[0].message.content == want.choices[0].message.content
    assert reply.choices[0].finish_reason == want.choices[0].finish_reason
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (want.usage.prompt_tokens,
                                                                          want.usage.completion_tokens)
    chunks = list(ask(stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert len(chunks) > 3 and text == reply.choices[0].message.content


def test_tools(ask):
    r = ask(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "weather"}}, max_tokens=60,
            temperature=1.0, seed=1)
    (call,) = r.choices[0].message.tool_calls
    arguments = json.loads(call.function.arguments)
    assert r.choices[0].finish_reason == "tool_calls" and call.function.name == "weather"
    assert isinstance(arguments["city"], str) and arguments["unit"] in ("C", "F")  # valid against the parameters
    streamed = list(ask(tools=[WEATHER], tool_choice="required", max_tokens=60, stream=True))
    calls = [tc for c in streamed for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].function.name == "weather"
    assert set(json.loads("".join(tc.function.arguments or "" for tc in calls))) == {"city", "unit"}


def test_json_mode(ask):
    r = ask(response_format={"type": "json_object"}, max_tokens=60, temperature=1.0, seed=2)
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_a_bad_request_is_litellms_bad_request_error(ask):
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "a+"}}}
    with pytest.raises(litellm.BadRequestError) as info:
        ask(response_format=schema)
    assert info.value.status_code == 400 and "unsupported schema keyword pattern" in str(info.value)


def test_the_readme_snippet(url, capsys):
    namespace = {"__name__": "__readme__"}
    exec(readme_snippet("import litellm", url), namespace)
    assert capsys.readouterr().out == namespace["reply"].choices[0].message.content + "\n"
