from __future__ import annotations

import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from iot_inference.settings import InferenceSettings
from iot_producer.settings import ProducerSettings
from iot_shared.errors import ConfigError
from iot_shared.kafka import base_config
from iot_shared.settings import load_settings
from iot_sink.settings import SinkSettings


def test_defaults_match_the_original_deployment(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(ProducerSettings, [])
    assert settings.count == 6
    assert settings.seconds_between_images == 10.0
    assert settings.images_topic == "iot-topic"
    assert load_settings(SinkSettings, []).couchdb_db == "img_db"
    assert load_settings(InferenceSettings, []).predictions_topic == "iot-predictions"


def test_env_is_read_and_flags_override_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOT_KAFKA_BOOTSTRAP_SERVERS", "vm2:9092")
    monkeypatch.setenv("IOT_MAX_BATCH", "32")
    settings = load_settings(InferenceSettings, ["--max-batch", "8"])
    assert settings.kafka_bootstrap_servers == "vm2:9092"
    assert settings.max_batch == 8


@pytest.mark.parametrize(
    ("env", "value", "named"),
    [
        ("IOT_MAX_BATCH", "0", "IOT_MAX_BATCH / --max-batch"),
        ("IOT_METRICS_PORT", "70000", "IOT_METRICS_PORT"),
        ("IOT_LOG_LEVEL", "LOUD", "IOT_LOG_LEVEL"),
        ("IOT_KAFKA_EXTRA_CONFIG", "{not json", "IOT_KAFKA_EXTRA_CONFIG"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, named: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError, match=named):
        load_settings(InferenceSettings, [])


@pytest.mark.parametrize("settings_cls", [ProducerSettings, InferenceSettings, SinkSettings])
def test_every_long_running_service_has_a_stall_limit(
    monkeypatch: pytest.MonkeyPatch, settings_cls: type[ProducerSettings | InferenceSettings | SinkSettings]
) -> None:
    assert load_settings(settings_cls, []).stall_timeout_seconds == 300.0
    monkeypatch.setenv("IOT_STALL_TIMEOUT_SECONDS", "90")
    assert load_settings(settings_cls, []).stall_timeout_seconds == 90.0


@pytest.mark.parametrize("value", ["0", "-5", "inf", "nan", "soon"])
def test_a_stall_limit_that_is_not_a_positive_number_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("IOT_STALL_TIMEOUT_SECONDS", value)
    with pytest.raises(ConfigError, match=r"IOT_STALL_TIMEOUT_SECONDS / --stall-timeout-seconds: .*\(got "):
        load_settings(SinkSettings, [])


def test_couchdb_url_may_list_the_nodes_of_a_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOT_COUCHDB_URL", "http://vm4:5984/, http://vm5:5984,https://vm6:6984")
    settings = load_settings(SinkSettings, [])
    assert settings.couchdb_urls == ["http://vm4:5984", "http://vm5:5984", "https://vm6:6984"]


@pytest.mark.parametrize(
    "value", ["vm4:5984", "http://vm4:5984,,http://vm5:5984", "http://vm4:5984, vm5:5984"]
)
def test_a_couchdb_url_without_its_scheme_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("IOT_COUCHDB_URL", value)
    with pytest.raises(ConfigError, match="IOT_COUCHDB_URL"):
        load_settings(SinkSettings, [])


def test_rate_overrides_interval() -> None:
    assert load_settings(ProducerSettings, ["--rate", "4"]).seconds_between_images == 0.25
    assert load_settings(ProducerSettings, ["--rate", "0"]).seconds_between_images == 0.0


def test_password_is_never_in_the_startup_log(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("IOT_COUCHDB_PASSWORD", "hunter2-secret")
    settings = load_settings(SinkSettings, [])
    assert settings.couchdb_password.get_secret_value() == "hunter2-secret"
    with caplog.at_level(logging.INFO):
        logging.getLogger("t").info("settings %s", settings.masked())
    assert "hunter2-secret" not in caplog.text
    assert "hunter2-secret" not in repr(settings)


@pytest.mark.parametrize("module", ["iot_producer", "iot_inference", "iot_sink"])
def test_bad_config_exits_2_with_a_clear_message(module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", module],
        env={"IOT_METRICS_PORT": "-1", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "IOT_METRICS_PORT / --metrics-port" in result.stderr


@pytest.mark.parametrize("module", ["iot_producer", "iot_inference", "iot_sink"])
def test_a_taken_metrics_port_exits_2_at_once_naming_the_setting(module: str) -> None:
    """Before anything slow (model, CIFAR-10, broker, CouchDB): the broker address leads nowhere,
    so a service that got past its port would wait, not exit 2."""
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))  # noqa: S104  # where the services listen
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", module],
            env={
                "IOT_METRICS_PORT": str(port),
                "IOT_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
                "IOT_COUCHDB_URL": "http://127.0.0.1:9",
                "IOT_COUCHDB_PASSWORD": "x",
                "IOT_DATA_DIR": "/nonexistent",
                "PATH": "",
            },
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if f"IOT_METRICS_PORT={port}" in line]
    assert len(errors) == 1, result.stderr
    assert "Address already in use" in errors[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("module", ["iot_producer", "iot_inference", "iot_sink", "iot_shared.topics"])
def test_help_lists_the_flags(module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "--kafka-bootstrap-servers" in result.stdout


def test_secrets_are_read_from_files_in_the_secrets_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "iot_couchdb_password").write_text("from-a-file\n")
    (tmp_path / "iot_kafka_password").write_text("kafka-from-a-file\n")
    monkeypatch.setenv("IOT_SECRETS_DIR", str(tmp_path))
    settings = load_settings(SinkSettings, [])
    assert settings.couchdb_password.get_secret_value() == "from-a-file"
    assert settings.kafka_password.get_secret_value() == "kafka-from-a-file"


def test_sasl_ssl_makes_a_complete_librdkafka_login(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp_path / "iot_kafka_password").write_text("s3cret")
    monkeypatch.setenv("IOT_SECRETS_DIR", str(tmp_path))
    monkeypatch.setenv("IOT_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("IOT_KAFKA_USERNAME", "iot-sink")
    monkeypatch.setenv("IOT_KAFKA_CA_FILE", str(ca))
    config = base_config(load_settings(SinkSettings, []), "t")
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert (config["sasl.username"], config["sasl.password"]) == ("iot-sink", "s3cret")
    assert config["ssl.ca.location"] == str(ca)


def test_sasl_ssl_without_a_password_is_refused_naming_what_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IOT_SECRETS_DIR", "/nonexistent")
    monkeypatch.setenv("IOT_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("IOT_KAFKA_USERNAME", "iot-sink")
    with pytest.raises(ConfigError, match="IOT_KAFKA_PASSWORD"):
        load_settings(SinkSettings, [])


def test_a_missing_ca_file_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOT_KAFKA_CA_FILE", "/nonexistent/ca.pem")
    with pytest.raises(ConfigError, match="IOT_KAFKA_CA_FILE"):
        load_settings(SinkSettings, [])


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("IOT_KAFKA_EXTRA_CONFIG", '{"sasl.password": 80417265}'),
        ("IOT_KAFKA_EXTRA_CONFIG", '{"sasl.password": ["80417265"]}'),
    ],
)
def test_a_refused_secret_is_never_echoed(monkeypatch: pytest.MonkeyPatch, env: str, value: str) -> None:
    """The error goes to the journal, once per restart."""
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError, match=env) as refused:
        load_settings(SinkSettings, [])
    assert "80417265" not in str(refused.value)
