"""The shipped JSON Schema is the one the structs generate, and a real validator agrees with it.

CI fails here when the event structs change without `inkeep-consumer schema --write`,
when an example stops validating, or when a new field has no example.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from consumer import events, schema
from consumer.errors import InvalidEvent

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "schema" / "events.v1.schema.json"
EXAMPLES = ROOT / "docs" / "examples"
INVALID = EXAMPLES / "invalid.ndjson"


def example_lines() -> list[Any]:
    return [
        pytest.param(line, id=f"{path.name}:{number}")
        for path in sorted(EXAMPLES.glob("*.ndjson"))
        if path != INVALID
        for number, line in enumerate(path.read_bytes().splitlines(), 1)
        if line.strip()
    ]


def invalid_json_lines() -> list[Any]:
    params = []
    for number, line in enumerate(INVALID.read_bytes().splitlines(), 1):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        params.append(pytest.param(value, id=f"line {number}"))
    return params


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    document = json.loads(SHIPPED.read_text("utf-8"))
    Draft202012Validator.check_schema(document)
    formats = Draft202012Validator.FORMAT_CHECKER
    assert "date-time" in formats.checkers, "date-time goes unchecked: install rfc3339-validator"
    return Draft202012Validator(document, format_checker=formats)


def test_the_shipped_schema_is_the_one_the_structs_generate():
    assert SHIPPED.read_text("utf-8") == schema.render(), (
        "schema/events.v1.schema.json is stale: run `inkeep-consumer schema --write`"
    )


def test_the_schema_is_the_structs_own():
    document = schema.document()
    generated = events.event_json_schema()
    assert {k: document[k] for k in generated} == generated
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_schema_prints_the_document(capsys):
    assert schema.main([]) == 0
    assert json.loads(capsys.readouterr().out) == schema.document()


def test_check_passes_on_the_shipped_file():
    assert schema.main(["--check", str(SHIPPED)]) == 0


def test_check_fails_on_a_stale_file_and_shows_the_difference(tmp_path, capsys):
    stale = json.loads(schema.render())
    del stale["$defs"]["ChatCompletion"]["properties"]["latency_ms"]
    path = tmp_path / "events.v1.schema.json"
    path.write_text(json.dumps(stale, indent=2) + "\n", encoding="utf-8")
    assert schema.main(["--check", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path} differs from the event structs" in err
    assert '+        "latency_ms": {' in err


def test_check_fails_on_a_missing_file(tmp_path, capsys):
    path = tmp_path / "absent.json"
    assert schema.main(["--check", str(path)]) == 1
    assert f"{path}: missing" in capsys.readouterr().err


def test_write_regenerates_a_file_that_check_accepts(tmp_path):
    path = tmp_path / "schema" / "events.v1.schema.json"
    assert schema.main(["--write", str(path)]) == 0
    assert path.read_text("utf-8") == schema.render()
    assert schema.main(["--check", str(path)]) == 0


@pytest.mark.parametrize("line", example_lines())
def test_every_example_validates(validator, line: bytes):
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(json.loads(line))]
    assert errors == []


@pytest.mark.parametrize("value", invalid_json_lines())
def test_every_invalid_example_that_is_json_fails_the_schema(validator, value: Any):
    assert not validator.is_valid(value)


def test_only_the_not_json_example_escapes_the_schema_check():
    lines = [line for line in INVALID.read_bytes().splitlines() if line.strip()]
    assert len(invalid_json_lines()) == len(lines) - 1


BASE: dict[str, Any] = {
    "event_id": "evt_1",
    "event_type": "chat.completion",
    "conversation_id": "conv_1",
    "occurred_at": "2026-11-23T10:15:02.481Z",
    "request": {"messages": [{"role": "user", "content": "hi"}]},
}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("event_id", "x" * 256),
        ("event_id", "x" * 257),
        ("conversation_id", "😀" * 256),
        ("conversation_id", ""),
        ("occurred_at", "2026-11-23T10:15:02+01:00"),
        ("occurred_at", "2026-11-23T10:15:02"),
        ("occurred_at", "2026-11-23"),
        ("latency_ms", 0),
        ("latency_ms", -0.5),
        ("latency_ms", None),
        ("history", "delta"),
        ("history", None),
        ("event_type", "conversation.ended"),
        ("event_type", "chat.completion.chunk"),
        ("request", None),
        ("response", None),
        ("response", {"choices": [{"message": {"role": "critic"}}]}),
        ("conversation", {"visibility": "public", "tags": ["a"]}),
        ("conversation", {"tags": [1]}),
        ("x_unknown", {"anything": True}),
    ],
    ids=lambda v: repr(v)[:30],
)
def test_the_schema_and_the_decoder_agree(validator, field: str, value: Any):
    event = {**BASE, field: value}
    try:
        events.decode_event(json.dumps(event).encode())
    except InvalidEvent:
        decodes = False
    else:
        decodes = True
    assert validator.is_valid(event) is decodes


@pytest.mark.parametrize("value", ["2026-11-23T10:15:02+0100", "2026-11-23 10:15:02Z"])
def test_the_decoder_reads_timestamp_spellings_the_schema_refuses(validator, value: str):
    """The one documented difference (docs/events.md): producers should use the strict form."""
    event = {**BASE, "occurred_at": value}
    assert events.decode_event(json.dumps(event).encode()).occurred_at.tzinfo is not None
    assert not validator.is_valid(event)


Field = tuple[str, str]  # (struct, field)
EnumValue = tuple[str, str, Any]  # (struct, field, value)


def _contract(document: dict[str, Any]) -> tuple[set[Field], set[EnumValue]]:
    """Every field of every struct in the contract, and every value its enums allow."""
    fields: set[Field] = set()
    values: set[EnumValue] = set()
    for struct in document["$defs"].values():
        for name, node in struct.get("properties", {}).items():
            fields.add((struct["title"], name))
            for option in (node, *node.get("anyOf", ())):
                values.update((struct["title"], name, value) for value in option.get("enum", ()))
    return fields, values


def _used(document: dict[str, Any]) -> tuple[set[Field], set[EnumValue]]:
    """The fields and enum values the examples use, found by walking them with the schema."""
    defs = document["$defs"]
    fields: set[Field] = set()
    values: set[EnumValue] = set()

    def options(node: dict[str, Any]) -> list[dict[str, Any]]:
        while "$ref" in node:
            node = defs[node["$ref"].rsplit("/", 1)[1]]
        if "anyOf" in node:
            return [o for option in node["anyOf"] for o in options(option)]
        return [node]

    def is_struct_of(value: dict[str, Any], struct: dict[str, Any]) -> bool:
        tags = {
            k: v["enum"][0] for k, v in struct["properties"].items() if len(v.get("enum", ())) == 1
        }
        return all(value.get(k) == tag for k, tag in tags.items())

    def walk(value: Any, node: dict[str, Any], where: Field) -> None:
        for option in options(node):
            if isinstance(value, dict) and "title" in option and is_struct_of(value, option):
                for name, child in value.items():
                    if name in option["properties"]:
                        fields.add((option["title"], name))
                        walk(child, option["properties"][name], (option["title"], name))
            elif isinstance(value, list) and option.get("type") == "array":
                for item in value:
                    walk(item, option["items"], where)
            elif value in option.get("enum", ()):
                values.add((*where, value))

    for param in example_lines():
        walk(json.loads(param.values[0]), document, ("", ""))
    return fields, values


def test_the_examples_use_every_field_of_the_contract():
    document = schema.document()
    fields, _ = _contract(document)
    used, _ = _used(document)
    assert len(fields) > 40
    assert sorted(fields - used) == []


def test_the_examples_use_every_value_of_every_enum():
    document = schema.document()
    _, allowed = _contract(document)
    _, used = _used(document)
    assert {(struct, field) for struct, field, _ in allowed} >= {
        ("ChatCompletion", "history"),
        ("Message", "role"),
        ("ConversationMeta", "visibility"),
    }
    assert sorted(allowed - used, key=repr) == []
