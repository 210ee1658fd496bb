"""The `inkeep-consumer` command (also `python -m consumer`).

Subcommand modules are imported only when chosen, so `check-config` or `schema`
start fast and need neither Kafka nor the API. This is where the process
environment is handed to `Settings.from_env`; nothing else reads it.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from typing import Any

from consumer.errors import ConfigError
from consumer.settings import Settings

PROG = "inkeep-consumer"

# Subcommands whose arguments belong to the module that implements them.
DELEGATED = {
    "render": ("consumer.render", "turn a file of events (or stdin) into the request bodies sent"),
    "emulator": ("consumer.testing.emulator", "run the local Inkeep Analytics API emulator"),
    "kafka": (
        "consumer.testing.localkafka",
        "fetch or start a local Kafka broker (kafka fetch|start)",
    ),
    "produce": ("consumer.testing.workload", "produce demo or workload events to Kafka"),
    "demo": ("consumer.testing.demo", "run the end-to-end demo against local services"),
    "schema": ("consumer.schema", "print (or --check/--write) the input event JSON schema"),
}

DLQ_HELP = "inspect the dead-letter topic, or replay chosen dead letters (dlq inspect|replay)"
# Left out of the wheel and the image: they need Java and a source checkout.
SOURCE_ONLY = frozenset({"kafka", "demo"})

# Flag -> settings field; flags win over environment variables.
OVERRIDES = {
    "--bootstrap-servers": "kafka_bootstrap_servers",
    "--topic": "kafka_topic",
    "--group-id": "kafka_group_id",
    "--dlq-topic": "kafka_dlq_topic",
    "--state-topic": "kafka_state_topic",
    "--api-base-url": "inkeep_api_base_url",
    "--http-port": "http_port",
    "--log-level": "log_level",
    "--log-format": "log_format",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Groups LLM chat-completion events from Kafka into conversations "
        "and logs them to Inkeep Analytics.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    for name, text in (
        ("run", "run the worker"),
        ("check-config", "validate the settings and print them, secrets masked"),
    ):
        command = commands.add_parser(name, help=text, description=text)
        group = command.add_argument_group("overrides (win over environment variables)")
        for flag, field in OVERRIDES.items():
            group.add_argument(flag, dest=field, metavar="VALUE", help=f"overrides {field.upper()}")

    for name, (_module, text) in DELEGATED.items():
        commands.add_parser(name, help=text, add_help=False)
    commands.add_parser("dlq", help=DLQ_HELP, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        if args and args[0] in DELEGATED:
            return _delegate(args[0], args[1:])
        if args and args[0] == "dlq":
            return _dlq(args[1:])
        parsed = _parser().parse_args(args)
        overrides = {field: getattr(parsed, field) for field in OVERRIDES.values()}
        if parsed.command == "check-config":
            return _check_config(overrides)
        return _run(overrides)
    except ConfigError as exc:
        sys.stderr.write(f"{PROG}: configuration error: {exc}\n")
        return 2


def _settings(overrides: dict[str, Any]) -> Settings:
    return Settings.from_env(os.environ, **overrides)


def _check_config(overrides: dict[str, Any]) -> int:
    settings = _settings(overrides)
    lines = [f"{name}={value}\n" for name, value in sorted(settings.masked().items())]
    sys.stdout.write("".join(lines))
    return 0


def _run(overrides: dict[str, Any]) -> int:
    settings = _settings(overrides)
    from consumer import runtime  # noqa: PLC0415 - only the worker needs it.

    try:
        return int(asyncio.run(runtime.run(settings)))
    except KeyboardInterrupt:
        return 130


def _delegate(name: str, argv: list[str]) -> int:
    target = DELEGATED[name][0]
    try:
        module = importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name != target or name not in SOURCE_ONLY:
            raise
        sys.stderr.write(
            f"{PROG} {name}: not part of this installation; it needs Java and a source "
            "checkout of the project (run it from the checkout: .venv/bin/inkeep-consumer "
            f"{name}, after bash scripts/bootstrap)\n"
        )
        return 2
    return int(module.main(argv) or 0)


def _dlq(argv: list[str]) -> int:
    """`dlq` takes the worker's settings (and override flags), so it is not simply delegated."""
    from consumer import dlq  # noqa: PLC0415 - only this command needs it.

    parsed = dlq.parser(OVERRIDES).parse_args(argv)
    settings = _settings({field: getattr(parsed, field) for field in OVERRIDES.values()})
    return dlq.main(parsed, settings)
