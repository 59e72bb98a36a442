"""The benchmark's parameters: the full run's defaults, and the smoke run's."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

PARTS = ("ttfa", "preempt", "rotation", "footprint", "sound", "ducking", "rooms", "esphome")


@dataclass(frozen=True)
class Settings:
    out: Path
    smoke: bool = False
    first_byte_ms: float = 100.0  # the fake's time from Flush to the first audio: the limit
    round_trip_ms: float = 40.0  # one simulated network round trip; a handshake costs three
    count: int = 200  # announcements per time-to-first-audio variant
    warmup: int = 2  # per variant, before counting (not reported)
    preempt_trials: int = 50
    rotation_s: float = 600.0  # how long announcements are sent in the rotation part
    lifetime_s: float = 20.0  # the fake closes a socket at this age (1011 NET-0003)
    max_age_s: float = 15.0  # Herald replaces its socket at this age
    footprint_count: int = 1000  # announcements between the two RSS readings
    idle_s: float = 60.0  # the idle window whose CPU time is measured
    startups: int = 5  # starts timed to READY
    sound_announcements: int = 5  # per voice in part 6 (the first one is levelled by a prior)
    sound_cuts: int = 8  # preemption cuts recorded on the paced device in part 6
    sound_tails: int = 5  # announcements with the default tail_ms, and as many with none
    ducking_announcements: int = 20  # per ducking backend in part 7 (after one not counted)
    rooms_announcements: int = 50  # per group (2 and 4 rooms) with sync in part 8
    rooms_baseline: int = 10  # part 8: per group without sync; and without a chime, each way
    esphome_announcements: int = 30  # part 9, through the ESPHome API (after one not counted)
    seed: int = 1
    parts: tuple[str, ...] = PARTS
    command: str = field(default="python -m bench.run")
    keep_workdir: bool = False

    @property
    def handshake_ms(self) -> float:
        return 3 * self.round_trip_ms


SMOKE = {
    "count": 5,
    "warmup": 1,
    "preempt_trials": 3,
    "rotation_s": 12.0,
    "lifetime_s": 5.0,
    "max_age_s": 3.0,
    "footprint_count": 20,
    "idle_s": 3.0,
    "startups": 1,
    "sound_announcements": 3,
    "sound_cuts": 2,
    "sound_tails": 2,
    "ducking_announcements": 3,
    "rooms_announcements": 3,
    "rooms_baseline": 2,
    "esphome_announcements": 3,
}
