from __future__ import annotations

from pathlib import Path

import pytest

from testbed.paths import CIFAR_DIR, DATA, WEIGHTS

# A test that asks for one of these needs ../shared (the published weights, the CIFAR-10 test set).
SHARED_DATA_FIXTURES = frozenset({"weights_path", "cifar_dir", "test_set", "reference_model"})
DESELECTED = pytest.StashKey[int]()
TESTS = Path(__file__).parent

# Per-test limits (seconds) by tier, so a hung test fails in about the time its tier's slowest
# test needs, not after 15 minutes; they count the test's fixtures too (a render of site.yml, the
# stack's start). A test that needs longer says so with its own timeout mark; tests/e2e sets its
# own (tests/e2e/conftest.py).
TIER_TIMEOUTS = {"unit": 60, "deploy": 600, "integration": 600}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--require-shared-data",
        action="store_true",
        help="fail, instead of deselecting the shared_data tests, when ../shared is missing (make test)",
    )


def shared_data_present() -> bool:
    return WEIGHTS.is_file() and CIFAR_DIR.is_dir()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = item.path.relative_to(TESTS).parts[0] if item.path.is_relative_to(TESTS) else ""
        if tier in TIER_TIMEOUTS and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TIER_TIMEOUTS[tier]))
        if SHARED_DATA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.shared_data)
    needing = [item for item in items if item.get_closest_marker("shared_data")]
    if not needing or shared_data_present():
        return
    if config.getoption("--require-shared-data"):
        raise pytest.UsageError(
            f"{len(needing)} tests need the weights and CIFAR-10 test set in {DATA}, which are missing "
            "(see docs/testing.md, 'Test data'; IOT_TEST_DATA names another folder)"
        )
    items[:] = [item for item in items if item not in needing]
    config.hook.pytest_deselected(items=needing)
    config.stash[DESELECTED] = len(needing)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if deselected := config.stash.get(DESELECTED, 0):
        terminalreporter.write_line(
            f"{deselected} shared_data tests deselected: no weights and CIFAR-10 test set in {DATA} "
            "(make test runs them and fails without them)",
            yellow=True,
        )


@pytest.fixture(scope="session")
def weights_path():
    assert WEIGHTS.is_file(), f"pretrained weights missing: {WEIGHTS} (see ../shared/models/SOURCE.md)"
    return WEIGHTS


@pytest.fixture(scope="session")
def cifar_dir():
    assert CIFAR_DIR.is_dir(), f"CIFAR-10 test data missing: {CIFAR_DIR}"
    return CIFAR_DIR


@pytest.fixture(scope="session")
def test_set(cifar_dir):
    from iot_producer.cifar import load_split

    return load_split(cifar_dir, "test")


@pytest.fixture(scope="session")
def reference_model(weights_path):
    from tests.reference import ReferenceResNet20

    return ReferenceResNet20(weights_path)
