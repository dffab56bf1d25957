"""A run's images and IDs follow from the run id and the plan alone: the producer and the audit agree."""

from __future__ import annotations

import uuid

import pytest
from pydantic import ValidationError

from iot_shared.run_plan import RunPlan, choose_indices, image_id


def test_sequential_indices_start_where_asked_and_wrap() -> None:
    assert choose_indices(10, 4, "sequential", start=8).tolist() == [8, 9, 0, 1]


def test_count_zero_means_the_whole_split() -> None:
    assert choose_indices(5, 0, "sequential").tolist() == [0, 1, 2, 3, 4]


def test_random_order_is_reproducible_and_without_repeats() -> None:
    first = choose_indices(100, 50, "random", seed=7)
    assert first.tolist() == choose_indices(100, 50, "random", seed=7).tolist()
    assert len(set(first.tolist())) == 50
    assert first.tolist() != choose_indices(100, 50, "random", seed=8).tolist()


def test_image_ids_are_uuid5_and_depend_on_every_part() -> None:
    base = image_id("run-1", "test", 7, 3)
    assert uuid.UUID(base).version == 5
    assert base == image_id("run-1", "test", 7, 3)  # deterministic, across processes too
    others = {
        image_id("run-2", "test", 7, 3),
        image_id("run-1", "train", 7, 3),
        image_id("run-1", "test", 8, 3),
        image_id("run-1", "test", 7, 4),  # the same image again later in the run (wrap-around)
        image_id("run-1", "test", 7, 3, dataset="other"),
    }
    assert base not in others and len(others) == 5


def test_the_id_of_an_image_never_changes() -> None:
    # Pinned: a change here would make a resumed run send its images under new IDs.
    assert image_id("run-1", "test", 0, 0) == "b1873eb7-52fd-5ff3-9914-44b9b93c7d18"


def test_a_plan_names_every_image_of_the_run_in_send_order() -> None:
    plan = RunPlan(count=3, start=9_999)
    assert plan.image_ids("r") == [
        image_id("r", "test", 9_999, 0),
        image_id("r", "test", 0, 1),
        image_id("r", "test", 1, 2),
    ]
    whole_train = RunPlan(split="train", count=0, order="random", seed=3).image_ids("r")
    assert len(set(whole_train)) == 50_000


def test_a_random_plan_draws_from_the_whole_split() -> None:
    # The audit has no dataset: the split's size is CIFAR-10's, as the producer checks.
    assert max(RunPlan(count=10_000, order="random").indices()) == 9_999


@pytest.mark.parametrize("bad", ["-starts-with-a-dash", "has space", "x" * 101])
def test_a_run_id_that_cannot_be_one_is_refused(bad: str) -> None:
    with pytest.raises(ValidationError, match="run_id"):
        RunPlan(run_id=bad)


def test_an_empty_run_id_means_none_given() -> None:
    assert RunPlan(run_id="").run_id is None
