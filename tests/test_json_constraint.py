"""JSON by constrained decoding (minimind/serve/constrain.py, schema.py): the character-level state machine agrees with
json.loads and with the schema; a schema outside the supported subset is refused naming the keyword; a tiny random
model decoded under the constraint writes valid JSON (greedy and sampled, closed before max_tokens runs out); and
the server's response_format and forced tool calls come back as JSON valid against their schemas."""

import json

import openai
import pytest
import torch
from helpers import tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st
from test_serve import start_server

from minimind.infer.engine import DecodeBatch
from minimind.serve.app import create_app
from minimind.serve.constrain import ConstrainedGroup, Grammar, RowConstraint, closing, token_texts
from minimind.serve.schema import ANY_OBJECT, SchemaError, compile_schema
from minimind.tokenizer import load_tokenizer

PERSON = {"type": "object", "additionalProperties": False, "title": "Person", "required": ["name", "age", "tags"],
          "properties": {"name": {"type": "string", "description": "a name"}, "age": {"type": "integer"},
                         "height": {"type": "number"}, "tags": {"type": "array", "items": {"enum": ["a", "b"]},
                                                                "minItems": 1, "maxItems": 3},
                         "nick": {"anyOf": [{"type": "string"}, {"type": "null"}]}, "ok": {"type": "boolean"},
                         "pet": {"$ref": "#/$defs/Pet"}},
          "$defs": {"Pet": {"type": "object", "properties": {"kind": {"const": "cat"}}, "required": ["kind"]}}}


def valid(value, schema, defs=None) -> bool:
    """`value` against `schema`, for the subset the server decodes (a small validator of the test's own)."""
    defs = defs if defs is not None else schema.get("$defs", {})
    if "$ref" in schema:
        return valid(value, defs[schema["$ref"].split("/")[-1]], defs)
    if "const" in schema:
        return value == schema["const"]
    if "enum" in schema:
        return value in schema["enum"]
    if "anyOf" in schema:
        return any(valid(value, s, defs) for s in schema["anyOf"])
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        return isinstance(value, dict) and set(schema.get("required", [])) <= set(value) and \
            (not props or set(value) <= set(props)) and all(valid(v, props.get(k, {}), defs) for k, v in value.items())
    if kind == "array":
        return isinstance(value, list) and schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", 10**9) \
            and all(valid(v, schema.get("items", {}), defs) for v in value)
    checks = {"string": lambda v: isinstance(v, str), "integer": lambda v: isinstance(v, int) and v is not True and
              v is not False, "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
              "boolean": lambda v: isinstance(v, bool), "null": lambda v: v is None}
    return checks[kind](value) if kind else True


# --- the state machine ----------------------------------------------------------------------------------------------

scalars = st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=False, allow_infinity=False) | \
    st.text(max_size=6)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) |
                      st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=8)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(max_size=4), values, max_size=4), st.booleans(), st.booleans())
def test_json_objects_are_accepted_as_json_writes_them(value, spaced, ascii_only):
    grammar = Grammar([("", ANY_OBJECT, "")])
    text = json.dumps(value, ensure_ascii=ascii_only, separators=(", ", ": ") if spaced else (",", ":"))
    assert grammar.accepts(text), text
    # every prefix is a state whose closing text completes it to a JSON object
    for cut in range(0, len(text), 3):
        state = grammar.advance(grammar.start(), text[:cut]) if cut else grammar.start()
        assert state is not None
        assert isinstance(json.loads(text[:cut] + closing(state)), dict)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='{}[]":,. -+eE01239tfnrulsa\\\n', max_size=16))
def test_what_the_machine_accepts_json_loads_reads_as_an_object(text):
    if Grammar([("", ANY_OBJECT, "")]).accepts(text):
        assert isinstance(json.loads(text), dict)


def test_a_schema_value_and_its_prefixes():
    grammar = Grammar.from_schema(PERSON)
    good = '{"age": 3, "name": "x\\u00e9", "tags": ["a","b"], "ok": false, "nick": null, "height": -1.5e3, ' \
           '"pet": {"kind": "cat"}}'
    assert grammar.accepts(good) and valid(json.loads(good), PERSON)
    for i in range(len(good)):
        state = grammar.advance(grammar.start(), good[:i]) if i else grammar.start()
        completed = good[:i] + closing(state)
        assert grammar.accepts(completed) and valid(json.loads(completed), PERSON), completed
    for bad in ['{"name": "x", "age": 3}',  # tags is required
                '{"name": "x", "age": 3.5, "tags": ["a"]}', '{"name": "x", "age": 3, "tags": []}',
                '{"name": "x", "age": 3, "tags": ["c"]}', '{"name": "x", "age": 3, "tags": ["a"], "extra": 1}',
                '{"name": "x", "name": "y", "age": 3, "tags": ["a"]}', '{"name": "x", "age": 03, "tags": ["a"]}',
                '{"name": "x", "age": 3, "tags": ["a","a","a","a"]}', '{"name": "x",  "age": 3, "tags": ["a"]}',
                ' {"name": "x", "age": 3, "tags": ["a"]}', '{"name": "x", "age": 3, "tags": ["a"], "pet": {}}']:
        assert not grammar.accepts(bad), bad


@pytest.mark.parametrize("schema, words", [
    ({"type": "string", "pattern": "a+"}, "unsupported schema keyword pattern at the top"),
    ({"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}}},
     "unsupported schema keywords maximum, minimum at properties.n"),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]}, 'required names ["b"]'),
    ({"anyOf": [{"type": "object"}, {"type": "object", "properties": {"a": {}}}]}, "start differently"),
    ({"$ref": "#/$defs/Node", "$defs": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}}},
     "recursive"),
    ({"type": "date"}, 'unknown type "date"'),
])
def test_unsupported_schemas_are_refused_naming_the_keyword(schema, words):
    with pytest.raises(SchemaError, match=words.replace("[", r"\[").replace("]", r"\]")):
        compile_schema(schema)
    compile_schema(schema, lenient=True)  # a tool's parameters: read as far as understood, never refused


# --- decoding a tiny random model under the constraint ---------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_model(max_position_embeddings=512).eval()


def decode(model, tokenizer, grammar, max_tokens, temperature=0.0, seed=None):
    """Decode one row of the random model under `grammar` (None: free): (text, ended with eos)."""
    texts = token_texts(tokenizer, model.config.vocab_size)
    eos = tokenizer.eos_token_id
    rows = [RowConstraint(grammar, texts, {eos}, max_tokens)] if grammar else []
    group = ConstrainedGroup(1, do_sample=temperature > 0, temperature=temperature or 1.0, seed=seed,
                             constraints=rows)
    ids = torch.tensor([tokenizer.encode("<|im_start|>user\nJSON please<|im_end|>\n<|im_start|>assistant\n",
                                         add_special_tokens=False)])
    batch = DecodeBatch(model)
    out = [int(batch.add(ids, None, [group])[0])]
    while len(out) < max_tokens and out[-1] != eos:
        out.append(int(batch.step()[0]))
    return tokenizer.decode([t for t in out if t != eos]), out[-1] == eos


@pytest.mark.parametrize("temperature, seed", [(0.0, None), (1.0, 1), (1.5, 2)])
def test_a_random_model_writes_valid_json(model, tokenizer, one_thread, temperature, seed):
    text, ended = decode(model, tokenizer, Grammar([("", ANY_OBJECT, "")]), 40, temperature, seed)
    assert isinstance(json.loads(text), dict) and ended
    text, ended = decode(model, tokenizer, Grammar.from_schema(PERSON), 60, temperature, seed)
    assert valid(json.loads(text), PERSON), text


def test_without_the_constraint_the_model_writes_no_json(model, tokenizer, one_thread):
    for temperature, seed in [(0.0, None), (1.0, 1)]:
        text, _ = decode(model, tokenizer, None, 40, temperature, seed)
        with pytest.raises(ValueError):
            json.loads(text)  # so the JSON above is the constraint's doing


def test_the_value_is_closed_before_max_tokens_runs_out(model, tokenizer, one_thread):
    """The shortest PERSON text is 32 characters: with 33 tokens (a character a token at worst, then eos) the
    value closes, sampled, and ends with eos; with fewer it cannot fit and stops short (as an answer cut by
    max_tokens does)."""
    minimal = closing(Grammar.from_schema(PERSON).start())
    assert minimal == '{"name":"","age":0,"tags":["a"]}'
    for seed in range(3):
        text, ended = decode(model, tokenizer, Grammar.from_schema(PERSON), len(minimal) + 1, 1.0, seed)
        assert valid(json.loads(text), PERSON) and ended, text
    grammar = Grammar.from_schema(PERSON)
    text, ended = decode(model, tokenizer, grammar, 20, 1.0, 0)
    assert not ended and grammar.advance(grammar.start(), text) is not None  # a valid start, cut short


# --- through the server ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(model, tokenizer):
    server, thread, url = start_server(create_app(model, tokenizer, model_name="tiny", max_tokens_limit=100))
    yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
    server.should_exit = True
    thread.join(timeout=10)


def test_response_format_json_object_and_schema(client):
    kw = dict(model="tiny", messages=[{"role": "user", "content": "JSON please"}], max_tokens=80, temperature=1.0,
              seed=3)
    r = client.chat.completions.create(**kw, response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict) and r.choices[0].finish_reason == "stop"
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    whole = client.chat.completions.create(**kw, response_format=fmt)
    assert valid(json.loads(whole.choices[0].message.content), PERSON)
    streamed = "".join(c.choices[0].delta.content or "" for c in
                       client.chat.completions.create(**kw, response_format=fmt, stream=True) if c.choices)
    assert streamed == whole.choices[0].message.content  # seeded: the same draws
    n = client.chat.completions.create(**kw, response_format=fmt, n=3)
    assert all(valid(json.loads(c.message.content), PERSON) for c in n.choices)
    text = client.completions.create(model="tiny", prompt="{", max_tokens=60, extra_body={"response_format": fmt},
                                     seed=1)
    assert valid(json.loads(text.choices[0].text), PERSON)


def test_a_forced_call_has_arguments_valid_against_the_parameters(client):
    """The random model never writes a valid call by itself; with tool_choice forcing one, the constraint does."""
    params = {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]},
                                               "days": {"type": "integer"}}, "required": ["city", "unit", "days"],
              "additionalProperties": False, "x-extra": "not enforced"}
    tools = [{"type": "function", "function": {"name": "weather", "parameters": params}},
             {"type": "function", "function": {"name": "time", "parameters": {"type": "object"}}}]
    kw = dict(model="tiny", messages=[{"role": "user", "content": "Weather?"}], tools=tools, max_tokens=60)
    free = client.chat.completions.create(**kw, temperature=0)
    assert not free.choices[0].message.tool_calls
    for choice in ({"type": "function", "function": {"name": "weather"}}, "required"):
        for seed in (1, 2):
            r = client.chat.completions.create(**kw, tool_choice=choice, temperature=1.0, seed=seed)
            (call,) = r.choices[0].message.tool_calls
            assert r.choices[0].finish_reason == "tool_calls" and call.function.name in ("weather", "time")
            arguments = json.loads(call.function.arguments)
            assert valid(arguments, params if call.function.name == "weather" else {"type": "object"}), arguments
