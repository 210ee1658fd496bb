"""The command line: check-config, configuration errors, schema, delegation."""

import dataclasses
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from consumer import cli
from consumer.settings import Settings

KEY = "ik_live_cli_secret_987654321"
ROOT = Path(__file__).resolve().parents[2]
MISSING_KEY = "INKEEP_API_KEY: required (the Inkeep Analytics API key)"
VARIABLES = [f.name.upper() for f in dataclasses.fields(Settings)]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_check_config_prints_sorted_settings_with_secrets_masked(clean_env, capsys):
    clean_env.setenv("INKEEP_API_KEY", KEY)
    clean_env.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    clean_env.setenv("KAFKA_SASL_USERNAME", "svc")
    clean_env.setenv("KAFKA_SASL_PASSWORD", "pw-" + KEY)
    assert cli.main(["check-config"]) == 0
    out, err = capsys.readouterr()
    assert KEY not in out + err
    lines = out.splitlines()
    assert lines == sorted(lines)
    values = dict(line.split("=", 1) for line in lines)
    assert sorted(values) == sorted(VARIABLES)
    assert values["INKEEP_API_KEY"] == "***"
    assert values["KAFKA_SASL_PASSWORD"] == "***"
    assert values["KAFKA_SASL_USERNAME"] == "svc"
    assert values["KAFKA_SASL_MECHANISM"] == "PLAIN"
    assert values["KAFKA_TOPIC"] == "chat-completions"
    assert values["HTTP_PORT"] == "8080"


def test_flags_override_the_environment(clean_env, capsys):
    clean_env.setenv("INKEEP_API_KEY", KEY)
    clean_env.setenv("KAFKA_TOPIC", "from-env")
    clean_env.setenv("LOG_LEVEL", "error")
    argv = [
        "check-config",
        "--topic=from-flag",
        "--bootstrap-servers=b1:9092,b2:9092",
        "--group-id=g2",
        "--api-base-url=http://127.0.0.1:8999",
        "--http-port=0",
        "--log-format=console",
    ]
    assert cli.main(argv) == 0
    values = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert values["KAFKA_TOPIC"] == "from-flag"
    assert values["KAFKA_DLQ_TOPIC"] == "from-flag.dlq"
    assert values["KAFKA_STATE_TOPIC"] == "from-flag.state"
    assert values["KAFKA_BOOTSTRAP_SERVERS"] == "b1:9092,b2:9092"
    assert values["KAFKA_GROUP_ID"] == "g2"
    assert values["INKEEP_API_BASE_URL"] == "http://127.0.0.1:8999"
    assert values["HTTP_PORT"] == "0"
    assert values["LOG_FORMAT"] == "console"
    assert values["LOG_LEVEL"] == "error"


@pytest.mark.parametrize(
    ("env", "argv", "expected"),
    [
        ({}, ["check-config"], MISSING_KEY),
        ({}, ["run"], MISSING_KEY),
        (
            {"INKEEP_API_KEY": KEY, "CONVERSATION_IDLE_TIMEOUT_SECONDS": "abc"},
            ["check-config"],
            "CONVERSATION_IDLE_TIMEOUT_SECONDS: must be a number > 0, got 'abc'",
        ),
        (
            {"INKEEP_API_KEY": KEY},
            ["run", "--http-port", "99999"],
            "HTTP_PORT: must be an integer from 0 to 65535, got '99999'",
        ),
        (
            {"INKEEP_API_KEY": KEY},
            ["check-config", "--log-format", "xml"],
            "LOG_FORMAT: must be one of json, console, got 'xml'",
        ),
    ],
)
def test_configuration_error_is_one_line_and_exit_2(clean_env, capsys, env, argv, expected):
    for name, value in env.items():
        clean_env.setenv(name, value)
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"inkeep-consumer: configuration error: {expected}\n"
    assert KEY not in err


def test_schema_prints_the_event_json_schema(capsys):
    assert cli.main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    refs = {item["$ref"] for item in schema["anyOf"]}
    assert refs == {
        "#/$defs/ChatCompletion",
        "#/$defs/ConversationEnded",
        "#/$defs/ResponseEvent",
        "#/$defs/Feedback",
        "#/$defs/Interaction",
    }
    assert "event_id" in schema["$defs"]["ChatCompletion"]["required"]


def test_delegated_subcommands_get_the_remaining_arguments(clean_env):
    seen = []

    def fake_main(argv):
        seen.append(argv)
        return 3

    module = types.ModuleType("consumer.testing.localkafka")
    module.main = fake_main
    clean_env.setitem(sys.modules, "consumer.testing.localkafka", module)
    assert cli.main(["kafka", "start", "--port", "0"]) == 3
    assert seen == [["start", "--port", "0"]]


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for name in ("run", "check-config", "render", "emulator", "kafka", "produce", "demo", "schema"):
        assert name in out


def test_a_missing_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main([])
    assert exited.value.code == 2
    assert "usage: inkeep-consumer" in capsys.readouterr().err


def python_m_consumer(*args, **env):
    base = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    return subprocess.run(
        [sys.executable, "-m", "consumer", *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_python_dash_m_consumer_runs_the_same_command():
    done = python_m_consumer("check-config", "--topic", "t1", INKEEP_API_KEY=KEY)
    assert done.returncode == 0, done.stderr
    assert "KAFKA_TOPIC=t1\n" in done.stdout
    assert "INKEEP_API_KEY=***\n" in done.stdout
    assert KEY not in done.stdout + done.stderr

    failed = python_m_consumer("check-config", HTTP_PORT="http")
    assert failed.returncode == 2
    assert failed.stdout == ""
    assert failed.stderr.splitlines() == [f"inkeep-consumer: configuration error: {MISSING_KEY}"]


def test_check_config_never_prints_credentials_of_the_api_url(clean_env, capsys):
    clean_env.setenv("INKEEP_API_KEY", KEY)
    clean_env.setenv("INKEEP_API_BASE_URL", "https://svc:url-secret@api.example.com")
    assert cli.main(["check-config"]) == 2
    out, err = capsys.readouterr()
    assert "url-secret" not in out + err
    assert "configuration error: INKEEP_API_BASE_URL: must not carry credentials" in err
    assert "https://***@api.example.com" in err


def test_check_config_shows_the_plain_http_opt_in(clean_env, capsys):
    clean_env.setenv("INKEEP_API_KEY", KEY)
    clean_env.setenv("INKEEP_API_BASE_URL", "http://emulator:8090")
    assert cli.main(["check-config"]) == 2
    assert "INKEEP_API_ALLOW_HTTP=true" in capsys.readouterr().err
    clean_env.setenv("INKEEP_API_ALLOW_HTTP", "true")
    assert cli.main(["check-config"]) == 0
    values = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert values["INKEEP_API_BASE_URL"] == "http://emulator:8090"
    assert values["INKEEP_API_ALLOW_HTTP"] == "true"


@pytest.mark.parametrize("name", ["kafka", "demo"])
def test_source_only_tooling_absent_from_an_install_says_so(clean_env, capsys, name):
    module = cli.DELEGATED[name][0]
    clean_env.setitem(sys.modules, module, None)  # As in the wheel: the module is not there.
    assert cli.main([name, "start"]) == 2
    err = capsys.readouterr().err
    assert f"inkeep-consumer {name}: not part of this installation" in err
    assert "source checkout" in err


def test_a_missing_dependency_inside_tooling_is_not_hidden(clean_env):
    clean_env.setitem(sys.modules, "consumer.testing.workload", None)
    with pytest.raises(ModuleNotFoundError):
        cli.main(["produce"])
