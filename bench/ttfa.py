"""Part 1: time to first audio, from the MQTT publish to the first sound written to ALSA.

Each variant is one way of getting an announcement spoken. They run interleaved (each round
takes every variant once, in a random order) against the same fake server and broker, each
announcement alone: the next is published only once the last has finished and its player's
FIFO has been quiet for 30 ms, after a random pause. The clock starts just before the publish
and stops when the FIFO read holding the first sound returns.
"""

from __future__ import annotations

import bisect
import importlib.util
import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.common import (
    FakeProcess,
    FakeStats,
    FifoCapture,
    HeraldProcess,
    Mqtt,
    Workspace,
    log,
    spawn_announcing,
)
from bench.settings import Settings

HEARD_TIMEOUT_S = 10.0

# The phrase cache (herald.voice.cache) is being built elsewhere. Once it is importable, the
# cached row runs: CACHED_PHRASE is spoken once during the warm-up (the cache fills) and then
# every round. If the cache needs a setting, put its TOML here; it is added to the daemon's
# config (e.g. '[voice.cache]\nphrases = ["The front door is open."]\n').
CACHED_PHRASE = "The front door is open."
CACHE_CONFIG = ""
NO_CACHE = "not available: no phrase cache in this build"


def cache_missing() -> str | None:
    """Why the cached row cannot run, or None when this build has a phrase cache."""
    try:
        found = importlib.util.find_spec("herald.voice.cache") is not None
    except ImportError:
        found = False
    return None if found else NO_CACHE


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    payload: Callable[[int, str], dict[str, Any]]  # (round, id) -> what is published
    player: str  # "herald" or "cold"
    unavailable: str | None = None


def _unique_text(variant: str, i: int) -> str:
    # A text of its own for every announcement, so that no cache can answer it.
    return f"Announcement number {i} for the {variant} row."


VARIANTS = (
    Variant(
        "warm",
        "Herald, warm socket",
        lambda i, ident: {"text": _unique_text("warm", i), "id": ident, "chime": False},
        "herald",
    ),
    Variant(
        "cold",
        "cold-connect client (a new socket per announcement)",
        lambda i, ident: {"text": _unique_text("cold", i), "id": ident},
        "cold",
    ),
    Variant(
        "chime",
        "Herald with its chime (time to first sound)",
        lambda i, ident: {"text": _unique_text("chime", i), "id": ident},  # normal: "soft"
        "herald",
    ),
    Variant(
        "cached",
        "Herald, cached phrase",
        lambda i, ident: {"text": CACHED_PHRASE, "id": ident, "chime": False},
        "herald",
    ),
)


@dataclass
class Sample:
    variant: str
    published: float
    heard: float | None
    first_write: float | None = None  # the cold client's own clock of its first ALSA write
    flush: float | None = None  # when the fake received the Flush of this announcement
    problem: str | None = None

    @property
    def ms(self) -> float | None:
        return None if self.heard is None else (self.heard - self.published) * 1000


@dataclass
class TtfaResult:
    variants: list[Variant]
    samples: list[Sample] = field(default_factory=list)
    handshakes: int = 0

    def ms(self, key: str) -> list[float]:
        return [
            s.ms for s in self.samples if s.variant == key and s.ms is not None and not s.problem
        ]

    def to_flush_ms(self, key: str) -> list[float]:
        return [
            (s.flush - s.published) * 1000
            for s in self.samples
            if s.variant == key and s.flush is not None and not s.problem
        ]

    def problems(self, key: str) -> list[str]:
        return [s.problem for s in self.samples if s.variant == key and s.problem]

    def holdback_ms(self) -> list[float]:
        """FIFO arrival minus the cold client's own first write: what the file plugin holds."""
        return [
            (s.heard - s.first_write) * 1000
            for s in self.samples
            if s.variant == "cold" and s.heard is not None and s.first_write is not None
        ]


class ColdClient:
    """bench/baseline.py as a process, on its own FIFO."""

    def __init__(self, ws: Workspace, capture: FifoCapture, fake_url: str) -> None:
        self.topic, self.done_topic = "bench/cold/say", "bench/cold/done"
        self._argv = [
            sys.executable, "-m", "bench.baseline", "--host", ws.broker.host,
            "--port", str(ws.broker.port), "--topic", self.topic,
            "--done-topic", self.done_topic, "--url", fake_url, "--device", capture.device,
        ]  # fmt: skip
        self._env = ws.env()
        self._log = ws.root / "cold-client.log"
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> ColdClient:
        self.process, said = spawn_announcing(self._argv, self._env, self._log, "the cold client")
        if said != "ready":
            raise RuntimeError(f"the cold client said {said!r}, not ready; see {self._log}")
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


class _Players:
    """Publishes one announcement of a variant and times it."""

    def __init__(
        self,
        mqtt: Mqtt,
        herald: HeraldProcess,
        herald_ear: FifoCapture,
        cold: ColdClient,
        cold_ear: FifoCapture,
    ) -> None:
        self.mqtt, self.herald, self.herald_ear = mqtt, herald, herald_ear
        self.cold, self.cold_ear = cold, cold_ear

    def once(self, variant: Variant, i: int, ident: str) -> Sample:
        herald = variant.player == "herald"
        ear = self.herald_ear if herald else self.cold_ear
        topic = self.herald.say_topic if herald else self.cold.topic
        ear.wait_quiet()
        ear.arm()
        published = self.mqtt.publish(topic, variant.payload(i, ident))
        heard = ear.wait_heard(HEARD_TIMEOUT_S)
        sample = Sample(variant.key, published, heard)
        if herald:
            final = self.mqtt.wait_final(ident)
            if final is None:
                sample.problem = "no final event"
            elif final["event"] != "finished" or final.get("degraded"):
                sample.problem = (
                    f"{final['event']} {final.get('voice', '')} {final.get('reason', '')}"
                )
        else:
            done = self.mqtt.wait_for(
                lambda topic, m: topic == self.cold.done_topic and m.get("id") == ident, 30
            )
            if done is None:
                sample.problem = "the cold client did not answer"
            else:
                sample.first_write = done.get("first_write")
                sample.problem = done.get("error")
        if heard is None and sample.problem is None:
            sample.problem = "no sound heard"
        return sample


def run(ws: Workspace, settings: Settings, rng: random.Random) -> TtfaResult:
    missing_cache = cache_missing()
    variants = [
        Variant(v.key, v.label, v.payload, v.player, missing_cache) if v.key == "cached" else v
        for v in VARIANTS
    ]
    measured = [v for v in variants if v.unavailable is None]
    result = TtfaResult(variants)
    fake = FakeProcess(ws, "ttfa", settings.first_byte_ms, settings.round_trip_ms).start()
    herald_ear = FifoCapture(ws.root / "herald-ttfa.fifo").start()
    cold_ear = FifoCapture(ws.root / "cold.fifo").start()
    herald = HeraldProcess(
        ws, "ttfa", herald_ear.device, fake.url, extra="" if missing_cache else CACHE_CONFIG
    )
    cold = ColdClient(ws, cold_ear, fake.url)
    mqtt: Mqtt | None = None
    try:
        herald.start()
        herald.wait_log("deepgram: socket #1 open")
        cold.start()
        mqtt = Mqtt(ws.broker, herald.events_topic, cold.done_topic)
        players = _Players(mqtt, herald, herald_ear, cold, cold_ear)
        for w in range(settings.warmup):
            for variant in measured:
                players.once(variant, -1 - w, f"{variant.key}-warmup-{w}")
        log(f"ttfa: {settings.count} rounds of {', '.join(v.key for v in measured)}")
        for i in range(settings.count):
            order = list(measured)
            rng.shuffle(order)
            for variant in order:
                result.samples.append(players.once(variant, i, f"{variant.key}-{i}"))
                time.sleep(rng.uniform(0.05, 0.25))
            if (i + 1) % 50 == 0:
                log(f"ttfa: {i + 1} rounds")
    finally:
        if mqtt is not None:
            mqtt.close()
        cold.stop()
        herald.stop()
        stats = fake.stop()
        herald_ear.stop()
        cold_ear.stop()
    _attach_flushes(result.samples, stats)
    result.handshakes = len(stats.handshakes)
    return result


def _attach_flushes(samples: list[Sample], stats: FakeStats) -> None:
    """Each announcement's Flush: the first the fake received after its publish and before the
    next publish (they are published one at a time). A phrase spoken from the cache has none."""
    flushes = sorted(stats.flushes)
    ordered = sorted(samples, key=lambda s: s.published)
    for sample, following in zip(ordered, [*ordered[1:], None], strict=True):
        until = sample.published + HEARD_TIMEOUT_S if following is None else following.published
        at = bisect.bisect_right(flushes, sample.published)
        if at < len(flushes) and flushes[at] < until:
            sample.flush = flushes[at]
