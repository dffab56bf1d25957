"""A stand-in for `python:3.11.11-slim-bookworm`, for building the service images without Docker Hub.

The Dockerfiles take their base as `--build-arg PYTHON_IMAGE=...`; the tests pass `BASE_IMAGE`,
imported into the engine (`docker import` or `podman import`) from a Debian bookworm root file
system that `rootfs.debian_rootfs` makes with mmdebstrap (variant minbase: the `Priority:
required` packages and apt, like debian:bookworm-slim) plus Debian's Python. What the Dockerfiles
rely on is there: `python` and `pip` on PATH, pip installing as root outside a virtualenv (Debian's
EXTERNALLY-MANAGED marker is removed, so pip behaves as in the official image, whose Python is not
Debian's), `python -m venv --without-pip`, bash, `useradd`, `sha256sum`/`md5sum`, tar and gzip,
`update-ca-certificates`.

Where it differs from the official image (which builds CPython itself into /usr/local):

- Python is Debian's 3.11.2 in /usr/bin (`python` from python-is-python3), not 3.11.11 in
  /usr/local/bin; a virtualenv made from it links to /usr/bin/python. Same minor version and ABI,
  so the same wheels (cp311, manylinux) install.
- pip is Debian's 23.0.1 (python3-pip, with Debian's setuptools and wheel in
  /usr/lib/python3/dist-packages), not pip 24 in /usr/local; what pip installs as root goes to
  /usr/local/lib/python3.11/dist-packages (Debian's scheme), not site-packages. Debian's pip trusts
  the system CA bundle (/etc/ssl/certs), where the official pip trusts its own certifi copy.
- The image's config is only `PATH` (Debian's default, /usr/local first), `LANG=C.UTF-8` and
  `CMD ["python3"]`: no `PYTHON_VERSION`, `PYTHON_SHA256` or `GPG_KEY`.
- One layer, no history; packages from bookworm on deb.debian.org at build time (no
  bookworm-security), with netbase and tzdata like the official image, and also perl and
  usrmerge (mmdebstrap's way to a merged /usr), so it is about 60 MB larger (about 190 MB).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from tests.e2e.rootfs import debian_rootfs, import_image

BASE_IMAGE: Final = "localhost/iot-python-base:3.11-bookworm"
PACKAGES: Final = (
    "python3",
    "python3-venv",
    "python3-pip",
    "python-is-python3",
    "ca-certificates",
    "netbase",
    "tzdata",
)
# Run on the new root ($1) before it is packed: pip may install outside a virtualenv there.
CUSTOMIZE: Final = ('rm -f "$1/usr/lib/python3.11/EXTERNALLY-MANAGED"',)
# Dockerfile instructions applied at import (`docker import --change`, `podman import --change`).
CHANGES: Final = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["python3"]',
)
# The image carries the key of what it was made from; a changed recipe is imported again.
KEY_LABEL: Final = "org.iot-pipeline.python-base.key"


def rootfs_tarball() -> Path:
    """The root filesystem as a tar file, made once (mmdebstrap, as root: about a minute)."""
    return debian_rootfs("python-base", PACKAGES, customize_hooks=CUSTOMIZE)


def import_base_image(
    engine: Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    tag: str = BASE_IMAGE,
) -> str:
    """Make `tag` in the engine: `engine` is the command (`["docker"]`, `["podman"]`, or
    `Dockerd.command`), run with `env` added to the environment; nothing is imported when the
    engine holds the image of the current recipe already. Returns `tag`."""
    return import_image(rootfs_tarball(), tag, changes=CHANGES, label=KEY_LABEL, engine=engine, env=env)
