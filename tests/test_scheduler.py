"""The scheduler: which announcement speaks next, and the one outcome each of them leaves with.

The scheduler is pure: time is passed in as small float `now` values, and the wall clock that
quiet hours look at comes from the `local_time` constructor parameter.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from herald.announcement import PRIORITY_LEVELS, Announcement, OnPreempt
from herald.scheduler import (
    Dropped,
    Evicted,
    Expired,
    Outcome,
    Preempt,
    Preempted,
    Queued,
    QuietHours,
    Rejected,
    Scheduler,
)

LOW = PRIORITY_LEVELS["low"]
NORMAL = PRIORITY_LEVELS["normal"]
HIGH = PRIORITY_LEVELS["high"]
CRITICAL = PRIORITY_LEVELS["critical"]

OVERNIGHT = QuietHours(start=time(22, 0), end=time(7, 0), min_priority=HIGH)
LUNCH = QuietHours(start=time(13, 0), end=time(14, 0), min_priority=HIGH)


def ann(
    ident: str,
    priority: int = NORMAL,
    *,
    expires_at: float | None = None,
    interrupt: bool = False,
    on_preempt: OnPreempt = "restart",
    text: str | None = None,
) -> Announcement:
    return Announcement(
        ident,
        text if text is not None else f"say {ident}",
        priority=priority,
        expires_at=expires_at,
        interrupt=interrupt,
        on_preempt=on_preempt,
    )


@dataclass
class WallClock:
    """The local time quiet hours see, whatever `now` is; a test moves it by hand."""

    at: time

    def __call__(self, now: float) -> time:
        return self.at


def clock_from(start: time) -> Callable[[float], time]:
    """A local time that is `start` at now=0 and runs with `now` (seconds) from there."""
    origin = datetime.combine(date(2024, 1, 1), start)

    def local_time(now: float) -> time:
        return (origin + timedelta(seconds=now)).time()

    return local_time


def subject(outcome: Outcome) -> Announcement:
    """The announcement an outcome is about (a Preempt is an instruction about two)."""
    assert not isinstance(outcome, Preempt), outcome
    return outcome.announcement


def ids(announcements: list[Announcement]) -> list[str]:
    return [a.id for a in announcements]


def speak_all(scheduler: Scheduler, now: float = 0.0) -> list[str]:
    """Start and finish announcements until none is eligible; the ids in the order spoken."""
    spoken: list[str] = []
    while True:
        chosen, _ = scheduler.start_next(now)
        if chosen is None:
            return spoken
        spoken.append(chosen.id)
        scheduler.finish()


def offer_all(scheduler: Scheduler, *announcements: Announcement, now: float = 0.0) -> None:
    for announcement in announcements:
        outcomes = scheduler.offer(announcement, now)
        assert isinstance(outcomes[-1], Queued), outcomes


# --- order ----------------------------------------------------------------------------------


def test_an_empty_queue_starts_nothing() -> None:
    scheduler = Scheduler()
    assert scheduler.start_next(0.0) == (None, [])
    assert scheduler.current is None
    assert len(scheduler) == 0
    assert scheduler.waiting() == []
    assert scheduler.next_wakeup(0.0) is None


def test_an_offer_is_queued_with_the_queue_length() -> None:
    scheduler = Scheduler()
    first, second = ann("a"), ann("b")
    assert scheduler.offer(first, 0.0) == [Queued(first, 1)]
    assert scheduler.offer(second, 0.0) == [Queued(second, 2)]
    assert len(scheduler) == 2


def test_first_in_first_out_within_a_priority() -> None:
    scheduler = Scheduler()
    offer_all(scheduler, ann("a"), ann("b"), ann("c"))
    assert ids(scheduler.waiting()) == ["a", "b", "c"]
    assert speak_all(scheduler) == ["a", "b", "c"]


def test_the_most_urgent_speaks_first() -> None:
    scheduler = Scheduler()
    offer_all(
        scheduler,
        ann("low", LOW),
        ann("normal", NORMAL),
        ann("critical", CRITICAL),
        ann("normal-2", NORMAL),
        ann("high", HIGH),
    )
    expected = ["critical", "high", "normal", "normal-2", "low"]
    assert ids(scheduler.waiting()) == expected
    assert speak_all(scheduler) == expected


def test_start_next_takes_the_announcement_off_the_queue() -> None:
    scheduler = Scheduler()
    first = ann("a")
    offer_all(scheduler, first, ann("b"))
    chosen, outcomes = scheduler.start_next(0.0)
    assert chosen is first
    assert outcomes == []
    assert scheduler.current is first
    assert ids(scheduler.waiting()) == ["b"]
    scheduler.finish()
    assert scheduler.current is None


# --- duplicate ids --------------------------------------------------------------------------


def test_an_id_that_is_waiting_is_rejected_by_name() -> None:
    scheduler = Scheduler()
    original, retry = ann("same", text="first"), ann("same", text="again")
    offer_all(scheduler, original)
    outcomes = scheduler.offer(retry, 1.0)
    assert len(outcomes) == 1
    rejected = outcomes[0]
    assert isinstance(rejected, Rejected)
    assert rejected.announcement is retry
    assert "'same'" in rejected.reason
    assert scheduler.waiting() == [original]
    assert scheduler.waiting()[0] is original


def test_an_id_that_is_speaking_is_rejected_by_name() -> None:
    scheduler = Scheduler()
    offer_all(scheduler, ann("same"))
    scheduler.start_next(0.0)
    retry = ann("same", CRITICAL, interrupt=True)
    outcomes = scheduler.offer(retry, 1.0)
    assert len(outcomes) == 1
    rejected = outcomes[0]
    assert isinstance(rejected, Rejected)
    assert rejected.announcement is retry
    assert "'same'" in rejected.reason
    assert len(scheduler) == 0  # and no Preempt of itself


def test_a_duplicate_is_rejected_even_when_it_has_already_expired() -> None:
    scheduler = Scheduler()
    offer_all(scheduler, ann("same"))
    outcomes = scheduler.offer(ann("same", expires_at=1.0), 5.0)
    assert [type(o) for o in outcomes] == [Rejected]


def test_an_id_is_free_again_once_it_has_left() -> None:
    scheduler = Scheduler()
    offer_all(scheduler, ann("same", text="first"))
    scheduler.start_next(0.0)
    scheduler.finish()
    later = ann("same", text="later")
    assert scheduler.offer(later, 1.0) == [Queued(later, 1)]
    scheduler.clear()
    again = ann("same", text="again")
    assert scheduler.offer(again, 2.0) == [Queued(again, 1)]


# --- expiry ---------------------------------------------------------------------------------


def test_an_offer_that_has_already_expired_is_expired_not_queued() -> None:
    scheduler = Scheduler()
    stale = ann("stale", expires_at=5.0)
    assert scheduler.offer(stale, 6.0) == [Expired(stale)]
    assert len(scheduler) == 0


def test_an_offer_expiring_exactly_now_is_expired() -> None:
    scheduler = Scheduler()
    stale = ann("stale", expires_at=5.0)
    assert scheduler.offer(stale, 5.0) == [Expired(stale)]
    assert len(scheduler) == 0
    fresh = ann("fresh", expires_at=5.0)
    assert scheduler.offer(fresh, 4.999) == [Queued(fresh, 1)]


def test_expiry_is_checked_again_before_speaking() -> None:
    scheduler = Scheduler()
    short = ann("short", expires_at=10.0)
    offer_all(scheduler, short, now=0.0)
    assert scheduler.start_next(11.0) == (None, [Expired(short)])
    assert len(scheduler) == 0
    assert scheduler.current is None


def test_an_expired_head_is_skipped_for_the_next_one() -> None:
    scheduler = Scheduler()
    short = ann("short", HIGH, expires_at=10.0)
    lasting = ann("lasting", NORMAL)
    offer_all(scheduler, short, lasting, now=0.0)
    chosen, outcomes = scheduler.start_next(11.0)
    assert chosen is lasting
    assert outcomes == [Expired(short)]
    assert scheduler.current is lasting


def test_expire_drops_every_stale_one_in_speaking_order() -> None:
    scheduler = Scheduler()
    a = ann("a", NORMAL, expires_at=5.0)
    b = ann("b", HIGH, expires_at=5.0)
    c = ann("c", NORMAL)
    d = ann("d", LOW, expires_at=3.0)
    e = ann("e", NORMAL, expires_at=20.0)
    f = ann("f", NORMAL, expires_at=10.0)  # exactly now: expired
    offer_all(scheduler, a, b, c, d, e, f, now=0.0)
    assert scheduler.expire(10.0) == [Expired(b), Expired(a), Expired(f), Expired(d)]
    assert scheduler.waiting() == [c, e]
    assert scheduler.expire(10.0) == []


def test_expire_leaves_the_speaking_one_alone() -> None:
    scheduler = Scheduler()
    speaking = ann("speaking", expires_at=5.0)
    offer_all(scheduler, speaking, now=0.0)
    scheduler.start_next(1.0)
    assert scheduler.expire(100.0) == []
    assert scheduler.current is speaking


# --- the bounded queue ----------------------------------------------------------------------


def test_a_full_queue_evicts_the_lowest_priority_oldest_one() -> None:
    scheduler = Scheduler(max_length=3)
    a, b, c = ann("a", NORMAL), ann("b", LOW), ann("c", LOW)
    offer_all(scheduler, a, b, c)
    newcomer = ann("d", NORMAL)
    assert scheduler.offer(newcomer, 1.0) == [Evicted(b, by="d"), Queued(newcomer, 3)]
    assert scheduler.waiting() == [a, newcomer, c]


def test_a_full_queue_rejects_a_newcomer_less_urgent_than_all_waiting() -> None:
    scheduler = Scheduler(max_length=3)
    offer_all(scheduler, ann("a", NORMAL), ann("b", LOW), ann("c", HIGH))
    before = scheduler.waiting()
    newcomer = ann("d", LOW - 1)
    assert scheduler.offer(newcomer, 1.0) == [Rejected(newcomer, "queue full (3 waiting)")]
    assert scheduler.waiting() == before


def test_a_full_queue_evicts_the_oldest_of_equal_lowest_priority() -> None:
    scheduler = Scheduler(max_length=2)
    a, b = ann("a", LOW), ann("b", LOW)
    offer_all(scheduler, a, b)
    newcomer = ann("c", LOW)
    assert scheduler.offer(newcomer, 1.0) == [Evicted(a, by="c"), Queued(newcomer, 2)]
    assert scheduler.waiting() == [b, newcomer]


def test_the_speaking_one_does_not_count_towards_the_bound() -> None:
    scheduler = Scheduler(max_length=1)
    offer_all(scheduler, ann("a"))
    scheduler.start_next(0.0)
    b = ann("b")
    assert scheduler.offer(b, 1.0) == [Queued(b, 1)]


def test_a_restart_restores_a_full_queue_and_the_one_that_was_speaking() -> None:
    # The journal kept a full queue and the one cut short by a crash: all of them come back;
    # the next newcomer finds the queue full as before.
    journal = [ann("speaking", NORMAL), ann("w1", LOW), ann("w2", LOW)]
    scheduler = Scheduler(max_length=2)
    for announcement in journal:
        assert scheduler.offer(announcement, 0.0, restoring=True) == [
            Queued(announcement, len(scheduler))
        ]
    assert ids(scheduler.waiting()) == ["speaking", "w1", "w2"]
    newcomer = ann("new", NORMAL)
    assert scheduler.offer(newcomer, 1.0)[0] == Evicted(journal[1], by="new")


def test_a_full_queue_evicts_even_when_the_newcomer_preempts() -> None:
    scheduler = Scheduler(max_length=1)
    speaking, waiting = ann("speaking", NORMAL), ann("waiting", LOW)
    offer_all(scheduler, speaking)
    scheduler.start_next(0.0)
    offer_all(scheduler, waiting)
    urgent = ann("urgent", CRITICAL, interrupt=True)
    assert scheduler.offer(urgent, 1.0) == [
        Evicted(waiting, by="urgent"),
        Queued(urgent, 1),
        Preempt(speaking, urgent),
    ]


def test_a_preempted_one_requeued_into_a_full_queue_keeps_it_bounded() -> None:
    # The queue is bounded: putting the interrupted announcement back must not overfill it.
    scheduler = Scheduler(max_length=2)
    speaking = ann("speaking", NORMAL)
    offer_all(scheduler, speaking)
    scheduler.start_next(0.0)
    offer_all(scheduler, ann("w1", LOW), ann("w2", LOW))
    urgent = ann("urgent", CRITICAL, interrupt=True)
    outcomes = scheduler.offer(urgent, 1.0)
    assert Preempt(speaking, urgent) in outcomes
    outcomes += scheduler.preempted(by="urgent")
    assert len(scheduler) <= scheduler.max_length, (ids(scheduler.waiting()), outcomes)


def test_a_stale_announcement_gives_way_before_a_live_one_is_evicted() -> None:
    # A full queue whose extra slot is held by an expired announcement: the stale one leaves
    # (Expired), the live low-priority one stays, and the newcomer is queued.
    scheduler = Scheduler(max_length=2)
    stale = ann("stale", HIGH, expires_at=5.0)
    live = ann("live", LOW)
    offer_all(scheduler, stale, live, now=0.0)
    newcomer = ann("newcomer", LOW)
    outcomes = scheduler.offer(newcomer, 10.0)
    assert Evicted(live, by="newcomer") not in outcomes, outcomes
    assert Expired(stale) in outcomes, outcomes
    assert scheduler.waiting() == [live, newcomer]


# --- preemption -----------------------------------------------------------------------------


def speaking_scheduler(
    current: Announcement, quiet_hours: QuietHours | None = None, at: time = time(12, 0)
) -> Scheduler:
    scheduler = Scheduler(quiet_hours=quiet_hours, local_time=WallClock(at))
    offer_all(scheduler, current)
    assert scheduler.start_next(0.0)[0] is current
    return scheduler


def test_a_more_urgent_interrupting_newcomer_preempts() -> None:
    current = ann("current", NORMAL)
    scheduler = speaking_scheduler(current)
    newcomer = ann("newcomer", HIGH, interrupt=True)
    assert scheduler.offer(newcomer, 1.0) == [Queued(newcomer, 1), Preempt(current, newcomer)]
    assert scheduler.current is current  # the caller decides; preempted() makes it so


def test_a_newcomer_one_priority_above_preempts() -> None:
    current = ann("current", NORMAL)
    scheduler = speaking_scheduler(current)
    newcomer = ann("newcomer", NORMAL + 1, interrupt=True)
    assert scheduler.offer(newcomer, 1.0)[-1] == Preempt(current, newcomer)


def test_an_equally_urgent_newcomer_does_not_preempt() -> None:
    current = ann("current", HIGH)
    scheduler = speaking_scheduler(current)
    newcomer = ann("newcomer", HIGH, interrupt=True)
    assert scheduler.offer(newcomer, 1.0) == [Queued(newcomer, 1)]


def test_a_less_urgent_newcomer_does_not_preempt() -> None:
    current = ann("current", HIGH)
    scheduler = speaking_scheduler(current)
    newcomer = ann("newcomer", NORMAL, interrupt=True)
    assert scheduler.offer(newcomer, 1.0) == [Queued(newcomer, 1)]


def test_a_newcomer_that_may_not_interrupt_does_not_preempt() -> None:
    current = ann("current", LOW)
    scheduler = speaking_scheduler(current)
    newcomer = ann("newcomer", CRITICAL, interrupt=False)
    assert scheduler.offer(newcomer, 1.0) == [Queued(newcomer, 1)]
    assert ids(scheduler.waiting()) == ["newcomer"]


def test_nothing_is_preempted_when_nothing_speaks() -> None:
    scheduler = Scheduler()
    offer_all(scheduler, ann("waiting", LOW))
    newcomer = ann("newcomer", CRITICAL, interrupt=True)
    assert scheduler.offer(newcomer, 1.0) == [Queued(newcomer, 2)]


def test_a_newcomer_held_by_quiet_hours_does_not_preempt() -> None:
    current = ann("current", LOW)  # started before quiet hours
    scheduler = Scheduler(quiet_hours=OVERNIGHT, local_time=(clock := WallClock(time(21, 59))))
    offer_all(scheduler, current)
    scheduler.start_next(0.0)
    clock.at = time(22, 0)
    held = ann("held", HIGH - 1, interrupt=True)
    assert scheduler.offer(held, 1.0) == [Queued(held, 1)]
    urgent = ann("urgent", HIGH, interrupt=True)
    assert scheduler.offer(urgent, 2.0) == [Queued(urgent, 2), Preempt(current, urgent)]


def test_preempted_goes_back_to_the_head_of_its_priority_to_restart() -> None:
    current = ann("current", NORMAL, on_preempt="restart")
    scheduler = speaking_scheduler(current)
    earlier = ann("earlier", NORMAL)  # both arrive while `current` speaks, before the cut
    later = ann("later", NORMAL)
    low = ann("low", LOW)
    offer_all(scheduler, earlier, later, low)
    urgent = ann("urgent", CRITICAL, interrupt=True)
    assert scheduler.offer(urgent, 1.0)[-1] == Preempt(current, urgent)
    outcomes = scheduler.preempted(by="urgent", resume_text="ignored for restart")
    assert outcomes == [Preempted(current, by="urgent", requeued=True)]
    assert subject(outcomes[0]) is current  # restart: said again from the start, unchanged
    assert scheduler.current is None
    assert scheduler.waiting() == [urgent, current, earlier, later, low]
    assert speak_all(scheduler, 2.0) == ["urgent", "current", "earlier", "later", "low"]


def test_preempted_to_resume_carries_the_text_that_is_left() -> None:
    current = ann("current", NORMAL, on_preempt="resume", expires_at=50.0, text="one two three")
    scheduler = speaking_scheduler(current)
    offer_all(scheduler, ann("earlier", NORMAL))
    urgent = ann("urgent", CRITICAL, interrupt=True)
    scheduler.offer(urgent, 1.0)
    outcomes = scheduler.preempted(by="urgent", resume_text="three")
    resumed = replace(current, text="three")
    assert outcomes == [Preempted(resumed, by="urgent", requeued=True)]
    assert scheduler.waiting() == [urgent, resumed, ann("earlier", NORMAL)]
    assert speak_all(scheduler, 2.0) == ["urgent", "current", "earlier"]


def test_preempted_to_resume_without_a_rest_keeps_the_whole_text() -> None:
    current = ann("current", NORMAL, on_preempt="resume", text="one two three")
    scheduler = speaking_scheduler(current)
    outcomes = scheduler.preempted(by="urgent")
    assert outcomes == [Preempted(current, by="urgent", requeued=True)]
    assert scheduler.waiting() == [current]


def test_preempted_to_drop_leaves_for_good() -> None:
    current = ann("current", NORMAL, on_preempt="drop")
    scheduler = speaking_scheduler(current)
    offer_all(scheduler, ann("other", LOW))
    outcomes = scheduler.preempted(by="urgent", resume_text="rest")
    assert outcomes == [Preempted(current, by="urgent", requeued=False)]
    assert subject(outcomes[0]) is current
    assert scheduler.current is None
    assert ids(scheduler.waiting()) == ["other"]
    again = ann("current", NORMAL)
    assert scheduler.offer(again, 1.0) == [Queued(again, 2)]  # the id is free again


def test_a_preempted_one_leads_its_priority_again_after_a_second_preemption() -> None:
    scheduler = Scheduler()
    first, second, third = ann("first", NORMAL), ann("second", NORMAL), ann("third", NORMAL)
    offer_all(scheduler, first, second)
    assert scheduler.start_next(0.0)[0] is first
    assert scheduler.preempted(by="x") == [Preempted(first, by="x", requeued=True)]
    offer_all(scheduler, third, now=1.0)
    assert scheduler.waiting() == [first, second, third]
    assert scheduler.start_next(2.0)[0] is first
    scheduler.preempted(by="y")
    assert scheduler.waiting() == [first, second, third]


# --- stop and clear -------------------------------------------------------------------------


def test_stop_drops_the_speaking_one() -> None:
    current = ann("current")
    scheduler = speaking_scheduler(current)
    offer_all(scheduler, ann("waiting"))
    assert scheduler.stop() == [Dropped(current, "stopped")]
    assert scheduler.current is None
    assert ids(scheduler.waiting()) == ["waiting"]


def test_stop_when_idle_does_nothing() -> None:
    scheduler = Scheduler()
    offer_all(scheduler, ann("waiting"))
    assert scheduler.stop() == []
    assert ids(scheduler.waiting()) == ["waiting"]


def test_withdrawing_an_id_stops_it_speaking_or_waiting_and_nothing_else() -> None:
    # The siren turned off: its alert stops whether it speaks or still waits its turn.
    siren, other = ann("siren"), ann("other")
    scheduler = speaking_scheduler(siren)
    offer_all(scheduler, other)
    assert scheduler.withdraw("siren") == [Dropped(siren, "stopped")]
    assert scheduler.current is None and ids(scheduler.waiting()) == ["other"]

    scheduler = speaking_scheduler(other)
    offer_all(scheduler, siren)
    assert scheduler.withdraw("siren") == [Dropped(siren, "stopped")]
    assert scheduler.current is other and scheduler.waiting() == []
    assert scheduler.withdraw("siren") == []


def test_clear_drops_everything_waiting_in_speaking_order_but_not_the_speaking_one() -> None:
    current = ann("current", LOW)
    scheduler = speaking_scheduler(current)
    a, b, c = ann("a", LOW), ann("b", CRITICAL), ann("c", NORMAL)
    offer_all(scheduler, a, b, c)
    assert scheduler.clear() == [
        Dropped(b, "cleared"),
        Dropped(c, "cleared"),
        Dropped(a, "cleared"),
    ]
    assert len(scheduler) == 0
    assert scheduler.current is current
    assert scheduler.clear() == []


# --- quiet hours ----------------------------------------------------------------------------


def test_quiet_hours_hold_the_less_urgent_until_they_end() -> None:
    clock = WallClock(time(23, 0))
    scheduler = Scheduler(quiet_hours=OVERNIGHT, local_time=clock)
    low, normal, high = ann("low", LOW), ann("normal", NORMAL), ann("high", HIGH)
    offer_all(scheduler, low, normal, high)
    assert speak_all(scheduler, 1.0) == ["high"]
    assert scheduler.start_next(2.0) == (None, [])
    assert scheduler.waiting() == [normal, low]  # held, still in order
    clock.at = time(6, 59, 59)
    assert scheduler.start_next(3.0) == (None, [])
    clock.at = time(7, 0)
    assert speak_all(scheduler, 4.0) == ["normal", "low"]


def test_quiet_hours_skip_held_ones_for_an_eligible_one() -> None:
    clock = WallClock(time(1, 0))
    scheduler = Scheduler(quiet_hours=OVERNIGHT, local_time=clock)
    offer_all(scheduler, ann("low", LOW), ann("normal", NORMAL), ann("critical", CRITICAL))
    chosen, outcomes = scheduler.start_next(1.0)
    assert chosen is not None and chosen.id == "critical"
    assert outcomes == []
    assert ids(scheduler.waiting()) == ["normal", "low"]
    scheduler.finish()
    offer_all(scheduler, ann("high", HIGH), now=2.0)
    assert speak_all(scheduler, 3.0) == ["high"]


def test_held_ones_still_expire() -> None:
    clock = WallClock(time(23, 0))
    scheduler = Scheduler(quiet_hours=OVERNIGHT, local_time=clock)
    short = ann("short", LOW, expires_at=10.0)
    offer_all(scheduler, short, now=0.0)
    assert scheduler.start_next(5.0) == (None, [])
    assert scheduler.start_next(10.0) == (None, [Expired(short)])
    assert len(scheduler) == 0


def test_next_wakeup_is_the_end_of_quiet_hours_when_only_held_ones_wait() -> None:
    # now=0 is 21:00; at now=7200 it is 23:00, eight hours before 07:00.
    scheduler = Scheduler(quiet_hours=OVERNIGHT, local_time=clock_from(time(21, 0)))
    offer_all(scheduler, ann("low", LOW), now=7200.0)
    assert scheduler.start_next(7200.0) == (None, [])
    assert scheduler.next_wakeup(7200.0) == pytest.approx(7200.0 + 8 * 3600)
    # half an hour before the end
    assert scheduler.next_wakeup(7200.0 + 7.5 * 3600) == pytest.approx(7200.0 + 8 * 3600)


def test_next_wakeup_is_an_expiry_when_sooner_than_the_end_of_quiet_hours() -> None:
    scheduler = Scheduler(quiet_hours=OVERNIGHT, local_time=clock_from(time(21, 0)))
    offer_all(
        scheduler,
        ann("late", LOW, expires_at=7200.0 + 9 * 3600),
        ann("soon", LOW, expires_at=7200.0 + 600),
        now=7200.0,
    )
    assert scheduler.next_wakeup(7200.0) == pytest.approx(7200.0 + 600)


def test_next_wakeup_is_the_end_of_quiet_hours_when_every_expiry_is_later() -> None:
    scheduler = Scheduler(quiet_hours=OVERNIGHT, local_time=clock_from(time(21, 0)))
    offer_all(scheduler, ann("late", LOW, expires_at=7200.0 + 9 * 3600), now=7200.0)
    assert scheduler.next_wakeup(7200.0) == pytest.approx(7200.0 + 8 * 3600)


def test_next_wakeup_outside_quiet_hours_is_the_earliest_expiry() -> None:
    scheduler = Scheduler(quiet_hours=OVERNIGHT, local_time=clock_from(time(12, 0)))
    offer_all(
        scheduler,
        ann("never", LOW),
        ann("late", NORMAL, expires_at=30.0),
        ann("soon", LOW, expires_at=20.0),
        now=1.0,
    )
    assert scheduler.next_wakeup(1.0) == 20.0
    scheduler.clear()
    offer_all(scheduler, ann("never", LOW), now=2.0)
    assert scheduler.next_wakeup(2.0) is None


def test_next_wakeup_is_none_when_nothing_waits_even_in_quiet_hours() -> None:
    scheduler = Scheduler(quiet_hours=OVERNIGHT, local_time=clock_from(time(23, 0)))
    assert scheduler.next_wakeup(0.0) is None


def test_a_same_day_window_holds_and_releases() -> None:
    clock = WallClock(time(13, 30))
    scheduler = Scheduler(quiet_hours=LUNCH, local_time=clock)
    offer_all(scheduler, ann("normal", NORMAL), ann("high", HIGH))
    assert speak_all(scheduler, 1.0) == ["high"]
    clock.at = time(14, 0)
    assert speak_all(scheduler, 2.0) == ["normal"]
    offer_all(scheduler, ann("later", NORMAL), now=3.0)
    clock.at = time(12, 59)
    assert speak_all(scheduler, 3.0) == ["later"]


def test_a_same_day_window_reports_its_end_as_the_next_wakeup() -> None:
    scheduler = Scheduler(quiet_hours=LUNCH, local_time=clock_from(time(13, 15)))
    offer_all(scheduler, ann("normal", NORMAL), now=0.0)
    assert scheduler.next_wakeup(0.0) == pytest.approx(45 * 60)


@pytest.mark.parametrize(
    ("at", "active"),
    [
        (time(22, 0), True),  # start is inclusive
        (time(21, 59, 59, 999999), False),
        (time(23, 59, 59, 999999), True),
        (time(0, 0), True),  # across midnight
        (time(6, 59, 59, 999999), True),
        (time(7, 0), False),  # end is exclusive
        (time(12, 0), False),
    ],
)
def test_an_overnight_window_is_active(at: time, active: bool) -> None:
    assert OVERNIGHT.active(at) is active


@pytest.mark.parametrize(
    ("at", "active"),
    [
        (time(13, 0), True),  # start is inclusive
        (time(12, 59, 59, 999999), False),
        (time(13, 59, 59, 999999), True),
        (time(14, 0), False),  # end is exclusive
        (time(0, 0), False),
        (time(23, 0), False),
    ],
)
def test_a_same_day_window_is_active(at: time, active: bool) -> None:
    assert LUNCH.active(at) is active


def test_quiet_hours_hold_only_below_the_minimum_priority_and_only_when_active() -> None:
    assert OVERNIGHT.holds(ann("a", HIGH - 1), time(23, 0))
    assert not OVERNIGHT.holds(ann("a", HIGH), time(23, 0))
    assert not OVERNIGHT.holds(ann("a", LOW), time(12, 0))


@pytest.mark.parametrize(
    ("at", "seconds"),
    [
        (time(22, 0), 9 * 3600),
        (time(23, 30), 7.5 * 3600),
        (time(0, 0), 7 * 3600),
        (time(6, 59, 59, 500000), 0.5),
    ],
)
def test_seconds_until_the_end_of_an_overnight_window(at: time, seconds: float) -> None:
    assert OVERNIGHT.seconds_until_end(at) == pytest.approx(seconds)


# --- property: every accepted announcement leaves through exactly one outcome ---------------

QUIET_AT = time(23, 0)  # inside OVERNIGHT-like windows: 8 hours before 07:00
DAY_AT = time(12, 0)
POOL = ["a", "b", "c", "d", "e"]


@dataclass(frozen=True)
class Offer:
    id: str
    priority: int
    interrupt: bool
    on_preempt: OnPreempt
    ttl: float | None


@dataclass(frozen=True)
class StartNext:
    pass


@dataclass(frozen=True)
class Finish:
    pass


@dataclass(frozen=True)
class PreemptedBy:
    by: str
    resume_text: str | None


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class Clear:
    pass


@dataclass(frozen=True)
class Expire:
    pass


@dataclass(frozen=True)
class Quiet:
    on: bool


Op = Offer | StartNext | Finish | PreemptedBy | Stop | Clear | Expire | Quiet

priorities = st.one_of(
    st.sampled_from([0, LOW, NORMAL, HIGH - 1, HIGH, CRITICAL]), st.integers(0, 100)
)
offers = st.builds(
    Offer,
    id=st.sampled_from(POOL),
    priority=priorities,
    interrupt=st.booleans(),
    on_preempt=st.sampled_from(["restart", "resume", "drop"]),
    ttl=st.one_of(st.none(), st.sampled_from([0.0, 0.5, 1.0, 2.0, 5.0, 20.0])),
)
preempteds = st.builds(
    PreemptedBy,
    by=st.sampled_from(POOL),
    resume_text=st.one_of(st.none(), st.just(""), st.just("the rest")),
)
# Offers most often, so that the queue fills up and something is speaking to cut in on.
# (st.one_of does not weigh a repeated strategy; sampled_from does weigh a repeated element.)
operation_kinds: list[st.SearchStrategy[Op]] = [
    *[offers] * 5,
    *[st.just(StartNext())] * 3,
    st.just(Finish()),
    *[preempteds] * 3,
    st.just(Stop()),
    st.just(Clear()),
    st.just(Expire()),
    st.builds(Quiet, on=st.booleans()),
]
operations: st.SearchStrategy[Op] = st.sampled_from(operation_kinds).flatmap(lambda kind: kind)
steps = st.lists(
    st.tuples(operations, st.sampled_from([0.0, 0.0, 0.5, 1.0, 3.0])), min_size=5, max_size=80
)


@dataclass
class Ledger:
    """What the test knows the scheduler holds, and what became of everything it accepted."""

    scheduler: Scheduler
    clock: WallClock
    min_priority: int | None  # None: no quiet hours
    # id -> (serial, the announcement object the scheduler must hand back)
    waiting: dict[str, tuple[int, Announcement]] = field(default_factory=dict)
    order: dict[str, int] = field(default_factory=dict)  # id -> arrival (requeued: negative)
    current: tuple[int, Announcement] | None = None
    fates: dict[int, list[str]] = field(default_factory=dict)  # serial -> terminal outcomes
    serials: Iterator[int] = field(default_factory=itertools.count)
    arrivals: Iterator[int] = field(default_factory=itertools.count)
    requeues: Iterator[int] = field(default_factory=lambda: itertools.count(-1, -1))

    # --- bookkeeping --------------------------------------------------------------------------

    def in_order(self) -> list[Announcement]:
        ordered = sorted(self.waiting, key=lambda i: (-self.waiting[i][1].priority, self.order[i]))
        return [self.waiting[i][1] for i in ordered]

    def held(self, announcement: Announcement) -> bool:
        return (
            self.min_priority is not None
            and self.clock.at == QUIET_AT
            and announcement.priority < self.min_priority
        )

    def accept(self, announcement: Announcement) -> None:
        assert announcement.id not in self.waiting
        assert self.current is None or self.current[1].id != announcement.id
        serial = next(self.serials)
        self.waiting[announcement.id] = (serial, announcement)
        self.order[announcement.id] = next(self.arrivals)
        self.fates[serial] = []

    def leave_waiting(self, announcement: Announcement, fate: str) -> None:
        assert announcement.id in self.waiting, (fate, announcement)
        serial, known = self.waiting.pop(announcement.id)
        del self.order[announcement.id]
        assert announcement is known, (fate, announcement, known)
        self.fates[serial].append(fate)

    def leave_current(self, announcement: Announcement, fate: str) -> None:
        assert self.current is not None, (fate, announcement)
        serial, known = self.current
        assert announcement is known, (fate, announcement, known)
        self.current = None
        self.fates[serial].append(fate)

    # --- the steps --------------------------------------------------------------------------

    def offer(self, op: Offer, now: float, text: str) -> None:
        scheduler = self.scheduler
        expires_at = None if op.ttl is None else now + op.ttl
        newcomer = Announcement(
            op.id,
            text,
            priority=op.priority,
            expires_at=expires_at,
            interrupt=op.interrupt,
            on_preempt=op.on_preempt,
        )
        before = self.in_order()
        outcomes = scheduler.offer(newcomer, now)
        check_preempts(outcomes, self)
        known = op.id in self.waiting or (self.current is not None and self.current[1].id == op.id)
        if known:
            assert len(outcomes) == 1, outcomes
            rejected = outcomes[0]
            assert isinstance(rejected, Rejected) and rejected.announcement is newcomer
            assert repr(op.id) in rejected.reason
            return
        if newcomer.expired(now):
            assert outcomes == [Expired(newcomer)]
            assert subject(outcomes[0]) is newcomer
            return
        # Stale ones give up their places first, in speaking order.
        stale = [a for a in before if a.expired(now)]
        assert outcomes[: len(stale)] == [Expired(a) for a in stale], outcomes
        for announcement in stale:
            self.leave_waiting(announcement, "expired")
        before = [a for a in before if not a.expired(now)]
        rest = outcomes[len(stale) :]
        if len(before) >= scheduler.max_length:
            victim = self.eviction_candidate(before)
            if victim.priority > newcomer.priority:
                full = f"queue full ({scheduler.max_length} waiting)"
                assert rest == [Rejected(newcomer, full)]
                assert subject(rest[0]) is newcomer
                return
            evicted = rest[0]
            assert isinstance(evicted, Evicted), outcomes
            assert evicted.by == newcomer.id
            assert evicted.announcement is victim, (evicted, victim)
            self.leave_waiting(evicted.announcement, "evicted")
            rest = rest[1:]
        assert rest and rest[0] == Queued(newcomer, len(scheduler)), outcomes
        assert subject(rest[0]) is newcomer
        self.accept(newcomer)
        current = self.current
        if (
            current is not None
            and newcomer.interrupt
            and newcomer.priority > current[1].priority
            and not self.held(newcomer)
        ):
            assert rest[1:] == [Preempt(current[1], newcomer)], outcomes
        else:
            assert rest[1:] == [], outcomes

    def start_next(self, now: float) -> None:
        if self.current is not None:
            return  # the scheduler insists the current one is finished or preempted first
        before = self.in_order()
        chosen, outcomes = self.scheduler.start_next(now)
        stale = [a for a in before if a.expired(now)]
        assert outcomes == [Expired(a) for a in stale]
        for outcome in outcomes:
            assert isinstance(outcome, Expired)
            self.leave_waiting(outcome.announcement, "expired")
        eligible = [a for a in before if not a.expired(now) and not self.held(a)]
        expected = eligible[0] if eligible else None
        assert chosen is expected, (chosen, expected)
        if chosen is not None:
            self.current = self.waiting.pop(chosen.id)
            del self.order[chosen.id]
        assert self.scheduler.current is chosen

    def finish(self) -> None:
        if self.current is None:
            return
        self.scheduler.finish()
        self.leave_current(self.current[1], "finished")

    def preempted(self, op: PreemptedBy) -> None:
        if self.current is None:
            return
        serial, interrupted = self.current
        outcomes = self.scheduler.preempted(op.by, op.resume_text)
        outcome = outcomes[0]
        assert isinstance(outcome, Preempted) and outcome.by == op.by
        if interrupted.on_preempt == "drop":
            assert outcome == Preempted(interrupted, op.by, requeued=False)
            self.leave_current(outcome.announcement, "preempted")
            return
        assert outcome.requeued
        if interrupted.on_preempt == "resume" and op.resume_text:
            assert outcome.announcement == replace(interrupted, text=op.resume_text)
        else:
            assert outcome.announcement is interrupted
        self.current = None
        assert interrupted.id not in self.waiting
        self.waiting[interrupted.id] = (serial, outcome.announcement)
        self.order[interrupted.id] = next(self.requeues)
        if len(self.waiting) <= self.scheduler.max_length:
            assert len(outcomes) == 1, outcomes
            return
        # The requeue overfilled the queue: the least urgent, oldest one makes room.
        victim = self.eviction_candidate(self.in_order())
        assert outcomes[1:] == [Evicted(victim, by=op.by)], outcomes
        self.leave_waiting(victim, "evicted")

    def eviction_candidate(self, waiting: list[Announcement]) -> Announcement:
        lowest = min(a.priority for a in waiting)
        return min((a for a in waiting if a.priority == lowest), key=lambda a: self.order[a.id])

    def stop(self) -> None:
        outcomes = self.scheduler.stop()
        if self.current is None:
            assert outcomes == []
            return
        assert outcomes == [Dropped(self.current[1], "stopped")]
        self.leave_current(subject(outcomes[0]), "stopped")

    def clear(self) -> None:
        before = self.in_order()
        outcomes = self.scheduler.clear()
        assert outcomes == [Dropped(a, "cleared") for a in before]
        for outcome in outcomes:
            assert isinstance(outcome, Dropped)
            self.leave_waiting(outcome.announcement, "cleared")

    def expire(self, now: float) -> None:
        before = self.in_order()
        outcomes = self.scheduler.expire(now)
        assert outcomes == [Expired(a) for a in before if a.expired(now)]
        for outcome in outcomes:
            assert isinstance(outcome, Expired)
            self.leave_waiting(outcome.announcement, "expired")

    # --- after every step ----------------------------------------------------------------------

    def check(self, now: float) -> None:
        scheduler = self.scheduler
        waiting = scheduler.waiting()
        assert len(scheduler) == len(waiting)
        assert len(scheduler) <= scheduler.max_length, ids(waiting)
        assert len(set(ids(waiting))) == len(waiting), ids(waiting)
        current = scheduler.current
        assert current is None or current.id not in ids(waiting)
        assert all(a is not current for a in waiting)
        priorities = [a.priority for a in waiting]
        assert priorities == sorted(priorities, reverse=True)
        # The test's own record, in (-priority, order) order, is exactly what waits.
        expected = self.in_order()
        assert ids(waiting) == ids(expected)
        assert all(a is b for a, b in zip(waiting, expected, strict=True))
        assert current is (None if self.current is None else self.current[1])
        # Nothing accepted has left twice.
        assert all(len(fate) <= 1 for fate in self.fates.values()), self.fates
        # When to wake: the earliest expiry, or the end of quiet hours (23:00 to 07:00).
        times = [a.expires_at for a in waiting if a.expires_at is not None]
        if waiting and self.min_priority is not None and self.clock.at == QUIET_AT:
            times.append(now + 8 * 3600)
        wakeup = scheduler.next_wakeup(now)
        if times:
            assert wakeup == pytest.approx(min(times))
        else:
            assert wakeup is None

    def close(self) -> None:
        """Drain what is left; then every accepted announcement has exactly one fate."""
        self.clear()
        self.stop()
        assert len(self.scheduler) == 0 and self.scheduler.current is None
        assert not self.waiting and self.current is None
        unaccounted = {serial: fate for serial, fate in self.fates.items() if len(fate) != 1}
        assert unaccounted == {}


def check_preempts(outcomes: list[Outcome], ledger: Ledger) -> None:
    for outcome in outcomes:
        if isinstance(outcome, Preempt):
            assert ledger.current is not None
            assert outcome.current is ledger.current[1]
            assert outcome.by.priority > outcome.current.priority
            assert outcome.by.interrupt
            assert not ledger.held(outcome.by)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    max_length=st.integers(1, 4),
    min_priority=st.one_of(st.none(), st.sampled_from([NORMAL, HIGH, CRITICAL])),
    quiet_at_start=st.booleans(),
    script=steps,
)
def test_every_accepted_announcement_leaves_exactly_once(
    max_length: int,
    min_priority: int | None,
    quiet_at_start: bool,
    script: list[tuple[Op, float]],
) -> None:
    clock = WallClock(QUIET_AT if quiet_at_start else DAY_AT)
    quiet = (
        None
        if min_priority is None
        else QuietHours(start=time(22, 0), end=time(7, 0), min_priority=min_priority)
    )
    scheduler = Scheduler(max_length=max_length, quiet_hours=quiet, local_time=clock)
    ledger = Ledger(scheduler, clock, min_priority)
    now = 0.0
    for number, (op, dt) in enumerate(script):
        now += dt
        match op:
            case Offer():
                ledger.offer(op, now, text=f"{op.id} #{number}")
            case StartNext():
                ledger.start_next(now)
            case Finish():
                ledger.finish()
            case PreemptedBy():
                ledger.preempted(op)
            case Stop():
                ledger.stop()
            case Clear():
                ledger.clear()
            case Expire():
                ledger.expire(now)
            case Quiet(on=on):
                clock.at = QUIET_AT if on else DAY_AT
        ledger.check(now)
    ledger.close()
