"""The queue: most urgent first, arrival order within a priority, no id twice while waiting."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from herald.announcement import Announcement
from herald.scheduler import DuplicateId, Scheduler


def drain(scheduler: Scheduler) -> list[str]:
    spoken = []
    while (announcement := scheduler.next()) is not None:
        spoken.append(announcement.id)
    return spoken


def test_an_empty_queue_has_nothing_next() -> None:
    assert Scheduler().next() is None


def test_arrival_order_within_a_priority() -> None:
    scheduler = Scheduler()
    for ident in "abc":
        scheduler.offer(Announcement(ident, "text"))
    assert len(scheduler) == 3
    assert drain(scheduler) == ["a", "b", "c"]


def test_most_urgent_first() -> None:
    scheduler = Scheduler()
    scheduler.offer(Announcement("low", "x", 20))
    scheduler.offer(Announcement("normal", "x", 50))
    scheduler.offer(Announcement("critical", "x", 100))
    scheduler.offer(Announcement("normal-2", "x", 50))
    assert drain(scheduler) == ["critical", "normal", "normal-2", "low"]


def test_an_id_that_is_waiting_is_refused_and_free_again_once_taken() -> None:
    scheduler = Scheduler()
    scheduler.offer(Announcement("same", "first"))
    with pytest.raises(DuplicateId, match="'same' is already queued"):
        scheduler.offer(Announcement("same", "again"))
    assert scheduler.next() == Announcement("same", "first")
    scheduler.offer(Announcement("same", "later"))
    assert len(scheduler) == 1


def test_clear_returns_what_was_waiting_in_speaking_order() -> None:
    scheduler = Scheduler()
    scheduler.offer(Announcement("a", "x", 20))
    scheduler.offer(Announcement("b", "x", 80))
    assert [a.id for a in scheduler.clear()] == ["b", "a"]
    assert len(scheduler) == 0
    scheduler.offer(Announcement("a", "x"))  # its id is free again


@given(st.lists(st.tuples(st.sampled_from("abcdef"), st.integers(0, 100)), max_size=40))
def test_every_offer_is_taken_once_or_refused(offers: list[tuple[str, int]]) -> None:
    scheduler = Scheduler()
    accepted = []
    for n, (ident, priority) in enumerate(offers):
        try:
            scheduler.offer(Announcement(ident, f"text {n}", priority))
            accepted.append((ident, priority, n))
        except DuplicateId:
            assert any(a[0] == ident for a in accepted)
    spoken = []
    while (announcement := scheduler.next()) is not None:
        spoken.append(announcement)
    assert len(spoken) == len(accepted)
    # Spoken order is by priority, then by arrival.
    keys = [(-a.priority, int(a.text.split()[1])) for a in spoken]
    assert keys == sorted(keys)
