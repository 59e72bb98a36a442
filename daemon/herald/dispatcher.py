"""The dispatcher: admits announcements and carries out the Scheduler's decisions.

The Scheduler decides (pure); the Dispatcher acts: it starts the Speaker on the next
announcement, interrupts it when the Scheduler says a newcomer preempts it, reports expiries on
time, and emits an event for every outcome. The events go to the outbox (herald.outbox), which
keeps every accepted announcement on disk from its `queued` event until the broker has its
final event, so a crash or a restart loses nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace

from herald.announcement import (
    PRIORITY_LEVELS,
    Announcement,
    Defaults,
    PayloadRejected,
    media_announcement,
    parse_payload,
)
from herald.budget import SlidingBudget
from herald.events import Event, EventSink, about, event_for
from herald.logsafe import shown
from herald.scheduler import (
    Outcome,
    Preempt,
    Scheduler,
)
from herald.speaker import Speaker
from herald.text import unspoken_part

log = logging.getLogger(__name__)

# How many announcements the dispatcher remembers (by id and a digest of their words) to tell a
# broker's redelivery from a new message. A redelivery follows a dropped connection within
# seconds; a thousand covers any queue Herald keeps (its longest is `queue.max_length`).
REMEMBERED_IDS = 1000


class RecentlyTaken:
    """The last `size` announcements taken, by id, each as a digest of its words and priority."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._digests: OrderedDict[str, bytes] = OrderedDict()

    @staticmethod
    def _digest(announcement: Announcement) -> bytes:
        words = f"{announcement.priority}:{announcement.text}".encode()
        return hashlib.blake2b(words, digest_size=16).digest()

    def add(self, announcement: Announcement) -> None:
        self._digests[announcement.id] = self._digest(announcement)
        self._digests.move_to_end(announcement.id)
        while len(self._digests) > self._size:
            self._digests.popitem(last=False)

    def has(self, announcement: Announcement) -> bool:
        """Taken lately: the same id with the same words and priority."""
        return self._digests.get(announcement.id) == self._digest(announcement)


class Dispatcher:
    """Admits announcements, speaks them in the Scheduler's order, interrupts when it says so."""

    def __init__(
        self,
        speaker: Speaker,
        scheduler: Scheduler,
        emit: EventSink,
        defaults: Defaults,
        max_payload_bytes: int,
        clock: Callable[[], float] = time.time,
        queue_kept: bool = False,
        rate: tuple[int, int] | None = None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        """`queue_kept`: what is not spoken when Herald stops is kept for the restart (the
        outbox has a journal); else it fails, with its event. `on_change` is called when an
        announcement starts (it may wait for the audio device before any event says so) and
        when one has ended and nothing took its place yet (its event goes out before that
        moment): the status follows what events alone do not tell."""
        self._speaker = speaker
        self._scheduler = scheduler
        self._emit = emit
        self._defaults = defaults
        self._max_payload_bytes = max_payload_bytes
        self._clock = clock
        self._queue_kept = queue_kept
        self._rate = rate  # (per minute, burst) per source
        self._budgets: dict[str, SlidingBudget] = {}
        # What was taken lately (and what the journal gave back at start), by id. The broker
        # sends again (DUP) what it had not heard acknowledged when the connection dropped or
        # Herald stopped, and that may be one of these, spoken or expired by the time it arrives.
        self._taken = RecentlyTaken(REMEMBERED_IDS)
        self._changed = asyncio.Event()
        self._speaking: asyncio.Task[bool] | None = None
        self._preempted_by: Announcement | None = None  # the one that cut in, until it speaks
        self._closing = False
        self._on_change = on_change

    @property
    def current(self) -> Announcement | None:
        return self._scheduler.current

    # --- commands, called in the event loop -----------------------------------------------------

    def accept(
        self,
        payload: bytes,
        source: str = "say",
        redelivered: bool = False,
        sync_key: str | None = None,
    ) -> Announcement | None:
        """Parse and offer one payload; publish what happened to it (and to any it displaced).

        `source` (the topic it came in on) is what the rate limit counts per; `redelivered`:
        the broker marked it as sent before (MQTT's DUP flag); `sync_key`: it reached several
        rooms, which agree on its start by this key.
        """
        if self._closing:
            reason = "herald is shutting down"
            self._emit(Event("rejected", self._id_of(payload), details={"reason": reason}))
            return None
        try:
            return self._admit(payload, source, redelivered, sync_key)
        except Exception as exc:  # a bug must cost one message (with an event), not the daemon
            log.exception("could not take a payload")
            self._emit(Event("rejected", None, details={"reason": f"internal error: {exc!r}"}))
            return None

    def accept_media(self, url: str, priority: int, source: str) -> Announcement | None:
        """Offer media to play (a URL from Home Assistant) as an announcement; None when it
        was refused (with its event)."""
        if self._closing:
            self._emit(Event("rejected", None, details={"reason": "herald is shutting down"}))
            return None
        try:
            return self._admit_media(url, priority, source)
        except Exception as exc:  # a bug must cost one message (with an event), not the caller
            log.exception("could not take media")
            reason = f"internal error: {exc!r}"
            self._emit(Event("rejected", None, details={"reason": reason, "source": source}))
            return None

    def _admit_media(self, url: str, priority: int, source: str) -> Announcement | None:
        now = self._clock()
        try:
            announcement = media_announcement(url, priority, now, self._defaults, source)
        except PayloadRejected as exc:
            log.warning("rejected media from %s: %s", source, exc.reason)
            self._emit(Event("rejected", None, details={"reason": exc.reason, "source": source}))
            return None
        if self._over_rate(announcement, source, now):  # the same limit as any MQTT topic's
            self._emit(about(announcement, "rejected", {"reason": self._rate_reason(source)}))
            return None
        log.info("%s: %s (priority %d)", announcement.id, shown(announcement.text), priority)
        self._offer(announcement)
        return announcement

    def _id_of(self, payload: bytes) -> str | None:
        """The id a payload gives itself, if any (for the event of one that is refused)."""
        try:
            return parse_payload(payload, self._max_payload_bytes, self._clock(), self._defaults).id
        except PayloadRejected as exc:
            return exc.announcement_id

    def _admit(
        self, payload: bytes, source: str, redelivered: bool, sync_key: str | None
    ) -> Announcement | None:
        now = self._clock()
        try:
            announcement = parse_payload(payload, self._max_payload_bytes, now, self._defaults)
            if sync_key is not None:
                announcement = replace(announcement, sync_key=sync_key)
        except PayloadRejected as exc:
            ident = shown(exc.announcement_id) if exc.announcement_id else "(no id)"
            log.warning("rejected announcement %s: %s", ident, shown(exc.reason, 200))
            self._emit(Event("rejected", exc.announcement_id, details={"reason": exc.reason}))
            return None
        if self._already_have(announcement) or (redelivered and self._taken.has(announcement)):
            # MQTT delivers at least once: after a crash or a lost connection between the
            # journal and the ack, the broker sends again what Herald already took. Same id,
            # same words: the same announcement, which has its events already.
            log.info("%s arrived again (a redelivery): Herald had it", announcement.id)
            return None
        if self._over_rate(announcement, source, now):
            reason = self._rate_reason(source)
            self._emit(Event("rejected", announcement.id, details={"reason": reason}))
            return None
        self._offer(announcement)
        return announcement

    def _already_have(self, announcement: Announcement) -> bool:
        known = self._scheduler.find(announcement.id)
        return known is not None and (known.text, known.priority) == (
            announcement.text,
            announcement.priority,
        )

    def _rate_reason(self, source: str) -> str:
        return f"rate limit: more than {self._rate[0] if self._rate else 0} a minute from {source}"

    def _over_rate(self, announcement: Announcement, source: str, now: float) -> bool:
        """A flooding publisher cannot starve the others; critical ones always get through."""
        if self._rate is None or announcement.priority >= PRIORITY_LEVELS["critical"]:
            return False
        per_minute, burst = self._rate
        budget = self._budgets.setdefault(source, SlidingBudget(burst, burst * 60 / per_minute))
        if budget.delay(1, now) > 0:
            return True
        budget.spend(1, now)
        return False

    def replay(self, announcements: list[Announcement]) -> None:
        """Offer again what the journal kept from the last run (expired ones get their event)."""
        for announcement in announcements:
            log.info("replaying %s from the journal", announcement.id)
            # On its own: the instant the rooms agreed on for it has long passed.
            self._offer(replace(announcement, sync_key=None), restoring=True)

    def _offer(self, announcement: Announcement, restoring: bool = False) -> None:
        # Schedule (and so preempt) first; the journal's disk write comes after, off the
        # critical path; the broker is acknowledged only once this returns.
        self._taken.add(announcement)
        self._publish(self._scheduler.offer(announcement, self._clock(), restoring))
        self._changed.set()

    def set_quiet(self, quiet: bool) -> None:
        self._scheduler.quiet_mode = quiet
        self._changed.set()  # what was held may speak now

    def stop_current(self) -> int:
        """The `stop` command: silence what is speaking now; the queue goes on. How many were
        stopped (0 or 1; each has its `dropped` event)."""
        return self._stop(self._scheduler.stop())

    def withdraw(self, announcement_id: str) -> int:
        """Stop the announcement with this id, speaking or waiting; how many were (0 or 1)."""
        speaking = self.current is not None and self.current.id == announcement_id
        outcomes = self._scheduler.withdraw(announcement_id)
        if speaking:
            return self._stop(outcomes)
        self._publish(outcomes)
        return len(outcomes)

    def _stop(self, outcomes: list[Outcome]) -> int:
        if outcomes and self._speaking is not None:
            self._speaker.silence_now()
            self._speaking.cancel()
            self._preempted_by = None  # stopped for good, even if something had just cut in
        self._publish(outcomes)
        return len(outcomes)

    def clear_queue(self) -> int:
        """The `clear` command: drop everything waiting; what is speaking finishes. How many
        were dropped (each has its event)."""
        outcomes = self._scheduler.clear()
        self._publish(outcomes)
        return len(outcomes)

    def suspend(self) -> None:
        """Before a reload: what was speaking goes back to the head of the queue."""
        self._publish(self._scheduler.requeue_current("config reload"))

    def close(self) -> None:
        """From now on, refuse new announcements (with an event): nothing would speak them."""
        self._closing = True

    def abandon(self) -> None:
        """On shutdown: what is speaking and what waits is kept for the restart (if the queue
        is kept); else each fails, with an event."""
        self._closing = True
        speaking, waiting = self._scheduler.current, self._scheduler.waiting()
        self._scheduler.finish()
        self._scheduler.clear()
        if self._queue_kept:  # the journal is closed by the caller once the events are out
            kept = len(waiting) + (speaking is not None)
            log.info("herald: %d announcements kept in the journal for the restart", kept)
            return
        if speaking is not None:
            self._fail(speaking, "herald shut down while speaking it")
        for announcement in waiting:
            self._fail(announcement, "herald shut down before speaking it")

    def _fail(self, announcement: Announcement, reason: str) -> None:
        self._emit(about(announcement, "failed", {"reason": reason}))

    # --- the queue loop -----------------------------------------------------------------------

    async def speak_queue(self) -> None:
        """Speak announcements in the Scheduler's order, forever; waits (no polling) when idle."""
        while True:
            announcement, outcomes = self._scheduler.start_next(self._clock())
            self._publish(outcomes)
            if announcement is None:
                await self._wait_for_change()
                continue
            self._on_change()
            await self._speak(announcement)

    async def _wait_for_change(self, speaking: asyncio.Task[bool] | None = None) -> None:
        """Sleep until an event, the end of `speaking`, or a time the Scheduler names.

        Expired announcements are reported when their time comes, even while another speaks.
        """
        self._changed.clear()
        changed = asyncio.create_task(self._changed.wait())
        now = self._clock()
        wakeup = self._scheduler.next_wakeup(now)
        timeout = None if wakeup is None else max(wakeup - now, 0.0) + 0.01
        try:
            waiting_for = {changed} if speaking is None else {changed, speaking}
            await asyncio.wait(waiting_for, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
        self._publish(self._scheduler.expire(self._clock()))

    async def _speak(self, announcement: Announcement) -> None:
        task = asyncio.create_task(
            self._speaker.speak(announcement), name=f"speak-{announcement.id}"
        )
        self._speaking = task
        try:
            while not task.done():  # cancelled or not
                await self._wait_for_change(speaking=task)
        except asyncio.CancelledError:
            task.cancel()  # shutdown: the announcement is abandoned by the caller
            await asyncio.wait([task])
            raise
        finally:
            self._speaking = None
        preempted_by, self._preempted_by = self._preempted_by, None
        if not task.cancelled():
            self._scheduler.finish()  # spoken, or failed: its event settled it
            self._on_change()
        elif preempted_by is not None:
            resume = unspoken_part(announcement.text, self._speaker.speech_seconds)
            self._publish(self._scheduler.preempted(preempted_by.id, resume))
        # else: stopped; the Scheduler let go of it when the command came

    def report(self, outcomes: list[Outcome]) -> None:
        """Publish outcomes decided while no dispatcher was running (during a reload)."""
        self._publish(outcomes)

    def _publish(self, outcomes: list[Outcome]) -> None:
        # A preemption first: silencing the old voice must not wait for a disk write.
        for outcome in sorted(outcomes, key=lambda o: not isinstance(o, Preempt)):
            if isinstance(outcome, Preempt):
                self._interrupt_for(outcome.by)
                continue
            if (event := event_for(outcome)) is not None:
                self._emit(event)

    def _interrupt_for(self, newcomer: Announcement) -> None:
        if self._speaking is None or self._speaking.done():
            return
        log.info("%s (priority %d) cuts in", newcomer.id, newcomer.priority)
        first = self._preempted_by
        # Several in one turn of the loop (before the speaking task has heard of the first):
        # the event names the one that speaks next, the most urgent (of equals, the first).
        if first is None or newcomer.priority > first.priority:
            self._preempted_by = newcomer
        if first is None:
            self._speaker.silence_now()  # silence first: cancelling takes a turn of the loop
            self._speaking.cancel()
