"""The one knob that shrinks the daemon's slow waits for the tests (herald.timing)."""

from __future__ import annotations

import pytest

from herald import timing


@pytest.mark.parametrize(
    ("value", "scale"),
    [(None, 1.0), ("", 1.0), ("0.4", 0.4), ("1", 1.0), ("0.05", 0.05)],
)
def test_the_scale_is_taken_when_it_is_a_factor_between_a_twentieth_and_one(
    value: str | None, scale: float
) -> None:
    assert timing.time_scale(value) == scale


@pytest.mark.parametrize("value", ["abc", "0", "-1", "0.01", "2", "nan", "inf", "1e400"])
def test_anything_else_leaves_the_waits_as_they_are(value: str) -> None:
    assert timing.time_scale(value) == 1.0


def test_the_suite_runs_with_the_shorter_waits() -> None:
    """tests/__init__.py sets it before herald is imported: every wait here is scaled."""
    assert timing.SCALE == 0.5
    waits = (timing.AUDIO_RETRY_S, timing.HANG_AFTER_S, timing.HEALTH_CHECK_S)
    assert [round(wait, 6) for wait in waits] == [2.5, 5.0, 2.5]
