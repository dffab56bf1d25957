"""What the image builds take here instead of the internet: build arguments and local copies.

The Dockerfiles run unchanged; only their build arguments differ from a user's build:

- `PYTHON_IMAGE`: the stand-in base of `python_base.py` (Docker Hub cannot be reached);
- `TORCH_INDEX_URL`: PyPI (download.pytorch.org cannot be reached), so the image gets PyPI's
  CUDA build of torch and its nvidia libraries: about 3 GB more than a user's CPU-only image;
- `WEIGHTS_URL`, `CIFAR_URL`, `CIFAR_MD5`: the test data in ../shared, served on 127.0.0.1
  (dockerd fetches ADD URLs itself, on the host); the CIFAR-10 copy is not the official archive,
  so its MD5 differs;
- `BUILD_CA_CERTS`: this machine's extra CA certificates, so pip trusts the TLS proxy that
  package traffic goes through here. Opt-in, builder stages only: no image carries it.

A fixed port and byte-identical inputs keep the arguments the same from run to run, so the
builder's cache serves every build after the first, `make up`'s included.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from testbed.paths import CIFAR_DIR, WEIGHTS
from tests.e2e.servers import file_server

PYPI_INDEX = "https://pypi.org/simple"
CA_CERTS = Path("/usr/local/share/ca-certificates")
SERVE_PORT = 18731


def cifar_archive(directory: Path) -> tuple[Path, str]:
    """The test set laid out as the official archive (cifar-10-batches-bin/...), and its MD5.

    Byte-for-byte reproducible (fixed times and owners), so a rebuild finds the same file.
    """
    archive = directory / "cifar-10-binary.tar.gz"
    with (
        archive.open("wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.USTAR_FORMAT) as tar,
    ):
        folder = tarfile.TarInfo("cifar-10-batches-bin")
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
        for name in ("batches.meta.txt", "test_batch.bin"):
            data = (CIFAR_DIR / "cifar-10-batches-bin" / name).read_bytes()
            member = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            member.size, member.mode = len(data), 0o644
            tar.addfile(member, io.BytesIO(data))
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()  # noqa: S324 - the dataset's own checksum


def build_ca_certs() -> str:
    """This machine's extra CA certificates as PEM text: `$(cat /usr/local/share/ca-certificates/*.crt)`."""
    return "".join(path.read_text() for path in sorted(CA_CERTS.glob("*.crt"))).rstrip("\n")


@contextmanager
def build_args(python_image: str, workdir: Path) -> Iterator[dict[str, str]]:
    """The build arguments of every project image, with the local copies served meanwhile."""
    served = workdir / "build-inputs"
    served.mkdir(exist_ok=True)
    shutil.copyfile(WEIGHTS, served / WEIGHTS.name)
    _, cifar_md5 = cifar_archive(served)
    with file_server(served, "127.0.0.1", SERVE_PORT) as url:
        yield {
            "PYTHON_IMAGE": python_image,
            "TORCH_INDEX_URL": PYPI_INDEX,
            "WEIGHTS_URL": f"{url}/{WEIGHTS.name}",
            "CIFAR_URL": f"{url}/cifar-10-binary.tar.gz",
            "CIFAR_MD5": cifar_md5,
            "BUILD_CA_CERTS": build_ca_certs(),
        }
