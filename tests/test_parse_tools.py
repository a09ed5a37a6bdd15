"""The output parser (minimind/data/parse.py) and the built-in tools (minimind/tools.py)."""

import random

import pytest

from minimind.data.parse import Parsed, StreamParser, parse_output
from minimind.tools import TOOLS, run_tool, tool_schemas

FULL = ('<think>\nadd them\n</think>\n\nLet me compute.\n<tool_call>\n{"name": "calculator", "arguments": '
        '{"expression": "12*7"}}\n</tool_call>\n<tool_call>\n{"name": "weekday", "arguments": "{\\"date\\": '
        '\\"2024-02-29\\"}"}\n</tool_call>')


def test_parse_splits_reasoning_content_and_calls():
    assert parse_output(FULL) == Parsed("add them", "Let me compute.", [
        {"name": "calculator", "arguments": {"expression": "12*7"}},
        {"name": "weekday", "arguments": {"date": "2024-02-29"}}])
    assert parse_output(" just text\n") == Parsed("", " just text\n", [])  # no tags: the text unchanged
    assert parse_output("a <tool_call>x</tool_call>", tools=False) == Parsed("", "a <tool_call>x</tool_call>", [])
    assert parse_output("</think> not opened") == Parsed("", "</think> not opened", [])
    assert parse_output("still thinking", thinking=True) == Parsed("still thinking", "", [])


@pytest.mark.parametrize("text, parsed", [
    ("<think>never closed", Parsed("never closed", "", [])),  # ran out of tokens while thinking
    ('a <tool_call>{"name": "calculator"', Parsed("", 'a<tool_call>{"name": "calculator"', [])),  # open, bad JSON
    ('<tool_call>{"name": "x", "arguments": {}}', Parsed("", "", [{"name": "x", "arguments": {}}])),  # open, valid
    ("<tool_call>{oops}</tool_call>", Parsed("", "<tool_call>{oops}</tool_call>", [])),  # invalid JSON: text
    ('<tool_call>{"arguments": {}}</tool_call>', Parsed("", '<tool_call>{"arguments": {}}</tool_call>', [])),
    ('<tool_call>["x"]</tool_call>ok', Parsed("", '<tool_call>["x"]</tool_call>ok', [])),
    ('<tool_call>{"name": "x", "arguments": 3}</tool_call>', Parsed("", '<tool_call>{"name": "x", "arguments": 3}'
                                                                         '</tool_call>', [])),
    ("<thi", Parsed("", "<thi", [])),
    ("", Parsed("", "", [])),
])
def test_parse_is_robust_to_small_model_mistakes(text, parsed):
    assert parse_output(text) == parsed


@pytest.mark.parametrize("text", [FULL, "<think>never closed", "plain  words \n\n and more ",
                                  "<tool_call>{oops}</tool_call> after", '<tool_call>{"name": "x"}'])
def test_stream_parser_adds_up_to_parse_output(text):
    rng = random.Random(0)
    for _ in range(20):  # random cuts, one character at a time included
        parser, events, i = StreamParser(), [], 0
        while i < len(text):
            j = i + rng.randint(1, 6)
            events += parser.push(text[i:j])
            i = j
        events += parser.finish()
        whole = parse_output(text)
        assert "".join(v for k, v in events if k == "reasoning") == whole.reasoning
        assert "".join(v for k, v in events if k == "content") == whole.content
        assert [v for k, v in events if k == "tool_call"] == whole.tool_calls
        assert parser.parsed == whole


def test_stream_parser_never_shows_a_tag_or_a_call_before_it_is_known():
    parser = StreamParser()
    shown = []
    for ch in FULL:
        shown += parser.push(ch)
        text = "".join(v for k, v in shown if k != "tool_call")
        assert "<" not in text and "{" not in text
    assert [k for k, _ in shown][-2:] == ["tool_call", "tool_call"]  # each as soon as its closing tag came
    assert parser.finish() == []


@pytest.mark.parametrize("name, arguments, result", [
    ("calculator", {"expression": "12 * (3 + 4)"}, "84"),
    ("calculator", {"expression": "7 / 2"}, "3.5"),
    ("calculator", {"expression": "2^10 - 1"}, "1023"),
    ("calculator", '{"expression": "-3 % 5"}', "2"),  # arguments as JSON text
    ("convert_units", {"value": 5, "from_unit": "km", "to_unit": "mi"}, "3.106855961"),
    ("convert_units", {"value": 100, "from_unit": "C", "to_unit": "F"}, "212"),
    ("convert_units", {"value": 2, "from_unit": "pounds", "to_unit": "g"}, "907.18474"),
    ("days_between", {"start": "2024-01-01", "end": "2024-03-01"}, "60"),
    ("add_days", {"date": "2024-02-28", "days": 2}, "2024-03-01"),
    ("weekday", {"date": "2024-02-29"}, "Thursday"),
])
def test_tools_compute_exact_results(name, arguments, result):
    assert run_tool(name, arguments) == result


@pytest.mark.parametrize("name, arguments, says", [
    ("calculator", {"expression": "__import__('os')"}, "only numbers"),
    ("calculator", {"expression": "1/0"}, "division by zero"),
    ("calculator", {"expression": "9**9**9"}, "too large"),
    ("calculator", {"expression": "1 +"}, "cannot read"),
    ("calculator", {}, "missing expression"),
    ("calculator", {"expression": "1", "x": 2}, "unknown argument x"),
    ("calculator", "{not json", "not valid JSON"),
    ("convert_units", {"value": 1, "from_unit": "kg", "to_unit": "m"}, "cannot convert mass"),
    ("convert_units", {"value": "1", "from_unit": "kg", "to_unit": "g"}, "must be a number"),
    ("convert_units", {"value": 1, "from_unit": "parsec", "to_unit": "m"}, "unknown unit"),
    ("add_days", {"date": "2024-13-01", "days": 1}, "YYYY-MM-DD"),
    ("nope", {}, "unknown tool"),
])
def test_tools_answer_bad_arguments_with_an_error_text(name, arguments, says):
    result = run_tool(name, arguments)
    assert result.startswith("error:") and says in result


def test_tool_schemas_are_openai_tools():
    schemas = tool_schemas()
    assert [s["function"]["name"] for s in schemas] == list(TOOLS)
    for s in schemas:
        assert s["type"] == "function" and s["function"]["parameters"]["type"] == "object"
        assert set(s["function"]["parameters"]["required"]) <= set(s["function"]["parameters"]["properties"])
    assert tool_schemas(["weekday"])[0]["function"]["name"] == "weekday"
    with pytest.raises(KeyError, match="unknown tool"):
        tool_schemas(["nope"])
