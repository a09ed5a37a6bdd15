"""The built-in tools never raise: whatever arguments a model (or a client) sends, the result is text, and bad input
reads "error: ..." with what was wrong. Property-based (hypothesis) over arbitrary text and arithmetic."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minimind.tools import TOOLS, run_tool


@pytest.mark.parametrize("expression, says", [
    ("*".join(["999999**100"] * 10), "too large"),  # 6,000 digits: Python refuses to print it
    ("1+\udfff", "cannot read"),  # a lone surrogate: not valid Unicode
    ("1+\x00", "cannot read"),
    ("(-8)**0.5", "no real result"),
    ("(-1)**(1/3)", "no real result"),
])
def test_calculator_refuses_what_has_no_printable_real_result(expression, says):
    result = run_tool("calculator", {"expression": expression})
    assert result.startswith("error:") and says in result


def test_calculator_keeps_large_exact_integers():
    assert run_tool("calculator", {"expression": "999999**100"}) == str(999999 ** 100)  # 600 digits


numbers = st.one_of(st.integers(-10**6, 10**6), st.floats(-1e6, 1e6, allow_nan=False).map(lambda x: round(x, 3)))
expressions = st.recursive(numbers.map(lambda x: f"({x})"), lambda inner: st.tuples(
    inner, st.sampled_from(["+", "-", "*", "/", "//", "%", "**"]), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(expressions)
def test_calculator_on_any_arithmetic_gives_a_number_or_an_error(expression):
    result = run_tool("calculator", {"expression": expression})
    assert isinstance(result, str) and result
    if not result.startswith("error:"):
        float(result)  # a real number, printed


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(TOOLS)), st.one_of(
    st.text(max_size=60),
    st.dictionaries(st.text(max_size=12), st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                                                     st.text(max_size=40)), max_size=4)))
def test_every_tool_answers_any_arguments_with_text(name, arguments):
    result = run_tool(name, arguments)
    assert isinstance(result, str) and result


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(TOOLS)), st.text(max_size=80))
def test_every_tool_answers_any_text_argument_with_text(name, text):
    """Each of the tool's own arguments set to arbitrary text (surrogates, control characters, huge numbers)."""
    arguments = {key: text for key in TOOLS[name].parameters["properties"]}
    result = run_tool(name, arguments)
    assert isinstance(result, str) and result
