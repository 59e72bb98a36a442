"""Part 7: ducking (issue 17): how soon the music is down after a publish, and back after the end.

For each backend in turn a fresh daemon runs with `[ducking] enabled = true` (the defaults:
`level_db` -20, `ramp_ms` 200) and that backend alone, espeak-ng alone on `herald_paced`
(ALSA's PulseAudio plugin into the workspace's null sink, which plays in real time). The
players are real: an MPD (null output, software mixer, playing a silent track), a `pacat`
stream of silence on the same PulseAudio server, and a snapserver with one snapclient. Short
announcements (no chime) are published one at a time, each once the music is back from the one
before; the first after each start is not counted (in smoke mode there is none).

Each player's volume is followed as the player reports it, on the benchmark's monotonic clock:
- MPD: `idle mixer` on a connection of the benchmark's; each wake-up is a change, then `status`
  reads the volume it changed to.
- PulseAudio: `pactl subscribe`; each "change" event on the music's sink input is a change,
  then `pactl -f json list sink-inputs` reads its volume (only after an event: no polling).
- Snapcast: the control port's `Client.OnVolumeChanged` notifications, which carry the volume.

A level is reached at the change that set it: the last change before the first reading that
shows it (nothing changes again until the next ramp). *Down*: from just before the publish to
the change that set the ducked volume. *Back*: from the last sound to the change that put the
original volume back; the last sound is the last sample above +-64 in a `parec` recording of
the sink's monitor (timed as in part 2), and, beside it, the `finished` event's `ts`.
"""

from __future__ import annotations

import contextlib
import json
import queue
import random
import re
import socket
import subprocess
import threading
import time
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import SOUND_THRESHOLD, HeraldProcess, Mqtt, Workspace, log
from bench.overload import espeak_config
from bench.preempt import MonitorRecorder, sink_latency_s
from bench.settings import Settings
from herald.config import AudioConfig, DuckingConfig
from herald.duck import RESTORE_AFTER_S
from tests.support import (
    RATE,
    MpdServer,
    PulseServer,
    SnapServer,
    espeak_reference,
    mpd_command,
    snap_set_volume,
    snap_volume,
    wait_for,
)

PART = "ducking"
BACKENDS = ("mpd", "pulse", "snapcast")
LABELS = {"mpd": "MPD", "pulse": "PulseAudio", "snapcast": "Snapcast"}
MPD_VOLUME = 70  # as the tests' MPD
PULSE_VOLUME = 65536  # 100 %: a stream's raw volume
SNAP_VOLUME = 80  # as the tests' snapclient
SNAP_CLIENT = "room1"
TEXT = "Doorbell."  # every announcement's: short, as the part has many to say (espeak-ng's
# audio is not cached, so each is spoken afresh)
WARMUP = 1  # announcements after each start that are not counted (shown apart; none in smoke)
GAP_S = 0.1  # after the music is back, before the next publish
FINAL_TIMEOUT_S = 20.0
BACK_TIMEOUT_S = 5.0
LEAD_S = 1.0  # the recording is put on the clock with the reads from this long before a publish


def espeak_shape(text: str) -> tuple[float, float]:
    """How espeak-ng says `text` with the daemon's defaults: (ms from its first sound to its
    last, ms of silence after its last sound), a sound being a sample beyond +-SOUND_THRESHOLD."""
    audio = np.abs(espeak_reference(text).astype(np.int32))
    loud = np.flatnonzero(audio > SOUND_THRESHOLD)
    if not loud.size:
        return 0.0, len(audio) / RATE * 1000
    first, end = int(loud[0]), int(loud[-1]) + 1
    return (end - first) / RATE * 1000, (len(audio) - end) / RATE * 1000


def ducked_volume(backend: str, before: int, level_db: float) -> int:
    """What the backend sets: MPD and Snapcast scale their 0-100 volume by the amplitude, a
    PulseAudio stream's cubic raw volume by its cube root (`herald.duck.pulse`)."""
    if backend == "pulse":
        return max(round(before * 10 ** (level_db / 60)), 0)
    return round(before * 10 ** (level_db / 20))


# --- results ------------------------------------------------------------------------------------


@dataclass
class Trial:
    """One announcement, every time on the benchmark's monotonic clock (None: not observed)."""

    published: float
    ended: float = 0.0  # when the benchmark moved on
    finished_at: float | None = None  # the `finished` event's ts
    first_sound_at: float | None = None  # the recording of the sink
    last_sound_at: float | None = None
    first_down_at: float | None = None  # the player's first change after the publish
    down_at: float | None = None  # the change that set the ducked volume
    first_up_at: float | None = None  # the first change after that
    back_at: float | None = None  # the change that put the original volume back
    problem: str | None = None


def _ms(end: float | None, start: float | None) -> float | None:
    return None if end is None or start is None else (end - start) * 1000


MEASURES: dict[str, Callable[[Trial], float | None]] = {
    "down_first": lambda t: _ms(t.first_down_at, t.published),
    "down": lambda t: _ms(t.down_at, t.published),
    "finished": lambda t: _ms(t.finished_at, t.last_sound_at),
    "up_first": lambda t: _ms(t.first_up_at, t.last_sound_at),
    "back": lambda t: _ms(t.back_at, t.last_sound_at),
    "back_finished": lambda t: _ms(t.back_at, t.finished_at),
    "lead": lambda t: _ms(t.first_sound_at, t.down_at),  # down this long before the first sound
    "ramp_down": lambda t: _ms(t.down_at, t.first_down_at),  # the ramp, first step to last
    "ramp_up": lambda t: _ms(t.back_at, t.first_up_at),
}


@dataclass
class BackendRun:
    key: str
    how: str = ""  # how the volume was followed
    before: int = 0
    ducked: int = 0
    trials: list[Trial] = field(default_factory=list)  # counted
    warmup: list[Trial] = field(default_factory=list)  # after the start, not counted
    warnings: list[str] = field(default_factory=list)  # the daemon's ducking lines
    problem: str | None = None  # why it has no figures

    @property
    def label(self) -> str:
        return LABELS.get(self.key, self.key)

    def values(self, measure: str, trials: list[Trial] | None = None) -> list[float]:
        chosen = self.trials if trials is None else trials
        get = MEASURES[measure]
        return [v for t in chosen if not t.problem and (v := get(t)) is not None]

    def problems(self) -> list[str]:
        return [t.problem for t in self.trials if t.problem]


@dataclass
class DuckingResult:
    level_db: float
    ramp_ms: int
    tail_ms: int
    restore_after_s: float = RESTORE_AFTER_S
    announcements: int = 0
    backends: list[BackendRun] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    sink_latency_ms: float = 0.0
    warmup: int = WARMUP
    text: str = TEXT
    speech_ms: float | None = None  # espeak-ng's: from its first sound to its last
    espeak_trailing_ms: float | None = None  # espeak-ng's own silence after its last sound
    recording_problem: str | None = None
    seconds: float = 0.0

    def backend(self, key: str) -> BackendRun | None:
        return next((b for b in self.backends if b.key == key), None)


# --- following a player's volume ----------------------------------------------------------------


class VolumeWatch:
    """A player's volume as it reports it: the times it changed, and the values it read."""

    how = ""

    def __init__(self) -> None:
        self.changes: list[float] = []  # monotonic time of each change the player reported
        self.readings: list[tuple[float, int]] = []  # (monotonic time read, volume)
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def value(self) -> int | None:
        return self.readings[-1][1] if self.readings else None

    def wait_reading(self, value: int, since: float, timeout: float) -> float | None:
        """The time of the first reading of `value` after `since` (None after `timeout`)."""
        deadline = time.monotonic() + timeout
        while True:
            for at, seen in list(self.readings):
                if at >= since and seen == value:
                    return at
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.01)

    def prime(self, set_volume: Callable[[int], None], volume: int) -> None:
        """Move the volume away and back, until the watch has seen both (it is listening)."""
        for _ in range(20):
            since = time.monotonic()
            set_volume(volume - 1)
            if self.wait_reading(volume - 1, since, 0.5) is not None:
                break
        else:
            raise RuntimeError(f"{self.how}: no change reported")
        since = time.monotonic()
        set_volume(volume)
        if self.wait_reading(volume, since, 5) is None:
            raise RuntimeError(f"{self.how}: the volume {volume} was not reported")

    def stop(self) -> None:
        self._stopping.set()
        self._close()
        for thread in self._threads:
            thread.join(5)

    def _close(self) -> None:
        raise NotImplementedError


class MpdWatch(VolumeWatch):
    how = "`idle mixer`, then `status`, on a connection of its own"

    def __init__(self, port: int) -> None:
        super().__init__()
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self._sock.settimeout(None)
        self._file = self._sock.makefile("r", encoding="utf-8")
        self._file.readline()  # OK MPD x.y.z
        self.readings.append((time.monotonic(), int(self._command("status")["volume"])))
        self._spawn(self._run, "mpd-watch")

    def _command(self, command: str) -> dict[str, str]:
        self._sock.sendall(command.encode() + b"\n")
        answer: dict[str, str] = {}
        while (line := self._file.readline().strip()) and not line.startswith(("OK", "ACK")):
            key, _, value = line.partition(": ")
            answer[key] = value
        if not line:
            raise ConnectionError("MPD closed the connection")
        return answer

    def _run(self) -> None:
        with contextlib.suppress(OSError, ValueError, ConnectionError):
            while not self._stopping.is_set():
                changed = self._command("idle mixer")
                at = time.monotonic()
                if self._stopping.is_set() or "changed" not in changed:
                    continue
                volume = int(self._command("status")["volume"])
                self.changes.append(at)
                self.readings.append((time.monotonic(), volume))

    def _close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.sendall(b"noidle\n")
        for thread in self._threads:
            thread.join(2)
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


def pulse_stream(pulse: PulseServer, pid: int) -> tuple[int, int]:
    """The sink input that process `pid` plays: (its index, the raw volume of its first
    channel)."""
    out = subprocess.run(
        ["pactl", "--server", pulse.server, "-f", "json", "list", "sink-inputs"],
        capture_output=True, text=True, check=True, timeout=10,
    ).stdout  # fmt: skip
    for stream in json.loads(out):
        if stream.get("properties", {}).get("application.process.id") == str(pid):
            volume = next(iter(stream["volume"].values()))["value"]
            return int(stream["index"]), int(volume)
    raise RuntimeError("the music's stream is not on the server")


class PulseWatch(VolumeWatch):
    how = (
        "`pactl subscribe` (a change event on the music's stream), then "
        "`pactl -f json list sink-inputs` for its volume"
    )

    def __init__(self, pulse: PulseServer, pid: int) -> None:
        super().__init__()
        self._pulse = pulse
        self._pid = pid
        self.index = pulse_stream(pulse, pid)[0]
        self._events = subprocess.Popen(
            ["pactl", "--server", pulse.server, "subscribe"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, bufsize=1,
        )  # fmt: skip
        self._changed: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self.readings.append((time.monotonic(), pulse_stream(pulse, pid)[1]))
        self._spawn(self._listen, "pulse-events")
        self._spawn(self._read, "pulse-volume")

    def set_volume(self, value: int) -> None:
        subprocess.run(
            ["pactl", "--server", self._pulse.server, "set-sink-input-volume", str(self.index),
             str(value), str(value)],
            check=True, timeout=10,
        )  # fmt: skip

    def _listen(self) -> None:
        assert self._events.stdout is not None
        ours = f"Event 'change' on sink-input #{self.index}"
        for line in self._events.stdout:
            if line.strip() == ours:
                self.changes.append(time.monotonic())
                self._changed.put(True)
        self._changed.put(False)

    def _read(self) -> None:
        while self._changed.get():
            while not self._changed.empty():  # one reading for the events so far
                if not self._changed.get():
                    return
            with contextlib.suppress(subprocess.SubprocessError, RuntimeError, ValueError):
                volume = pulse_stream(self._pulse, self._pid)[1]
                self.readings.append((time.monotonic(), volume))

    def _close(self) -> None:
        self._events.terminate()
        self._events.wait(5)


class SnapWatch(VolumeWatch):
    how = "the control port's `Client.OnVolumeChanged` notifications, stamped as they arrive"

    def __init__(self, control: int) -> None:
        super().__init__()
        self._control = control
        self._sock = socket.create_connection(("127.0.0.1", control), timeout=10)
        self._sock.settimeout(None)
        self._file = self._sock.makefile("r", encoding="utf-8")
        volume = snap_volume(f"127.0.0.1:{self._control}", SNAP_CLIENT)
        if volume is None:
            raise RuntimeError("the snapclient is not connected")
        self.readings.append((time.monotonic(), volume))
        self._spawn(self._run, "snap-watch")

    def _run(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            for line in self._file:
                at = time.monotonic()
                message = json.loads(line)
                params = message.get("params") or {}
                if message.get("method") == "Client.OnVolumeChanged" and (
                    params.get("id") == SNAP_CLIENT
                ):
                    self.changes.append(at)
                    self.readings.append((at, int(params["volume"]["percent"])))

    def _close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


# --- the players --------------------------------------------------------------------------------


@dataclass
class Player:
    watch: VolumeWatch
    config: str  # the daemon's [ducking] section for it
    before: int  # the volume it plays at


def _stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def _version(argv: list[str]) -> str:
    """The first version number the program prints about itself."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "not found"
    found = re.search(r"\d+\.\d+(\.\d+)?", done.stdout + done.stderr)
    return found[0] if found else "?"


@contextlib.contextmanager
def mpd_player(root: Path) -> Iterator[Player]:
    """A real MPD on loopback (null output, software mixer) playing a minute of silence on
    repeat, at volume 70."""
    server = MpdServer(root)
    with wave.open(str(root / "music" / "silence.wav"), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(np.zeros(8000 * 60, dtype="<i2").tobytes())
    watch: MpdWatch | None = None
    try:
        server.start()
        port = server.port
        mpd_command(port, "update")
        wait_for(lambda: "silence.wav" in str(mpd_command(port, "listall")), 10, "mpd's update")
        for command in ("add silence.wav", "repeat 1", "play", f"setvol {MPD_VOLUME}"):
            mpd_command(port, command)
        wait_for(lambda: mpd_command(port, "status")["state"] == "play", 10, "mpd to play")
        watch = MpdWatch(port)

        def set_volume(value: int) -> None:
            mpd_command(port, f"setvol {value}")

        watch.prime(set_volume, MPD_VOLUME)
        yield Player(watch, f'mpd = "{server.address}"\n', MPD_VOLUME)
    finally:
        if watch is not None:
            watch.stop()
        server.stop()


@contextlib.contextmanager
def pulse_player(pulse: PulseServer) -> Iterator[Player]:
    """A music player's stream (silence, at 100 %) on the server Herald plays to."""
    process = subprocess.Popen(
        ["pacat", "--server", pulse.server, "--playback", "--raw", "--format=s16le",
         "--rate=48000", "--channels=2", "--property=application.name=music", "/dev/zero"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    watch: PulseWatch | None = None
    try:

        def streaming() -> bool:
            with contextlib.suppress(RuntimeError, subprocess.SubprocessError):
                return bool(pulse_stream(pulse, process.pid))
            return False

        wait_for(streaming, 10, "the music stream")
        watch = PulseWatch(pulse, process.pid)
        watch.prime(watch.set_volume, PULSE_VOLUME)
        yield Player(watch, f'pulse = true\npulse_server = "{pulse.server}"\n', PULSE_VOLUME)
    finally:
        if watch is not None:
            watch.stop()
        _stop(process)


@contextlib.contextmanager
def snapcast_player(root: Path) -> Iterator[Player]:
    """A real snapserver (a pipe source, control on loopback) with one snapclient, playing
    into nothing, at volume 80."""
    server = SnapServer(root, SNAP_CLIENT)
    watch: SnapWatch | None = None
    try:
        server.start()
        snap_set_volume(server.address, SNAP_VOLUME, SNAP_CLIENT)
        watch = SnapWatch(server.control)
        watch.prime(lambda v: snap_set_volume(server.address, v, SNAP_CLIENT), SNAP_VOLUME)
        config_line = f'snapcast = "{server.address}"\nsnapcast_client = "{SNAP_CLIENT}"\n'
        yield Player(watch, config_line, SNAP_VOLUME)
    finally:
        if watch is not None:
            watch.stop()
        server.stop()


# --- the part -----------------------------------------------------------------------------------


def _announce(mqtt: Mqtt, herald: HeraldProcess, player: Player, ident: str) -> Trial:
    watch = player.watch
    payload = {"id": ident, "text": TEXT, "chime": False}
    trial = Trial(mqtt.publish(herald.say_topic, payload))
    final = mqtt.wait_final(ident, FINAL_TIMEOUT_S)
    offset = time.time() - time.monotonic()
    if final is None or final.get("event") != "finished":
        trial.problem = f"the announcement did not finish: {final}"
    else:
        trial.finished_at = float(final["ts"]) - offset
    if watch.wait_reading(player.before, trial.finished_at or trial.published, BACK_TIMEOUT_S):
        time.sleep(GAP_S)
    else:
        trial.problem = trial.problem or f"the volume did not come back to {player.before}"
    trial.ended = time.monotonic()
    return trial


def _follow(trial: Trial, watch: VolumeWatch, before: int, ducked: int) -> None:
    """Where the ramps of this trial start and end, from what the player reported."""
    changes = [at for at in watch.changes if trial.published <= at <= trial.ended]
    readings = [(at, v) for at, v in watch.readings if trial.published <= at <= trial.ended]
    trial.first_down_at = changes[0] if changes else None
    down = next((at for at, v in readings if v == ducked), None)
    if down is None:
        seen = sorted({v for _, v in readings})
        trial.problem = trial.problem or f"the ducked volume {ducked} was not reported ({seen})"
        return
    trial.down_at = max((at for at in changes if at <= down), default=down)
    trial.first_up_at = next((at for at in changes if at > trial.down_at), None)
    back = next((at for at, v in readings if at > down and v == before), None)
    if back is not None:
        trial.back_at = max((at for at in changes if at <= back), default=back)


def _measure(
    ws: Workspace, key: str, player: Player, run: BackendRun, warmup: int, announcements: int
) -> None:
    name = f"ducking-{key}"
    herald = HeraldProcess(ws, name, "herald_paced", "ws://127.0.0.1:9")
    herald.config_path.write_text(
        espeak_config(ws, herald, name) + "[ducking]\nenabled = true\n" + player.config
    )
    mqtt = Mqtt(ws.broker, herald.events_topic)
    try:
        herald.start()
        for k in range(warmup + announcements):
            trial = _announce(mqtt, herald, player, f"{key}-{k}")
            _follow(trial, player.watch, run.before, run.ducked)
            (run.warmup if k < warmup else run.trials).append(trial)
    finally:
        mqtt.close()
        herald.stop()
        run.warnings = [line for line in herald.lines("ducking:") if "WARNING" in line.upper()]
        with (ws.root / f"herald-{name}.log").open("w") as kept:
            kept.write("\n".join([*herald.lines(), ""]))


def _sounds(result: DuckingResult, recorder: MonitorRecorder, ahead_s: float) -> None:
    """The first and last sound of each trial, from the recording of the sink's monitor."""
    x = recorder.samples()
    for run in result.backends:
        for trial in [*run.warmup, *run.trials]:
            if not trial.ended:
                continue
            window = (trial.published - LEAD_S, trial.ended)
            try:
                zero = recorder.time_of_sample_zero(*window) + ahead_s
            except ValueError:  # no read in the window
                trial.problem = trial.problem or "not in the recording"
                continue
            start = max(round((trial.published - zero) * RATE), 0)
            end = min(round((trial.ended - zero) * RATE), x.size)
            loud = np.flatnonzero(np.abs(x[start:end]) > SOUND_THRESHOLD)
            if not loud.size:
                trial.problem = trial.problem or "no sound in the recording"
                continue
            trial.first_sound_at = zero + (start + int(loud[0])) / RATE
            trial.last_sound_at = zero + (start + int(loud[-1]) + 1) / RATE


def run(ws: Workspace, settings: Settings, rng: random.Random) -> DuckingResult:
    began = time.monotonic()
    root = ws.root / PART
    root.mkdir()
    defaults = DuckingConfig()
    result = DuckingResult(
        defaults.level_db, defaults.ramp_ms, AudioConfig().tail_ms,
        announcements=settings.ducking_announcements,
        warmup=0 if settings.smoke else WARMUP,
    )  # fmt: skip
    result.versions = {
        "MPD": _version(["mpd", "--version"]),
        "snapserver": _version(["snapserver", "--version"]),
    }
    with contextlib.suppress(OSError, subprocess.SubprocessError, ValueError):
        result.speech_ms, result.espeak_trailing_ms = espeak_shape(TEXT)
    pulse = PulseServer(ws.config_home)
    recorder = MonitorRecorder(pulse)
    try:
        pulse.start()
        recorder.start()
        result.sink_latency_ms = sink_latency_s(pulse) * 1000
        players: dict[str, Callable[[], contextlib.AbstractContextManager[Player]]] = {
            "mpd": lambda: mpd_player(root / "mpd"),
            "pulse": lambda: pulse_player(pulse),
            "snapcast": lambda: snapcast_player(root / "snapcast"),
        }
        for key in BACKENDS:
            (root / key).mkdir()
            backend = BackendRun(key)
            result.backends.append(backend)
            log(f"ducking: {LABELS[key]}, {result.warmup} + {result.announcements}")
            try:
                with players[key]() as player:
                    backend.how, backend.before = player.watch.how, player.before
                    backend.ducked = ducked_volume(key, player.before, result.level_db)
                    _measure(ws, key, player, backend, result.warmup, result.announcements)
            except Exception as exc:
                log(f"ducking: {LABELS[key]}: {type(exc).__name__}: {exc}")
                backend.problem = f"{type(exc).__name__}: {exc}"
        time.sleep(0.3)  # the last sound reaches the recording
    finally:
        recorder.stop()
        pulse.stop()
    try:
        _sounds(result, recorder, result.sink_latency_ms / 1000)
    except Exception as exc:
        result.recording_problem = f"{type(exc).__name__}: {exc}"
    result.seconds = time.monotonic() - began
    return result
