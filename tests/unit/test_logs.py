"""Log output: real lines written to stderr, parsed back as JSON."""

import json
import logging
from datetime import UTC, datetime

import pytest
import structlog

from consumer import logs

KEY = "ik_live_secret_0123456789"


@pytest.fixture(autouse=True)
def _restore_logging():
    yield
    structlog.contextvars.clear_contextvars()
    logs.reset()


def lines(capsys):
    err = capsys.readouterr().err
    return [json.loads(line) for line in err.splitlines() if line]


def test_structlog_lines_are_json_with_the_standard_fields(capsys):
    logs.configure("info", "json")
    structlog.get_logger("consumer.worker").bind(topic="t").info(
        "flushed", conversation_id="c-1", partition=3, offset=42
    )
    (line,) = lines(capsys)
    assert line["event"] == "flushed"
    assert line["level"] == "info"
    assert line["logger"] == "consumer.worker"
    assert (line["topic"], line["partition"], line["offset"]) == ("t", 3, 42)
    assert line["conversation_id"] == "c-1"
    stamp = datetime.fromisoformat(line["timestamp"])
    assert stamp.utcoffset() == UTC.utcoffset(None)
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 600
    assert list(line)[:4] == ["timestamp", "level", "event", "logger"]


def test_context_variables_are_merged(capsys):
    logs.configure("info", "json")
    structlog.contextvars.bind_contextvars(partition=7)
    structlog.get_logger("consumer.x").warning("paused", reason="auth")
    (line,) = lines(capsys)
    assert (line["partition"], line["reason"], line["level"]) == (7, "auth", "warning")


def test_stdlib_logging_goes_through_the_same_chain(capsys):
    logs.configure("info", "json")
    logging.getLogger("aiohttp.client").warning("connection lost to %s", "api")
    logging.getLogger("consumer.plain").info("plain %d", 5)
    first, second = lines(capsys)
    assert first["event"] == "connection lost to api"
    assert (first["level"], first["logger"]) == ("warning", "aiohttp.client")
    assert "timestamp" in first
    assert (second["event"], second["level"]) == ("plain 5", "info")


def test_level_filters_both_structlog_and_stdlib(capsys):
    logs.configure("warning", "json")
    structlog.get_logger("a").info("hidden")
    logging.getLogger("b").info("hidden too")
    structlog.get_logger("a").error("shown")
    assert [line["event"] for line in lines(capsys)] == ["shown"]


def test_aiokafka_info_is_quiet_unless_debug(capsys):
    logs.configure("info", "json")
    logging.getLogger("aiokafka.consumer.group_coordinator").info("joined group")
    logging.getLogger("aiokafka.conn").warning("connection reset")
    assert [line["event"] for line in lines(capsys)] == ["connection reset"]

    logs.configure("debug", "json")
    logging.getLogger("aiokafka.consumer.group_coordinator").info("joined group")
    assert [line["event"] for line in lines(capsys)] == ["joined group"]


def test_secrets_are_masked_everywhere(capsys):
    logs.configure("debug", "json")
    log = structlog.get_logger("consumer.sink")
    log.info(
        "request",
        api_key=KEY,
        kafka_sasl_password=KEY,
        headers={"Authorization": f"Bearer {KEY}", "Accept": "application/json"},
    )
    log.debug("debug request", inkeep_api_key=KEY)
    logging.getLogger("consumer.stdlib").info("stdlib", extra={"token": KEY})
    out = capsys.readouterr().err
    assert KEY not in out
    first, second, _third = (json.loads(line) for line in out.splitlines())
    assert first["api_key"] == "***"
    assert first["kafka_sasl_password"] == "***"
    assert first["headers"] == {"Authorization": "***", "Accept": "application/json"}
    assert second["inkeep_api_key"] == "***"


def test_message_content_is_dropped_above_debug(capsys):
    logs.configure("debug", "json")
    log = structlog.get_logger("consumer.engine")
    log.info("flush", conversation_id="c", content="hello there", messages=["m"], body=b"x")
    log.warning("nested", detail={"content": "hello there", "role": "user"})
    log.debug("flush detail", content="hello there")
    info, warning, debug = lines(capsys)
    assert set(info) == {"timestamp", "level", "event", "logger", "conversation_id"}
    assert warning["detail"] == {"role": "user"}
    assert debug["content"] == "hello there"


def test_exceptions_are_rendered_into_the_line(capsys):
    logs.configure("info", "json")
    try:
        _ = 1 / 0
    except ZeroDivisionError:
        structlog.get_logger("a").exception("failed")
        logging.getLogger("b").exception("failed too")
    first, second = lines(capsys)
    assert "ZeroDivisionError" in first["exception"]
    assert first["level"] == "error"
    assert "ZeroDivisionError" in second["exception"]


def test_configure_again_replaces_instead_of_duplicating(capsys):
    logs.configure("info", "json")
    logs.configure("info", "json")
    logging.getLogger("x").warning("once")
    structlog.get_logger("y").warning("once too")
    assert [line["event"] for line in lines(capsys)] == ["once", "once too"]


def test_console_format_is_readable_and_uncoloured_off_a_tty(capsys):
    logs.configure("info", "console")
    structlog.get_logger("consumer.cli").info("started", http_port=8080, api_key=KEY)
    logging.getLogger("aiohttp.access").warning("stdlib line")
    out = capsys.readouterr().err
    first, second = out.splitlines()
    assert "started" in first
    assert "http_port=8080" in first
    assert "\x1b[" not in out
    assert KEY not in out
    assert "stdlib line" in second
    with pytest.raises(json.JSONDecodeError):
        json.loads(first)


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="xml"):
        logs.configure("info", "xml")


def test_redact_processor_alone():
    event = {"event": "e", "level": "info", "Api-Key": KEY, "body": "{}", "status": 200}
    assert logs.redact(None, "info", event) == {
        "event": "e",
        "level": "info",
        "Api-Key": "***",
        "status": 200,
    }


def test_capture_logs_still_works_after_configure(capsys):
    logs.configure("info", "json")
    with structlog.testing.capture_logs() as captured:
        structlog.get_logger("consumer.runtime").info("assigned", partitions=[0, 1])
    assert captured == [{"event": "assigned", "partitions": [0, 1], "log_level": "info"}]
    assert capsys.readouterr().err == ""
