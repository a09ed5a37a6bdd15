"""The built-in tools: small, offline and exact, so a model can learn to call them and a chat can run them.

- `calculator(expression)`: arithmetic on numbers with + - * / // % ** and parentheses (no names, no calls);
- `convert_units(value, from_unit, to_unit)`: length, mass, volume, time and temperature;
- `days_between(start, end)`, `add_days(date, days)`, `weekday(date)`: calendar dates as YYYY-MM-DD.

`TOOLS` maps each name to its `Tool` (description, JSON schema of its arguments, function); `tool_schemas()` gives
them as OpenAI's `tools` list (what a request sends and the chat template renders); `run_tool(name, arguments)`
runs one and returns its result as text. A tool never raises on bad arguments: the text then starts with "error:"
and says what was wrong, as a result the model reads.

    >>> run_tool("calculator", {"expression": "12 * (3 + 4)"})
    '84'
    >>> run_tool("convert_units", {"value": 5, "from_unit": "km", "to_unit": "mi"})
    '3.106855961'
"""

import ast
import datetime
import json
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict  # JSON schema of the arguments object
    function: Callable[..., str]

    def schema(self) -> dict:
        """The tool as an entry of OpenAI's `tools` list."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


class ToolError(ValueError):
    """Bad arguments to a tool; its text is what the model reads back."""


def format_number(x: int | float) -> str:
    """A result as the model should read it: integers without ".0", other numbers to 10 significant digits."""
    if isinstance(x, float):
        if not math.isfinite(x):
            raise ToolError("the result is not a finite number")
        if x.is_integer() and abs(x) < 1e15:
            return str(int(x))
        return f"{x:.10g}"
    return str(x)


# --- calculator -----------------------------------------------------------------------------------------------------

MAX_DIGITS = 1000  # an integer result longer than this is refused (Python will not even print one over 4300)

OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
             ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}


def _evaluate(node):
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        value = _evaluate(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and (abs(right) > 100 or abs(left) > 1e6):
            raise ToolError("the power is too large (exponents up to 100, bases up to 1e6)")
        try:
            value = OPERATORS[type(node.op)](left, right)
        except ZeroDivisionError:
            raise ToolError("division by zero") from None
        except OverflowError:
            raise ToolError("the result is too large") from None
        if isinstance(value, complex):
            raise ToolError(f"{ast.unparse(node)} has no real result")
        if isinstance(value, int) and value.bit_length() > MAX_DIGITS * 3.33:
            raise ToolError(f"the result is too large (more than {MAX_DIGITS} digits)")
        return value
    raise ToolError(f"only numbers, + - * / // % ** and parentheses are allowed, not {ast.unparse(node)!r}")


def calculator(expression: str) -> str:
    text = str(expression).replace("^", "**").replace("×", "*").replace("÷", "/")
    if len(text) > 200:
        raise ToolError("the expression is longer than 200 characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError):  # ValueError: a null byte, or text that is not valid Unicode (a lone surrogate)
        raise ToolError(f"cannot read {expression!r} as arithmetic") from None
    return format_number(_evaluate(tree))


# --- units ----------------------------------------------------------------------------------------------------------

UNITS = {  # unit -> (quantity, size in the quantity's base unit)
    "m": ("length", 1.0), "km": ("length", 1000.0), "cm": ("length", 0.01), "mm": ("length", 0.001),
    "mi": ("length", 1609.344), "yd": ("length", 0.9144), "ft": ("length", 0.3048), "in": ("length", 0.0254),
    "kg": ("mass", 1.0), "g": ("mass", 0.001), "mg": ("mass", 1e-6), "t": ("mass", 1000.0),
    "lb": ("mass", 0.45359237), "oz": ("mass", 0.028349523125),
    "l": ("volume", 1.0), "ml": ("volume", 0.001), "gal": ("volume", 3.785411784),
    "s": ("time", 1.0), "min": ("time", 60.0), "h": ("time", 3600.0), "day": ("time", 86400.0),
    "week": ("time", 604800.0),
    "C": ("temperature", None), "F": ("temperature", None), "K": ("temperature", None),
}


ALIASES = {"meter": "m", "meters": "m", "kilometer": "km", "kilometers": "km", "mile": "mi", "miles": "mi",
           "foot": "ft", "feet": "ft", "inch": "in", "inches": "in", "pound": "lb", "pounds": "lb",
           "gram": "g", "grams": "g", "kilogram": "kg", "kilograms": "kg", "liter": "l", "liters": "l",
           "L": "l", "hour": "h", "hours": "h", "minute": "min", "minutes": "min", "second": "s", "seconds": "s",
           "days": "day", "weeks": "week", "celsius": "C", "fahrenheit": "F", "kelvin": "K", "c": "C", "f": "F",
           "k": "K", "°C": "C", "°F": "F"}


def _unit(name) -> str:
    name = ALIASES.get(str(name).strip(), str(name).strip())
    if name not in UNITS:
        raise ToolError(f"unknown unit {name!r}; known: {', '.join(UNITS)}")
    return name


def _to_kelvin(value: float, unit: str) -> float:
    return {"K": value, "C": value + 273.15, "F": (value - 32) * 5 / 9 + 273.15}[unit]


def _from_kelvin(value: float, unit: str) -> float:
    return {"K": value, "C": value - 273.15, "F": (value - 273.15) * 9 / 5 + 32}[unit]


def convert_units(value: float, from_unit: str, to_unit: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ToolError(f"value must be a number, got {json.dumps(value)}")
    a, b = _unit(from_unit), _unit(to_unit)
    (qa, sa), (qb, sb) = UNITS[a], UNITS[b]
    if qa != qb:
        raise ToolError(f"cannot convert {qa} ({a}) to {qb} ({b})")
    try:
        result = _from_kelvin(_to_kelvin(value, a), b) if qa == "temperature" else value * sa / sb
    except OverflowError:  # an integer too large for a float
        raise ToolError("the value is too large") from None
    return format_number(round(result, 9))


# --- dates ----------------------------------------------------------------------------------------------------------

def _date(text, name: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(str(text).strip())
    except ValueError:
        raise ToolError(f"{name} must be a date as YYYY-MM-DD, got {json.dumps(text)}") from None


def days_between(start: str, end: str) -> str:
    return str((_date(end, "end") - _date(start, "start")).days)


def add_days(date: str, days: int) -> str:
    if isinstance(days, bool) or not isinstance(days, int):
        raise ToolError(f"days must be an integer, got {json.dumps(days)}")
    try:
        return (_date(date, "date") + datetime.timedelta(days=days)).isoformat()
    except OverflowError:
        raise ToolError("the date is out of range") from None


def weekday(date: str) -> str:
    return _date(date, "date").strftime("%A")


# --- the registry ---------------------------------------------------------------------------------------------------

def _schema(properties: dict) -> dict:
    return {"type": "object", "properties": properties, "required": list(properties)}


DATE = {"type": "string", "description": "YYYY-MM-DD"}


TOOLS: dict[str, Tool] = {t.name: t for t in (
    Tool("calculator", "Evaluate an arithmetic expression exactly.",
         _schema({"expression": {"type": "string"}}),
         calculator),
    Tool("convert_units", "Convert a value between units (length, mass, volume, time, temperature).",
         _schema({"value": {"type": "number"}, "from_unit": {"type": "string", "description": "e.g. km, lb, C"},
                  "to_unit": {"type": "string", "description": "e.g. mi, kg, F"}}),
         convert_units),
    Tool("days_between", "The number of days from one date to another.",
         _schema({"start": DATE, "end": DATE}), days_between),
    Tool("add_days", "The date some days after a date (before it if days < 0).",
         _schema({"date": DATE, "days": {"type": "integer"}}), add_days),
    Tool("weekday", "The day of the week of a date.", _schema({"date": DATE}), weekday),
)}


def tool_schemas(names=None) -> list[dict]:
    """The built-in tools (or those named) as OpenAI's `tools` list."""
    names = list(TOOLS) if names is None else list(names)
    unknown = [n for n in names if n not in TOOLS]
    if unknown:
        raise KeyError(f"unknown tool {unknown[0]!r}; the built-in tools are {', '.join(TOOLS)}")
    return [TOOLS[n].schema() for n in names]


def run_tool(name: str, arguments) -> str:
    """Run the built-in tool `name` on `arguments` (a dict, or its JSON text) and return the result as text;
    a text starting with "error:" when the tool or its arguments are wrong."""
    tool = TOOLS.get(name)
    if tool is None:
        return f"error: unknown tool {name!r}; the tools are {', '.join(TOOLS)}"
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except (ValueError, RecursionError):  # RecursionError: nested too deep ("[[[[...")
            return f"error: the arguments are not valid JSON: {arguments[:80]!r}"
    if not isinstance(arguments, dict):
        return "error: the arguments must be a JSON object"
    wanted = tool.parameters["properties"]
    missing = [k for k in tool.parameters["required"] if k not in arguments]
    extra = [k for k in arguments if k not in wanted]
    if missing or extra:
        what = f"missing {', '.join(missing)}" if missing else f"unknown argument {', '.join(extra)}"
        return f"error: {what}; {name} takes {', '.join(wanted)}"
    try:
        return tool.function(**arguments)
    except ToolError as e:
        return f"error: {e}"
