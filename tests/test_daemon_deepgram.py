"""End to end with the cloud voice: the daemon, mosquitto, alsa-lib and the fake Aura server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DaemonFactory
from tests.fake_deepgram import FakeDeepgramOptions, synthesize
from tests.support import (
    Broker,
    Capture,
    DaemonProcess,
    FakeDeepgramThread,
    MqttProbe,
    contains_speech,
    finished_or_failed,
    padded,
    wait_for,
)

RATE = 48000


@pytest.fixture
def fake_deepgram() -> Iterator[FakeDeepgramThread]:
    with FakeDeepgramThread(FakeDeepgramOptions(first_byte_s=0.02)) as fake:
        yield fake


def deepgram_daemon(
    make_daemon: DaemonFactory, broker: Broker, fake: FakeDeepgramThread, key: str = "test-key"
) -> DaemonProcess:
    daemon = make_daemon(
        broker,
        f'[voice]\nengines = ["deepgram", "espeak"]\n[voice.deepgram]\nurl = "{fake.server.url}"\n',
        as_sent=True,  # the fake's audio is followed sample by sample
    )
    daemon.env["DEEPGRAM_API_KEY"] = key
    return daemon


def test_ten_announcements_use_the_one_socket_opened_before_the_first(
    broker: Broker,
    make_daemon: DaemonFactory,
    probe: MqttProbe,
    node_id: str,
    capture: Capture,
    fake_deepgram: FakeDeepgramThread,
) -> None:
    daemon = deepgram_daemon(make_daemon, broker, fake_deepgram)
    daemon.start()
    wait_for(lambda: fake_deepgram.server.connections == 1, 10, "the warm socket")

    texts = [f"Announcement {n} of ten." for n in range(10)]
    for n, text in enumerate(texts):
        payload = {"text": text, "id": f"a{n}", "chime": False}
        probe.publish(f"herald/{node_id}/say", json.dumps(payload))
    events = probe.events_until(finished_or_failed("a9"))

    finished = [e for e in events if e["event"] == "finished"]
    assert [e["id"] for e in finished] == [f"a{n}" for n in range(10)]
    assert {e["voice"] for e in finished} == {"deepgram"}
    assert {e["degraded"] for e in events if e["event"] == "started"} == {False}
    assert fake_deepgram.server.connections == 1
    expected = np.concatenate([padded(synthesize(text, RATE)) for text in texts])
    assert np.array_equal(capture.samples(), expected)  # every sample, in order, nothing stale


def test_a_wrong_key_is_one_clear_error_and_espeak_speaks_meanwhile(
    broker: Broker,
    make_daemon: DaemonFactory,
    probe: MqttProbe,
    node_id: str,
    capture: Capture,
    fake_deepgram: FakeDeepgramThread,
) -> None:
    daemon = deepgram_daemon(make_daemon, broker, fake_deepgram, key="not-the-key")
    daemon.start()
    wait_for(lambda: fake_deepgram.server.refused == 1, 10, "the refused handshake")

    probe.publish(f"herald/{node_id}/say", json.dumps({"text": "Door bell.", "id": "bell"}))
    events = probe.events_until(finished_or_failed("bell"))

    started = next(e for e in events if e["event"] == "started")
    assert (started["voice"], started["degraded"]) == ("espeak", True)
    assert events[-1]["event"] == "finished"
    assert contains_speech(capture.samples())
    errors = [line for line in daemon.log_lines if line.startswith("ERROR")]
    assert len(errors) == 1, errors
    assert "HTTP 401 INVALID_AUTH: the API key was refused" in errors[0]
    assert fake_deepgram.server.refused == 1  # bounded: the next try is minutes away
    assert not any("not-the-key" in line for line in daemon.log_lines)


@pytest.mark.parametrize("how", ["kill", "close 1011"])
def test_the_server_dying_mid_announcement_loses_nothing(
    broker: Broker,
    make_daemon: DaemonFactory,
    probe: MqttProbe,
    node_id: str,
    capture: Capture,
    how: str,
) -> None:
    text = "A long announcement, spoken at real time, that the server will drop halfway through."
    with FakeDeepgramThread(FakeDeepgramOptions(first_byte_s=0.02, pace=1.0)) as fake:
        daemon = deepgram_daemon(make_daemon, broker, fake)
        daemon.start()
        wait_for(lambda: fake.server.connections == 1, 10, "the warm socket")
        payload = {"text": text, "id": "cut", "chime": False}
        probe.publish(f"herald/{node_id}/say", json.dumps(payload))
        probe.events_until(lambda events: any(e["event"] == "started" for e in events))
        wait_for(lambda: len(capture.samples()) > RATE // 2, 10, "half a second of audio")
        if how == "kill":
            fake.call(fake.server.kill_all())
        else:
            fake.call(fake.server.close_all(1011, "NET-0000"))
        events = probe.events_until(finished_or_failed("cut"))
        connections = fake.server.connections

    assert events[-1]["event"] == "finished"
    assert events[-1]["voice"] == "deepgram"
    assert connections == 2
    heard = capture.samples()
    assert np.array_equal(
        heard[-len(padded(synthesize(text, RATE))) :], padded(synthesize(text, RATE))
    )
    assert any("replaying it on a fresh socket" in line for line in daemon.log_lines)


def test_check_proves_the_cloud_voice_and_names_a_missing_key(
    tmp_path: Path, fake_deepgram: FakeDeepgramThread, capture: Capture, broker: Broker
) -> None:
    config = tmp_path / "h.toml"
    config.write_text(
        f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
        f'[audio]\ndevice = "{capture.device}"\n'
        '[voice]\nengines = ["deepgram", "espeak"]\n'
        f'[voice.deepgram]\nurl = "{fake_deepgram.server.url}"\n'
    )
    argv = [sys.executable, "-m", "herald", "check", "--config", str(config)]
    env = {**os.environ, "DEEPGRAM_API_KEY": "test-key"}
    good = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert good.returncode == 0, good.stdout + good.stderr
    line = next(x for x in good.stdout.splitlines() if "voice deepgram" in x)
    assert line.startswith("✔ voice deepgram: model 'aura-2-thalia-en', first audio after ")

    env.pop("DEEPGRAM_API_KEY")
    bad = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert (
        "✘ voice deepgram: deepgram has no API key: set voice.deepgram.api_key_file" in bad.stdout
    )
