"""The docs users read, held to the code: docs/settings.md names every setting, docs/metrics.md
every metric, docs/contract.md the message models and limits, README.md the contract in brief;
and every relative link in README.md, docs/ and the deployments' READMEs resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

import iot_inference.metrics
import iot_sink.metrics
from iot_inference.settings import InferenceSettings
from iot_producer.settings import ProducerSettings
from iot_shared.access import AccessSettings
from iot_shared.errors import DLQ_REASONS
from iot_shared.schema import MAX_DATA_CHARS, MAX_MESSAGE_BYTES, MAX_NAME_CHARS, ImageWire, PredictionWire
from iot_shared.settings import env_name
from iot_shared.topics import TopicSettings
from iot_sink.settings import SinkSettings
from testbed.paths import REPO
from tests.markdown import anchors, broken_links, links

DOCS = REPO / "docs"
README = (REPO / "README.md").read_text()
SETTINGS = (DOCS / "settings.md").read_text()
METRICS = (DOCS / "metrics.md").read_text()
CONTRACT = (DOCS / "contract.md").read_text()
assert iot_inference.metrics and iot_sink.metrics  # imported for their metrics

ALL_SETTINGS = (ProducerSettings, InferenceSettings, SinkSettings, TopicSettings, AccessSettings)


def table_rows(text: str, first_column: str) -> list[list[str]]:
    """The cells of the table rows whose first cell is a code span matching `first_column`."""
    rows = re.findall(rf"^\| `{first_column}` \|.*\|$", text, re.MULTILINE)
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows]


@pytest.mark.parametrize("settings", ALL_SETTINGS)
def test_every_setting_is_in_the_settings_table(settings: type) -> None:
    documented = {row[0].strip("`") for row in table_rows(SETTINGS, r"IOT_[A-Z_]+")}
    missing = [env_name(f) for f in settings.model_fields if env_name(f) not in documented]
    assert not missing, "add a row to docs/settings.md's table for each"


def test_the_settings_table_names_no_setting_that_does_not_exist() -> None:
    known = {env_name(f) for s in ALL_SETTINGS for f in s.model_fields}
    documented = [row[0].strip("`") for row in table_rows(SETTINGS, r"IOT_[A-Z_]+")]
    assert set(documented) - known == set()
    assert len(documented) == len(set(documented)), "a setting has two rows"


def test_the_metrics_table_is_what_the_services_export() -> None:
    # prometheus-client drops `_total` (counters) and `_info` (info) from family names.
    suffix = {"counter": "_total", "info": "_info"}
    exported = {
        m.name + suffix.get(m.type, ""): m.type for m in REGISTRY.collect() if m.name.startswith("iot_")
    }
    assert len(exported) >= 15
    documented = {row[0].strip("`"): row[1] for row in table_rows(METRICS, r"iot_\w+")}
    assert documented == exported


def contract_table(title: str) -> list[tuple[str, str]]:
    """The (first column, second column) rows of the table that follows a bold title."""
    table = CONTRACT.split(f"**`{title}`**", 1)[1].split("\n\n")[1]
    return re.findall(r"^\| `(\w+)` \| ([^|]*?) \|", table, re.MULTILINE)


MODELS = [("iot-topic", ImageWire), ("iot-predictions", PredictionWire)]


@pytest.mark.parametrize(("topic", "model"), MODELS)
def test_the_message_tables_are_the_models(topic: str, model: type[ImageWire | PredictionWire]) -> None:
    schema = model.model_json_schema(by_alias=True)
    fields = {name: field["type"] for name, field in schema["properties"].items()}
    assert dict(contract_table(topic)) == fields
    assert set(schema["required"]) == set(fields)


@pytest.mark.parametrize(("topic", "model"), MODELS)
def test_the_readme_names_each_messages_fields(topic: str, model: type[ImageWire | PredictionWire]) -> None:
    brief = README.split("## The message contract, in brief\n", 1)[1].split("\n## ", 1)[0]
    [row] = table_rows(brief, re.escape(topic))
    assert re.findall(r"`(\w+)`", row[2]) == list(model.model_json_schema(by_alias=True)["properties"])


def test_the_dead_letter_reasons_table_has_every_reason() -> None:
    assert [reason for reason, _ in contract_table("iot-dlq")] == list(DLQ_REASONS)


def test_the_message_limits_are_documented() -> None:
    assert f"at most {MAX_MESSAGE_BYTES // 1024} KiB" in CONTRACT
    assert f"over {MAX_MESSAGE_BYTES // 1024} KiB ({MAX_MESSAGE_BYTES:,} bytes)" in CONTRACT
    assert f"at most {MAX_DATA_CHARS:,} characters" in CONTRACT
    assert f"1 to {MAX_NAME_CHARS} characters" in CONTRACT
    assert f"at most {MAX_MESSAGE_BYTES // 1024} KiB" in README


def test_the_readme_stays_a_short_page() -> None:
    assert len(README.splitlines()) < 150, "move the detail into docs/"


def pages() -> list[Path]:
    """README.md, docs/ and the deployments' READMEs (hidden folders, such as the local stack's
    downloads, left out)."""
    deploy = [p for p in (REPO / "deploy").rglob("*.md") if not any(part.startswith(".") for part in p.parts)]
    return [REPO / "README.md", *sorted(DOCS.glob("*.md")), *sorted(deploy)]


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert not broken_links(page)


def test_the_readme_links_every_page_of_the_docs() -> None:
    linked = {target.partition("#")[0] for target in links(README)}
    assert {f"docs/{p.name}" for p in DOCS.glob("*.md")} <= linked


def test_anchors_follow_githubs_rules() -> None:
    page = "# Tested on four hosts: `make test-deploy`\n## A [link](x.md) here\n## Same\n## Same\n"
    page += "```sh\n# a comment, not a heading\n```\n### Security: SASL_SSL, a user\n"
    assert anchors(page) == {
        "tested-on-four-hosts-make-test-deploy",
        "a-link-here",
        "same",
        "same-1",
        "security-sasl_ssl-a-user",
    }


def test_a_broken_link_is_found(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# Top\n[ok](#top) [missing](nowhere.md) [no heading](#bottom) `[code](nowhere.md)`\n"
        "```\n[fenced](nowhere.md)\n```\n[web](https://example.com/x.md)\n"
    )
    assert broken_links(page) == ["nowhere.md", "#bottom"]
