"""Part 8: rooms in sync: how far apart the rooms start one announcement, and what the lead costs.

Four daemons run on this machine, each with a fake Deepgram of its own (in a process of its
own, streaming in real time) that answers a Flush after a different time, spread over 80 to
300 ms, and each playing through ALSA's PulseAudio plugin into a sink of its own on one
PulseAudio server: `herald_room:SINK=roomN`, channel N-1 of a single null sink, `rooms` (the
tests' rooms server, `tests.support.room_sinks`). The null sink plays in real time, and its
monitor is recorded as one stream of four channels: every room on one clock, so the rooms'
offsets are read off the recording directly, to the sample.

Rooms 1 and 2 (the 80 and the 300 ms voices) are in the group `pair`, all four in `house`.
Announcements with the normal priority's chime (the default) are published to
`herald/group/pair/say` and `herald/group/house/say`, and a few without a chime (`"chime":
false`, as the low priority has by default) to the pair, in turn, one at a time, each once
every room it reached has finished the one before. A first phase runs the daemons with `[sync]`
at its defaults but for `trust_clock = true` (they share one kernel clock, which nothing keeps
to NTP here); a second, fresh daemons with `[sync] enabled = false`: how rooms start today.
With the chime, today's rooms already start within about 10 ms of each other here (the chime
plays at once, and each voice is ready before it ends); without it, each room starts when its
own voice is ready.

Per announcement:
- the onset spread: the latest room's first sample beyond +-64 minus the earliest room's, in
  the one recording (no clock needed); and the same of their last samples (the end spread);
- publish -> first sound: from just before the publish (the benchmark's monotonic clock) to
  the earliest room's onset, the recording put on that clock as in part 2 (`MonitorRecorder`:
  the earliest arrival of `parec`'s reads, plus the sink's configured latency; +-5 ms);
- with sync: whether every room's `started` event says `synced: true` with one `sync_at`, and
  from that agreed instant (wall clock, 1 ms steps) to the earliest onset.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.common import (
    FINAL_EVENTS,
    SOUND_THRESHOLD,
    FakeProcess,
    HeraldProcess,
    Mqtt,
    Workspace,
    log,
)
from bench.preempt import MonitorRecorder, sink_latency_s
from bench.settings import Settings
from herald.config import PrioritiesConfig, SyncConfig
from herald.sync import SETTLE_S
from tests.support import RATE, ROOMS, PulseServer, room_sinks

PART = "rooms"
FIRST_BYTE_MS = (80.0, 300.0, 153.0, 227.0)  # room1..room4's fake voices: 80 to 300 ms
GROUPS = (("pair", 2), ("house", 4))  # a group and the rooms in it: room1.. roomN
TARGET_P95_MS = 5.0  # the target for the onset spread
CHIME = str(PrioritiesConfig().normal.chime)  # what the payloads without `chime` get: "soft"
WARMUP = 1  # announcements of each kind after each start that are not counted (none in smoke)
GAP_S = 0.3  # after every room has finished, before the next publish
FINAL_TIMEOUT_S = 20.0
LEAD_S = 1.0  # the recording is put on the clock with the reads from this long before a publish
BEFORE_S = 0.1  # an announcement's window in the recording starts this long before its publish
JOINED_LATE = re.compile(r"joined ([\d.]+) ms late")  # a placed sound skipped to stay in step
Frames = npt.NDArray[np.int16]


# --- results ------------------------------------------------------------------------------------


@dataclass
class Trial:
    """One announcement to one group; times on the benchmark's monotonic clock."""

    ident: str
    published: float
    ended: float = 0.0  # when the benchmark moved on (every room finished, then GAP_S)
    started: dict[str, dict[str, Any]] = field(default_factory=dict)  # node -> its event
    agreed_at: float | None = None  # the one `sync_at` every room reported (monotonic)
    onset_spread_ms: float | None = None
    end_spread_ms: float | None = None
    latency_ms: float | None = None  # publish -> the earliest room's first sound
    placed_ms: float | None = None  # the agreed instant -> the earliest room's first sound
    onsets_ms: list[float] = field(default_factory=list)  # each room's, after the earliest's
    ends_ms: list[float] = field(default_factory=list)  # each room's last sound, the same
    skipped_ms: dict[int, float] = field(default_factory=dict)  # room -> "joined N ms late"
    problem: str | None = None

    @property
    def agreed(self) -> bool:
        """Every room started it synced, at one instant."""
        return self.agreed_at is not None


MEASURES: dict[str, Callable[[Trial], float | None]] = {
    "onset": lambda t: t.onset_spread_ms,
    "end": lambda t: t.end_spread_ms,
    "latency": lambda t: t.latency_ms,
    "placed": lambda t: t.placed_ms,
}


@dataclass(frozen=True)
class Variant:
    """What is announced: to which group (rooms 1 to `rooms`), with the chime or without."""

    group: str
    rooms: int
    chime: bool  # the normal priority's default chime; False: `"chime": false` in the payload

    @property
    def key(self) -> str:
        return f"{self.group}{'' if self.chime else '-nochime'}"


VARIANTS = (Variant("pair", 2, True), Variant("house", 4, True), Variant("pair", 2, False))


@dataclass
class Series:
    """The announcements of one variant with sync on or off."""

    rooms: int
    sync: bool
    chime: bool = True
    trials: list[Trial] = field(default_factory=list)  # counted
    warmup: list[Trial] = field(default_factory=list)  # after the start, not counted

    def values(self, measure: str, trials: list[Trial] | None = None) -> list[float]:
        chosen = self.trials if trials is None else trials
        get = MEASURES[measure]
        return [v for t in chosen if not t.problem and (v := get(t)) is not None]

    def problems(self) -> list[str]:
        return [t.problem for t in self.trials if t.problem]

    def agreed(self) -> int:
        return sum(1 for t in self.trials if not t.problem and t.agreed)

    def measured(self) -> int:
        return sum(1 for t in self.trials if not t.problem)


@dataclass
class RoomsResult:
    announcements: int  # per group with sync, with the chime
    baseline: int  # per group without sync, with the chime; and per phase, without the chime
    warmup: int
    lead_ms: int = SyncConfig().lead_ms
    settle_ms: float = SETTLE_S * 1000
    first_byte_ms: tuple[float, ...] = FIRST_BYTE_MS
    chime: str = CHIME
    series: list[Series] = field(default_factory=list)
    sink_latency_ms: float = 0.0
    joined_late_ms: list[float] = field(default_factory=list)  # each "joined N ms late" line
    not_taking_part: list[str] = field(default_factory=list)  # their clock warnings
    phase_problems: dict[str, str] = field(default_factory=dict)  # "on"/"off" -> why no figures
    seconds: float = 0.0

    def get(self, rooms: int, sync: bool, chime: bool = True) -> Series | None:
        return next(
            (s for s in self.series if (s.rooms, s.sync, s.chime) == (rooms, sync, chime)), None
        )


# --- the recording ------------------------------------------------------------------------------


class RoomsRecorder(MonitorRecorder):
    """Part 2's recorder on the rooms' sink: ROOMS channels, channel N-1 being room N. Its
    `reads` count int16 samples of every channel (ROOMS to a frame)."""

    def __init__(self, pulse: PulseServer) -> None:
        super().__init__(pulse, source="rooms.monitor", channels=ROOMS)

    def frames(self) -> Frames:
        """The recording, one row per frame, one column per room."""
        samples = np.frombuffer(b"".join(self._chunks), dtype="<i2")
        return samples[: samples.size // ROOMS * ROOMS].reshape(-1, ROOMS)

    def time_of_frame_zero(self, start: float, end: float) -> float:
        """As `time_of_sample_zero`, in frames of ROOMS samples."""
        return min(t - k / ROOMS / RATE for t, k in self.reads if start <= t <= end)


# --- the part -----------------------------------------------------------------------------------


def _daemon(ws: Workspace, phase: str, room: int, fake: FakeProcess, sync: bool) -> HeraldProcess:
    """Room `room` (1..ROOMS): the benchmark's daemon config, this room's sink and fake, its
    groups, and `[sync]` on (trusting the one clock) or off."""
    herald = HeraldProcess(
        ws,
        f"rooms-{phase}-{room}",
        f"herald_room:SINK=room{room}",
        fake.url,
        extra=f"[sync]\nenabled = {'true' if sync else 'false'}\ntrust_clock = true\n",
    )
    groups = ", ".join(f'"{group}"' for group, rooms in GROUPS if room <= rooms)
    text = herald.config_path.read_text()
    marker = "[voice]\n"
    assert text.count(marker) == 1, text
    herald.config_path.write_text(text.replace(marker, f"groups = [{groups}]\n{marker}"))
    return herald


def _announce(
    mqtt: Mqtt, variant: Variant, nodes: list[str], ident: str, text: str, sync: bool
) -> Trial:
    """Publish one announcement to the variant's group; until every room in it has ended it."""
    started: dict[str, dict[str, Any]] = {}
    finals: dict[str, dict[str, Any]] = {}

    def note(topic: str, event: dict[str, Any]) -> bool:
        node = topic.split("/")[1] if topic.count("/") >= 2 else ""
        if event.get("id") != ident or node not in nodes:
            return False
        if event.get("event") == "started":
            started[node] = event
        elif event.get("event") in FINAL_EVENTS:
            finals[node] = event
        return len(finals) == len(nodes)

    payload: dict[str, Any] = {"id": ident, "text": text}
    if not variant.chime:
        payload["chime"] = False
    trial = Trial(ident, mqtt.publish(f"herald/group/{variant.group}/say", payload))
    mqtt.wait_for(note, FINAL_TIMEOUT_S)
    offset = time.time() - time.monotonic()
    trial.started = started
    unfinished = [n for n in nodes if finals.get(n, {}).get("event") != "finished"]
    degraded = [n for n in nodes if finals.get(n, {}).get("degraded")]
    if unfinished:
        trial.problem = f"not finished in {', '.join(unfinished)}: {finals}"
    elif degraded:
        trial.problem = f"spoken by the fallback voice in {', '.join(degraded)}"
    elif len(started) != len(nodes):
        trial.problem = f"{len(started)} started events for {len(nodes)} rooms"
    instants = {e.get("sync_at") for e in started.values()}
    synced = [e.get("synced") is True for e in started.values()]
    if sync and started and all(synced) and len(instants) == 1:
        (at,) = instants
        if isinstance(at, int | float):
            trial.agreed_at = float(at) - offset
    time.sleep(GAP_S)
    trial.ended = time.monotonic()
    return trial


def _analyse(series: list[Series], recorder: RoomsRecorder, ahead_s: float) -> None:
    """Each announcement's onsets and ends in the recording, room by room."""
    x = recorder.frames()
    for s in series:
        for trial in [*s.warmup, *s.trials]:
            if trial.problem or not trial.ended:
                continue
            try:
                zero = recorder.time_of_frame_zero(trial.published - LEAD_S, trial.ended)
            except ValueError:  # no read in the window
                trial.problem = "not in the recording"
                continue
            zero += ahead_s
            start = max(round((trial.published - BEFORE_S - zero) * RATE), 0)
            end = min(round((trial.ended - zero) * RATE), len(x))
            loud = np.abs(x[start:end, : s.rooms].astype(np.int32)) > SOUND_THRESHOLD
            firsts, lasts = [], []
            for room in range(s.rooms):
                heard = np.flatnonzero(loud[:, room])
                if not heard.size:
                    trial.problem = f"nothing heard in room {room + 1}"
                    break
                firsts.append(int(heard[0]))
                lasts.append(int(heard[-1]))
            if trial.problem:
                continue
            trial.onsets_ms = [(f - min(firsts)) * 1000 / RATE for f in firsts]
            trial.ends_ms = [(last - min(lasts)) * 1000 / RATE for last in lasts]
            trial.onset_spread_ms = max(trial.onsets_ms)
            trial.end_spread_ms = max(trial.ends_ms)
            first_sound = zero + (start + min(firsts)) / RATE
            trial.latency_ms = (first_sound - trial.published) * 1000
            if trial.agreed_at is not None:
                trial.placed_ms = (first_sound - trial.agreed_at) * 1000


def _phase(
    ws: Workspace,
    pulse: PulseServer,
    fakes: list[FakeProcess],
    result: RoomsResult,
    sync: bool,
    count: int,
    keep_recording: bool = False,
) -> None:
    """Fresh daemons with sync on or off; `count` announcements to each group with the chime
    and `result.baseline` to the pair without (after the warm-up), in turn; then their sound
    found in the recording."""
    phase = "on" if sync else "off"
    daemons = [_daemon(ws, phase, n + 1, fakes[n], sync) for n in range(ROOMS)]
    series = {v: Series(v.rooms, sync, v.chime) for v in VARIANTS}
    counts = {v: count if v.chime else result.baseline for v in VARIANTS}
    result.series += series.values()
    mqtt = Mqtt(ws.broker, "herald/+/events")
    recorder = RoomsRecorder(pulse)
    try:
        for herald in daemons:
            herald.start(wait_until=None)
        for herald in daemons:
            herald.wait_log("herald: ready")
            herald.wait_log("deepgram: socket #1 open")
        recorder.start()
        result.sink_latency_ms = sink_latency_s(pulse) * 1000
        shown = ", ".join(f"{v.key} {result.warmup} + {n}" for v, n in counts.items())
        log(f"rooms: sync {phase}: {shown}")
        for k in range(result.warmup + max(counts.values())):
            for variant in VARIANTS:
                if k >= result.warmup + counts[variant]:
                    continue
                ident = f"{phase}-{variant.key}-{k}"
                text = f"Dinner, {variant.key} {k}."
                nodes = [herald.node_id for herald in daemons[: variant.rooms]]
                trial = _announce(mqtt, variant, nodes, ident, text, sync)
                s = series[variant]
                (s.warmup if k < result.warmup else s.trials).append(trial)
        time.sleep(0.3)  # the last sound reaches the recording
    finally:
        recorder.stop()
        mqtt.close()
        stopping = [threading.Thread(target=herald.stop) for herald in daemons]
        for thread in stopping:
            thread.start()
        for thread in stopping:
            thread.join()
        trials = [t for s in series.values() for t in [*s.warmup, *s.trials]]
        for room, herald in enumerate(daemons, 1):
            for at, line in list(herald.log_lines):
                if found := JOINED_LATE.search(line):
                    result.joined_late_ms.append(float(found[1]))
                    for trial in trials:
                        if trial.published <= at <= (trial.ended or at):
                            trial.skipped_ms[room] = float(found[1])
            result.not_taking_part += herald.lines("rooms in sync: not taking part")
            name = herald.config_path.stem
            (ws.root / f"{name}.log").write_text("\n".join([*herald.lines(), ""]))
    _analyse(list(series.values()), recorder, result.sink_latency_ms / 1000)
    _keep(ws, phase, list(series.values()), recorder, keep_recording)


def _keep(
    ws: Workspace, phase: str, series: list[Series], recorder: RoomsRecorder, recording: bool
) -> None:
    """Every announcement's figures in the workspace (kept with --keep-workdir), and with it
    the recording itself (ROOMS channels of s16le at RATE)."""
    trials = [
        {"rooms": s.rooms, "chime": s.chime, "counted": counted, **asdict(trial)}
        for s in series
        for counted, chosen in ((False, s.warmup), (True, s.trials))
        for trial in chosen
    ]
    (ws.root / f"rooms-{phase}.json").write_text(json.dumps(trials, indent=1))
    if recording:
        (ws.root / f"rooms-{phase}.raw").write_bytes(recorder.frames().tobytes())


def run(ws: Workspace, settings: Settings, rng: random.Random) -> RoomsResult:
    began = time.monotonic()
    result = RoomsResult(
        announcements=settings.rooms_announcements,
        baseline=settings.rooms_baseline,
        warmup=0 if settings.smoke else WARMUP,
    )
    pulse = PulseServer(ws.config_home, name="pulse-rooms", sinks=room_sinks())
    fakes = [
        FakeProcess(ws, f"rooms-{n + 1}", first_byte, settings.round_trip_ms, pace=1.0)
        for n, first_byte in enumerate(FIRST_BYTE_MS)
    ]
    try:
        pulse.start()
        for fake in fakes:
            fake.start()
        for sync, count in ((True, result.announcements), (False, result.baseline)):
            try:
                _phase(ws, pulse, fakes, result, sync, count, settings.keep_workdir)
            except Exception as exc:
                phase = "on" if sync else "off"
                log(f"rooms: sync {phase}: {type(exc).__name__}: {exc}")
                result.phase_problems[phase] = f"{type(exc).__name__}: {exc}"
    finally:
        for fake in fakes:
            if fake.process is not None:
                fake.stop()
        pulse.stop()
    result.seconds = time.monotonic() - began
    return result
