"""The daemon's life: build the parts from the config, run them, reload on SIGHUP, stop on SIGTERM.

One asyncio event loop owns every decision. SIGTERM and SIGINT end the run cleanly: every
`finally` and context manager runs, audio fades, the voice socket is closed with `Close`,
`offline` is published, and systemd hears STOPPING=1. SIGHUP reloads the configuration: the
parts are rebuilt, but the queue (the Scheduler) is kept, so nothing queued is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import time as clock_time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from herald import __version__
from herald.amp import Amplifier
from herald.announcement import PRIORITY_LEVELS, Announcement, Defaults, parse_priority
from herald.audio import AudioError, AudioSink
from herald.audio.alsa import AlsaOutput
from herald.audio.chimes import ChimeError, load_chime_async
from herald.audio.dsp import Samples, keep_awake_tone
from herald.audio.loudness import Loudness, Target, VoiceLevels
from herald.audio.meter import MeterUnavailable, check_meter
from herald.config import Config, ConfigError, DuckingConfig
from herald.controls import ControlPanel, Controls
from herald.dispatcher import Dispatcher
from herald.duck import Ducker, build_ducker
from herald.journal import QueueJournal
from herald.mqtt.client import MqttBridge, Publish
from herald.mqtt.discovery import NodeInfo, removal_messages
from herald.mqtt.hermes import HermesBridge
from herald.mqtt.topics import Topics
from herald.node import Node, subscriptions
from herald.outbox import Outbox, Publisher
from herald.rooms import Synchroniser
from herald.scheduler import Outcome, QuietHours, Scheduler
from herald.signals import Signals
from herald.speaker import Delivery, Speaker
from herald.status import StatusBoard
from herald.systemd import Notifier, keep_watchdog_fed, watchdog_interval_s
from herald.timing import AUDIO_RETRY_S
from herald.voice import Voice, build_voices, voice_identities, voices_running

if TYPE_CHECKING:
    from herald.esphome.service import EsphomeService

log = logging.getLogger(__name__)


# --- building the daemon ------------------------------------------------------------------------


def chime_resolver(config: Config) -> Callable[[Announcement], Awaitable[Samples | None]]:
    """The chime an announcement asks for, or its priority's default; a broken one is skipped.

    A payload's chime is a built-in or a WAV file in `audio.chimes_dir` (checked again here:
    the journal's announcements were parsed under an older configuration); the priorities'
    chimes come from the config and may be any WAV file. Files are read in a worker thread.
    """
    rate, chimes_dir = config.audio.sample_rate, config.audio.chimes_dir

    async def chime_for(announcement: Announcement) -> Samples | None:
        spec: str | bool = announcement.chime
        within: Path | None = chimes_dir
        if spec is True:
            spec, within = config.priorities.for_level(announcement.level).chime, None
        if isinstance(spec, bool):  # False: no chime
            return None
        try:
            return await load_chime_async(spec, rate, within)
        except ChimeError as exc:  # its message shows the chime escaped, on one line
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
    scheduler = Scheduler(config.queue.max_length, quiet_hours(config))
    scheduler.quiet_min_priority = parse_priority(config.quiet_hours.min_priority)
    return scheduler


def build_loudness(config: Config, learn: bool = True) -> Loudness | None:
    """The loudness every sound is brought to, or None (`audio.loudness_lufs = 0`, or no meter).

    `learn`: keep what the voices measure in `state_dir` (the daemon); the CLI only reads it.
    """
    audio = config.audio
    if audio.loudness_lufs == 0:
        return None
    try:
        check_meter()
    except MeterUnavailable as exc:
        log.error("loudness: %s", exc)
        return None
    levels = VoiceLevels(config.state_dir / "loudness.json", save=learn)
    return Loudness(
        Target(audio.loudness_lufs, audio.true_peak_dbtp), levels, voice_identities(config)
    )


def build_delivery(config: Config, learn: bool = True) -> Delivery:
    audio = config.audio
    return Delivery(
        sample_rate=audio.sample_rate,
        volume=audio.volume,
        critical_min_volume=audio.critical_min_volume,
        wake_preroll_ms=audio.wake_preroll_ms,
        idle_after_s=audio.idle_after_s,
        chime_for=chime_resolver(config),
        loudness=build_loudness(config, learn),
        tail_ms=audio.tail_ms,
        keep_awake=keep_awake_tone(audio.sample_rate, audio.keep_awake_dbfs)
        if audio.keep_awake
        else None,
    )


def announcement_defaults(config: Config) -> Defaults:
    return Defaults(
        {level: config.priorities.for_level(level).ttl_s for level in PRIORITY_LEVELS},
        chimes_dir=config.audio.chimes_dir,
    )


async def run_daemon(config: Config, reload: Callable[[], Config] | None = None) -> int:
    """Run until SIGTERM/SIGINT, reloading on SIGHUP; the exit status for the process."""
    journal = _open_journal(config)
    life = _Lifetime(
        scheduler=build_scheduler(config),
        notifier=Notifier(),
        signals=Signals.install(),
        journal=journal,
        to_replay=journal.load() if journal is not None else [],
    )
    while True:
        life.amplifier = await _amplifier_for(config, life.amplifier)
        life.ducker = await _ducker_for(config, life)
        await _serve(config, life)
        if life.signals.stop.is_set():
            await life.amplifier.close()
            await life.ducker.close()
            if journal is not None:  # only now: the broker's last acknowledgements are in it
                journal.close()
            return 0
        life.signals.reload.clear()
        config = _reloaded(config, reload)
        life.to_report = life.scheduler.reconfigure(
            config.queue.max_length,
            quiet_hours(config),
            parse_priority(config.quiet_hours.min_priority),
        )


async def _amplifier_for(config: Config, current: Amplifier | None) -> Amplifier:
    """The amplifier as configured: the one there was if its settings did not change."""
    if current is not None and current.cfg == config.amp:
        return current
    if current is not None:
        await current.close()  # switched off with the old commands
    return Amplifier(config.amp)


async def _ducker_for(config: Config, life: _Lifetime) -> Ducker:
    """The ducking as configured: the one there was if its settings did not change. At the
    first start, what a crash left lowered is put back first."""
    if life.ducker is not None and life.ducking == config.ducking:
        return life.ducker
    if life.ducker is not None:
        await life.ducker.close()  # the music comes back before the new settings apply
    ducker = build_ducker(config)
    if life.ducker is None:
        await ducker.recover()
    life.ducking = config.ducking
    return ducker


@dataclass
class _Lifetime:
    """What outlives a reload: the queue and its journal, systemd's ear, the signals, and the
    amplifier (a reload that keeps its settings does not switch it off and on)."""

    scheduler: Scheduler
    notifier: Notifier
    signals: Signals
    journal: QueueJournal | None
    to_replay: list[Announcement] = field(default_factory=list)  # from the journal, at start
    to_report: list[Outcome] = field(default_factory=list)  # evictions by a reload
    unsent: list[Publish] = field(default_factory=list)  # what the last bridge had not sent
    amplifier: Amplifier | None = None
    ducker: Ducker | None = None
    ducking: DuckingConfig | None = None  # the settings the ducker was built with


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


@dataclass
class Core:
    """One speaker's parts between the broker and the sound: what `assemble` builds."""

    panel: ControlPanel
    status: StatusBoard
    outbox: Outbox
    speaker: Speaker
    dispatcher: Dispatcher
    node: Node


def assemble(
    config: Config,
    topics: Topics,
    scheduler: Scheduler,
    journal: QueueJournal | None,
    publisher: Publisher,
    voices: list[Voice],
    output: AudioSink,
    delivery: Delivery,
    device_problem: Callable[[], str | None] = lambda: None,
) -> Core:
    """The parts, each built after what it needs, so that none is attached to another later:
    the controls and the status; the outbox, through which every event leaves; the Speaker and
    the Dispatcher, which emit into it; the Node, which routes what arrives, last. (The MQTT
    bridge, `publisher` here, comes before all of them: it publishes at once, and receives only
    once it is served the Node's `route`.) `device_problem`: what the output last found wrong
    with the audio device, for the status."""
    panel = ControlPanel(
        Controls.load(config.state_dir / "controls.json", config.audio.volume),
        config.state_dir / "controls.json",
    )
    scheduler.quiet_mode = panel.controls.quiet
    status = StatusBoard(
        scheduler,
        voices,
        panel.controls,
        lambda payload: publisher.publish(topics.status, payload, retain=True),
        last_path=config.state_dir / "last.json",
        device_problem=device_problem,
    )
    panel.follow(status.changed)
    outbox = Outbox(publisher, topics.events, journal)
    outbox.follow(status.note)
    hermes = HermesBridge(config.hermes.site_id or config.node_id, publisher.publish)
    outbox.follow(hermes.note)
    synchroniser = Synchroniser(
        config.sync,
        config.node_id,
        publish=lambda payload: publisher.publish(topics.sync, payload, qos=0),  # late = lost
    )
    delivery = replace(
        delivery,
        live_volume=panel.live_volume,
        device_problem=status.audio,
        synchroniser=synchroniser,
    )
    speaker = Speaker(voices, output, outbox.emit, delivery)
    dispatcher = Dispatcher(
        speaker,
        scheduler,
        outbox.emit,
        announcement_defaults(config),
        config.mqtt.max_payload_bytes,
        queue_kept=outbox.keeps_queue,
        rate=(config.mqtt.rate_per_minute, config.mqtt.rate_burst),
        on_change=status.changed,
    )
    node = Node(config, topics, dispatcher, panel, status, publisher, hermes, synchroniser)
    return Core(panel, status, outbox, speaker, dispatcher, node)


@dataclass
class _Parts:
    """Everything one configuration builds; rebuilt on each reload."""

    core: Core
    bridge: MqttBridge
    output: AlsaOutput
    voices: list[Voice]
    esphome: EsphomeService | None = None


def _build(config: Config, life: _Lifetime) -> _Parts:
    topics = Topics(config.mqtt.base_topic, config.node_id, tuple(config.mqtt.groups))
    bridge = MqttBridge(
        config.mqtt,
        f"herald-{config.node_id}",
        subscriptions(config, topics),
        availability=topics.availability,
        persistent=True,
        # Acknowledged only once what the messages queued is on disk (one sync per burst).
        before_ack=life.journal.sync if life.journal is not None else None,
    )
    bridge.adopt(life.unsent)
    life.unsent = []
    voices = build_voices(config, phrase_cache=True)
    output = AlsaOutput(config.audio)
    delivery = replace(
        build_delivery(config),
        amplifier=life.amplifier,
        ducker=life.ducker,
        device_retry_s=AUDIO_RETRY_S,  # the daemon waits for a missing device; `say` does not
        media=_media_player(config),
    )
    core = assemble(
        config,
        topics,
        life.scheduler,
        life.journal,
        bridge,
        voices,
        output,
        delivery,
        device_problem=lambda: output.problem,
    )
    esphome = _esphome(config, core.dispatcher, core.panel)
    if esphome is not None:
        core.outbox.follow(esphome.note)
        core.panel.follow(esphome.volume_changed)
    log.info(
        "herald: node '%s', voices %s, audio '%s' at %d Hz",
        config.node_id,
        ", ".join(v.name for v in voices),
        config.audio.device,
        config.audio.sample_rate,
    )
    return _Parts(core, bridge, output, voices, esphome)


async def _serve(config: Config, life: _Lifetime) -> None:
    """One run of the daemon with one configuration, until a stop or reload signal."""
    parts = _build(config, life)
    core = parts.core
    try:
        serving = parts.bridge.serving(core.node.route, on_connected=core.node.on_connected)
        async with voices_running(parts.voices), serving, _serving(parts.esphome):
            async with asyncio.TaskGroup() as tasks:
                await _run_until_signalled(parts, life, tasks)
            # Still connected: the events of what was cut short reach the broker.
            if life.signals.stop.is_set():
                core.dispatcher.abandon()
            else:
                core.dispatcher.suspend()  # a reload: what was speaking goes back to the queue
    finally:
        life.unsent = parts.bridge.leftover()  # a reload's next bridge sends them first
        core.panel.close()
        await core.speaker.aclose()
        parts.output.drop()
        await parts.output.close()


async def _run_until_signalled(parts: _Parts, life: _Lifetime, tasks: asyncio.TaskGroup) -> None:
    core, notifier = parts.core, life.notifier
    core.outbox.send_unreported()  # final events the broker missed when Herald last stopped
    core.dispatcher.report(life.to_report)  # evictions by a reload that shrank the queue
    core.dispatcher.replay(life.to_replay)  # what the journal kept from the last run
    life.to_report, life.to_replay = [], []
    speaking = tasks.create_task(core.dispatcher.speak_queue(), name="speak-queue")
    core.speaker.idle()  # (the keep-awake tone, if asked for, until the first announcement)
    ready = _become_ready(parts.bridge, parts.output, notifier, core.status)
    upkeep = [tasks.create_task(ready, name="readiness")]
    # Fed while the loop turns and the audio thread is not stuck on the device; no watchdog:
    # a stuck device is still logged.
    feeding = keep_watchdog_fed(
        notifier, watchdog_interval_s(), status=core.status.line, hung=parts.output.hung
    )
    upkeep.append(tasks.create_task(feeding, name="watchdog"))
    await life.signals.either()
    parts.bridge.stop_receiving()  # what comes now waits at the broker for the next run
    if life.signals.stop.is_set():
        log.info("herald: stopping")
        notifier.stopping()
        core.dispatcher.close()
    else:  # systemd hears of the reload as it starts (and READY=1 once it is done)
        log.info("herald: reloading the configuration")
        notifier.reloading()
    for task in (speaking, *upkeep):
        task.cancel()


def _media_player(config: Config) -> Callable[[str], AsyncGenerator[Samples, None]] | None:
    """Media from URLs, for the ESPHome API's media player (only then: httpx stays unloaded)."""
    if not config.esphome.enabled:
        return None
    from herald.media import stream_media

    return partial(
        stream_media,
        rate=config.audio.sample_rate,
        max_bytes=int(config.esphome.max_media_mb * 1024 * 1024),
        timeout_s=config.esphome.max_media_s,
    )


def _esphome(config: Config, dispatcher: Dispatcher, panel: ControlPanel) -> EsphomeService | None:
    """The ESPHome API, if enabled (only then are aioesphomeapi and zeroconf loaded: about 10 MB
    and a tenth of a second here, more on a Pi Zero)."""
    if not config.esphome.enabled:
        return None
    from herald.esphome.service import build_esphome

    try:
        return build_esphome(config, dispatcher, panel)
    except ConfigError as exc:  # a bad key: the rest of Herald runs on
        for line in exc.lines:
            log.error("esphome: not served: %s", line)
        return None


@contextlib.asynccontextmanager
async def _serving(esphome: EsphomeService | None) -> AsyncIterator[None]:
    """The ESPHome API for Home Assistant, while the daemon runs (if it is enabled)."""
    if esphome is None:
        yield
        return
    try:
        await esphome.start()
    except OSError as exc:  # the port is taken (another Herald?): the rest of Herald runs on
        log.error("esphome: not served: cannot listen on port %d: %s", esphome.port, exc.strerror)
        await esphome.close()
        yield
        return
    try:
        yield
    finally:
        await esphome.close()


def _open_journal(config: Config) -> QueueJournal | None:
    journal = QueueJournal(config.state_dir / "queue.journal")
    try:
        config.state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.error(
            "journal: cannot use %s (%s): queued announcements will not survive a restart",
            config.state_dir,
            exc.strerror,
        )
        return None
    return journal


async def _become_ready(
    bridge: MqttBridge, output: AlsaOutput, notifier: Notifier, status: StatusBoard
) -> None:
    """READY=1 once the broker is connected and the audio device opens (the cloud voice may
    still be connecting: the status line says so). Until the device opens, announcements wait
    for it (see Speaker) and the status says why. Meanwhile each retry asks systemd for more
    time, so a broker or speaker that comes later does not get Herald killed at the start
    timeout."""
    more_time_s = 3 * AUDIO_RETRY_S
    while not await bridge.wait_connected(AUDIO_RETRY_S):
        waiting = bridge.last_error or f"connecting to {bridge.where}"
        notifier.still_starting(f"waiting for the broker: {waiting}", more_time_s)
    warned = False
    while True:
        try:
            await output.open()
            break
        except AudioError as exc:
            if not warned:
                log.error("audio: %s (trying again every %g s)", exc, AUDIO_RETRY_S)
                warned = True
            status.audio(str(exc))  # Home Assistant's status says so, idle or not
            notifier.still_starting(status.line(), more_time_s)
            await asyncio.sleep(AUDIO_RETRY_S)
    status.audio(None)
    notifier.ready(status.line())
    log.info("herald: ready (%s)", status.line())


async def remove_discovery(config: Config) -> int:
    """Empty retained discovery messages: Home Assistant forgets this speaker's entities."""
    node = NodeInfo(
        config.node_id,
        config.mqtt.base_topic,
        config.node_id,
        __version__,
        config.home_assistant.discovery_prefix,
    )
    topics = Topics(config.mqtt.base_topic, config.node_id)
    bridge = MqttBridge(config.mqtt, f"herald-remove-{config.node_id}", [])
    async with bridge:
        if not await bridge.wait_connected(10):
            log.error("mqtt: %s", bridge.last_error or f"cannot reach broker {bridge.where}")
            return 1
        removals = [*removal_messages(node), (topics.status, ""), (topics.availability, "")]
        for topic, payload in removals:
            bridge.publish(topic, payload, qos=1, retain=True)
    log.info("removed %d retained messages of node '%s'", len(removals), config.node_id)
    return 0
