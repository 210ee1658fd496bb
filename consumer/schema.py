"""`inkeep-consumer schema`: the input contract as JSON Schema, generated from the event structs.

Producers validate against the shipped copy (`schema/events.v1.schema.json`);
`--check` lets CI fail when the structs change and the copy was not regenerated.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from consumer.events import event_json_schema

if TYPE_CHECKING:
    from collections.abc import Sequence

SHIPPED = Path("schema/events.v1.schema.json")
DIALECT = "https://json-schema.org/draft/2020-12/schema"
MAX_DIFF_LINES = 60


def document() -> dict[str, Any]:
    """The schema as shipped: the generated one under a dialect, title and description."""
    return {
        "$schema": DIALECT,
        "title": "Chat completion event, version 1",
        "description": "One Kafka record value for the Inkeep conversation consumer "
        "(see docs/events.md). Unknown fields are ignored. Generated from "
        "consumer/events.py by `inkeep-consumer schema --write`; do not edit by hand.",
        **event_json_schema(),
    }


def render() -> str:
    return json.dumps(document(), indent=2, ensure_ascii=False) + "\n"


def _check(path: Path, expected: str) -> int:
    try:
        shipped = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        sys.stderr.write(f"{path}: missing; run `inkeep-consumer schema --write {path}`\n")
        return 1
    if shipped == expected:
        return 0
    diff = list(
        difflib.unified_diff(
            shipped.splitlines(keepends=True),
            expected.splitlines(keepends=True),
            fromfile=str(path),
            tofile="generated from consumer/events.py",
        )
    )
    sys.stderr.write(
        f"{path} differs from the event structs; regenerate it with "
        f"`inkeep-consumer schema --write {path}`\n"
    )
    sys.stderr.writelines(diff[:MAX_DIFF_LINES])
    if len(diff) > MAX_DIFF_LINES:
        sys.stderr.write(f"... ({len(diff) - MAX_DIFF_LINES} more diff lines)\n")
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="inkeep-consumer schema",
        description="Print the JSON Schema of the input events, generated from the structs "
        "the worker decodes them with.",
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument(
        "--check",
        metavar="FILE",
        type=Path,
        nargs="?",
        const=SHIPPED,
        help=f"exit 1 if FILE (default {SHIPPED}) differs from the generated schema",
    )
    action.add_argument(
        "--write",
        metavar="FILE",
        type=Path,
        nargs="?",
        const=SHIPPED,
        help=f"write the generated schema to FILE (default {SHIPPED})",
    )
    args = parser.parse_args(argv)
    text = render()
    if args.check is not None:
        return _check(args.check, text)
    if args.write is not None:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(text, encoding="utf-8")
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
