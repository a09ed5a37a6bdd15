"""JSON schemas as the server decodes them (`constrain.py`): `compile_schema` reads the supported subset of JSON
Schema into a tree of `Node`s: type (one or a list), object (properties, required, additionalProperties), array
(items, minItems, maxItems), string, number, integer, boolean, null, enum, const, anyOf (branches that start with
different characters, as an optional field's [X, null]), $ref into $defs; annotations (title, description,
default, examples) change nothing. Any other keyword is refused naming it (`SchemaError`); `lenient=True` (the
parameters of a tool, which the client wrote for OpenAI) reads what it knows and lets anything through where it
does not. `shortest(node)` is the shortest JSON text of a value of a node, `first_chars(node)` the characters it
can start with.
"""

import json
from dataclasses import dataclass
from functools import lru_cache

DIGITS = "0123456789"
ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$comment", "$id", "deprecated",
               "readOnly", "writeOnly", "strict"}
KEYWORDS = {"type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems", "enum",
            "const", "anyOf", "$ref", "$defs", "definitions"}
TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")


class SchemaError(ValueError):
    """A schema this server cannot decode: `where` is the place in it ("properties.age"), `message` what is wrong."""

    def __init__(self, where: str, message: str, hint: str = ""):
        super().__init__(f"{message} at {where or 'the top'}{hint}")
        self.where, self.message = where, message


# --- schemas as trees -----------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)  # eq=False: compared and hashed by identity, as states hold them
class Node:
    """One value the answer may hold. kind: any, object, array, string, number, integer, literal (enum, const,
    boolean, null: the JSON texts in `literals`) or union (`options`, told apart by their first character)."""
    kind: str
    properties: tuple = ()  # object: ((name, Node), ...); none and free: any keys
    required: frozenset = frozenset()
    free: "Node | None" = None  # object without properties: the schema of its values
    items: "Node | None" = None
    min_items: int = 0
    max_items: int | None = None
    literals: tuple = ()
    options: tuple = ()

    def value(self, key: str | None) -> "Node":
        """The schema of the value of property `key` (None: a free key)."""
        return dict(self.properties).get(key, self.free or ANY)


def literal(values) -> Node:
    return Node("literal", literals=tuple(json.dumps(v, ensure_ascii=False) for v in values))


ANY = Node("any")
ANY_OBJECT = Node("object", free=ANY)
ANY_ARRAY = Node("array", items=ANY)
ANY_WORD = literal([True, False, None])


def at(where: str, key: str) -> str:
    """The place `key` inside the place `where` of a schema: "properties.age"."""
    return f"{where}.{key}" if where else key


def compile_schema(schema, lenient: bool = False) -> Node:
    """A JSON schema as a `Node` tree; a `SchemaError` names what is not supported (lenient: read as any value)."""
    return _Compiler(schema, lenient).node(schema, "", ())


class _Compiler:
    def __init__(self, root, lenient: bool):
        self.lenient = lenient
        self.defs = {}
        if isinstance(root, dict):
            for key in ("$defs", "definitions"):
                if isinstance(root.get(key), dict):
                    self.defs.update({f"#/{key}/{name}": s for name, s in root[key].items()})

    def refuse(self, where: str, message: str) -> Node:
        if self.lenient:
            return ANY
        raise SchemaError(where, message)

    def node(self, schema, where: str, refs: tuple) -> Node:
        if schema is True or schema == {}:
            return ANY
        if not isinstance(schema, dict):
            return self.refuse(where, f"a schema must be an object, got {json.dumps(schema)[:40]}")
        unknown = sorted(set(schema) - KEYWORDS - ANNOTATIONS)
        if unknown and not self.lenient:
            raise SchemaError(where, f"unsupported schema keyword{'s' if len(unknown) > 1 else ''} "
                                     f"{', '.join(unknown)}", f" (this server decodes {', '.join(sorted(KEYWORDS))})")
        if "$ref" in schema:
            ref = schema["$ref"]
            if ref not in self.defs:
                return self.refuse(where, f"$ref {json.dumps(ref)} does not name a schema in $defs")
            if ref in refs:
                return self.refuse(where, f"$ref {json.dumps(ref)} is recursive; recursive schemas are not supported")
            return self.node(self.defs[ref], where, refs + (ref,))
        if "const" in schema:
            return literal([schema["const"]])
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                return self.refuse(at(where, "enum"), "enum must be a non-empty list")
            return literal(values)
        if "anyOf" in schema:
            options = schema["anyOf"]
            if not isinstance(options, list) or not options:
                return self.refuse(at(where, "anyOf"), "anyOf must be a non-empty list")
            return self.union([self.node(s, at(where, f"anyOf[{i}]"), refs) for i, s in enumerate(options)],
                              at(where, "anyOf"))
        kind = schema.get("type")
        if isinstance(kind, list):
            return self.union([self.node({**schema, "type": k}, where, refs) for k in kind], at(where, "type"))
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else None
            if kind is None:
                return ANY
        if kind not in TYPES:
            return self.refuse(at(where, "type"), f"unknown type {json.dumps(kind)}; the types are {', '.join(TYPES)}")
        if kind == "boolean":
            return literal([True, False])
        if kind == "null":
            return literal([None])
        if kind == "object":
            return self.object(schema, where, refs)
        if kind == "array":
            return self.array(schema, where, refs)
        return Node(kind)

    def object(self, schema, where: str, refs: tuple) -> Node:
        properties = schema.get("properties") or {}
        if not isinstance(properties, dict):
            return self.refuse(at(where, "properties"), "properties must be an object")
        props = tuple((name, self.node(s, at(where, f"properties.{name}"), refs))
                      for name, s in properties.items())
        required = schema.get("required") or []
        if not isinstance(required, list) or any(r not in properties for r in required):
            missing = [r for r in required if r not in properties] if isinstance(required, list) else required
            if not self.lenient:
                raise SchemaError(at(where, "required"), f"required names {json.dumps(missing)}, which properties "
                                                       "does not define")
            required = [r for r in required if r in properties] if isinstance(required, list) else []
        if props:
            return Node("object", properties=props, required=frozenset(required))
        extra = schema.get("additionalProperties", True)
        return Node("object", free=self.node(extra, at(where, "additionalProperties"), refs) if extra is not False
                    else None)

    def array(self, schema, where: str, refs: tuple) -> Node:
        low, high = schema.get("minItems", 0), schema.get("maxItems")
        if not isinstance(low, int) or (high is not None and (not isinstance(high, int) or high < low)):
            return self.refuse(where, "minItems and maxItems must be integers, minItems <= maxItems")
        return Node("array", items=self.node(schema.get("items", True), at(where, "items"), refs), min_items=low,
                    max_items=high)

    def union(self, options: list[Node], where: str) -> Node:
        if any(o.kind == "any" for o in options):
            return ANY
        if any(o.kind == "number" for o in options):  # an integer is a number
            options = [o for o in options if o.kind != "integer"]
        seen = set()
        for o in options:
            first = first_chars(o)
            if first & seen:
                return self.refuse(where, "the alternatives must start differently (an object, a string, a number, "
                                          "...); two that both start with one of " + "".join(sorted(first & seen)))
            seen |= first
        return options[0] if len(options) == 1 else Node("union", options=tuple(options))


def first_chars(node: Node) -> set:
    """The characters a value of `node` can start with."""
    if node.kind == "literal":
        return {text[0] for text in node.literals}
    if node.kind == "union":
        return set().union(*(first_chars(o) for o in node.options))
    return {"object": {"{"}, "array": {"["}, "string": {'"'}, "number": set("-" + DIGITS),
            "integer": set("-" + DIGITS)}.get(node.kind, set('{["tfn-' + DIGITS))


@lru_cache(maxsize=4096)
def shortest(node: Node) -> str:
    """The shortest JSON text of a value of `node`."""
    kind = node.kind
    if kind == "literal":
        return min(node.literals, key=len)
    if kind == "union":
        return min((shortest(o) for o in node.options), key=len)
    if kind == "string":
        return '""'
    if kind == "object":
        return "{" + required_text(node, frozenset(), first=True) + "}"
    if kind == "array":
        return "[" + ",".join([shortest(node.items)] * node.min_items) + "]"
    return "0"  # number, integer, any


def required_text(node: Node, used: frozenset, first: bool) -> str:
    """The required properties of `node` not in `used`, written shortest, each after a comma (not the first one
    when `first`)."""
    parts = [json.dumps(name, ensure_ascii=False) + ":" + shortest(value) for name, value in node.properties
             if name in node.required and name not in used]
    return ("" if first else ",") * bool(parts) + ",".join(parts)
