"""The order in which announcements are spoken: a pure state machine, no I/O and no clock.

Events go in (offer, start, finish, preempted, stop, clear) with the time passed in; outcomes
come out, one for each thing that happened to an announcement, for the caller to publish.
The rules:

- highest priority first; first in, first out within a priority;
- a newcomer preempts the one speaking only when it is strictly more urgent and may interrupt;
- a preempted announcement goes back to the head of its priority (restart, resume) or is
  dropped (on_preempt = drop), and an outcome says which;
- an announcement past its expiry is dropped with an `expired` outcome, checked again right
  before it would be spoken;
- an id that is waiting or speaking is refused, so a publisher's retry is not heard twice;
- the queue is bounded: when full, the lowest-priority oldest waiting announcement is evicted;
- during quiet hours only announcements at or above a priority are spoken; the rest wait (and
  may expire).

Every announcement that was offered leaves through exactly one outcome of Rejected, Expired,
Evicted, Dropped, Preempted(requeued=False) or the caller's own finish.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, time

from herald.announcement import Announcement


@dataclass(frozen=True)
class QuietHours:
    """Between `start` and `end` (local time; may wrap past midnight) only urgent ones speak."""

    start: time
    end: time
    min_priority: int

    def active(self, at: time) -> bool:
        if self.start <= self.end:
            return self.start <= at < self.end
        return at >= self.start or at < self.end

    def holds(self, announcement: Announcement, at: time) -> bool:
        return self.active(at) and announcement.priority < self.min_priority

    def seconds_until_end(self, at: time) -> float:
        def seconds(moment: time) -> float:
            return (
                moment.hour * 3600 + moment.minute * 60 + moment.second + moment.microsecond / 1e6
            )

        return (seconds(self.end) - seconds(at)) % 86400


# --- outcomes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Queued:
    announcement: Announcement
    queue_length: int


@dataclass(frozen=True)
class Rejected:
    announcement: Announcement
    reason: str


@dataclass(frozen=True)
class Expired:
    announcement: Announcement


@dataclass(frozen=True)
class Evicted:
    announcement: Announcement
    by: str  # the id that took its place


@dataclass(frozen=True)
class Dropped:
    announcement: Announcement
    reason: str  # "cleared", "stopped"


@dataclass(frozen=True)
class Preempted:
    announcement: Announcement
    by: str
    requeued: bool


@dataclass(frozen=True)
class Preempt:
    """An instruction, not a fate: the caller should interrupt `current` now for `by`."""

    current: Announcement
    by: Announcement


Outcome = Queued | Rejected | Expired | Evicted | Dropped | Preempted | Preempt


@dataclass(order=True)
class _Entry:
    sort_key: tuple[int, int]
    announcement: Announcement = field(compare=False)


def _local_time(now: float) -> time:
    return datetime.fromtimestamp(now).time()


class Scheduler:
    def __init__(
        self,
        max_length: int = 100,
        quiet_hours: QuietHours | None = None,
        local_time: Callable[[float], time] = _local_time,
    ) -> None:
        self.max_length = max_length
        self.quiet_hours = quiet_hours
        self._local_time = local_time
        self._heap: list[_Entry] = []
        self._arrivals = itertools.count()
        self._requeues = itertools.count(-1, -1)  # head of a priority: before every arrival
        self.current: Announcement | None = None
        # Quiet mode (switched on by hand) holds back what is below this, like quiet hours do.
        self.quiet_mode = False
        self.quiet_min_priority = quiet_hours.min_priority if quiet_hours else 80

    def quiet_now(self, now: float) -> bool:
        """Quiet mode is on, or the quiet hours are running."""
        hours = self.quiet_hours
        return self.quiet_mode or (hours is not None and hours.active(self._local_time(now)))

    def __len__(self) -> int:
        return len(self._heap)

    def reconfigure(
        self, max_length: int, quiet_hours: QuietHours | None, quiet_min_priority: int
    ) -> list[Outcome]:
        """New limits from a reloaded config; a smaller bound evicts the least urgent now."""
        self.max_length, self.quiet_hours = max_length, quiet_hours
        self.quiet_min_priority = quiet_min_priority
        evicted: list[Outcome] = []
        while len(self._heap) > self.max_length:
            victim = self._eviction_candidate()
            self._remove(victim.id)
            evicted.append(Evicted(victim, by="config reload"))
        return evicted

    def requeue_current(self, why: str) -> list[Outcome]:
        """Put what is speaking back at the head of its priority, whatever its on_preempt."""
        interrupted, self.current = self.current, None
        if interrupted is None:
            return []
        self._push(interrupted, next(self._requeues))
        return [Preempted(interrupted, by=why, requeued=True)]

    def waiting(self) -> list[Announcement]:
        """What waits, in the order it would be spoken (quiet hours aside)."""
        return [entry.announcement for entry in sorted(self._heap)]

    # --- events in ------------------------------------------------------------------------

    def offer(
        self, announcement: Announcement, now: float, restoring: bool = False
    ) -> list[Outcome]:
        """Admit a newcomer; may evict, and may ask for the current one to be preempted.

        `restoring`: it comes back from the journal after a restart. A crash must not cost an
        announcement, so there is room for the one that was speaking beside a full queue (the
        bound is exceeded by one until the next is spoken).
        """
        if self._known(announcement.id):
            return [Rejected(announcement, f"id {announcement.id!r} is already queued or speaking")]
        if announcement.expired(now):
            return [Expired(announcement)]
        outcomes = self.expire(now)  # a stale one gives up its place before a live one would
        if len(self._heap) >= self.max_length + restoring:
            victim = self._eviction_candidate()
            if victim.priority > announcement.priority:  # the newcomer is the least urgent
                return [
                    *outcomes,
                    Rejected(announcement, f"queue full ({self.max_length} waiting)"),
                ]
            self._remove(victim.id)
            outcomes.append(Evicted(victim, by=announcement.id))
        self._push(announcement, next(self._arrivals))
        outcomes.append(Queued(announcement, len(self._heap)))
        if self._should_preempt(announcement, now):
            assert self.current is not None
            outcomes.append(Preempt(self.current, announcement))
        return outcomes

    def start_next(self, now: float) -> tuple[Announcement | None, list[Outcome]]:
        """Take the announcement to speak now (or None), expiring stale ones on the way."""
        assert self.current is None, "finish or preempt the current announcement first"
        outcomes: list[Outcome] = list(self.expire(now))
        held: list[_Entry] = []
        chosen: Announcement | None = None
        while self._heap:
            entry = heapq.heappop(self._heap)
            if self._held(entry.announcement, now):
                held.append(entry)
                continue
            chosen = entry.announcement
            break
        for entry in held:
            heapq.heappush(self._heap, entry)
        self.current = chosen
        return chosen, outcomes

    def finish(self) -> None:
        """The current announcement was spoken to the end, or failed (the caller says which)."""
        self.current = None

    def preempted(self, by: str, resume_text: str | None = None) -> list[Outcome]:
        """The current announcement was cut off: back to the head of its priority, or dropped.

        `resume_text`, for on_preempt = resume, is what is left to say.
        """
        interrupted, self.current = self.current, None
        assert interrupted is not None, "nothing was speaking"
        if interrupted.on_preempt == "drop":
            return [Preempted(interrupted, by=by, requeued=False)]
        if interrupted.on_preempt == "resume" and resume_text:
            interrupted = replace(interrupted, text=resume_text)
        self._push(interrupted, next(self._requeues))
        outcomes: list[Outcome] = [Preempted(interrupted, by=by, requeued=True)]
        if len(self._heap) > self.max_length:  # the bound holds for requeued ones too
            victim = self._eviction_candidate()
            self._remove(victim.id)
            outcomes.append(Evicted(victim, by=by))
        return outcomes

    def stop(self) -> list[Outcome]:
        """The `stop` command: the current announcement is dropped; the caller silences it."""
        stopped, self.current = self.current, None
        return [] if stopped is None else [Dropped(stopped, "stopped")]

    def withdraw(self, announcement_id: str) -> list[Outcome]:
        """Stop the announcement with this id if it is speaking (the caller silences it), or
        drop it if it waits (the siren turned off before its turn)."""
        if self.current is not None and self.current.id == announcement_id:
            return self.stop()
        waiting = self.find(announcement_id)
        if waiting is None:
            return []
        self._remove(announcement_id)
        return [Dropped(waiting, "stopped")]

    def clear(self) -> list[Outcome]:
        """The `clear` command: everything waiting is dropped (what is speaking goes on)."""
        dropped: list[Outcome] = [Dropped(a, "cleared") for a in self.waiting()]
        self._heap.clear()
        return dropped

    def expire(self, now: float) -> list[Outcome]:
        """Drop every waiting announcement whose time has passed."""
        stale = [entry for entry in self._heap if entry.announcement.expired(now)]
        if not stale:
            return []
        self._heap = [entry for entry in self._heap if not entry.announcement.expired(now)]
        heapq.heapify(self._heap)
        return [Expired(entry.announcement) for entry in sorted(stale)]

    def next_wakeup(self, now: float) -> float | None:
        """When something may change without any event: the next expiry (quiet hours end too).

        None when nothing waits. The caller sleeps until then, or until the next event.
        """
        times = [
            e.announcement.expires_at for e in self._heap if e.announcement.expires_at is not None
        ]
        quiet = self.quiet_hours
        if self._heap and quiet is not None and quiet.active(at := self._local_time(now)):
            times.append(now + quiet.seconds_until_end(at))
        return min(times) if times else None

    # --- rules --------------------------------------------------------------------------------

    def _should_preempt(self, newcomer: Announcement, now: float) -> bool:
        current = self.current
        return (
            current is not None
            and newcomer.interrupt
            and newcomer.priority > current.priority
            and not self._held(newcomer, now)
        )

    def _held(self, announcement: Announcement, now: float) -> bool:
        if self.quiet_mode and announcement.priority < self.quiet_min_priority:
            return True
        quiet = self.quiet_hours
        return quiet is not None and quiet.holds(announcement, self._local_time(now))

    def _eviction_candidate(self) -> Announcement:
        """The lowest-priority, oldest waiting announcement."""
        lowest = min(e.announcement.priority for e in self._heap)
        oldest = min(
            (e for e in self._heap if e.announcement.priority == lowest),
            key=lambda e: e.sort_key[1],
        )
        return oldest.announcement

    def find(self, announcement_id: str) -> Announcement | None:
        """The announcement with this id that is speaking or waiting, if any."""
        if self.current is not None and self.current.id == announcement_id:
            return self.current
        return next(
            (e.announcement for e in self._heap if e.announcement.id == announcement_id), None
        )

    def _known(self, announcement_id: str) -> bool:
        return self.find(announcement_id) is not None

    def _push(self, announcement: Announcement, order: int) -> None:
        # heapq pops the smallest key: negate the priority so the most urgent comes first;
        # `order` keeps arrival order within a priority (requeued ones count down, so they lead).
        heapq.heappush(self._heap, _Entry((-announcement.priority, order), announcement))

    def _remove(self, announcement_id: str) -> None:
        self._heap = [e for e in self._heap if e.announcement.id != announcement_id]
        heapq.heapify(self._heap)
