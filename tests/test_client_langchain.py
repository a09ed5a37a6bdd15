"""LangChain's `ChatOpenAI` (langchain-openai) against `minimind serve`: invoke, stream, batch, bind_tools and
with_structured_output (function calling, JSON mode, JSON schema) give what the server gives the `openai` client,
and structured output parses even from a tiny random model, because the server decodes it under the schema."""

import json

import pytest

pytest.importorskip("langchain_openai")

import openai  # noqa: E402
from helpers import tiny_model, varied  # noqa: E402
from langchain_core.messages import HumanMessage, SystemMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from langchain_openai import ChatOpenAI  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402
from test_serve import readme_snippet, serving  # noqa: E402

from minimind.serve.app import create_app  # noqa: E402
from minimind.tokenizer import load_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def url():
    model = varied(tiny_model(max_position_embeddings=512))
    app = create_app(model.eval(), load_tokenizer(), model_name="tiny", max_tokens_limit=100, max_batch=4)
    with serving(app) as url:
        yield url


@pytest.fixture(scope="module")
def llm(url):
    return ChatOpenAI(base_url=url + "/v1", api_key="unused", model="tiny", temperature=0, max_tokens=24,
                      max_retries=0)


@pytest.fixture(scope="module")
def reference(url):
    """The `openai` client's answer to the same messages."""
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)

    def answer(messages, **kw):
        return client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=24, **kw)
    return answer


def test_invoke_stream_and_batch(llm, reference):
    messages = [SystemMessage("Be brief."), HumanMessage("Hello")]
    want = reference([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}])
    reply = llm.invoke(messages)
    assert reply.content == want.choices[0].message.content and reply.response_metadata["model_name"] == "tiny"
    assert reply.usage_metadata["input_tokens"] == want.usage.prompt_tokens
    assert reply.response_metadata["finish_reason"] == want.choices[0].finish_reason
    chunks = list(llm.stream(messages, stream_usage=True))
    assert len(chunks) > 3 and "".join(c.content for c in chunks) == reply.content
    assert sum((c.usage_metadata or {}).get("output_tokens", 0) for c in chunks) == want.usage.completion_tokens
    prompts = ["Hello", "你好", "Tell me a story"]
    batch = llm.batch(prompts)  # concurrent requests, decoded in one batch: each as alone
    assert [m.content for m in batch] == [reference([{"role": "user", "content": p}]).choices[0].message.content
                                          for p in prompts]


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def test_bind_tools(llm):
    forced = llm.bind_tools([add], tool_choice="add").invoke("What is 2 + 3?")
    (call,) = forced.tool_calls
    assert call["name"] == "add" and set(call["args"]) == {"a", "b"}
    assert all(isinstance(v, int) for v in call["args"].values())
    assert add.invoke(call["args"]) == call["args"]["a"] + call["args"]["b"]  # the call runs as LangChain's tool
    free = llm.bind_tools([add]).invoke("What is 2 + 3?")  # auto: the random model writes text, no call
    assert not free.tool_calls and isinstance(free.content, str)


class Person(BaseModel):
    name: str
    age: int
    tags: list[str]


@pytest.mark.parametrize("method", ["function_calling", "json_schema"])
def test_structured_output_into_a_model(url, method):
    llm = ChatOpenAI(base_url=url + "/v1", api_key="unused", model="tiny", temperature=1.0, max_tokens=80,
                     seed=1, max_retries=0)
    person = llm.with_structured_output(Person, method=method).invoke("Describe someone.")
    assert isinstance(person, Person)


def test_structured_output_in_json_mode(url):
    llm = ChatOpenAI(base_url=url + "/v1", api_key="unused", model="tiny", temperature=1.0, max_tokens=60, seed=2,
                     max_retries=0)
    out = llm.with_structured_output(Person.model_json_schema(), method="json_mode", include_raw=True).invoke(
        "Describe someone as JSON.")
    assert out["parsing_error"] is None and isinstance(out["parsed"], dict)
    assert json.loads(out["raw"].content) == out["parsed"]


def test_a_schema_the_server_cannot_enforce_is_a_400_naming_the_keyword(url):
    class Adult(BaseModel):
        age: int = Field(ge=18)

    llm = ChatOpenAI(base_url=url + "/v1", api_key="unused", model="tiny", max_tokens=20, max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        llm.with_structured_output(Adult, method="json_schema").invoke("How old?")
    assert info.value.status_code == 400 and info.value.body["param"] == "response_format.json_schema.schema"
    assert "unsupported schema keyword minimum at properties.age" in info.value.body["message"]


def test_the_readme_snippet(url, capsys):
    namespace = {"__name__": "__readme__"}
    exec(readme_snippet("from langchain_openai import ChatOpenAI", url), namespace)
    city = namespace["city"]
    assert isinstance(city, namespace["City"])  # the schema held, even from a random model
    assert capsys.readouterr().out.endswith(f"{city.name} {city.population}\n")
