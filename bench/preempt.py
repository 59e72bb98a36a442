"""Part 2: preemption through a real-time output.

A `low` announcement plays on `herald_paced`, ALSA's PulseAudio plugin into a null sink, which
consumes audio in real time like a sound card; the fake streams at real-time pace. After a
random 0.6-1.4 s of it, a `critical` one is published (with its default chime, `alarm`).

Measured two ways:
- outside: `parec` records the sink's monitor; a thread notes when each read returned, which
  ties the recording to the benchmark's clock (the earliest-arrival fit of the samples around
  each trial). The low voice and the critical voice are tones of known pitch and the alarm
  starts with a 960 Hz note; their levels are followed with a 12 ms Hann window on a 1 ms grid.
  The low one has stopped when its level falls below half its level before the publish (that
  is the middle of Herald's 8 ms fade); a sound starts when its level first reaches half its
  peak.
- inside: the daemon's own log line per preemption, "audio: silent X ms after the drop was
  asked for; next sound Y ms later", timed from the moment the daemon decided to preempt.
"""

from __future__ import annotations

import random
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from bench.common import FakeProcess, HeraldProcess, Mqtt, Workspace, log
from bench.settings import Settings
from tests.fake_deepgram import tone_hz
from tests.support import RATE, PulseServer

# Each trial speaks texts of its own (so no phrase cache answers them), picked so that their
# tones stay in these bands: at least 180 Hz from each other and from the alarm's 770/960 Hz.
LOW = "The washing machine has finished; the laundry can be hung out to dry whenever you like"
LOW_BAND = (320.0, 360.0)
CRITICAL = "Smoke in the office"
CRITICAL_BAND = (540.0, 580.0)
ALARM_FIRST_HZ = 960.0
WINDOW = int(0.012 * RATE)  # Hann window of the level meters
STEP = RATE // 1000  # 1 ms grid


def sink_latency_s(pulse: PulseServer) -> float:
    """The null sink's configured latency: how far ahead of its clock it renders (pactl)."""
    listing = subprocess.run(
        ["pactl", "--server", pulse.server, "list", "sinks"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.search(r"Latency: \d+ usec, configured (\d+) usec", listing)
    if found is None:
        raise RuntimeError(f"no sink latency in: {listing}")
    return int(found[1]) / 1e6


def text_in_band(base: str, trial: int, band: tuple[float, float]) -> str:
    """`base` with a suffix naming the trial, whose fake tone lies in `band`."""
    for attempt in range(100_000):
        text = f"{base}, trial {trial}.{attempt}!"
        if band[0] <= tone_hz(text) <= band[1]:
            return text
    raise AssertionError("unreachable: one text in about 15 falls in a 40 Hz band")


class MonitorRecorder:
    """parec on the null sink's monitor; each read's arrival time and sample count kept."""

    def __init__(
        self, pulse: PulseServer, source: str = "herald_sink.monitor", channels: int = 1
    ) -> None:
        """`channels` above 1: the source's channels as aux0, aux1, ... in that order."""
        self._pulse = pulse
        self._source, self._channels = source, channels
        self._chunks: list[bytes] = []
        self.reads: list[
            tuple[float, int]
        ] = []  # (monotonic time the read returned, samples so far)
        self._process: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> MonitorRecorder:
        layout = ",".join(f"aux{n}" for n in range(self._channels))
        channel_map = [f"--channel-map={layout}"] if self._channels > 1 else []
        self._process = subprocess.Popen(
            ["parec", "--server", self._pulse.server, "-d", self._source, "--raw",
             "--format=s16le", f"--rate={RATE}", f"--channels={self._channels}",
             *channel_map, "--latency-msec=10"],
            stdout=subprocess.PIPE, bufsize=0,
        )  # fmt: skip
        self._thread = threading.Thread(target=self._read, name="monitor", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self.reads and time.monotonic() < deadline:  # parec takes a moment to record
            time.sleep(0.05)
        if not self.reads:
            raise RuntimeError("parec recorded nothing")
        time.sleep(0.5)
        return self

    def _read(self) -> None:
        assert self._process is not None
        assert self._process.stdout is not None
        total, carry = 0, b""
        while data := self._process.stdout.read(4096):
            now = time.monotonic()
            data, carry = carry + data, b""
            if len(data) % 2:
                data, carry = data[:-1], data[-1:]
            self._chunks.append(data)
            total += len(data) // 2
            self.reads.append((now, total))

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(5)
        if self._thread is not None:
            self._thread.join(5)

    def samples(self) -> npt.NDArray[np.float64]:
        return np.frombuffer(b"".join(self._chunks), dtype="<i2").astype(np.float64)

    def time_of_sample_zero(self, start: float, end: float) -> float:
        """The clock time of sample 0, fitted on the reads that returned between `start` and
        `end`: a read returns no earlier than its last sample reached the monitor, so the
        earliest is the best estimate."""
        return min(t - k / RATE for t, k in self.reads if start <= t <= end)


def level(x: npt.NDArray[np.float64], hz: float) -> npt.NDArray[np.float64]:
    """The amplitude of the `hz` component on a 1 ms grid (entry j: centred on sample j*STEP)."""
    n = np.arange(x.size)
    mixed = x * np.exp(-2j * np.pi * hz * n / RATE)
    padded = np.concatenate((np.zeros(WINDOW // 2), mixed, np.zeros(WINDOW)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, WINDOW)[: x.size : STEP]
    hann = np.hanning(WINDOW)
    amplitude: npt.NDArray[np.float64] = 2 * np.abs(windows @ hann) / hann.sum()
    return amplitude


@dataclass
class Trial:
    published: float
    low_hz: float = 0.0
    critical_hz: float = 0.0
    sent: bool = True  # the critical one was published
    low_stopped_ms: float | None = None  # publish -> the low voice below half its level
    first_sound_ms: float | None = None  # publish -> the critical's first sound (its chime)
    voice_ms: float | None = None  # publish -> the critical's voice
    silent_ms: float | None = None  # the daemon's: drop asked -> silent
    next_ms: float | None = None  # the daemon's: silent -> next sound written
    rewound_ms: float | None = None  # how much more the monitor carried than the clock allows
    problem: str | None = None


@dataclass
class PreemptResult:
    trials: list[Trial] = field(default_factory=list)
    sink_latency_ms: float = 0.0

    def values(self, name: str) -> list[float]:
        return [v for t in self.trials if not t.problem and (v := getattr(t, name)) is not None]

    def problems(self) -> list[str]:
        return [t.problem for t in self.trials if t.problem]


def run(ws: Workspace, settings: Settings, rng: random.Random) -> PreemptResult:
    result = PreemptResult()
    pulse = PulseServer(ws.config_home)
    pulse.start()
    fake = FakeProcess(ws, "preempt", settings.first_byte_ms, settings.round_trip_ms, pace=1.0)
    fake.start()
    herald = HeraldProcess(ws, "preempt", "herald_paced", fake.url)
    recorder = MonitorRecorder(pulse)
    mqtt: Mqtt | None = None
    try:
        herald.start()
        herald.wait_log("deepgram: socket #1 open")
        mqtt = Mqtt(ws.broker, herald.events_topic)
        recorder.start()
        result.sink_latency_ms = sink_latency_s(pulse) * 1000
        log(f"preempt: {settings.preempt_trials} trials")
        for k in range(settings.preempt_trials):
            result.trials.append(_trial(mqtt, herald, k, rng))
            time.sleep(rng.uniform(0.2, 0.4))
        time.sleep(1.5)  # the last trial's sound reaches the recording
    finally:
        recorder.stop()
        if mqtt is not None:
            mqtt.close()
        herald.stop()
        fake.stop()
        pulse.stop()
    _analyse(result, recorder, result.sink_latency_ms / 1000)
    _attach_log(result, herald.lines("audio: silent"))
    return result


def _trial(mqtt: Mqtt, herald: HeraldProcess, k: int, rng: random.Random) -> Trial:
    low, fire = f"low-{k}", f"fire-{k}"
    low_text, fire_text = text_in_band(LOW, k, LOW_BAND), text_in_band(CRITICAL, k, CRITICAL_BAND)
    low_payload = {"text": low_text, "id": low, "priority": "low", "on_preempt": "drop"}
    mqtt.publish(herald.say_topic, low_payload)
    started = mqtt.wait_for(lambda _, e: e.get("id") == low and e.get("event") == "started", 10)
    if started is None:
        return Trial(time.monotonic(), sent=False, problem="the low one did not start")
    time.sleep(rng.uniform(0.6, 1.4))
    critical = {"text": fire_text, "id": fire, "priority": "critical"}
    trial = Trial(mqtt.publish(herald.say_topic, critical), tone_hz(low_text), tone_hz(fire_text))
    final = mqtt.wait_final(fire, 30)
    if final is None or final["event"] != "finished" or final.get("degraded"):
        trial.problem = f"the critical one did not finish cleanly: {final}"
    return trial


def _analyse(result: PreemptResult, recorder: MonitorRecorder, ahead_s: float) -> None:
    """Find each trial's moments in the recording, on the null sink's clock."""
    x = recorder.samples()
    for trial in result.trials:
        if trial.problem:
            continue
        # The null sink renders `ahead_s` ahead of its clock, and its monitor delivers what it
        # renders: a sample plays that much after its earliest arrival. A drop rewinds the sink,
        # and could leave the monitor with more samples than the clock allows: the recording is
        # timed with one fit before the publish and another once the switch is over.
        window = (trial.published - 1.5, trial.published)
        before_zero = recorder.time_of_sample_zero(*window) + ahead_s
        window = (trial.published + 0.3, trial.published + 2.5)
        after_zero = recorder.time_of_sample_zero(*window) + ahead_s
        start = round((trial.published - 0.4 - before_zero) * RATE)
        end = min(round((trial.published + 3.0 - before_zero) * RATE), x.size)
        if start < 0 or end - start < 1.5 * RATE:
            trial.problem = "not in the recording"
            continue
        segment = x[start:end]

        def ms_after_publish(j: int, zero: float, start: int = start, t: Trial = trial) -> float:
            return (zero + (start + j * STEP) / RATE - t.published) * 1000

        publish_j = round((trial.published - before_zero) * RATE - start) // STEP
        low_level = level(segment, trial.low_hz)
        before = float(np.median(low_level[publish_j - 300 : publish_j - 10]))
        if before < 1000:
            trial.problem = "the low one was not playing when the critical one was published"
            continue
        chime = _onset(level(segment, ALARM_FIRST_HZ), publish_j)
        voice = _onset(level(segment, trial.critical_hz), publish_j)
        onsets = [j for j in (chime, voice) if j is not None]
        if voice is None or not onsets:
            trial.problem = "the critical one was not heard"
            continue
        # The low one cannot come back before the critical voice (the next trial's low can).
        loud = np.flatnonzero(low_level[publish_j:voice] >= before / 2)
        stop_j = publish_j + (int(loud[-1]) + 1 if loud.size else 0)
        trial.low_stopped_ms = ms_after_publish(stop_j, before_zero)
        trial.first_sound_ms = ms_after_publish(min(onsets), after_zero)
        trial.voice_ms = ms_after_publish(voice, after_zero)
        trial.rewound_ms = (before_zero - after_zero) * 1000


def _onset(levels: npt.NDArray[np.float64], after: int) -> int | None:
    """The first grid point after `after` where the level reaches half its peak after it."""
    tail = levels[after:]
    if tail.size == 0 or (peak := float(np.max(tail))) < 1000:
        return None
    return after + int(np.argmax(tail >= peak / 2))


def _attach_log(result: PreemptResult, lines: list[str]) -> None:
    """The daemon logs one switch line per preemption, in order."""
    measured = [t for t in result.trials if t.sent]
    pattern = re.compile(r"silent ([\d.]+) ms after the drop was asked for; next sound ([\d.]+) ms")
    found = [m for line in lines if (m := pattern.search(line))]
    if len(found) != len(measured):
        for trial in measured:
            trial.problem = trial.problem or (
                f"{len(found)} switch lines in the daemon's log for {len(measured)} trials"
            )
        return
    for trial, match in zip(measured, found, strict=True):
        trial.silent_ms, trial.next_ms = float(match[1]), float(match[2])
