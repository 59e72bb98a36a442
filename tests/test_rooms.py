"""Rooms in sync, heard: placement through real ALSA into PulseAudio, and daemons with voices
of different speeds starting, and staying, together (the agreement itself: test_sync.py).

The rooms are one PulseAudio null sink of four channels, each a sink of its own (`herald_room:
SINK=roomN`): what every room plays is recorded as one stream, on one clock, so the offset
between two rooms is read off directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from herald.audio.alsa import AlsaOutput
from herald.config import AudioConfig
from tests.conftest import DaemonFactory
from tests.fake_deepgram import FakeDeepgramOptions
from tests.support import (
    RATE,
    ROOMS,
    Broker,
    FakeDeepgramThread,
    MqttProbe,
    PulseServer,
    wait_for,
)

# --- placement through real ALSA ------------------------------------------------------------------


def chirp(seconds: float, amplitude: int = 12000) -> npt.NDArray[np.int16]:
    """A sweep from 300 Hz to 3 kHz: no two moments of it alike, so an offset is unmistakable."""
    t = np.arange(int(seconds * RATE)) / RATE
    phase = 2 * np.pi * (300 * t + (3000 - 300) * t**2 / (2 * seconds))
    return (amplitude * np.sin(phase)).astype(np.int16)


def onset(channel: npt.NDArray[np.int16], threshold: int = 2000) -> int:
    loud = np.flatnonzero(np.abs(channel.astype(np.int32)) > threshold)
    assert len(loud), "nothing was heard in this room"
    return int(loud[0])


def lag_ms(a: npt.NDArray[np.int16], b: npt.NDArray[np.int16], within_ms: int = 40) -> float:
    """How much later `b` has the same sound as `a` (cross-correlation over ±within_ms)."""
    span = RATE * within_ms // 1000
    x, y = a.astype(np.float64), b.astype(np.float64)
    best = max(
        range(-span, span + 1, 4),
        key=lambda shift: float(np.dot(x[span:-span], y[span + shift : len(y) - span + shift])),
    )
    return best * 1000 / RATE


async def place_and_play(
    sink: str, at: float, sound: npt.NDArray[np.int16], hand_over_at: float
) -> float:
    """Play `sound` placed at `at`, handing it to the output at `hand_over_at` (as a voice
    that is ready then would); how much was skipped (ms)."""
    output = AlsaOutput(AudioConfig(device=f"herald_room:SINK={sink}", sample_rate=RATE))
    await output.open()
    try:
        output.place(at)
        await asyncio.sleep(max(hand_over_at - time.monotonic(), 0))
        step = RATE // 50
        for start in range(0, len(sound), step):
            await output.play(sound[start : start + step])
        await output.finish()
        return output.skipped_ms
    finally:
        await output.close()


def recorded(path: Path) -> npt.NDArray[np.int16]:
    frames = np.frombuffer(path.read_bytes(), dtype="<i2")
    return frames[: len(frames) // ROOMS * ROOMS].reshape(-1, ROOMS)


def test_two_outputs_placed_at_one_instant_are_heard_together(
    rooms: PulseServer, tmp_path: Path
) -> None:
    """The kitchen's sound is ready at once, the hall's 250 ms later (a slower voice): both
    are heard at the instant, not 250 ms apart."""
    sound = chirp(0.8)

    async def both() -> tuple[float, float]:
        at = time.monotonic() + 0.7
        return await asyncio.gather(
            place_and_play("room1", at, sound, hand_over_at=time.monotonic()),
            place_and_play("room2", at, sound, hand_over_at=time.monotonic() + 0.25),
        )

    with rooms.record(tmp_path / "rooms.raw", "rooms", ROOMS) as path:
        skipped = asyncio.run(both())
        time.sleep(0.3)
    heard = recorded(path)
    kitchen, hall = heard[:, 0], heard[:, 1]
    apart_ms = (onset(hall) - onset(kitchen)) * 1000 / RATE
    print(f"\nonsets {apart_ms:.2f} ms apart; the sounds {lag_ms(kitchen, hall):.2f} ms apart")
    assert abs(apart_ms) < 10, apart_ms  # unplaced: 250 ms
    assert abs(lag_ms(kitchen, hall)) < 10
    assert max(skipped) < 20  # a frame or two as the delay is measured; more on a busy CPU


def test_a_sound_that_comes_late_joins_in_step_a_little_way_in(
    rooms: PulseServer, tmp_path: Path
) -> None:
    """The hall's sound is ready 300 ms after the instant: it is heard from 300 ms in, in step
    with the kitchen's, rather than from its start 300 ms behind."""
    sound = chirp(1.0)

    async def both() -> tuple[float, float]:
        at = time.monotonic() + 0.4
        return await asyncio.gather(
            place_and_play("room1", at, sound, hand_over_at=time.monotonic()),
            place_and_play("room2", at, sound, hand_over_at=at + 0.3),
        )

    with rooms.record(tmp_path / "rooms.raw", "rooms", ROOMS) as path:
        skipped = asyncio.run(both())
        time.sleep(0.3)
    heard = recorded(path)
    kitchen, hall = heard[:, 0], heard[:, 1]
    joined_ms = (onset(hall) - onset(kitchen)) * 1000 / RATE
    print(f"\nthe hall joined {joined_ms:.1f} ms in; it skipped {skipped[1]:.1f} ms")
    assert 250 < joined_ms < 450, joined_ms
    assert 250 < skipped[1] < 450 and skipped[0] < 20  # (the on-time room: see above)
    both_playing = slice(onset(hall) + RATE // 20, onset(kitchen) + len(sound) - RATE // 20)
    lag = lag_ms(kitchen[both_playing], hall[both_playing])
    print(f"in step to {lag:.2f} ms")
    assert abs(lag) < 10


# --- two daemons ----------------------------------------------------------------------------------


def started_events(probe: MqttProbe, ident: str, rooms: int) -> list[dict[str, Any]]:
    events = probe.events_until(
        lambda got: sum(e["event"] == "started" and e["id"] == ident for e in got) >= rooms,
        timeout=20,
    )
    return [e for e in events if e["event"] == "started" and e["id"] == ident]


@contextlib.contextmanager
def kitchen_and_hall(
    make_daemon: DaemonFactory, broker: Broker, first_bytes_s: tuple[float, float]
) -> Iterator[None]:
    """Two daemons, `kitchen` on room1 and `hall` on room2 (both in the group `downstairs`),
    each with a fake Deepgram of its own answering after these first-byte times, their
    sockets warm; the clock trusted (one machine, one clock)."""
    fakes = [
        FakeDeepgramThread(FakeDeepgramOptions(first_byte_s=s, pace=1.0)) for s in first_bytes_s
    ]
    with fakes[0], fakes[1]:
        for node, fake, sink in (("kitchen", fakes[0], "room1"), ("hall", fakes[1], "room2")):
            daemon = make_daemon(
                broker,
                f'[voice]\nengines = ["deepgram"]\n[voice.deepgram]\nurl = "{fake.server.url}"\n'
                "[sync]\ntrust_clock = true\n",
                device=f"herald_room:SINK={sink}",
                mqtt='groups = ["downstairs"]\n',
                node=node,
            )
            daemon.env["DEEPGRAM_API_KEY"] = "test-key"
            daemon.start()
        wait_for(
            lambda: all(fake.server.connections >= 1 for fake in fakes), 15, "the warm sockets"
        )
        yield


def test_two_rooms_with_voices_of_different_speeds_start_together(
    broker: Broker,
    make_daemon: DaemonFactory,
    rooms: PulseServer,
    tmp_path: Path,
) -> None:
    """A group announcement to the kitchen (a voice that answers in 80 ms) and the hall (300
    ms), chime and all, placed at one agreed instant: the chime starts, and the last word ends,
    at the same moment in both rooms. (Without a chime, unsynced rooms start about 220 ms apart,
    the voices' difference: bench/RESULTS.md part 8.)"""
    with kitchen_and_hall(make_daemon, broker, first_bytes_s=(0.08, 0.30)):
        probe = MqttProbe(broker, "herald/+/events")
        try:
            with rooms.record(tmp_path / "rooms.raw", "rooms", ROOMS) as path:
                say = {"text": "The washing machine has finished.", "id": "washing"}
                probe.publish("herald/group/downstairs/say", json.dumps(say))
                started = started_events(probe, "washing", 2)
                probe.events_until(
                    lambda got: sum(e["event"] == "finished" for e in got) >= 2, timeout=20
                )
                time.sleep(0.3)
        finally:
            probe.close()
    assert all(e["synced"] is True for e in started), started
    assert len({e["sync_at"] for e in started}) == 1, started  # one instant, agreed
    heard = recorded(path)
    kitchen, hall = heard[:, 0], heard[:, 1]
    apart_ms = (onset(hall, 1000) - onset(kitchen, 1000)) * 1000 / RATE
    end_apart_ms = (onset(hall[::-1], 1000) - onset(kitchen[::-1], 1000)) * -1000 / RATE
    print(f"\nthe two rooms started {apart_ms:.2f} ms apart, and ended {end_apart_ms:.2f} ms")
    assert abs(apart_ms) < 15, apart_ms  # the chime
    assert abs(end_apart_ms) < 15, end_apart_ms  # the last word


def sound_starts(channel: npt.NDArray[np.int16], quiet_ms: int = 40) -> list[int]:
    """Where each sound begins after at least `quiet_ms` of silence (sample indices)."""
    loud = np.flatnonzero(np.abs(channel.astype(np.int32)) > 1000)
    if not len(loud):
        return []
    after_gaps = np.flatnonzero(np.diff(loud) > RATE * quiet_ms // 1000) + 1
    starts = loud[np.concatenate((np.zeros(1, dtype=np.intp), after_gaps))]
    return [int(start) for start in starts]


def test_a_preemption_to_every_room_keeps_them_in_step_and_so_does_the_interrupted_one(
    broker: Broker,
    make_daemon: DaemonFactory,
    rooms: PulseServer,
    tmp_path: Path,
) -> None:
    """A long low announcement to both rooms; a critical one (repeated) cuts in on both; then
    the low one is said again from its start. Every sound begins at the same moment in both
    rooms: the critical's alarm, its repeat, and the low one's second start."""
    with kitchen_and_hall(make_daemon, broker, first_bytes_s=(0.05, 0.25)):
        probe = MqttProbe(broker, "herald/+/events")
        try:
            with rooms.record(tmp_path / "rooms.raw", "rooms", ROOMS) as path:
                low = {"text": "The laundry is done and the dryer is empty.", "id": "low"}
                probe.publish("herald/rooms/kitchen,hall/say", json.dumps(low | {"chime": False}))
                events = probe.events_until(
                    lambda got: sum(e["event"] == "started" for e in got) >= 2, timeout=20
                )
                time.sleep(0.8)
                fire = {"text": "Smoke!", "id": "fire", "priority": "critical", "repeat": 2}
                probe.publish("herald/all/say", json.dumps(fire))
                events += probe.events_until(
                    lambda got: (
                        sum(e["event"] == "finished" and e["id"] == "low" for e in got) >= 2
                    ),
                    timeout=30,
                )
                time.sleep(0.3)
        finally:
            probe.close()
    starts = [e for e in events if e["event"] == "started"]
    assert all(e["synced"] for e in starts), starts
    assert [e["id"] for e in starts].count("low") == 4  # each room: before and after the fire
    heard = recorded(path)
    kitchen, hall = sound_starts(heard[:, 0]), sound_starts(heard[:, 1])
    print(f"\nkitchen {[k // 48 for k in kitchen]} ms\nhall    {[h // 48 for h in hall]} ms")
    # The first start of the low one, the alarm, the second "Smoke!", the low one again (the
    # cut itself comes when each room hears of the fire: it is not one of these).
    assert len(kitchen) == len(hall) >= 4, (kitchen, hall)
    for k, h in zip(kitchen, hall, strict=True):
        assert abs(k - h) * 1000 / RATE < 15, (kitchen, hall)
