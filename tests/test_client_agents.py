"""OpenAI Agents (openai-agents) against `minimind serve`: an `Agent` with a function tool runs its whole loop (the
model calls the tool, the SDK runs it, the model answers from the result) through the SDK's default Responses model
and through `OpenAIChatCompletionsModel`, streamed too, and an agent's `output_type` comes back as that type. The
model is the small one fine-tuned on the calculator exchange (tests/helpers.py `tool_model`), so it calls the tool
the way a trained model would."""

import json

import pytest

pytest.importorskip("agents")

from agents import (  # noqa: E402
    Agent,
    FunctionTool,
    ModelSettings,
    OpenAIChatCompletionsModel,
    OpenAIProvider,
    RunConfig,
    Runner,
    set_tracing_disabled,
)
from helpers import TOOL_ANSWER, TOOL_QUESTION, TOOL_REASONING, tool_model  # noqa: E402
from openai import AsyncOpenAI  # noqa: E402
from pydantic import BaseModel  # noqa: E402
from test_serve import readme_snippet, start_server  # noqa: E402

from minimind.serve.app import create_app  # noqa: E402
from minimind.tokenizer import load_tokenizer  # noqa: E402
from minimind.tools import run_tool, tool_schemas  # noqa: E402

SETTINGS = ModelSettings(temperature=0, max_tokens=80)


@pytest.fixture(scope="module")
def url():
    set_tracing_disabled(True)  # no traces sent to OpenAI
    app = create_app(tool_model(), load_tokenizer(), model_name="tools", max_tokens_limit=120, max_batch=4)
    server, thread, url = start_server(app)
    yield url
    server.should_exit = True
    thread.join(timeout=10)


def client(url):
    return AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)


def calculator(calls: list):
    """The calculator as an SDK function tool (its schema the one the model was trained with), recording its
    calls."""
    schema = tool_schemas(["calculator"])[0]["function"]

    async def invoke(context, arguments: str) -> str:
        calls.append(json.loads(arguments))
        return run_tool("calculator", calls[-1])
    return FunctionTool(name=schema["name"], description=schema["description"],
                        params_json_schema=schema["parameters"], on_invoke_tool=invoke, strict_json_schema=False)


def item_types(result) -> list[str]:
    return [type(item).__name__ for item in result.new_items]


def test_the_agent_loop_through_the_default_responses_model(url):
    calls = []
    agent = Agent(name="calc", tools=[calculator(calls)], model="tools", model_settings=SETTINGS)
    result = Runner.run_sync(agent, TOOL_QUESTION, run_config=RunConfig(
        model_provider=OpenAIProvider(openai_client=client(url))))  # the SDK's default: the Responses API
    assert calls == [{"expression": "12 * 7"}] and result.final_output == TOOL_ANSWER
    assert item_types(result) == ["ReasoningItem", "ToolCallItem", "ToolCallOutputItem", "MessageOutputItem"]
    assert result.new_items[0].raw_item.content[0].text == TOOL_REASONING


def test_the_agent_loop_through_chat_completions(url):
    """The thinking goes back as reasoning_content (the SDK replays it when asked), so the second turn's prompt is
    the one the model was trained on."""
    calls = []
    model = OpenAIChatCompletionsModel(model="tools", openai_client=client(url),
                                       should_replay_reasoning_content=lambda context: True)
    agent = Agent(name="calc", tools=[calculator(calls)], model=model, model_settings=SETTINGS)
    result = Runner.run_sync(agent, TOOL_QUESTION)
    assert calls == [{"expression": "12 * 7"}] and result.final_output == TOOL_ANSWER
    assert item_types(result) == ["ReasoningItem", "ToolCallItem", "ToolCallOutputItem", "MessageOutputItem"]


@pytest.mark.parametrize("responses", [True, False])
def test_a_streamed_run(url, responses):
    import asyncio

    calls = []
    agent = Agent(name="calc", tools=[calculator(calls)], model="tools", model_settings=SETTINGS)
    config = RunConfig(model_provider=OpenAIProvider(openai_client=client(url), use_responses=responses))

    async def run():
        result = Runner.run_streamed(agent, "What is 6 * 9?", run_config=config)
        text = "".join([event.data.delta async for event in result.stream_events() if event.type ==
                        "raw_response_event" and getattr(event.data, "type", "") == "response.output_text.delta"])
        return result, text
    result, text = asyncio.run(run())
    assert calls == [{"expression": "6 * 9"}] and result.final_output == text == "6 * 9 = 54."


class Product(BaseModel):
    a: int
    b: int
    product: int


@pytest.mark.parametrize("responses", [True, False])
def test_output_type(url, responses):
    """The output type's schema goes to the server (text.format / response_format json_schema), which decodes the
    answer under it: a Product, whatever the model would have written."""
    agent = Agent(name="json", model="tools", output_type=Product,
                  model_settings=ModelSettings(temperature=1.0, max_tokens=60, extra_body={"seed": 1}))
    config = RunConfig(model_provider=OpenAIProvider(openai_client=client(url), use_responses=responses))
    assert isinstance(Runner.run_sync(agent, "12 * 7 as JSON", run_config=config).final_output, Product)


def test_the_readme_snippet(url, capsys):
    """A function_tool the model was not trained with, made to call it (tool_choice "required"); the tool's result
    is the answer."""
    namespace = {"__name__": "__readme__"}
    exec(readme_snippet("from agents import", url), namespace)
    result = namespace["result"]
    assert item_types(result) == ["ToolCallItem", "ToolCallOutputItem"]
    arguments = json.loads(result.new_items[0].raw_item.arguments)
    assert result.final_output == run_tool("calculator", arguments)
    assert capsys.readouterr().out == f"{result.final_output}\n"
