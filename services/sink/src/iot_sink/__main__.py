"""`iot-sink` / `python -m iot_sink`."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from iot_shared.service import run_service
from iot_sink import __version__
from iot_sink.app import run
from iot_sink.settings import SinkSettings


def main(argv: Sequence[str] | None = None) -> int:
    return run_service("iot-sink", SinkSettings, argv, run, __version__)


if __name__ == "__main__":
    sys.exit(main())
