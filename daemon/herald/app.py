"""The daemon's life: build the parts from the config, run them, reload on SIGHUP, stop on SIGTERM.

One asyncio event loop owns every decision. SIGTERM and SIGINT end the run cleanly: every
`finally` and context manager runs, audio fades, the voice socket is closed with `Close`,
`offline` is published, and systemd hears STOPPING=1. SIGHUP reloads the configuration: the
parts are rebuilt, but the queue (the Scheduler) is kept, so nothing queued is lost.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import time as clock_time

from herald.announcement import PRIORITY_LEVELS, Announcement, Defaults, parse_priority
from herald.audio import AudioError
from herald.audio.alsa import AlsaOutput
from herald.audio.chimes import ChimeError, load_chime
from herald.audio.dsp import Samples
from herald.config import Config, ConfigError, read_secret
from herald.dispatcher import Dispatcher
from herald.events import Event, EventSink
from herald.mqtt.client import MqttBridge
from herald.mqtt.topics import Topics
from herald.scheduler import Outcome, QuietHours, Scheduler
from herald.speaker import Delivery, Speaker
from herald.systemd import Notifier, keep_watchdog_fed, watchdog_interval_s
from herald.voice import Voice, build_voices, voices_running

log = logging.getLogger(__name__)

AUDIO_RETRY_S = 5.0  # how often readiness tries an audio device that would not open


# --- building the daemon ------------------------------------------------------------------------


def mqtt_event_sink(bridge: MqttBridge, topics: Topics) -> EventSink:
    def publish(event: Event) -> None:
        fields = {"ANNOUNCEMENT_ID": event.announcement_id or "", "HERALD_EVENT": event.kind}
        if "voice" in event.details:
            fields["VOICE"] = str(event.details["voice"])
        log.info(
            "%s %s%s",
            event.kind,
            event.announcement_id or "(no id)",
            _describe(event.details),
            extra=fields,
        )
        bridge.publish(topics.events, event.to_json(), qos=1)

    return publish


def _describe(details: dict[str, object]) -> str:
    return "".join(f" {key}={value}" for key, value in details.items())


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


def quiet_hours(config: Config) -> QuietHours | None:
    quiet = config.quiet_hours
    if not quiet.enabled:
        return None
    start, end = clock_time.fromisoformat(quiet.start), clock_time.fromisoformat(quiet.end)
    return QuietHours(start, end, parse_priority(quiet.min_priority))


def build_scheduler(config: Config) -> Scheduler:
    return Scheduler(config.queue.max_length, quiet_hours(config))


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


async def run_daemon(config: Config, reload: Callable[[], Config] | None = None) -> int:
    """Run until SIGTERM/SIGINT, reloading on SIGHUP; the exit status for the process."""
    signals = _Signals.install()
    notifier = Notifier()
    scheduler = build_scheduler(config)  # outlives reloads: the queue is never lost
    evicted: list[Outcome] = []
    while True:
        await _serve(config, scheduler, notifier, signals, evicted)
        if signals.stop.is_set():
            return 0
        signals.reload.clear()
        notifier.reloading()
        config = _reloaded(config, reload)
        evicted = scheduler.reconfigure(config.queue.max_length, quiet_hours(config))


@dataclass
class _Signals:
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    reload: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def install(cls) -> _Signals:
        signals = cls()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, signals.stop.set)
        loop.add_signal_handler(signal.SIGHUP, signals.reload.set)
        return signals

    async def either(self) -> None:
        waits = [asyncio.create_task(event.wait()) for event in (self.stop, self.reload)]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()


def _reloaded(config: Config, reload: Callable[[], Config] | None) -> Config:
    if reload is None:
        return config
    try:
        fresh = reload()
    except ConfigError as exc:
        for line in exc.lines:
            log.error("reload refused, keeping the running configuration: %s", line)
        return config
    log.info("herald: configuration reloaded")
    return fresh


async def _serve(
    config: Config,
    scheduler: Scheduler,
    notifier: Notifier,
    signals: _Signals,
    unreported: list[Outcome],
) -> None:
    """One run of the daemon with one configuration, until a stop or reload signal."""
    topics = Topics(config.mqtt.base_topic, config.node_id)
    output = AlsaOutput(config.audio)
    dispatcher: Dispatcher | None = None

    def on_message(topic: str, payload: bytes) -> None:
        if dispatcher is not None:
            _route(dispatcher, topics, topic, payload)

    password = read_secret(config.mqtt.password_file, "HERALD_MQTT_PASSWORD", "mqtt_password")
    bridge = MqttBridge(
        config.mqtt,
        f"herald-{config.node_id}",
        topics.subscriptions(),
        on_message,
        password,
        availability=topics.availability,
    )
    emit = mqtt_event_sink(bridge, topics)
    voices = build_voices(config)
    speaker = Speaker(voices, output, emit, build_delivery(config))
    dispatcher = Dispatcher(
        speaker, scheduler, emit, announcement_defaults(config), config.mqtt.max_payload_bytes
    )
    log.info(
        "herald: node '%s', voices %s, audio '%s' at %d Hz",
        config.node_id,
        ", ".join(v.name for v in voices),
        config.audio.device,
        config.audio.sample_rate,
    )

    def status() -> str:
        return status_line(dispatcher, voices)

    try:
        async with voices_running(voices), bridge:
            async with asyncio.TaskGroup() as tasks:
                dispatcher.report(unreported)  # evictions by a reload that shrank the queue
                speaking = tasks.create_task(dispatcher.speak_queue(), name="speak-queue")
                upkeep = [tasks.create_task(_become_ready(bridge, output, notifier, status))]
                if (interval := watchdog_interval_s()) is not None:
                    upkeep.append(tasks.create_task(keep_watchdog_fed(notifier, interval, status)))
                await signals.either()
                if signals.stop.is_set():
                    log.info("herald: stopping")
                    notifier.stopping()
                    dispatcher.close()
                speaking.cancel()
                for task in upkeep:
                    task.cancel()
            # Still connected: the events of what was cut short reach the broker.
            if signals.stop.is_set():
                dispatcher.abandon()
            else:
                dispatcher.suspend()  # a reload: what was speaking goes back to the queue
    finally:
        output.drop()
        await output.close()


def _route(dispatcher: Dispatcher, topics: Topics, topic: str, payload: bytes) -> None:
    if topics.is_say(topic):
        dispatcher.accept(payload)
    elif topic == topics.stop:
        dispatcher.stop_current()
    elif topic == topics.clear:
        dispatcher.clear_queue()


async def _become_ready(
    bridge: MqttBridge, output: AlsaOutput, notifier: Notifier, status: Callable[[], str]
) -> None:
    """READY=1 once the broker is connected and the audio device opens (the cloud voice may
    still be connecting: the status line says so)."""
    await bridge.wait_connected(None)
    warned = False
    while True:
        try:
            await output.open()
            break
        except AudioError as exc:
            if not warned:
                log.error("audio: %s (trying again every %.0f s)", exc, AUDIO_RETRY_S)
                warned = True
            await asyncio.sleep(AUDIO_RETRY_S)
    notifier.ready(status())
    log.info("herald: ready (%s)", status())


def status_line(dispatcher: Dispatcher, voices: list[Voice]) -> str:
    """What a person reads in `systemctl status`: state · each voice · queue length."""
    current = dispatcher.current
    state = "idle" if current is None else f"speaking {current.id} ({current.priority_name})"
    parts = [state, *(voice.describe() for voice in voices), f"queue {dispatcher.queue_length}"]
    return " · ".join(parts)
