"""Validators: checks a candidate version must pass before it is announced (Hollow's validation).

A validator gets a :class:`Candidate` (record counts of the new version and of
the one before it, and the records themselves) and raises
:class:`~hollowd.errors.ValidationFailedError` to reject it, or returns.
Every validator runs; the first failure rejects the cycle and nothing is
announced. Duplicate primary keys are always rejected while building, before
any validator runs.

Built in: :class:`MinimumRecordCount` and :class:`RecordCountVariance`. Your
own: any callable ``(candidate) -> None``, named in the daemon's config as
``module:function``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hollowd.errors import ConfigurationError, ValidationFailedError


@dataclass(frozen=True)
class Candidate:
    """What a validator sees of the version being produced."""

    namespace: str
    version: int  # the version it would get
    counts: Mapping[str, int]  # records per type
    previous_counts: Mapping[str, int] | None  # of the latest published version, if any
    records: Mapping[str, Sequence[Mapping[str, Any]]]  # every record (built on first use in an incremental cycle)
    changed: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)  # upserted this cycle


Validator = Callable[[Candidate], Any]


@dataclass(frozen=True)
class MinimumRecordCount:
    """Reject a version with fewer than *minimum* records of *type_name*."""

    type_name: str
    minimum: int

    @property
    def name(self) -> str:
        return f"min_records[{self.type_name}]"

    def __call__(self, candidate: Candidate) -> None:
        count = candidate.counts.get(self.type_name, 0)
        if count < self.minimum:
            raise ValidationFailedError(
                self.name, f"{self.type_name} has {count:,} records; at least {self.minimum:,} are required"
            )


@dataclass(frozen=True)
class RecordCountVariance:
    """Reject a version whose count of *type_name* changed by more than *percent* from the last one."""

    type_name: str
    percent: float

    @property
    def name(self) -> str:
        return f"max_change_percent[{self.type_name}]"

    def __call__(self, candidate: Candidate) -> None:
        if not candidate.previous_counts or self.type_name not in candidate.previous_counts:
            return  # nothing to compare with
        before = candidate.previous_counts[self.type_name]
        after = candidate.counts.get(self.type_name, 0)
        change = abs(after - before) * 100.0 / before if before else (0.0 if after == 0 else 100.0)
        if change > self.percent:
            raise ValidationFailedError(
                self.name,
                f"{self.type_name} went from {before:,} to {after:,} records ({change:.1f}% change; "
                f"at most {self.percent:g}% is allowed)",
            )


def named(validator: Validator) -> str:
    """The name a validator is reported under."""
    name = getattr(validator, "name", None)
    if isinstance(name, str):
        return name
    return f"{getattr(validator, '__module__', '?')}:{getattr(validator, '__qualname__', repr(validator))}"


def resolve(ref: str) -> Callable[..., Any]:
    """Import ``module:function`` (a custom validator or a source)."""
    module_name, _, attr = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ConfigurationError(f"cannot import {ref!r}: {e}") from e
    if not callable(obj):
        raise ConfigurationError(f"{ref!r} is not callable")
    return obj  # type: ignore[no-any-return]


def run_all(validators: Sequence[Validator], candidate: Candidate) -> None:
    """Run every validator; raise the first failure (an unexpected exception counts as one)."""
    failures: list[ValidationFailedError] = []
    for validator in validators:
        try:
            validator(candidate)
        except ValidationFailedError as e:
            failures.append(e)
        except Exception as e:  # noqa: BLE001 - a validator that breaks rejects the version too
            failures.append(ValidationFailedError(named(validator), f"{type(e).__name__}: {e}"))
    if failures:
        first = failures[0]
        if len(failures) > 1:
            others = "; ".join(f"{f.validator}: {f.reason}" for f in failures[1:])
            raise ValidationFailedError(first.validator, f"{first.reason} (also failed: {others})")
        raise first
