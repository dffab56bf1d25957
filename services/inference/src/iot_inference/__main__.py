"""`iot-inference` / `python -m iot_inference`."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from iot_inference import __version__
from iot_inference.app import run
from iot_inference.settings import InferenceSettings
from iot_shared.service import run_service


def main(argv: Sequence[str] | None = None) -> int:
    return run_service("iot-inference", InferenceSettings, argv, run, __version__)


if __name__ == "__main__":
    sys.exit(main())
