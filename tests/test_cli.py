"""The `herald` command as a user runs it: say --local/--output, check, devices, --version."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np

from herald.audio.chimes import load_chime
from herald.audio.loudness import VoiceLevels, voice_key
from herald.checks import check_clock
from herald.config import Config
from herald.events import Event
from herald.sync import ClockState
from herald.voice import voice_identities
from tests.conftest import DaemonFactory
from tests.support import (
    Broker,
    Capture,
    MqttProbe,
    contains_speech,
    espeak_reference,
    got,
    heard_chime,
    similarity,
)


def herald(*args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "herald", *args]
    if config is not None:
        argv += ["--config", str(config)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_say_output_writes_a_wav_with_the_spoken_text(tmp_path: Path) -> None:
    wav_path = tmp_path / "x.wav"
    result = herald("say", "--local", "--output", str(wav_path), "Hello from Herald")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"wrote {wav_path}"
    with wave.open(str(wav_path)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (48000, 1, 2)
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    chime = heard_chime("soft")  # a normal announcement's chime comes first, levelled
    assert np.array_equal(samples[: len(chime)], chime)
    speech = samples[len(load_chime("soft", 48000)) :]
    assert contains_speech(speech)
    assert similarity(speech, espeak_reference("Hello from Herald")) > 0.99


def test_say_chime_none_speaks_without_one(tmp_path: Path) -> None:
    wav_path = tmp_path / "x.wav"
    result = herald("say", "--output", str(wav_path), "--chime", "none", "Just words")
    assert result.returncode == 0, result.stderr
    with wave.open(str(wav_path)) as wav:
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    assert similarity(samples, espeak_reference("Just words")) > 0.99


def test_say_local_plays_on_the_configured_alsa_device(tmp_path: Path, capture: Capture) -> None:
    config = write(tmp_path / "h.toml", f'[audio]\ndevice = "{capture.device}"\n')
    result = herald("say", "--local", "Kitchen timer done", config=config)
    assert result.returncode == 0, result.stderr
    assert [line.split()[1] for line in result.stdout.splitlines()] == [
        "queued",
        "started",
        "finished",
    ]
    assert contains_speech(capture.samples())


def test_say_local_on_a_missing_device_fails_naming_it(tmp_path: Path) -> None:
    config = write(tmp_path / "h.toml", '[audio]\ndevice = "no_such_pcm"\n')
    result = herald("say", "--local", "hello", config=config)
    assert result.returncode == 1
    assert "failed    reason=cannot open ALSA device 'no_such_pcm'" in result.stdout
    assert "Traceback" not in result.stderr


def test_say_rejects_a_bad_priority_before_doing_anything() -> None:
    result = herald("say", "--local", "--priority", "urgent", "hello")
    assert result.returncode == 2
    assert "must be low, normal, high, critical or an integer 0-100" in result.stderr


def test_check_passes_when_everything_works(
    tmp_path: Path, broker: Broker, capture: Capture
) -> None:
    config = write(
        tmp_path / "h.toml",
        f'[mqtt]\nport = {broker.port}\nhost = "{broker.host}"\n'
        f'[audio]\ndevice = "{capture.device}"\n[sync]\ntrust_clock = true\n',
    )
    result = herald("check", config=config)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "✔ config",
        f"✔ broker {broker.host}",
        "✔ broker keeps messages for Herald while it is away",
        f"✔ audio device '{capture.device.split(':')[0]}",
        "✔ loudness",
        "✔ clock",
        "✔ voice espeak",
    ]
    assert "target -18 LUFS, peaks <= -1 dBTP; espeak not heard yet" in lines[4]


def test_check_warns_of_a_clock_rooms_cannot_share_without_failing() -> None:
    unsynced = check_clock(Config(), ClockState(False))
    assert unsynced.ok and unsynced.warning
    assert unsynced.line().startswith("! clock: the clock is not synchronized")
    assert "fix: sudo apt install systemd-timesyncd" in unsynced.line()
    good = check_clock(Config(), ClockState(True, 0.0003, 0.01))
    assert good.line() == (
        "✔ clock: synchronized, estimated error 0.30 ms, at most 10 ms; rooms in sync can take part"
    )
    far = Config.model_validate({"sync": {"max_clock_error_ms": 0.1}})
    assert check_clock(far, ClockState(True, 0.0003)).warning
    off = Config.model_validate({"sync": {"enabled": False}})
    assert not check_clock(off, ClockState(False)).warning


def test_check_shows_what_each_voice_has_been_measured_at(tmp_path: Path) -> None:
    state = tmp_path / "state"
    VoiceLevels(state / "loudness.json").learn(
        voice_key("espeak", voice_identities(Config())), "espeak", -23.4
    )
    config = write(tmp_path / "h.toml", f'state_dir = "{state}"\n')
    lines = herald("check", config=config).stdout.splitlines()
    assert "✔ loudness: target -18 LUFS, peaks <= -1 dBTP; espeak -23.4 LUFS (1 heard)" in lines


def test_check_tells_whether_the_broker_keeps_messages_for_herald_while_it_is_away(
    tmp_path: Path, make_daemon: DaemonFactory, node_id: str
) -> None:
    """mosquitto 2.0.12 and later lose them with `per_listener_settings true` (eclipse/mosquitto
    issue 2618; Debian 12 has 2.0.11, Debian 13 2.0.21). Whatever this broker does, `herald
    check` says what the daemon itself finds: a message sent while it was down, spoken or not."""
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker", global_options="per_listener_settings true\n")
    broker.start()
    try:
        daemon = make_daemon(broker)
        daemon.start(wait_until="herald: ready")  # its session now exists at the broker
        daemon.stop()
        probe = MqttProbe(broker, f"herald/{node_id}/events")
        try:
            away = json.dumps({"text": "While away.", "id": "away"})
            probe.publish(f"herald/{node_id}/say", away)
            daemon.start(wait_until="herald: ready")
            try:
                kept = bool(probe.events_until(got("finished", "away"), timeout=10))
            except AssertionError:
                kept = False
        finally:
            probe.close()
        daemon.stop()
        config = write(
            tmp_path / "h.toml", f'[mqtt]\nport = {broker.port}\nhost = "{broker.host}"\n'
        )
        result = herald("check", config=config)
    finally:
        broker.stop()
    verdict = next(line for line in result.stdout.splitlines() if "keeps messages" in line)
    if kept:
        assert verdict.startswith("✔"), result.stdout
    else:
        assert verdict.startswith("✘"), result.stdout
        assert "per_listener_settings" in result.stdout  # the fix names the setting
        assert result.returncode == 1


def test_check_names_each_failure_with_a_fix(tmp_path: Path) -> None:
    config = write(
        tmp_path / "h.toml",
        '[mqtt]\nhost = "127.0.0.1"\nport = 9\n[audio]\ndevice = "no_such_pcm"\n'
        '[voice.espeak]\nvoice = "xx-nowhere"\n[sync]\ntrust_clock = true\n',
    )
    result = herald("check", config=config)
    assert result.returncode == 1
    failures = [line for line in result.stdout.splitlines() if line.startswith("✘")]
    assert len(failures) == 3
    assert failures[0].startswith("✘ broker 127.0.0.1:9: cannot reach broker 127.0.0.1:9")
    assert failures[1].startswith("✘ audio device 'no_such_pcm': cannot open ALSA device")
    assert failures[2].startswith("✘ voice espeak: espeak-ng (voice 'xx-nowhere') failed")
    assert result.stdout.count("    fix: ") == 3


def test_devices_lists_playback_pcms_and_marks_the_configured_one(tmp_path: Path) -> None:
    config = write(tmp_path / "h.toml", '[audio]\ndevice = "herald_capture"\n')
    result = herald("devices", config=config)
    assert result.returncode == 0
    assert "* herald_capture" in result.stdout.splitlines()
    assert "  null" in result.stdout.splitlines()


def test_version_works_on_every_command() -> None:
    for args in (["--version"], ["say", "--version"], ["run", "--version"]):
        result = herald(*args)
        assert result.returncode == 0
        assert result.stdout.startswith("herald 0.1.0")


def follow(*events: Event) -> dict[str, Event]:
    """What `herald say` waits for, given the events one node publishes."""
    from herald.mqtt.remote import _follow

    async def run() -> dict[str, Event]:
        queue: asyncio.Queue[tuple[str, Event]] = asyncio.Queue()
        for event in events:
            queue.put_nowait(("kitchen", event))
        return await _follow(queue, lambda *_: None, "herald node 'kitchen'", 5.0, single=True)

    return asyncio.run(run())


def test_say_stops_following_an_announcement_a_preemption_dropped() -> None:
    """`on_preempt: drop`: `preempted` with requeued false is its fate; `say` must not wait
    for a `finished` that never comes."""
    dropped = Event("preempted", "a", details={"by": "alarm", "requeued": False})
    assert follow(Event("queued", "a"), Event("started", "a"), dropped) == {"kitchen": dropped}


def test_say_follows_a_requeued_announcement_to_its_end() -> None:
    requeued = Event("preempted", "a", details={"by": "alarm", "requeued": True})
    finished = Event("finished", "a")
    assert follow(Event("queued", "a"), requeued, finished) == {"kitchen": finished}
    rejected = Event("rejected", "a", details={"reason": "queue full"})
    assert follow(rejected) == {"kitchen": rejected}
