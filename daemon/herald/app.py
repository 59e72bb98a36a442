"""Wiring: MQTT messages in, announcements queued and spoken, events out; start-up and shutdown.

One asyncio event loop owns every decision. SIGTERM and SIGINT cancel the main task, so every
`finally` and context manager runs: audio is silenced, the broker connection closed cleanly.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from herald.announcement import Announcement, PayloadRejected, parse_payload
from herald.audio import AudioError, AudioSink
from herald.audio.alsa import AlsaOutput
from herald.config import Config, read_secret
from herald.events import Event, EventSink
from herald.mqtt.client import MqttBridge
from herald.mqtt.topics import Topics
from herald.scheduler import DuplicateId, Scheduler
from herald.speaker import Speaker
from herald.voice import build_voices, voices_running

log = logging.getLogger(__name__)


class Herald:
    """Admits announcements into the queue and speaks them one at a time."""

    def __init__(self, speaker: Speaker, emit: EventSink, max_payload_bytes: int) -> None:
        self._speaker = speaker
        self._emit = emit
        self._max_payload_bytes = max_payload_bytes
        self._scheduler = Scheduler()
        self._wake = asyncio.Event()

    @property
    def queue_length(self) -> int:
        return len(self._scheduler)

    def accept(self, payload: bytes) -> Announcement | None:
        """Parse and queue one payload; emit `queued` or `rejected` (with the reason)."""
        try:
            return self._admit(payload)
        except Exception as exc:  # a bug must cost one message (with an event), not the daemon
            log.exception("could not take a payload")
            self._reject(None, f"internal error: {type(exc).__name__}: {exc}")
            return None

    def _admit(self, payload: bytes) -> Announcement | None:
        try:
            announcement = parse_payload(payload, self._max_payload_bytes)
            self._scheduler.offer(announcement)
        except PayloadRejected as exc:
            self._reject(exc.announcement_id, exc.reason)
            return None
        except DuplicateId as exc:
            self._reject(announcement.id, str(exc))
            return None
        self._emit(
            Event(
                "queued",
                announcement.id,
                details={
                    "priority": announcement.priority_name,
                    "queue_length": len(self._scheduler),
                },
            )
        )
        self._wake.set()
        return announcement

    def _reject(self, announcement_id: str | None, reason: str) -> None:
        log.warning("rejected announcement %s: %s", announcement_id or "(no id)", reason)
        self._emit(Event("rejected", announcement_id, details={"reason": reason}))

    async def speak_queue(self) -> None:
        """Speak queued announcements in order, forever; waits (no polling) while idle."""
        while True:
            announcement = self._scheduler.next()
            if announcement is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._speaker.speak(announcement)

    def abandon_queue(self, reason: str) -> None:
        """Fail everything still waiting, each with an event, so nothing vanishes unannounced."""
        for announcement in self._scheduler.clear():
            self._emit(Event("failed", announcement.id, details={"reason": reason}))


def mqtt_event_sink(bridge: MqttBridge, topics: Topics) -> EventSink:
    def publish(event: Event) -> None:
        log.info("event %s %s", event.kind, event.announcement_id)
        bridge.publish(topics.events, event.to_json(), qos=1)

    return publish


async def run_daemon(config: Config) -> int:
    """Run until SIGTERM/SIGINT; the exit status for the process."""
    stop = _event_set_by_signals(signal.SIGTERM, signal.SIGINT)
    topics = Topics(config.mqtt.base_topic, config.node_id)
    output = AlsaOutput(config.audio)
    await _open_audio_or_warn(output)
    herald: Herald | None = None

    def on_message(topic: str, payload: bytes) -> None:
        if herald is not None and topics.is_say(topic):
            herald.accept(payload)

    password = read_secret(config.mqtt.password_file, "HERALD_MQTT_PASSWORD", "mqtt_password")
    bridge = MqttBridge(
        config.mqtt, f"herald-{config.node_id}", topics.subscriptions(), on_message, password
    )
    emit = mqtt_event_sink(bridge, topics)
    voices = build_voices(config)
    herald = Herald(
        Speaker(voices, output, emit, config.audio.sample_rate), emit, config.mqtt.max_payload_bytes
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
                speaking.cancel()
            herald.abandon_queue("herald shut down before speaking it")
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
