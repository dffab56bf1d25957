"""TLS material for tests."""

from __future__ import annotations

import subprocess
from pathlib import Path


def another_ca(folder: Path) -> Path:
    """A CA certificate (with its key beside it) that signed nothing of the deployment's."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=another CA",
         "-keyout", str(folder / "other-ca.key"), "-out", str(folder / "other-ca.pem")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return folder / "other-ca.pem"
