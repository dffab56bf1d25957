"""`iot-producer` / `python -m iot_producer`."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from iot_producer import __version__
from iot_producer.app import run
from iot_producer.settings import ProducerSettings
from iot_shared.service import run_service


def main(argv: Sequence[str] | None = None) -> int:
    return run_service("iot-producer", ProducerSettings, argv, run, __version__)


if __name__ == "__main__":
    sys.exit(main())
