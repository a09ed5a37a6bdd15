"""OpenAI's Responses API (`client.responses.create`, `.stream`, `.parse`) against `minimind serve`: text equal to the
chat completion of the same conversation, streamed events that add up to the whole response, the tool loop
(reasoning item, function_call, function_call_output, answer) with the small model fine-tuned on that exchange
(tests/helpers.py `tool_model`), forced calls and JSON formats by constrained decoding, OpenAI-style errors."""

import json

import pytest

openai = pytest.importorskip("openai", minversion="1.66")  # the first client with the Responses API

from helpers import TOOL_ANSWER, TOOL_QUESTION, TOOL_REASONING, tool_model  # noqa: E402
from pydantic import BaseModel  # noqa: E402
from test_serve import serving  # noqa: E402

from minimind.serve.app import create_app  # noqa: E402
from minimind.tokenizer import load_tokenizer  # noqa: E402
from minimind.tools import run_tool, tool_schemas  # noqa: E402

CALCULATOR = {"type": "function", **tool_schemas(["calculator"])[0]["function"]}  # the Responses API's shape


@pytest.fixture(scope="module")
def client():
    app = create_app(tool_model(), load_tokenizer(), model_name="tools", max_tokens_limit=120, max_batch=4)
    with serving(app) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_text_is_the_chat_completion_of_the_same_conversation(client):
    kw = dict(temperature=0, max_output_tokens=40)
    r = client.responses.create(model="any-name", input="Hello there", instructions="Be brief.", **kw)
    chat = client.chat.completions.create(model="tools", max_tokens=40, temperature=0, messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}])
    assert r.object == "response" and r.id.startswith("resp_") and r.model == "any-name"
    assert r.output_text == chat.choices[0].message.content
    assert r.status == ("incomplete" if chat.choices[0].finish_reason == "length" else "completed")
    assert (r.usage.input_tokens, r.usage.output_tokens) == (chat.usage.prompt_tokens, chat.usage.completion_tokens)
    (message,) = r.output
    assert message.type == "message" and message.role == "assistant" and message.content[0].type == "output_text"
    # input as message items with text parts is the same conversation
    items = [{"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Be brief."}]},
             {"role": "user", "content": [{"type": "input_text", "text": "Hello there"}]}]
    assert client.responses.create(model="tools", input=items, **kw).output_text == r.output_text


def test_streamed_events_add_up_to_the_response(client):
    kw = dict(model="tools", input=TOOL_QUESTION, tools=[CALCULATOR], temperature=0, max_output_tokens=80)
    whole = client.responses.create(**kw)
    events = list(client.responses.create(**kw, stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events[:2]] == ["response.created", "response.in_progress"]
    assert events[-1].type == "response.completed"
    final = events[-1].response
    def strip(output):  # ids differ from response to response
        return [{k: v for k, v in item.model_dump().items() if k not in ("id", "call_id")} for item in output]
    assert strip(final.output) == strip(whole.output)
    reasoning = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    arguments = [e.arguments for e in events if e.type == "response.function_call_arguments.done"]
    assert reasoning == TOOL_REASONING and arguments == [whole.output[1].arguments]
    added = [e.item.type for e in events if e.type == "response.output_item.added"]
    assert added == [e.item.type for e in events if e.type == "response.output_item.done"] == \
        ["reasoning", "function_call"]
    # the client's own stream helper accumulates the same response
    with client.responses.stream(**kw) as stream:
        for _ in stream:
            pass
        assert stream.get_final_response().output[1].arguments == whole.output[1].arguments


def test_the_tool_loop(client):
    """The conversation goes back as input items: the reasoning item, the function_call, its output; the model then
    answers as it was trained to."""
    first = client.responses.create(model="tools", input=TOOL_QUESTION, tools=[CALCULATOR], temperature=0,
                                    max_output_tokens=80)
    reasoning, call = first.output
    assert reasoning.type == "reasoning" and reasoning.content[0].text == TOOL_REASONING
    assert call.type == "function_call" and call.name == "calculator" and call.call_id.startswith("call_")
    assert json.loads(call.arguments) == {"expression": "12 * 7"} and first.status == "completed"
    result = run_tool(call.name, json.loads(call.arguments))
    items = [{"role": "user", "content": TOOL_QUESTION}, *[i.model_dump(exclude_none=True) for i in first.output],
             {"type": "function_call_output", "call_id": call.call_id, "output": result}]
    final = client.responses.create(model="tools", input=items, tools=[CALCULATOR], temperature=0,
                                    max_output_tokens=80)
    assert final.output_text == TOOL_ANSWER and final.status == "completed"
    assert [i.type for i in final.output] == ["message"]


def test_forced_calls_and_json_formats(client):
    forced = client.responses.create(model="tools", input="What is 6 * 9?", tools=[CALCULATOR], temperature=0,
                                     tool_choice={"type": "function", "name": "calculator"}, max_output_tokens=40)
    (call,) = forced.output
    assert call.name == "calculator" and json.loads(call.arguments) == {"expression": "6 * 9"}

    class Product(BaseModel):
        factor_a: int
        factor_b: int
        product: int
        exact: bool

    parsed = client.responses.parse(model="tools", input="12 * 7 as JSON", text_format=Product, temperature=1.0,
                                    max_output_tokens=80, extra_body={"seed": 3})
    assert isinstance(parsed.output_parsed, Product)  # the schema was enforced while decoding
    anything = client.responses.create(model="tools", input="JSON", text={"format": {"type": "json_object"}},
                                       temperature=1.0, max_output_tokens=60, extra_body={"seed": 4})
    assert isinstance(json.loads(anything.output_text), dict)


@pytest.mark.parametrize("kwargs, param, words", [
    (dict(previous_response_id="resp_1"), "previous_response_id", "keeps no responses"),
    (dict(input=[{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]),
     "input[0].content[0]", "only text parts"),
    (dict(input=[{"type": "item_reference", "id": "x"}]), "input[0].type", "not supported"),
    (dict(instructions="Be brief.", input=[{"type": "function_call_output", "call_id": "c", "output": "1"}]),
     "input[0].role", "does not follow an assistant message with tool_calls"),
    (dict(tools=[{"type": "web_search"}]), "tools[0].type", "function tools"),
    (dict(max_output_tokens=0), "max_output_tokens", ">= 1"),
    (dict(temperature=3), "temperature", "[0, 2]"),
    (dict(text={"format": {"type": "json_schema", "name": "x", "schema": {"type": "string", "format": "date"}}}),
     "text.format.schema", "unsupported schema keyword format"),
    (dict(reasoning={"effort": "extreme"}), "reasoning.effort", "one of none"),
    (dict(extra_body={"frobnicate": 1}), "frobnicate", "unrecognized"),
])
def test_bad_requests_get_openai_errors(client, kwargs, param, words):
    kwargs = {"model": "tools", "input": "hi", "max_output_tokens": 4, **kwargs}
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(**kwargs)
    error = info.value.body
    assert info.value.status_code == 400 and error["type"] == "invalid_request_error"
    assert error["param"] == param and words in error["message"], error
