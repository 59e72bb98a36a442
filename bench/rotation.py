"""Part 3: socket rotation under announcements.

The fake closes every socket at a short age (1011 NET-0003), and Herald's `max_age_s` is set
below it, so Herald must replace its socket many times during the part. Announcements come one
at a time at random intervals the whole time. Two things should never happen:
- an announcement waits for a handshake: it is counted when its time to first audio is above
  the first-byte time plus half a handshake AND the fake was in a handshake between its publish
  and its first sound (the fake notes each handshake's start and end);
- the server closes a socket for age: the fake's close_log holds NET-0003.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

from bench.common import FakeProcess, FifoCapture, HeraldProcess, Mqtt, Workspace, log
from bench.settings import Settings

HEARD_TIMEOUT_S = 10.0


@dataclass
class Announcement:
    published: float
    heard: float | None
    problem: str | None = None
    during_handshake: bool = False

    @property
    def ms(self) -> float | None:
        return None if self.heard is None else (self.heard - self.published) * 1000


@dataclass
class RotationResult:
    duration_s: float
    threshold_ms: float
    started: float = 0.0
    announcements: list[Announcement] = field(default_factory=list)
    handshakes: list[tuple[float, float]] = field(default_factory=list)
    connections: int = 0
    closed_for_age: int = 0
    other_server_closes: dict[str, int] = field(default_factory=dict)
    rotations_logged: int = 0

    def ms(self) -> list[float]:
        return [a.ms for a in self.announcements if a.ms is not None and not a.problem]

    @property
    def slow(self) -> int:
        return sum(1 for v in self.ms() if v > self.threshold_ms)

    @property
    def overlapping(self) -> int:
        return sum(1 for a in self.announcements if a.during_handshake)

    @property
    def waited(self) -> int:
        return sum(
            1
            for a in self.announcements
            if a.during_handshake and a.ms is not None and a.ms > self.threshold_ms
        )

    @property
    def problems(self) -> list[str]:
        return [a.problem for a in self.announcements if a.problem]


def run(ws: Workspace, settings: Settings, rng: random.Random) -> RotationResult:
    threshold = settings.first_byte_ms + settings.handshake_ms / 2
    result = RotationResult(settings.rotation_s, threshold)
    fake = FakeProcess(
        ws,
        "rotation",
        settings.first_byte_ms,
        settings.round_trip_ms,
        lifetime_s=settings.lifetime_s,
    ).start()
    ear = FifoCapture(ws.root / "herald-rotation.fifo").start()
    herald = HeraldProcess(ws, "rotation", ear.device, fake.url, max_age_s=settings.max_age_s)
    mqtt: Mqtt | None = None
    try:
        herald.start()
        herald.wait_log("deepgram: socket #1 open")
        mqtt = Mqtt(ws.broker, herald.events_topic)
        log(
            f"rotation: {settings.rotation_s:.0f} s of announcements; sockets live "
            f"{settings.lifetime_s:.0f} s at the fake, max_age_s = {settings.max_age_s:.0f}"
        )
        result.started = time.monotonic()
        deadline = result.started + settings.rotation_s
        i = 0
        while time.monotonic() < deadline:
            result.announcements.append(_once(mqtt, herald, ear, i))
            i += 1
            time.sleep(rng.uniform(0.2, 3.0))
        result.rotations_logged = len(herald.lines("rotated socket"))
    finally:
        if mqtt is not None:
            mqtt.close()
        herald.stop()
        stats = fake.stop()
        ear.stop()
    result.handshakes = stats.handshakes
    result.connections = stats.connections
    for code, reason in stats.close_log:
        if reason == "NET-0003":
            result.closed_for_age += 1
        else:
            name = f"{code} {reason}".strip()
            result.other_server_closes[name] = result.other_server_closes.get(name, 0) + 1
    for a in result.announcements:
        end = a.heard if a.heard is not None else a.published + HEARD_TIMEOUT_S
        a.during_handshake = any(hs < end and he > a.published for hs, he in stats.handshakes)
    return result


def _once(mqtt: Mqtt, herald: HeraldProcess, ear: FifoCapture, i: int) -> Announcement:
    ident = f"rotation-{i}"
    ear.wait_quiet()
    ear.arm()
    published = mqtt.publish(
        herald.say_topic, {"text": f"Rotation check number {i}.", "id": ident, "chime": False}
    )
    announcement = Announcement(published, ear.wait_heard(HEARD_TIMEOUT_S))
    final = mqtt.wait_final(ident)
    if final is None or final["event"] != "finished" or final.get("degraded"):
        announcement.problem = f"not spoken cleanly by the cloud voice: {final}"
    elif announcement.heard is None:
        announcement.problem = "no sound heard"
    return announcement
