"""Ducking with the real programs: a second stream on a PulseAudio server (pacat) and a real
MPD; their volumes as they report them (pactl, MPD's status), sampled while Herald speaks."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import subprocess
import threading
import time
import wave
from collections.abc import AsyncGenerator, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from herald.announcement import NO_DEFAULTS, PRIORITY_LEVELS, Announcement, parse_payload
from herald.audio.alsa import AlsaOutput
from herald.audio.dsp import Samples
from herald.config import AudioConfig, host_and_port
from herald.duck import BACKEND_TIMEOUT_S, WAIT_GRACE_S, Backend, Ducker
from herald.duck.mpd import MpdDucking
from herald.duck.pulse import PulseDucking
from herald.duck.snapcast import SnapcastDucking
from herald.speaker import Delivery, Speaker
from tests.fake_slng import RecordingSink
from tests.support import (
    RATE,
    MpdServer,
    PulseServer,
    SnapServer,
    free_port,
    mpd_command,
    mpd_volume,
    snap_call,
    snap_set_volume,
    snap_volume,
    wait_for,
)
from tests.test_voice_and_speaker import StubVoice

DUCKED = 10 ** (-20 / 60)  # -20 dB in PulseAudio's cubic volume scale


class Tone(StubVoice):
    """Says every text as `seconds` of a tone, at the pace of a sound card."""

    name = "tone"

    def __init__(self, seconds: float = 1.0) -> None:
        t = np.arange(round(seconds * RATE)) / RATE
        self.audio = np.round(np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)

    async def stream(self, text: str) -> AsyncGenerator[Samples, None]:
        for start in range(0, len(self.audio), 960):
            yield self.audio[start : start + 960]
            await asyncio.sleep(0.02)


def announcement(ident: str = "a") -> Announcement:
    payload = json.dumps({"id": ident, "text": "Hi.", "chime": False}).encode()
    return parse_payload(payload, 16384, 0.0, NO_DEFAULTS)


# --- PulseAudio ------------------------------------------------------------------------------


@pytest.fixture
def music(pulse: PulseServer) -> Iterator[subprocess.Popen[bytes]]:
    """A music player's stream on the server Herald plays to (silence, at full volume)."""
    player = subprocess.Popen(
        ["pacat", "--server", pulse.server, "--playback", "--raw", "--format=s16le",
         "--rate=48000", "--channels=2", "--property=application.name=music", "/dev/zero"],
    )  # fmt: skip
    try:
        wait_for(lambda: music_volume(pulse, player) is not None, 10, "the music stream")
        yield player
    finally:
        player.terminate()
        player.wait(5)


def streams(pulse: PulseServer) -> list[dict[str, object]]:
    out = subprocess.run(
        ["pactl", "--server", pulse.server, "-f", "json", "list", "sink-inputs"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    parsed: list[dict[str, object]] = json.loads(out)
    return parsed


def volume_of(stream: dict[str, object]) -> int:
    volume = stream["volume"]
    assert isinstance(volume, dict)
    return int(next(iter(volume.values()))["value"])


def music_volume(pulse: PulseServer, player: subprocess.Popen[bytes]) -> int | None:
    for stream in streams(pulse):
        properties = stream["properties"]
        assert isinstance(properties, dict)
        if properties.get("application.process.id") == str(player.pid):
            return volume_of(stream)
    return None


def set_music_volume(pulse: PulseServer, player: subprocess.Popen[bytes], value: int) -> None:
    for stream in streams(pulse):
        properties = stream["properties"]
        assert isinstance(properties, dict)
        if properties.get("application.process.id") == str(player.pid):
            subprocess.run(
                ["pactl", "--server", pulse.server, "set-sink-input-volume",
                 str(stream["index"]), str(value), str(value)], check=True,
            )  # fmt: skip


class Sampler:
    """Samples a volume every 20 ms in a thread: (time.monotonic(), value)."""

    def __init__(self, read: object) -> None:
        self.seen: list[tuple[float, int | None]] = []
        self._read = read
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.seen.append((time.monotonic(), self._read()))  # type: ignore[operator]
            self._stop.wait(0.02)

    def stop(self) -> list[tuple[float, int | None]]:
        self._stop.set()
        self._thread.join(5)
        return self.seen


class FirstSoundSink(RecordingSink):
    """Notes when the first sound is played and, right then, the music's volume."""

    def __init__(self, music_volume: Callable[[], int | None] = lambda: None) -> None:
        super().__init__(clock=time.monotonic)
        self._music_volume = music_volume
        self.music_at_first: int | None = None

    async def play(self, samples: Samples) -> None:
        if self.first_at is None:
            self.music_at_first = self._music_volume()
        await super().play(samples)


def pulse_ducker(pulse: PulseServer, state: Path | None = None) -> Ducker:
    return Ducker([PulseDucking(pulse.server)], -20.0, 200, state)


def test_the_music_is_down_before_the_first_sound_and_back_after_the_last(
    pulse: PulseServer, music: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    full = music_volume(pulse, music)
    assert full == 65536
    sampler = Sampler(lambda: music_volume(pulse, music))
    sink = FirstSoundSink(lambda: music_volume(pulse, music))
    ended: list[float] = []

    async def scenario() -> None:
        ducker = pulse_ducker(pulse, tmp_path / "ducked.json")
        speaker = Speaker([Tone(0.6)], sink, lambda _: None, Delivery(RATE, ducker=ducker))
        assert await speaker.speak(announcement("one"))
        assert await speaker.speak(announcement("two"))  # back to back: still down
        ended.append(time.monotonic())
        await asyncio.sleep(1.5)
        await ducker.close()

    asyncio.run(scenario())
    seen = sampler.stop()
    assert sink.first_at is not None
    down = round(full * DUCKED)
    assert sink.music_at_first == down  # down, ramp and all, before the first sound
    during = [v for t, v in seen if sink.first_at + 0.05 <= t <= ended[0]]
    after = [v for t, v in seen if t >= ended[0] + 1.2]
    assert during and set(during) == {down}  # down all along, between the two as well
    assert after and set(after) == {full}  # and back exactly
    ups = sum(1 for (_, a), (_, b) in itertools.pairwise(seen) if b and a and b > a)
    assert ups <= max(1, round(0.2 / 0.04)), seen  # one ramp up, no bounce between the two
    assert not (tmp_path / "ducked.json").exists()  # nothing left to put back


def test_herald_own_stream_is_not_lowered(
    pulse: PulseServer, music: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    ours: list[int] = []
    theirs: list[int | None] = []

    async def scenario() -> None:
        output = AlsaOutput(AudioConfig(device="herald_paced", sample_rate=RATE))
        ducker = pulse_ducker(pulse)
        speaker = Speaker([Tone(1.5)], output, lambda _: None, Delivery(RATE, ducker=ducker))
        speaking = asyncio.create_task(speaker.speak(announcement()))
        await asyncio.sleep(1.0)
        for stream in await asyncio.to_thread(streams, pulse):
            properties = stream["properties"]
            assert isinstance(properties, dict)
            if properties.get("application.process.id") == str(os.getpid()):
                ours.append(volume_of(stream))
        theirs.append(await asyncio.to_thread(music_volume, pulse, music))
        assert await speaking
        await output.close()
        await ducker.close()

    asyncio.run(scenario())
    assert ours == [65536]
    assert theirs == [round(65536 * DUCKED)]  # while the other one is down


def test_a_volume_the_user_set_while_ducked_stands(
    pulse: PulseServer, music: subprocess.Popen[bytes]
) -> None:
    async def scenario() -> None:
        ducker = pulse_ducker(pulse)
        speaker = Speaker(
            [Tone(1.0)], RecordingSink(), lambda _: None, Delivery(RATE, ducker=ducker)
        )
        speaking = asyncio.create_task(speaker.speak(announcement()))
        await asyncio.sleep(0.6)
        await asyncio.to_thread(set_music_volume, pulse, music, 30000)  # the user's hand
        assert await speaking
        await ducker.close()

    asyncio.run(scenario())
    assert music_volume(pulse, music) == 30000


def test_what_a_crash_left_lowered_is_put_back_at_the_next_start(
    pulse: PulseServer, music: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    state = tmp_path / "ducked.json"

    async def crashed() -> None:
        await pulse_ducker(pulse, state).duck()  # and then nothing: killed while ducked

    async def next_start() -> None:
        await pulse_ducker(pulse, state).recover()

    asyncio.run(crashed())
    assert music_volume(pulse, music) == round(65536 * DUCKED)
    assert json.loads(state.read_text())["lowered"][0]["backend"] == "pulse"
    asyncio.run(next_start())
    assert music_volume(pulse, music) == 65536
    assert not state.exists()


# --- MPD -----------------------------------------------------------------------------------------


def test_mpd_is_lowered_to_a_tenth_and_put_back(mpd: str) -> None:
    """70 at -20 dB is 7, before the first sound; back to 70 after the last."""
    assert mpd_volume(mpd) == 70
    sampler = Sampler(lambda: mpd_volume(mpd))
    sink = FirstSoundSink(lambda: mpd_volume(mpd))
    ended: list[float] = []

    async def scenario() -> None:
        ducker = Ducker([MpdDucking(*host_and_port(mpd, 6600))], -20.0, 200, None)
        speaker = Speaker([Tone(0.6)], sink, lambda _: None, Delivery(RATE, ducker=ducker))
        assert await speaker.speak(announcement())
        ended.append(time.monotonic())
        await asyncio.sleep(1.2)
        await ducker.close()

    asyncio.run(scenario())
    seen = sampler.stop()
    assert sink.first_at is not None
    assert sink.music_at_first == 7  # down before the first sound
    assert {v for t, v in seen if sink.first_at + 0.05 <= t <= ended[0]} == {7}
    assert mpd_volume(mpd) == 70


async def waits_for_first_sound(ducker: Ducker, count: int, between_s: float = 0) -> list[float]:
    """Speak `count` announcements with the ducker; how long each waited for its first sound."""
    waits = []
    for n in range(count):
        sink = FirstSoundSink()
        speaker = Speaker([Tone(0.2)], sink, lambda _: None, Delivery(RATE, ducker=ducker))
        asked = time.monotonic()
        assert await speaker.speak(announcement(f"a{n}"))
        assert sink.first_at is not None
        waits.append(sink.first_at - asked)
        await asyncio.sleep(between_s)
    return waits


def test_an_unreachable_player_is_said_once_and_never_holds_up_speech(
    caplog: pytest.LogCaptureFixture,
) -> None:
    address = f"127.0.0.1:{free_port()}"  # nobody listens

    async def scenario() -> list[float]:
        ducker = Ducker([MpdDucking(*host_and_port(address, 6600))], -20.0, 200, None)
        waits = await waits_for_first_sound(ducker, 3, between_s=0.6)  # restored between
        await ducker.close()
        return waits

    waits = asyncio.run(scenario())
    assert max(waits) < 0.2 + 1.0  # at most the ramp and the grace, once; then not at all
    lines = [r.getMessage() for r in caplog.records if r.name == "herald.duck"]
    assert len(lines) == 1 and "mpd cannot lower" in lines[0] and address in lines[0], lines


# --- Snapcast -----------------------------------------------------------------------------------


@pytest.fixture
def snapcast(tmp_path: Path) -> Iterator[str]:
    """A real snapserver with one snapclient, "room1", at volume 80; the control's address."""
    server = SnapServer(tmp_path)
    try:
        server.start()
        snap_set_volume(server.address, 80)
        yield server.address
    finally:
        server.stop()


def test_this_rooms_snapcast_client_is_lowered_and_put_back(snapcast: str) -> None:
    """80 at -20 dB is 8, before the first sound; back to 80 after the last."""
    sink = FirstSoundSink(lambda: snap_volume(snapcast))
    ended: list[float] = []

    async def scenario() -> None:
        ducker = Ducker(
            [SnapcastDucking(*host_and_port(snapcast, 1705), "room1")], -20.0, 200, None
        )
        speaker = Speaker([Tone(0.6)], sink, lambda _: None, Delivery(RATE, ducker=ducker))
        assert await speaker.speak(announcement())
        ended.append(time.monotonic())
        assert snap_volume(snapcast) == 8  # still down as the last sound ends
        await asyncio.sleep(1.2)
        await ducker.close()

    asyncio.run(scenario())
    assert sink.music_at_first == 8
    assert snap_volume(snapcast) == 80


def test_a_snapcast_client_the_server_does_not_know_is_said_once(
    snapcast: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        ducker = Ducker(
            [SnapcastDucking(*host_and_port(snapcast, 1705), "kitchen")], -20.0, 200, None
        )
        speaker = Speaker(
            [Tone(0.2)], RecordingSink(), lambda _: None, Delivery(RATE, ducker=ducker)
        )
        for n in range(2):
            assert await speaker.speak(announcement(f"a{n}"))
            await asyncio.sleep(0.6)
        await ducker.close()

    asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records if r.name == "herald.duck"]
    assert lines == [
        "ducking: snapcast cannot lower: snapserver knows no client 'kitchen' "
        "(said once until it works again)"
    ]
    assert snap_volume(snapcast) == 80


# --- pausing for the most urgent ----------------------------------------------------------------


def critical(ident: str = "c") -> Announcement:
    payload = json.dumps({"id": ident, "text": "Fire!", "chime": False, "priority": "critical"})
    return parse_payload(payload.encode(), 16384, 0.0, NO_DEFAULTS)


def speak_with(ducker: Ducker, announcement: Announcement, read: Callable[[], object]) -> object:
    """Speak it with the ducker; what `read` said at the first sound. Then everything is put
    back (the ducker closes)."""
    sink = FirstSoundSink(read)  # type: ignore[arg-type]

    async def scenario() -> None:
        speaker = Speaker([Tone(0.4)], sink, lambda _: None, Delivery(RATE, ducker=ducker))
        assert await speaker.speak(announcement)
        await ducker.close()

    asyncio.run(scenario())
    return sink.music_at_first


def test_a_critical_announcement_pauses_mpd_and_it_plays_on_afterwards(
    mpd: str, tmp_path: Path
) -> None:
    port = int(mpd.rpartition(":")[2])
    track = tmp_path / "music" / "music.wav"  # the fixture's music_directory
    with wave.open(str(track), "wb") as out:  # a minute of near-silence to play
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(np.ones(8000 * 60, dtype="<i2").tobytes())
    mpd_command(port, "update")
    wait_for(lambda: "music.wav" in str(mpd_command(port, "listall")), 10, "mpd to find it")
    mpd_command(port, "add music.wav")
    mpd_command(port, "play")
    wait_for(lambda: mpd_command(port, "status")["state"] == "play", 10, "mpd to play")

    def state_and_volume() -> tuple[str, int]:
        status = mpd_command(port, "status")
        return status["state"], int(status["volume"])

    pausing = Ducker(
        [MpdDucking(*host_and_port(mpd, 6600))], -20.0, 200, None, PRIORITY_LEVELS["critical"]
    )
    assert speak_with(pausing, critical(), state_and_volume) == ("pause", 70)
    assert state_and_volume() == ("play", 70)
    lowering = Ducker(
        [MpdDucking(*host_and_port(mpd, 6600))], -20.0, 200, None, PRIORITY_LEVELS["critical"]
    )
    assert speak_with(lowering, announcement(), state_and_volume) == ("play", 7)  # normal: lower
    assert state_and_volume() == ("play", 70)


def test_a_critical_announcement_mutes_the_other_streams_and_snapcast(
    pulse: PulseServer, music: subprocess.Popen[bytes], snapcast: str
) -> None:
    def muted() -> tuple[bool, bool]:
        pid = str(music.pid)
        stream: Any = next(s for s in streams(pulse) if pid in json.dumps(s["properties"]))
        status: Any = snap_call(snapcast, "Server.GetStatus")
        client = next(c for g in status["server"]["groups"] for c in g["clients"])
        return bool(stream["mute"]), bool(client["config"]["volume"]["muted"])

    backends: list[Backend] = [
        PulseDucking(pulse.server),
        SnapcastDucking(*host_and_port(snapcast, 1705), "room1"),
    ]
    ducker = Ducker(backends, -20.0, 200, None, PRIORITY_LEVELS["high"])
    assert speak_with(ducker, critical(), muted) == (True, True)
    assert muted() == (False, False)
    assert music_volume(pulse, music) == 65536 and snap_volume(snapcast) == 80  # untouched


# --- what goes wrong ----------------------------------------------------------------------------


def test_a_player_that_hangs_costs_at_most_the_wait_and_a_stop_is_not_held_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An "MPD" that greets and then never answers: speech starts after the ramp and the
    grace at most, the next announcement does not wait for it at all, it is said once, and
    closing is bounded by the backend's time limit."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held: list[socket.socket] = []

    def greet_and_hang() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.sendall(b"OK MPD 0.23.5\n")
            held.append(conn)

    threading.Thread(target=greet_and_hang, daemon=True).start()
    address = f"127.0.0.1:{listener.getsockname()[1]}"

    async def scenario() -> tuple[list[float], float]:
        ducker = Ducker([MpdDucking(*host_and_port(address, 6600))], -20.0, 200, None)
        waits = await waits_for_first_sound(ducker, 2)
        closing = time.monotonic()
        await ducker.close()
        return waits, time.monotonic() - closing

    try:
        waits, closing_s = asyncio.run(scenario())
    finally:
        listener.close()
        for conn in held:
            conn.close()
    assert waits[0] < 0.2 + WAIT_GRACE_S + 0.5, waits
    assert closing_s < 2 * (0.2 + BACKEND_TIMEOUT_S) + 1, closing_s  # a lowering, a restoring
    lines = [r.getMessage() for r in caplog.records if r.name == "herald.duck"]
    assert len(lines) == 1 and "mpd cannot lower: no answer in time" in lines[0], lines


def test_a_preemption_during_the_lowering_still_speaks_over_lowered_music(
    pulse: PulseServer, music: subprocess.Popen[bytes]
) -> None:
    async def scenario() -> int | None:
        ducker = Ducker([PulseDucking(pulse.server)], -20.0, 400, None)
        sink = FirstSoundSink(lambda: music_volume(pulse, music))
        speaker = Speaker([Tone(0.3)], sink, lambda _: None, Delivery(RATE, ducker=ducker))
        first = asyncio.create_task(speaker.speak(announcement("low")))
        await asyncio.sleep(0.1)  # the music is on its way down
        first.cancel()  # preempted
        await asyncio.wait([first])
        assert await speaker.speak(announcement("urgent"))
        await ducker.close()
        return sink.music_at_first

    assert asyncio.run(scenario()) == round(65536 * DUCKED)
    assert music_volume(pulse, music) == 65536


def test_a_player_away_when_it_should_be_put_back_is_put_back_when_it_returns(
    mpd_server: MpdServer, tmp_path: Path
) -> None:
    state = tmp_path / "ducked.json"

    async def scenario() -> None:
        ducker = Ducker([MpdDucking("127.0.0.1", mpd_server.port)], -20.0, 200, state)
        speaker = Speaker(
            [Tone(0.2)], RecordingSink(), lambda _: None, Delivery(RATE, ducker=ducker)
        )
        assert await speaker.speak(announcement())
        # Stopped and started from this thread, not a worker's: MPD 0.24 (Debian 13) exits
        # when the thread that started it ends (a parent-death signal).
        mpd_server.stop()  # the player goes away while ducked
        await asyncio.sleep(1.0)  # the restore fails: kept
        assert json.loads(state.read_text())["lowered"][0]["set"] == 7
        mpd_server.start()  # back (its state file keeps volume 7)
        assert mpd_volume(mpd_server.address) == 7
        await ducker.close()  # tried again

    asyncio.run(scenario())
    assert mpd_volume(mpd_server.address) == 70
    assert not state.exists()


@pytest.mark.parametrize(
    "item",
    [
        {"backend": "pulse", "index": [1]},
        {"backend": "pulse", "index": 0, "pid": "1", "before": [1, 2, 3], "set": "x"},
        {"backend": "mpd", "before": "loud"},
        {"backend": 3},
        "not even a dict",
    ],
)
def test_a_damaged_ducked_file_never_stops_a_start(
    item: object, pulse: PulseServer, mpd: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "ducked.json"
    state.write_text(json.dumps({"lowered": [item]}))
    backends: list[Backend] = [PulseDucking(pulse.server), MpdDucking(*host_and_port(mpd, 6600))]

    async def start() -> None:
        await Ducker(backends, -20.0, 200, state).recover()

    asyncio.run(start())
    assert not state.exists()
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert mpd_volume(mpd) == 70


def test_a_muted_snapcast_room_stays_muted(snapcast: str) -> None:
    snap_call(
        snapcast, "Client.SetVolume", {"id": "room1", "volume": {"muted": True, "percent": 80}}
    )

    def volume() -> tuple[bool, int]:
        status: Any = snap_call(snapcast, "Server.GetStatus")
        client = next(c for g in status["server"]["groups"] for c in g["clients"])
        return bool(client["config"]["volume"]["muted"]), int(client["config"]["volume"]["percent"])

    ducker = Ducker([SnapcastDucking(*host_and_port(snapcast, 1705), "room1")], -20.0, 200, None)
    assert speak_with(ducker, announcement(), volume) == (True, 8)
    assert volume() == (True, 80)
