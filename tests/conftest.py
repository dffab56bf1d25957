from __future__ import annotations

import pytest

from testbed.paths import CIFAR_DIR, WEIGHTS


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
