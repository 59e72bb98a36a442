"""Wiring: MQTT messages in, announcements scheduled and spoken, events out; start-up and shutdown.

One asyncio event loop owns every decision. The Scheduler decides (pure); Herald carries its
decisions out: it starts the Speaker on the next announcement, interrupts it when the Scheduler
says a newcomer preempts it, and publishes an event for every outcome. SIGTERM and SIGINT end
the main task, so every `finally` and context manager runs: audio fades, sockets close cleanly.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from datetime import time as clock_time

from herald.announcement import (
    PRIORITY_LEVELS,
    Announcement,
    Defaults,
    PayloadRejected,
    parse_payload,
    parse_priority,
)
from herald.audio import AudioError, AudioSink
from herald.audio.alsa import AlsaOutput
from herald.audio.chimes import ChimeError, load_chime
from herald.audio.dsp import Samples
from herald.config import Config, read_secret
from herald.events import Event, EventSink, event_for
from herald.mqtt.client import MqttBridge
from herald.mqtt.topics import Topics
from herald.scheduler import Outcome, Preempt, QuietHours, Scheduler
from herald.speaker import Delivery, Speaker
from herald.text import unspoken_part
from herald.voice import build_voices, voices_running

log = logging.getLogger(__name__)


class Herald:
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


# --- building the daemon ------------------------------------------------------------------------


def mqtt_event_sink(bridge: MqttBridge, topics: Topics) -> EventSink:
    def publish(event: Event) -> None:
        log.info("event %s %s", event.kind, event.announcement_id)
        bridge.publish(topics.events, event.to_json(), qos=1)

    return publish


def chime_resolver(config: Config) -> Callable[[Announcement], Samples | None]:
    """The chime an announcement asks for, or its priority's default; a broken one is skipped."""
    rate = config.audio.sample_rate

    def chime_for(announcement: Announcement) -> Samples | None:
        level_default = config.priorities.for_level(announcement.level).chime
        spec = level_default if announcement.chime is True else announcement.chime
        if isinstance(spec, bool):  # False: no chime
            return None
        try:
            return load_chime(str(spec), rate)
        except ChimeError as exc:
            log.warning("%s; speaking without it", exc)
            return None

    return chime_for


def build_scheduler(config: Config) -> Scheduler:
    quiet = config.quiet_hours
    hours = None
    if quiet.enabled:
        start, end = clock_time.fromisoformat(quiet.start), clock_time.fromisoformat(quiet.end)
        hours = QuietHours(start, end, parse_priority(quiet.min_priority))
    return Scheduler(config.queue.max_length, hours)


def build_delivery(config: Config) -> Delivery:
    audio = config.audio
    return Delivery(
        sample_rate=audio.sample_rate,
        volume=audio.volume,
        critical_min_volume=audio.critical_min_volume,
        wake_preroll_ms=audio.wake_preroll_ms,
        idle_after_s=audio.idle_after_s,
        chime_for=chime_resolver(config),
    )


def announcement_defaults(config: Config) -> Defaults:
    return Defaults({level: config.priorities.for_level(level).ttl_s for level in PRIORITY_LEVELS})


async def run_daemon(config: Config) -> int:
    """Run until SIGTERM/SIGINT; the exit status for the process."""
    stop = _event_set_by_signals(signal.SIGTERM, signal.SIGINT)
    topics = Topics(config.mqtt.base_topic, config.node_id)
    output = AlsaOutput(config.audio)
    await _open_audio_or_warn(output)
    herald: Herald | None = None

    def on_message(topic: str, payload: bytes) -> None:
        if herald is None:
            return
        if topics.is_say(topic):
            herald.accept(payload)
        elif topic == topics.stop:
            herald.stop_current()
        elif topic == topics.clear:
            herald.clear_queue()

    password = read_secret(config.mqtt.password_file, "HERALD_MQTT_PASSWORD", "mqtt_password")
    bridge = MqttBridge(
        config.mqtt, f"herald-{config.node_id}", topics.subscriptions(), on_message, password
    )
    emit = mqtt_event_sink(bridge, topics)
    voices = build_voices(config)
    speaker = Speaker(voices, output, emit, build_delivery(config))
    herald = Herald(
        speaker,
        build_scheduler(config),
        emit,
        announcement_defaults(config),
        config.mqtt.max_payload_bytes,
    )
    log.info(
        "herald: node '%s', voices %s, audio '%s' at %d Hz",
        config.node_id,
        ", ".join(v.name for v in voices),
        config.audio.device,
        config.audio.sample_rate,
    )
    try:
        async with voices_running(voices), bridge:
            async with asyncio.TaskGroup() as tasks:
                speaking = tasks.create_task(herald.speak_queue(), name="speak-queue")
                await stop.wait()
                log.info("herald: stopping")
                herald.close()
                speaking.cancel()
            herald.abandon()
    finally:
        output.drop()
        await output.close()
    return 0


async def _open_audio_or_warn(output: AudioSink) -> None:
    """Open the device now so a problem shows at start-up; each announcement tries again."""
    try:
        await output.open()
    except AudioError as exc:
        log.error("audio: %s (each announcement will try to open it again)", exc)


def _event_set_by_signals(*signums: signal.Signals) -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in signums:
        loop.add_signal_handler(signum, stop.set)
    return stop
