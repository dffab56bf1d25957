"""CIFAR-10 in its standard binary format (`cifar-10-batches-bin/*.bin`), no pickle.

Each record is 3,073 bytes: the label, then 1,024 red, 1,024 green and 1,024 blue bytes,
each a 32x32 plane in row-major order.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from iot_shared.errors import DataError
from iot_shared.png import IMAGE_SIZE
from iot_shared.run_plan import Split
from iot_shared.schema import CLASSES

log = logging.getLogger(__name__)

SPLIT_FILES: dict[Split, tuple[str, ...]] = {
    "test": ("test_batch.bin",),
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
}
BATCHES_DIR = "cifar-10-batches-bin"
ARCHIVE_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
ARCHIVE_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"  # published beside the archive
RECORD_BYTES = 1 + 3 * IMAGE_SIZE * IMAGE_SIZE


@dataclass(frozen=True)
class Dataset:
    labels: npt.NDArray[np.uint8]  # (N,) class indices 0..9
    images: npt.NDArray[np.uint8]  # (N, 32, 32, 3) RGB, HWC

    def __len__(self) -> int:
        return len(self.labels)

    def class_name(self, index: int) -> str:
        return CLASSES[int(self.labels[index])]


def read_batch(path: Path) -> Dataset:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD_BYTES:
        raise DataError(f"{path}: {raw.size} bytes is not a whole number of CIFAR-10 records")
    records = raw.reshape(-1, RECORD_BYTES)
    labels = records[:, 0].copy()
    if labels.max() >= len(CLASSES):
        raise DataError(f"{path}: label {labels.max()} is not a CIFAR-10 class")
    planes = records[:, 1:].reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE)
    return Dataset(labels, np.ascontiguousarray(planes.transpose(0, 2, 3, 1)))


def batches_dir(data_dir: Path) -> Path:
    """Accept the `cifar-10-batches-bin` folder itself or the folder that holds it."""
    nested = data_dir / BATCHES_DIR
    return nested if nested.is_dir() else data_dir


def load_split(data_dir: Path, split: Split) -> Dataset:
    folder = batches_dir(data_dir)
    paths = [folder / name for name in SPLIT_FILES[split]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"CIFAR-10 {split} split not found: missing {', '.join(missing)}")
    parts = [read_batch(p) for p in paths]
    return Dataset(np.concatenate([p.labels for p in parts]), np.concatenate([p.images for p in parts]))


def download(cache_dir: Path, url: str = ARCHIVE_URL, md5: str = ARCHIVE_MD5) -> Path:
    """Fetch and verify the official archive once; later calls reuse the extracted cache."""
    target = cache_dir / BATCHES_DIR
    if all((target / name).is_file() for names in SPLIT_FILES.values() for name in names):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        archive = Path(tmp) / "cifar-10-binary.tar.gz"
        log.info("downloading CIFAR-10 from %s", url)
        try:
            with urllib.request.urlopen(url, timeout=60) as response, archive.open("wb") as out:  # noqa: S310
                shutil.copyfileobj(response, out)
        except OSError as exc:  # URLError is an OSError
            raise DataError(
                f"cannot download CIFAR-10 from {url} ({exc}); set IOT_DATA_DIR to a local copy"
            ) from exc
        digest = _md5(archive)
        if digest != md5:
            raise DataError(f"{url}: checksum {digest} does not match the published {md5}")
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        shutil.rmtree(target, ignore_errors=True)
        shutil.move(str(batches_dir(Path(tmp))), target)
    return target


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
