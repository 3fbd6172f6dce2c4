"""Validators: a failing one rejects the cycle (nothing announced), names itself, and the next good cycle proceeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import hollow
from hollowd import ValidationFailedError
from hollowd.errors import ConfigurationError
from hollowd.validators import Candidate, MinimumRecordCount, RecordCountVariance, resolve
from tests.helpers import movie, movies_producer, populate


def announced(root: Path) -> int:
    with hollow.open("movies", root=root, follow=False) as ds:
        return ds.version


def test_minimum_record_count(root: Path) -> None:
    with movies_producer(root, validators=[MinimumRecordCount("Movie", 10)]) as p:
        assert p.run_cycle(populate(movie(i) for i in range(10))) == 1
        with pytest.raises(ValidationFailedError, match=r"min_records\[Movie\].*9 records; at least 10") as e:
            p.run_cycle(populate(movie(i) for i in range(9)))
        assert e.value.validator == "min_records[Movie]"
        assert announced(root) == 1
        assert p.versions() == [1]  # nothing was written
        assert p.run_cycle(populate(movie(i) for i in range(11))) == 2


def test_record_count_variance(root: Path) -> None:
    with movies_producer(root, validators=[RecordCountVariance("Movie", 10)]) as p:
        p.run_cycle(populate(movie(i) for i in range(100)))  # the first version has nothing to compare with
        assert p.run_cycle(populate(movie(i) for i in range(110))) == 2  # +10%: allowed
        with pytest.raises(ValidationFailedError, match=r"from 110 to 55 records \(50.0% change; at most 10%"):
            p.run_cycle(populate(movie(i) for i in range(55)))
        assert announced(root) == 2


def test_custom_validator_sees_the_candidate_and_a_broken_one_rejects(root: Path) -> None:
    seen: list[Candidate] = []

    def no_horror(candidate: Candidate) -> None:
        seen.append(candidate)
        if any(m["genre"] == "Horror" for m in candidate.records["Movie"]):
            raise ValidationFailedError("no_horror", "horror is not allowed")

    def broken(candidate: Candidate) -> Any:
        raise KeyError("oops")

    with movies_producer(root, validators=[no_horror]) as p:
        p.run_cycle(populate(movie(i, genre="Drama") for i in range(5)))
        assert (seen[0].version, seen[0].counts["Movie"], seen[0].previous_counts) == (1, 5, None)
        with pytest.raises(ValidationFailedError, match="horror is not allowed"):
            p.run_cycle(populate(movie(i) for i in range(5)))
        assert seen[1].previous_counts == {"Movie": 5, "Actor": 0, "Role": 0}
    with movies_producer(root, validators=[broken]) as p:
        with pytest.raises(ValidationFailedError, match="KeyError"):
            p.run_cycle(populate(movie(i, title="changed") for i in range(5)))
        assert announced(root) == 1


def test_all_failures_are_reported(root: Path) -> None:
    checks = [MinimumRecordCount("Movie", 50), MinimumRecordCount("Actor", 1)]
    with movies_producer(root, validators=checks) as p, pytest.raises(ValidationFailedError) as e:
        p.run_cycle(populate(movie(i) for i in range(5)))
    assert "min_records[Movie]" in str(e.value)
    assert "also failed: min_records[Actor]" in str(e.value)


def test_resolve() -> None:
    assert resolve("os.path:join") is __import__("os").path.join
    with pytest.raises(ConfigurationError, match="cannot import 'no_such_module:f'"):
        resolve("no_such_module:f")
    with pytest.raises(ConfigurationError, match="not callable"):
        resolve("os:sep")
