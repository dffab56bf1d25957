from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from iot_inference.classifier import Classifier, to_tensor
from iot_inference.model import WEIGHTS_SHA256, fetch_weights, fold_batch_norms, load_resnet20, resnet20
from iot_shared.errors import DataError
from iot_shared.schema import CLASSES
from testbed.paths import EXPECTED_ACCURACY


def test_published_state_dict_loads_strictly(weights_path: Path) -> None:
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    assert set(state) == set(resnet20().state_dict())
    assert len(state) == 128


def test_folding_batch_norms_keeps_the_published_model_s_outputs(weights_path: Path, test_set) -> None:
    published = load_resnet20(weights_path)
    folded = fold_batch_norms(published)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in published.modules())  # a copy was folded
    x = to_tensor(list(test_set.images[:512]))
    with torch.inference_mode():
        assert torch.allclose(folded(x), published(x), atol=1e-4)


def test_wrong_weights_file_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "cifar10_resnet20-4118986f.pt"
    torch.save(resnet20().state_dict(), bogus)
    with pytest.raises(DataError, match=WEIGHTS_SHA256):
        load_resnet20(bogus)


def test_preprocessing_matches_totensor_and_normalize() -> None:
    pixels = np.zeros((32, 32, 3), dtype=np.uint8)
    pixels[..., 0] = 255
    x = to_tensor([pixels])
    assert x.shape == (1, 3, 32, 32)
    assert x[0, 0, 0, 0].item() == pytest.approx((1.0 - 0.4914) / 0.2023)
    assert x[0, 2, 0, 0].item() == pytest.approx((0.0 - 0.4465) / 0.2010)


# Two forward passes over all 10,000 images: under a minute alone, near two on a busy 2-core machine.
@pytest.mark.timeout(600)
def test_model_agrees_with_reference_forward_pass_on_the_test_set(
    weights_path: Path, test_set, reference_model
) -> None:
    classifier = Classifier(load_resnet20(weights_path))
    labels = []
    confidences = []
    for i in range(0, len(test_set), 500):
        for p in classifier.predict(list(test_set.images[i : i + 500])):
            labels.append(CLASSES.index(p.label))
            confidences.append(p.confidence)
    ours = np.array(labels)
    reference = reference_model.top1(test_set.images)
    assert (ours == reference).mean() >= 0.999
    assert (ours == test_set.labels).mean() == pytest.approx(EXPECTED_ACCURACY, abs=0.0005)
    assert all(0.1 <= c <= 1.0 for c in confidences)


def test_empty_batch_gives_no_predictions(weights_path: Path) -> None:
    assert Classifier(load_resnet20(weights_path)).predict([]) == []


def test_weights_are_fetched_once_into_the_cache_and_verified(weights_path: Path, tmp_path: Path) -> None:
    cache = tmp_path / "checkpoints"
    path = fetch_weights(cache, url=weights_path.as_uri())
    assert path == cache / "cifar10_resnet20-4118986f.pt"
    assert load_resnet20(path).fc.out_features == 10
    # Cached: the URL is not used again.
    assert fetch_weights(cache, url="file:///nonexistent/weights.pt") == path


def test_download_with_the_wrong_hash_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.pt"
    torch.save(resnet20().state_dict(), other)
    with pytest.raises(RuntimeError, match="invalid hash value"):
        fetch_weights(tmp_path / "cache", url=other.as_uri())
    assert not (tmp_path / "cache" / "cifar10_resnet20-4118986f.pt").exists()


def test_unreachable_weights_say_how_to_use_a_local_copy(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="set IOT_WEIGHTS to a local copy"):
        fetch_weights(tmp_path, url="file:///nonexistent/weights.pt")
