"""The common `main()` of every service: settings, logging, signals, exit codes."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

from iot_shared.errors import ConfigError, PipelineError
from iot_shared.http_server import PortTakenError
from iot_shared.lifecycle import StopFlag, StoppedWhileWaitingError
from iot_shared.logs import configure_logging
from iot_shared.metrics import BUILD_INFO
from iot_shared.settings import ServiceSettings, load_settings

S = TypeVar("S", bound=ServiceSettings)

EXIT_FAILED, EXIT_BAD_CONFIG = 1, 2


def program_settings(settings_cls: type[S], argv: Sequence[str] | None, prog: str) -> S | None:
    """A program's settings from ARGV (None: its command line) and the environment, with logging
    set up; None when one is bad, the error printed: the program then exits EXIT_BAD_CONFIG."""
    try:
        settings = load_settings(settings_cls, sys.argv[1:] if argv is None else argv, prog)
    except ConfigError as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        return None
    configure_logging(settings.log_level)
    return settings


def run_service(
    prog: str,
    settings_cls: type[S],
    argv: Sequence[str] | None,
    run: Callable[[S, StopFlag], int],
    version: str,
) -> int:
    """Load settings (exit 2 naming the bad variable), then run until done or SIGTERM/SIGINT."""
    if (settings := program_settings(settings_cls, argv, prog)) is None:
        return EXIT_BAD_CONFIG
    log = logging.getLogger(prog)
    log.info("starting %s %s with %s", prog, version, settings.masked())
    BUILD_INFO.info({"service": prog, "version": version})
    stop = StopFlag().install()
    try:
        return run(settings, stop)
    except StoppedWhileWaitingError as exc:  # SIGTERM before ready: stopped as asked, like later
        log.info("%s", exc)
        return 0
    except PortTakenError as exc:  # a bad setting, found once running
        log.error("%s", exc)
        return EXIT_BAD_CONFIG
    except (PipelineError, TimeoutError) as exc:
        log.error("%s", exc)
        return EXIT_FAILED
