from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from iot_producer import cifar
from iot_shared.errors import DataError

# The first labels of the original CIFAR-10 test batch, in file order.
FIRST_TEST_LABELS = [3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8, 5, 7, 8, 6]


def write_batch(path: Path, labels: list[int], seed: int = 0) -> np.ndarray:
    """A batch in the binary format; returns the images as (N, 32, 32, 3)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
    planes = images.transpose(0, 3, 1, 2).reshape(len(labels), -1)  # R plane, G plane, B plane
    records = np.concatenate([np.array(labels, dtype=np.uint8)[:, None], planes], axis=1)
    path.write_bytes(records.tobytes())
    return images


def test_reader_turns_planes_into_rgb_pixels(tmp_path: Path) -> None:
    images = write_batch(tmp_path / "test_batch.bin", [1, 2, 9])
    data = cifar.load_split(tmp_path, "test")
    assert data.labels.tolist() == [1, 2, 9]
    np.testing.assert_array_equal(data.images, images)
    assert data.class_name(2) == "truck"


def test_real_test_set_has_ten_thousand_images_in_original_order(test_set: cifar.Dataset) -> None:
    assert len(test_set) == 10_000
    assert test_set.images.shape == (10_000, 32, 32, 3)
    assert test_set.labels[: len(FIRST_TEST_LABELS)].tolist() == FIRST_TEST_LABELS
    assert np.bincount(test_set.labels).tolist() == [1000] * 10


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "test_batch.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match="whole number of CIFAR-10 records"):
        cifar.load_split(tmp_path, "test")


def test_missing_split_names_the_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data_batch_1\.bin"):
        cifar.load_split(tmp_path, "train")


def make_archive(tmp_path: Path) -> tuple[str, str, np.ndarray]:
    """A small archive laid out like the official one; returns its URL, MD5 and test images."""
    batches = tmp_path / "src" / cifar.BATCHES_DIR
    batches.mkdir(parents=True)
    images = write_batch(batches / "test_batch.bin", [0, 1])
    for i in range(1, 6):
        write_batch(batches / f"data_batch_{i}.bin", [i], seed=i)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(batches, arcname=cifar.BATCHES_DIR)
    archive = tmp_path / "cifar-10-binary.tar.gz"
    archive.write_bytes(buf.getvalue())
    return archive.as_uri(), hashlib.md5(buf.getvalue(), usedforsecurity=False).hexdigest(), images


def test_download_verifies_and_caches(tmp_path: Path) -> None:
    url, md5, images = make_archive(tmp_path)
    cache = tmp_path / "cache"
    folder = cifar.download(cache, url=url, md5=md5)
    np.testing.assert_array_equal(cifar.load_split(folder, "test").images, images)
    # A second call uses the cache: an unreachable URL does not matter any more.
    assert cifar.download(cache, url="file:///nonexistent", md5=md5) == folder


def test_download_with_wrong_checksum_keeps_nothing(tmp_path: Path) -> None:
    url, _, _ = make_archive(tmp_path)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="checksum"):
        cifar.download(cache, url=url, md5="0" * 32)
    assert not (cache / cifar.BATCHES_DIR).exists()


def test_unreachable_download_says_how_to_use_a_local_copy(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="set IOT_DATA_DIR to a local copy"):
        cifar.download(tmp_path, url="file:///nonexistent/cifar-10-binary.tar.gz")
