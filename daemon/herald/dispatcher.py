"""The dispatcher: admits announcements and carries out the Scheduler's decisions.

The Scheduler decides (pure); the Dispatcher acts: it starts the Speaker on the next
announcement, interrupts it when the Scheduler says a newcomer preempts it, reports expiries on
time, and publishes an event for every outcome.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from herald.announcement import Announcement, Defaults, PayloadRejected, parse_payload
from herald.events import Event, EventSink, event_for
from herald.scheduler import Outcome, Preempt, Scheduler
from herald.speaker import Speaker
from herald.text import unspoken_part

log = logging.getLogger(__name__)


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
    ) -> None:
        self._speaker = speaker
        self._scheduler = scheduler
        self._emit = emit
        self._defaults = defaults
        self._max_payload_bytes = max_payload_bytes
        self._clock = clock
        self._changed = asyncio.Event()
        self._speaking: asyncio.Task[bool] | None = None
        self._preempted_by: str | None = None
        self._closing = False

    @property
    def queue_length(self) -> int:
        return len(self._scheduler)

    @property
    def current(self) -> Announcement | None:
        return self._scheduler.current

    # --- commands, called in the event loop -----------------------------------------------------

    def accept(self, payload: bytes) -> Announcement | None:
        """Parse and offer one payload; publish what happened to it (and to any it displaced)."""
        if self._closing:
            self._emit(Event("rejected", None, details={"reason": "herald is shutting down"}))
            return None
        try:
            return self._admit(payload)
        except Exception as exc:  # a bug must cost one message (with an event), not the daemon
            log.exception("could not take a payload")
            self._emit(Event("rejected", None, details={"reason": f"internal error: {exc!r}"}))
            return None

    def _admit(self, payload: bytes) -> Announcement | None:
        try:
            announcement = parse_payload(
                payload, self._max_payload_bytes, self._clock(), self._defaults
            )
        except PayloadRejected as exc:
            log.warning("rejected announcement %s: %s", exc.announcement_id or "(no id)", exc)
            self._emit(Event("rejected", exc.announcement_id, details={"reason": exc.reason}))
            return None
        self._publish(self._scheduler.offer(announcement, self._clock()))
        self._changed.set()
        return announcement

    def stop_current(self) -> None:
        """The `stop` command: silence what is speaking now; the queue goes on."""
        outcomes = self._scheduler.stop()
        if outcomes and self._speaking is not None:
            self._speaker.silence_now()
            self._speaking.cancel()
        self._publish(outcomes)

    def clear_queue(self) -> None:
        """The `clear` command: drop everything waiting; what is speaking finishes."""
        self._publish(self._scheduler.clear())

    def suspend(self) -> None:
        """Before a reload: what was speaking goes back to the head of the queue."""
        self._publish(self._scheduler.requeue_current("config reload"))

    def close(self) -> None:
        """From now on, refuse new announcements (with an event): nothing would speak them."""
        self._closing = True

    def abandon(self) -> None:
        """On shutdown: fail what is speaking and what waits, each with an event."""
        self._closing = True
        if (current := self._scheduler.current) is not None:
            self._fail(current, "herald shut down while speaking it")
            self._scheduler.finish()
        for announcement in self._scheduler.waiting():
            self._fail(announcement, "herald shut down before speaking it")
        self._scheduler.clear()

    def _fail(self, announcement: Announcement, reason: str) -> None:
        self._emit(Event("failed", announcement.id, details={"reason": reason}))

    # --- the queue loop -----------------------------------------------------------------------

    async def speak_queue(self) -> None:
        """Speak announcements in the Scheduler's order, forever; waits (no polling) when idle."""
        while True:
            announcement, outcomes = self._scheduler.start_next(self._clock())
            self._publish(outcomes)
            if announcement is None:
                await self._wait_for_change()
                continue
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
            self._scheduler.finish()
        elif preempted_by is not None:
            resume = unspoken_part(announcement.text, self._speaker.speech_seconds)
            self._publish(self._scheduler.preempted(preempted_by, resume))
        # else: stopped; the Scheduler let go of it when the command came

    def report(self, outcomes: list[Outcome]) -> None:
        """Publish outcomes decided while no dispatcher was running (during a reload)."""
        self._publish(outcomes)

    def _publish(self, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            if isinstance(outcome, Preempt):
                self._interrupt_for(outcome.by)
            elif (event := event_for(outcome)) is not None:
                self._emit(event)

    def _interrupt_for(self, newcomer: Announcement) -> None:
        if self._speaking is None or self._speaking.done():
            return
        log.info("%s (priority %d) cuts in", newcomer.id, newcomer.priority)
        self._speaker.silence_now()  # silence first: cancelling takes a turn of the loop
        self._preempted_by = newcomer.id
        self._speaking.cancel()
