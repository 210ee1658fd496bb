"""Settings: defaults, parsing, overrides, masking, and one clear error per bad value."""

import dataclasses
import ssl

import pytest

from consumer.errors import ConfigError
from consumer.settings import Settings

KEY = "ik_live_0123456789abcdef"
PASSWORD = "hunter2-sasl-password"
BASE = {"INKEEP_API_KEY": KEY}


def settings(**env):
    return Settings.from_env({**BASE, **env})


def test_defaults_match_the_operator_interface():
    s = settings()
    assert s.kafka_bootstrap_servers == "localhost:9092"
    assert s.kafka_topic == "chat-completions"
    assert s.kafka_group_id == "inkeep-conversation-consumer"
    assert s.kafka_dlq_topic == "chat-completions.dlq"
    assert s.kafka_state_topic == "chat-completions.state"
    assert s.kafka_security_protocol == "PLAINTEXT"
    assert s.kafka_sasl_mechanism is None
    assert s.kafka_auto_offset_reset == "earliest"
    assert s.kafka_topic_replication_factor == -1
    assert s.inkeep_api_base_url == "https://api.analytics.inkeep.com"
    assert s.inkeep_api_key == KEY
    assert s.conversation_idle_timeout_seconds == 300
    assert s.conversation_max_open_seconds == 3600
    assert s.conversation_state_retention_seconds == 86400
    assert (s.state_memory_bytes, s.state_dir, s.state_disk_bytes) == (2**28, "", 2**32)
    assert s.http_port == 8080
    assert (s.log_level, s.log_format) == ("info", "json")
    assert s.commit_interval_seconds == 5
    assert s.shutdown_grace_seconds == 25
    assert s.max_open_conversations == 100_000
    assert s.max_buffered_records == 500
    assert s.max_pending_flushes == 1000
    assert s.max_record_bytes == 1_048_576
    assert s.inkeep_max_concurrency == 16
    assert s.inkeep_rate_limit_per_second == 0
    assert s.inkeep_request_timeout_seconds == 30
    assert s.inkeep_max_retry_delay_seconds == 60


def test_every_field_is_read_from_its_upper_case_variable():
    env = {
        "INKEEP_API_KEY": "k2",
        "KAFKA_BOOTSTRAP_SERVERS": "a:1,b:2",
        "KAFKA_TOPIC": "events",
        "KAFKA_GROUP_ID": "g",
        "KAFKA_DLQ_TOPIC": "dead",
        "KAFKA_STATE_TOPIC": "kept",
        "KAFKA_SECURITY_PROTOCOL": "sasl_plaintext",
        "KAFKA_SASL_MECHANISM": "scram-sha-512",
        "KAFKA_SASL_USERNAME": "user",
        "KAFKA_SASL_PASSWORD": PASSWORD,
        "KAFKA_AUTO_OFFSET_RESET": "latest",
        "KAFKA_TOPIC_REPLICATION_FACTOR": "3",
        "INKEEP_API_BASE_URL": "http://127.0.0.1:9000/",
        "INKEEP_API_ALLOW_HTTP": "yes",
        "CONVERSATION_IDLE_TIMEOUT_SECONDS": "1.5",
        "CONVERSATION_MAX_OPEN_SECONDS": "60",
        "CONVERSATION_STATE_RETENTION_SECONDS": "120",
        "STATE_MEMORY_BYTES": "2000000",
        "STATE_DIR": "/var/lib/inkeep-consumer/state",
        "STATE_DISK_BYTES": "3000000",
        "STATE_UPGRADE_FROM": "0.1.0",
        "HTTP_PORT": "0",
        "LOG_LEVEL": "DEBUG",
        "LOG_FORMAT": "Console",
        "COMMIT_INTERVAL_SECONDS": "0.5",
        "SHUTDOWN_GRACE_SECONDS": "10",
        "MAX_OPEN_CONVERSATIONS": "7",
        "MAX_BUFFERED_RECORDS": "8",
        "MAX_PENDING_FLUSHES": "9",
        "MAX_RECORD_BYTES": "1000",
        "INKEEP_MAX_CONCURRENCY": "2",
        "INKEEP_RATE_LIMIT_PER_SECOND": "12.5",
        "INKEEP_REQUEST_TIMEOUT_SECONDS": "3",
        "INKEEP_MAX_RETRY_DELAY_SECONDS": "4",
        "SOMETHING_ELSE": "ignored",
    }
    s = Settings.from_env(env)
    assert s == Settings(
        inkeep_api_key="k2",
        kafka_bootstrap_servers="a:1,b:2",
        kafka_topic="events",
        kafka_group_id="g",
        kafka_dlq_topic="dead",
        kafka_state_topic="kept",
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="user",
        kafka_sasl_password=PASSWORD,
        kafka_auto_offset_reset="latest",
        kafka_topic_replication_factor=3,
        inkeep_api_base_url="http://127.0.0.1:9000",
        inkeep_api_allow_http=True,
        conversation_idle_timeout_seconds=1.5,
        conversation_max_open_seconds=60,
        conversation_state_retention_seconds=120,
        state_memory_bytes=2_000_000,
        state_dir="/var/lib/inkeep-consumer/state",
        state_disk_bytes=3_000_000,
        state_upgrade_from="0.1",
        http_port=0,
        log_level="debug",
        log_format="console",
        commit_interval_seconds=0.5,
        shutdown_grace_seconds=10,
        max_open_conversations=7,
        max_buffered_records=8,
        max_pending_flushes=9,
        max_record_bytes=1000,
        inkeep_max_concurrency=2,
        inkeep_rate_limit_per_second=12.5,
        inkeep_request_timeout_seconds=3,
        inkeep_max_retry_delay_seconds=4,
    )
    # KAFKA_SSL_CAFILE needs TLS, so test_tls_builds_an_ssl_context_from_the_cafile covers it.
    covered = (set(env) - {"SOMETHING_ELSE"}) | {"KAFKA_SSL_CAFILE"}
    assert covered == {f.name.upper() for f in dataclasses.fields(Settings)}


def test_dlq_and_state_topics_follow_the_topic():
    s = settings(KAFKA_TOPIC="orders")
    assert (s.kafka_dlq_topic, s.kafka_state_topic) == ("orders.dlq", "orders.state")
    direct = Settings(inkeep_api_key="k", kafka_topic="orders")
    assert (direct.kafka_dlq_topic, direct.kafka_state_topic) == ("orders.dlq", "orders.state")


def test_overrides_win_over_the_environment_and_are_parsed_the_same_way():
    s = Settings.from_env(
        {**BASE, "KAFKA_TOPIC": "from-env", "HTTP_PORT": "9000"},
        kafka_topic="from-flag",
        http_port="0",
        log_level=None,
    )
    assert s.kafka_topic == "from-flag"
    assert s.kafka_dlq_topic == "from-flag.dlq"
    assert s.http_port == 0
    assert s.log_level == "info"
    with pytest.raises(ConfigError, match=r"^HTTP_PORT: "):
        Settings.from_env(BASE, http_port="70000")


def test_unknown_override_is_a_programming_error():
    with pytest.raises(TypeError, match="kafka_topik"):
        Settings.from_env(BASE, kafka_topik="x")


def test_empty_variables_count_as_unset():
    s = settings(KAFKA_SASL_MECHANISM="", HTTP_PORT="  ", KAFKA_SSL_CAFILE="")
    assert s.kafka_sasl_mechanism is None
    assert s.http_port == 8080
    assert s.kafka_ssl_cafile is None


def test_sasl_defaults_to_plain_and_feeds_the_kafka_client():
    s = settings(
        KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        KAFKA_SASL_USERNAME="user",
        KAFKA_SASL_PASSWORD=PASSWORD,
    )
    assert s.kafka_sasl_mechanism == "PLAIN"
    assert s.kafka_client_options() == {
        "bootstrap_servers": "localhost:9092",
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "user",
        "sasl_plain_password": PASSWORD,
    }


def test_plaintext_client_options_carry_no_credentials():
    assert settings().kafka_client_options() == {
        "bootstrap_servers": "localhost:9092",
        "security_protocol": "PLAINTEXT",
    }


def test_tls_builds_an_ssl_context_from_the_cafile():
    # The system trust store is a real PEM bundle the context must be able to load.
    cafile = ssl.get_default_verify_paths().cafile
    if cafile is None:
        pytest.skip("no system CA bundle to load")
    s = settings(KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_CAFILE=cafile)
    assert s.kafka_ssl_cafile == cafile
    options = s.kafka_client_options()
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.cert_store_stats()["x509_ca"] > 0
    assert options["security_protocol"] == "SSL"


def test_repr_str_and_masked_never_show_secrets():
    s = settings(
        KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        KAFKA_SASL_USERNAME="user",
        KAFKA_SASL_PASSWORD=PASSWORD,
    )
    for text in (repr(s), str(s), f"{s}", str(s.masked())):
        assert KEY not in text
        assert PASSWORD not in text
        assert "***" in text
    masked = s.masked()
    assert masked["INKEEP_API_KEY"] == "***"
    assert masked["KAFKA_SASL_PASSWORD"] == "***"
    assert masked["KAFKA_SASL_USERNAME"] == "user"
    assert masked["CONVERSATION_IDLE_TIMEOUT_SECONDS"] == "300"
    assert masked["KAFKA_SSL_CAFILE"] == ""
    assert set(masked) == {f.name.upper() for f in dataclasses.fields(Settings)}


def test_settings_are_frozen():
    s = settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.http_port = 1  # type: ignore[misc]


def test_missing_api_key_is_one_clear_line():
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({})
    assert str(caught.value) == "INKEEP_API_KEY: required (the Inkeep Analytics API key)"
    assert caught.value.setting == "INKEEP_API_KEY"
    with pytest.raises(ConfigError, match=r"^INKEEP_API_KEY: required"):
        Settings.from_env({"INKEEP_API_KEY": "   "})


BAD_VALUES = [
    ("CONVERSATION_IDLE_TIMEOUT_SECONDS", "abc"),
    ("CONVERSATION_IDLE_TIMEOUT_SECONDS", "0"),
    ("CONVERSATION_IDLE_TIMEOUT_SECONDS", "-5"),
    ("CONVERSATION_IDLE_TIMEOUT_SECONDS", "nan"),
    ("CONVERSATION_IDLE_TIMEOUT_SECONDS", "inf"),
    ("CONVERSATION_MAX_OPEN_SECONDS", "1h"),
    ("CONVERSATION_STATE_RETENTION_SECONDS", "0"),
    ("STATE_UPGRADE_FROM", "0.2"),
    ("COMMIT_INTERVAL_SECONDS", "-1"),
    ("SHUTDOWN_GRACE_SECONDS", "soon"),
    ("INKEEP_REQUEST_TIMEOUT_SECONDS", "0"),
    ("INKEEP_MAX_RETRY_DELAY_SECONDS", "x"),
    ("INKEEP_RATE_LIMIT_PER_SECOND", "-0.5"),
    ("HTTP_PORT", "65536"),
    ("HTTP_PORT", "-1"),
    ("HTTP_PORT", "80.5"),
    ("HTTP_PORT", "http"),
    ("MAX_OPEN_CONVERSATIONS", "0"),
    ("MAX_BUFFERED_RECORDS", "many"),
    ("MAX_PENDING_FLUSHES", "-3"),
    ("MAX_RECORD_BYTES", "1.5"),
    ("INKEEP_MAX_CONCURRENCY", "0"),
    ("KAFKA_TOPIC_REPLICATION_FACTOR", "0"),
    ("KAFKA_TOPIC_REPLICATION_FACTOR", "-2"),
    ("KAFKA_TOPIC_REPLICATION_FACTOR", "three"),
    ("LOG_LEVEL", "verbose"),
    ("LOG_FORMAT", "xml"),
    ("KAFKA_SECURITY_PROTOCOL", "TLS"),
    ("KAFKA_AUTO_OFFSET_RESET", "beginning"),
    ("INKEEP_API_BASE_URL", "api.analytics.inkeep.com"),
    ("INKEEP_API_BASE_URL", "ftp://api.analytics.inkeep.com"),
    ("INKEEP_API_BASE_URL", "https://"),
    ("INKEEP_API_BASE_URL", "https://host:99999"),
    ("INKEEP_API_BASE_URL", "https://host/?x=1"),
    ("INKEEP_API_BASE_URL", "http://api.analytics.inkeep.com"),
    ("INKEEP_API_BASE_URL", "http://10.0.0.7:8090"),
    ("INKEEP_API_ALLOW_HTTP", "maybe"),
    ("KAFKA_BOOTSTRAP_SERVERS", "broker:port"),
    ("KAFKA_BOOTSTRAP_SERVERS", "a:9092,,b:9092"),
    ("KAFKA_BOOTSTRAP_SERVERS", ":9092"),
    ("KAFKA_BOOTSTRAP_SERVERS", "broker:0"),
    ("KAFKA_BOOTSTRAP_SERVERS", "[::1"),
    ("KAFKA_TOPIC", "has space"),
    ("KAFKA_TOPIC", ".."),
    ("KAFKA_TOPIC", "t" * 250),
    ("KAFKA_DLQ_TOPIC", "bad/name"),
    ("KAFKA_DLQ_TOPIC", "chat-completions"),
    ("KAFKA_STATE_TOPIC", "chat-completions"),
    ("KAFKA_STATE_TOPIC", "chat-completions.dlq"),
    ("KAFKA_GROUP_ID", "g" * 256),
    ("KAFKA_SSL_CAFILE", "/nonexistent/ca.pem"),
]


@pytest.mark.parametrize(("variable", "value"), BAD_VALUES)
def test_every_bad_value_names_its_variable(variable, value):
    env = {**BASE, variable: value}
    if variable == "KAFKA_SSL_CAFILE":
        env["KAFKA_SECURITY_PROTOCOL"] = "SSL"
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    message = str(caught.value)
    assert caught.value.setting == variable
    assert message.startswith(f"{variable}: ")
    assert "\n" not in message
    if len(value) < 100:
        assert repr(value.strip()) in message or value in message


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "KAFKA_SASL_USERNAME"),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "u"},
            "KAFKA_SASL_PASSWORD",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256"},
            "KAFKA_SASL_USERNAME",
        ),
        ({"KAFKA_SASL_MECHANISM": "PLAIN"}, "KAFKA_SASL_MECHANISM"),
        ({"KAFKA_SASL_MECHANISM": "GSSAPI"}, "KAFKA_SASL_MECHANISM"),
        ({"KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p"}, "KAFKA_SASL_USERNAME"),
        ({"KAFKA_SASL_PASSWORD": PASSWORD}, "KAFKA_SASL_PASSWORD"),
    ],
)
def test_inconsistent_security_settings_name_the_variable(env, variable):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**BASE, **env})
    assert caught.value.setting == variable
    assert PASSWORD not in str(caught.value)


def test_cafile_without_tls_is_refused(tmp_path):
    cafile = tmp_path / "ca.pem"
    cafile.write_text("not used")
    with pytest.raises(ConfigError, match=r"^KAFKA_SSL_CAFILE: set, but KAFKA_SECURITY_PROTOCOL"):
        settings(KAFKA_SSL_CAFILE=str(cafile))


@pytest.mark.parametrize(
    "servers", ["broker", "broker:9092", "a:1, b:2", "[::1]:9092", "[::1]", "10.0.0.1:9093"]
)
def test_valid_bootstrap_server_lists(servers):
    s = settings(KAFKA_BOOTSTRAP_SERVERS=servers)
    assert s.kafka_bootstrap_servers == servers.replace(" ", "")


def test_warn_is_read_as_warning():
    assert settings(LOG_LEVEL="WARN").log_level == "warning"


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8090", "http://localhost:8090", "http://[::1]:8090", "http://127.9.9.9"],
)
def test_plain_http_is_accepted_to_a_loopback_host(url):
    assert (
        Settings.from_env({"INKEEP_API_KEY": "k", "INKEEP_API_BASE_URL": url}).inkeep_api_base_url
        == url
    )


def test_plain_http_elsewhere_needs_the_explicit_opt_in():
    env = {"INKEEP_API_KEY": "k", "INKEEP_API_BASE_URL": "http://emulator:8090"}
    with pytest.raises(ConfigError) as refused:
        Settings.from_env(env)
    assert refused.value.setting == "INKEEP_API_BASE_URL"
    assert "INKEEP_API_ALLOW_HTTP" in str(refused.value)
    allowed = Settings.from_env({**env, "INKEEP_API_ALLOW_HTTP": "true"})
    assert allowed.inkeep_api_base_url == "http://emulator:8090"
    assert allowed.masked()["INKEEP_API_ALLOW_HTTP"] == "true"


def test_credentials_in_the_url_are_refused_without_echoing_them():
    env = {"INKEEP_API_KEY": "k", "INKEEP_API_BASE_URL": "https://me:hunter2@api.example.com"}
    with pytest.raises(ConfigError) as refused:
        Settings.from_env(env)
    assert refused.value.setting == "INKEEP_API_BASE_URL"
    assert "hunter2" not in str(refused.value)
    assert "me:" not in str(refused.value)


def test_masked_hides_userinfo_of_a_url():
    settings = dataclasses.replace(
        Settings(inkeep_api_key="k"), inkeep_api_base_url="https://me:hunter2@api.example.com/v1"
    )
    assert settings.masked()["INKEEP_API_BASE_URL"] == "https://***@api.example.com/v1"
