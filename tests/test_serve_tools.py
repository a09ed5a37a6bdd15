"""Tool calling and thinking through `minimind serve`, driven by the official `openai` client: the whole loop
(request with tools -> tool call -> run it -> tool message -> final answer), streamed deltas that add up to the
whole message, tool_choice, parallel_tool_calls, enable_thinking. The model is a small one fine-tuned on one
tool-use exchange (tests/helpers.py `tool_model`), so it calls the calculator the way a trained model would."""

import json

import openai
import pytest
from helpers import TOOL_ANSWER, TOOL_QUESTION, TOOL_REASONING, tool_model
from test_serve import serving

from minimind.serve.app import create_app
from minimind.tokenizer import load_tokenizer
from minimind.tools import run_tool, tool_schemas

TOOLS = tool_schemas(["calculator"])


@pytest.fixture(scope="module")
def client():
    app = create_app(tool_model(), load_tokenizer(), model_name="tools", max_tokens_limit=120, max_batch=4)
    with serving(app) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)


def ask(client, messages, **kw):
    return client.chat.completions.create(model="tools", messages=messages, temperature=0, max_tokens=80, **kw)


def test_the_whole_tool_loop_with_the_openai_client(client):
    messages = [{"role": "user", "content": TOOL_QUESTION}]
    first = ask(client, messages, tools=TOOLS)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.model_extra["reasoning_content"] == TOOL_REASONING
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "calculator"
    arguments = json.loads(call.function.arguments)
    assert arguments == {"expression": "12 * 7"}
    result = run_tool(call.function.name, arguments)
    assert result == "84"
    # the assistant message goes back as the client returned it, then the tool's result
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": result}]
    final = ask(client, messages, tools=TOOLS)
    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.content == TOOL_ANSWER and not final.choices[0].message.tool_calls


def test_streamed_deltas_add_up_to_the_message(client):
    messages = [{"role": "user", "content": TOOL_QUESTION}]
    whole = ask(client, messages, tools=TOOLS).choices[0]
    reasoning, content, calls, reasons = "", "", {}, []
    for chunk in ask(client, messages, tools=TOOLS, stream=True):
        for choice in chunk.choices:
            delta = choice.delta
            reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
            content += delta.content or ""
            for tc in delta.tool_calls or []:
                entry = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                if tc.id:  # the delta that opens the call: id, type and name, then the arguments
                    assert tc.type == "function" and entry["id"] is None
                    entry["id"] = tc.id
                entry["name"] += (tc.function and tc.function.name) or ""
                entry["arguments"] += (tc.function and tc.function.arguments) or ""
            if choice.finish_reason:
                reasons.append(choice.finish_reason)
    assert reasoning == whole.message.model_extra["reasoning_content"] and content == ""
    assert reasons == ["tool_calls"]
    (call,) = calls.values()
    assert call["id"].startswith("call_") and call["name"] == "calculator"
    assert call["arguments"] == whole.message.tool_calls[0].function.arguments


def test_tool_choice(client):
    tokenizer = load_tokenizer()
    messages = [{"role": "user", "content": "What is 6 * 9?"}]  # the question the model calls without thinking on
    # none: the tools are not offered, so no call is read (a <tool_call> written anyway stays text)
    none = ask(client, messages, tools=TOOLS, tool_choice="none").choices[0]
    assert none.finish_reason != "tool_calls" and not none.message.tool_calls
    auto = ask(client, messages, tools=TOOLS)
    # a named function and "required": the prompt starts the answer as that call, and the model goes on with it
    for choice, start in (("required", "<tool_call>\n"),
                          ({"type": "function", "function": {"name": "calculator"}},
                           '<tool_call>\n{"name": "calculator", "arguments":')):
        forced = ask(client, messages, tools=TOOLS, tool_choice=choice)
        assert forced.usage.prompt_tokens == auto.usage.prompt_tokens + len(tokenizer.encode(start))
        assert forced.choices[0].finish_reason == "tool_calls", choice
        (call,) = forced.choices[0].message.tool_calls
        assert call.function.name == "calculator" and json.loads(call.function.arguments) == {"expression": "6 * 9"}


def test_enable_thinking_and_parallel_tool_calls(client):
    messages = [{"role": "user", "content": TOOL_QUESTION}]
    opened = ask(client, messages, tools=TOOLS, extra_body={"enable_thinking": True}).choices[0]
    assert opened.message.model_extra["reasoning_content"]  # the prompt opened the thinking: all of it is reasoning
    vllm_style = ask(client, messages, tools=TOOLS, extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert "reasoning_content" not in (vllm_style.choices[0].message.model_extra or {})
    one = ask(client, messages, tools=TOOLS, parallel_tool_calls=False).choices[0]
    assert len(one.message.tool_calls) == 1


def test_a_tool_message_must_answer_a_call(client):
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, [{"role": "user", "content": "hi"}, {"role": "tool", "content": "84"}], tools=TOOLS)
    assert e.value.body["param"] == "messages[1].role"
