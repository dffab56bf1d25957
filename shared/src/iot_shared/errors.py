"""One base error type for the pipeline, and the few errors callers tell apart."""

from __future__ import annotations

from typing import Literal, get_args

# Why a message went to the dead-letter topic; a small fixed set, so it can be a metric label.
DlqReason = Literal[
    "not_json",
    "missing_field",
    "invalid_field",
    "bad_base64",
    "bad_image",
    "unknown_class",
    "too_large",
    "undecodable",  # decoding failed in a way the contract did not foresee; dlq.detail names it
]
DLQ_REASONS: tuple[DlqReason, ...] = get_args(DlqReason)


class PipelineError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(PipelineError):
    """Settings are missing or invalid; the message names the variable to fix."""


class InvalidMessageError(PipelineError):
    """A message that breaks the contract; it goes to the dead-letter topic, never crashes a service."""

    def __init__(self, reason: DlqReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: DlqReason = reason
        self.detail = detail


class DataError(PipelineError):
    """Input data (CIFAR-10 files, model weights) is missing or does not match its checksum."""


class DeliveryError(PipelineError):
    """Kafka did not acknowledge messages in time; nothing was committed for them."""


def summary(exc: BaseException) -> str:
    """An exception in one short line for a log or a health reason: its type and first line."""
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
